//! The borrowed serde views of JobSets, pods and containers: serde reads only the fields
//! named here and skips everything else without building a DOM.

use std::borrow::Cow;
use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{Denial, DenialReason};

pub(super) type StrMap<'a> = BTreeMap<Cow<'a, str>, Cow<'a, str>>;

/// The whole JobSet in one pass (the common case).
#[derive(Deserialize)]
pub(super) struct JobSetDoc<'a> {
    #[serde(borrow)]
    pub(super) metadata: Option<Meta<'a>>,
    #[serde(borrow)]
    pub(super) spec: Option<JobSetSpec<'a>>,
}

/// Metadata only, with the spec left unread: used when the full view does not fit, to tell
/// whether the object concerns the webhook at all.
#[derive(Deserialize)]
pub(super) struct Head<'a> {
    #[serde(borrow)]
    pub(super) metadata: Option<Meta<'a>>,
    #[serde(borrow)]
    pub(super) spec: Option<&'a RawValue>,
}

#[derive(Deserialize)]
pub(super) struct Meta<'a> {
    #[serde(borrow)]
    pub(super) annotations: Option<StrMap<'a>>,
    #[serde(borrow)]
    pub(super) labels: Option<StrMap<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct JobSetSpec<'a> {
    #[serde(borrow, default)]
    pub(super) replicated_jobs: Vec<ReplicatedJob<'a>>,
}

#[derive(Deserialize)]
pub(super) struct ReplicatedJob<'a> {
    #[serde(borrow)]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) template: Option<JobTemplate<'a>>,
}

impl<'a> ReplicatedJob<'a> {
    /// `template.spec.template.spec`, the pod template's spec.
    pub(super) fn pod_spec(&self) -> Option<&PodSpec<'a>> {
        self.template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.template.as_ref())
            .and_then(|t| t.spec.as_ref())
    }
}

/// The JSON Pointer of replicated job `i`'s pod template spec.
pub(super) fn pod_spec_pointer(i: usize) -> PointerBuf {
    PointerBuf::from_tokens(["spec", "replicatedJobs"])
        .with_trailing_token(i)
        .concat(&PointerBuf::from_tokens([
            "template", "spec", "template", "spec",
        ]))
}

#[derive(Deserialize)]
pub(super) struct JobTemplate<'a> {
    #[serde(borrow)]
    pub(super) metadata: Option<Meta<'a>>,
    #[serde(borrow)]
    pub(super) spec: Option<JobSpec<'a>>,
}

#[derive(Deserialize)]
pub(super) struct JobSpec<'a> {
    #[serde(borrow)]
    pub(super) template: Option<PodTemplate<'a>>,
}

#[derive(Deserialize)]
pub(super) struct PodTemplate<'a> {
    #[serde(borrow)]
    pub(super) spec: Option<PodSpec<'a>>,
}

/// The containers stay raw (16 bytes each) until [`Container::read`] reads them one at a
/// time: a parsed list of a hostile review's containers took three times the body in memory.
/// See docs/BENCHMARKS.md (Hostile-size JobSets).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PodSpec<'a> {
    #[serde(borrow)]
    pub(super) restart_policy: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) containers: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    pub(super) init_containers: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    pub(super) node_selector: Option<StrMap<'a>>,
}

impl PodSpec<'_> {
    /// The `nodeSelector` as pairs, for [`crate::engine::nodes::Nodes::support`].
    pub(super) fn selector(&self) -> Vec<(&str, &str)> {
        self.node_selector
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Container<'a> {
    #[serde(borrow)]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) restart_policy: Option<Cow<'a, str>>,
    pub(super) restart_policy_rules: Option<Value>,
}

impl<'a> Container<'a> {
    /// Reads the container at `base`/`list`/`index`; a container the view cannot read is a
    /// [`DenialReason::BadRequest`] that names it.
    pub(super) fn read(
        raw: &'a RawValue,
        base: &PointerBuf,
        list: &str,
        index: usize,
    ) -> Result<Self, Denial> {
        serde_json::from_str(raw.get()).map_err(|e| Denial {
            reason: DenialReason::BadRequest,
            message: format!(
                "{}: not a container the webhook can read: {e}",
                base.with_trailing_token(list).with_trailing_token(index)
            ),
        })
    }
}
