//! The report `check` prints: its JSON shape (`-o json`) and the table.

use std::sync::Arc;

use serde::Serialize;

use crate::cluster::node::SlimNode;
use crate::cluster::probe::{Capabilities, Failure, Finding};
use crate::engine::nodes::FEATURE;

/// The whole report, as `-o json` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub cluster: String,
    pub probe_namespace: String,
    pub capabilities: Capabilities,
    pub nodes: NodesReport,
    pub webhook_configuration: WebhookReport,
    /// The admission-policy alternative (`policy`), by its objects' names.
    pub admission_policy: PolicyReport,
    /// The targets the verdict assumes, and where they come from.
    pub targets: String,
    pub targets_source: String,
    /// Why in-place restart cannot work as configured (non-empty: exit 1).
    pub problems: Vec<String>,
    /// Worth knowing, but in-place restart can work.
    pub warnings: Vec<String>,
    pub ok: bool,
}

/// The nodes, and whether they can run `RestartAllContainers` pods.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodesReport {
    /// Every schedulable node declares `RestartAllContainersOnContainerExits`; `None` when
    /// the nodes could not be listed or none is schedulable.
    pub restart_all_containers: Finding,
    /// `None` when the nodes could not be listed.
    pub total: Option<usize>,
    pub schedulable: Option<usize>,
    pub declaring: Option<usize>,
}

impl NodesReport {
    /// From a node list (or why there is none).
    pub fn from_list(result: Result<Vec<SlimNode>, Failure>) -> Self {
        let nodes = match result {
            Ok(n) => n,
            Err(e) => {
                let hint = match &e {
                    Failure::Api { code: 403, .. } => {
                        " (listing nodes needs the list verb on nodes, as in the webhook's \
                         ClusterRole)"
                    }
                    _ => "",
                };
                return Self {
                    restart_all_containers: Finding {
                        value: None,
                        detail: format!("could not list the nodes: {e}{hint}"),
                    },
                    ..Self::default()
                };
            }
        };
        let summary =
            crate::engine::Nodes::new(nodes.into_iter().map(|n| Arc::new(n.info)).collect());
        let (total, schedulable, declaring) =
            (summary.total(), summary.schedulable(), summary.declaring());
        let cordoned = match total - schedulable {
            0 => String::new(),
            n => format!(" ({n} cordoned not counted)"),
        };
        let restart_all_containers = if schedulable == 0 {
            let what = if total == 0 {
                "no nodes".to_owned()
            } else {
                format!("{total} nodes, none schedulable{cordoned}")
            };
            Finding {
                value: None,
                detail: format!(
                    "{what}: which kubelets will run the pods is unknown, so the API server's \
                     answer decides the default action"
                ),
            }
        } else {
            Finding {
                value: Some(declaring == schedulable),
                detail: format!(
                    "{declaring} of {schedulable} schedulable nodes declare {FEATURE}{cordoned}"
                ),
            }
        };
        Self {
            restart_all_containers,
            total: Some(total),
            schedulable: Some(schedulable),
            declaring: Some(declaring),
        }
    }

