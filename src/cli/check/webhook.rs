//! What the cluster registers: our MutatingWebhookConfiguration (its webhooks, where they
//! send, what they route) and the objects of `policy`.

use std::fmt::Debug;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, MutatingWebhook,
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::Api;
use kube::core::{ClusterResourceScope, Resource};
use serde::de::DeserializeOwned;

use super::report::{PolicyReport, WebhookReport};
use crate::admission_policy;
use crate::cluster::probe::{Failure, Finding, with_timeout};
use crate::engine::Targets;

/// Whether kube's typed [`Api`] can put `name` into a request path as it is. kube-rs does not
/// escape names (kube-core's `Request::get` formats `{path}/{name}`), so a `/`, `?`, `#` or `%`
/// would address another object or add a query; client-go refuses the same names
/// (`IsValidPathSegmentName`). Everything else about a name is the API server's to judge: a
/// name no object can have is simply not found.
pub(super) fn one_path_segment(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '?', '#', '%'])
}

/// Our MutatingWebhookConfiguration `name`, if it is registered.
pub(super) async fn read_webhook(
    client: &kube::Client,
    name: &str,
) -> (WebhookReport, Option<MutatingWebhookConfiguration>) {
    let found = if one_path_segment(name) {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        Some(with_timeout(api.get_opt(name)).await)
    } else {
        None
    };
    registration(name, found)
}

/// What the lookup of configuration `name` found (`None`: the name was not looked up).
pub(super) fn registration(
    name: &str,
    found: Option<Result<Option<MutatingWebhookConfiguration>, Failure>>,
) -> (WebhookReport, Option<MutatingWebhookConfiguration>) {
    let (registered, mwc) = match found {
        None => (
            Finding {
                value: None,
                detail: format!("{name:?} is not a valid object name"),
            },
            None,
        ),
        Some(Ok(Some(mwc))) => {
            let n = mwc.webhooks.as_ref().map_or(0, Vec::len);
            (
                Finding {
                    value: Some(true),
                    detail: format!("MutatingWebhookConfiguration {name} has {n} webhooks"),
                },
                Some(mwc),
            )
        }
        Some(Ok(None)) => (
            Finding {
                value: Some(false),
                detail: format!("MutatingWebhookConfiguration {name} is not registered"),
            },
            None,
        ),
        Some(Err(e)) => (
            Finding {
                value: None,
                detail: format!("reading MutatingWebhookConfiguration {name} failed: {e}"),
            },
            None,
        ),
    };
    let report = WebhookReport {
        name: name.to_owned(),
        registered,
        ..WebhookReport::default()
    };
    (report, mwc)
}

/// Looks for the four objects of `policy` by their names (a cluster without the v1 admission
/// policy APIs answers 404, the same as "not installed").
pub(super) async fn read_policy(client: &kube::Client) -> PolicyReport {
    let (mutating, validating) = (
        admission_policy::MUTATING_NAME,
        admission_policy::VALIDATING_NAME,
    );
    policy_report(&[
        exists::<MutatingAdmissionPolicy>(client, mutating).await,
        exists::<MutatingAdmissionPolicyBinding>(client, mutating).await,
        exists::<ValidatingAdmissionPolicy>(client, validating).await,
        exists::<ValidatingAdmissionPolicyBinding>(client, validating).await,
    ])
}

/// `("<plural>/<name>", whether it exists)` for the cluster-wide object `name` of kind `K`
/// (its metadata only: nothing else of it is read).
async fn exists<K>(client: &kube::Client, name: &str) -> (String, Result<bool, Failure>)
where
    K: Resource<DynamicType = (), Scope = ClusterResourceScope> + Clone + DeserializeOwned + Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let found = with_timeout(api.get_metadata_opt(name)).await;
    (
        format!("{}/{name}", K::plural(&())),
        found.map(|m| m.is_some()),
    )
}

/// Whether `policy`'s objects are installed, from what was found of each (`"<plural>/<name>"`,
/// exists).
pub(super) fn policy_report(objects: &[(String, Result<bool, Failure>)]) -> PolicyReport {
    let (mut present, mut missing, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (what, found) in objects {
        match found {
            Ok(true) => present.push(what.as_str()),
            Ok(false) => missing.push(what.as_str()),
            Err(e) => failed.push(format!("{what}: {e}")),
        }
    }
    let (value, detail) = if !failed.is_empty() {
        (None, format!("could not read {}", failed.join("; ")))
    } else if missing.is_empty() {
        (
            Some(true),
            format!(
                "{} and {} with their bindings",
                admission_policy::MUTATING_NAME,
                admission_policy::VALIDATING_NAME
            ),
        )
    } else if present.is_empty() {
        (Some(false), "not installed".to_owned())
    } else {
        (
            Some(false),
            format!("partly installed: {} missing", missing.join(", ")),
        )
    };
    PolicyReport {
        partial: !present.is_empty() && !missing.is_empty(),
        installed: Finding { value, detail },
    }
}

/// What the configuration sends to the webhook, by its rules' resources.
pub(super) fn routed_targets(mwc: Option<&MutatingWebhookConfiguration>) -> Option<Targets> {
    let hooks = mwc?.webhooks.as_ref()?;
    let mut t = Targets {
        jobsets: false,
        pods: false,
    };
    for r in hooks.iter().flat_map(resources) {
        match r.as_str() {
            "jobsets" => t.jobsets = true,
            "pods" => t.pods = true,
            _ => {}
        }
    }
    (t.jobsets || t.pods).then_some(t)
}

pub(super) fn resources(w: &MutatingWebhook) -> Vec<String> {
    let mut out: Vec<String> = w
        .rules
        .iter()
        .flatten()
        .flat_map(|r| r.resources.iter().flatten())
        .map(|r| match r.as_str() {
            "*" | "*/*" => "*".to_owned(),
            other => other.split('/').next().unwrap_or(other).to_owned(),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// How the API server reaches one webhook.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Endpoint {
    Url(String),
    Service {
        namespace: String,
        name: String,
        port: i32,
        path: String,
    },
    None,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(u) => write!(f, "url {u}"),
            Self::Service {
                namespace,
                name,
                port,
                path,
            } => write!(f, "service {namespace}/{name}:{port}{path}"),
            Self::None => f.write_str("no clientConfig"),
        }
    }
}

pub(super) fn endpoint(w: &MutatingWebhook) -> Endpoint {
    let cc = &w.client_config;
    if let Some(u) = &cc.url {
        Endpoint::Url(u.clone())
    } else if let Some(s) = &cc.service {
        Endpoint::Service {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            port: s.port.unwrap_or(443),
            path: s.path.clone().unwrap_or_default(),
        }
    } else {
        Endpoint::None
    }
}
