//! The engine's output patch. The webhook only ever adds fields, so a patch is a list of RFC
//! 6902 `add` operations. Values are shared (`Arc`) because one rule is written into hundreds
//! of containers of a large JobSet: cloning a `Value` tree per container was a third of the
//! engine's time.

use std::sync::Arc;

use json_patch::{AddOperation, PatchOperation, jsonptr::PointerBuf};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct Add {
    pub path: PointerBuf,
    pub value: Arc<Value>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Patch(Vec<Add>);

impl Patch {
    /// Adds `value` at the pointer made of `tokens`; jsonptr escapes `~` and `/` in tokens.
    pub fn add<'t>(&mut self, tokens: impl IntoIterator<Item = &'t str>, value: Arc<Value>) {
        self.0.push(Add {
            path: PointerBuf::from_tokens(tokens),
            value,
        });
    }

    /// Adds `value` at `base` extended by one token; cheaper than building from tokens when
    /// many operations share a base.
    pub fn add_under(&mut self, base: &PointerBuf, token: &str, value: Arc<Value>) {
        let mut path = base.clone();
        path.push_back(token);
        self.0.push(Add { path, value });
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn iter(&self) -> impl Iterator<Item = &Add> {
        self.0.iter()
    }

    /// The same operations as json-patch types, e.g. to apply them with `json_patch::patch`.
    pub fn to_operations(&self) -> Vec<PatchOperation> {
        self.0
            .iter()
            .map(|a| {
                PatchOperation::Add(AddOperation {
                    path: a.path.clone(),
                    value: Value::clone(&a.value),
                })
            })
            .collect()
    }

    /// Applies the patch to `doc` (what the API server does with it).
    pub fn apply(&self, doc: &mut Value) -> Result<(), json_patch::PatchError> {
        json_patch::patch(doc, &self.to_operations())
    }
}

/// Serializes as the RFC 6902 document: `[{"op":"add","path":...,"value":...}, ...]`.
impl Serialize for Patch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for add in &self.0 {
            seq.serialize_element(&AddRef(add))?;
        }
        seq.end()
    }
}

struct AddRef<'a>(&'a Add);

impl Serialize for AddRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("op", "add")?;
        map.serialize_entry("path", self.0.path.as_str())?;
        map.serialize_entry("value", &*self.0.value)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn serializes_as_rfc6902_and_matches_json_patch_types() {
        let mut p = Patch::default();
        p.add(
            ["metadata", "annotations", "restart.jobset.dev/applied"],
            Arc::new(json!("x")),
        );
        p.add(["a~b", "0"], Arc::new(json!({"k": [1]})));
        let ours = serde_json::to_value(&p).unwrap_or_default();
        assert_eq!(
            ours,
            json!([
                {"op": "add", "path": "/metadata/annotations/restart.jobset.dev~1applied", "value": "x"},
                {"op": "add", "path": "/a~0b/0", "value": {"k": [1]}},
            ])
        );
        let theirs = serde_json::to_value(p.to_operations()).unwrap_or_default();
        assert_eq!(ours, theirs);
    }
}
