# syntax=docker/dockerfile:1
# images/scorer-runner.Dockerfile - the scorer-runner image, CPU build: the data plane that every
# MIRA stage Job runs (`scorer-runner <step> --plan <file>`), models through mistral.rs on CPU.
#
# Build from the repository root:
#   docker build -f images/scorer-runner.Dockerfile -t mira/scorer-runner:0.1.0 .
# For a cluster whose nodes all have AVX2, add --build-arg TARGET_CPU=x86-64-v3: the hashed
# student's `score` step runs 5-7 % faster (README, Benchmarks); the default runs on any node.
# The GPU build is images/scorer-runner-cuda.Dockerfile (tag suffix -cuda).
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# cmake: native parts of dependencies (aws-lc-sys); gcc/g++/make come with the rust image
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
ARG TARGET_CPU=""
WORKDIR /src
# the workspace: both members, so the lock file resolves as in development
COPY Cargo.toml Cargo.lock ./
COPY scorer-runner scorer-runner
COPY operator operator
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ -n "$TARGET_CPU" ]; then export RUSTFLAGS="-Ctarget-cpu=$TARGET_CPU"; fi \
 && cargo build --release --locked -p scorer-runner --bin scorer-runner \
 && install -D -m 0755 target/release/scorer-runner /out/scorer-runner

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 mira \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin mira
COPY --from=build /out/scorer-runner /usr/local/bin/scorer-runner
# Jobs mount /scratch and /tmp (the root filesystem is read-only there)
ENV HF_HOME=/scratch/hf
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/scorer-runner"]
