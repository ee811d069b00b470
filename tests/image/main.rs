//! The image users install, built from the Dockerfile unchanged by `tests/image/build.sh`
//! (buildah against a local stand-in of the Rust builder image; cached by a key of the
//! Dockerfile and the sources) and read back from its docker-archive: small, one static and
//! stripped binary in one layer, no shell, non-root, labelled, and it runs.
//!
//! `cargo test --features e2e --test image` (as root: the build uses buildah's chroot
//! isolation, and `--version` runs in a chroot of the image's file system).

use std::process::Command;
use std::sync::OnceLock;

use object::elf;
use object::read::elf::{ElfFile64, ProgramHeader as _};
use object::{Object as _, ObjectSection as _};
use testkit::image::{Image, clean_path, image_archive};

/// The size bound of the image: the sum of its (uncompressed) layers and the archive itself.
const MAX_IMAGE_BYTES: u64 = 20_000_000;
const BINARY: &str = "usr/local/bin/jobset-restart-webhook";
/// The non-root user of the restricted Pod Security Standard's usual images (distroless's
/// `nonroot`); the manifests' securityContext runs the same uid.
const USER: &str = "65532:65532";

fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| Image::read(image_archive()).unwrap_or_else(|e| panic!("{e}")))
}

fn binary() -> &'static [u8] {
    &image()
        .file(BINARY)
        .unwrap_or_else(|| panic!("the image has no file {BINARY}"))
        .data
}

#[test]
fn image_is_under_the_size_bound() {
    let image = image();
    let layers: u64 = image.layers.iter().map(|(size, _)| size).sum();
    println!(
        "image: {} layer(s), {layers} bytes of layers, archive {} bytes, binary {} bytes",
        image.layers.len(),
        image.archive_bytes,
        binary().len()
    );
    assert!(
        layers <= MAX_IMAGE_BYTES,
        "the image's layers hold {layers} bytes, over the bound of {MAX_IMAGE_BYTES}"
    );
    assert!(
        image.archive_bytes <= MAX_IMAGE_BYTES,
        "the archive has {} bytes, over the bound of {MAX_IMAGE_BYTES}",
        image.archive_bytes
    );
}

/// One layer with the binary and its folders, nothing else: no shell, no libc, no CA bundle,
/// no passwd file.
#[test]
fn the_only_layer_holds_exactly_the_binary() {
    let image = image();
    assert_eq!(
        image.layers.len(),
        1,
        "expected one layer (FROM scratch + the binary), manifest {}",
        image.manifest
    );
    let entries = &image.layers[0].1;
    let files: Vec<&str> = entries
        .iter()
        .filter(|e| !e.is_dir())
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(files.len(), 1, "the layer's files: {files:?}");
    assert_eq!(clean_path(files[0]), BINARY, "the layer's files: {files:?}");
    for e in entries.iter().filter(|e| e.is_dir()) {
        let dir = clean_path(&e.path);
        assert!(
            dir.is_empty() || BINARY.starts_with(&format!("{dir}/")),
            "folder {dir} is not on the binary's path"
        );
    }
    for shell in ["bin/sh", "bin/bash", "bin/busybox", "usr/bin/sh"] {
        assert!(
            image.file(shell).is_none(),
            "the image has a shell: {shell}"
        );
    }
    let bin = image.file(BINARY).unwrap();
    assert_eq!(
        (bin.uid, bin.gid, bin.mode & 0o7777),
        (0, 0, 0o755),
        "the binary's owner and mode: root-owned, not writable by the user it runs as"
    );
    assert_eq!(image.entrypoint(), Some(format!("/{BINARY}").as_str()));
}

