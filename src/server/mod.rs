//! `serve`: the HTTPS admission server and its plain-HTTP admin port.
//!
//! Routing is axum's [`Router`](axum::Router) (four paths over six port/path pairs:
//! `/mutate`, `/healthz` and `/readyz` on the webhook port; `/metrics`, `/healthz` and
//! `/readyz` on the admin port), served by our own connection layer on tokio-rustls + hyper
//! rather than `axum::serve` or axum-server, which would own the accept loop. The connection
//! layer is where the product's guarantees live:
//! - a per-handshake certificate resolver ([`tls::CertResolver`], an `ArcSwap`) so rotated
//!   files apply to new handshakes without dropping connections;
//! - HTTP/1.1 only (ALPN `http/1.1`): kube-apiserver calls service webhooks over HTTP/1.1,
//!   and h2 would need its own body, stream and deadline bounds;
//! - separate header-read and idle deadlines (hyper's `header_read_timeout` would also cut
//!   idle keep-alive connections after a few seconds; see [`conn`]);
//! - a connection cap, `TCP_NODELAY`, a lingering close after refusing a body, and a drain
//!   that finishes in-flight requests and closes keep-alive connections.
//!
//! Data flow: bytes in → [`conn`] → [`routes`] → `mutate` (`body` reads within the bounds) →
//! `admission::review` (on a blocking worker, within the in-flight bound) → bytes out. Nothing here knows the
//! AdmissionReview format.
//!
//! The files (config, serving pair, client CA) are read and checked by [`prepare`], before
//! the composition root (`cli::serve`) starts anything else.
//!
//! Shutdown (SIGTERM or SIGINT): `/readyz` fails at once on both ports; after
//! `--drain-delay` (default 0: use it, or a preStop sleep, so endpoints update before the
//! listener closes) the webhook port stops accepting, every connection finishes its
//! current request and closes, and the process waits up to `--shutdown-grace-period` for
//! them, then exits 0. A second signal exits at once with status 1.

mod body;
mod config_store;
mod conn;
mod files;
mod layers;
mod mutate;
mod ready;
mod routes;
mod state;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use crate::admission::{ClusterView, Offline};
use crate::args::{
    DELAY, PERIOD, TIMEOUT, parse_bytes, parse_delay, parse_period, parse_targets, parse_timeout,
};
use crate::engine::Targets;
use crate::tasks::Tasks;
use crate::telemetry::{LogFormat, Metrics};

pub use body::MAX_BODY;
pub use conn::MAX_HEAD;
pub use ready::ReadinessCheck;
pub use tls::TlsMinVersion;

/// Connections the admin port serves at once (probes and scrapes need few), and from one
/// address. At the cap an idle connection, or one that has not sent its request yet, makes
/// room for the newcomer ([`conn::Evict::IdleOrWaiting`]), so other clients cannot starve
/// the kubelet's probes (`tests/serve/lifecycle.rs`, probes answer beside held connections).
const ADMIN_MAX_CONNECTIONS: usize = 64;
const ADMIN_MAX_CONNECTIONS_PER_PEER: usize = 16;
/// Idle keep-alive time on the admin port: kubelet probes open a connection per probe, and a
/// scraper that comes back after this reconnects.
const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections of the private loopback listener that `/readyz`'s TLS self-check dials.
const SELF_CHECK_CONNECTIONS: usize = 4;

