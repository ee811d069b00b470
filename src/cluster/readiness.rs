//! The cluster's side of `/readyz`: whether the caches and the capability facts are there
//! yet. The composition root (`cli::serve`) shows these as the server's readiness checks.

use std::sync::atomic::Ordering;

use super::Cluster;

/// Why the cluster side is not ready yet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// The pod target is on and a cache has not completed its first list.
    #[error("{0}; the pod target needs both synced")]
    CachesSyncing(String),
    #[error("probing the API server (first round not finished)")]
    FirstProbeRunning,
    #[error("listing the nodes ({0})")]
    ListingNodes(String),
}

impl Cluster {
    /// `cluster-caches`: the namespace and JobSet caches are synced (only `required` when
    /// the pod target is on). The detail describes every cache.
    pub fn caches_ready(&self, required: bool) -> Result<String, NotReady> {
        let jobsets = if self.jobsets_watched.load(Ordering::Relaxed) {
            self.jobsets.describe()
        } else {
            "jobsets not watched (pod target off)".to_owned()
        };
        let detail = format!(
            "{}; {jobsets}; {}",
            self.namespaces.describe(),
            self.nodes.describe()
        );
        let synced = self.namespaces.synced() && self.jobsets.synced();
        if synced || !required {
            Ok(detail)
        } else {
            Err(NotReady::CachesSyncing(detail))
        }
    }

    /// `cluster-capabilities`: the probe's findings; not ready until the first round
    /// finished, so no request is decided on a guess right after start.
    pub fn capabilities_ready(&self) -> Result<String, NotReady> {
        if !self.probed.load(Ordering::Acquire) {
            return Err(NotReady::FirstProbeRunning);
        }
        // Until the nodes are listed the default action would follow the API server alone.
        // A node watch that fails (RBAC without nodes, say) does not hold readiness back:
        // the webhook then works as it did without node awareness, and says so here.
        if !self.nodes.synced() && self.nodes.errors() == 0 {
            return Err(NotReady::ListingNodes(self.nodes.describe()));
        }
        Ok(self.capabilities_detail())
    }
}

/// The `/readyz` detail without a cluster (always ready): says why the features are off.
pub fn offline_detail(reason: &str) -> String {
    format!("off ({reason}): no namespace defaults, pod target or capability detection")
}
