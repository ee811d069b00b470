//! Helpers of the engine's integration tests (tests/engine_golden.rs, tests/engine_properties.rs).

use std::collections::BTreeSet;

use jobset_restart_webhook::engine::Mutation;
use serde_json::Value;

/// Leaf paths (JSON Pointers) whose value differs between `a` and `b`.
pub fn changed_paths(a: &Value, b: &Value) -> Vec<String> {
    fn walk(a: Option<&Value>, b: Option<&Value>, path: String, out: &mut Vec<String>) {
        match (a, b) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let esc = k.replace('~', "~0").replace('/', "~1");
                    walk(x.get(k), y.get(k), format!("{path}/{esc}"), out);
                }
            }
            (Some(Value::Array(x)), Some(Value::Array(y))) if x.len() == y.len() => {
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    walk(Some(p), Some(q), format!("{path}/{i}"), out);
                }
            }
            (p, q) if p != q => out.push(path),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(Some(a), Some(b), String::new(), &mut out);
    out
}

/// Applies the mutation's patch; panics with the reason when it does not apply.
pub fn apply(doc: &Value, m: &Mutation) -> Value {
    let mut out = doc.clone();
    if let Err(e) = m.patch.apply(&mut out) {
        panic!(
            "the patch does not apply to the object it was computed from: {e}\npatch: {:?}",
            m.patch
        );
    }
    out
}
