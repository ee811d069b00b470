//! Capability detection (SPEC §7): ask the API server itself, not a version table.
//!
//! - `GET /version`.
//! - Does the API server keep `restartPolicyRules`? A server-side dry-run Pod create
//!   (`dryRun=All`: admission and validation run, nothing is stored) with a `Restart` rule;
//!   if the returned Pod lacks the rules, the `ContainerRestartRules` gate is off (the server
//!   drops them silently) or the server predates 1.34.
//! - Does it accept `RestartAllContainers`? The same with that action: a 422
//!   `Unsupported value: "RestartAllContainers"` means no.
//! - Does the installed JobSet CRD's schema carry `restartPolicyRules` under the pod
//!   template's containers? JobSet < v0.10 CRDs lack it, and the API server prunes what its
//!   schema does not declare.
//!
//! The interpretation of each answer is a pure function, tested below on small inputs.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use super::jobset;
use crate::engine::ClusterFacts;

/// What a single probe found. `value: None` means it could not tell (the request failed);
/// `detail` always says why, in one line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub value: Option<bool>,
    pub detail: String,
}

impl Finding {
    fn yes(detail: impl Into<String>) -> Self {
        Self {
            value: Some(true),
            detail: detail.into(),
        }
    }
    fn no(detail: impl Into<String>) -> Self {
        Self {
            value: Some(false),
            detail: detail.into(),
        }
    }
    fn unknown(detail: impl Into<String>) -> Self {
        Self {
            value: None,
            detail: detail.into(),
        }
    }

    /// A new finding over the last known one: a probe that failed keeps the last answer.
    fn over(self, previous: &Finding) -> Finding {
        match (self.value, previous.value) {
            (None, Some(v)) => Finding {
                value: Some(v),
                detail: format!("{} (keeping the last known answer)", self.detail),
            },
            _ => self,
        }
    }
}

/// Everything the probes found about one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// `gitVersion` from `/version`.
    pub server_version: Option<String>,
    /// The API server keeps `restartPolicyRules` (the `ContainerRestartRules` gate is on).
    pub restart_policy_rules: Finding,
    /// The API server accepts the `RestartAllContainers` action.
    pub restart_all_containers: Finding,
    /// The JobSet CRD is installed.
    pub jobset_crd_installed: Finding,
    /// The JobSet CRD's schema keeps `restartPolicyRules` in pod templates.
    pub jobset_crd_keeps_rules: Finding,
}

impl Capabilities {
    /// What the engine needs.
    pub fn facts(&self) -> ClusterFacts {
        ClusterFacts {
            restart_all_containers: self.restart_all_containers.value,
            jobset_crd_keeps_rules: match self.jobset_crd_installed.value {
                Some(true) => self.jobset_crd_keeps_rules.value,
                _ => None,
            },
            nodes: None,
        }
    }

    /// This round's findings over the last round's: failed probes keep their last answer.
    pub fn over(self, previous: &Capabilities) -> Capabilities {
        Capabilities {
            server_version: self
                .server_version
                .or_else(|| previous.server_version.clone()),
            restart_policy_rules: self
                .restart_policy_rules
                .over(&previous.restart_policy_rules),
            restart_all_containers: self
                .restart_all_containers
                .over(&previous.restart_all_containers),
            jobset_crd_keeps_rules: if self.jobset_crd_installed.value == Some(false) {
                // Uninstalled: the last schema says nothing any more.
                self.jobset_crd_keeps_rules
            } else {
                self.jobset_crd_keeps_rules
                    .over(&previous.jobset_crd_keeps_rules)
            },
            jobset_crd_installed: self
                .jobset_crd_installed
                .over(&previous.jobset_crd_installed),
        }
    }

