#!/usr/bin/env bash
# The GPU measurements of docs/gpu.md in one call: environment, a random-weight SD 1.5 folder,
# `diffseg segment` on CUDA in f32 and f16 at batch 1 and 8 (cold and warm), diffusers fp16 on
# the same GPU, peak GPU memory of both, parity with the CPU, and a report in $OUT (report.md,
# report.json, steps.tsv, every step's log).
#
#   OUT=DIR bash run.sh                   on a lent device, from the bundle tools/gpu/prepare.sh
#                                         builds (no Rust, no network needed)
#   OUT=DIR bash tools/gpu/run.sh --cpu   here or in CI, from the repository: the same steps on
#                                         the CPU with the tiny fixture and target/debug/diffseg
#
# Every step has its own time budget (`timeout`), cut to what is left of RUN_BUDGET, so a hung
# step cannot eat the run; a step that fails or times out is recorded and the run goes on. A step
# that cannot run (f16 on the CPU; the Python steps where torch or diffusers do not import in
# --cpu mode) says "NOT RUN: why" and is recorded as not run, never as passed.
# Exit status: 0 when no step failed or timed out, 1 otherwise, 2 for a usage error.
# Environment: OUT (required, empty or new folder), DIFFSEG (the CLI to run), PYTHON (python3).
set -uo pipefail
# A '.' decimal point in $EPOCHREALTIME and printf.
export LC_ALL=C

usage="usage: OUT=DIR bash run.sh [--cpu]"
MODE=gpu
case "${1:-}" in
    --cpu) MODE=cpu ;;
    "") ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
if [[ -z ${OUT:-} ]]; then
    echo "error: set OUT to an empty folder for the results; $usage" >&2
    exit 2
fi
mkdir -p "$OUT" || exit 2
if [[ -n $(ls -A "$OUT") ]]; then
    echo "error: $OUT is not empty: give an empty or new folder" >&2
    exit 2
fi
OUT=$(cd "$OUT" && pwd)
mkdir -p "$OUT/logs"

# The whole run in 8 minutes: the steps share RUN_BUDGET s less what the report keeps back.
# --cpu has no such limit and often a busy machine: its budgets are doubled.
RUN_BUDGET=470
REPORT_BUDGET=15
BUDGET_SCALE=1
[[ $MODE == cpu ]] && BUDGET_SCALE=2 RUN_BUDGET=$((2 * RUN_BUDGET))
# The exit status by which a step says it cannot run here (autotools' "skipped").
NOT_RUN=77

