# syntax=docker/dockerfile:1
# images/scorer-runner-cuda.Dockerfile - the scorer-runner image, GPU build (cargo feature
# `cuda`): the same binary as images/scorer-runner.Dockerfile with mistral.rs' CUDA kernels.
#
# Build from the repository root:
#   docker build -f images/scorer-runner-cuda.Dockerfile -t mira/scorer-runner:0.1.0-cuda .
# Build arguments:
#   CUDA_VERSION      CUDA toolkit of the build and runtime bases (default 12.4.1). The kernels
#                     are PTX that the driver compiles at load time: the node's driver must
#                     support this CUDA version.
#   CUDA_COMPUTE_CAP  GPU architecture the kernels target (default 80: A100; PTX for 80 also
#                     runs on newer GPUs such as L4 (89) and H100 (90); 90 for H100-only nodes).
#                     There is no GPU during `docker build`, so it cannot be detected.
#   RUST_VERSION      Rust toolchain (taken from the official rust image).
ARG CUDA_VERSION=12.4.1
ARG UBUNTU_RELEASE=ubuntu22.04
ARG RUST_VERSION=1.95

# the Rust toolchain, copied into the CUDA build image (rustup toolchains need only glibc 2.17)
FROM rust:${RUST_VERSION}-bookworm AS rust

FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU_RELEASE} AS build
ARG CUDA_COMPUTE_CAP=80
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=rust /usr/local/cargo /usr/local/cargo
COPY --from=rust /usr/local/rustup /usr/local/rustup
ENV CARGO_HOME=/usr/local/cargo \
    RUSTUP_HOME=/usr/local/rustup \
    PATH=/usr/local/cargo/bin:/usr/local/cuda/bin:${PATH} \
    CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    LIBRARY_PATH=/usr/local/cuda/lib64/stubs
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY scorer-runner scorer-runner
COPY operator operator
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p scorer-runner --bin scorer-runner --features cuda \
 && install -D -m 0755 target/release/scorer-runner /out/scorer-runner

FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU_RELEASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 mira \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin mira
COPY --from=build /out/scorer-runner /usr/local/bin/scorer-runner
ENV HF_HOME=/scratch/hf
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/scorer-runner"]
