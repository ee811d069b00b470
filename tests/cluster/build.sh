#!/usr/bin/env bash
# Builds the control plane used by the end-to-end tests from the Go modules pinned in
# go.mod/go.sum next to this script:
#   kube-apiserver, kube-controller-manager, kubectl   (k8s.io/kubernetes)
#   kube-scheduler, kubelet                            (k8s.io/kubernetes; the node tests)
#   etcd                                               (go.etcd.io/etcd/server/v3, ./cmd/etcd)
#   jobset-controller                                  (sigs.k8s.io/jobset, module root)
#
# Usage:
#   tests/cluster/build.sh
#       Builds the seven binaries into ${CONTROL_PLANE_BIN:-<repo>/.cache/control-plane/<key>}
#       (<key> = hash of go.mod, go.sum, cmd/etcd/main.go, the Go version and this recipe)
#       unless they are all there already. Progress goes to stderr; stdout gets exactly one
#       line, the bin folder:   BIN="$(tests/cluster/build.sh)"
#   tests/cluster/build.sh --print-module-dir MODULE@VERSION
#       Downloads a module with `go mod download -json` and prints its directory in the module
#       cache (read-only), e.g. sigs.k8s.io/jobset@v0.12.0 for the JobSet CRD at
#       <dir>/config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml.
#   tests/cluster/build.sh --print-key
#       Prints the cache key only.
#   tests/cluster/build.sh --module NAME
#       Builds a tool that lives in its own Go module, tests/cluster/NAME/ (go.mod, go.sum and a
#       file `binaries` with one `BINARY PACKAGE [TAGS]` line each, TAGS a comma-separated
#       list of Go build tags), so that its dependency versions
#       never move the control plane's. Output: <repo>/.cache/NAME/<key>, printed on stdout as
#       above; <key> hashes that folder's go.mod, go.sum, binaries and *.go files.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

# Bump when the way the binaries are built changes, so old caches are not reused.
RECIPE=2

die() {
    echo "build.sh: ERROR: $*" >&2
    exit 1
}
log() { echo "build.sh: $*" >&2; }

# A caller-chosen folder that already holds all seven binaries needs no Go at all.
names=(kube-apiserver kube-controller-manager kubectl etcd jobset-controller kube-scheduler kubelet)
all_present() { # all_present DIR
    local n
    for n in "${names[@]}"; do
        [[ -x "$1/$n" ]] || return 1
    done
}
if [[ -n "${CONTROL_PLANE_BIN:-}" && $# -eq 0 ]] && all_present "$CONTROL_PLANE_BIN"; then
    log "reused the cache: all ${#names[@]} binaries are already in $CONTROL_PLANE_BIN (CONTROL_PLANE_BIN)"
    echo "$CONTROL_PLANE_BIN"
    exit 0
fi

command -v go >/dev/null 2>&1 ||
    die "the 'go' command was not found on PATH; Go >= 1.26 is needed to build the control plane (see tests/cluster/README.md)"

export GOFLAGS="-mod=mod -buildvcs=false"
export GO111MODULE=on
export CGO_ENABLED=0

go_version="$(go env GOVERSION)" || die "'go env GOVERSION' failed"
# Go 1.27 turns encoding/json v2 on by default, which breaks kube-apiserver's /openapi/v2
# (kubectl then fails with "failed to download openapi"). Opt out there.
case "$go_version" in
go1.2[0-5] | go1.2[0-5].*) die "$go_version is too old: go.mod needs Go >= 1.26" ;;
go1.26 | go1.26.*) ;;
*)
    case ",${GOEXPERIMENT:-}," in
    *,nojsonv2,*) ;;
    *) export GOEXPERIMENT="${GOEXPERIMENT:+$GOEXPERIMENT,}nojsonv2" ;;
    esac
    ;;
esac

# --- module-directory helper ------------------------------------------------------------

# h1 sums of module zips/go.mod files that the tests use, pinned so that a download can be
# checked even where the checksum database has no record of the version (sigs.k8s.io/jobset
# v0.9.0 is such a case). v0.12.0's sums are the ones in go.sum.
pinned_sum() {
    case "$1" in
    sigs.k8s.io/jobset@v0.12.0) echo "h1:YYPuV0px8Ongq/RXmJg6V0w2UC67aiR+rCMD06vhQQQ= h1:JpUzWItLGW1ysjbENDk/tRz0rvAwVPFHgHnMv/W2HVY=" ;;
    sigs.k8s.io/jobset@v0.9.0) echo "h1:B8IBKEy25w6Cu46+eFBbWtuXnI9goLTz6UY6fa4qSoA= h1:ysr9t5IxXIZEXgf4JACLJQ1UE2GOeUUzfsP+tnIG/OQ=" ;;
    *) echo "" ;;
    esac
}

