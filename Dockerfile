# Multi-stage: a pinned Rust builder makes one static binary; the runtime image is empty
# (`scratch`: no shell, no package manager, no libc) and runs as the non-root user 65532. The
# binary needs no system CA roots: it trusts the cluster CA of its service account.
#
# Build: `docker build -t jobset-restart-webhook .` (or buildah/podman). Pin the builder by
# digest for a reproducible build: `--build-arg RUST_IMAGE=rust:1.95.0-bookworm@sha256:<digest>`.
# The tests build this file unchanged with buildah against a local stand-in of the builder
# image (tests/image/build.sh) and check the result (tests/image/main.rs).
#
# Static glibc, not musl: measured on the shipped build, the musl binary spent 2.2x the server
# CPU per small review and 2.6-3x per large one (musl's allocator); its peak memory in the
# hostile tests was 0-6 MiB lower, far inside their bounds (docs/BENCHMARKS.md, "The image:
# static glibc or musl").
# `crt-static` goes in RUSTFLAGS with an explicit `--target`, so that it applies to the binary
# only, not to build scripts and proc macros (which cannot be static).

ARG RUST_IMAGE=rust:1.95.0-bookworm

FROM ${RUST_IMAGE} AS build
# Stripped here and not in Cargo.toml: the release profile keeps line tables for the profilers
# (docs/BENCHMARKS.md); the image ships no debug information and no symbol table.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    RUSTFLAGS="-C target-feature=+crt-static"
WORKDIR /src
# Dependencies first (in their own layer), so that source edits rebuild only this crate.
# Cargo parses every target the manifest declares: the test harness crate (a workspace member
# the binary never compiles) and each declared bench, test and example get an empty stand-in,
# so that no edit to them rebuilds or even invalidates this image.
COPY Cargo.toml Cargo.lock ./
COPY testkit/Cargo.toml testkit/
RUN mkdir -p src testkit/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs testkit/src/lib.rs \
    && awk '/^\[\[(bench|test|example)\]\]/ { kind = $0; gsub(/[][]/, "", kind); next } \
            /^\[/ { kind = "" } \
            kind != "" && $1 == "name" { gsub(/"/, "", $3); print kind, $3 }' Cargo.toml \
    | while read -r kind name; do \
        case "$kind" in bench) dir=benches ;; test) dir=tests ;; *) dir=examples ;; esac; \
        mkdir -p "$dir" && touch "$dir/$name.rs"; \
      done \
    && cargo build --release --locked --target x86_64-unknown-linux-gnu --bin jobset-restart-webhook
COPY src ./src
# COPY keeps the sources' modification times, which may be older than the stub build's
# outputs: touch the crate roots so that Cargo rebuilds the crate from the real sources.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --target x86_64-unknown-linux-gnu --bin jobset-restart-webhook \
    && cp target/x86_64-unknown-linux-gnu/release/jobset-restart-webhook /jobset-restart-webhook

FROM scratch
# Kept equal to Cargo.toml's package fields (tests/image/main.rs checks them).
LABEL org.opencontainers.image.title="jobset-restart-webhook" \
      org.opencontainers.image.description="Mutating admission webhook that injects in-place container restart rules into JobSet pod templates and pods" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
# Where the sources of this build live: the repository this image is published from.
ARG SOURCE_URL=""
LABEL org.opencontainers.image.source="${SOURCE_URL}"
COPY --from=build /jobset-restart-webhook /usr/local/bin/jobset-restart-webhook
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/jobset-restart-webhook"]
# The conventional mount points of the manifests (Secret and ConfigMap volumes).
CMD ["serve", "--tls-cert=/etc/jobset-restart-webhook/tls/tls.crt", "--tls-key=/etc/jobset-restart-webhook/tls/tls.key"]
