//! What the webhook knows about the cluster it runs in (SPEC §4 pods, §5, §7), kept off the
//! request path: background tasks fill caches and facts, requests only read them.
//!
//! - Namespaces: a metadata-only watch (`Api<PartialObjectMeta<Namespace>>`: the API server
//!   sends metadata only), keeping each namespace's labels (SPEC §5 namespace defaults).
//! - JobSets (`jobset.x-k8s.io/v1alpha2`): a watch whose objects deserialize straight into
//!   [`jobset::SlimJobSet`] (names and `restart.jobset.dev/*` annotations only), for the pod
//!   target's parent lookup.
//! - Nodes: a watch reduced to [`node::SlimNode`]s (labels, cordon, whether
//!   `status.declaredFeatures` lists `RestartAllContainersOnContainerExits`), summarised
//!   into an [`engine::Nodes`] snapshot whenever a node's reduced form changes: the default
//!   action is `RestartAllContainers` only where the nodes declare it (`engine::nodes`).
//! - Capabilities: [`probe`] at start and every `--capability-interval`; a failed probe
//!   keeps the last known answer.
//!
//! Without credentials (no kubeconfig, not in a cluster) or with `--no-cluster`, `serve`
//! runs from annotations and the config file alone and says once which features are off.
//! The client comes from the standard places (`KUBECONFIG`/`~/.kube/config`, then the
//! in-cluster service account).

pub mod cache;
pub mod jobset;
pub mod node;
pub mod probe;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::admission::{ClusterView, Offline};
use crate::engine::{self, ClusterFacts, Config, NodeInfo, ParentJobSet, Targets};
use crate::server::{ReadinessCheck, ServeArgs, ServerOptions};
use cache::Cache;
use probe::Capabilities;

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
          value_parser = crate::server::parse_period)]
    pub capability_interval: Duration,
}

/// JobSets per page of the initial list (kube's default is 500; a JobSet with its pod
/// templates is several KiB of JSON).
const JOBSET_PAGE: u32 = 100;

/// A failed probe round is retried after at most this long.
const RETRY_INTERVAL: Duration = Duration::from_secs(30);

type Labels = BTreeMap<String, String>;