/// `serve`'s flags for the two ports, the files they serve from and their limits.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Address of the HTTPS webhook port (port 0 picks a free port; the log says which).
    #[arg(long, env = "JRW_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Address of the plain-HTTP admin port: /metrics, /healthz, /readyz.
    #[arg(long, env = "JRW_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// PEM certificate chain (leaf first); re-read when it changes. Needs --tls-key.
    /// Without both, a self-signed development CA and certificate are generated.
    #[arg(long, env = "JRW_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert; re-read when it changes.
    #[arg(long, env = "JRW_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM bundle of the CA(s) that sign the API server's client certificate. When given,
    /// the webhook port requires a client certificate signed by one of them (mutual TLS);
    /// re-read when it changes. The admin port stays plain HTTP.
    #[arg(long, env = "JRW_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// The oldest TLS version the webhook port accepts: `1.3`, or `1.2` for clients
    /// without TLS 1.3.
    #[arg(long, env = "JRW_TLS_MIN_VERSION", value_enum, default_value_t = TlsMinVersion::V1_3)]
    pub tls_min_version: TlsMinVersion,
    /// The name the API server dials (the Service's `<service>.<namespace>.svc`). When given,
    /// `/readyz` fails while the serving certificate does not cover it (a rotation to a
    /// certificate for another name).
    #[arg(long, env = "JRW_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// Cluster config file (YAML): defaults, presets, targets. Re-read when it changes.
    #[arg(long, env = "JRW_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to mutate: `jobsets`, `pods` or `jobsets,pods`; overrides the config's targets.
    #[arg(long, env = "JRW_TARGETS", value_parser = parse_targets)]
    pub targets: Option<Targets>,
    /// Log line format.
    #[arg(long, env = "JRW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// After a shutdown signal, how long in-flight requests may take to finish (0s to 10m).
    #[arg(long, env = "JRW_SHUTDOWN_GRACE_PERIOD", default_value = "30s", value_parser = parse_delay)]
    pub shutdown_grace_period: Duration,
    /// After a shutdown signal, keep serving (with /readyz failing and every answer closing
    /// its connection) this long before the listener closes, so that endpoints update first
    /// (0s to 10m).
    #[arg(long, env = "JRW_DRAIN_DELAY", default_value = "0s", value_parser = parse_delay)]
    pub drain_delay: Duration,
    /// How often --tls-cert, --tls-key, --client-ca and --config are checked for changes
    /// (100ms to 24h).
    #[arg(long, env = "JRW_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_period)]
    pub reload_interval: Duration,
    /// Open connections on the webhook port. At the cap the oldest idle keep-alive
    /// connection is closed to make room; a newcomer is closed at once only when every open
    /// connection is handling a request.
    #[arg(long, env = "JRW_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Open connections on the webhook port from one IP address (at it, that address's
    /// oldest idle connection makes room). Default: half of --max-connections, because every
    /// API server call may come from one address (one API server, or a Konnectivity agent
    /// carrying them all): half leaves it room for as many calls at once as the cap allows
    /// anyone, and no other single address can take more than the other half.
    #[arg(long, env = "JRW_MAX_CONNECTIONS_PER_PEER",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections_per_peer: Option<u32>,
    /// Reviews in flight (waiting for a worker or running); more are answered 429 with
    /// `Retry-After: 1` at once, which kube-apiserver retries (docs/security.md "Limits").
    #[arg(long, env = "JRW_MAX_REVIEWS_IN_FLIGHT", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_reviews_in_flight: u32,
    /// Time a client has to send a request's head (from its first byte, or from the end of
    /// the TLS handshake); 100ms to 10m, as every timeout.
    #[arg(long, env = "JRW_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = parse_timeout)]
    pub header_read_timeout: Duration,
    /// Time a request's body may take to arrive (answered 408 after it); 100ms to 10m.
    #[arg(long, env = "JRW_BODY_READ_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub body_read_timeout: Duration,
    /// Memory for request bodies, shared by all connections, beyond the first 64 KiB of each
    /// (e.g. `32Mi`; at least the 7 MiB body limit). A large body that needs more waits,
    /// within --body-read-timeout, for others to finish. Keep it, plus --max-connections
    /// times 64 KiB, well under the container's memory limit.
    #[arg(long, env = "JRW_MAX_BODY_MEMORY", default_value = "32Mi", value_parser = parse_bytes)]
    pub max_body_memory: usize,
    /// Time a TLS handshake may take (100ms to 10m).
    #[arg(long, env = "JRW_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub tls_handshake_timeout: Duration,
    /// An idle keep-alive connection is closed after this long (longer than the API
    /// server's 90 s, so the client closes first); 100ms to 10m.
    #[arg(long, env = "JRW_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_timeout)]
    pub idle_timeout: Duration,
}

