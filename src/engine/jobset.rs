//! JobSet CREATE: validate the annotations, resolve each replicated job and plan its pod
//! template (README: Opting in).

use super::annotations::{self, APPLIED, AnnotationError, Annotations, Scope, quote};
use super::applied::{
    Applied, MAX_CHANGED_CONTAINERS, MAX_CONTAINERS, MAX_REPLICATED_JOBS, add_applied,
};
use std::collections::{HashMap, HashSet};

use super::containers::{Target, never, plan_pod_spec};
use super::nodes::Memo;
use super::patch::Patch;
use super::resolve::{self, ContainersFrom, Decision, Inputs};
use super::view::{Head, JobSetDoc, JobSetSpec, PodSpec, StrMap, pod_spec_pointer};
use super::warnings::Warnings;
use super::{Denial, DenialReason, Environment, Mutation};

/// Mutates a JobSet CREATE. `raw` is the JSON of `request.object`.
pub fn mutate_jobset(raw: &str, env: &Environment<'_>) -> Result<Mutation, Denial> {
    let (namespace, ns_warning) =
        resolve::namespace_default(env.namespace_labels, env.namespace_opted_in);
    let doc: JobSetDoc<'_> = match serde_json::from_str(raw) {
        Ok(d) => d,
        Err(e) => return unreadable_jobset(raw, &e, namespace, env),
    };
    let meta_annotations = doc.metadata.as_ref().and_then(|m| m.annotations.as_ref());
    let jobset = parse_map(meta_annotations, &Scope::JobSet)?;
    let mut out = Mutation::default();
    let spec = doc.spec.unwrap_or(JobSetSpec {
        replicated_jobs: Vec::new(),
    });

    // Validate every annotation of every replicated job before deciding anything, so that an
    // invalid value is reported even where it would not be used.
    let mut rjob_annotations = Vec::with_capacity(spec.replicated_jobs.len());
    for rj in &spec.replicated_jobs {
        let name = rj.name.as_deref().unwrap_or_default();
        let map = rj
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref());
        rjob_annotations.push(parse_map(map, &Scope::ReplicatedJob(name.to_owned()))?);
    }
    if let Some(names) = &jobset.replicated_jobs {
        let existing: Vec<&str> = spec
            .replicated_jobs
            .iter()
            .filter_map(|r| r.name.as_deref())
            .collect();
        let known: HashSet<&str> = existing.iter().copied().collect();
        if let Some(missing) = names.iter().find(|n| !known.contains(n.as_str())) {
            return Err(AnnotationError::new(
                &Scope::JobSet,
                annotations::REPLICATED_JOBS,
                &names.join(","),
                if existing.is_empty() {
                    format!(
                        "this JobSet has no replicated job {}; it has none",
                        quote(missing)
                    )
                } else {
                    format!(
                        "this JobSet has no replicated job {}; it has: {}",
                        quote(missing),
                        existing.join(", ")
                    )
                },
            )
            .into());
        }
    }

    check_bounds(&spec, &jobset, &rjob_annotations, namespace, env)?;

    let mut applied = Applied::default();
    let mut any_enabled = false;
    let mut warnings = Warnings::default();
    let memo = Memo::default();
    let mut lists: Vec<NamedList<'_>> = Vec::new();
    let rules_go_to_pods =
        env.facts.jobset_crd_keeps_rules == Some(false) && env.config.targets.pods;
    for (i, (rj, rj_ann)) in spec
        .replicated_jobs
        .iter()
        .zip(&rjob_annotations)
        .enumerate()
    {
        let name = rj.name.as_deref().unwrap_or_default();
        if !listed(&jobset, name) && rj_ann.settings.in_place.is_none() {
            continue;
        }
        let pod_spec = rj.pod_spec();
        let selector = pod_spec.map(PodSpec::selector).unwrap_or_default();
        let inputs = Inputs {
            jobset: &jobset,
            replicated_job: Some((name, rj_ann)),
            namespace,
            config: env.config,
            facts: &env.facts,
            node_selector: &selector,
            memo: &memo,
        };
        let resolved = match resolve::resolve(&inputs, &mut warnings)? {
            Decision::Disabled => continue,
            Decision::Enabled(r) => r,
        };
        any_enabled = true;
        let Some(pod_spec) = pod_spec else {
            warnings.push(format!(
                "replicated job {}: no pod template (template.spec.template.spec); left unchanged",
                quote(name)
            ));
            continue;
        };
        let base = pod_spec_pointer(i);
        // A CRD that prunes the rules would keep only the containers' `restartPolicy`, and
        // the pod target would then take those containers for user-set and skip them. So
        // with the pod target on, the containers are left to it: the JobSet gets the pod
        // template's `restartPolicy` and the summary of what the pods will carry.
        let mut template_ops = Patch::default();
        let sink = if rules_go_to_pods {
            &mut template_ops
        } else {
            &mut out.patch
        };
        let entries_before = applied.entries;
        let present = plan_pod_spec(
            pod_spec,
            &base,
            &resolved,
            name,
            Target::Template,
            env,
            sink,
            &mut warnings,
            &mut applied,
        )?;
        let gets_rules = applied.entries > entries_before;
        if let Some(names) = resolved.containers {
            lists.push(NamedList {
                rjob: name,
                names,
                from: resolved.containers_from,
                present,
            });
        }
        // A pod template whose containers get no rule keeps its failure behaviour: switching
        // it to `Never` would change what the user asked for without giving in-place restarts.
        if !gets_rules {
            warnings.push(format!(
                "replicated job {}: no container gets the restart rule, so its pod template is \
                 left as it is",
                quote(name)
            ));
            continue;
        }
        match pod_spec.restart_policy.as_deref() {
            None => out.patch.add_under(&base, "restartPolicy", never()),
            Some("Never") => {}
            Some("OnFailure") => warnings.push(format!(
                "replicated job {}: the pod template sets restartPolicy: OnFailure, so every \
                 in-place restart counts against the Job's backoffLimit; set it to Never to \
                 avoid that",
                quote(name)
            )),
            Some(other) => warnings.push(format!(
                "replicated job {}: the pod template sets restartPolicy: {}; Jobs accept only \
                 Never or OnFailure",
                quote(name),
                quote(other)
            )),
        }
    }
    check_container_names(&lists)?;
    if applied.changed > MAX_CHANGED_CONTAINERS {
        return Err(Denial {
            reason: DenialReason::Invalid,
            message: format!(
                "in-place restart would change {} containers of this JobSet, more than the {} \
                 the webhook changes in one JobSet; select the containers that need it with {} \
                 (container names) or the replicated jobs with {} (replicated job names)",
                applied.changed,
                MAX_CHANGED_CONTAINERS,
                annotations::CONTAINERS,
                annotations::REPLICATED_JOBS
            ),
        });
    }
    if let Some(w) = ns_warning {
        warnings.push(w);
    }
    if !any_enabled {
        out.warnings = warnings.finish();
        return Ok(out);
    }
    if applied.is_empty() {
        warnings.push(
            "in-place restart is enabled for this JobSet, but no container gets the restart \
             rule, so the JobSet is left as it is"
                .to_owned(),
        );
        out.warnings = warnings.finish();
        return Ok(out);
    }
    if rules_go_to_pods {
        warnings.push(
            "the installed JobSet CRD predates restartPolicyRules (JobSet < v0.10) and would \
             prune them: the rules are injected into this JobSet's pods instead (pod target)"
                .to_owned(),
        );
    } else if env.facts.jobset_crd_keeps_rules == Some(false) {
        warnings.push(
            "the installed JobSet CRD predates restartPolicyRules (JobSet < v0.10) and prunes \
             them from JobSets: the injected rules will not be stored; upgrade JobSet or run \
             the webhook with --targets jobsets,pods so that pods get the rules"
                .to_owned(),
        );
    }
    let summary = applied.finish();
    let current = meta_annotations.and_then(|m| m.get(APPLIED));
    if current.map(|c| c.as_ref()) != Some(summary.as_str()) {
        add_applied(&mut out.patch, doc.metadata.as_ref(), &summary);
    }
    out.summary = Some(summary);
    out.warnings = warnings.finish();
    Ok(out)
}

