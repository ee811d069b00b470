//! What the webhook knows about the cluster it runs in (the pod target, namespace defaults
//! and capability detection; see the README), kept off the request path: background tasks
//! fill caches and facts, requests only read them.
//!
//! - Namespaces: a metadata-only watch (`Api<PartialObjectMeta<Namespace>>`: the API server
//!   sends metadata only), keeping each namespace's labels (for namespace defaults).
//! - JobSets (`jobset.x-k8s.io/v1alpha2`): a watch whose objects deserialize straight into
//!   [`jobset::SlimJobSet`] (names and `restart.jobset.dev/*` annotations only), for the pod
//!   target's parent lookup; it runs only while the current config's targets include `pods`
//!   (switched on and off with the config, [`Cluster::jobset_switch`]).
//! - Nodes: a watch reduced to [`node::SlimNode`]s (labels, cordon, whether
//!   `status.declaredFeatures` lists `RestartAllContainersOnContainerExits`), summarised
//!   into an [`engine::Nodes`] snapshot whenever a node's reduced form changes: the default
//!   action is `RestartAllContainers` only where the nodes declare it (`engine::nodes`).
//! - Capabilities: [`probe`] at start and every `--capability-interval`; a failed probe
//!   keeps the last known answer.
//!
//! Every one of these runs as a supervised task ([`crate::tasks`]): restarted when it ends
//! or panics. `/readyz` waits for the first sync with the API server (the caches listed, one
//! probe round answered; [`readiness`]); after that, staleness shows in metrics, not in
//! readiness ([`metrics`]), so that an API-server blip does not take every replica out.
//!
//! Without credentials (no kubeconfig, not in a cluster) or with `--no-cluster`, `serve`
//! runs from annotations and the config file alone and says once which features are off.
//! The client comes from the standard places (`KUBECONFIG`/`~/.kube/config`, then the
//! in-cluster service account).

pub mod cache;
pub mod jobset;
mod metrics;
pub mod node;
pub mod probe;
mod readiness;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::admission::ClusterView;
use crate::args::parse_period;
use crate::engine::{self, ClusterFacts, NodeInfo, ParentJobSet, Targets};
use crate::tasks::Tasks;
use cache::Cache;
use probe::Capabilities;

pub use metrics::ClusterMetrics;
pub use readiness::{NotReady, offline_detail};

/// `serve`'s flags for the cluster connection.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Do not talk to the API server even when credentials exist: no namespace defaults, no
    /// pod target, no capability detection.
    #[arg(long, env = "JRW_NO_CLUSTER")]
    pub no_cluster: bool,
    /// The webhook's own namespace (set POD_NAMESPACE from the downward API): the
    /// capability probe's dry-run Pods are created there. Default: the kubeconfig context's
    /// or service account's namespace, else `default`.
    #[arg(long = "namespace", env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// How often the cluster's capabilities are probed again (a failed round is retried
    /// after at most 30 s).
    #[arg(long, env = "JRW_CAPABILITY_INTERVAL", default_value = "5m",
          value_parser = parse_period)]
    pub capability_interval: Duration,
}

/// JobSets per page of a list (kube's default is 500). A page is read whole into memory
/// before the slim parser skips the pod templates, and a JobSet may be up to the 1.5 MiB
/// object limit, so a page can cost up to 20 × 1.5 MiB = 30 MiB at worst (100 of them
/// would have been 150 MiB, past the Deployment's memory limit).
const JOBSET_PAGE: u32 = 20;

/// How often the JobSet watch checks whether the config's targets still include `pods`.
const SWITCH_INTERVAL: Duration = Duration::from_secs(1);

/// A failed probe round is retried after at most this long.
const RETRY_INTERVAL: Duration = Duration::from_secs(30);

type Labels = BTreeMap<String, String>;

/// The current targets (the config is re-read while `serve` runs).
pub type TargetsSource = Arc<dyn Fn() -> Targets + Send + Sync>;