/// What the rest of the program plugs into the server.
pub struct ServerOptions {
    /// Namespace labels, parent JobSets and cluster facts for the request path.
    pub cluster: Arc<dyn ClusterView>,
    /// Extra `/readyz` conditions (e.g. caches synced).
    pub readiness: Vec<Arc<dyn ReadinessCheck>>,
    /// Extra metrics computed at scrape time (e.g. the cluster caches and capabilities).
    pub collectors: Vec<Box<dyn prometheus_client::collector::Collector>>,
    /// The supervisor of the background tasks (the reloaders here; the cluster side's
    /// watches and probe loop when it shares it); its restart counts are exported.
    pub tasks: Tasks,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            cluster: Arc::new(Offline),
            readiness: Vec::new(),
            collectors: Vec::new(),
            tasks: Tasks::new(),
        }
    }
}

/// The files the server runs from, read and checked: the cluster config, the serving pair
/// (or a generated development pair) and the client CA bundle. [`prepare`] builds it before
/// anything starts, so a bad file stops `serve` before any watch or probe runs.
pub struct Prepared {
    store: Arc<config_store::ConfigStore>,
    config_snapshot: Option<files::Snapshot>,
    cert: tls::Loaded,
    /// `(cert path, key path, what was read)` when the pair comes from files.
    cert_files: Option<(PathBuf, PathBuf, files::Snapshot)>,
    resolver: Arc<tls::CertResolver>,
    client_auth: Option<Arc<tls::ClientAuth>>,
    tls_config: Arc<rustls::ServerConfig>,
}

impl Prepared {
    /// The targets the server starts with: `--targets`, else the config file's, else the
    /// default.
    pub fn targets(&self) -> Targets {
        self.store.load_current().targets
    }

    /// The targets as they are now, for as long as the server runs (the config file is
    /// re-read when it changes).
    pub fn targets_source(&self) -> Arc<dyn Fn() -> Targets + Send + Sync> {
        let store = self.store.clone();
        Arc::new(move || store.load_current().targets)
    }
}

/// Reads and checks everything in the arguments and their files, binding nothing.
pub fn prepare(args: &ServerArgs) -> anyhow::Result<Prepared> {
    // The CLI's parsers bound every duration already; this is for callers that build
    // `ServerArgs` themselves.
    for (flag, value, range) in [
        ("--reload-interval", args.reload_interval, PERIOD),
        ("--shutdown-grace-period", args.shutdown_grace_period, DELAY),
        ("--drain-delay", args.drain_delay, DELAY),
        (
            "--tls-handshake-timeout",
            args.tls_handshake_timeout,
            TIMEOUT,
        ),
        ("--header-read-timeout", args.header_read_timeout, TIMEOUT),
        ("--body-read-timeout", args.body_read_timeout, TIMEOUT),
        ("--idle-timeout", args.idle_timeout, TIMEOUT),
    ] {
        if let Err(e) = range.check(value) {
            bail!("{flag}: {e}");
        }
    }
    let (store, config_snapshot) =
        config_store::ConfigStore::load(args.config.as_deref(), args.targets)?;

    let (cert, cert_files) = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let (loaded, snapshot) = tls::load_files(cert, key)?;
            tls::check_validity(&loaded, &cert.display().to_string());
            (loaded, Some((cert.clone(), key.clone(), snapshot)))
        }
        (None, None) => {
            let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
            let g = crate::certs::generate(&names, 365)
                .context("generating the development certificate")?;
            let loaded = tls::load_pem(
                g.cert_pem.as_bytes(),
                g.key_pem.as_bytes(),
                "generated",
                "generated",
            )
            .map_err(|e| anyhow::anyhow!("development certificate: {e}"))?;
            warn!(
                names = %names.join(","),
                not_after = %g.not_after.date(),
                "no --tls-cert/--tls-key: generated a self-signed development CA and certificate \
                 (kept in memory only; clients must skip verification). Use `certs` and \
                 --tls-cert/--tls-key for anything else"
            );
            (loaded, None)
        }
        _ => bail!("--tls-cert and --tls-key go together: give both or neither"),
    };
    let resolver = Arc::new(tls::CertResolver::new(&cert));
    let client_auth = tls::ClientAuth::load(args.client_ca.as_deref())?;
    let tls_config =
        tls::server_config(resolver.clone(), args.tls_min_version, client_auth.as_ref())?;
    Ok(Prepared {
        store: Arc::new(store),
        config_snapshot,
        cert,
        cert_files,
        resolver,
        client_auth,
        tls_config,
    })
}