json_field() { # json_field NAME < json  (flat string fields of `go mod download -json`)
    sed -n "s/^[[:space:]]*\"$1\": \"\\(.*\\)\",\\{0,1\\}\$/\\1/p" | head -n1
}

print_module_dir() {
    local modver="$1" mod ver sums want_sum want_modsum out dir err sum modsum tmp
    [[ "$modver" == *@* ]] || die "--print-module-dir wants MODULE@VERSION, got '$modver'"
    mod="${modver%@*}"
    ver="${modver##*@}"
    sums="$(pinned_sum "$modver")"
    tmp="$(mktemp -d)"
    # Outside any module, so that nothing here touches go.mod/go.sum.
    if [[ -n "$sums" ]]; then
        want_sum="${sums% *}"
        want_modsum="${sums#* }"
        out="$(cd "$tmp" && GONOSUMDB="$mod" GOFLAGS=-mod=mod go mod download -json "$mod@$ver" 2>&1)" || true
    else
        out="$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "$mod@$ver" 2>&1)" || true
    fi
    rmdir "$tmp" 2>/dev/null || true
    err="$(printf '%s\n' "$out" | json_field Error)"
    dir="$(printf '%s\n' "$out" | json_field Dir)"
    if [[ -n "$err" || -z "$dir" ]]; then
        printf '%s\n' "$out" >&2
        die "go mod download $mod@$ver failed${err:+: $err}"
    fi
    if [[ -n "$sums" ]]; then
        sum="$(printf '%s\n' "$out" | json_field Sum)"
        modsum="$(printf '%s\n' "$out" | json_field GoModSum)"
        [[ "$sum" == "$want_sum" && "$modsum" == "$want_modsum" ]] ||
            die "checksum mismatch for $mod@$ver: got $sum / $modsum, pinned $want_sum / $want_modsum"
    fi
    [[ -d "$dir" ]] || die "go mod download reported $dir for $mod@$ver but it is not a directory"
    echo "$dir"
}

# --- cache key --------------------------------------------------------------------------

mod_dir="$here"
cache_key() {
    {
        echo "recipe=$RECIPE go=$go_version goexperiment=${GOEXPERIMENT:-} goos=$(go env GOOS) goarch=$(go env GOARCH)"
        if [[ "$mod_dir" == "$here" ]]; then
            cat "$here/go.mod" "$here/go.sum" "$here/cmd/etcd/main.go"
        else
            cat "$mod_dir/go.mod" "$mod_dir/go.sum" "$mod_dir/binaries"
            find "$mod_dir" -name '*.go' -type f | LC_ALL=C sort | xargs cat
        fi
    } | sha256sum | cut -c1-16
}

module=""
case "${1:-}" in
--module)
    [[ $# -eq 2 && "$2" =~ ^[a-z0-9-]+$ ]] || die "usage: $0 --module NAME (a folder of tests/cluster, lowercase letters, digits, '-')"
    module="$2"
    ;;
--print-module-dir)
    [[ $# -eq 2 ]] || die "usage: $0 --print-module-dir MODULE@VERSION"
    print_module_dir "$2"
    exit 0
    ;;
--print-key)
    cache_key
    exit 0
    ;;
"") ;;
-h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 0
    ;;
*) die "unknown argument '$1' (try --help)" ;;
esac

