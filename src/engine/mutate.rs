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
use super::policy::{self, ClusterFacts, ContainersFrom, Decision, Inputs, Resolved};

/// Labels the JobSet controller puts on every pod it creates.
pub const JOBSET_NAME_LABEL: &str = "jobset.sigs.k8s.io/jobset-name";
pub const REPLICATED_JOB_NAME_LABEL: &str = "jobset.sigs.k8s.io/replicatedjob-name";

/// At most this many containers (regular and sidecar) get restart rules from one review; a
/// JobSet that would need more is refused (422), a pod is left unchanged with a warning.
///
/// Every changed container costs about 300 bytes of JSON Patch (two `add` operations), a
/// third more in base64, plus its entry in the `applied` summary. Without a bound, a 2.7 MB
/// JobSet of 90k one-line containers (under the API server's 3 MiB request limit) made a
/// 48 MB answer and ~100 MiB of peak memory per review, four times the Deployment's 128 MiB
/// limit with only four such requests in flight. Real JobSets have a handful of replicated
/// jobs of a few containers each (the fixtures and benches: at most 600); 1024 leaves room
/// for any of them and bounds the patch to about 0.3 MB and the answer to about 0.45 MB.
pub const MAX_CHANGED_CONTAINERS: usize = 1024;

/// The `restart.jobset.dev/applied` annotation (and the audit annotation) is cut to at most
/// this many bytes, ending with `, ... and N more` when cut. The API server refuses an
/// object whose annotations total more than 256 KiB, and the summary shares that with the
/// user's own (`kubectl apply` keeps a whole copy of the object in one). The cut depends
/// only on the entries, which follow the containers' order, so reviewing the webhook's own
/// output yields the same text and no patch.
pub const MAX_APPLIED_BYTES: usize = 16 * 1024;

/// Everything outside the object that a decision depends on.
#[derive(Clone)]
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
        Ok(Self::from_doc(&doc))
    }

    /// The same from a JobSet already read (an UPDATE compares two of them).
    pub(super) fn from_doc(doc: &JobSetDoc<'_>) -> Self {
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
        out
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

pub(super) type StrMap<'a> = BTreeMap<Cow<'a, str>, Cow<'a, str>>;

/// The whole JobSet in one pass (the common case).
#[derive(Deserialize)]
pub(super) struct JobSetDoc<'a> {
    #[serde(borrow)]
    pub(super) metadata: Option<Meta<'a>>,
    #[serde(borrow)]
    pub(super) spec: Option<JobSetSpec<'a>>,
}

/// Metadata only, with the spec left unread: used when the full view does not fit, to tell
/// whether the object concerns the webhook at all.
#[derive(Deserialize)]
pub(super) struct Head<'a> {
    #[serde(borrow)]
    pub(super) metadata: Option<Meta<'a>>,
    #[serde(borrow)]
    pub(super) spec: Option<&'a RawValue>,
}

#[derive(Deserialize)]
pub(super) struct Meta<'a> {
    #[serde(borrow)]
    pub(super) annotations: Option<StrMap<'a>>,
    #[serde(borrow)]
    pub(super) labels: Option<StrMap<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct JobSetSpec<'a> {
    #[serde(borrow, default)]
    pub(super) replicated_jobs: Vec<ReplicatedJob<'a>>,
}

#[derive(Deserialize)]
pub(super) struct ReplicatedJob<'a> {
    #[serde(borrow)]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) template: Option<JobTemplate<'a>>,
}

impl<'a> ReplicatedJob<'a> {
    /// `template.spec.template.spec`, the pod template's spec.
    pub(super) fn pod_spec(&self) -> Option<&PodSpec<'a>> {
        self.template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.template.as_ref())
            .and_then(|t| t.spec.as_ref())
    }
}

/// The JSON Pointer of replicated job `i`'s pod template spec.
pub(super) fn pod_spec_pointer(i: usize) -> PointerBuf {
    PointerBuf::from_tokens(["spec", "replicatedJobs"])
        .with_trailing_token(i)
        .concat(&PointerBuf::from_tokens([
            "template", "spec", "template", "spec",
        ]))
}

