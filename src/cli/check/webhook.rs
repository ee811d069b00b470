//! What the cluster registers: our MutatingWebhookConfiguration (its webhooks, where they
//! send, what they route) and the objects of `policy`.

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};

use super::report::{PolicyReport, WebhookReport};
use crate::admission_policy;
use crate::cluster::probe::{self, Failure, Finding};
use crate::engine::Targets;

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

pub(super) async fn read_webhook(
    client: &kube::Client,
    name: &str,
) -> (WebhookReport, Option<MutatingWebhookConfiguration>) {
    let mut report = WebhookReport {
        name: name.to_owned(),
        ..WebhookReport::default()
    };
    if !valid_name(name) {
        report.registered = Finding {
            value: None,
            detail: format!("{name:?} is not a valid object name"),
        };
        return (report, None);
    }
    let path =
        format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}");
    match probe::get(client, &path).await {
        Ok(v) => match serde_json::from_value::<MutatingWebhookConfiguration>(v) {
            Ok(mwc) => {
                let n = mwc.webhooks.as_ref().map_or(0, Vec::len);
                report.registered = Finding {
                    value: Some(true),
                    detail: format!("MutatingWebhookConfiguration {name} has {n} webhooks"),
                };
                (report, Some(mwc))
            }
            Err(e) => {
                report.registered = Finding {
                    value: None,
                    detail: format!("MutatingWebhookConfiguration {name} is unreadable: {e}"),
                };
                (report, None)
            }
        },
        Err(Failure::Api { code: 404, .. }) => {
            report.registered = Finding {
                value: Some(false),
                detail: format!("MutatingWebhookConfiguration {name} is not registered"),
            };
            (report, None)
        }
        Err(e) => {
            report.registered = Finding {
                value: None,
                detail: format!("reading MutatingWebhookConfiguration {name} failed: {e}"),
            };
            (report, None)
        }
    }
}

/// Looks for the four objects of `policy` by their names (a cluster without the v1 admission
/// policy APIs answers 404, the same as "not installed").
pub(super) async fn read_policy(client: &kube::Client) -> PolicyReport {
    let objects = [
        ("mutatingadmissionpolicies", admission_policy::MUTATING_NAME),
        (
            "mutatingadmissionpolicybindings",
            admission_policy::MUTATING_NAME,
        ),
        (
            "validatingadmissionpolicies",
            admission_policy::VALIDATING_NAME,
        ),
        (
            "validatingadmissionpolicybindings",
            admission_policy::VALIDATING_NAME,
        ),
    ];
    let (mut present, mut missing, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (resource, name) in objects {
        let path = format!("/apis/admissionregistration.k8s.io/v1/{resource}/{name}");
        let what = format!("{resource}/{name}");
        match probe::get(client, &path).await {
            Ok(_) => present.push(what),
            Err(Failure::Api { code: 404, .. }) => missing.push(what),
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
