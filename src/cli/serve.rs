//! `serve`, the composition root: parses the flags, loads and checks the config, the TLS
//! files and the client CA once, then starts the cluster side, then the server. `server`
//! and `cluster` do not know each other; what one needs of the other is wired here (the
//! cluster view, its `/readyz` checks and its metrics).

use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tracing::{error, info};

use crate::admission::Offline;
use crate::cluster::{self, Cluster, ClusterArgs, ClusterMetrics, Started};
use crate::server::{self, ReadinessCheck, ServerArgs, ServerOptions};
use crate::telemetry;

// No doc comment: the subcommand's help text is `main`'s.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The `serve` subcommand: logging, crypto provider, runtime, signals; then the files, the
/// cluster side and the server, in that order.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    telemetry::init_logging(args.server.log_format);
    // Process-wide default; `Err` only means one is installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    install_panic_hook();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut signals = Signals::new().context("installing signal handlers")?;
        tokio::spawn(async move {
            let first = signals.recv().await;
            info!(signal = first, "shutdown signal received");
            let _ = tx.send(());
            let second = signals.recv().await;
            error!(
                signal = second,
                "second shutdown signal: exiting without waiting"
            );
            std::process::exit(1);
        });
        // Every file is read and checked before any watch or dry-run probe starts.
        let prepared = server::prepare(&args.server)?;
        let started = cluster::start(&args.cluster, prepared.targets()).await;
        server::serve_prepared(args.server, prepared, options(started), async move {
            let _ = rx.await;
        })
        .await
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result.map(|()| ExitCode::SUCCESS)
}

/// What the cluster side plugs into the server.
fn options(started: Started) -> ServerOptions {
    match started {
        Started::Offline(why) => ServerOptions {
            cluster: Arc::new(Offline),
            readiness: vec![Arc::new(OfflineCheck(why))],
            collectors: Vec::new(),
        },
        Started::Online {
            cluster,
            caches_required,
        } => ServerOptions {
            cluster: cluster.clone(),
            readiness: vec![
                Arc::new(CachesCheck {
                    cluster: cluster.clone(),
                    required: caches_required,
                }),
                Arc::new(CapabilitiesCheck(cluster.clone())),
            ],
            collectors: vec![Box::new(ClusterMetrics(cluster))],
        },
    }
}

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        error!(panic = %info, "panic");
    }));
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

// ---- /readyz adapters ------------------------------------------------------------------------

/// `cluster-caches`: both caches synced (required when the pod target is on).
struct CachesCheck {
    cluster: Arc<Cluster>,
    required: bool,
}

impl ReadinessCheck for CachesCheck {
    fn name(&self) -> &str {
        "cluster-caches"
    }

    fn check(&self) -> Result<String, Box<dyn Error + Send + Sync>> {
        Ok(self.cluster.caches_ready(self.required)?)
    }
}

/// `cluster-capabilities`: the probe's findings; not ready until the first round finished.
struct CapabilitiesCheck(Arc<Cluster>);

impl ReadinessCheck for CapabilitiesCheck {
    fn name(&self) -> &str {
        "cluster-capabilities"
    }

    fn check(&self) -> Result<String, Box<dyn Error + Send + Sync>> {
        Ok(self.0.capabilities_ready()?)
    }
}

/// `cluster`: always ready; says why the cluster features are off.
struct OfflineCheck(String);

impl ReadinessCheck for OfflineCheck {
    fn name(&self) -> &str {
        "cluster"
    }

    fn check(&self) -> Result<String, Box<dyn Error + Send + Sync>> {
        Ok(cluster::offline_detail(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_check_is_ready() {
        let detail = OfflineCheck("--no-cluster".into()).check().unwrap();
        assert!(detail.starts_with("off (--no-cluster)"), "{detail}");
    }
}
