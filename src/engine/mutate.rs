//! The mutation (SPEC §4) for JobSets and Pods.
//!
//! Decisions are made on small borrowed *views* of the raw JSON: serde reads only the fields
//! named below and skips everything else without building a DOM. The output is a list of
//! RFC 6902 operations addressed into the original document, so nothing is ever re-serialized
//! from typed structs and fields the webhook does not know survive byte for byte.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use std::sync::Arc;

use json_patch::jsonptr::PointerBuf;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::annotations::{self, APPLIED, AnnotationError, Annotations, Scope, quote};
use super::config::Config;
use super::patch::Patch;
use super::policy::{self, ClusterFacts, Decision, Inputs, Resolved};

/// Labels the JobSet controller puts on every pod it creates.
pub const JOBSET_NAME_LABEL: &str = "jobset.sigs.k8s.io/jobset-name";
pub const REPLICATED_JOB_NAME_LABEL: &str = "jobset.sigs.k8s.io/replicatedjob-name";

/// Everything outside the object that a decision depends on.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub config: &'a Config,
    /// The labels of the object's namespace; `None` when unknown.
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
    pub facts: ClusterFacts,
}

/// The result of a mutation that is allowed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mutation {
    pub patch: Patch,
    pub warnings: Vec<String>,
    /// What was injected, e.g. `workers/trainer=RestartAllContainers:NotIn(0)`; `None` when
    /// in-place restart does not apply to this object.
    pub summary: Option<String>,
    /// For a pod: its parent JobSet was not known, so the pod was left as it is.
    pub parent_unknown: bool,
}

/// The object must be refused. `code` is the HTTP-style status of the denial.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denial {
    pub code: u16,
    pub message: String,
}

impl From<AnnotationError> for Denial {
    fn from(e: AnnotationError) -> Self {
        Self {
            code: 422,
            message: e.to_string(),
        }
    }
}

/// The annotations of a pod's parent JobSet, as a cache keeps them: only what resolution
/// needs, so that thousands of cached JobSets stay small.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParentJobSet {
    /// The JobSet's `restart.jobset.dev/*` annotations.
    pub annotations: BTreeMap<String, String>,
    /// Per replicated job name, its template's `restart.jobset.dev/*` annotations.
    pub replicated_jobs: BTreeMap<String, BTreeMap<String, String>>,
}

impl ParentJobSet {
    /// Extracts the parent view from a raw JobSet (used by `mutate` for pods whose JobSet is
    /// in the same input, and by the cluster cache).
    pub fn from_jobset_json(raw: &str) -> Result<Self, serde_json::Error> {
        let doc: JobSetDoc<'_> = serde_json::from_str(raw)?;
        let mut out = Self {
            annotations: ours(doc.metadata.as_ref().and_then(|m| m.annotations.as_ref())),
            replicated_jobs: BTreeMap::new(),
        };
        for rj in doc.spec.iter().flat_map(|s| &s.replicated_jobs) {
            let template_meta = rj.template.as_ref().and_then(|t| t.metadata.as_ref());
            if let Some(name) = &rj.name {
                let anns = ours(template_meta.and_then(|m| m.annotations.as_ref()));
                out.replicated_jobs.insert(name.to_string(), anns);
            }
        }
        Ok(out)
    }
}

fn ours(map: Option<&BTreeMap<Cow<'_, str>, Cow<'_, str>>>) -> BTreeMap<String, String> {
    map.into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(annotations::PREFIX) && k.as_ref() != APPLIED)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---- views -------------------------------------------------------------------------------

type StrMap<'a> = BTreeMap<Cow<'a, str>, Cow<'a, str>>;

/// The whole JobSet in one pass (the common case).
#[derive(Deserialize)]
struct JobSetDoc<'a> {
    #[serde(borrow)]
    metadata: Option<Meta<'a>>,
    #[serde(borrow)]
    spec: Option<JobSetSpec<'a>>,
}

/// Metadata only, with the spec left unread: used when the full view does not fit, to tell
/// whether the object concerns the webhook at all.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    metadata: Option<Meta<'a>>,
    #[serde(borrow)]
    spec: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow)]
    annotations: Option<StrMap<'a>>,
    #[serde(borrow)]
    labels: Option<StrMap<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobSetSpec<'a> {
    #[serde(borrow, default)]
    replicated_jobs: Vec<ReplicatedJob<'a>>,
}

