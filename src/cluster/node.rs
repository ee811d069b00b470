//! The Node as the webhook keeps it: its name, labels, `spec.unschedulable` and whether
//! `status.declaredFeatures` lists `RestartAllContainersOnContainerExits` — what
//! [`crate::engine::nodes`] needs, nothing else. Like [`super::jobset::SlimJobSet`], list
//! pages and watch events deserialize straight into it, so a node's images, conditions and
//! `managedFields` (several KiB each) are skipped by the parser and never kept.
//!
//! `status.declaredFeatures` (`[]string`, sorted; Kubernetes 1.35+ with the
//! `NodeDeclaredFeatures` gate, on by default from 1.36) is read from the raw JSON by name,
//! which does not depend on the Kubernetes types knowing the field.

use std::borrow::Cow;
use std::collections::BTreeMap;

use kube::core::{ClusterResourceScope, ObjectMeta, Resource};
use serde::Deserialize;

use crate::engine::NodeInfo;
use crate::engine::nodes::FEATURE;

/// A Node reduced to what the capability decision needs.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "RawNode")]
pub struct SlimNode {
    /// Only `name` and `resourceVersion` are filled in.
    pub metadata: ObjectMeta,
    pub info: NodeInfo,
}

impl Resource for SlimNode {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[derive(Default, Deserialize)]
struct RawNode {
    #[serde(default)]
    metadata: RawMeta,
    #[serde(default)]
    spec: Option<RawSpec>,
    #[serde(default)]
    status: Option<RawStatus>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Default, Deserialize)]
struct RawSpec {
    #[serde(default)]
    unschedulable: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStatus {
    #[serde(default)]
    declared_features: Option<Vec<String>>,
}

impl From<RawNode> for SlimNode {
    fn from(raw: RawNode) -> Self {
        SlimNode {
            metadata: ObjectMeta {
                name: raw.metadata.name,
                resource_version: raw.metadata.resource_version,
                ..ObjectMeta::default()
            },
            info: NodeInfo {
                labels: raw.metadata.labels.unwrap_or_default(),
                unschedulable: raw.spec.and_then(|s| s.unschedulable).unwrap_or(false),
                declares: raw
                    .status
                    .and_then(|s| s.declared_features)
                    .is_some_and(|f| f.iter().any(|f| f == FEATURE)),
            },
        }
    }
}

/// Nodes per page of a list (`check` and the watch's initial list); a slim node is small,
/// but the API server sends the whole object.
pub const PAGE: u32 = 200;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_only_what_the_decision_needs() {
        let node: SlimNode = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "resourceVersion": "7", "labels": {"pool": "gpu"},
                         "annotations": {"big": "x"}},
            "spec": {"unschedulable": true, "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {"declaredFeatures": ["GuaranteedQoSPodCPUResize", FEATURE],
                       "images": [{"names": ["a"], "sizeBytes": 1}]}
        }))
        .unwrap();
        assert_eq!(node.metadata.name.as_deref(), Some("n1"));
        assert_eq!(node.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(node.info.labels["pool"], "gpu");
        assert!(node.info.unschedulable && node.info.declares);

        let bare: SlimNode = serde_json::from_value(json!({"metadata": {"name": "n2"}})).unwrap();
        assert_eq!(bare.info, NodeInfo::default());
        let other: SlimNode = serde_json::from_value(json!({
            "metadata": {"name": "n3"}, "status": {"declaredFeatures": ["SomethingElse"]}
        }))
        .unwrap();
        assert!(!other.info.declares);
    }
}