WORK=$(mktemp -d "${TMPDIR:-/tmp}/diffseg-gpu.XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT
# The bundle has bin/diffseg.gz beside this script (compressed: the device tool carries 64 MiB)
# and the repository's files under their repository paths; in the repository this script is
# tools/gpu/run.sh.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -f $HERE/bin/diffseg.gz ]]; then
    ROOT=$HERE
    mkdir -p "$WORK/bin"
    gzip -dc "$ROOT/bin/diffseg.gz" >"$WORK/bin/diffseg" && chmod +x "$WORK/bin/diffseg"
    DIFFSEG_BIN=${DIFFSEG:-$WORK/bin/diffseg}
else
    ROOT=$(cd "$HERE/../.." && pwd)
    DIFFSEG_BIN=${DIFFSEG:-$ROOT/target/debug/diffseg}
fi
PYTHON=${PYTHON:-python3}
TINY=$ROOT/crates/diffseg-sd/tests/fixtures/tiny
IMAGES=$ROOT/examples/images
PARITY_IMAGE=$IMAGES/astronaut.png
# Wheels the bundle carries are unpacked here when the image lacks them.
export PYTHONPATH=$WORK/python${PYTHONPATH:+:$PYTHONPATH}

if [[ $MODE == gpu ]]; then
    BACKEND=cuda:0
    MODEL=$WORK/sd15
    # Images per run: batch 1 and batch 8 each get one cold pass and several warm ones.
    B1_IMAGES=8
    B8_IMAGES=40
else
    BACKEND=cpu
    MODEL=$TINY
    B1_IMAGES=3
    B8_IMAGES=16
fi
export MODE ROOT OUT WORK DIFFSEG_BIN PYTHON TINY IMAGES PARITY_IMAGE BACKEND MODEL NOT_RUN

# The steps run in $WORK (below), so paths given relative to here are made absolute.
[[ $DIFFSEG_BIN == /* ]] || DIFFSEG_BIN=$PWD/$DIFFSEG_BIN
[[ $PYTHON != */* || $PYTHON == /* ]] || PYTHON=$PWD/$PYTHON
if [[ ! -x $DIFFSEG_BIN ]]; then
    echo "error: no diffseg binary at $DIFFSEG_BIN (build it with \`cargo build -p diffseg-cli\`, or set DIFFSEG)" >&2
    exit 2
fi

# ---------------------------------------------------------------------------------------------
# Helpers (exported: each step runs in its own bash under `timeout`)
# ---------------------------------------------------------------------------------------------

# Ends the current step as not run, saying why on a line of its own.
not_run() {
    echo "NOT RUN: $*"
    exit "$NOT_RUN"
}

# Copies standard input to standard output, each line prefixed with the wall clock in seconds:
# the CLI's per-image progress lines become per-batch times.
stamp() {
    local line
    while IFS= read -r line; do
        printf '%s %s\n' "$EPOCHREALTIME" "$line"
    done
}

# The GPU's used memory in MiB now (nothing without nvidia-smi).
gpu_memory_used() {
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0
}

# Samples the GPU's used memory every 100 ms into FILE in the background; its pid in SAMPLER.
start_gpu_memory_sampler() {
    SAMPLER=
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 100 >"$1" 2>/dev/null &
        SAMPLER=$!
    fi
}

stop_gpu_memory_sampler() {
    if [[ -n $SAMPLER ]]; then
        kill "$SAMPLER" 2>/dev/null
        wait "$SAMPLER" 2>/dev/null
    fi
}

# Fails the step (gpu mode) or marks it not run (--cpu) when torch and diffusers do not import.
require_python_stack() {
    if [[ ! -f $WORK/python-ok ]]; then
        [[ $MODE == cpu ]] && not_run "torch/diffusers not importable (see step python)"
        echo "error: torch/diffusers not importable (see step python)"
        exit 1
    fi
}

# Fails the step when the model folder was not written (step weights).
require_model() {
    if [[ ! -f $MODEL/model_index.json ]]; then
        echo "error: no model at $MODEL (step weights did not write it)"
        exit 1
    fi
}

export -f not_run stamp gpu_memory_used start_gpu_memory_sampler stop_gpu_memory_sampler
export -f require_python_stack require_model

# Runs step NAME, a function below with its arguments, under a budget of SECONDS cut to what the
# run has left; its output goes to $OUT/logs/NAME.log, its outcome to $OUT/steps.tsv.
step() {
    local name=$1 budget=$(($2 * BUDGET_SCALE))
    shift 2
    local left=$((RUN_BUDGET - REPORT_BUDGET - SECONDS))
    ((budget > left)) && budget=$left
    local log=$OUT/logs/$name.log status note="" seconds=0 rc
    if ((budget < 1)); then
        status="not run"
        note="NOT RUN: the run's ${RUN_BUDGET} s were spent"
        echo "$note" >"$log"
    else
        echo "== $name (at most ${budget} s)" >&2
        local started=$EPOCHREALTIME
        timeout -k 5 "$budget" bash -c '"$@"' "$name" "$@" >"$log" 2>&1
        rc=$?
        seconds=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
        case $rc in
            0) status=ok ;;
            "$NOT_RUN") status="not run" note=$(grep -m1 '^NOT RUN: ' "$log") ;;
            124 | 137) status="timed out" note="timed out after ${budget} s" ;;
            *) status="failed (exit $rc)" note=$(grep -v '^[[:space:]]*$' "$log" | tail -n 1) ;;
        esac
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$seconds" "$budget" "${note//$'\t'/ }" >>"$OUT/steps.tsv"
    echo "   $name: $status in ${seconds} s${note:+: $note}" >&2
    case $status in
        "not run") echo "   $note" >&2 ;;
        ok) ;;
        *) tail -n 15 "$log" | sed 's/^/   | /' >&2 ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# Set-up in this shell (it sets the environment of the steps)
# ---------------------------------------------------------------------------------------------

# The files named libnvrtc.so* of pip's nvidia-cuda-nvrtc (CUDA 12: nvidia/cuda_nvrtc/lib,
# CUDA 13: nvidia/cu13/lib), the dynamic linker's cache and the CUDA toolkit, one per line.
nvrtc_candidates() {
    timeout 20 "$PYTHON" - 2>/dev/null <<'EOF'
import glob, importlib, os
for name in ("nvidia.cuda_nvrtc", "nvidia.cu13", "nvidia.cu12", "nvidia"):
    try:
        module = importlib.import_module(name)
    except Exception:
        continue
    for folder in getattr(module, "__path__", []):
        for path in glob.glob(os.path.join(folder, "**", "libnvrtc.so*"), recursive=True):
            print(path)
EOF
    ldconfig -p 2>/dev/null | awk '/libnvrtc\.so/ { print $NF }'
    ls /usr/local/cuda*/lib64/libnvrtc.so* /usr/local/cuda*/targets/*/lib/libnvrtc.so* 2>/dev/null
}

# Puts the driver (libcuda.so.1) and the newest NVRTC found on LD_LIBRARY_PATH. Burn's cudarc,
# built for CUDA 13.1, tries libnvrtc.so, then libnvrtc.so.13, .11, .10 and .1, never .so.12:
# a link named libnvrtc.so in $WORK/cuda-libs to the NVRTC found lets it load any of them.
# Writes what it found to $OUT/cuda-libraries.txt.
find_cuda_libraries() {
    local nvrtc driver folders=""
    nvrtc=$(nvrtc_candidates | grep -E '/libnvrtc\.so(\.[0-9]+)*$' | awk -F/ '{ print $NF "\t" $0 }' |
        sort -V | tail -n 1 | cut -f 2)
    if [[ -n $nvrtc ]]; then
        mkdir -p "$WORK/cuda-libs"
        ln -sf "$(readlink -f "$nvrtc")" "$WORK/cuda-libs/libnvrtc.so"
        folders=$WORK/cuda-libs:$(dirname "$(readlink -f "$nvrtc")")
    fi
    driver=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 / { print $NF; exit }')
    if [[ -z $driver ]]; then
        driver=$(ls /usr/local/nvidia/lib64/libcuda.so.1 /usr/lib/x86_64-linux-gnu/libcuda.so.1 \
            /usr/lib64/libcuda.so.1 /usr/local/cuda*/compat/libcuda.so.1 2>/dev/null | head -n 1)
        [[ -n $driver ]] && folders=${folders:+$folders:}$(dirname "$driver")
    fi
    if [[ -n $folders ]]; then
        export LD_LIBRARY_PATH=$folders${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    fi
    {
        echo "libnvrtc: ${nvrtc:-not found}${nvrtc:+ -> $(readlink -f "$nvrtc")}"
        echo "libcuda.so.1: ${driver:-not found}"
        echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    } >"$OUT/cuda-libraries.txt"
}

# Copies of the example images, cycled: COUNT of them in $WORK/images/NAME.
replicate_images() {
    local name=$1 count=$2 i=0
    local -a photos=("$IMAGES"/*.png "$IMAGES"/*.jpg)
    mkdir -p "$WORK/images/$name"
    while ((i < count)); do
        local photo=${photos[i % ${#photos[@]}]}
        cp "$photo" "$WORK/images/$name/$(printf '%02d' "$i")-$(basename "$photo")"
        i=$((i + 1))
    done
}

find_cuda_libraries
replicate_images b1 "$B1_IMAGES"
replicate_images b8 "$B8_IMAGES"
# The steps run in $WORK, where Burn (CubeCL) finds this configuration: its autotune results
# go to the working folder, not to a `target/` folder it would look for above it.
printf '[autotune]\ncache = "local"\n' >"$WORK/cubecl.toml"
cd "$WORK" || exit 2

# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------

# 1. The machine, the driver, the versions.
step_environment() {
    echo "mode: $MODE"
    date -u
    uname -a
    grep -m1 PRETTY_NAME /etc/os-release
    echo "cpus: $(nproc)"
    "$DIFFSEG_BIN" --version
    cat "$OUT/cuda-libraries.txt"
    "$PYTHON" --version
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi
        nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv >"$OUT/gpu.csv"
    elif [[ $MODE == gpu ]]; then
        echo "error: nvidia-smi not found"
        return 1
    else
        echo "nvidia-smi: not found (--cpu)"
    fi
}

# 2a. torch, transformers and diffusers importable: the bundle's wheels fill in what the image
# lacks (unpacked into $WORK/python, on PYTHONPATH).
step_python() {
    if [[ -d $ROOT/wheels ]]; then
        "$PYTHON" "$ROOT/tools/gpu/unpack_wheels.py" "$ROOT/wheels" "$WORK/python" || return 1
    fi
    if "$PYTHON" -c 'import torch, transformers, diffusers, PIL
print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())
print("transformers", transformers.__version__, "diffusers", diffusers.__version__)'; then
        touch "$WORK/python-ok"
    elif [[ $MODE == cpu ]]; then
        not_run "torch/diffusers not importable: the Python steps (weights, diffusers) will not run"
    else
        return 1
    fi
}

# 2b. The model: a random-weight full-size SD 1.5 folder written on the GPU (--cpu: one with the
# tiny fixture's configurations, to prove the script; the runs use the committed fixture).
step_weights() {
    require_python_stack
    if [[ $MODE == gpu ]]; then
        "$PYTHON" "$ROOT/tools/gpu/write_sd15.py" "$MODEL" --device cuda
    else
        "$PYTHON" "$ROOT/tools/gpu/write_sd15.py" "$WORK/sd-like-tiny" --device cpu --like "$TINY"
    fi
}

# 2c. The CLI's backends, each probed with a small computation: on CUDA that loads libcuda and
# compiles kernels with NVRTC.
step_info() {
    "$DIFFSEG_BIN" info | tee "$WORK/info.txt"
    if [[ $MODE == gpu ]] && ! { grep -q '^  cuda: .* on ' "$WORK/info.txt" && grep -q '^    cuda:0: ' "$WORK/info.txt"; }; then
        echo "error: the CUDA backend did not start on cuda:0 (see above)"
        return 1
    fi
}

# 3. + 5. `diffseg segment` at one precision and batch size, stderr stamped line by line (one
# progress line per image: report.py derives the cold first batch and the warm ones), the GPU's
# memory sampled meanwhile.
step_ours() {
    local name=$1 precision=$2 batch=$3
    [[ $MODE == cpu && $precision == f16 ]] && not_run "f16 needs a GPU backend (--cpu runs f32 only)"
    require_model
    local dir=$OUT/ours/$name
    mkdir -p "$dir" "$WORK/cold/$name"
    # A working folder of its own: an empty autotune cache, so every run starts cold.
    cp "$WORK/cubecl.toml" "$WORK/cold/$name/"
    cd "$WORK/cold/$name" || return 1
    gpu_memory_used >"$dir/gpu-memory-before.txt"
    start_gpu_memory_sampler "$dir/gpu-memory.txt"
    printf '%s # started\n' "$EPOCHREALTIME" >"$dir/stderr.log"
    "$DIFFSEG_BIN" segment "$WORK/images/b$batch" --out "$WORK/out/$name" --weights "$MODEL" \
        --offline --backend "$BACKEND" --precision "$precision" --batch-size "$batch" \
        --log-every 1 --timings "$dir/timings.json" --summary "$dir/summary.json" \
        2>&1 >/dev/null | stamp >>"$dir/stderr.log"
    local rc=${PIPESTATUS[0]}
    stop_gpu_memory_sampler
    tail -n 5 "$dir/stderr.log"
    return "$rc"
}

# 4. diffusers on the same GPU, fp16, best of 3 (--cpu: fp32 on the tiny fixture, one pass).
step_diffusers() {
    require_python_stack
    local -a device=(--device cuda --dtype fp16 --weights "$MODEL" --repeats 3)
    if [[ $MODE == gpu ]]; then
        require_model
    else
        device=(--device cpu --dtype fp32 --weights "$TINY" --repeats 1)
    fi
    "$PYTHON" "$ROOT/tools/gpu/bench_diffusers.py" "${device[@]}" --batches 1,8 \
        --image "$PARITY_IMAGE" --json "$OUT/diffusers.json"
}

# 6a. Our attention at PRECISION on the backend against the CPU's f32, on the tiny fixture: max
# |error| per map, and label agreement of each merged on the CPU.
step_parity() {
    local precision=$1
    [[ $MODE == cpu && $precision == f16 ]] && not_run "f16 needs a GPU backend (--cpu runs f32 only)"
    local dir=$OUT/parity
    mkdir -p "$dir"
    local model=(--weights "$TINY" --offline)
    if [[ ! -f $dir/cpu-f32.png ]]; then
        "$DIFFSEG_BIN" attention "$PARITY_IMAGE" --out "$dir/cpu-f32.safetensors" "${model[@]}" --backend cpu &&
            "$DIFFSEG_BIN" merge "$dir/cpu-f32.safetensors" --out "$dir/cpu-f32.png" || return 1
    fi
    local ours=$dir/device-$precision
    "$DIFFSEG_BIN" attention "$PARITY_IMAGE" --out "$ours.safetensors" "${model[@]}" \
        --backend "$BACKEND" --precision "$precision" &&
        "$DIFFSEG_BIN" merge "$ours.safetensors" --out "$ours.png" &&
        "$PYTHON" "$ROOT/tools/gpu/compare.py" attention "$dir/cpu-f32.safetensors" "$ours.safetensors" \
            >"$dir/attention-$precision.json" &&
        "$PYTHON" "$ROOT/tools/gpu/compare.py" labels "$dir/cpu-f32.png" "$ours.png" >"$dir/labels-$precision.json" ||
        return 1
    # --cpu compares the CPU with itself: anything but equality is a broken comparison.
    if [[ $MODE == cpu ]]; then
        "$PYTHON" - "$dir/attention-$precision.json" "$dir/labels-$precision.json" <<'EOF'
import json, sys
attention, labels = (json.load(open(path)) for path in sys.argv[1:])
if attention["max_abs_error"] != 0 or labels["min_raw"] != 1:
    sys.exit(f"error: the CPU against itself differs: max |error| {attention['max_abs_error']}, labels {labels['min_raw']}")
print("the CPU against itself: equal, as it must be")
EOF
    fi
}

# 6b. f16 labels against f32 on the photos of the batch-1 runs.
step_photo_labels() {
    [[ $MODE == cpu ]] && not_run "f16 needs a GPU backend (--cpu runs f32 only)"
    local -a pairs=()
    local f32
    for f32 in "$WORK"/out/f32-b1/*.png; do
        [[ $f32 == *.overlay.png ]] && continue
        local f16=$WORK/out/f16-b1/$(basename "$f32")
        [[ -f $f16 ]] && pairs+=("$f32" "$f16")
    done
    ((${#pairs[@]} > 0)) || { echo "error: no label maps from both batch-1 runs"; return 1; }
    "$PYTHON" "$ROOT/tools/gpu/compare.py" labels "${pairs[@]}" >"$OUT/photo-labels.json"
}

export -f step_environment step_python step_weights step_info step_ours step_diffusers
export -f step_parity step_photo_labels

step environment 10 step_environment
step python 25 step_python
step weights 65 step_weights
step info 15 step_info
step f32-b1 60 step_ours f32-b1 f32 1
step f16-b1 50 step_ours f16-b1 f16 1
step f32-b8 55 step_ours f32-b8 f32 8
step f16-b8 60 step_ours f16-b8 f16 8
step diffusers 50 step_diffusers
step parity-f32 30 step_parity f32
step parity-f16 25 step_parity f16
step photo-labels 10 step_photo_labels

# 7. The report, within the time kept back for it.
status=0
if ! timeout -k 5 "$REPORT_BUDGET" "$PYTHON" "$ROOT/tools/gpu/report.py" "$OUT" "$MODE" >"$OUT/logs/report.log" 2>&1; then
    echo "error: the report failed:" >&2
    tail -n 15 "$OUT/logs/report.log" >&2
    status=1
fi
[[ -f $OUT/report.md ]] && cat "$OUT/report.md" >&2
if cut -f 2 "$OUT/steps.tsv" | grep -qE '^(failed|timed out)'; then
    status=1
fi
echo "run.sh ($MODE): $(cut -f 2 "$OUT/steps.tsv" | sort | uniq -c | awk '{ $1 = $1; print }' | paste -sd ',' - | sed 's/,/, /g'); results in $OUT" >&2
exit "$status"
