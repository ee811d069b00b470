#!/usr/bin/env bash
# Builds the shipped image from the repository's Dockerfile, unchanged, the way a user's
# `docker build` would, but without a daemon or a registry: Debian's buildah (chroot
# isolation, as root) against a local stand-in of the Dockerfile's builder image.
#
# Usage:
#   tests/image/build.sh
#       Builds the image unless it is cached and prints exactly one line on stdout: the path
#       of its docker-archive, <repo>/.cache/image/<key>/image.tar (progress goes to stderr).
#       <key> hashes the Dockerfile, .dockerignore, every file the Dockerfile copies
#       (Cargo.toml, Cargo.lock, testkit/Cargo.toml, src/), the stand-in's key and
#       this recipe. The archive holds the image tagged jobset-restart-webhook:latest (the
#       kustomize base's image) and jobset-restart-webhook:<crate version> (the chart's
#       appVersion); `ctr images import` reads it.
#       IMAGE_ARCHIVE=<file> (an existing archive) is printed as is, without building.
#   tests/image/build.sh --print-key
#       Prints the key only.
#
# The stand-in builder: the Dockerfile's `ARG RUST_IMAGE` names a Rust image (rust:X.Y.Z-
# bookworm) that no registry can serve here. This script makes one with the same paths and
# environment as the official image: `debootstrap --variant=minbase bookworm` with gcc,
# libc6-dev and ca-certificates, plus this machine's Rust X.Y.Z toolchain (rustup home
# /usr/local/rustup, cargo home /usr/local/cargo), committed under the same short name, so
# that the unmodified `FROM` resolves to it with `--pull=never`. It is built once per key
# (toolchain, Debian mirror, recipe) and kept in the buildah store with the build's layer
# cache: a source edit rebuilds only the crate, not its dependencies.
#
# Cargo downloads crates inside the build (the registry's HTTPS goes through this machine's
# CA bundle, which is mounted read-only into RUN steps and never baked into an image).
#
# Needs root (buildah's chroot isolation) and buildah + debootstrap, which it installs with
# apt-get when they are missing; it fails loudly otherwise. Every working container, mount
# and temporary folder it makes is removed on every exit path; mounts left by a killed run
# are removed at the next start.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

# Bump when the way the image or the stand-in is built changes, so old caches are not reused.
RECIPE=1
# The Debian packages of the stand-in besides minbase: what the build needs (a C compiler and
# libc headers for aws-lc-sys and the linker, CA roots for cargo) and what the official image
# has too.
STANDIN_PACKAGES="ca-certificates,gcc,libc6-dev,make,pkg-config,netbase"
# The buildah store's layer cache is dropped above this size (the stand-in is kept).
STORE_MAX_KIB=$((8 * 1024 * 1024))

die() {
    echo "image/build.sh: ERROR: $*" >&2
    exit 1
}
log() { echo "image/build.sh: $*" >&2; }

print_key=false
case "${1:-}" in
"") ;;
--print-key) print_key=true ;;
*) die "usage: $0 [--print-key]" ;;
esac

if [[ -n "${IMAGE_ARCHIVE:-}" && "$print_key" == false ]]; then
    [[ -f "$IMAGE_ARCHIVE" ]] || die "IMAGE_ARCHIVE=$IMAGE_ARCHIVE is not a file"
    log "using IMAGE_ARCHIVE=$IMAGE_ARCHIVE as is"
    echo "$IMAGE_ARCHIVE"
    exit 0
fi

cd "$repo"

# --- what the Dockerfile builds from ----------------------------------------------------

# The builder image: the default of `ARG RUST_IMAGE=rust:<version>-bookworm[@digest]`. The
# stand-in takes its name without the digest, and the build is given that name explicitly, so
# that a digest pinned in the Dockerfile (which the stand-in cannot match) is overridden.
rust_image="$(sed -n 's/^ARG RUST_IMAGE=\([^[:space:]]*\)[[:space:]]*$/\1/p' Dockerfile | head -n1)"
[[ -n "$rust_image" ]] || die "the Dockerfile has no 'ARG RUST_IMAGE=<image>' line (the builder image this script stands in for)"
rust_image="${rust_image%%@*}"
[[ "$rust_image" =~ ^rust:([0-9]+\.[0-9]+\.[0-9]+)-bookworm$ ]] ||
    die "the Dockerfile's RUST_IMAGE is '$rust_image'; this script can stand in for rust:X.Y.Z-bookworm only"