#[derive(Deserialize)]
struct ReplicatedJob<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    template: Option<JobTemplate<'a>>,
}

#[derive(Deserialize)]
struct JobTemplate<'a> {
    #[serde(borrow)]
    metadata: Option<Meta<'a>>,
    #[serde(borrow)]
    spec: Option<JobSpec<'a>>,
}

#[derive(Deserialize)]
struct JobSpec<'a> {
    #[serde(borrow)]
    template: Option<PodTemplate<'a>>,
}

#[derive(Deserialize)]
struct PodTemplate<'a> {
    #[serde(borrow)]
    spec: Option<PodSpec<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec<'a> {
    #[serde(borrow)]
    restart_policy: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    containers: Option<Vec<Container<'a>>>,
    #[serde(borrow, default)]
    init_containers: Option<Vec<Container<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    restart_policy: Option<Cow<'a, str>>,
    restart_policy_rules: Option<Value>,
}

// ---- JobSets -----------------------------------------------------------------------------

/// Mutates a JobSet CREATE. `raw` is the JSON of `request.object`.
pub fn mutate_jobset(raw: &str, ctx: &Context<'_>) -> Result<Mutation, Denial> {
    let (namespace, ns_warning) = policy::namespace_default(ctx.namespace_labels);
    let doc: JobSetDoc<'_> = match serde_json::from_str(raw) {
        Ok(d) => d,
        Err(e) => return unreadable_jobset(raw, &e, namespace, ctx),
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
        if let Some(missing) = names.iter().find(|n| !existing.contains(&n.as_str())) {
            return Err(AnnotationError::new(
                &Scope::JobSet,
                annotations::REPLICATED_JOBS,
                &names.join(","),
                format!(
                    "this JobSet has no replicated job {}; it has: {}",
                    quote(missing),
                    existing.join(", ")
                ),
            )
            .into());
        }
    }

    let mut applied = Applied::default();
    let mut any_enabled = false;
    let rules_go_to_pods =
        ctx.facts.jobset_crd_keeps_rules == Some(false) && ctx.config.targets.pods;
    for (i, (rj, rj_ann)) in spec
        .replicated_jobs
        .iter()
        .zip(&rjob_annotations)
        .enumerate()
    {
        let name = rj.name.as_deref().unwrap_or_default();
        let listed = jobset
            .replicated_jobs
            .as_ref()
            .is_none_or(|l| l.iter().any(|n| n == name));
        if !listed && rj_ann.settings.in_place.is_none() {
            continue;
        }
        let inputs = Inputs {
            jobset: &jobset,
            replicated_job: Some((name, rj_ann)),
            namespace,
            config: ctx.config,
            facts: ctx.facts,
        };
        let resolved = match policy::resolve(&inputs, &mut out.warnings)? {
            Decision::Disabled => continue,
            Decision::Enabled(r) => r,
        };
        any_enabled = true;
        let Some(pod_spec) = rj
            .template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.template.as_ref())
            .and_then(|t| t.spec.as_ref())
        else {
            out.warnings.push(format!(
                "replicated job {}: no pod template (template.spec.template.spec); left unchanged",
                quote(name)
            ));
            continue;
        };
        let base = PointerBuf::from_tokens(["spec", "replicatedJobs"])
            .with_trailing_token(i)
            .concat(&PointerBuf::from_tokens([
                "template", "spec", "template", "spec",
            ]));
        // A CRD that prunes the rules would keep only the containers' `restartPolicy`, and
        // the pod target would then take those containers for user-set and skip them. So
        // with the pod target on, the containers are left to it: the JobSet gets the pod
        // template's `restartPolicy` and the summary of what the pods will carry.
        let mut template_ops = Mutation::default();
        let sink = if rules_go_to_pods {
            &mut template_ops
        } else {
            &mut out
        };
        plan_pod_spec(
            pod_spec,
            &base,
            &resolved,
            name,
            Target::Template,
            ctx,
            sink,
            &mut applied,
        )?;
        out.warnings.append(&mut template_ops.warnings);
        match pod_spec.restart_policy.as_deref() {
            None => out.patch.add_under(&base, "restartPolicy", never()),
            Some("Never") => {}
            Some("OnFailure") => out.warnings.push(format!(
                "replicated job {}: the pod template sets restartPolicy: OnFailure, so every \
                 in-place restart counts against the Job's backoffLimit; set it to Never to \
                 avoid that",
                quote(name)
            )),
            Some(other) => out.warnings.push(format!(
                "replicated job {}: the pod template sets restartPolicy: {}; Jobs accept only \
                 Never or OnFailure",
                quote(name),
                quote(other)
            )),
        }
    }
    if let Some(w) = ns_warning {
        out.warnings.push(w);
    }
    if !any_enabled {
        return Ok(out);
    }
    if applied.is_empty() {
        out.warnings.push(
            "in-place restart is enabled for this JobSet, but no container was changed".to_owned(),
        );
        return Ok(out);
    }
    if rules_go_to_pods {
        out.warnings.push(
            "the installed JobSet CRD predates restartPolicyRules (JobSet < v0.10) and would \
             prune them: the rules are injected into this JobSet's pods instead (pod target)"
                .to_owned(),
        );
    } else if ctx.facts.jobset_crd_keeps_rules == Some(false) {
        out.warnings.push(
            "the installed JobSet CRD predates restartPolicyRules (JobSet < v0.10) and prunes \
             them from JobSets: the injected rules will not be stored; upgrade JobSet or run \
             the webhook with --targets jobsets,pods so that pods get the rules"
                .to_owned(),
        );
    }
    let summary = applied.0;
    let current = meta_annotations.and_then(|m| m.get(APPLIED));
    if current.map(|c| c.as_ref()) != Some(summary.as_str()) {
        let (tokens, value): (&[&str], Value) = match (&doc.metadata, meta_annotations) {
            (_, Some(_)) => (&["metadata", "annotations", APPLIED], json!(summary)),
            (Some(_), None) => (&["metadata", "annotations"], json!({ APPLIED: summary })),
            (None, None) => (
                &["metadata"],
                json!({ "annotations": { APPLIED: summary } }),
            ),
        };
        out.patch.add(tokens.iter().copied(), Arc::new(value));
    }
    out.summary = Some(summary);
    Ok(out)
}

