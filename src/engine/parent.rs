//! The pod target's view of a pod's parent JobSet: the `restart.jobset.dev/*` annotations of
//! the JobSet and of each replicated job's template, nothing else.
//!
//! One parser builds it for the `mutate` preview ([`ParentJobSet::from_jobset_json`]) and for
//! the cluster cache (which reads [`restart_annotations`] and [`ParentSpec`] into its own
//! type, beside the names it keys by). It filters while reading: pod templates,
//! `managedFields`, `status` and foreign annotations (a `kubectl apply`
//! `last-applied-configuration` holds the whole object) are skipped by the parser and never
//! allocated, so thousands of cached JobSets stay small.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::annotations::{APPLIED, PREFIX};
use super::view::{JobSetDoc, StrMap};

/// The annotations of a pod's parent JobSet: only what resolution needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParentJobSet {
    /// The JobSet's `restart.jobset.dev/*` annotations.
    pub annotations: BTreeMap<String, String>,
    /// Per replicated job name, its template's `restart.jobset.dev/*` annotations.
    pub replicated_jobs: BTreeMap<String, BTreeMap<String, String>>,
}

impl ParentJobSet {
    /// Reads the parent view from a raw JobSet (the `mutate` preview's JobSets serve as the
    /// parents of the pods beside them).
    pub fn from_jobset_json(raw: &str) -> Result<Self, serde_json::Error> {
        let doc: Doc = serde_json::from_str(raw)?;
        let annotations = doc.metadata.map(|m| m.annotations).unwrap_or_default();
        Ok(Self::from_parts(annotations, doc.spec))
    }

    /// Builds the view from a JobSet's `metadata.annotations`, read with
    /// [`restart_annotations`], and its `spec`.
    pub fn from_parts(annotations: BTreeMap<String, String>, spec: Option<ParentSpec>) -> Self {
        let mut out = Self {
            annotations,
            replicated_jobs: BTreeMap::new(),
        };
        for rj in spec.map(|s| s.replicated_jobs).unwrap_or_default() {
            if let Some(name) = rj.name {
                let anns = rj
                    .template
                    .and_then(|t| t.metadata)
                    .map(|m| m.annotations)
                    .unwrap_or_default();
                out.replicated_jobs.insert(name, anns);
            }
        }
        out
    }

    /// The same from a JobSet already read by the borrowed views (an UPDATE compares two of
    /// them without reading either again).
    pub(super) fn from_doc(doc: &JobSetDoc<'_>) -> Self {
        let mut out = Self {
            annotations: ours(doc.metadata.as_ref().and_then(|m| m.annotations.as_ref())),
            replicated_jobs: BTreeMap::new(),
        };
        for rj in doc.spec.iter().flat_map(|s| &s.replicated_jobs) {
            let template_meta = rj.template.as_ref().and_then(|t| t.metadata.as_ref());
            if let Some(name) = &rj.name {
                let anns = ours(template_meta.and_then(|m| m.annotations.as_ref()));
                out.replicated_jobs.insert(name.to_string(), anns);
            }
        }
        out
    }
}

/// Whether an annotation key is one the engine reads from a parent: `restart.jobset.dev/*`
/// except the webhook's own `applied` record.
pub fn is_restart_annotation(key: &str) -> bool {
    key.starts_with(PREFIX) && key != APPLIED
}

fn ours(map: Option<&StrMap<'_>>) -> BTreeMap<String, String> {
    map.into_iter()
        .flatten()
        .filter(|(k, _)| is_restart_annotation(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A whole JobSet, read for its parent view only.
#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    metadata: Option<DocMeta>,
    #[serde(default)]
    spec: Option<ParentSpec>,
}

#[derive(Deserialize)]
struct DocMeta {
    #[serde(default, deserialize_with = "restart_annotations")]
    annotations: BTreeMap<String, String>,
}

/// A JobSet's `spec` read for the parent view: each replicated job's name and its template's
/// restart annotations.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentSpec {
    #[serde(default, deserialize_with = "null_as_default")]
    replicated_jobs: Vec<ReplicatedJob>,
}

#[derive(Deserialize)]
struct ReplicatedJob {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    template: Option<Template>,
}

#[derive(Deserialize)]
struct Template {
    #[serde(default)]
    metadata: Option<TemplateMeta>,
}

#[derive(Deserialize)]
struct TemplateMeta {
    #[serde(default, deserialize_with = "restart_annotations")]
    annotations: BTreeMap<String, String>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Reads an annotation map (`null` reads as empty) keeping only the keys
/// [`is_restart_annotation`] accepts; other values are skipped by the parser without being
/// allocated. For `#[serde(deserialize_with = ...)]`.
pub fn restart_annotations<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: Deserializer<'de>,
{
    struct Filter;

    impl<'de> Visitor<'de> for Filter {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of annotations")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }

        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_map(self)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<Key<'de>>()? {
                if is_restart_annotation(&key.0) {
                    let value: String = map.next_value()?;
                    out.insert(key.0.into_owned(), value);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(out)
        }
    }

    d.deserialize_option(Filter)
}

/// A map key, borrowed from the input when it can be (no allocation for skipped keys).
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests;
