//! No `unsafe` in the project's code: every crate root under src/ starts with
//! `#![forbid(unsafe_code)]` (which the compiler enforces and no inner `allow` can lift), and
//! the keyword appears nowhere in src/ (so a new crate root without the attribute, or an
//! `unsafe` hidden behind a macro of ours, is caught too).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `line` without its `//` comment (string literals containing `//` are rare enough in this
/// code base that a false negative there is acceptable; the compiler check stays).
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or_default()
}

#[test]
fn crate_roots_forbid_unsafe_code() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut roots = vec![src.join("lib.rs"), src.join("main.rs")];
    if src.join("bin").is_dir() {
        rust_files(&src.join("bin"), &mut roots);
    }
    for root in roots {
        let text = std::fs::read_to_string(&root).unwrap();
        let first_code = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("//"))
            .unwrap_or_default();
        assert_eq!(
            first_code,
            "#![forbid(unsafe_code)]",
            "{} must start (after its doc comment) with #![forbid(unsafe_code)]",
            root.display()
        );
    }
}

#[test]
fn no_unsafe_keyword_in_src() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() > 10, "found only {} files", files.len());
    let mut hits = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let c = code(line);
            let words = c.split(|ch: char| !(ch.is_alphanumeric() || ch == '_'));
            if words.into_iter().any(|w| w == "unsafe") {
                hits.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(hits.is_empty(), "`unsafe` in src/:\n{}", hits.join("\n"));
}