    /// `(metric label, value)` for every capability that is known.
    pub fn gauges(&self) -> [(&'static str, Option<bool>); 4] {
        [
            ("container_restart_rules", self.restart_policy_rules.value),
            ("restart_all_containers", self.restart_all_containers.value),
            ("jobset_crd_installed", self.jobset_crd_installed.value),
            ("jobset_crd_keeps_rules", self.jobset_crd_keeps_rules.value),
        ]
    }
}

/// A failed API request, reduced to what interpretation needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The API server answered with a `Status`.
    Api { code: u16, message: String },
    /// No answer (connection, TLS, timeout, unreadable body).
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Api { code, message } => write!(f, "HTTP {code}: {message}"),
            Self::Other(e) => f.write_str(e),
        }
    }
}

impl From<kube::Error> for Failure {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => Self::Api {
                code: s.code,
                message: if s.message.is_empty() {
                    s.reason.clone()
                } else {
                    s.message.clone()
                },
            },
            other => Self::Other(other.to_string()),
        }
    }
}

/// Every request of a probe round gets at most this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The name prefix of the dry-run probe Pods (a dry run stores nothing; the name only shows
/// up in audit logs and in admission webhooks that see dry runs).
pub const PROBE_POD_PREFIX: &str = "jobset-restart-webhook-probe-";

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

/// Walks a CRD (JSON) to the container schema of `spec.replicatedJobs[].template.spec.
/// template.spec.containers[]` in the `v1alpha2` version, and tells whether
/// `restartPolicyRules` survives pruning there: declared, or kept by
/// `x-kubernetes-preserve-unknown-fields` on the way down. `Err` when the schema does not
/// have that shape at all.
pub fn crd_keeps_rules(crd: &Value) -> Result<bool, String> {
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .ok_or("no spec.versions")?;
    let version = versions
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(jobset::VERSION))
        .ok_or_else(|| format!("the CRD does not define version {}", jobset::VERSION))?;
    let mut node = version
        .pointer("/schema/openAPIV3Schema")
        .ok_or_else(|| format!("version {} has no openAPIV3Schema", jobset::VERSION))?;
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
            None => return Err(format!("no properties.{name} under {}", or_root(&path))),
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
                .ok_or_else(|| format!("no items under {path}"))?
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

/// One probe round against the cluster. Never fails: what could not be learned is
/// `unknown` with the reason.
pub async fn probe(client: &kube::Client, namespace: &str) -> Capabilities {
    let server_version = match with_timeout(client.apiserver_version()).await {
        Ok(info) => Some(info.git_version),
        Err(_) => None,
    };
    let (restart_policy_rules, restart_all_containers) = if valid_namespace(namespace) {
        let path = format!(
            "/api/v1/namespaces/{namespace}/pods?dryRun=All&fieldManager=jobset-restart-webhook"
        );
        let restart = post(client, &path, &probe_pod("Restart")).await;
        let all = post(client, &path, &probe_pod("RestartAllContainers")).await;
        (
            interpret_restart_probe(&restart),
            interpret_restart_all_probe(&all),
        )
    } else {
        let why = format!("{namespace:?} is not a valid namespace for the dry-run probe");
        (Finding::unknown(why.clone()), Finding::unknown(why))
    };
    let crd = get(
        client,
        &format!(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{}",
            jobset::CRD_NAME
        ),
    )
    .await;
    let (jobset_crd_installed, jobset_crd_keeps_rules) = interpret_crd(&crd);
    Capabilities {
        server_version,
        restart_policy_rules,
        restart_all_containers,
        jobset_crd_installed,
        jobset_crd_keeps_rules,
    }
}

