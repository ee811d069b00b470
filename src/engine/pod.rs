//! Pod CREATE, the fallback target: the pod is resolved from its parent JobSet's
//! annotations and never denied.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;

use super::annotations::{self, Scope, quote};
use super::applied::{Applied, MAX_CHANGED_CONTAINERS};
use super::containers::{Target, plan_pod_spec};
use super::nodes::Memo;
use super::resolve::{self, Decision, Inputs};
use super::view::{Head, PodSpec};
use super::warnings::Warnings;
use super::{Environment, Mutation, ParentJobSet};

/// Labels the JobSet controller puts on every pod it creates.
pub const JOBSET_NAME_LABEL: &str = "jobset.sigs.k8s.io/jobset-name";
pub const REPLICATED_JOB_NAME_LABEL: &str = "jobset.sigs.k8s.io/replicatedjob-name";

/// Mutates a Pod CREATE (the fallback target). Never denies: problems become warnings.
/// `parent` looks up the pod's JobSet by name in the pod's namespace.
pub fn mutate_pod(
    raw: &str,
    env: &Environment<'_>,
    parent: &dyn Fn(&str) -> Option<ParentJobSet>,
) -> Mutation {
    let mut out = Mutation::default();
    let head: Head<'_> = match serde_json::from_str(raw) {
        Ok(h) => h,
        Err(e) => {
            out.warnings.push(format!(
                "pod left unchanged: the object is not a pod the webhook can read: {e}"
            ));
            return out;
        }
    };
    let labels = head.metadata.as_ref().and_then(|m| m.labels.as_ref());
    let Some(jobset_name) = labels.and_then(|l| l.get(JOBSET_NAME_LABEL)) else {
        return out;
    };
    let rjob_name = labels
        .and_then(|l| l.get(REPLICATED_JOB_NAME_LABEL))
        .map(|s| s.as_ref())
        .unwrap_or_default();
    let Some(parent) = parent(jobset_name) else {
        out.parent_unknown = true;
        out.warnings.push(format!(
            "pod left unchanged: its JobSet {} is not known to the webhook yet",
            quote(jobset_name)
        ));
        return out;
    };
    let mut warnings = Warnings::default();
    match plan_pod(&head, rjob_name, &parent, env, &mut out, &mut warnings) {
        Ok(()) => {}
        Err(e) => {
            out.patch.clear();
            out.summary = None;
            warnings.push(format!("pod left unchanged: {e}"));
        }
    }
    out.warnings = warnings.finish();
    out
}

fn plan_pod(
    head: &Head<'_>,
    rjob_name: &str,
    parent: &ParentJobSet,
    env: &Environment<'_>,
    out: &mut Mutation,
    warnings: &mut Warnings,
) -> Result<(), String> {
    let jobset = annotations::parse(pairs(&parent.annotations), &Scope::JobSet)
        .map_err(|e| format!("its JobSet's annotations are invalid: {e}"))?;
    let rj = annotations::parse(
        parent
            .replicated_jobs
            .get(rjob_name)
            .into_iter()
            .flat_map(pairs),
        &Scope::ReplicatedJob(rjob_name.to_owned()),
    )
    .map_err(|e| format!("its JobSet's annotations are invalid: {e}"))?;
    let listed = jobset
        .replicated_jobs
        .as_ref()
        .is_none_or(|l| l.iter().any(|n| n == rjob_name));
    if !listed && rj.settings.in_place.is_none() {
        return Ok(());
    }
    let (namespace, _) = resolve::namespace_default(env.namespace_labels, env.namespace_opted_in);
    // Read before the decision (its nodeSelector picks the nodes that count); an unreadable
    // spec matters only when in-place restart applies.
    let spec: Option<Result<PodSpec<'_>, String>> = head.spec.map(|raw| {
        serde_json::from_str(raw.get())
            .map_err(|e| format!("spec: not a pod spec the webhook can read: {e}"))
    });
    let selector = match &spec {
        Some(Ok(s)) => s.selector(),
        _ => Vec::new(),
    };
    let inputs = Inputs {
        jobset: &jobset,
        replicated_job: Some((rjob_name, &rj)),
        namespace,
        config: env.config,
        facts: &env.facts,
        node_selector: &selector,
        memo: &Memo::default(),
    };
    let resolved = match resolve::resolve(&inputs, warnings).map_err(|e| e.to_string())? {
        Decision::Disabled => return Ok(()),
        Decision::Enabled(r) => r,
    };
    let spec = match spec {
        Some(s) => s?,
        None => return Ok(()),
    };
    let mut applied = Applied::default();
    let base = PointerBuf::from_tokens(["spec"]);
    plan_pod_spec(
        &spec,
        &base,
        &resolved,
        rjob_name,
        Target::Pod,
        env,
        &mut out.patch,
        warnings,
        &mut applied,
    )
    .map_err(|d| d.message)?;
    if applied.changed > MAX_CHANGED_CONTAINERS {
        return Err(format!(
            "in-place restart would change {} containers of this pod, more than the {} the \
             webhook changes in one pod",
            applied.changed, MAX_CHANGED_CONTAINERS
        ));
    }
    if !applied.is_empty() {
        out.summary = Some(applied.finish());
    }
    Ok(())
}

/// A parent's annotations as the borrowed pairs [`annotations::parse`] reads.
fn pairs(map: &BTreeMap<String, String>) -> impl Iterator<Item = (&str, &str)> {
    map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

#[cfg(test)]
mod tests;
