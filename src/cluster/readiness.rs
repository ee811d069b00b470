//! The cluster's side of `/readyz`: the first sync with the API server. The composition root
//! (`cli::serve`) shows these as the server's readiness checks.
//!
//! Ready means the API server has been *reached*, not that a loop finished: the caches have
//! completed their first list (namespaces and nodes always, JobSets while the current
//! targets include `pods`) and at least one capability probe round got an answer. A
//! kubeconfig whose API server does not answer keeps the replica not ready, so it never
//! decides requests on a guess (no namespace defaults, no parents, the default action of an
//! unknown cluster).
//!
//! Every condition latches: once a cache has listed or a probe was answered, losing the API
//! server later does not fail readiness (that would take every replica out of the endpoints
//! at once, blocking what the webhook guards, for a blip). Staleness after the first sync
//! shows in the metrics instead (`cluster_cache_failing_since_timestamp_seconds`,
//! `cluster_capability_last_answered_probe_timestamp_seconds`; see the README's "Readiness
//! and staleness"). The one exception: switching the pod target on (a config reload)
//! starts the JobSet watch, and readiness waits for its first list.

use super::Cluster;

/// Why the cluster side is not ready yet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// A cache this configuration needs has not completed its first list.
    #[error("waiting for the first list of {waiting}: {detail}")]
    CachesSyncing { waiting: String, detail: String },
    /// No probe round has reached the API server yet.
    #[error("no capability probe has reached the API server yet ({0})")]
    NoAnsweredProbe(String),
}

impl Cluster {
    /// `cluster-caches`: the namespace and node caches have listed (a node watch that the API
    /// server refuses, RBAC without nodes, does not hold readiness back: the webhook then
    /// works without node awareness, and says so here), and the JobSet cache too while the
    /// pod target is on. The detail describes every cache.
    pub fn caches_ready(&self) -> Result<String, NotReady> {
        let pods = self.pods_target();
        let mut detail = format!("{}; {}", self.namespaces.describe(), self.nodes.describe());
        if pods {
            detail.push_str("; ");
            detail.push_str(&self.jobsets.describe());
        } else {
            detail.push_str("; jobsets not watched (the pod target is off)");
        }
        let mut waiting = Vec::new();
        if !self.namespaces.synced() {
            waiting.push(self.namespaces.name());
        }
        if !self.nodes.synced() && !self.nodes.refused_by_api_server() {
            waiting.push(self.nodes.name());
        }
        if pods && !self.jobsets.synced() {
            waiting.push(self.jobsets.name());
        }
        if waiting.is_empty() {
            Ok(detail)
        } else {
            Err(NotReady::CachesSyncing {
                waiting: waiting.join(", "),
                detail,
            })
        }
    }

    /// `cluster-capabilities`: the probe's findings; not ready until a round got an answer
    /// from the API server, so no request is decided on a guess right after start.
    pub fn capabilities_ready(&self) -> Result<String, NotReady> {
        if self.answered_at() == 0 {
            let why = self
                .unanswered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "first round running".to_owned());
            return Err(NotReady::NoAnsweredProbe(why));
        }
        Ok(self.capabilities_detail())
    }
}

/// The `/readyz` detail without a cluster (always ready): says why the features are off.
pub fn offline_detail(reason: &str) -> String {
    format!("off ({reason}): no namespace defaults, pod target or capability detection")
}