#[derive(Deserialize)]
pub(super) struct JobTemplate<'a> {
    #[serde(borrow)]
    pub(super) metadata: Option<Meta<'a>>,
    #[serde(borrow)]
    pub(super) spec: Option<JobSpec<'a>>,
}

#[derive(Deserialize)]
pub(super) struct JobSpec<'a> {
    #[serde(borrow)]
    pub(super) template: Option<PodTemplate<'a>>,
}

#[derive(Deserialize)]
pub(super) struct PodTemplate<'a> {
    #[serde(borrow)]
    pub(super) spec: Option<PodSpec<'a>>,
}

/// The containers stay raw (16 bytes each) until [`plan_pod_spec`] reads them one at a
/// time: a parsed view of 240k one-line containers (a 7 MiB review) took ~20 MB per review,
/// three times the body, and four such reviews at once went past the Deployment's limit.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PodSpec<'a> {
    #[serde(borrow)]
    pub(super) restart_policy: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) containers: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    pub(super) init_containers: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    pub(super) node_selector: Option<StrMap<'a>>,
}

impl PodSpec<'_> {
    /// The `nodeSelector` as pairs, for [`crate::engine::nodes::Nodes::support`].
    fn selector(&self) -> Vec<(&str, &str)> {
        self.node_selector
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Container<'a> {
    #[serde(borrow)]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) restart_policy: Option<Cow<'a, str>>,
    pub(super) restart_policy_rules: Option<Value>,
}

impl<'a> Container<'a> {
    /// Reads the container at `base`/`list`/`index`; a container the view cannot read is a
    /// 400 that names it.
    pub(super) fn read(
        raw: &'a RawValue,
        base: &PointerBuf,
        list: &str,
        index: usize,
    ) -> Result<Self, Denial> {
        serde_json::from_str(raw.get()).map_err(|e| Denial {
            code: 400,
            message: format!(
                "{}: not a container the webhook can read: {e}",
                base.with_trailing_token(list).with_trailing_token(index)
            ),
        })
    }
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