/// The JobSet does not fit the view (a field of the wrong type). Only a JobSet that opts in
/// needs its spec read; the API server's schema validation answers for the rest.
fn unreadable_jobset(
    raw: &str,
    err: &serde_json::Error,
    namespace: Option<annotations::InPlace>,
    ctx: &Context<'_>,
) -> Result<Mutation, Denial> {
    let head: Head<'_> = serde_json::from_str(raw).map_err(|e| Denial {
        code: 400,
        message: format!("the object is not a JobSet the webhook can read: {e}"),
    })?;
    let annotations = head.metadata.as_ref().and_then(|m| m.annotations.as_ref());
    let jobset = parse_map(annotations, &Scope::JobSet)?;
    let inputs = Inputs {
        jobset: &jobset,
        replicated_job: None,
        namespace,
        config: ctx.config,
        facts: ctx.facts,
    };
    match policy::resolve(&inputs, &mut Vec::new())? {
        Decision::Disabled => Ok(Mutation::default()),
        Decision::Enabled(_) => Err(Denial {
            code: 400,
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

// ---- Pods --------------------------------------------------------------------------------

/// Mutates a Pod CREATE (the fallback target). Never denies: problems become warnings.
/// `parent` looks up the pod's JobSet by name in the pod's namespace.
pub fn mutate_pod(
    raw: &str,
    ctx: &Context<'_>,
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
    match plan_pod(&head, rjob_name, &parent, ctx, &mut out) {
        Ok(()) => {}
        Err(e) => {
            out.patch.clear();
            out.summary = None;
            out.warnings.push(format!("pod left unchanged: {e}"));
        }
    }
    out
}

fn plan_pod(
    head: &Head<'_>,
    rjob_name: &str,
    parent: &ParentJobSet,
    ctx: &Context<'_>,
    out: &mut Mutation,
) -> Result<(), String> {
    let to_pairs = |m: &BTreeMap<String, String>| -> Vec<(String, String)> {
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let js_pairs = to_pairs(&parent.annotations);
    let jobset = annotations::parse(
        js_pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &Scope::JobSet,
    )
    .map_err(|e| format!("its JobSet's annotations are invalid: {e}"))?;
    let rj_pairs = parent
        .replicated_jobs
        .get(rjob_name)
        .map(to_pairs)
        .unwrap_or_default();
    let rj = annotations::parse(
        rj_pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
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
    let (namespace, _) = policy::namespace_default(ctx.namespace_labels);
    let inputs = Inputs {
        jobset: &jobset,
        replicated_job: Some((rjob_name, &rj)),
        namespace,
        config: ctx.config,
        facts: ctx.facts,
    };
    let resolved = match policy::resolve(&inputs, &mut out.warnings).map_err(|e| e.to_string())? {
        Decision::Disabled => return Ok(()),
        Decision::Enabled(r) => r,
    };
    let spec: PodSpec<'_> = match head.spec {
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|e| format!("spec: not a pod spec the webhook can read: {e}"))?,
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
        ctx,
        out,
        &mut applied,
    )
    .map_err(|d| d.message)?;
    if !applied.is_empty() {
        out.summary = Some(applied.0);
    }
    Ok(())
}

// ---- the shared rule --------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Template,
    Pod,
}

/// The `applied` summary, written into one buffer: `rjob/container=Action:Op(codes), ...`.
#[derive(Default)]
struct Applied(String);

impl Applied {
    fn add(&mut self, rjob: Option<&str>, container: &str, rule: &str) {
        if !self.0.is_empty() {
            self.0.push_str(", ");
        }
        if let Some(r) = rjob {
            self.0.push_str(r);
            self.0.push('/');
        }
        self.0.push_str(container);
        self.0.push('=');
        self.0.push_str(rule);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `"Never"`, shared by every container the engine touches.
fn never() -> Arc<Value> {
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

/// Applies SPEC §4 rule 1 to the containers of one pod spec.
#[allow(clippy::too_many_arguments)]
fn plan_pod_spec(
    spec: &PodSpec<'_>,
    base: &PointerBuf,
    resolved: &Resolved,
    rjob: &str,
    target: Target,
    ctx: &Context<'_>,
    out: &mut Mutation,
    applied: &mut Applied,
) -> Result<(), Denial> {
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
        .as_ref()
        .map(|v| v.iter().map(String::as_str).collect());
    let mut found: BTreeSet<&str> = BTreeSet::new();

    for (j, c) in spec.containers.iter().flatten().enumerate() {
        let name = c.name.as_deref().unwrap_or_default();
        if let Some(named) = &named {
            if !named.contains(name) {
                continue;
            }
            found.insert(name);
        }
        let path = base
            .with_trailing_token("containers")
            .with_trailing_token(j);
        match (&c.restart_policy, &c.restart_policy_rules) {
            (None, None) => {
                out.patch.add_under(&path, "restartPolicy", never());
                out.patch
                    .add_under(&path, "restartPolicyRules", rules.clone());
                applied.add(prefix, name, &rule_text);
            }
            (Some(p), Some(r)) if p == "Never" && *r == *rules => {
                applied.add(prefix, name, &rule_text);
            }
            _ if target == Target::Pod => {}
            _ => out.warnings.push(format!(
                "{} already sets restartPolicy or restartPolicyRules; left unchanged",
                where_(name, "container")
            )),
        }
    }

    if let Some(named) = &named {
        for (j, c) in spec.init_containers.iter().flatten().enumerate() {
            let name = c.name.as_deref().unwrap_or_default();
            if !named.contains(name) {
                continue;
            }
            found.insert(name);
            if c.restart_policy.as_deref() != Some("Always") {
                out.warnings.push(format!(
                    "{} is not a sidecar (restartPolicy: Always); only regular containers and \
                     sidecars get restart rules; left unchanged",
                    where_(name, "init container")
                ));
                continue;
            }
            if ctx.facts.restart_all_containers == Some(false) {
                return Err(Denial {
                    code: 422,
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
                    out.patch
                        .add_under(&path, "restartPolicyRules", rules.clone());
                    applied.add(prefix, name, &rule_text);
                }
                Some(r) if *r == *rules => applied.add(prefix, name, &rule_text),
                Some(_) if target == Target::Pod => {}
                Some(_) => out.warnings.push(format!(
                    "{} already sets restartPolicyRules; left unchanged",
                    where_(name, "sidecar")
                )),
            }
        }
        for missing in named.difference(&found) {
            out.warnings.push(match target {
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
    Ok(())
}
