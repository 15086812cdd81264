# The `diffseg` command in a slim image, for large runs (docs/large-runs.md).
# No image is published: build it from this repository.
#
#   docker build -t diffseg:cpu .
#   docker build -t diffseg:cuda --build-arg FEATURES=cuda \
#       --build-arg RUNTIME_IMAGE=nvidia/cuda:<13.x tag>-runtime-ubuntu24.04 .
#   docker run --rm -v "$PWD/photos:/data/photos:ro" -v "$PWD/out:/data/out" \
#       -v "$HOME/.cache/huggingface:/cache/huggingface" diffseg:cpu \
#       segment /data/photos --out /data/out
#
# Build arguments:
#   FEATURES          Cargo features of the CLI: ndarray (the CPU backend, always in),
#                     cuda, wgpu, or "cuda wgpu".
#   RUNTIME_IMAGE     the image the binary runs in. For cuda, an NVIDIA CUDA 13 "runtime"
#                     image: Burn's CUDA backend loads libcuda.so.1 (the driver, mounted by
#                     the NVIDIA container toolkit) and NVRTC (libnvrtc.so.13) at run time.
#   RUNTIME_PACKAGES  Debian/Ubuntu packages added to it; for wgpu add libvulkan1 and a
#                     Vulkan driver (mesa-vulkan-drivers, or the GPU vendor's).

# Used in a FROM below: declared before the first one.
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- build: the release CLI (from nothing, about half an hour on two cores) ---------------
FROM rust:1-bookworm AS build
ARG FEATURES=ndarray
WORKDIR /src
COPY . .
# The Cargo registry and target folder are cached between builds of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p diffseg-cli --features "$FEATURES" \
    && cp target/release/diffseg /usr/local/bin/diffseg

# --- run: the binary alone on a slim base ------------------------------------------------
FROM ${RUNTIME_IMAGE}
ARG RUNTIME_PACKAGES=ca-certificates
RUN apt-get update \
    && apt-get install -y --no-install-recommends $RUNTIME_PACKAGES \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/diffseg /usr/local/bin/diffseg
# Weights are looked up in (and downloaded to) this Hugging Face cache: mount it.
ENV HF_HOME=/cache/huggingface
# Results are written with the user the container runs as (`docker run --user`).
ENTRYPOINT ["diffseg"]
CMD ["--help"]