/// Stripped in the Dockerfile (the release profile keeps line tables for the profilers):
/// no debug sections and no symbol table; static (no program interpreter), as `scratch` has
/// no libc.
#[test]
fn the_binary_is_static_and_stripped() {
    let file = ElfFile64::<object::Endianness>::parse(binary())
        .unwrap_or_else(|e| panic!("{BINARY} is not a 64-bit ELF file: {e}"));
    let names: Vec<&str> = file.sections().filter_map(|s| s.name().ok()).collect();
    let debug: Vec<&&str> = names
        .iter()
        .filter(|n| n.starts_with(".debug") || n.starts_with(".zdebug"))
        .collect();
    assert!(debug.is_empty(), "debug sections: {debug:?}");
    assert!(
        !names.contains(&".symtab") && !names.contains(&".strtab"),
        "a symbol table: {names:?}"
    );
    assert!(names.contains(&".text"), "no .text section: {names:?}");
    let endian = file.endian();
    let interp = file
        .elf_program_headers()
        .iter()
        .any(|ph| ph.p_type(endian) == elf::PT_INTERP);
    assert!(
        !interp,
        "the binary names a program interpreter (dynamically linked)"
    );
    assert_eq!(
        file.elf_header().e_type.get(endian),
        elf::ET_DYN,
        "not position-independent (static-pie keeps address space randomization)"
    );
}

#[test]
fn config_runs_the_binary_as_65532() {
    let c = &image().config["config"];
    assert_eq!(c["User"], USER, "config: {c}");
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!([format!("/{BINARY}")]),
        "config: {c}"
    );
    assert_eq!(c["Cmd"][0], "serve", "config: {c}");
    assert_eq!(image().config["os"], "linux");
    assert_eq!(image().config["architecture"], "amd64");
}

/// The OCI annotations of the image config, equal to Cargo.toml's package fields.
#[test]
fn labels_name_the_package() {
    let labels = &image().config["config"]["Labels"];
    for (key, want) in [
        ("title", env!("CARGO_PKG_NAME")),
        ("description", env!("CARGO_PKG_DESCRIPTION")),
        ("licenses", env!("CARGO_PKG_LICENSE")),
        ("version", env!("CARGO_PKG_VERSION")),
    ] {
        assert_eq!(
            labels[format!("org.opencontainers.image.{key}")],
            want,
            "labels: {labels}"
        );
    }
    // The repository URL is the checkout's `origin` when it has an https one (build.sh passes
    // it as SOURCE_URL); the label is there either way.
    assert!(
        labels["org.opencontainers.image.source"].is_string(),
        "labels: {labels}"
    );
}

/// The archive carries the two names the installs use, `:latest` (the kustomize base) and
/// the chart's appVersion (the crate version), under one repository: the name an importer
/// (ctr, the kubelet) normalizes `jobset-restart-webhook` to, so that both installs find it.
#[test]
fn archive_is_tagged_for_both_installs() {
    let tags: Vec<&str> = image().manifest["RepoTags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str())
        .collect();
    let repos: std::collections::BTreeSet<&str> = tags
        .iter()
        .filter_map(|t| t.rsplit_once(':').map(|(repo, _)| repo))
        .collect();
    assert_eq!(repos.len(), 1, "RepoTags {tags:?}: not one repository");
    let repo = repos.first().unwrap();
    assert!(
        repo.ends_with("/jobset-restart-webhook") && !repo.starts_with("localhost/"),
        "RepoTags {tags:?}: the repository is not the normalized short name"
    );
    for tag in ["latest", env!("CARGO_PKG_VERSION")] {
        assert!(
            tags.contains(&format!("{repo}:{tag}").as_str()),
            "no {repo}:{tag} in RepoTags {tags:?}"
        );
    }
}

/// `--version` from the image's own file system (a chroot holding only its layer), as the
/// config's user: the binary needs nothing the image lacks and prints the crate version.
#[test]
fn the_binary_runs_from_the_image_as_its_user() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = tempfile::tempdir().unwrap();
    // The chroot's "/" must be searchable by the unprivileged user.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    image()
        .extract(root.path())
        .unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new("chroot")
        .arg(format!("--userspec={USER}"))
        .arg(root.path())
        .arg(format!("/{BINARY}"))
        .arg("--version")
        // Nothing of the host's environment reaches the binary; PATH stays only so that
        // `chroot` itself is found (it lives in /usr/sbin on Debian).
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("running chroot (coreutils)");
    assert!(
        out.status.success(),
        "`chroot --userspec={USER} <image> /{BINARY} --version` failed ({}; it needs root): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{} {}\n", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
    );
}