if [[ -n "$module" ]]; then
    mod_dir="$here/$module"
    [[ -f "$mod_dir/binaries" ]] || die "$mod_dir/binaries is missing (one 'BINARY PACKAGE' line per program)"
    names=()
    while read -r n p _; do
        [[ -z "$n" || "$n" == \#* ]] && continue
        [[ -n "$p" ]] || die "$mod_dir/binaries: '$n' has no package"
        names+=("$n")
    done <"$mod_dir/binaries"
    [[ ${#names[@]} -gt 0 ]] || die "$mod_dir/binaries lists no binary"
fi
[[ -f "$mod_dir/go.mod" && -f "$mod_dir/go.sum" ]] || die "go.mod/go.sum missing in $mod_dir"

key="$(cache_key)"
if [[ -n "$module" ]]; then
    bin="$repo/.cache/$module/$key"
else
    bin="${CONTROL_PLANE_BIN:-$repo/.cache/control-plane/$key}"
fi
if all_present "$bin"; then
    log "reused the cache: all ${#names[@]} binaries are already in $bin"
    echo "$bin"
    exit 0
fi

mkdir -p "$bin" || die "cannot create $bin"
# One build at a time per bin folder (tests started in parallel may all call this script).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$bin/.lock"
    flock 9
    if all_present "$bin"; then
        log "reused the cache: another build.sh finished $bin meanwhile"
        echo "$bin"
        exit 0
    fi
fi

# Version stamps (what `kubectl version` and the /version endpoint report).
module_version() { (cd "$mod_dir" && go list -m -f '{{.Version}}' "$1"); }
if [[ -z "$module" ]]; then
    k8s_version="$(module_version k8s.io/kubernetes)" || die "cannot resolve k8s.io/kubernetes in go.mod"
    jobset_version="$(module_version sigs.k8s.io/jobset)" || die "cannot resolve sigs.k8s.io/jobset in go.mod"
elif grep -q '^require k8s.io/kubernetes \|^[[:space:]]k8s.io/kubernetes v' "$mod_dir/go.mod"; then
    # A module that builds Kubernetes binaries of another version (apiserver-1-37/):
    # stamped like the control plane's, with its own version.
    k8s_version="$(module_version k8s.io/kubernetes)" || die "cannot resolve k8s.io/kubernetes in $mod_dir/go.mod"
    jobset_version=none
else
    k8s_version=none jobset_version=none
fi
k8s_minor="${k8s_version#v1.}"
k8s_minor="${k8s_minor%%.*}"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
kube_ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor"
    kube_ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
done
jobset_ldflags="-s -w -X sigs.k8s.io/jobset/pkg/version.GitVersion=$jobset_version"

package_of() {
    if [[ -n "$module" ]]; then
        awk -v n="$1" '$1 == n { print $2; exit }' "$mod_dir/binaries"
        return
    fi
    case "$1" in
    kube-apiserver) echo k8s.io/kubernetes/cmd/kube-apiserver ;;
    kube-controller-manager) echo k8s.io/kubernetes/cmd/kube-controller-manager ;;
    kubectl) echo k8s.io/kubernetes/cmd/kubectl ;;
    etcd) echo ./cmd/etcd ;;
    jobset-controller) echo sigs.k8s.io/jobset ;;
    kube-scheduler) echo k8s.io/kubernetes/cmd/kube-scheduler ;;
    kubelet) echo k8s.io/kubernetes/cmd/kubelet ;;
    esac
}
tags_of() {
    [[ -n "$module" ]] || return 0
    awk -v n="$1" '$1 == n { print $3; exit }' "$mod_dir/binaries"
}
ldflags_of() {
    if [[ -n "$module" ]]; then
        case "$1" in
        kube-*) [[ "$k8s_version" != none ]] && { echo "$kube_ldflags"; return; } ;;
        esac
        echo "-s -w"
        return
    fi
    case "$1" in
    kube-apiserver | kube-controller-manager | kubectl | kube-scheduler | kubelet) echo "$kube_ldflags" ;;
    jobset-controller) echo "$jobset_ldflags" ;;
    *) echo "-s -w" ;;
    esac
}

log "building into $bin with $go_version (GOFLAGS=$GOFLAGS CGO_ENABLED=0${GOEXPERIMENT:+ GOEXPERIMENT=$GOEXPERIMENT})"
log "a cold build takes about 10 minutes on 2 cores (kube-apiserver alone ~7)"
total_start=$SECONDS
for n in "${names[@]}"; do
    if [[ -x "$bin/$n" ]]; then
        log "$n: already built"
        continue
    fi
    pkg="$(package_of "$n")"
    start=$SECONDS
    log "$n: go build $pkg ..."
    if ! (cd "$mod_dir" && go build -o "$bin/.$n.tmp" -tags "$(tags_of "$n")" -ldflags "$(ldflags_of "$n")" "$pkg"); then
        rm -f "$bin/.$n.tmp"
        die "go build of $n ($pkg) failed; see the compiler output above"
    fi
    mv -f "$bin/.$n.tmp" "$bin/$n"
    log "$n: built in $((SECONDS - start))s"
done
all_present "$bin" || die "build finished but some binaries are missing from $bin"
log "all binaries built in $((SECONDS - total_start))s"
echo "$bin"