/// Bounds before work (README: Opting in, "Bounds"): the replicated jobs that get in-place
/// restart, and the containers and init containers of their pod templates, are counted
/// before any replicated job is planned, from the list lengths alone. A replicated job whose
/// preset the config lacks ends the count: the planning loop refuses it (or one before it)
/// with that error, as the validating policy does (`admission_policy::cel`, `bounds`).
fn check_bounds(
    spec: &JobSetSpec<'_>,
    jobset: &Annotations,
    rjob_annotations: &[Annotations],
    namespace: Option<annotations::InPlace>,
    env: &Environment<'_>,
) -> Result<(), Denial> {
    let (mut rjobs, mut containers) = (0usize, 0usize);
    for (rj, rj_ann) in spec.replicated_jobs.iter().zip(rjob_annotations) {
        let name = rj.name.as_deref().unwrap_or_default();
        if !listed(jobset, name) && rj_ann.settings.in_place.is_none() {
            continue;
        }
        let inputs = Inputs {
            jobset,
            replicated_job: Some((name, rj_ann)),
            namespace,
            config: env.config,
            facts: &env.facts,
            node_selector: &[],
            memo: &Memo::default(),
        };
        match resolve::enabled(&inputs) {
            Err(_) => return Ok(()),
            Ok(false) => continue,
            Ok(true) => {}
        }
        rjobs += 1;
        if rjobs > MAX_REPLICATED_JOBS {
            return Err(Denial {
                reason: DenialReason::Invalid,
                message: too_many_replicated_jobs(spec.replicated_jobs.len()),
            });
        }
        if let Some(ps) = rj.pod_spec() {
            containers += ps.containers.as_ref().map_or(0, Vec::len)
                + ps.init_containers.as_ref().map_or(0, Vec::len);
        }
    }
    if containers > MAX_CONTAINERS {
        return Err(Denial {
            reason: DenialReason::Invalid,
            message: too_many_containers(containers),
        });
    }
    Ok(())
}

