//! Scrape-time metrics of the caches and the capabilities.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::Cluster;

/// Scrape-time metrics of the caches and capabilities (read from the live state, so they
/// cannot drift from it). Names get the registry's `jobset_restart_webhook_` prefix.
#[derive(Debug)]
pub struct ClusterMetrics(pub Arc<Cluster>);

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
        // (name, objects, synced, watch errors) of the caches whose watch runs: the JobSet
        // watch runs only with the pod target, and a cache that is never filled must not
        // look like one that is stuck.
        let mut caches = vec![(
            c.namespaces.name(),
            c.namespaces.len(),
            c.namespaces.synced(),
            c.namespaces.errors(),
        )];
        if c.jobsets_watched.load(Ordering::Relaxed) {
            caches.push((
                c.jobsets.name(),
                c.jobsets.len(),
                c.jobsets.synced(),
                c.jobsets.errors(),
            ));
        }
        caches.push((
            c.nodes.name(),
            c.nodes.len(),
            c.nodes.synced(),
            c.nodes.errors(),
        ));
        let mut e = encoder.encode_descriptor(
            "cluster_cache_objects",
            "Objects in the watch-backed caches",
            None,
            g.metric_type(),
        )?;
        for &(cache, n, _, _) in &caches {
            ConstGauge::new(n as i64).encode(e.encode_family(&CacheLabels { cache })?)?;
        }
        let mut e = encoder.encode_descriptor(
            "cluster_cache_synced",
            "1 once the cache has completed its first list",
            None,
            g.metric_type(),
        )?;
        for &(cache, _, s, _) in &caches {
            ConstGauge::new(i64::from(s)).encode(e.encode_family(&CacheLabels { cache })?)?;
        }
        let mut e = encoder.encode_descriptor(
            "cluster_cache_last_list_timestamp_seconds",
            "Unix time the cache's last (re)list completed (absent before the first)",
            None,
            g.metric_type(),
        )?;
        for (cache, t) in caches.iter().zip([
            c.namespaces.listed_at(),
            c.jobsets.listed_at(),
            c.nodes.listed_at(),
        ]) {
            if t > 0 {
                ConstGauge::new(t as i64).encode(e.encode_family(&CacheLabels { cache })?)?;
            }
        }
        let mut e = encoder.encode_descriptor(
            "cluster_cache_failing_since_timestamp_seconds",
            "Unix time of the first watch error since the cache's watch last worked; 0 while it \
             works. The cache keeps serving its last contents meanwhile (readiness does not \
             change after the first list): alert on time() minus this when it is not 0",
            None,
            g.metric_type(),
        )?;
        for (cache, t) in caches.iter().zip([
            c.namespaces.failing_since(),
            c.jobsets.failing_since(),
            c.nodes.failing_since(),
        ]) {
            ConstGauge::new(t as i64).encode(e.encode_family(&CacheLabels { cache })?)?;
        }
        let answered_at = c.answered_at();
        if answered_at > 0 {
            let e = encoder.encode_descriptor(
                "cluster_capability_last_answered_probe_timestamp_seconds",
                "Unix time of the last capability probe round the API server answered (the \
                 capabilities keep their last answers while it cannot be reached)",
                None,
                g.metric_type(),
            )?;
            ConstGauge::new(answered_at as i64).encode(e)?;
        }
        let counter = ConstCounter::new(0u64);
        let mut e = encoder.encode_descriptor(
            "cluster_watch_errors",
            "Errors of the caches' watches (each is retried with backoff)",
            None,
            counter.metric_type(),
        )?;
        for &(cache, _, _, n) in &caches {
            ConstCounter::new(n).encode(e.encode_family(&CacheLabels { cache })?)?;
        }
        let e = encoder.encode_descriptor(
            "pod_parent_unknown",
            "Pod reviews whose parent JobSet was not in the cache (the pod was allowed unchanged)",
            None,
            counter.metric_type(),
        )?;
        ConstCounter::new(c.parent_misses.load(Ordering::Relaxed)).encode(e)?;
        let e = encoder.encode_descriptor(
            "namespace_labels_unknown",
            "JobSet and pod reviews whose namespace was not in the namespace cache, so its \
             restart.jobset.dev/in-place label was not read (the namespace-default webhook's \
             path never asks the cache)",
            None,
            counter.metric_type(),
        )?;
        ConstCounter::new(c.namespace_misses.load(Ordering::Relaxed)).encode(e)?;
        Ok(())
    }
}
