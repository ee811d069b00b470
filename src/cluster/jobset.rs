//! The JobSet as the cache keeps it: name, namespace, resource version and the
//! `restart.jobset.dev/*` annotations of the JobSet and of each replicated job's template —
//! exactly what [`ParentJobSet`] needs, nothing else.
//!
//! The watcher deserializes list pages and watch events straight into this type through the
//! engine's parent parser ([`crate::engine::parent`]), so the pod templates, `managedFields`,
//! `status` and foreign annotations (a `kubectl apply` `last-applied-configuration` holds the
//! whole object) are skipped by the parser and never allocated: a JobSet costs the cache its
//! two names plus its restart annotations.

use std::borrow::Cow;
use std::collections::BTreeMap;

use kube::core::{NamespaceResourceScope, ObjectMeta, Resource};
use serde::Deserialize;

use crate::engine::ParentJobSet;
use crate::engine::parent::{ParentSpec, restart_annotations};

pub const GROUP: &str = "jobset.x-k8s.io";
pub const VERSION: &str = "v1alpha2";
pub const PLURAL: &str = "jobsets";
pub const KIND: &str = "JobSet";
/// The JobSet CRD's name.
pub const CRD_NAME: &str = "jobsets.jobset.x-k8s.io";

/// A JobSet reduced to what the pod target needs.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "RawJobSet")]
pub struct SlimJobSet {
    /// Only `name`, `namespace` and `resourceVersion` are filled in.
    pub metadata: ObjectMeta,
    pub parent: ParentJobSet,
}

impl Resource for SlimJobSet {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The JobSet as the watch sends it, read by the engine's parent parser plus the three names.
#[derive(Deserialize)]
struct RawJobSet {
    #[serde(default)]
    metadata: RawMeta,
    #[serde(default)]
    spec: Option<ParentSpec>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default, deserialize_with = "restart_annotations")]
    annotations: BTreeMap<String, String>,
}

impl From<RawJobSet> for SlimJobSet {
    fn from(raw: RawJobSet) -> Self {
        Self {
            metadata: ObjectMeta {
                name: raw.metadata.name,
                namespace: raw.metadata.namespace,
                resource_version: raw.metadata.resource_version,
                ..ObjectMeta::default()
            },
            parent: ParentJobSet::from_parts(raw.metadata.annotations, raw.spec),
        }
    }
}

type Pairs = Box<[(Box<str>, Box<str>)]>;

/// A [`ParentJobSet`] as the cache stores it: boxed slices instead of B-tree maps (a B-tree
/// leaf costs about half a KiB however few entries it holds), and only the replicated jobs
/// that carry restart annotations (a missing one reads as "no annotations", exactly like an
/// empty one). A JobSet without any restart annotation is [`CachedParent::is_empty`], and
/// the cache shares one value for all of those.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CachedParent {
    annotations: Pairs,
    replicated_jobs: Box<[(Box<str>, Pairs)]>,
}

fn pairs(map: BTreeMap<String, String>) -> Pairs {
    map.into_iter()
        .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
        .collect()
}

fn map(pairs: &Pairs) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl CachedParent {
    pub fn is_empty(&self) -> bool {
        self.annotations.is_empty() && self.replicated_jobs.is_empty()
    }

    /// The engine's view, built per lookup.
    pub fn to_parent(&self) -> ParentJobSet {
        ParentJobSet {
            annotations: map(&self.annotations),
            replicated_jobs: self
                .replicated_jobs
                .iter()
                .map(|(name, p)| (name.to_string(), map(p)))
                .collect(),
        }
    }
}

