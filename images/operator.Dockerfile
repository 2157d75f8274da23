# syntax=docker/dockerfile:1
# images/operator.Dockerfile - the operator image: the `mira` binary (`mira operator` in a
# cluster; the Helm chart runs /usr/local/bin/mira operator). Non-root, nothing but the binary
# and CA certificates.
#
# Build from the repository root:
#   docker build -f images/operator.Dockerfile -t mira/operator:0.1.0 .
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY scorer-runner scorer-runner
COPY operator operator
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mira-operator --bin mira \
 && install -D -m 0755 target/release/mira /out/mira

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 mira \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin mira
COPY --from=build /out/mira /usr/local/bin/mira
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/mira"]
CMD ["operator"]