    /// Warnings about the nodes (never problems: `Restart` needs nothing from them).
    pub fn warnings(&self, caps: &Capabilities) -> Vec<String> {
        if caps.restart_policy_rules.value == Some(false)
            || caps.restart_all_containers.value == Some(false)
        {
            // The API server already rules RestartAllContainers out.
            return Vec::new();
        }
        let (Some(schedulable), Some(declaring)) = (self.schedulable, self.declaring) else {
            return vec![self.restart_all_containers.detail.clone()];
        };
        if schedulable == 0 {
            vec![format!(
                "no schedulable nodes: {}",
                self.restart_all_containers.detail
            )]
        } else if declaring == 0 {
            vec![format!(
                "no schedulable node declares {FEATURE} (kubelets older than 1.35, or the gate \
                 is off on them): the webhook defaults to Restart and denies JobSets that ask \
                 for RestartAllContainers"
            )]
        } else if declaring < schedulable {
            vec![format!(
                "only {declaring} of {schedulable} schedulable nodes declare {FEATURE}: the \
                 webhook defaults to Restart, except for pod templates whose nodeSelector picks \
                 only nodes that declare it; JobSets that ask for RestartAllContainers run on \
                 those nodes only"
            )]
        } else {
            Vec::new()
        }
    }
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookReport {
    pub name: String,
    pub registered: Finding,
    pub webhooks: Vec<WebhookEntry>,
}

/// Whether the objects `policy` prints are in the cluster.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    /// `true`: all four; `false`: none, or only some (the detail names the missing ones).
    pub installed: Finding,
    /// Some but not all of the four are there.
    pub partial: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEntry {
    pub name: String,
    /// `jobsets`, `pods`: what its rules send.
    pub resources: Vec<String>,
    /// `url https://…` or `service NAMESPACE/NAME:PORT/PATH`.
    pub endpoint: String,
    /// Does the caBundle verify the serving certificate? `None`: could not tell.
    pub ca_bundle: Finding,
}

fn word(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "unknown",
    }
}

/// The human-readable table.
pub fn table(r: &Report) -> String {
    let c = &r.capabilities;
    let mut rows: Vec<(String, String, String)> = vec![
        (
            "API server".into(),
            c.server_version.clone().unwrap_or_else(|| "unknown".into()),
            r.cluster.clone(),
        ),
        (
            "restartPolicyRules kept".into(),
            word(c.restart_policy_rules.value).into(),
            c.restart_policy_rules.detail.clone(),
        ),
        (
            "RestartAllContainers accepted".into(),
            word(c.restart_all_containers.value).into(),
            c.restart_all_containers.detail.clone(),
        ),
        (
            "JobSet CRD installed".into(),
            word(c.jobset_crd_installed.value).into(),
            c.jobset_crd_installed.detail.clone(),
        ),
        (
            "JobSet CRD keeps the rules".into(),
            word(c.jobset_crd_keeps_rules.value).into(),
            c.jobset_crd_keeps_rules.detail.clone(),
        ),
        (
            "nodes declaring RestartAllContainersOnContainerExits".into(),
            match (r.nodes.declaring, r.nodes.schedulable) {
                (Some(d), Some(s)) => format!("{d} of {s}"),
                _ => "unknown".into(),
            },
            r.nodes.restart_all_containers.detail.clone(),
        ),
        (
            "webhook registered".into(),
            word(r.webhook_configuration.registered.value).into(),
            r.webhook_configuration.registered.detail.clone(),
        ),
    ];
    rows.push((
        "admission policies".into(),
        word(r.admission_policy.installed.value).into(),
        r.admission_policy.installed.detail.clone(),
    ));
    for w in &r.webhook_configuration.webhooks {
        rows.push((
            format!("caBundle of {}", w.name),
            match w.ca_bundle.value {
                Some(true) => "verified".into(),
                Some(false) => "FAILED".into(),
                None => "unknown".into(),
            },
            format!("{}: {}", w.endpoint, w.ca_bundle.detail),
        ));
    }
    rows.push((
        "targets".into(),
        r.targets.clone(),
        format!("from {}", r.targets_source),
    ));
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(5);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(6);
    let mut out = format!("{:w0$}  {:w1$}  DETAIL\n", "CHECK", "RESULT");
    for (a, b, c) in rows {
        out.push_str(&format!("{a:w0$}  {b:w1$}  {c}\n"));
    }
    out.push('\n');
    for p in &r.problems {
        out.push_str(&format!("problem: {p}\n"));
    }
    for w in &r.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    if r.ok {
        out.push_str("ok: in-place restart can work as configured\n");
    } else {
        out.push_str(&format!(
            "in-place restart cannot work as configured ({} problem{})\n",
            r.problems.len(),
            if r.problems.len() == 1 { "" } else { "s" }
        ));
    }
    out
}
