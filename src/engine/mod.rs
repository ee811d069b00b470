//! The engine: pure functions from (raw object JSON, annotations, cluster config, namespace
//! labels, cluster facts) to (JSON Patch, warnings) or a denial. No HTTP, TLS or Kubernetes
//! client types live here, so the same code serves the webhook, the `mutate` preview, the
//! benches and the fuzz targets.
//!
//! Decisions are made on small borrowed views of the raw JSON (`view.rs`). The output is a list
//! of RFC 6902 operations addressed into the original document, so nothing is ever
//! re-serialized from typed structs and fields the webhook does not know survive byte for byte.
//!
//! - `jobset.rs`: JobSet CREATE; `pod.rs`: Pod CREATE; [`update`]: JobSet UPDATE.
//! - `containers.rs`: the per-container rule all three share; [`applied`]: its summary.
//! - [`resolve`]: precedence of annotations, preset, namespace label and cluster config.
//! - [`parent`]: the pod's view of its JobSet, as the cluster cache keeps it.

use std::collections::BTreeMap;

pub mod annotations;
pub mod applied;
pub mod config;
mod containers;
mod jobset;
pub mod nodes;
pub mod parent;
pub mod patch;
mod pod;
pub mod resolve;
#[cfg(test)]
mod testing;
pub mod update;
mod view;
pub mod warnings;

pub use annotations::{Action, AnnotationError, ExitCodes, InPlace, Operator};
pub use config::{Config, ConfigError, Targets};
pub use jobset::{mutate_jobset, too_many_containers, too_many_replicated_jobs};
pub use nodes::{NodeInfo, Nodes};
pub use parent::ParentJobSet;
pub use patch::Patch;
pub use pod::{JOBSET_NAME_LABEL, REPLICATED_JOB_NAME_LABEL, mutate_pod};
pub use resolve::ClusterFacts;
pub use update::update_jobset;

/// Everything outside the object that a decision depends on.
#[derive(Clone)]
pub struct Environment<'a> {
    pub config: &'a Config,
    /// The labels of the object's namespace; `None` when unknown.
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
    /// The API server has established that the namespace is labelled
    /// `restart.jobset.dev/in-place=enabled` (or `true`): the request came through the
    /// `namespace-default` webhook, whose namespaceSelector says so. It decides over
    /// `namespace_labels`, which come from a cache that may not have seen the label yet.
    pub namespace_opted_in: bool,
    pub facts: ClusterFacts,
}

/// The result of a mutation that is allowed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mutation {
    pub patch: Patch,
    /// At most [`warnings::MAX_WARNINGS`], the last one counting the rest.
    pub warnings: Vec<String>,
    /// What was injected, e.g. `workers/trainer=RestartAllContainers:NotIn(0)`; `None` when
    /// in-place restart does not apply to this object.
    pub summary: Option<String>,
    /// For a pod: its parent JobSet was not known, so the pod was left as it is.
    pub parent_unknown: bool,
}

/// The object must be refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denial {
    pub reason: DenialReason,
    pub message: String,
}

/// Why an object is refused; the admission layer turns it into a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenialReason {
    /// The object can be read but asks for something invalid (a bad annotation, too many
    /// containers, an impossible rule).
    Invalid,
    /// The object cannot be read as the kind it claims to be.
    BadRequest,
}

impl From<AnnotationError> for Denial {
    fn from(e: AnnotationError) -> Self {
        Self {
            reason: DenialReason::Invalid,
            message: e.to_string(),
        }
    }
}
