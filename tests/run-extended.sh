#!/usr/bin/env bash
# The extended checks: what does not fit CI's time budget, run by hand before a release or
# before resolving work that touches what they cover. Not called by CI (.ci/run). Every step
# fails loudly; nothing is skipped.
#
#   tests/run-extended.sh            # all steps
#   tests/run-extended.sh image      # one step by name
#
# Steps:
#   image   the Dockerfile built unchanged with buildah against a local stand-in of the Rust
#           builder image (tests/image/build.sh, as root, installs buildah and debootstrap when
#           missing; cached in .cache/image by a key of the Dockerfile and the sources it
#           copies), then its checks (tests/image: size, one layer with exactly the stripped
#           static binary, user 65532, labels, --version). Cold: about 4 min for the stand-in
#           plus a release build of the crate and its dependencies inside the build.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }
want() { [ $# -eq 0 ] || [[ " $* " == *" $STEP "* ]]; }

start=$(date +%s)
STEP=image
if want "$@"; then
    step "image: the Dockerfile built unchanged with buildah, and its checks"
    t0=$(date +%s)
    IMAGE_ARCHIVE="$(tests/image/build.sh)"
    export IMAGE_ARCHIVE
    echo "image ready in $(( $(date +%s) - t0 ))s: $IMAGE_ARCHIVE"
    cargo test --features e2e --test image
fi

echo
echo "extended checks passed in $(( $(date +%s) - start ))s"
