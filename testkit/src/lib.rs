//! The harness of jobset-restart-webhook's tests, benches and examples, in one place instead
//! of `#[path]` includes and copies:
//!
//! - [`webhook_process`]: the real binary as a process (`certs`, `serve` on loopback, HTTPS
//!   and raw TLS clients, a Prometheus text reader); [`admission_reviews`]: the requests
//!   kube-apiserver sends and readers of the answers; [`hardening`]: what the hostile-input and
//!   fault tests add (bounded tests, `/proc` memory figures, a steady-rate client); [`image`]:
//!   the image built from the Dockerfile, read from its archive.
//! - [`cluster`], [`webhook`], [`node`]: a real control plane, our webhook registered on it,
//!   a real node (the e2e tests and the `apiserver` and `restart` benches).
//! - [`engine_inputs`]: the engine bench's JobSets (also profiled by an example);
//!   [`engine_support`]: what the engine's golden and property tests compare.
//! - [`util`]: polling, free ports, a plain-HTTP GET, YAML loading; [`stats`]: medians and
//!   the load average for bench reports; [`plot`]: the restart bench's rows as CSV and SVG.

pub mod admission_reviews;
pub mod cluster;
pub mod engine_inputs;
pub mod engine_support;
pub mod hardening;
pub mod image;
pub mod node;
pub mod plot;
pub mod stats;
pub mod util;
pub mod webhook;
pub mod webhook_process;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The `jobset-restart-webhook` binary that Cargo built for the running test or bench.
///
/// `env!("CARGO_BIN_EXE_…")` exists only while Cargo compiles the package's own integration
/// tests and benches, not this crate; Cargo puts the binary in the profile folder
/// (`target/<profile>/`) whose `deps/` or `examples/` holds the running executable.
pub fn webhook_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("CARGO_BIN_EXE_jobset-restart-webhook") {
            return PathBuf::from(path);
        }
        let exe = std::env::current_exe().expect("the running test's path");
        let mut dir = exe.parent().expect("the running test's folder");
        if matches!(
            dir.file_name().and_then(|n| n.to_str()),
            Some("deps" | "examples")
        ) {
            dir = dir.parent().expect("the profile folder");
        }
        let bin = dir.join(format!(
            "jobset-restart-webhook{}",
            std::env::consts::EXE_SUFFIX
        ));
        assert!(
            bin.is_file(),
            "{} is missing: run the tests and benches through cargo, which builds it",
            bin.display()
        );
        bin
    })
}

/// The start of a bench on a real control plane (`apiserver`, `restart`): `Some(quick)` under
/// `cargo bench --features e2e --bench NAME` (`-- --quick` for a short run), with rustls'
/// crypto provider installed; `None` after a line saying so otherwise, since
/// `cargo test --all-targets --features e2e` runs every bench binary once.
pub fn control_plane_bench(name: &str) -> Option<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("{name} bench: runs only under `cargo bench --features e2e --bench {name}`");
        return None;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Some(quick)
}
