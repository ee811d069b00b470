//! `fuzz/` is its own crate with its own `Cargo.lock` (fuzz/Cargo.toml says why). That lock
//! must pin every package it shares with the main crate at a version the main `Cargo.lock`
//! pins too, so that the fuzz targets exercise the dependencies the webhook ships with, and
//! it must hold every package the fuzz crate needs, so that its `--locked` build
//! (fuzz/run-ci.sh) never re-resolves. The second half needs cargo and the registry
//! (`cargo metadata --locked`, in tests/run-all.sh); this test reads the two files only.
//! How to refresh the fuzz lock: CONTRIBUTING.md, "Dependencies".

use std::collections::{BTreeMap, BTreeSet};

/// Package name → the versions a lock file pins.
fn lock(rel: &str) -> BTreeMap<String, BTreeSet<String>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {rel}: {e}"));
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (i, block) in text.split("[[package]]").enumerate().skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(key)?
                    .trim_start()
                    .strip_prefix('=')?
                    .trim()
                    .strip_prefix('"')?
                    .strip_suffix('"')
                    .map(str::to_owned)
            })
        };
        let (Some(name), Some(version)) = (field("name"), field("version")) else {
            panic!("{rel}: package entry {i} has no name or version:\n{block}");
        };
        out.entry(name).or_default().insert(version);
    }
    assert!(!out.is_empty(), "{rel}: no [[package]] entries");
    out
}

#[test]
fn the_fuzz_lock_pins_shared_packages_at_the_main_locks_versions() {
    let main = lock("Cargo.lock");
    let fuzz = lock("fuzz/Cargo.lock");
    let mut problems = Vec::new();
    for (name, versions) in &fuzz {
        if let Some(main_versions) = main.get(name) {
            for v in versions.difference(main_versions) {
                problems.push(format!(
                    "{name} {v}: fuzz/Cargo.lock pins it, Cargo.lock has {main_versions:?}"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\nrefresh the fuzz lock from the main one: CONTRIBUTING.md, \"Dependencies\"",
        problems.join("\n")
    );
}

/// Every package the main crate's library pulls in at run time is in the fuzz lock: a
/// dependency added to the main crate without refreshing the fuzz lock (as axum once was)
/// is named here, without cargo or the network.
#[test]
fn the_fuzz_lock_holds_the_main_crates_runtime_dependencies() {
    let fuzz = lock("fuzz/Cargo.lock");
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"),
    )
    .expect("reading Cargo.toml");
    let deps = manifest
        .split("\n[dependencies]\n")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("Cargo.toml has a [dependencies] table");
    let names: Vec<&str> = deps
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split('=').next().map(str::trim))
        .collect();
    assert!(names.len() > 10, "too few dependencies read: {names:?}");
    let missing: Vec<&&str> = names.iter().filter(|n| !fuzz.contains_key(**n)).collect();
    assert!(
        missing.is_empty(),
        "dependencies of the main crate missing from fuzz/Cargo.lock: {missing:?}; refresh \
         it from the main lock: CONTRIBUTING.md, \"Dependencies\""
    );
}