/// The caches and facts the request path reads.
pub struct Cluster {
    /// The targets now: whether the JobSet watch runs and `/readyz` waits for it.
    targets: TargetsSource,
    /// The supervised JobSet watch while the pod target is on.
    jobset_watch: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    namespaces: Cache<Arc<Labels>>,
    jobsets: Cache<Arc<jobset::CachedParent>>,
    nodes: Cache<Arc<NodeInfo>>,
    /// The nodes summarised for the engine; `None` until the node watch has listed them.
    node_summary: ArcSwapOption<engine::Nodes>,
    capabilities: ArcSwap<Capabilities>,
    /// The first probe round has finished (whatever it found).
    probed: AtomicBool,
    /// Unix seconds of the last finished probe round.
    probed_at: AtomicU64,
    /// Unix seconds of the last probe round that the API server answered (0: none yet).
    answered_at: AtomicU64,
    /// Why the last round got no answer, for `/readyz`.
    unanswered: std::sync::Mutex<Option<String>>,
    /// Pod reviews whose parent JobSet was not in the cache.
    parent_misses: AtomicU64,
    /// Reviews whose namespace was not in the namespace cache.
    namespace_misses: AtomicU64,
    /// The JobSet watch runs (only with the pod target: it is the pod target's parent
    /// lookup, and the ClusterRole grants JobSets only then).
    jobsets_watched: AtomicBool,
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Cluster {
    /// A cluster view for the default targets (JobSets only).
    pub fn new() -> Self {
        Self::with_targets(Arc::new(Targets::default))
    }

    /// A cluster view whose JobSet watch and readiness follow `targets`.
    pub fn with_targets(targets: TargetsSource) -> Self {
        Self {
            targets,
            jobset_watch: std::sync::Mutex::new(None),
            namespaces: Cache::new("namespaces"),
            jobsets: Cache::new("jobsets"),
            nodes: Cache::new("nodes"),
            node_summary: ArcSwapOption::empty(),
            capabilities: ArcSwap::from_pointee(Capabilities::default()),
            probed: AtomicBool::new(false),
            probed_at: AtomicU64::new(0),
            answered_at: AtomicU64::new(0),
            unanswered: std::sync::Mutex::new(None),
            parent_misses: AtomicU64::new(0),
            namespace_misses: AtomicU64::new(0),
            jobsets_watched: AtomicBool::new(false),
        }
    }

    /// The pod target is on in the current config.
    pub fn pods_target(&self) -> bool {
        (self.targets)().pods
    }

    pub fn namespaces(&self) -> &Cache<Arc<Labels>> {
        &self.namespaces
    }

    pub fn jobsets(&self) -> &Cache<Arc<jobset::CachedParent>> {
        &self.jobsets
    }

    pub fn nodes(&self) -> &Cache<Arc<NodeInfo>> {
        &self.nodes
    }

    /// The nodes as the engine sees them; `None` until the node watch has listed them.
    pub fn node_summary(&self) -> Option<Arc<engine::Nodes>> {
        self.node_summary.load_full()
    }

    /// Rebuilds the engine's node snapshot from the cache (one pass, `Arc` clones only),
    /// and logs when the counts change. The node watch calls it after each change; public so
    /// that a test can bring a cache filled by hand to the same state (tests/docs.rs).
    pub fn summarise_nodes(&self) {
        let fresh = engine::Nodes::new(self.nodes.values());
        let counts = |n: &engine::Nodes| (n.total(), n.schedulable(), n.declaring());
        let before = self.node_summary.load();
        if before.as_deref().map(counts) != Some(counts(&fresh)) {
            info!(
                nodes = fresh.total(),
                schedulable = fresh.schedulable(),
                declaring_restart_all_containers = fresh.declaring(),
                "nodes"
            );
        }
        self.node_summary.store(Some(Arc::new(fresh)));
    }

    pub fn capabilities(&self) -> Arc<Capabilities> {
        self.capabilities.load_full()
    }

    /// Stores a probe round's findings over the last known ones; returns the result.
    pub fn record_probe(&self, round: probe::Round) -> Arc<Capabilities> {
        let now = unix_now();
        let why = (!round.answered).then(|| round.capabilities.restart_policy_rules.detail.clone());
        let merged = Arc::new(round.capabilities.over(&self.capabilities.load()));
        self.capabilities.store(merged.clone());
        self.probed_at.store(now, Ordering::Relaxed);
        if round.answered {
            self.answered_at.store(now.max(1), Ordering::Release);
        }
        *self.unanswered.lock().unwrap_or_else(|p| p.into_inner()) = why;
        self.probed.store(true, Ordering::Release);
        merged
    }

    /// Unix seconds of the last probe round the API server answered; 0 before the first.
    pub fn answered_at(&self) -> u64 {
        self.answered_at.load(Ordering::Acquire)
    }

    /// The namespaces watch: metadata only, labels kept.
    pub async fn watch_namespaces(&self, client: Client) {
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
        let stream = watcher(api, list_config()).default_backoff();
        let empty: Arc<Labels> = Arc::new(Labels::new());
        cache::run(
            &self.namespaces,
            stream,
            |ns: PartialObjectMeta<Namespace>| {
                let name = ns.metadata.name?;
                let labels = match ns.metadata.labels {
                    Some(l) if !l.is_empty() => Arc::new(l),
                    _ => empty.clone(),
                };
                Some((String::new(), name, labels))
            },
        )
        .await;
    }

    /// The JobSets watch, reduced to [`jobset::CachedParent`]s while parsing. The initial
    /// list is paged by [`JOBSET_PAGE`] objects: a page is read whole into memory before it
    /// is parsed, and the allocator keeps that peak.
    pub async fn watch_jobsets(&self, client: Client) {
        let api: Api<jobset::SlimJobSet> = Api::all(client);
        let config = list_config().page_size(JOBSET_PAGE);
        let stream = watcher(api, config).default_backoff();
        let empty = Arc::new(jobset::CachedParent::default());
        cache::run(&self.jobsets, stream, |js: jobset::SlimJobSet| {
            let parent = jobset::CachedParent::from(js.parent);
            let parent = if parent.is_empty() {
                empty.clone()
            } else {
                Arc::new(parent)
            };
            Some((js.metadata.namespace?, js.metadata.name?, parent))
        })
        .await;
    }

    /// The nodes watch, reduced to [`NodeInfo`]s while parsing. The engine's snapshot is
    /// rebuilt after the list and after a watch event that changed what it holds (a new or
    /// deleted node, a label, a cordon, the declared feature): a node's status updates
    /// (conditions, images) change none of it and cost a comparison only.
    pub async fn watch_nodes(&self, client: Client) {
        let api: Api<node::SlimNode> = Api::all(client);
        let config = list_config().page_size(node::PAGE);
        let stream = watcher(api, config).default_backoff();
        let changed = AtomicBool::new(false);
        cache::run_then(
            &self.nodes,
            stream,
            |n: node::SlimNode| {
                let name = n.metadata.name?;
                if self.nodes.get("", &name).as_deref() != Some(&n.info) {
                    changed.store(true, Ordering::Relaxed);
                }
                Some((String::new(), name, Arc::new(n.info)))
            },
            |applied| match applied {
                cache::Applied::InitDone | cache::Applied::Delete => {
                    changed.store(false, Ordering::Relaxed);
                    self.summarise_nodes();
                }
                cache::Applied::Apply if changed.swap(false, Ordering::Relaxed) => {
                    self.summarise_nodes()
                }
                _ => {}
            },
        )
        .await;
    }

    /// Runs the JobSet watch (supervised, as `jobsets-watch`) while the current targets
    /// include `pods`, checking every [`SWITCH_INTERVAL`]: switching the pod target off
    /// stops the watch and empties its cache (no memory held for nothing); switching it on
    /// starts it, and `/readyz` waits for its first list.
    pub async fn jobset_switch(self: Arc<Self>, client: Client, tasks: Tasks) {
        loop {
            self.switch_jobset_watch(&client, &tasks);
            tokio::time::sleep(SWITCH_INTERVAL).await;
        }
    }

    /// Starts or stops the JobSet watch to match the current targets.
    fn switch_jobset_watch(self: &Arc<Self>, client: &Client, tasks: &Tasks) {
        let want = self.pods_target();
        let mut running = self.jobset_watch.lock().unwrap_or_else(|p| p.into_inner());
        match (running.is_some(), want) {
            (false, true) => {
                let (c, cl) = (self.clone(), client.clone());
                *running = Some(tasks.spawn("jobsets-watch", move || {
                    let (c, cl) = (c.clone(), cl.clone());
                    async move { c.watch_jobsets(cl).await }
                }));
                info!("the pod target is on: watching JobSets");
            }
            (true, false) => {
                if let Some(watch) = running.take() {
                    watch.abort();
                }
                self.jobsets.reset();
                info!("the pod target is off: stopped watching JobSets");
            }
            _ => {}
        }
    }

    /// Probes now and then every `interval` (sooner after a round that could not tell).
    /// Until the API server has answered once (readiness waits for that), rounds are retried
    /// after 1 s, doubling up to [`RETRY_INTERVAL`].
    pub async fn probe_loop(&self, client: Client, namespace: String, interval: Duration) {
        let mut first_retry = Duration::from_secs(1);
        loop {
            let found = probe::probe_round(&client, &namespace).await;
            let before = self.capabilities();
            let first = !self.probed.load(Ordering::Acquire);
            let answered = found.answered;
            let now = self.record_probe(found);
            log_changes(first, &before, &now);
            let incomplete = !answered || now.gauges().iter().any(|(_, v)| v.is_none());
            let wait = if self.answered_at() == 0 {
                let wait = first_retry;
                first_retry = (first_retry * 2).min(RETRY_INTERVAL);
                wait.min(interval)
            } else if incomplete {
                interval.min(RETRY_INTERVAL)
            } else {
                interval
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The `/readyz` detail of the capabilities: short JSON, `null` for unknown.
    pub fn capabilities_detail(&self) -> String {
        let c = self.capabilities();
        json!({
            "serverVersion": c.server_version,
            "restartPolicyRules": c.restart_policy_rules.value,
            "restartAllContainers": c.restart_all_containers.value,
            "jobsetCrdInstalled": c.jobset_crd_installed.value,
            "jobsetCrdKeepsRules": c.jobset_crd_keeps_rules.value,
            "nodes": self.nodes_detail(),
            "probedAt": self.probed_at.load(Ordering::Relaxed),
        })
        .to_string()
    }

    /// `{"total": 4, "schedulable": 3, "declaringRestartAllContainers": 3}`, or `null`
    /// while the nodes are not known.
    fn nodes_detail(&self) -> Value {
        match self.node_summary() {
            Some(n) => json!({
                "total": n.total(),
                "schedulable": n.schedulable(),
                "declaringRestartAllContainers": n.declaring(),
            }),
            None => Value::Null,
        }
    }
}

impl ClusterView for Cluster {
    fn namespace_labels(&self, namespace: &str) -> Option<Arc<Labels>> {
        let labels = self.namespaces.get("", namespace);
        if labels.is_none() {
            // A namespace created moments ago, or a cache not synced yet: a `disabled` label
            // under a cluster-wide default (or a label for a pod) is not seen. The
            // namespace-default webhook's own path does not ask (admission::Via).
            self.namespace_misses.fetch_add(1, Ordering::Relaxed);
            warn!(
                %namespace,
                cache = %self.namespaces.describe(),
                "namespace not in the namespace cache: its {} label is not read for this review",
                crate::engine::resolve::NAMESPACE_LABEL
            );
        }
        labels
    }

    fn parent_jobset(&self, namespace: &str, name: &str) -> Option<ParentJobSet> {
        match self.jobsets.get(namespace, name) {
            Some(p) => Some(p.to_parent()),
            None => {
                self.parent_misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn facts(&self) -> ClusterFacts {
        ClusterFacts {
            nodes: self.node_summary(),
            ..self.capabilities.load().facts()
        }
    }
}

/// The caches' watcher settings: lists may be served from the API server's watch cache
/// (`resourceVersion=0`, [`watcher::ListSemantic::Any`]) instead of a quorum read from etcd.
/// Safe here: the watch that follows starts from the list's resourceVersion and delivers
/// every later change, so a list that lags only delays what the watch then brings, and
/// every replica relisting at once after an API-server restart does not hit etcd.
fn list_config() -> watcher::Config {
    watcher::Config::default().any_semantic()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn log_changes(first: bool, before: &Capabilities, now: &Capabilities) {
    let values = |c: &Capabilities| (c.server_version.clone(), c.gauges());
    if !first && values(before) == values(now) {
        return;
    }
    let show = |v: Option<bool>| match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    };
    info!(
        server_version = now.server_version.as_deref().unwrap_or("unknown"),
        container_restart_rules = show(now.restart_policy_rules.value),
        restart_all_containers = show(now.restart_all_containers.value),
        jobset_crd_installed = show(now.jobset_crd_installed.value),
        jobset_crd_keeps_rules = show(now.jobset_crd_keeps_rules.value),
        "cluster capabilities"
    );
    for (name, f) in now.findings() {
        if f.value != Some(true) {
            warn!(capability = name, detail = %f.detail, "cluster capability");
        }
    }
}

/// What [`start`] brought up.
pub enum Started {
    /// No cluster (`--no-cluster`, or no credentials): why, in a few words.
    Offline(String),
    /// Watches and probes run in the background and fill `cluster`.
    Online { cluster: Arc<Cluster> },
}

/// Connects to the cluster (when there are credentials) and starts the caches and the
/// probes on the current runtime, each supervised by `tasks`. Never fails: without a
/// cluster the webhook serves from annotations and config alone. `targets` gives the
/// current targets: the JobSet watch runs, and `/readyz` waits for it, only while they
/// include `pods`.
pub async fn start(args: &ClusterArgs, targets: TargetsSource, tasks: &Tasks) -> Started {
    let off = |why: &str, error: String| {
        warn!(
            reason = %why,
            error = %error,
            "running without the cluster: namespace defaults (the {} namespace label), the pod \
             target (pods are allowed unchanged) and capability detection (the config's \
             default action applies) are off; JobSets are served from their annotations and \
             the config file",
            crate::engine::resolve::NAMESPACE_LABEL
        );
        Started::Offline(why.to_owned())
    };
    if args.no_cluster {
        return off("--no-cluster", String::new());
    }
    let client = match Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            return off(
                "no Kubernetes credentials (no kubeconfig, not in a cluster)",
                e.to_string(),
            );
        }
    };
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let cluster = Arc::new(Cluster::with_targets(targets));
    let (c, cl) = (cluster.clone(), client.clone());
    tasks.spawn("namespaces-watch", move || {
        let (c, cl) = (c.clone(), cl.clone());
        async move { c.watch_namespaces(cl).await }
    });
    let (c, cl) = (cluster.clone(), client.clone());
    tasks.spawn("nodes-watch", move || {
        let (c, cl) = (c.clone(), cl.clone());
        async move { c.watch_nodes(cl).await }
    });
    let (c, cl, t) = (cluster.clone(), client.clone(), tasks.clone());
    tasks.spawn("jobsets-switch", move || {
        c.clone().jobset_switch(cl.clone(), t.clone())
    });
    let interval = args.capability_interval;
    let (c, ns) = (cluster.clone(), namespace.clone());
    tasks.spawn("capability-probe", move || {
        let (c, cl, ns) = (c.clone(), client.clone(), ns.clone());
        async move { c.probe_loop(cl, ns, interval).await }
    });
    info!(
        probe_namespace = %namespace,
        capability_interval = ?interval,
        pod_target = cluster.pods_target(),
        "cluster: watching namespaces, nodes and (with the pod target) JobSets, probing \
         capabilities; /readyz waits for their first sync"
    );
    Started::Online { cluster }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