impl From<ParentJobSet> for CachedParent {
    fn from(p: ParentJobSet) -> Self {
        Self {
            annotations: pairs(p.annotations),
            replicated_jobs: p
                .replicated_jobs
                .into_iter()
                .filter(|(_, a)| !a.is_empty())
                .map(|(name, a)| (name.into_boxed_str(), pairs(a)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOBSET: &str = r#"{
      "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
      "metadata": {
        "name": "train", "namespace": "ml", "resourceVersion": "42", "uid": "u",
        "annotations": {
          "restart.jobset.dev/in-place": "enabled",
          "restart.jobset.dev/action": "Restart",
          "restart.jobset.dev/applied": "workers/trainer=Restart:NotIn(0)",
          "kubectl.kubernetes.io/last-applied-configuration": "{\"huge\": true}",
          "restart.jobset.dev\/on-exit-codes": "42"
        },
        "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
      },
      "spec": {
        "replicatedJobs": [
          {"name": "workers", "replicas": 2, "template": {
            "metadata": {"annotations": {"restart.jobset.dev/containers": "trainer", "other": "x"}},
            "spec": {"template": {"spec": {"containers": [{"name": "trainer", "image": "i"}]}}}}},
          {"name": "driver", "template": {"spec": {}}},
          {"template": {"metadata": {"annotations": {"restart.jobset.dev/in-place": "disabled"}}}}
        ]
      },
      "status": {"restarts": 0}
    }"#;

    #[test]
    fn keeps_only_what_the_engine_reads() {
        let js: SlimJobSet = serde_json::from_str(JOBSET).unwrap();
        assert_eq!(js.metadata.name.as_deref(), Some("train"));
        assert_eq!(js.metadata.namespace.as_deref(), Some("ml"));
        assert_eq!(js.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(js.metadata.uid, None);
        assert_eq!(js.metadata.managed_fields, None);
        assert_eq!(js.metadata.annotations, None);
        let keys: Vec<&str> = js.parent.annotations.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "restart.jobset.dev/action",
                "restart.jobset.dev/in-place",
                "restart.jobset.dev/on-exit-codes"
            ],
            "escaped keys are read too; applied and foreign keys are dropped"
        );
        assert_eq!(
            js.parent.replicated_jobs.len(),
            2,
            "unnamed jobs are skipped"
        );
        assert_eq!(
            js.parent.replicated_jobs["workers"],
            BTreeMap::from([(
                "restart.jobset.dev/containers".to_owned(),
                "trainer".to_owned()
            )])
        );
        assert!(js.parent.replicated_jobs["driver"].is_empty());
    }

    #[test]
    fn same_view_as_the_engine() {
        let js: SlimJobSet = serde_json::from_str(JOBSET).unwrap();
        let engine = ParentJobSet::from_jobset_json(JOBSET).unwrap();
        assert_eq!(js.parent, engine);
    }

    #[test]
    fn cached_form_reads_back_the_same() {
        let js: SlimJobSet = serde_json::from_str(JOBSET).unwrap();
        let cached = CachedParent::from(js.parent.clone());
        assert!(!cached.is_empty());
        let back = cached.to_parent();
        assert_eq!(back.annotations, js.parent.annotations);
        // replicated jobs without restart annotations are not kept; they read the same
        assert_eq!(back.replicated_jobs.len(), 1);
        for (name, anns) in &js.parent.replicated_jobs {
            assert_eq!(
                back.replicated_jobs.get(name).cloned().unwrap_or_default(),
                *anns
            );
        }
        let plain: SlimJobSet = serde_json::from_str(
            r#"{"metadata": {"name": "a", "annotations": {"x": "y"}},
                "spec": {"replicatedJobs": [{"name": "w", "template": {}}]}}"#,
        )
        .unwrap();
        assert!(CachedParent::from(plain.parent).is_empty());
    }

    #[test]
    fn sparse_and_null_fields() {
        for doc in [
            r#"{"metadata": {"name": "a"}}"#,
            r#"{"metadata": {"name": "a", "annotations": null}, "spec": null}"#,
            r#"{"metadata": {"name": "a"}, "spec": {"replicatedJobs": null}}"#,
            r#"{"metadata": {"name": "a"}, "spec": {"replicatedJobs": [{"name": "w", "template": {"metadata": null}}]}}"#,
        ] {
            let js: SlimJobSet = serde_json::from_str(doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
            assert_eq!(js.metadata.name.as_deref(), Some("a"));
            assert!(js.parent.annotations.is_empty());
        }
        // A wrongly typed annotation value is an error (the API server never sends one).
        assert!(
            serde_json::from_str::<SlimJobSet>(
                r#"{"metadata": {"annotations": {"restart.jobset.dev/in-place": 1}}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn lists_deserialize() {
        let list = format!(r#"{{"metadata": {{"resourceVersion": "7"}}, "items": [{JOBSET}]}}"#);
        let l: kube::core::ObjectList<SlimJobSet> = serde_json::from_str(&list).unwrap();
        assert_eq!(l.items.len(), 1);
        assert_eq!(l.metadata.resource_version.as_deref(), Some("7"));
    }
}
