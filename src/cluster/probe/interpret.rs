//! What each probe's answer means: pure functions of the API server's reply.

use serde_json::{Value, json};

use super::{Failure, Finding, PROBE_POD_PREFIX};
use crate::cluster::jobset;

/// The dry-run probe Pod with one rule of `action`. It is written to pass the `restricted`
/// Pod Security level, so that the namespace's policy does not hide the answer.
pub fn probe_pod(action: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": PROBE_POD_PREFIX,
            "labels": {"app.kubernetes.io/name": "jobset-restart-webhook-probe"}
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "containers": [{
                "name": "probe",
                "image": "pause",
                "restartPolicy": "Never",
                "restartPolicyRules": [
                    {"action": action, "exitCodes": {"operator": "In", "values": [42]}}
                ],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}
                }
            }]
        }
    })
}

/// The rules the API server returned on the probe Pod's container (empty when dropped).
fn returned_rules(pod: &Value) -> Vec<&Value> {
    pod.pointer("/spec/containers/0/restartPolicyRules")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// Interprets the dry-run create with a `Restart` rule.
pub fn interpret_restart_probe(result: &Result<Value, Failure>) -> Finding {
    match result {
        Ok(pod) if !returned_rules(pod).is_empty() => {
            Finding::yes("a dry-run Pod with a Restart rule kept it")
        }
        Ok(_) => Finding::no(
            "the API server dropped restartPolicyRules from a dry-run Pod: the \
             ContainerRestartRules feature gate is off (it is on by default from Kubernetes \
             1.35) or the server predates 1.34",
        ),
        Err(Failure::Api { code: 422, message }) if message.contains("restartPolicy") => {
            Finding::no(format!(
                "the API server rejected a dry-run Pod with a Restart rule: {message}"
            ))
        }
        Err(e) => Finding::unknown(format!("the dry-run Pod probe failed: {e}")),
    }
}

/// Interprets the dry-run create with a `RestartAllContainers` rule.
pub fn interpret_restart_all_probe(result: &Result<Value, Failure>) -> Finding {
    match result {
        Ok(pod) => {
            let kept = returned_rules(pod)
                .iter()
                .any(|r| r.get("action").and_then(Value::as_str) == Some("RestartAllContainers"));
            if kept {
                Finding::yes("a dry-run Pod with a RestartAllContainers rule was accepted")
            } else {
                Finding::no(
                    "the API server dropped the RestartAllContainers rule from a dry-run Pod \
                     (restartPolicyRules are not kept at all)",
                )
            }
        }
        Err(Failure::Api { code: 422, message })
            if message.contains("RestartAllContainers") || message.contains("restartPolicy") =>
        {
            Finding::no(format!(
                "the API server rejects RestartAllContainers (it needs Kubernetes 1.35+ with the \
                 RestartAllContainersOnContainerExits feature gate, on by default from 1.36): \
                 {message}"
            ))
        }
        Err(e) => Finding::unknown(format!("the dry-run Pod probe failed: {e}")),
    }
}

/// Interprets `GET customresourcedefinitions/jobsets.jobset.x-k8s.io`:
/// (installed, keeps rules).
pub fn interpret_crd(result: &Result<Value, Failure>) -> (Finding, Finding) {
    match result {
        Ok(crd) => {
            let installed = Finding::yes(format!("{} is installed", jobset::CRD_NAME));
            let keeps = match crd_keeps_rules(crd) {
                Ok(true) => Finding::yes(format!(
                    "the {} schema has restartPolicyRules in pod templates",
                    jobset::VERSION
                )),
                Ok(false) => Finding::no(format!(
                    "the {} schema has no restartPolicyRules in pod templates (a JobSet CRD \
                     older than v0.10): the API server prunes the rules from JobSets; the pod \
                     target (--targets jobsets,pods) is the way to get them",
                    jobset::VERSION
                )),
                Err(e) => Finding::unknown(format!("cannot read the JobSet CRD's schema: {e}")),
            };
            (installed, keeps)
        }
        Err(Failure::Api { code: 404, .. }) => (
            Finding::no(format!("{} is not installed", jobset::CRD_NAME)),
            Finding::unknown("the JobSet CRD is not installed"),
        ),
        Err(e) => {
            let text = format!("reading the JobSet CRD failed: {e}");
            (Finding::unknown(text.clone()), Finding::unknown(text))
        }
    }
}

/// Why a JobSet CRD's schema could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("no spec.versions")]
    NoVersions,
    #[error("the CRD does not define version {0}")]
    NoVersion(&'static str),
    #[error("version {0} has no openAPIV3Schema")]
    NoSchema(&'static str),
    #[error("no properties.{name} under {under}")]
    NoProperty { name: &'static str, under: String },
    #[error("no items under {0}")]
    NoItems(String),
}

/// Walks a CRD (JSON) to the container schema of `spec.replicatedJobs[].template.spec.
/// template.spec.containers[]` in the `v1alpha2` version, and tells whether
/// `restartPolicyRules` survives pruning there: declared, or kept by
/// `x-kubernetes-preserve-unknown-fields` on the way down. `Err` when the schema does not
/// have that shape at all.
pub fn crd_keeps_rules(crd: &Value) -> Result<bool, SchemaError> {
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .ok_or(SchemaError::NoVersions)?;
    let version = versions
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(jobset::VERSION))
        .ok_or(SchemaError::NoVersion(jobset::VERSION))?;
    let mut node = version
        .pointer("/schema/openAPIV3Schema")
        .ok_or(SchemaError::NoSchema(jobset::VERSION))?;
    // (step, is an array's items)
    let steps: [(&str, bool); 8] = [
        ("spec", false),
        ("replicatedJobs", true),
        ("template", false),
        ("spec", false),
        ("template", false),
        ("spec", false),
        ("containers", true),
        ("restartPolicyRules", false),
    ];
    let mut path = String::new();
    for (name, is_array) in steps {
        if preserves_unknown(node) {
            return Ok(true);
        }
        let props = node.get("properties").and_then(Value::as_object);
        let child = match props.and_then(|p| p.get(name)) {
            Some(c) => c,
            None if name == "restartPolicyRules" && props.is_some() => return Ok(false),
            None => {
                return Err(SchemaError::NoProperty {
                    name,
                    under: or_root(&path).to_owned(),
                });
            }
        };
        path.push('.');
        path.push_str(name);
        node = if is_array {
            if preserves_unknown(child) {
                return Ok(true);
            }
            path.push_str("[]");
            child
                .get("items")
                .ok_or_else(|| SchemaError::NoItems(path.clone()))?
        } else {
            child
        };
    }
    Ok(true)
}

fn preserves_unknown(node: &Value) -> bool {
    node.get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn or_root(path: &str) -> &str {
    if path.is_empty() { "the root" } else { path }
}

/// Whether `s` can be a namespace name (it is put into a URL path).
pub fn valid_namespace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
