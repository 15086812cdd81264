#!/usr/bin/env bash
# Builds the bundle a lent GPU machine runs (docs/gpu.md): tools/gpu/prepare.sh DIR
#
# DIR (under 64 MiB, what the device tool can carry; target/gpu-bundle is the usual place, an
# ignored path of the repository) gets:
#   run.sh                      tools/gpu/run.sh: the whole measurement, one command
#   bin/diffseg.gz              the release CLI with the CUDA backend, stripped and gzipped (45
#                               MB stripped, 12 gzipped; run.sh unpacks it); it loads libcuda and
#                               NVRTC at run time (run.sh finds them)
#   wheels/                     what the device image (CUDA, PyTorch, transformers; no network)
#                               may lack: diffusers and its pure-Python dependencies, and Pillow
#                               for CPython 3.10 to 3.13 (the one that fits is used)
#   tools/gpu, tools/reference  run.sh's Python helpers and the SD 1.5 configurations
#   examples/images, crates/diffseg-sd/tests/fixtures/tiny   the photos and the tiny model (its
#                               fp32 files: f16 converts them as it loads)
#   BUNDLE.txt                  what was built from which commit, and the checks below
# then checks it: the size, the binary's architecture, `diffseg info` listing cuda, and the
# CUDA version cudarc was built for (which NVRTC names it tries). A DIR that exists must be a
# bundle (it is replaced) or empty. Needs cargo, pip (PyPI, for `pip download`), binutils.
set -euo pipefail
export LC_ALL=C

if [[ $# -ne 1 ]]; then
    echo "usage: tools/gpu/prepare.sh DIR" >&2
    exit 2
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIR=$1
MAX_BYTES=$((64 * 1024 * 1024))
# The versions tools/reference/requirements.txt pins, and the dependencies diffusers needs that
# a PyTorch + transformers image may lack (transformers 5 no longer needs requests or Pillow).
PURE_WHEELS=(diffusers==0.42.1 importlib_metadata zipp requests urllib3 idna certifi)
# Pillow per CPython version (13.0 has no 3.10 build).
PILLOWS=("3.10 pillow==12.3.0" "3.11 pillow==13.0.0" "3.12 pillow==13.0.0" "3.13 pillow==13.0.0")

# Never delete what this script did not write.
if [[ -e $DIR ]]; then
    if [[ -f $DIR/BUNDLE.txt ]]; then
        rm -rf "$DIR"
    elif [[ -n $(ls -A "$DIR") ]]; then
        echo "error: $DIR exists, is not empty and is not a bundle (no BUNDLE.txt): not touching it" >&2
        exit 1
    fi
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

echo "== building the release CLI with CUDA (slow the first time)"
(cd "$REPO" && cargo build --release --locked -p diffseg-cli --features cuda)
mkdir -p "$DIR/bin"
binary=$DIR/bin/diffseg
strip -o "$binary" "$REPO/target/release/diffseg"

echo "== the repository files run.sh reads"
cp "$REPO/tools/gpu/run.sh" "$DIR/run.sh"
mkdir -p "$DIR/tools/gpu" "$DIR/tools/reference" "$DIR/examples"
cp "$REPO"/tools/gpu/*.py "$DIR/tools/gpu/"
cp "$REPO/tools/reference/sd_common.py" "$REPO/tools/reference/sd_fullsize.py" "$DIR/tools/reference/"
cp -r "$REPO/examples/images" "$DIR/examples/images"
# The tiny model's diffusers folder only (not its reference tensors or LDM files).
tiny=crates/diffseg-sd/tests/fixtures/tiny
mkdir -p "$DIR/$tiny"
cp "$REPO/$tiny/model_index.json" "$DIR/$tiny/"
for component in unet vae text_encoder; do
    mkdir -p "$DIR/$tiny/$component"
    cp "$REPO/$tiny/$component"/*.json "$DIR/$tiny/$component/"
    find "$REPO/$tiny/$component" -name '*.safetensors' ! -name '*.fp16.*' -exec cp {} "$DIR/$tiny/$component/" \;
done

echo "== wheels (PyPI)"
mkdir -p "$DIR/wheels"
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$DIR/wheels" "${PURE_WHEELS[@]}"
for pillow in "${PILLOWS[@]}"; do
    read -r python requirement <<<"$pillow"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$DIR/wheels" \
        --python-version "$python" --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux2014_x86_64 "$requirement"
done

echo "== checks"
failures=0
check() {  # DESCRIPTION COMMAND...: runs the check, says ok or FAILED
    local description=$1
    shift
    if "$@"; then
        echo "ok: $description"
    else
        echo "FAILED: $description"
        failures=$((failures + 1))
    fi
}
architecture=$(readelf -h "$binary" | awk -F: '/Machine:/ { gsub(/^ +/, "", $2); print $2 }')
info=$("$binary" info --no-probe)
# The CUDA version cudarc's build script settled on (without nvcc: fallback-latest). cudarc
# 0.18 (dynamic loading) then tries libnvrtc.so, libnvrtc.so.MAJOR, .11, .10, .1 on Linux; run.sh
# links libnvrtc.so to the NVRTC it finds, so whichever version the image has is loaded.
cuda_version=$(cat "$REPO"/target/release/build/cudarc-*/output 2>/dev/null |
    sed -n 's/^cargo:rustc-env=CUDA_\(MAJOR\|MINOR\)_VERSION=//p' | head -n 2 | paste -sd . -)
stripped_bytes=$(stat -c %s "$binary")
gzip -9 "$binary"
bytes=$(du -sb "$DIR" | cut -f 1)
check "bundle size $bytes bytes ($((bytes / 1024 / 1024)) MiB) under 64 MiB" test "$bytes" -lt "$MAX_BYTES"
check "bin/diffseg is an x86-64 executable ($architecture)" test "$architecture" = "Advanced Micro Devices X86-64"
check "diffseg info lists cuda as compiled in" grep -qE '^  cuda$' <<<"$info"
check "cudarc was built for CUDA ${cuda_version:-?} (it tries libnvrtc.so, libnvrtc.so.${cuda_version%%.*}, .11, .10, .1)" test -n "$cuda_version"

{
    echo "diffseg GPU bundle, built by tools/gpu/prepare.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git -C "$REPO" rev-parse HEAD)$(git -C "$REPO" diff --quiet HEAD -- . || echo ' (with uncommitted changes)')"
    echo "$(cargo --version), $(rustc --version)"
    echo "size: $bytes bytes"
    echo "bin/diffseg: $architecture, $stripped_bytes bytes stripped, $(stat -c %s "$binary.gz") gzipped"
    echo "cudarc built for CUDA ${cuda_version:-unknown}: NVRTC as libnvrtc.so or libnvrtc.so.${cuda_version%%.*}, .11, .10, .1"
    echo "diffseg info --no-probe:"
    sed 's/^/  /' <<<"$info"
    echo "wheels:"
    ls "$DIR/wheels" | sed 's/^/  /'
} >"$DIR/BUNDLE.txt"
cat "$DIR/BUNDLE.txt"
if ((failures > 0)); then
    echo "error: $failures check(s) failed" >&2
    exit 1
fi
echo "bundle ready in $DIR: run it on a lent device with OUT=\$OUT bash ${DIR#"$REPO"/}/run.sh (docs/gpu.md)"
