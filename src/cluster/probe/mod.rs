//! Capability detection: ask the API server itself, not a version table (a version says
//! nothing about feature gates or a CRD's schema).
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
//! The interpretation of each answer is a pure function (`interpret`), tested on small
//! inputs.

mod interpret;

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::jobset;
use crate::engine::ClusterFacts;

pub use interpret::{
    SchemaError, crd_keeps_rules, interpret_crd, interpret_restart_all_probe,
    interpret_restart_probe, probe_pod, valid_namespace,
};

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

    /// Every finding under the one snake_case name that metrics and logs use for it
    /// (`container_restart_rules` after the feature gate; `/readyz` keeps its camelCase
    /// `restartPolicyRules`).
    pub fn findings(&self) -> [(&'static str, &Finding); 4] {
        [
            ("container_restart_rules", &self.restart_policy_rules),
            ("restart_all_containers", &self.restart_all_containers),
            ("jobset_crd_installed", &self.jobset_crd_installed),
            ("jobset_crd_keeps_rules", &self.jobset_crd_keeps_rules),
        ]
    }

    /// `(metric label, value)` of every capability.
    pub fn gauges(&self) -> [(&'static str, Option<bool>); 4] {
        self.findings().map(|(name, f)| (name, f.value))
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

/// One probe round against the cluster. Never fails: what could not be learned is
/// `unknown` with the reason.
pub async fn probe(client: &kube::Client, namespace: &str) -> Capabilities {
    probe_round(client, namespace).await.capabilities
}

/// What one probe round found, and whether the API server answered at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub capabilities: Capabilities,
    /// At least one request got an HTTP answer from the API server (a success or a `Status`
    /// such as 403): the server was reached. A round without one (connection refused, TLS,
    /// timeouts) learned nothing, whatever the findings say.
    pub answered: bool,
}

/// The request reached the API server: it answered, successfully or with a `Status`.
fn reached<T>(r: &Result<T, Failure>) -> bool {
    matches!(r, Ok(_) | Err(Failure::Api { .. }))
}

/// [`probe`], also telling whether any request was answered.
pub async fn probe_round(client: &kube::Client, namespace: &str) -> Round {
    let version = with_timeout(client.apiserver_version()).await;
    let mut answered = reached(&version);
    let server_version = version.ok().map(|info| info.git_version);
    let (restart_policy_rules, restart_all_containers) = if valid_namespace(namespace) {
        let path = format!(
            "/api/v1/namespaces/{namespace}/pods?dryRun=All&fieldManager=jobset-restart-webhook"
        );
        let restart = post(client, &path, &probe_pod("Restart")).await;
        let all = post(client, &path, &probe_pod("RestartAllContainers")).await;
        answered |= reached(&restart) || reached(&all);
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
    answered |= reached(&crd);
    let (jobset_crd_installed, jobset_crd_keeps_rules) = interpret_crd(&crd);
    Round {
        capabilities: Capabilities {
            server_version,
            restart_policy_rules,
            restart_all_containers,
            jobset_crd_installed,
            jobset_crd_keeps_rules,
        },
        answered,
    }
}

/// `f` under [`REQUEST_TIMEOUT`], its error reduced to a [`Failure`] (also `check`'s typed
/// requests).
pub(crate) async fn with_timeout<T>(
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
mod tests;