async fn with_timeout<T>(
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r.map_err(Failure::from),
        Err(_) => Err(Failure::Other(format!(
            "no answer within {}s",
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
}

async fn post(client: &kube::Client, path: &str, body: &Value) -> Result<Value, Failure> {
    let bytes = serde_json::to_vec(body).map_err(|e| Failure::Other(e.to_string()))?;
    let req = http::Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(bytes)
        .map_err(|e| Failure::Other(e.to_string()))?;
    with_timeout(client.request::<Value>(req)).await
}

pub(crate) async fn get(client: &kube::Client, path: &str) -> Result<Value, Failure> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| Failure::Other(e.to_string()))?;
    with_timeout(client.request::<Value>(req)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_with(rules: Option<Value>) -> Value {
        let mut p = probe_pod("Restart");
        match rules {
            Some(r) => p["spec"]["containers"][0]["restartPolicyRules"] = r,
            None => {
                if let Some(c) = p["spec"]["containers"][0].as_object_mut() {
                    c.remove("restartPolicyRules");
                    c.remove("restartPolicy");
                }
            }
        }
        p
    }

    fn api(code: u16, message: &str) -> Failure {
        Failure::Api {
            code,
            message: message.to_owned(),
        }
    }

    #[test]
    fn probe_pod_shape() {
        let p = probe_pod("RestartAllContainers");
        assert_eq!(
            p.pointer("/spec/containers/0/restartPolicyRules/0/action"),
            Some(&json!("RestartAllContainers"))
        );
        assert_eq!(
            p.pointer("/spec/containers/0/restartPolicy"),
            Some(&json!("Never"))
        );
        assert!(p.pointer("/metadata/name").is_none(), "generateName only");
    }

    #[test]
    fn restart_probe() {
        let kept = Ok(probe_pod("Restart"));
        assert_eq!(interpret_restart_probe(&kept).value, Some(true));
        let dropped = Ok(pod_with(None));
        let f = interpret_restart_probe(&dropped);
        assert_eq!(f.value, Some(false));
        assert!(f.detail.contains("ContainerRestartRules"), "{}", f.detail);
        let forbidden = Err(api(
            422,
            "Pod \"x\" is invalid: spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers",
        ));
        assert_eq!(interpret_restart_probe(&forbidden).value, Some(false));
        for e in [
            api(403, "pods is forbidden: User cannot create resource"),
            api(422, "metadata.name: Invalid value"),
            Failure::Other("connection refused".into()),
        ] {
            let f = interpret_restart_probe(&Err(e.clone()));
            assert_eq!(f.value, None, "{e}");
            assert!(f.detail.contains(&e.to_string()));
        }
    }

    #[test]
    fn restart_all_probe() {
        assert_eq!(
            interpret_restart_all_probe(&Ok(probe_pod("RestartAllContainers"))).value,
            Some(true)
        );
        // kept, but not the action we asked for: not accepted
        assert_eq!(
            interpret_restart_all_probe(&Ok(probe_pod("Restart"))).value,
            Some(false)
        );
        assert_eq!(
            interpret_restart_all_probe(&Ok(pod_with(None))).value,
            Some(false)
        );
        // the exact text of a 1.36 API server with the gate off
        let rejected = Err(api(
            422,
            "Pod \"jobset-restart-webhook-probe-x\" is invalid: spec.containers[0].restartPolicyRules[0].action: Unsupported value: \"RestartAllContainers\": supported values: \"Restart\"",
        ));
        let f = interpret_restart_all_probe(&rejected);
        assert_eq!(f.value, Some(false));
        assert!(f.detail.contains("RestartAllContainersOnContainerExits"));
        assert!(f.detail.contains("Unsupported value"));
        assert_eq!(
            interpret_restart_all_probe(&Err(api(500, "etcd is down"))).value,
            None
        );
    }

    /// The JobSet CRD's schema, cut down to the path that matters.
    fn crd(container_props: Value) -> Value {
        json!({"spec": {"versions": [{"name": "v1alpha2", "schema": {"openAPIV3Schema": {
        "type": "object",
        "properties": {"spec": {"properties": {"replicatedJobs": {"type": "array", "items": {
            "properties": {"name": {"type": "string"}, "template": {"properties": {"spec": {
                "properties": {"template": {"properties": {"spec": {"properties": {
                    "containers": {"type": "array", "items": {"properties": container_props}}
                }}}}}}}}}}}}}}}}}]}})
    }

    #[test]
    fn crd_schema_walk() {
        let new =
            crd(json!({"name": {}, "restartPolicy": {}, "restartPolicyRules": {"type": "array"}}));
        assert_eq!(crd_keeps_rules(&new), Ok(true));
        let old = crd(json!({"name": {}, "restartPolicy": {}}));
        assert_eq!(crd_keeps_rules(&old), Ok(false));

        let mut preserving = old.clone();
        preserving["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["replicatedJobs"]["x-kubernetes-preserve-unknown-fields"] = json!(true);
        assert_eq!(crd_keeps_rules(&preserving), Ok(true));

        let mut other_version = new.clone();
        other_version["spec"]["versions"][0]["name"] = json!("v1");
        assert!(
            crd_keeps_rules(&other_version)
                .unwrap_err()
                .contains("v1alpha2")
        );
        let truncated = json!({"spec": {"versions": [{"name": "v1alpha2", "schema": {
            "openAPIV3Schema": {"properties": {"spec": {"properties": {}}}}}}]}});
        assert_eq!(
            crd_keeps_rules(&truncated),
            Err("no properties.replicatedJobs under .spec".to_owned())
        );
        assert!(crd_keeps_rules(&json!({})).is_err());
    }

    #[test]
    fn crd_answers() {
        let (i, k) = interpret_crd(&Ok(crd(json!({"restartPolicyRules": {}}))));
        assert_eq!((i.value, k.value), (Some(true), Some(true)));
        let (i, k) = interpret_crd(&Ok(crd(json!({"name": {}}))));
        assert_eq!((i.value, k.value), (Some(true), Some(false)));
        assert!(k.detail.contains("pod target"));
        let (i, k) = interpret_crd(&Err(api(404, "not found")));
        assert_eq!((i.value, k.value), (Some(false), None));
        let (i, k) = interpret_crd(&Err(api(403, "forbidden")));
        assert_eq!((i.value, k.value), (None, None));
    }

    #[test]
    fn facts_and_last_known_answers() {
        let good = Capabilities {
            server_version: Some("v1.36.2".into()),
            restart_policy_rules: Finding::yes("kept"),
            restart_all_containers: Finding::no("rejected"),
            jobset_crd_installed: Finding::yes("installed"),
            jobset_crd_keeps_rules: Finding::no("prunes"),
        };
        assert_eq!(
            good.facts(),
            ClusterFacts {
                restart_all_containers: Some(false),
                jobset_crd_keeps_rules: Some(false),
                nodes: None,
            }
        );
        let failed = Capabilities {
            server_version: None,
            restart_policy_rules: Finding::unknown("timeout"),
            restart_all_containers: Finding::unknown("timeout"),
            jobset_crd_installed: Finding::unknown("timeout"),
            jobset_crd_keeps_rules: Finding::unknown("timeout"),
        };
        let merged = failed.clone().over(&good);
        assert_eq!(merged.facts(), good.facts());
        assert_eq!(merged.server_version.as_deref(), Some("v1.36.2"));
        assert_eq!(
            merged.restart_all_containers.detail,
            "timeout (keeping the last known answer)"
        );
        // a real answer replaces the last one
        let changed = Capabilities {
            restart_all_containers: Finding::yes("accepted"),
            ..failed.clone()
        }
        .over(&good);
        assert_eq!(changed.facts().restart_all_containers, Some(true));
        // nothing known yet: the engine trusts the config
        assert_eq!(failed.facts(), ClusterFacts::default());
        // a CRD that is not installed says nothing about pruning
        let gone = Capabilities {
            jobset_crd_installed: Finding::no("not installed"),
            jobset_crd_keeps_rules: Finding::no("stale"),
            ..good
        };
        assert_eq!(gone.facts().jobset_crd_keeps_rules, None);
    }

    #[test]
    fn namespaces() {
        assert!(valid_namespace("jobset-restart-webhook"));
        assert!(!valid_namespace("a/b"));
        assert!(!valid_namespace(""));
        assert!(!valid_namespace("-a"));
        assert!(!valid_namespace("A"));
    }
}
