#!/usr/bin/env bash
# CI fuzzing: builds the three cargo-fuzz targets with the nightly toolchain and runs each for
# FUZZ_SECONDS (default 30) from the committed seeds (fuzz/seeds/) plus the local corpus
# (fuzz/corpus/, git-ignored). Exits non-zero on any crash, failed property, timeout (> 10 s
# for one input) or out-of-memory (> 2 GiB); the input is left in fuzz/artifacts/<target>/.
# Reproduce one with: cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-30}"
targets=(admission_review annotations config)

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz/run-ci.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run-ci.sh: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

start=$(date +%s)
# A locked build: `cargo fuzz build` has no --locked, so the lock is checked first (fetch
# --locked fails when Cargo.lock would change) and must be unchanged after the build.
# fuzz/Cargo.lock pins what it shares with the main crate at the main Cargo.lock's versions
# (tests/fuzz_lock.rs; how to refresh it: CONTRIBUTING.md, "Dependencies").
lock_before=$(sha256sum Cargo.lock)
if ! fetched=$(cargo +nightly fetch --locked 2>&1); then
    echo "fuzz/run-ci.sh: fuzz/Cargo.lock is not current:" >&2
    echo "$fetched" >&2
    echo "refresh it from the main lock: cp Cargo.lock fuzz/Cargo.lock && cargo metadata --manifest-path fuzz/Cargo.toml --format-version 1 >/dev/null" >&2
    exit 1
fi
cargo +nightly fuzz build 2>&1 | tail -n 3
if [ "$(sha256sum Cargo.lock)" != "$lock_before" ]; then
    echo "fuzz/run-ci.sh: the fuzz build changed fuzz/Cargo.lock (an unlocked resolution)" >&2
    exit 1
fi
echo "fuzz/run-ci.sh: build took $(( $(date +%s) - start )) s"

for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "fuzz/run-ci.sh: $t for ${seconds} s"
    mkdir -p logs
    set +e
    max_len=4096
    [ "$t" = admission_review ] && max_len=16384
    cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len="$max_len" \
        -dict="dicts/$t.dict" -print_final_stats=1 >"logs/$t.log" 2>&1
    rc=$?
    set -e
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "logs/$t.log" || true
    if [ "$rc" -ne 0 ]; then
        echo "fuzz/run-ci.sh: $t failed (exit $rc); the end of fuzz/logs/$t.log:" >&2
        tail -n 60 "logs/$t.log" >&2
        exit 1
    fi
done
echo "fuzz/run-ci.sh: all targets clean in $(( $(date +%s) - start )) s"