/// The caches and facts the request path reads.
pub struct Cluster {
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
    /// Pod reviews whose parent JobSet was not in the cache.
    parent_misses: AtomicU64,
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Cluster {
    pub fn new() -> Self {
        Self {
            namespaces: Cache::new("namespaces"),
            jobsets: Cache::new("jobsets"),
            nodes: Cache::new("nodes"),
            node_summary: ArcSwapOption::empty(),
            capabilities: ArcSwap::from_pointee(Capabilities::default()),
            probed: AtomicBool::new(false),
            probed_at: AtomicU64::new(0),
            parent_misses: AtomicU64::new(0),
        }
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
    /// and logs when the counts change.
    fn summarise_nodes(&self) {
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
    pub fn record_probe(&self, found: Capabilities) -> Arc<Capabilities> {
        let merged = Arc::new(found.over(&self.capabilities.load()));
        self.capabilities.store(merged.clone());
        self.probed_at.store(unix_now(), Ordering::Relaxed);
        self.probed.store(true, Ordering::Release);
        merged
    }

    /// The namespaces watch: metadata only, labels kept.
    pub async fn watch_namespaces(&self, client: Client) {
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
        let stream = watcher(api, watcher::Config::default()).default_backoff();
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
        let config = watcher::Config::default().page_size(JOBSET_PAGE);
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
        let config = watcher::Config::default().page_size(node::PAGE);
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

    /// Probes now and then every `interval` (sooner after a round that could not tell).
    pub async fn probe_loop(&self, client: Client, namespace: String, interval: Duration) {
        loop {
            let found = probe::probe(&client, &namespace).await;
            let before = self.capabilities();
            let first = !self.probed.load(Ordering::Acquire);
            let now = self.record_probe(found);
            log_changes(first, &before, &now);
            let incomplete = now.gauges().iter().any(|(_, v)| v.is_none());
            let wait = if incomplete {
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
        self.namespaces.get("", namespace)
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
        restart_policy_rules = show(now.restart_policy_rules.value),
        restart_all_containers = show(now.restart_all_containers.value),
        jobset_crd_installed = show(now.jobset_crd_installed.value),
        jobset_crd_keeps_rules = show(now.jobset_crd_keeps_rules.value),
        "cluster capabilities"
    );
    for (name, f) in [
        ("restart_policy_rules", &now.restart_policy_rules),
        ("restart_all_containers", &now.restart_all_containers),
        ("jobset_crd_installed", &now.jobset_crd_installed),
        ("jobset_crd_keeps_rules", &now.jobset_crd_keeps_rules),
    ] {
        if f.value != Some(true) {
            warn!(capability = name, detail = %f.detail, "cluster capability");
        }
    }
}

/// The targets `serve` starts with (`--targets`, else the config file's, else the default);
/// decides whether `/readyz` waits for the caches.
fn start_targets(args: &ServeArgs) -> Targets {
    if let Some(t) = args.targets {
        return t;
    }
    args.config
        .as_deref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| Config::from_yaml(&text, "config").ok())
        .map(|c| c.targets)
        .unwrap_or_default()
}

/// Connects to the cluster (when there are credentials), starts the caches and the probes
/// on the current runtime, and returns what `serve` plugs in. Never fails: without a
/// cluster the webhook serves from annotations and config alone.
pub async fn serve_options(args: &ServeArgs) -> ServerOptions {
    let targets = start_targets(args);
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
        ServerOptions {
            cluster: Arc::new(Offline),
            readiness: vec![Arc::new(OfflineCheck(why.to_owned())) as Arc<dyn ReadinessCheck>],
            collectors: Vec::new(),
        }
    };
    if args.cluster.no_cluster {
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
        .cluster
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let cluster = Arc::new(Cluster::new());
    let c = cluster.clone();
    let cl = client.clone();
    tokio::spawn(async move { c.watch_namespaces(cl).await });
    let c = cluster.clone();
    let cl = client.clone();
    tokio::spawn(async move { c.watch_jobsets(cl).await });
    let c = cluster.clone();
    let cl = client.clone();
    tokio::spawn(async move { c.watch_nodes(cl).await });
    let c = cluster.clone();
    let interval = args.cluster.capability_interval;
    let ns = namespace.clone();
    tokio::spawn(async move { c.probe_loop(client, ns, interval).await });
    info!(
        probe_namespace = %namespace,
        capability_interval = ?interval,
        readiness_waits_for_caches = targets.pods,
        "cluster: watching namespaces, JobSets and nodes, probing capabilities"
    );
    ServerOptions {
        cluster: cluster.clone(),
        readiness: vec![
            Arc::new(CachesCheck {
                cluster: cluster.clone(),
                required: targets.pods,
            }),
            Arc::new(CapabilitiesCheck(cluster.clone())),
        ],
        collectors: vec![Box::new(ClusterMetrics(cluster))],
    }
}

// ---- /readyz ------------------------------------------------------------------------------

/// `cluster-caches`: both caches synced (required when the pod target is on).
pub struct CachesCheck {
    pub cluster: Arc<Cluster>,
    pub required: bool,
}

impl ReadinessCheck for CachesCheck {
    fn name(&self) -> &str {
        "cluster-caches"
    }

    fn check(&self) -> Result<String, String> {
        let c = &self.cluster;
        let detail = format!(
            "{}; {}; {}",
            c.namespaces.describe(),
            c.jobsets.describe(),
            c.nodes.describe()
        );
        let synced = c.namespaces.synced() && c.jobsets.synced();
        if synced || !self.required {
            Ok(detail)
        } else {
            Err(format!("{detail}; the pod target needs both synced"))
        }
    }
}

/// `cluster-capabilities`: the probe's findings; not ready until the first round finished,
/// so no request is decided on a guess right after start.
pub struct CapabilitiesCheck(pub Arc<Cluster>);

impl ReadinessCheck for CapabilitiesCheck {
    fn name(&self) -> &str {
        "cluster-capabilities"
    }

    fn check(&self) -> Result<String, String> {
        let c = &self.0;
        if !c.probed.load(Ordering::Acquire) {
            return Err("probing the API server (first round not finished)".to_owned());
        }
        // Until the nodes are listed the default action would follow the API server alone.
        // A node watch that fails (RBAC without nodes, say) does not hold readiness back:
        // the webhook then works as it did without node awareness, and says so here.
        if !c.nodes.synced() && c.nodes.errors() == 0 {
            return Err(format!("listing the nodes ({})", c.nodes.describe()));
        }
        Ok(c.capabilities_detail())
    }
}

/// `cluster`: always ready; says why the cluster features are off.
pub struct OfflineCheck(pub String);

impl ReadinessCheck for OfflineCheck {
    fn name(&self) -> &str {
        "cluster"
    }

    fn check(&self) -> Result<String, String> {
        Ok(format!(
            "off ({}): no namespace defaults, pod target or capability detection",
            self.0
        ))
    }
}

// ---- metrics ------------------------------------------------------------------------------

/// Scrape-time metrics of the caches and capabilities (read from the live state, so they
/// cannot drift from it). Names get the registry's `jobset_restart_webhook_` prefix.
#[derive(Debug)]
pub struct ClusterMetrics(pub Arc<Cluster>);

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CapabilityLabels {
    capability: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
}

impl Collector for ClusterMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        let caps = c.capabilities();
        let g = ConstGauge::new(0i64);
        let mut e = encoder.encode_descriptor(
            "cluster_capability",
            "What the API server, the JobSet CRD and the nodes support (1 yes, 0 no; absent \
             while unknown): container_restart_rules, restart_all_containers, \
             jobset_crd_installed, jobset_crd_keeps_rules, nodes_restart_all_containers (every \
             schedulable node declares RestartAllContainersOnContainerExits; absent without \
             schedulable nodes)",
            None,
            g.metric_type(),
        )?;
        let nodes = c.node_summary();
        let all_nodes = nodes
            .as_deref()
            .filter(|n| n.schedulable() > 0)
            .map(|n| n.declaring() == n.schedulable());
        for (capability, value) in caps
            .gauges()
            .into_iter()
            .chain([("nodes_restart_all_containers", all_nodes)])
        {
            if let Some(v) = value {
                ConstGauge::new(i64::from(v))
                    .encode(e.encode_family(&CapabilityLabels { capability })?)?;
            }
        }
        if let Some(n) = &nodes {
            let mut e = encoder.encode_descriptor(
                "cluster_nodes",
                "Nodes: total, schedulable (not cordoned), and declaring (schedulable nodes whose \
                 status.declaredFeatures lists RestartAllContainersOnContainerExits)",
                None,
                g.metric_type(),
            )?;
            for (state, count) in [
                ("total", n.total()),
                ("schedulable", n.schedulable()),
                ("declaring", n.declaring()),
            ] {
                ConstGauge::new(count as i64).encode(e.encode_family(&NodeLabels { state })?)?;
            }
        }
        let probed_at = c.probed_at.load(Ordering::Relaxed);
        if probed_at > 0 {
            let e = encoder.encode_descriptor(
                "cluster_capability_last_probe_timestamp_seconds",
                "Unix time of the last finished capability probe round",
                None,
                g.metric_type(),
            )?;
            ConstGauge::new(probed_at as i64).encode(e)?;
        }
        let caches = [c.namespaces.name(), c.jobsets.name(), c.nodes.name()];
        let mut e = encoder.encode_descriptor(
            "cluster_cache_objects",
            "Objects in the watch-backed caches",
            None,
            g.metric_type(),
        )?;
        for (cache, n) in caches
            .iter()
            .zip([c.namespaces.len(), c.jobsets.len(), c.nodes.len()])
        {
            ConstGauge::new(n as i64).encode(e.encode_family(&CacheLabels { cache })?)?;
        }
        let mut e = encoder.encode_descriptor(
            "cluster_cache_synced",
            "1 once the cache has completed its first list",
            None,
            g.metric_type(),
        )?;
        for (cache, s) in
            caches
                .iter()
                .zip([c.namespaces.synced(), c.jobsets.synced(), c.nodes.synced()])
        {
            ConstGauge::new(i64::from(s)).encode(e.encode_family(&CacheLabels { cache })?)?;
        }
        let counter = ConstCounter::new(0u64);
        let mut e = encoder.encode_descriptor(
            "cluster_watch_errors",
            "Errors of the caches' watches (each is retried with backoff)",
            None,
            counter.metric_type(),
        )?;
        for (cache, n) in
            caches
                .iter()
                .zip([c.namespaces.errors(), c.jobsets.errors(), c.nodes.errors()])
        {
            ConstCounter::new(n).encode(e.encode_family(&CacheLabels { cache })?)?;
        }
        let e = encoder.encode_descriptor(
            "pod_parent_unknown",
            "Pod reviews whose parent JobSet was not in the cache (the pod was allowed unchanged)",
            None,
            counter.metric_type(),
        )?;
        ConstCounter::new(c.parent_misses.load(Ordering::Relaxed)).encode(e)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe::Finding;
    use prometheus_client::registry::Registry;

    fn known(v: bool) -> Finding {
        Finding {
            value: Some(v),
            detail: String::new(),
        }
    }

    #[test]
    fn view_reads_the_caches() {
        let c = Cluster::new();
        assert_eq!(c.namespace_labels("ml"), None);
        assert_eq!(c.parent_jobset("ml", "train"), None);
        c.namespaces.apply(watcher::Event::Apply(()), |()| {
            Some((
                String::new(),
                "ml".to_owned(),
                Arc::new(Labels::from([("k".into(), "v".into())])),
            ))
        });
        c.jobsets.apply(watcher::Event::Apply(()), |()| {
            Some((
                "ml".to_owned(),
                "train".to_owned(),
                Arc::new(jobset::CachedParent::default()),
            ))
        });
        assert_eq!(c.namespace_labels("ml").unwrap()["k"], "v");
        assert_eq!(
            c.parent_jobset("ml", "train"),
            Some(ParentJobSet::default())
        );
        assert_eq!(c.parent_jobset("other", "train"), None);
        assert_eq!(c.parent_misses.load(Ordering::Relaxed), 2);
        assert_eq!(c.facts(), ClusterFacts::default());
    }

    #[test]
    fn a_failing_node_watch_does_not_hold_readiness_back() {
        let c = Arc::new(Cluster::new());
        c.record_probe(Capabilities::default());
        let caps = CapabilitiesCheck(c.clone());
        assert!(caps.check().is_err());
        c.nodes.record_error("nodes is forbidden".into());
        let detail: serde_json::Value = serde_json::from_str(&caps.check().unwrap()).unwrap();
        assert_eq!(detail["nodes"], serde_json::Value::Null);
        assert_eq!(c.facts().nodes, None);
    }

    #[test]
    fn readiness_and_metrics() {
        let c = Arc::new(Cluster::new());
        let caches = CachesCheck {
            cluster: c.clone(),
            required: true,
        };
        let optional = CachesCheck {
            cluster: c.clone(),
            required: false,
        };
        let caps = CapabilitiesCheck(c.clone());
        assert!(caches.check().is_err());
        assert!(optional.check().is_ok());
        assert!(caps.check().is_err());

        c.namespaces.apply(watcher::Event::<()>::Init, |()| None);
        c.namespaces
            .apply(watcher::Event::<()>::InitDone, |()| None);
        assert!(caches.check().is_err(), "jobsets not synced yet");
        c.jobsets.apply(watcher::Event::<()>::Init, |()| None);
        c.jobsets.apply(watcher::Event::<()>::InitDone, |()| None);
        let detail = caches.check().unwrap();
        assert!(
            detail.contains("namespaces synced, 0 objects; jobsets synced"),
            "{detail}"
        );

        c.record_probe(Capabilities {
            server_version: Some("v1.36.2".into()),
            restart_policy_rules: known(true),
            restart_all_containers: known(false),
            jobset_crd_installed: known(true),
            jobset_crd_keeps_rules: Finding::default(),
        });
        let waiting = caps.check().unwrap_err();
        assert!(waiting.starts_with("listing the nodes"), "{waiting}");
        let node = |declares| NodeInfo {
            declares,
            ..NodeInfo::default()
        };
        c.nodes.apply(watcher::Event::<()>::Init, |()| None);
        for (name, declares) in [("a", true), ("b", true), ("c", false)] {
            c.nodes.apply(watcher::Event::InitApply(()), |()| {
                Some((String::new(), name.to_owned(), Arc::new(node(declares))))
            });
        }
        c.nodes.apply(watcher::Event::<()>::InitDone, |()| None);
        c.summarise_nodes();
        let detail: serde_json::Value = serde_json::from_str(&caps.check().unwrap()).unwrap();
        assert_eq!(
            detail["nodes"],
            json!({"total": 3, "schedulable": 3, "declaringRestartAllContainers": 2})
        );
        assert_eq!(c.facts().nodes.map(|n| n.declaring()), Some(2));
        assert_eq!(detail["serverVersion"], "v1.36.2");
        assert_eq!(detail["restartAllContainers"], false);
        assert_eq!(detail["jobsetCrdKeepsRules"], serde_json::Value::Null);
        assert_eq!(c.facts().restart_all_containers, Some(false));

        let mut registry = Registry::with_prefix("jobset_restart_webhook");
        registry.register_collector(Box::new(ClusterMetrics(c.clone())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "jobset_restart_webhook_cluster_capability{capability=\"container_restart_rules\"} 1",
            "jobset_restart_webhook_cluster_capability{capability=\"restart_all_containers\"} 0",
            "jobset_restart_webhook_cluster_capability{capability=\"jobset_crd_installed\"} 1",
            "jobset_restart_webhook_cluster_cache_objects{cache=\"jobsets\"} 0",
            "jobset_restart_webhook_cluster_cache_synced{cache=\"namespaces\"} 1",
            "jobset_restart_webhook_cluster_watch_errors_total{cache=\"jobsets\"} 0",
            "jobset_restart_webhook_pod_parent_unknown_total 0",
            "jobset_restart_webhook_cluster_capability{capability=\"nodes_restart_all_containers\"} 0",
            "jobset_restart_webhook_cluster_nodes{state=\"total\"} 3",
            "jobset_restart_webhook_cluster_nodes{state=\"schedulable\"} 3",
            "jobset_restart_webhook_cluster_nodes{state=\"declaring\"} 2",
            "jobset_restart_webhook_cluster_cache_objects{cache=\"nodes\"} 3",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(
            !text.contains("jobset_crd_keeps_rules\"}"),
            "unknown is absent\n{text}"
        );
        assert!(
            text.contains(
                "jobset_restart_webhook_cluster_capability_last_probe_timestamp_seconds "
            )
        );
    }

    #[test]
    fn offline_check_is_ready() {
        let detail = OfflineCheck("--no-cluster".into()).check().unwrap();
        assert!(detail.starts_with("off (--no-cluster)"), "{detail}");
    }
}
