#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit/integration tests, then the
# real control plane (built from the official Go modules, cached in .cache/) and the
# end-to-end tests on it. Every step fails loudly; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }
need() { command -v "$1" >/dev/null 2>&1 || { echo "error: '$1' is required: $2" >&2; exit 1; }; }

need cargo "install Rust (rustup) with the rustfmt and clippy components"
need go "Go 1.26+ builds the control plane for the end-to-end tests (tests/cluster)"
cargo fmt --version >/dev/null 2>&1 || { echo "error: rustfmt is missing (rustup component add rustfmt)" >&2; exit 1; }
cargo clippy --version >/dev/null 2>&1 || { echo "error: clippy is missing (rustup component add clippy)" >&2; exit 1; }

start=$(date +%s)
step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --all-targets --features e2e -- -D warnings

step "unit and integration tests"
cargo test --all-targets

step "supply chain: cargo deny (licenses, bans, sources; advisories need the advisory database, which this network cannot fetch)"
command -v cargo-deny >/dev/null 2>&1 || cargo install --locked cargo-deny
cargo deny check licenses bans sources

step "fuzzing: each cargo-fuzz target briefly (nightly toolchain)"
FUZZ_SECONDS="${FUZZ_SECONDS:-30}" fuzz/run-ci.sh

step "image: the Dockerfile built unchanged with buildah (tests/image/build.sh, cached in .cache/image) and its checks"
# As root (buildah's chroot isolation); installs buildah and debootstrap when missing. The
# archive is reused while the Dockerfile and the sources it copies are unchanged.
t0=$(date +%s)
IMAGE_ARCHIVE="$(tests/image/build.sh)"
export IMAGE_ARCHIVE
echo "image ready in $(( $(date +%s) - t0 ))s: $IMAGE_ARCHIVE"
cargo test --features e2e --test image

step "control plane (etcd, kube-apiserver, kube-controller-manager, kubectl, JobSet controller, kube-scheduler, kubelet)"
t0=$(date +%s)
CONTROL_PLANE_BIN="$(tests/cluster/build.sh)"
export CONTROL_PLANE_BIN
echo "control plane ready in $(( $(date +%s) - t0 ))s: $CONTROL_PLANE_BIN"

step "node runtime for the node tests (Debian's runc; containerd from tests/cluster/node)"
# The node tests (tests/e2e/node_restart.rs) run containers with runc: install the Debian
# package when it is missing (CI runs as root), and fail loudly when that is not possible.
if ! command -v runc >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get install -y runc || { apt-get update && apt-get install -y runc; }
    fi
    need runc "the node tests run containers with runc (Debian: apt-get install -y runc)"
fi
t0=$(date +%s)
tests/cluster/build.sh --module node >/dev/null
echo "containerd and the node test programs ready in $(( $(date +%s) - t0 ))s"

step "Helm CLI for the chart tests (tests/cluster/helm, helm.sh/helm/v3)"
t0=$(date +%s)
tests/cluster/build.sh --module helm >/dev/null
echo "helm ready in $(( $(date +%s) - t0 ))s"

step "third-party controllers that write JobSets in the e2e tests (tests/cluster/kueue, tests/cluster/trainer)"
for m in kueue trainer; do
    t0=$(date +%s)
    bin="$(tests/cluster/build.sh --module "$m")"
    echo "$m ready in $(( $(date +%s) - t0 ))s: $bin"
done

step "end-to-end tests on the real API server"
t0=$(date +%s)
cargo test --features e2e --test e2e -- --test-threads=2
echo "end-to-end tests took $(( $(date +%s) - t0 ))s"

echo
echo "all tests passed in $(( $(date +%s) - start ))s"
