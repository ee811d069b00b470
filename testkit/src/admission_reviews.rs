//! AdmissionReview requests as kube-apiserver sends them, and helpers to read the answers.

use base64::Engine as _;
use serde_json::{Value, json};

pub const IN_PLACE: &str = "restart.jobset.dev/in-place";
pub const APPLIED: &str = "restart.jobset.dev/applied";

/// A JobSet with one replicated job `workers` and one container `trainer`.
pub fn jobset(annotations: &[(&str, &str)]) -> Value {
    let ann: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": { "name": "train", "namespace": "ml", "annotations": ann },
        "spec": {
            "replicatedJobs": [{
                "name": "workers",
                "replicas": 2,
                "template": { "spec": { "template": { "spec": {
                    "containers": [{ "name": "trainer", "image": "registry.invalid/trainer:1" }]
                }}}}
            }]
        }
    })
}

/// A pod of the JobSet `train`, replicated job `workers`.
pub fn jobset_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "train-workers-0-0-",
            "namespace": "ml",
            "labels": {
                "jobset.sigs.k8s.io/jobset-name": "train",
                "jobset.sigs.k8s.io/replicatedjob-name": "workers"
            }
        },
        "spec": {
            "restartPolicy": "OnFailure",
            "containers": [{ "name": "trainer", "image": "registry.invalid/trainer:1" }]
        }
    })
}

/// A v1 AdmissionReview for `object`.
pub fn review(uid: &str, operation: &str, object: &Value) -> Value {
    let kind = object["kind"].as_str().unwrap_or_default();
    let (group, version, resource) = match kind {
        "JobSet" => ("jobset.x-k8s.io", "v1alpha2", "jobsets"),
        "Pod" => ("", "v1", "pods"),
        _ => ("", "v1", "unknown"),
    };
    let mut request = json!({
        "uid": uid,
        "kind": { "group": group, "version": version, "kind": kind },
        "resource": { "group": group, "version": version, "resource": resource },
        "requestKind": { "group": group, "version": version, "kind": kind },
        "namespace": object["metadata"]["namespace"],
        "operation": operation,
        "userInfo": { "username": "system:serviceaccount:ml:trainer" },
        "object": object,
        "oldObject": null,
        "dryRun": false,
        "options": { "apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions" }
    });
    if let Some(name) = object["metadata"]["name"].as_str() {
        request["name"] = json!(name);
    }
    if operation == "UPDATE" {
        request["oldObject"] = object.clone();
        request["options"]["kind"] = json!("UpdateOptions");
    }
    json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request })
}

/// Checks the envelope (`apiVersion`, `kind`, `uid` echoed) and returns `response`.
pub fn response<'a>(answer: &'a Value, uid: &str) -> &'a Value {
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
    assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
    let r = &answer["response"];
    assert_eq!(r["uid"], uid, "{answer}");
    r
}

/// Decodes the base64 `patch` and applies it to `object`.
pub fn apply_patch(response: &Value, object: &Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let b64 = response["patch"]
        .as_str()
        .expect("patch is a base64 string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("patch is valid base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch is a JSON Patch");
    let mut out = object.clone();
    json_patch::patch(&mut out, &patch).expect("patch applies to the object");
    out
}