/// [`prepare`], then [`serve_prepared`]: for callers that start nothing in between.
pub async fn serve(
    args: ServerArgs,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let prepared = prepare(&args)?;
    serve_prepared(args, prepared, options, shutdown).await
}

/// Binds both ports and serves until `shutdown` resolves, then drains (see the module
/// comment).
pub async fn serve_prepared(
    args: ServerArgs,
    prepared: Prepared,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Prepared {
        store,
        config_snapshot,
        cert: loaded,
        cert_files,
        resolver,
        client_auth,
        tls_config,
    } = prepared;
    let mut metrics = Metrics::new();
    for c in options.collectors {
        metrics.register_collector(c);
    }
    let tasks = options.tasks;
    metrics.register_collector(Box::new(tasks.clone()));
    let metrics = Arc::new(metrics);
    config_store::record_initial(&metrics);
    metrics.cert_not_after.set(loaded.not_after);

    // 1. Bind.
    let tls_listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let admin_listener = TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding --metrics-listen {}", args.metrics_listen))?;
    let tls_addr = tls_listener
        .local_addr()
        .context("reading the webhook port's address")?;
    let admin_addr = admin_listener
        .local_addr()
        .context("reading the admin port's address")?;

    // The TLS self-check of `/readyz` dials its own loopback listener, served like the
    // webhook port (same TLS config and certificate resolver, same routes) with its own few
    // connections: the webhook port's cap cannot make the replica NotReady, and its
    // handshakes (refused on purpose under --client-ca) are not counted as TLS errors.
    let self_check_listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .context("binding the /readyz self-check's loopback listener")?;
    let self_check_addr = self_check_listener
        .local_addr()
        .context("reading the self-check listener's address")?;

    // 2. Serve.
    let accepting = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let readiness = Arc::new(ready::Readiness::new(
        tls::SelfCheck::new(self_check_addr)?.expecting_client_auth(client_auth.is_some())?,
        ready::Listening {
            addr: tls_addr,
            accepting: accepting.clone(),
        },
        ready::CertCheck {
            resolver: resolver.clone(),
            server_name: args.tls_server_name.clone(),
        },
        store.clone(),
        options.readiness,
    ));
    let app = Arc::new(state::App {
        config: store.clone(),
        cluster: options.cluster,
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        body: body::BodyLimits {
            timeout: args.body_read_timeout,
            budget: Arc::new(Semaphore::new(
                args.max_body_memory.clamp(MAX_BODY, Semaphore::MAX_PERMITS),
            )),
        },
        reviews: mutate::Reviews::new(args.max_reviews_in_flight as usize),
    });
    let limits = conn::Limits {
        header_read: args.header_read_timeout,
        idle: args.idle_timeout,
        tls_handshake: args.tls_handshake_timeout,
    };
    // `drain`: the webhook port stops accepting and its connections finish and close.
    // `stop`: everything else (admin port, reloaders) ends.
    let (drain_tx, drain_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let max = args.max_connections as usize;
    let per_peer = args
        .max_connections_per_peer
        .map_or(max.div_ceil(2), |n| n as usize);
    let webhook_connections = conn::Conns::new(max, per_peer, conn::Evict::Idle);
    let tls_acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
    let webhook = conn::Listener {
        service: routes::webhook(&app),
        metrics: Some(metrics.clone()),
        tls: Some(tls_acceptor.clone()),
        limits,
        connections: webhook_connections.clone(),
        shutdown: drain_rx.clone(),
    };
    let self_check = conn::Listener {
        metrics: None,
        connections: conn::Conns::new(
            SELF_CHECK_CONNECTIONS,
            SELF_CHECK_CONNECTIONS,
            conn::Evict::IdleOrWaiting,
        ),
        shutdown: stop_rx.clone(),
        ..webhook.clone()
    };
    let admin = conn::Listener {
        service: routes::admin(&app),
        metrics: None,
        tls: None,
        limits: conn::Limits {
            idle: ADMIN_IDLE_TIMEOUT.min(args.idle_timeout),
            ..limits
        },
        connections: conn::Conns::new(
            ADMIN_MAX_CONNECTIONS,
            ADMIN_MAX_CONNECTIONS_PER_PEER,
            conn::Evict::IdleOrWaiting,
        ),
        shutdown: stop_rx.clone(),
    };
    let webhook_accept = {
        let accepting = accepting.clone();
        tokio::spawn(async move {
            // Also when the loop panics: `/readyz` reports the port as not accepting.
            let _flag = ClearOnDrop(accepting);
            conn::accept_loop(tls_listener, webhook, drain_rx).await;
        })
    };
    tokio::spawn(conn::accept_loop(
        self_check_listener,
        self_check,
        stop_rx.clone(),
    ));
    let admin_accept = tokio::spawn(conn::accept_loop(admin_listener, admin, stop_rx.clone()));
    // The reloaders end at shutdown (`stop`); before that, an end or a panic restarts them.
    let interval = args.reload_interval;
    if let Some(snapshot) = config_snapshot {
        let (store, metrics, stop) = (store.clone(), metrics.clone(), stop_rx.clone());
        tasks.spawn_until("config-reload", Some(stop_rx.clone()), move || {
            config_store::reload_loop(
                store.clone(),
                snapshot.clone(),
                metrics.clone(),
                interval,
                stop.clone(),
            )
        });
    }
    if let Some((cert, key, snapshot)) = cert_files {
        let (resolver, metrics, stop) = (resolver.clone(), metrics.clone(), stop_rx.clone());
        tasks.spawn_until("cert-reload", Some(stop_rx.clone()), move || {
            tls::reload_loop(
                cert.clone(),
                key.clone(),
                snapshot.clone(),
                resolver.clone(),
                metrics.clone(),
                interval,
                stop.clone(),
            )
        });
    }
    if let Some(auth) = client_auth {
        let stop = stop_rx.clone();
        tasks.spawn_until("client-ca-reload", Some(stop_rx.clone()), move || {
            auth.clone().reload_loop(interval, stop.clone())
        });
    }
    let targets = store.load_current().targets;
    info!(
        %tls_addr,
        %admin_addr,
        %targets,
        config = %args.config.as_ref().map_or("-".to_owned(), |p| p.display().to_string()),
        client_ca = %args.client_ca.as_ref().map_or("-".to_owned(), |p| p.display().to_string()),
        cert_subject = %loaded.subject,
        cert_not_after = loaded.not_after,
        "listening"
    );

    // 3. Drain.
    shutdown.await;
    readiness.start_draining();
    info!(drain_delay = ?args.drain_delay, "draining: /readyz fails and answers close their connections");
    if !args.drain_delay.is_zero() {
        tokio::time::sleep(args.drain_delay).await;
    }
    let _ = drain_tx.send(true);
    let _ = webhook_accept.await;
    info!(grace_period = ?args.shutdown_grace_period, "webhook port closed; waiting for in-flight requests");
    match tokio::time::timeout(args.shutdown_grace_period, webhook_connections.all_closed()).await {
        Ok(()) => info!("all connections finished; exiting"),
        Err(_) => {
            let open = webhook_connections.len();
            warn!(open, "grace period over; closing the remaining connections");
        }
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), admin_accept).await;
    Ok(())
}

/// Sets the flag to `false` when dropped (a task's end, panics included).
struct ClearOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serve` itself refuses a zero period (for callers that build `ServerArgs` without the
    /// CLI's parser), before binding anything.
    #[test]
    fn serve_refuses_a_zero_reload_interval() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServerArgs,
        }
        let mut args = Cli::parse_from(["serve"]).serve;
        args.reload_interval = Duration::ZERO;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = runtime
            .block_on(serve(args, ServerOptions::default(), async {}))
            .unwrap_err();
        assert!(e.to_string().contains("--reload-interval"), "{e}");
    }
}