rust_version="${BASH_REMATCH[1]}"

crate_version="$(sed -n 's/^version = "\([^"]*\)"$/\1/p' Cargo.toml | head -n1)"
[[ -n "$crate_version" ]] || die "no 'version = \"...\"' line in Cargo.toml"

# Every source of a COPY in the Dockerfile (not `COPY --from`) must be in the key, or an edit
# to it would reuse a stale image.
key_inputs=(Dockerfile .dockerignore Cargo.toml Cargo.lock testkit/Cargo.toml src)
while read -r src; do
    covered=false
    for k in "${key_inputs[@]}"; do
        [[ "${src%/}" == "$k" || "${src%/}" == "$k"/* ]] && covered=true
    done
    [[ "$covered" == true ]] || die "the Dockerfile copies '$src', which this script's key_inputs do not hash: add it"
done < <(awk 'toupper($1) == "COPY" && $2 !~ /^--from/ { for (i = 2; i < NF; i++) print $i }' Dockerfile)

# The Rust toolchain that goes into the stand-in: this machine's, at the Dockerfile's version.
toolchain=""
for t in "$rust_version" stable; do
    sysroot="$(rustup run "$t" rustc --print sysroot 2>/dev/null)" || continue
    if [[ "$(rustup run "$t" rustc -V 2>/dev/null)" == "rustc $rust_version "* ]]; then
        toolchain="$(cd "$sysroot" && pwd -P)"
        break
    fi
done
[[ -n "$toolchain" ]] ||
    die "the Dockerfile builds with Rust $rust_version, and no installed toolchain is that version (rustup toolchain install $rust_version)"
rustup_bin="$(command -v rustup)" || die "rustup is not on PATH"
rustc_vv="$("$toolchain/bin/rustc" -vV)"

# The Debian mirror of this machine's apt sources (deb822 or one-line format).
debian_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        awk '/^URIs:/ { u = $2 } /^Suites:/ && / bookworm( |$)/ && u != "" { print u; exit }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' "$f"
    done
}
mirror="$(debian_mirror | head -n1)"
[[ -n "$mirror" ]] || die "no Debian bookworm mirror in /etc/apt/sources.list*: the stand-in builder is made with debootstrap from it"

# --- keys -------------------------------------------------------------------------------

hash_files() { # hash_files PATH... : names and contents of every file, sorted
    find "$@" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
}
standin_key="$(
    {
        echo "recipe=$RECIPE arch=$(uname -m) image=$rust_image mirror=$mirror packages=$STANDIN_PACKAGES"
        echo "$rustc_vv"
        "$rustup_bin" --version 2>/dev/null
        sed -n '/^# --- stand-in/,/^# --- end of stand-in/p' "$here/build.sh"
    } | sha256sum | cut -c1-16
)"
# The source label: the repository's own URL when the checkout knows one.
source_url="$(git -C "$repo" remote get-url origin 2>/dev/null || true)"
[[ "$source_url" =~ ^https:// ]] || source_url=""
key="$(
    {
        echo "recipe=$RECIPE standin=$standin_key source=$source_url"
        hash_files "${key_inputs[@]}"
    } | sha256sum | cut -c1-16
)"
if [[ "$print_key" == true ]]; then
    echo "$key"
    exit 0
fi

cache="$repo/.cache/image"
out="$cache/$key"
if [[ -f "$out/image.tar" && -f "$out/done" ]]; then
    log "reused the cache: $out/image.tar"
    echo "$out/image.tar"
    exit 0
fi

# --- tools ------------------------------------------------------------------------------

[[ "$(id -u)" == 0 ]] || die "building the image needs root (buildah's chroot isolation); run as root or set IMAGE_ARCHIVE to an archive built elsewhere"
if ! command -v buildah >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "buildah and debootstrap are missing and there is no apt-get to install them"
    log "installing buildah and debootstrap with apt-get"
    apt-get install -y buildah debootstrap >&2 || { apt-get update >&2 && apt-get install -y buildah debootstrap >&2; } ||
        die "apt-get install buildah debootstrap failed"
fi
for t in buildah debootstrap flock findmnt; do
    command -v "$t" >/dev/null 2>&1 || die "'$t' is missing"
done

mkdir -p "$cache"
cache="$(cd "$cache" && pwd -P)"
out="$cache/$key"
store="$cache/buildah"
mkdir -p "$store"

# One build at a time per cache (the store and its layer cache are shared).
exec 9>"$cache/lock"
flock 9

# buildah makes these outside its --root/--runroot (its blob-info cache and its network
# backend's lock folders): remove the ones that were not there before this run.
host_state=(/var/lib/containers /run/containers /etc/containers/networks)
host_state_new=()
for d in "${host_state[@]}"; do
    [[ -e "$d" ]] || host_state_new+=("$d")
done

runroot="$(mktemp -d /run/jrw-image.XXXXXX)"
tmp="$(mktemp -d "$cache/tmp.XXXXXX")"
B=(buildah --root "$store" --runroot "$runroot" --storage-driver overlay)

# Unmounts everything under the store, the runroot and the temporary folder (deepest first):
# overlay layers of RUN steps, and /proc or /sys that debootstrap mounts into its target.
unmount_below() {
    local m
    for dir in "$@"; do
        while read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "WARNING: could not unmount $m"
        done < <(findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d "/") == 1 || $0 == d' | LC_ALL=C sort -r)
    done
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    "${B[@]}" rm --all >/dev/null 2>&1 || true
    "${B[@]}" umount --all >/dev/null 2>&1 || true
    unmount_below "$store" "$runroot" "$tmp"
    if findmnt -rn -o TARGET | grep -q -e "^$tmp" -e "^$runroot"; then
        log "WARNING: mounts remain under $tmp or $runroot; leaving them in place"
    else
        rm -rf --one-file-system "$tmp" "$runroot"
    fi
    for d in "${host_state_new[@]}"; do
        findmnt -rn -o TARGET | grep -q "^$d" || rm -rf --one-file-system "$d"
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Mounts and temporary folders of a run that was killed before its cleanup.
unmount_below "$store"
for old in "$cache"/tmp.*; do
    [[ "$old" == "$tmp" || ! -d "$old" ]] && continue
    unmount_below "$old"
    findmnt -rn -o TARGET | grep -q "^$old" || rm -rf --one-file-system "$old"
done

# The layer cache grows by the crate's build (~60 MB) per source change and by the
# dependencies' (~1 GB) per Cargo.lock change: past the bound, drop every untagged (cache)
# image, keeping the stand-in.
store_kib="$(du -sk "$store" | cut -f1)"
if ((store_kib > STORE_MAX_KIB)); then
    log "the buildah store has grown to $((store_kib / 1024)) MiB: dropping its layer cache"
    for _ in $(seq 20); do
        [[ -n "$("${B[@]}" images --all --filter dangling=true -q 2>/dev/null)" ]] || break
        "${B[@]}" rmi --prune >/dev/null 2>&1 || break
    done
fi

# --- stand-in builder -------------------------------------------------------------------
# (This section is part of the stand-in's key.)

standin_done="$cache/standin-$standin_key.done"
if [[ ! -f "$standin_done" ]] || ! "${B[@]}" inspect --type image "$rust_image" >/dev/null 2>&1; then
    t0=$(date +%s)
    log "building the stand-in for $rust_image (debootstrap bookworm from $mirror, Rust from $toolchain)"
    rootfs="$tmp/rootfs"
    nice -n 10 debootstrap --variant=minbase --include="$STANDIN_PACKAGES" bookworm "$rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
        { tail -n 30 "$tmp/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

    # The official image's layout: RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo,
    # a minimal-profile toolchain named after its version, proxies next to rustup. The docs
    # (800 MB) and any extra targets (the official image has only the host's) stay out.
    tc_name="$rust_version-x86_64-unknown-linux-gnu"
    tc="$rootfs/usr/local/rustup/toolchains/$tc_name"
    mkdir -p "$tc" "$rootfs/usr/local/cargo/bin"
    (cd "$toolchain" && tar --exclude=./share/doc -cf - .) | tar -C "$tc" -xf -
    for d in "$tc"/lib/rustlib/*-*-*/; do
        d="$(basename "$d")"
        [[ "$d" == x86_64-unknown-linux-gnu ]] && continue
        rm -rf "${tc:?}/lib/rustlib/$d" "$tc"/lib/rustlib/manifest-*-"$d"
        sed -i "/-$d\$/d" "$tc/lib/rustlib/components"
    done
    rm -f "$tc"/lib/rustlib/manifest-rust-docs-*
    sed -i '/^rust-docs-/d' "$tc/lib/rustlib/components"
    printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$tc_name" >"$rootfs/usr/local/rustup/settings.toml"
    cp "$rustup_bin" "$rootfs/usr/local/cargo/bin/rustup"
    for p in cargo cargo-clippy cargo-fmt clippy-driver rustc rustdoc rustfmt rust-gdb rust-gdbgui rust-lldb; do
        ln -s rustup "$rootfs/usr/local/cargo/bin/$p"
    done
    chmod -R a+w "$rootfs/usr/local/rustup" "$rootfs/usr/local/cargo"

    tar -C "$rootfs" --numeric-owner -cf "$tmp/rootfs.tar" .
    rm -rf --one-file-system "$rootfs"
    c="$("${B[@]}" from --pull=never scratch)"
    "${B[@]}" add "$c" "$tmp/rootfs.tar" / >/dev/null
    rm -f "$tmp/rootfs.tar"
    "${B[@]}" config --os linux --arch amd64 \
        --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
        --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env RUST_VERSION="$rust_version" --cmd bash "$c"
    got="$("${B[@]}" run --isolation chroot "$c" -- rustc -V)" || die "rustc does not run in the stand-in"
    [[ "$got" == "rustc $rust_version "* ]] || die "the stand-in's rustc says '$got', not $rust_version"
    "${B[@]}" rmi --force "$rust_image" >/dev/null 2>&1 || true
    "${B[@]}" commit --rm "$c" "$rust_image" >/dev/null
    rm -f "$cache"/standin-*.done
    touch "$standin_done"
    log "stand-in $rust_image ready in $(($(date +%s) - t0))s ($got)"
fi
# --- end of stand-in

# --- the image --------------------------------------------------------------------------

t0=$(date +%s)
log "building the image from the Dockerfile (key $key)"
ca_mount=()
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    ca_mount=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi
name="jobset-restart-webhook"
nice -n 10 "${B[@]}" bud --isolation chroot --pull=never --layers --force-rm \
    "${ca_mount[@]}" \
    --build-arg RUST_IMAGE="$rust_image" --build-arg SOURCE_URL="$source_url" \
    -t "$name:latest" -f Dockerfile . >&2 ||
    die "building the Dockerfile failed (output above)"
# The archive names the image as the installs do: `<name>:latest` (the kustomize base) and
# `<name>:<crate version>` (the chart's appVersion), both in the form a docker-archive's reader
# (ctr, the kubelet) normalizes the short names to. That form is taken from the archive
# writer's own normalization of the short name, then given to the image as its local names.
mkdir -p "$tmp/out"
"${B[@]}" push --quiet "$name:latest" "docker-archive:$tmp/probe.tar:$name:latest" >&2 ||
    die "exporting the image as a docker-archive failed"
full="$(tar -xOf "$tmp/probe.tar" manifest.json | sed -n 's/.*"RepoTags":\["\([^"]*\)".*/\1/p')"
rm -f "$tmp/probe.tar"
[[ "$full" == */"$name:latest" ]] || die "the docker-archive named the image '$full', not .../$name:latest"
repo_name="${full%:latest}"
if [[ "$repo_name" != "localhost/$name" ]]; then
    "${B[@]}" tag "localhost/$name:latest" "$repo_name:latest" "$repo_name:$crate_version"
    "${B[@]}" rmi "localhost/$name:latest" >/dev/null
fi
"${B[@]}" push --quiet "$repo_name:latest" "docker-archive:$tmp/out/image.tar:$repo_name:$crate_version" >&2 ||
    die "exporting the image as a docker-archive failed"
"${B[@]}" rmi "$repo_name:latest" "$repo_name:$crate_version" >/dev/null 2>&1 || true
rm -rf "$out"
mv "$tmp/out" "$out"
touch "$out/done"
log "image built in $(($(date +%s) - t0))s: $out/image.tar ($(du -k "$out/image.tar" | cut -f1) KiB)"

# Keep the three newest archives.
ls -1dt "$cache"/*/done 2>/dev/null | tail -n +4 | while read -r d; do rm -rf "$(dirname "$d")"; done

echo "$out/image.tar"