    let mut applied = Applied::default();
    let mut any_enabled = false;
    let mut lists: Vec<NamedList<'_>> = Vec::new();
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
        let pod_spec = rj.pod_spec();
        let selector = pod_spec.map(PodSpec::selector).unwrap_or_default();
        let inputs = Inputs {
            jobset: &jobset,
            replicated_job: Some((name, rj_ann)),
            namespace,
            config: ctx.config,
            facts: &ctx.facts,
            node_selector: &selector,
        };
        let resolved = match policy::resolve(&inputs, &mut out.warnings)? {
            Decision::Disabled => continue,
            Decision::Enabled(r) => r,
        };
        any_enabled = true;
        let Some(pod_spec) = pod_spec else {
            out.warnings.push(format!(
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
        let mut template_ops = Mutation::default();
        let sink = if rules_go_to_pods {
            &mut template_ops
        } else {
            &mut out
        };
        let entries_before = applied.entries;
        let present = plan_pod_spec(
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
            out.warnings.push(format!(
                "replicated job {}: no container gets the restart rule, so its pod template is \
                 left as it is",
                quote(name)
            ));
            continue;
        }
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
    check_container_names(&lists)?;
    if applied.changed > MAX_CHANGED_CONTAINERS {
        return Err(Denial {
            code: 422,
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
        out.warnings.push(w);
    }
    if !any_enabled {
        return Ok(out);
    }
    if applied.is_empty() {
        out.warnings.push(
            "in-place restart is enabled for this JobSet, but no container gets the restart \
             rule, so the JobSet is left as it is"
                .to_owned(),
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
    let summary = applied.finish();
    let current = meta_annotations.and_then(|m| m.get(APPLIED));
    if current.map(|c| c.as_ref()) != Some(summary.as_str()) {
        add_applied(&mut out.patch, doc.metadata.as_ref(), &summary);
    }
    out.summary = Some(summary);
    Ok(out)
}

/// Sets the `applied` annotation of an object with `metadata` to `summary`, creating
/// `annotations` (and `metadata`) as needed.
pub(super) fn add_applied(patch: &mut Patch, metadata: Option<&Meta<'_>>, summary: &str) {
    let annotations = metadata.and_then(|m| m.annotations.as_ref());
    let (tokens, value): (&[&str], Value) = match (metadata, annotations) {
        (_, Some(_)) => (&["metadata", "annotations", APPLIED], json!(summary)),
        (Some(_), None) => (&["metadata", "annotations"], json!({ APPLIED: summary })),
        (None, None) => (
            &["metadata"],
            json!({ "annotations": { APPLIED: summary } }),
        ),
    };
    patch.add(tokens.iter().copied(), Arc::new(value));
}

/// A replicated job that names its containers, and the containers and init containers its
/// pod template has.
struct NamedList<'a> {
    rjob: &'a str,
    names: Vec<String>,
    from: ContainersFrom,
    present: Vec<String>,
}

/// A container name that exists in none of the replicated jobs its list applies to is a typo
/// (`trainr`): refused, as an unknown replicated job is, instead of admitting a JobSet that
/// asked for in-place restarts and gets none. A name missing from only some of them is a
/// warning (`plan_pod_spec`). Lists written by the admin (a preset, the cluster config) serve
/// many workloads and often name a superset (`trainer,main,worker`): they are refused only
/// when none of their names is there. The first problem, in replicated-job and list order.
fn check_container_names(lists: &[NamedList<'_>]) -> Result<(), Denial> {
    let existing_in = |users: &mut dyn Iterator<Item = &NamedList<'_>>| -> String {
        let mut existing: Vec<&str> = Vec::new();
        for p in users.flat_map(|l| &l.present) {
            if !existing.contains(&p.as_str()) {
                existing.push(p);
            }
        }
        if existing.is_empty() {
            "they have none".to_owned()
        } else {
            format!("they have: {}", existing.join(", "))
        }
    };
    for list in lists {
        let value = list.names.join(",");
        let problem = match &list.from {
            ContainersFrom::Preset { .. } | ContainersFrom::Config => {
                let users = || lists.iter().filter(|l| l.names == list.names);
                if users().any(|l| l.names.iter().any(|n| l.present.contains(n))) {
                    continue;
                }
                format!(
                    "none of these containers or sidecars is in the replicated jobs it applies \
                     to; {}",
                    existing_in(&mut users())
                )
            }
            _ => {
                let Some(name) = list.names.iter().find(|name| {
                    !lists
                        .iter()
                        .any(|l| l.names.contains(name) && l.present.contains(name))
                }) else {
                    continue;
                };
                format!(
                    "no container or sidecar {} in the replicated jobs it applies to; {}",
                    quote(name),
                    existing_in(&mut lists.iter().filter(|l| l.names.contains(name)))
                )
            }
        };
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
                code: 422,
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
        facts: &ctx.facts,
        node_selector: &[],
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
        config: ctx.config,
        facts: &ctx.facts,
        node_selector: &selector,
    };
    let resolved = match policy::resolve(&inputs, &mut out.warnings).map_err(|e| e.to_string())? {
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
        ctx,
        out,
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

// ---- the shared rule --------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Template,
    Pod,
}

/// The `applied` summary, written into one buffer: `rjob/container=Action:Op(codes), ...`,
/// at most [`MAX_APPLIED_BYTES`]; and the count of containers the patch changes.
#[derive(Default)]
struct Applied {
    text: String,
    /// Entries, listed in `text` or cut.
    entries: usize,
    /// Entries left out of `text` (every one after the first that did not fit).
    cut: usize,
    /// Containers that get rules (the other entries already carried them).
    changed: usize,
}

/// Room kept in [`MAX_APPLIED_BYTES`] for `, ... and N more` (35 bytes for the largest N).
pub const APPLIED_TAIL_BYTES: usize = 40;

impl Applied {
    fn add(&mut self, rjob: Option<&str>, container: &str, rule: &str) {
        self.entries += 1;
        let separator = if self.text.is_empty() { 0 } else { 2 };
        let len = rjob.map_or(0, |r| r.len() + 1) + container.len() + 1 + rule.len();
        if self.cut > 0
            || self.text.len() + separator + len > MAX_APPLIED_BYTES - APPLIED_TAIL_BYTES
        {
            self.cut += 1;
            return;
        }
        if separator > 0 {
            self.text.push_str(", ");
        }
        if let Some(r) = rjob {
            self.text.push_str(r);
            self.text.push('/');
        }
        self.text.push_str(container);
        self.text.push('=');
        self.text.push_str(rule);
    }

    /// Counts one more container to change; `false` once past [`MAX_CHANGED_CONTAINERS`]:
    /// then nothing more is planned (the review is refused), only counted for the message.
    fn change(&mut self) -> bool {
        self.changed += 1;
        self.changed <= MAX_CHANGED_CONTAINERS
    }

    fn is_empty(&self) -> bool {
        self.entries == 0
    }

    fn finish(self) -> String {
        match (self.cut, self.text.is_empty()) {
            (0, _) => self.text,
            (n, true) => format!("... and {n} more"),
            (n, false) => format!("{}, ... and {n} more", self.text),
        }
    }
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
        .as_ref()
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
                    out.patch.add_under(&path, "restartPolicy", never());
                    out.patch
                        .add_under(&path, "restartPolicyRules", rules.clone());
                    applied.add(prefix, name, &rule_text);
                }
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
        for (j, raw) in spec.init_containers.iter().flatten().enumerate() {
            let c = Container::read(raw, base, "initContainers", j)?;
            let name = c.name.as_deref().unwrap_or_default();
            present.push(name.to_owned());
            let Some(n) = named.get(name) else {
                continue;
            };
            found.insert(n);
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
                    if applied.change() {
                        out.patch
                            .add_under(&path, "restartPolicyRules", rules.clone());
                        applied.add(prefix, name, &rule_text);
                    }
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
    Ok(present)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(config: &Config) -> Context<'_> {
        Context {
            config,
            namespace_labels: None,
            facts: ClusterFacts::default(),
        }
    }

    fn containers(prefix: &str, n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| json!({ "name": format!("{prefix}{i}"), "image": "x:1" }))
            .collect()
    }

    /// An opted-in JobSet with one replicated job per entry of `rjobs` (name, containers).
    fn jobset(annotations: Value, rjobs: Vec<(&str, Vec<Value>)>) -> Value {
        json!({
            "apiVersion": "jobset.x-k8s.io/v1alpha2",
            "kind": "JobSet",
            "metadata": { "name": "wide", "annotations": annotations },
            "spec": { "replicatedJobs": rjobs.into_iter().map(|(name, cs)| json!({
                "name": name,
                "template": { "spec": { "template": { "spec": { "containers": cs } } } },
            })).collect::<Vec<_>>() },
        })
    }

    fn enabled() -> Value {
        json!({ annotations::IN_PLACE: "enabled" })
    }

    fn mutate(js: &Value) -> Result<Mutation, Denial> {
        let config = Config::default();
        mutate_jobset(&js.to_string(), &ctx(&config))
    }

    /// Applies the mutation and reviews the result again: nothing more may change.
    fn assert_idempotent(js: &Value, m: &Mutation) -> Value {
        let mut out = js.clone();
        m.patch.apply(&mut out).unwrap_or_else(|e| panic!("{e}"));
        let again = mutate(&out).unwrap_or_else(|d| panic!("{d}"));
        assert!(again.patch.is_empty(), "{:?}", again.patch);
        assert_eq!(again.summary, m.summary);
        out
    }

    #[test]
    fn a_container_name_found_in_no_selected_replicated_job_is_refused() {
        let mut ann = enabled();
        ann[annotations::CONTAINERS] = json!("trainr");
        let js = jobset(
            ann,
            vec![("a", containers("trainer", 1)), ("b", containers("x", 2))],
        );
        assert_eq!(
            mutate(&js).err().map(|d| (d.code, d.message)),
            Some((
                422,
                "restart.jobset.dev/containers: \"trainr\": no container or sidecar \"trainr\" \
                 in the replicated jobs it applies to; they have: trainer0, x0, x1"
                    .to_owned()
            ))
        );
    }

    #[test]
    fn a_container_name_found_in_one_replicated_job_only_warns() {
        let mut ann = enabled();
        ann[annotations::CONTAINERS] = json!("c0");
        let js = jobset(
            ann,
            vec![("a", containers("c", 1)), ("b", containers("d", 1))],
        );
        let m = mutate(&js).unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(
            m.summary.as_deref(),
            Some("a/c0=RestartAllContainers:NotIn(0)")
        );
        // Replicated job `b` gets no rule, so its pod template keeps its restartPolicy.
        let out = assert_idempotent(&js, &m);
        let b = &out["spec"]["replicatedJobs"][1]["template"]["spec"]["template"]["spec"];
        assert!(b.get("restartPolicy").is_none(), "{b}");
        assert!(
            m.warnings
                .iter()
                .any(|w| w.contains("replicated job \"b\": no container gets the restart rule")),
            "{:?}",
            m.warnings
        );
    }

    #[test]
    fn a_replicated_job_level_typo_is_blamed_on_that_annotation() {
        let mut js = jobset(enabled(), vec![("a", containers("c", 2))]);
        js["spec"]["replicatedJobs"][0]["template"]["metadata"] =
            json!({ "annotations": { annotations::CONTAINERS: "c1, c9" } });
        assert_eq!(
            mutate(&js).err().map(|d| d.message),
            Some(
                "replicated job \"a\": restart.jobset.dev/containers: \"c1,c9\": no container \
                 or sidecar \"c9\" in the replicated jobs it applies to; they have: c0, c1"
                    .to_owned()
            )
        );
    }

    #[test]
    fn preset_and_config_container_typos_name_their_source() {
        let config = Config::from_yaml(
            "presets:\n  p: {containers: [nope]}\ndefaults: {containers: [gone]}\n",
            "test",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut ann = enabled();
        ann[annotations::PRESET] = json!("p");
        let js = jobset(ann, vec![("a", containers("c", 1))]);
        let m = mutate_jobset(&js.to_string(), &ctx(&config));
        assert_eq!(
            m.err().map(|d| d.message),
            Some(
                "restart.jobset.dev/preset: \"p\": its containers \"nope\": none of these \
                 containers or sidecars is in the replicated jobs it applies to; they have: c0"
                    .to_owned()
            )
        );
        let js = jobset(enabled(), vec![("a", containers("c", 1))]);
        let m = mutate_jobset(&js.to_string(), &ctx(&config));
        assert_eq!(
            m.err().map(|d| (d.code, d.message)),
            Some((
                422,
                "the cluster config's defaults.containers \"gone\": none of these containers or \
                 sidecars is in the replicated jobs it applies to; they have: c0"
                    .to_owned()
            ))
        );
    }

    #[test]
    fn an_admin_list_that_names_a_superset_is_fine() {
        let config = Config::from_yaml("defaults: {containers: [main, c0, worker]}\n", "test")
            .unwrap_or_else(|e| panic!("{e}"));
        let js = jobset(enabled(), vec![("a", containers("c", 2))]);
        let m = mutate_jobset(&js.to_string(), &ctx(&config)).unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(
            m.summary.as_deref(),
            Some("a/c0=RestartAllContainers:NotIn(0)")
        );
    }

    #[test]
    fn enabled_but_every_container_user_set_changes_nothing() {
        let user = json!({ "name": "m", "restartPolicy": "Never", "restartPolicyRules": [
            { "action": "Restart", "exitCodes": { "operator": "In", "values": [3] } }] });
        let js = jobset(enabled(), vec![("a", vec![user])]);
        let m = mutate(&js).unwrap_or_else(|d| panic!("{d}"));
        assert!(m.patch.is_empty(), "{:?}", m.patch);
        assert_eq!(m.summary, None);
        assert!(
            m.warnings
                .iter()
                .any(|w| w.contains("so the JobSet is left as it is")),
            "{:?}",
            m.warnings
        );
    }

    #[test]
    fn replicated_jobs_naming_a_missing_one_lists_the_existing_or_says_none() {
        let mut ann = enabled();
        ann[annotations::REPLICATED_JOBS] = json!("nope");
        let with = jobset(
            ann.clone(),
            vec![("a", containers("c", 1)), ("b", containers("d", 1))],
        );
        assert_eq!(
            mutate(&with).err().map(|d| (d.code, d.message)),
            Some((
                422,
                r#"restart.jobset.dev/replicated-jobs: "nope": this JobSet has no replicated job "nope"; it has: a, b"#
                    .to_owned()
            ))
        );
        let without = jobset(ann, vec![]);
        assert_eq!(
            mutate(&without).err().map(|d| d.message),
            Some(
                r#"restart.jobset.dev/replicated-jobs: "nope": this JobSet has no replicated job "nope"; it has none"#
                    .to_owned()
            )
        );
    }

    #[test]
    fn containers_up_to_the_cap_are_changed() {
        let js = jobset(
            enabled(),
            vec![
                ("a", containers("c", MAX_CHANGED_CONTAINERS - 1)),
                ("b", containers("d", 1)),
            ],
        );
        let m = mutate(&js).unwrap_or_else(|d| panic!("{d}"));
        // Two per container, the pod templates' restartPolicy, the annotation.
        assert_eq!(m.patch.len(), 2 * MAX_CHANGED_CONTAINERS + 2 + 1);
        assert_idempotent(&js, &m);
    }

    #[test]
    fn a_jobset_over_the_cap_is_refused_with_the_count() {
        let js = jobset(
            enabled(),
            vec![("a", containers("c", 2000)), ("b", containers("d", 1000))],
        );
        let d = mutate(&js).err();
        assert_eq!(
            d,
            Some(Denial {
                code: 422,
                message: "in-place restart would change 3000 containers of this JobSet, more \
                          than the 1024 the webhook changes in one JobSet; select the \
                          containers that need it with restart.jobset.dev/containers \
                          (container names) or the replicated jobs with \
                          restart.jobset.dev/replicated-jobs (replicated job names)"
                    .to_owned(),
            })
        );
        // What the message suggests: only one replicated job, or named containers.
        let mut ann = enabled();
        ann[annotations::REPLICATED_JOBS] = json!("b");
        let m = mutate(&jobset(
            ann,
            vec![("a", containers("c", 2000)), ("b", containers("d", 1000))],
        ));
        assert!(m.is_ok_and(|m| m.patch.len() == 2 * 1000 + 2));
        let mut ann = enabled();
        ann[annotations::CONTAINERS] = json!("c0,d0");
        let m = mutate(&jobset(
            ann,
            vec![("a", containers("c", 2000)), ("b", containers("d", 1000))],
        ));
        assert!(m.is_ok_and(|m| m.patch.len() == 2 * 2 + 2 + 1));
    }

    #[test]
    fn sidecars_count_towards_the_cap() {
        let mut js = jobset(
            json!({ annotations::IN_PLACE: "enabled", annotations::CONTAINERS: "c0,s0,s1" }),
            vec![("a", containers("c", MAX_CHANGED_CONTAINERS))],
        );
        let sidecars: Vec<Value> = (0..2)
            .map(|i| json!({ "name": format!("s{i}"), "restartPolicy": "Always" }))
            .collect();
        js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["initContainers"] =
            json!(sidecars);
        assert!(mutate(&js).is_ok_and(|m| m.patch.len() == 2 + 2 + 2));
        // Every regular container and both sidecars: 1026.
        let names: Vec<String> = (0..MAX_CHANGED_CONTAINERS)
            .map(|i| format!("c{i}"))
            .chain(["s0".to_owned(), "s1".to_owned()])
            .collect();
        js["metadata"]["annotations"][annotations::CONTAINERS] = json!(names.join(","));
        let d = mutate(&js).err();
        assert!(
            d.as_ref().is_some_and(|d| d.code == 422
                && d.message.starts_with(
                    "in-place restart would change 1026 containers of this JobSet, more than \
                     the 1024 "
                )),
            "{d:?}"
        );
    }

    #[test]
    fn containers_that_already_carry_the_rule_do_not_count() {
        let js = jobset(
            enabled(),
            vec![("a", containers("c", MAX_CHANGED_CONTAINERS))],
        );
        let m = mutate(&js).unwrap_or_else(|d| panic!("{d}"));
        let mut out = assert_idempotent(&js, &m);
        // One more plain container beside 1024 that already carry the rule: one change.
        let ctrs = &mut out["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"];
        if let Some(list) = ctrs.as_array_mut() {
            list.push(json!({ "name": "late", "image": "x:1" }));
        }
        let m = mutate(&out).unwrap_or_else(|d| panic!("{d}"));
        // The container's two fields and the annotation, whose summary changed.
        assert_eq!(m.patch.len(), 3);
    }

    #[test]
    fn a_pod_is_judged_by_the_nodes_its_node_selector_picks() {
        use crate::engine::nodes::{NodeInfo, Nodes};
        let config = Config::default();
        let node = |pool: &str, declares| {
            Arc::new(NodeInfo {
                labels: [("pool".to_owned(), pool.to_owned())].into(),
                unschedulable: false,
                declares,
            })
        };
        let ctx = Context {
            config: &config,
            namespace_labels: None,
            facts: ClusterFacts {
                restart_all_containers: Some(true),
                nodes: Some(Arc::new(Nodes::new(vec![
                    node("gpu", true),
                    node("cpu", false),
                ]))),
                ..ClusterFacts::default()
            },
        };
        let parent = |action: Option<&str>| {
            let mut annotations: BTreeMap<String, String> =
                [(annotations::IN_PLACE.to_owned(), "enabled".to_owned())].into();
            if let Some(a) = action {
                annotations.insert(annotations::ACTION.to_owned(), a.to_owned());
            }
            ParentJobSet {
                annotations,
                replicated_jobs: BTreeMap::new(),
            }
        };
        let pod = |spec: Value| {
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "p", "labels": {
                       JOBSET_NAME_LABEL: "js", REPLICATED_JOB_NAME_LABEL: "a"}},
                   "spec": spec})
            .to_string()
        };
        let on =
            |pool: &str| json!({"nodeSelector": {"pool": pool}, "containers": containers("c", 1)});
        let m = mutate_pod(&pod(on("gpu")), &ctx, &|_| Some(parent(None)));
        assert_eq!(
            m.summary.as_deref(),
            Some("c0=RestartAllContainers:NotIn(0)")
        );
        let m = mutate_pod(&pod(on("cpu")), &ctx, &|_| Some(parent(None)));
        assert_eq!(m.summary.as_deref(), Some("c0=Restart:NotIn(0)"));
        // a pod is never denied: an impossible ask leaves it unchanged, with the reason
        let m = mutate_pod(&pod(on("cpu")), &ctx, &|_| {
            Some(parent(Some("RestartAllContainers")))
        });
        assert!(m.patch.is_empty());
        assert!(
            m.warnings[0].starts_with("pod left unchanged: restart.jobset.dev/action: \"RestartAllContainers\": RestartAllContainers pods need nodes"),
            "{:?}",
            m.warnings
        );
        // an unreadable spec matters only when in-place restart applies
        let disabled = ParentJobSet::default();
        let m = mutate_pod(&pod(json!({"nodeSelector": 7})), &ctx, &|_| {
            Some(disabled.clone())
        });
        assert_eq!(m, Mutation::default());
        let m = mutate_pod(&pod(json!({"nodeSelector": 7})), &ctx, &|_| {
            Some(parent(None))
        });
        assert!(
            m.warnings
                .iter()
                .any(|w| w.starts_with("pod left unchanged: spec: not a pod spec")),
            "{:?}",
            m.warnings
        );
    }

    #[test]
    fn a_pod_over_the_cap_is_left_unchanged_with_a_warning() {
        let config = Config::default();
        let parent = ParentJobSet {
            annotations: [(annotations::IN_PLACE.to_owned(), "enabled".to_owned())].into(),
            replicated_jobs: BTreeMap::new(),
        };
        let pod = |n: usize| {
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": { "name": "p", "labels": {
                    JOBSET_NAME_LABEL: "wide", REPLICATED_JOB_NAME_LABEL: "a" } },
                "spec": { "containers": containers("c", n) },
            })
            .to_string()
        };
        let m = mutate_pod(&pod(MAX_CHANGED_CONTAINERS), &ctx(&config), &|_| {
            Some(parent.clone())
        });
        assert_eq!(m.patch.len(), 2 * MAX_CHANGED_CONTAINERS);
        let m = mutate_pod(&pod(5000), &ctx(&config), &|_| Some(parent.clone()));
        assert!(m.patch.is_empty());
        assert_eq!(m.summary, None);
        assert_eq!(
            m.warnings,
            [
                "pod left unchanged: in-place restart would change 5000 containers of this pod, \
                 more than the 1024 the webhook changes in one pod"
            ]
        );
    }

    #[test]
    fn the_applied_summary_is_bounded_and_stable() {
        // 1000 containers with 60-character names: about 95 KB of summary unbounded.
        let long = "x".repeat(56);
        let js = jobset(enabled(), vec![("workers", containers(&long, 1000))]);
        let m = mutate(&js).unwrap_or_else(|d| panic!("{d}"));
        let summary = m.summary.clone().unwrap_or_default();
        assert!(summary.len() <= MAX_APPLIED_BYTES, "{}", summary.len());
        assert!(summary.len() > MAX_APPLIED_BYTES - 200, "{}", summary.len());
        let entry = |i: usize| format!("workers/{long}{i}=RestartAllContainers:NotIn(0)");
        let listed = summary
            .split(", ")
            .filter(|e| !e.starts_with("..."))
            .count();
        assert!(summary.starts_with(&format!("{}, {}, ", entry(0), entry(1))));
        assert!(
            summary.ends_with(&format!(
                "{}, ... and {} more",
                entry(listed - 1),
                1000 - listed
            )),
            "{summary}"
        );
        // The annotation carries the same text, and a second review changes nothing.
        let out = assert_idempotent(&js, &m);
        assert_eq!(out["metadata"]["annotations"][APPLIED], json!(summary));
    }

    #[test]
    fn an_unreadable_container_is_named() {
        let mut cs = containers("c", 2);
        cs.push(json!({ "name": 5 }));
        let d = mutate(&jobset(
            enabled(),
            vec![("a", containers("d", 1)), ("b", cs)],
        ))
        .err();
        assert_eq!(
            d,
            Some(Denial {
                code: 400,
                message: "/spec/replicatedJobs/1/template/spec/template/spec/containers/2: not a \
                          container the webhook can read: invalid type: integer `5`, expected a \
                          string at line 1 column 9"
                    .to_owned(),
            })
        );
    }

    #[test]
    fn a_summary_entry_too_long_for_the_bound_is_counted() {
        let mut a = Applied::default();
        a.add(
            Some("r"),
            &"n".repeat(MAX_APPLIED_BYTES),
            "Restart:NotIn(0)",
        );
        a.add(Some("r"), "short", "Restart:NotIn(0)");
        assert!(!a.is_empty());
        assert_eq!(a.finish(), "... and 2 more");
        let mut a = Applied::default();
        a.add(None, "c", "Restart:In(1)");
        assert_eq!(a.finish(), "c=Restart:In(1)");
    }
}
