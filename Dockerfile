# syntax=docker/dockerfile:1
# Multi-stage: a pinned Rust builder makes a static (musl) binary; the runtime image is empty
# (`scratch`: no shell, no package manager, no libc), running as the non-root user 65532. The
# binary needs no system CA roots: it trusts the cluster CA of its service account.

FROM rust:1.95.0-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# Dependencies first, so that source edits do not rebuild them.
# Cargo resolves every declared target, so the benches and the test harness crate (a
# workspace member; stubbed: the binary never compiles it) come along.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY testkit/Cargo.toml testkit/
RUN mkdir -p src examples testkit/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs testkit/src/lib.rs \
    && cargo fetch --locked
COPY src ./src
COPY examples ./examples
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin jobset-restart-webhook \
    && cp target/x86_64-unknown-linux-musl/release/jobset-restart-webhook /jobset-restart-webhook

FROM scratch
COPY --from=build /jobset-restart-webhook /usr/local/bin/jobset-restart-webhook
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/jobset-restart-webhook"]
# The conventional mount points of the manifests (Secret and ConfigMap volumes).
CMD ["serve", "--tls-cert=/etc/jobset-restart-webhook/tls/tls.crt", "--tls-key=/etc/jobset-restart-webhook/tls/tls.key"]
