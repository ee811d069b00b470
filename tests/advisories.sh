#!/usr/bin/env bash
# `cargo deny check advisories`: the dependency tree against the RustSec advisory database.
#
# Which database:
# 1. ADVISORY_DB_BUNDLE is checked first: when set, it must name a git bundle of the database
#    (github.com/rustsec/advisory-db, branch main), else this fails at once.
# 2. The live database, where the network reaches it: fetched into cargo-deny's usual place
#    ($CARGO_HOME/advisory-dbs), bounded by ADVISORY_FETCH_TIMEOUT seconds (default 60) so
#    that a network that swallows packets cannot hang the test command.
# 3. Otherwise the ADVISORY_DB_BUNDLE copy, cloned into a temporary folder that a temporary
#    copy of deny.toml names as `db-path` (the user's cargo home is not touched).
# 4. Neither: fail, saying how to provide one.
# The last line says which database was used; cargo-deny's own `advisories ok` is above it.
set -euo pipefail
cd "$(dirname "$0")/.."

bundle="${ADVISORY_DB_BUNDLE:-}"
if [ -n "$bundle" ] && [ ! -f "$bundle" ]; then
    echo "error: ADVISORY_DB_BUNDLE=$bundle is not a file (want a git bundle of the RustSec advisory database)" >&2
    exit 1
fi
command -v cargo-deny >/dev/null 2>&1 || { echo "error: cargo-deny is missing (cargo install --locked cargo-deny)" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if timeout "${ADVISORY_FETCH_TIMEOUT:-60}" cargo deny fetch db >"$tmp/fetch.log" 2>&1; then
    cargo deny --offline check advisories
    echo "advisories: checked against the live RustSec database (fetched now)"
    exit 0
fi
echo "the live advisory database could not be fetched within ${ADVISORY_FETCH_TIMEOUT:-60}s:" >&2
tail -n 3 "$tmp/fetch.log" >&2

if [ -z "$bundle" ]; then
    echo "error: no advisory database: the live one cannot be fetched here and ADVISORY_DB_BUNDLE is not set (point it at a git bundle of github.com/rustsec/advisory-db, e.g. one made with 'git bundle create advisory-db.bundle main')" >&2
    exit 1
fi
# cargo-deny looks for the database under `db-path` in a folder named after the URL's hash
# (for the default URL: advisory-db-3157b0e258782691).
db="$tmp/advisory-dbs"
git clone -q "$bundle" "$db/advisory-db-3157b0e258782691"
awk -v path="$db" '{ print } /^\[advisories\]$/ { print "db-path = \"" path "\"" }' deny.toml >"$tmp/deny.toml"
grep -q "^db-path = \"$db\"" "$tmp/deny.toml" || { echo "error: deny.toml has no [advisories] table" >&2; exit 1; }
cargo deny --offline --config "$tmp/deny.toml" check advisories
echo "advisories: checked against the copy in ADVISORY_DB_BUNDLE ($bundle, last commit $(git -C "$db/advisory-db-3157b0e258782691" log -1 --format=%cs))"
