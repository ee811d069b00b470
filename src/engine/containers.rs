//! The rule every target shares: which containers of one pod spec get restart rules, and the
//! patch operations that add them.

use std::collections::BTreeSet;
use std::sync::Arc;

use json_patch::jsonptr::PointerBuf;
use serde_json::{Value, json};

use super::annotations::{self, quote};
use super::applied::Applied;
use super::patch::Patch;
use super::resolve::Resolved;
use super::view::{Container, PodSpec};
use super::warnings::Warnings;
use super::{Denial, DenialReason, Environment};

/// Where the containers live: a JobSet's pod template or a pod.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Template,
    Pod,
}

/// `"Never"`, shared by every container the engine touches.
pub(super) fn never() -> Arc<Value> {
    static NEVER: std::sync::LazyLock<Arc<Value>> =
        std::sync::LazyLock::new(|| Arc::new(json!("Never")));
    Arc::clone(&NEVER)
}

/// The rule as it is written into a container.
fn rules_value(r: &Resolved) -> Value {
    json!([{
        "action": r.action.as_str(),
        "exitCodes": { "operator": r.exit_codes.operator.as_str(), "values": r.exit_codes.values() },
    }])
}

/// Plans the rule for the containers of one pod spec: each selected container that sets
/// neither `restartPolicy` nor `restartPolicyRules` gets both (README: Opting in). Returns the
/// names of its containers and init containers when the rule names containers.
#[allow(clippy::too_many_arguments)]
pub(super) fn plan_pod_spec(
    spec: &PodSpec<'_>,
    base: &PointerBuf,
    resolved: &Resolved,
    rjob: &str,
    target: Target,
    env: &Environment<'_>,
    patch: &mut Patch,
    warnings: &mut Warnings,
    applied: &mut Applied,
) -> Result<Vec<String>, Denial> {
    let rules = Arc::new(rules_value(resolved));
    let rule_text = format!(
        "{}:{}({})",
        resolved.action,
        resolved.exit_codes.operator.as_str(),
        resolved.exit_codes.compact_values()
    );
    let prefix = (target == Target::Template).then_some(rjob);
    let where_ = |c: &str, kind: &str| match target {
        Target::Template => format!("replicated job {}: {kind} {}", quote(rjob), quote(c)),
        Target::Pod => format!("{kind} {}", quote(c)),
    };
    let named: Option<BTreeSet<&str>> = resolved
        .containers
        .map(|v| v.iter().map(String::as_str).collect());
    let mut found: BTreeSet<&str> = BTreeSet::new();
    // Container and init container names, kept only when the rule names containers.
    let mut present: Vec<String> = Vec::new();

    for (j, raw) in spec.containers.iter().flatten().enumerate() {
        let c = Container::read(raw, base, "containers", j)?;
        let name = c.name.as_deref().unwrap_or_default();
        if named.is_some() {
            present.push(name.to_owned());
        }
        if let Some(named) = &named {
            let Some(n) = named.get(name) else {
                continue;
            };
            found.insert(n);
        }
        let path = base
            .with_trailing_token("containers")
            .with_trailing_token(j);
        match (&c.restart_policy, &c.restart_policy_rules) {
            (None, None) => {
                if applied.change() {
                    patch.add_under(&path, "restartPolicy", never());
                    patch.add_under(&path, "restartPolicyRules", rules.clone());
                    applied.add(prefix, name, &rule_text);
                }
            }
            (Some(p), Some(r)) if p == "Never" && *r == *rules => {
                applied.add(prefix, name, &rule_text);
            }
            _ if target == Target::Pod => {}
            _ => warnings.push(format!(
                "{} already sets restartPolicy or restartPolicyRules; left unchanged",
                where_(name, "container")
            )),
        }
    }

    if let Some(named) = &named {
        for (j, raw) in spec.init_containers.iter().flatten().enumerate() {
            let c = Container::read(raw, base, "initContainers", j)?;
            let name = c.name.as_deref().unwrap_or_default();
            present.push(name.to_owned());
            let Some(n) = named.get(name) else {
                continue;
            };
            found.insert(n);
            if c.restart_policy.as_deref() != Some("Always") {
                warnings.push(format!(
                    "{} is not a sidecar (restartPolicy: Always); only regular containers and \
                     sidecars get restart rules; left unchanged",
                    where_(name, "init container")
                ));
                continue;
            }
            if env.facts.restart_all_containers == Some(false) {
                return Err(Denial {
                    reason: DenialReason::Invalid,
                    message: format!(
                        "{}: {}: sidecar restart rules need the \
                         RestartAllContainersOnContainerExits feature gate (Kubernetes 1.35+), \
                         which this cluster's API server does not have; remove the sidecar from \
                         the list",
                        annotations::CONTAINERS,
                        where_(name, "sidecar")
                    ),
                });
            }
            let path = base
                .with_trailing_token("initContainers")
                .with_trailing_token(j);
            match &c.restart_policy_rules {
                None => {
                    if applied.change() {
                        patch.add_under(&path, "restartPolicyRules", rules.clone());
                        applied.add(prefix, name, &rule_text);
                    }
                }
                Some(r) if *r == *rules => applied.add(prefix, name, &rule_text),
                Some(_) if target == Target::Pod => {}
                Some(_) => warnings.push(format!(
                    "{} already sets restartPolicyRules; left unchanged",
                    where_(name, "sidecar")
                )),
            }
        }
        for missing in named.difference(&found) {
            warnings.push(match target {
                Target::Template => format!(
                    "replicated job {}: {} names {}, which is not a container or sidecar of its \
                     pod template",
                    quote(rjob),
                    annotations::CONTAINERS,
                    quote(missing)
                ),
                Target::Pod => format!(
                    "{} names {}, which is not a container or sidecar of this pod",
                    annotations::CONTAINERS,
                    quote(missing)
                ),
            });
        }
    }
    Ok(present)
}
