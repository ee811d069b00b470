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
use crate::tasks::Tasks;
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
        let tasks = Tasks::new();
        let started = cluster::start(&args.cluster, prepared.targets_source(), &tasks).await;
        server::serve_prepared(args.server, prepared, options(started, tasks), async move {
            let _ = rx.await;
        })
        .await
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result.map(|()| ExitCode::SUCCESS)
}

/// What the cluster side plugs into the server; `tasks` supervises both sides' background
/// tasks.
fn options(started: Started, tasks: Tasks) -> ServerOptions {
    match started {
        Started::Offline(why) => ServerOptions {
            cluster: Arc::new(Offline),
            readiness: vec![Arc::new(OfflineCheck(why))],
            collectors: Vec::new(),
            tasks,
        },
        Started::Online { cluster } => ServerOptions {
            cluster: cluster.clone(),
            readiness: vec![
                Arc::new(CachesCheck(cluster.clone())),
                Arc::new(CapabilitiesCheck(cluster.clone())),
            ],
            collectors: vec![Box::new(ClusterMetrics(cluster))],
            tasks,
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

/// `cluster-caches`: the caches the current targets need have listed once.
struct CachesCheck(Arc<Cluster>);

impl ReadinessCheck for CachesCheck {
    fn name(&self) -> &str {
        "cluster-caches"
    }

    fn check(&self) -> Result<String, Box<dyn Error + Send + Sync>> {
        Ok(self.0.caches_ready()?)
    }
}

/// `cluster-capabilities`: the probe's findings; not ready until the API server answered a
/// probe round.
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

    use crate::cluster::probe::{Capabilities, Round};
    use crate::engine::{NodeInfo, Targets};
    use kube::runtime::watcher::Event;

    #[test]
    fn offline_check_is_ready() {
        let o = options(Started::Offline("--no-cluster".into()), Tasks::new());
        let [check] = &o.readiness[..] else {
            panic!("one check offline")
        };
        assert_eq!(check.name(), "cluster");
        let detail = check.check().unwrap();
        assert!(detail.starts_with("off (--no-cluster)"), "{detail}");
    }

    /// The checks `/readyz` runs, as `options` composes them: not ready before the first sync
    /// with the API server, ready after it, and still ready when the API server goes away.
    #[test]
    fn online_checks_wait_for_the_first_sync() {
        let cluster = Arc::new(Cluster::with_targets(Arc::new(|| Targets {
            pods: true,
            ..Targets::default()
        })));
        let o = options(
            Started::Online {
                cluster: cluster.clone(),
            },
            Tasks::new(),
        );
        let run = || -> Vec<(String, Result<String, String>)> {
            o.readiness
                .iter()
                .map(|c| (c.name().to_owned(), c.check().map_err(|e| e.to_string())))
                .collect()
        };
        let names: Vec<String> = run().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["cluster-caches", "cluster-capabilities"]);
        let before = run();
        assert!(before.iter().all(|(_, r)| r.is_err()), "{before:?}");
        let err = before[0].1.as_ref().unwrap_err();
        assert!(
            err.starts_with("waiting for the first list of namespaces, nodes, jobsets"),
            "{err}"
        );

        // A round that reached nobody does not count.
        cluster.record_probe(Round::default());
        assert!(run()[1].1.is_err());
        cluster.namespaces().apply(Event::<()>::Init, |()| None);
        cluster.namespaces().apply(Event::<()>::InitDone, |()| None);
        cluster.jobsets().apply(Event::<()>::Init, |()| None);
        cluster.jobsets().apply(Event::<()>::InitDone, |()| None);
        cluster.nodes().apply(Event::<()>::Init, |()| None);
        cluster.nodes().apply(Event::InitApply(()), |()| {
            Some((String::new(), "n".into(), Arc::new(NodeInfo::default())))
        });
        cluster.nodes().apply(Event::<()>::InitDone, |()| None);
        cluster.record_probe(Round {
            capabilities: Capabilities::default(),
            answered: true,
        });
        let after = run();
        assert!(after.iter().all(|(_, r)| r.is_ok()), "{after:?}");

        cluster.record_probe(Round::default());
        assert!(run().iter().all(|(_, r)| r.is_ok()), "latched");
    }
}