/// The denial of a JobSet of `total` replicated jobs, more than [`MAX_REPLICATED_JOBS`] of
/// which get in-place restart.
pub fn too_many_replicated_jobs(total: usize) -> String {
    format!(
        "in-place restart would apply to more than {MAX_REPLICATED_JOBS} of this JobSet's \
         {total} replicated jobs, more than the webhook reviews in one JobSet; select the \
         replicated jobs that need it with {} (replicated job names) or their own {}",
        annotations::REPLICATED_JOBS,
        annotations::IN_PLACE
    )
}

/// The denial of a JobSet whose replicated jobs that get in-place restart have `containers`
/// containers and init containers in all, more than [`MAX_CONTAINERS`].
pub fn too_many_containers(containers: usize) -> String {
    format!(
        "in-place restart would apply to replicated jobs with {containers} containers and \
         init containers in all, more than the {MAX_CONTAINERS} the webhook reads in one \
         JobSet; select the replicated jobs that need it with {} (replicated job names)",
        annotations::REPLICATED_JOBS
    )
}

/// Whether the JobSet's `replicated-jobs` list (absent: all) names `rjob`.
fn listed(jobset: &Annotations, rjob: &str) -> bool {
    jobset
        .replicated_jobs
        .as_ref()
        .is_none_or(|l| l.iter().any(|n| n == rjob))
}

/// A replicated job that names its containers, and the containers and init containers its
/// pod template has. The names are borrowed from the list that applies to it.
struct NamedList<'a> {
    rjob: &'a str,
    names: &'a [String],
    from: ContainersFrom,
    present: Vec<String>,
}

