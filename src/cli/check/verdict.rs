//! The verdict: which findings mean in-place restart cannot work (problems), which are
//! only worth knowing (warnings).

use super::report::{PolicyReport, WebhookReport};
use crate::cluster::probe::Capabilities;
use crate::engine::Targets;

/// (problems, warnings): problems mean in-place restart cannot work as configured.
pub fn assess(
    caps: &Capabilities,
    webhook: &WebhookReport,
    admission_policy: &PolicyReport,
    targets: Targets,
) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    match caps.restart_policy_rules.value {
        Some(false) => problems.push(format!(
            "the API server drops or rejects restartPolicyRules, so no in-place restart can \
             work on this cluster: {}",
            caps.restart_policy_rules.detail
        )),
        None => warnings.push(format!(
            "could not tell whether the API server keeps restartPolicyRules: {}",
            caps.restart_policy_rules.detail
        )),
        Some(true) => {}
    }
    if caps.restart_policy_rules.value != Some(false) {
        match caps.restart_all_containers.value {
            Some(false) => warnings.push(
                "the API server does not accept RestartAllContainers: the webhook defaults to \
                 Restart and denies JobSets that ask for RestartAllContainers"
                    .to_owned(),
            ),
            None => warnings.push(format!(
                "could not tell whether the API server accepts RestartAllContainers: {}",
                caps.restart_all_containers.detail
            )),
            Some(true) => {}
        }
    }
    match (
        caps.jobset_crd_installed.value,
        caps.jobset_crd_keeps_rules.value,
    ) {
        (Some(false), _) => problems.push(format!(
            "the JobSet CRD is not installed: {}",
            caps.jobset_crd_installed.detail
        )),
        (Some(true), Some(false)) if targets.jobsets && !targets.pods => problems.push(
            "the installed JobSet CRD prunes restartPolicyRules (JobSet < v0.10) and only the \
             JobSet target is on: the rules injected into JobSets are dropped when they are \
             stored; turn on the pod target (serve --targets jobsets,pods and the pods webhook)"
                .to_owned(),
        ),
        (Some(true), Some(false)) => warnings.push(
            "the installed JobSet CRD prunes restartPolicyRules (JobSet < v0.10): JobSets lose \
             the rules, the pod target puts them on the pods"
                .to_owned(),
        ),
        (None, _) | (Some(true), None) => warnings.push(format!(
            "could not read the JobSet CRD's schema: {}",
            caps.jobset_crd_keeps_rules.detail
        )),
        (Some(true), Some(true)) => {}
    }
    let policy_installed = admission_policy.installed.value == Some(true);
    if admission_policy.partial {
        problems.push(format!(
            "the admission policies of `policy` are {}: apply all four objects or none",
            admission_policy.installed.detail
        ));
    } else if admission_policy.installed.value.is_none() {
        warnings.push(admission_policy.installed.detail.clone());
    }
    if policy_installed && webhook.registered.value == Some(true) {
        warnings.push(format!(
            "both the webhook ({}) and the admission policies of `policy` are installed: they \
             do the same for JobSets, so keep one",
            webhook.name
        ));
    }
    if policy_installed && caps.restart_all_containers.value == Some(false) {
        warnings.push(
            "the admission policies do not probe the cluster: their config must set \
             defaults.action: Restart here, or JobSets that resolve to RestartAllContainers \
             make child Jobs the API server rejects"
                .to_owned(),
        );
    }
    match webhook.registered.value {
        // The admission policies do the webhook's JobSet target.
        Some(false) if policy_installed && !targets.pods => {}
        Some(false) if policy_installed => problems.push(
            "the pod target is asked for, and only the admission policies are installed: they \
             have no pod target; register the webhook for pods"
                .to_owned(),
        ),
        Some(false) => problems.push(format!(
            "{}: nothing sends JobSets or Pods to the webhook",
            webhook.registered.detail
        )),
        None => warnings.push(webhook.registered.detail.clone()),
        Some(true) => {
            if webhook.webhooks.is_empty() {
                problems.push(format!(
                    "MutatingWebhookConfiguration {} has no webhooks",
                    webhook.name
                ));
            }
            for w in &webhook.webhooks {
                match w.ca_bundle.value {
                    Some(false) => problems.push(format!(
                        "webhook {} ({}): {}",
                        w.name, w.endpoint, w.ca_bundle.detail
                    )),
                    None => warnings.push(format!("webhook {}: {}", w.name, w.ca_bundle.detail)),
                    Some(true) => {}
                }
            }
        }
    }
    dedup(&mut warnings);
    (problems, warnings)
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|s| seen.insert(s.clone()));
}