/// A container name that exists in none of the replicated jobs its list applies to is a typo
/// (`trainr`): refused, as an unknown replicated job is, instead of admitting a JobSet that
/// asked for in-place restarts and gets none. A name missing from only some of them is a
/// warning (`plan_pod_spec`). Lists written by the admin (a preset, the cluster config) serve
/// many workloads and often name a superset (`trainer,main,worker`): they are refused only
/// when none of their names is there. The first problem, in replicated-job and list order.
/// Linear in the names and containers: each is put in a set once.
fn check_container_names(lists: &[NamedList<'_>]) -> Result<(), Denial> {
    let present: Vec<HashSet<&str>> = lists
        .iter()
        .map(|l| l.present.iter().map(String::as_str).collect())
        .collect();
    // Names that some list which names them finds.
    let mut found: HashSet<&str> = HashSet::new();
    // Per list content (one preset serves many replicated jobs): whether any of its users
    // finds any of its names.
    let mut any_found: HashMap<&[String], bool> = HashMap::new();
    for (l, p) in lists.iter().zip(&present) {
        let mut here = false;
        for n in l.names {
            if p.contains(n.as_str()) {
                found.insert(n.as_str());
                here = true;
            }
        }
        *any_found.entry(l.names).or_insert(false) |= here;
    }
    // The containers of the lists `users` picks, each once, in order (the error path only).
    let existing_in = |users: &dyn Fn(&NamedList<'_>) -> bool| -> String {
        let mut seen: HashSet<&str> = HashSet::new();
        let existing: Vec<&str> = lists
            .iter()
            .filter(|l| users(l))
            .flat_map(|l| &l.present)
            .map(String::as_str)
            .filter(|p| seen.insert(p))
            .collect();
        if existing.is_empty() {
            "they have none".to_owned()
        } else {
            format!("they have: {}", existing.join(", "))
        }
    };
    for list in lists {
        let problem = match &list.from {
            ContainersFrom::Preset { .. } | ContainersFrom::Config => {
                if any_found.get(list.names).copied().unwrap_or(false) {
                    continue;
                }
                format!(
                    "none of these containers or sidecars is in the replicated jobs it applies \
                     to; {}",
                    existing_in(&|l| l.names == list.names)
                )
            }
            _ => {
                let Some(name) = list.names.iter().find(|n| !found.contains(n.as_str())) else {
                    continue;
                };
                format!(
                    "no container or sidecar {} in the replicated jobs it applies to; {}",
                    quote(name),
                    existing_in(&|l| l.names.contains(name))
                )
            }
        };
        let value = list.names.join(",");
        return Err(match &list.from {
            ContainersFrom::ReplicatedJob => AnnotationError::new(
                &Scope::ReplicatedJob(list.rjob.to_owned()),
                annotations::CONTAINERS,
                &value,
                problem,
            )
            .into(),
            ContainersFrom::Preset { name, scope } => AnnotationError::new(
                scope,
                annotations::PRESET,
                name,
                format!("its containers {}: {problem}", quote(&value)),
            )
            .into(),
            ContainersFrom::Config => Denial {
                reason: DenialReason::Invalid,
                message: format!(
                    "the cluster config's defaults.containers {}: {problem}",
                    quote(&value)
                ),
            },
            ContainersFrom::JobSet | ContainersFrom::Nowhere => {
                AnnotationError::new(&Scope::JobSet, annotations::CONTAINERS, &value, problem)
                    .into()
            }
        });
    }
    Ok(())
}

/// The JobSet does not fit the view (a field of the wrong type). Only a JobSet that opts in
/// needs its spec read; the API server's schema validation answers for the rest.
fn unreadable_jobset(
    raw: &str,
    err: &serde_json::Error,
    namespace: Option<annotations::InPlace>,
    env: &Environment<'_>,
) -> Result<Mutation, Denial> {
    let head: Head<'_> = serde_json::from_str(raw).map_err(|e| Denial {
        reason: DenialReason::BadRequest,
        message: format!("the object is not a JobSet the webhook can read: {e}"),
    })?;
    let annotations = head.metadata.as_ref().and_then(|m| m.annotations.as_ref());
    let jobset = parse_map(annotations, &Scope::JobSet)?;
    let inputs = Inputs {
        jobset: &jobset,
        replicated_job: None,
        namespace,
        config: env.config,
        facts: &env.facts,
        node_selector: &[],
        memo: &Memo::default(),
    };
    match resolve::resolve(&inputs, &mut Warnings::default())? {
        Decision::Disabled => Ok(Mutation::default()),
        Decision::Enabled(_) => Err(Denial {
            reason: DenialReason::BadRequest,
            message: format!("spec: not a JobSet spec the webhook can read: {err}"),
        }),
    }
}

fn parse_map(map: Option<&StrMap<'_>>, scope: &Scope) -> Result<Annotations, AnnotationError> {
    annotations::parse(
        map.into_iter()
            .flatten()
            .map(|(k, v)| (k.as_ref(), v.as_ref())),
        scope,
    )
}

#[cfg(test)]
mod tests;
