//! JobSet UPDATE: keep what CREATE decided.
//!
//! Clients write JobSets back without the webhook's additions: `kubectl replace` and
//! client-side `kubectl apply` (for custom resources a JSON merge patch, which replaces the
//! whole `replicatedJobs` list) send the manifest, and controllers built with Kubernetes types
//! older than the fields (Kueue, Trainer and others on k8s.io/api < 0.34) drop
//! `restartPolicyRules` (and before 0.28 the container `restartPolicy`) when they round-trip
//! the object. (Server-side apply does not: fields added by admission are owned by no field
//! manager, so a re-apply leaves them.) JobSet refuses changes to its pod templates, so such
//! an update would fail for good. The `applied` annotation of the stored object is the record
//! of what was injected; an update that drops those fields gets them back, copied from the
//! stored object.
//!
//! The rules, in order:
//! 1. If the update changes any `restart.jobset.dev/*` setting (JobSet or replicated-job
//!    annotations; `applied` aside), the new annotations are validated as on CREATE (invalid:
//!    refused with the same text) and nothing is added or restored: settings take effect when
//!    a JobSet is created, and a user who edits them (e.g. `in-place: disabled` on a suspended
//!    JobSet) is never fought. A warning says so.
//! 2. Else, if the stored object has no `applied` record, nothing happens: UPDATE never adds
//!    rules the stored object did not have.
//! 3. Else every container the record names (`rjob/container`; every container when the
//!    record was cut) that lost `restartPolicyRules`, and either lost `restartPolicy` too or
//!    kept it as stored (sidecars: the rules), gets the stored values back; a recorded
//!    replicated job's pod template that lost its `restartPolicy` gets the stored one; a lost
//!    `applied` annotation comes back. Fields the update sets itself are left alone.
//!
//! An update that drops nothing of ours gets an empty answer after reading the two views.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use json_patch::jsonptr::PointerBuf;
use serde_json::json;

use super::annotations::{APPLIED, quote};
use super::applied::{MAX_CHANGED_CONTAINERS, add_applied};
use super::view::{Container, JobSetDoc, PodSpec, StrMap, pod_spec_pointer};
use super::{Denial, Environment, Mutation, ParentJobSet, mutate_jobset};

/// The warning of rule 1.
pub const SETTINGS_CHANGED: &str = "this update changes restart.jobset.dev annotations: they \
     take effect when a JobSet is created, so the webhook neither adds nor restores restart \
     rules on this JobSet now; recreate it to apply the new settings";

/// Mutates a JobSet UPDATE: `raw` is `request.object`, `old_raw` is `request.oldObject`.
pub fn update_jobset(raw: &str, old_raw: &str, env: &Environment<'_>) -> Result<Mutation, Denial> {
    let (Ok(new), Ok(old)) = (
        serde_json::from_str::<JobSetDoc<'_>>(raw),
        serde_json::from_str::<JobSetDoc<'_>>(old_raw),
    ) else {
        // A JobSet the views cannot read: CREATE's checks explain it when it matters.
        return mutate_jobset(raw, env).map(|_| Mutation::default());
    };
    if settings(&new) != settings(&old) {
        return mutate_jobset(raw, env).map(|_| Mutation {
            warnings: vec![SETTINGS_CHANGED.to_owned()],
            ..Mutation::default()
        });
    }
    let Some(record) = annotations_of(&old).and_then(|a| a.get(APPLIED)) else {
        return Ok(Mutation::default());
    };
    restore(&new, &old, record)
}

fn annotations_of<'d, 'a>(doc: &'d JobSetDoc<'a>) -> Option<&'d StrMap<'a>> {
    doc.metadata.as_ref().and_then(|m| m.annotations.as_ref())
}

/// The `restart.jobset.dev/*` settings of a JobSet (the parent view a pod is resolved
/// from), without replicated jobs that have none, so that adding one changes nothing.
fn settings(doc: &JobSetDoc<'_>) -> ParentJobSet {
    let mut view = ParentJobSet::from_doc(doc);
    view.replicated_jobs.retain(|_, a| !a.is_empty());
    view
}

/// The stored pod templates by replicated job name (the first of a name, as a lookup by name
/// finds it), each with its index: one pass, so that looking them up per replicated job of
/// the update is linear in the replicated jobs.
fn pod_specs<'d, 'a>(doc: &'d JobSetDoc<'a>) -> HashMap<&'d str, (usize, &'d PodSpec<'a>)> {
    let mut out = HashMap::new();
    for (i, rj) in doc
        .spec
        .iter()
        .flat_map(|s| s.replicated_jobs.iter().enumerate())
    {
        if let Some(name) = rj.name.as_deref() {
            out.entry(name).or_insert((i, rj.pod_spec()));
        }
    }
    out.into_iter()
        .filter_map(|(name, (i, ps))| Some((name, (i, ps?))))
        .collect()
}

/// Whether container `j` of the update is, byte for byte, the stored container `j`.
fn same_bytes(
    stored: Option<&Vec<&serde_json::value::RawValue>>,
    j: usize,
    raw: &serde_json::value::RawValue,
) -> bool {
    stored
        .and_then(|l| l.get(j))
        .is_some_and(|o| o.get() == raw.get())
}

/// The stored containers of one list, by name (each read once).
fn by_name<'a>(
    list: Option<&Vec<&'a serde_json::value::RawValue>>,
    base: &PointerBuf,
    field: &str,
) -> Result<HashMap<String, Container<'a>>, Denial> {
    let mut out = HashMap::new();
    for (j, raw) in list.into_iter().flatten().enumerate() {
        let c = Container::read(raw, base, field, j)?;
        let name = c.name.as_deref().unwrap_or_default().to_owned();
        out.entry(name).or_insert(c);
    }
    Ok(out)
}

/// Rule 3.
fn restore(new: &JobSetDoc<'_>, old: &JobSetDoc<'_>, record: &str) -> Result<Mutation, Denial> {
    let entries: Vec<&str> = record.split(", ").collect();
    let cut = entries.iter().any(|e| e.starts_with("... and "));
    // `rjob/container` of each entry; names are DNS labels, so `/`, `=` and `, ` separate.
    let keys: HashSet<(&str, &str)> = entries
        .iter()
        .filter_map(|e| e.split_once('=').and_then(|(k, _)| k.split_once('/')))
        .collect();
    let rjobs: HashSet<&str> = keys.iter().map(|&(r, _)| r).collect();
    let recorded = |rjob: &str, container: &str| cut || keys.contains(&(rjob, container));
    let stored_specs = pod_specs(old);

    let mut out = Mutation::default();
    let mut restored = 0usize;
    for (i, rj) in new.spec.iter().flat_map(|s| &s.replicated_jobs).enumerate() {
        let rjob = rj.name.as_deref().unwrap_or_default();
        if !(cut || rjobs.contains(rjob)) {
            continue;
        }
        let (Some(ps), Some(&(old_i, old_ps))) = (rj.pod_spec(), stored_specs.get(rjob)) else {
            continue;
        };
        let base = pod_spec_pointer(i);
        let old_base = pod_spec_pointer(old_i);

        // The stored containers are read only once a container differs from its stored self:
        // an update that keeps our fields (a queue resuming the JobSet) sends them back byte
        // for byte, and a comparison costs far less than reading both.
        let mut stored = None;
        for (j, raw) in ps.containers.iter().flatten().enumerate() {
            if same_bytes(old_ps.containers.as_ref(), j, raw) {
                continue;
            }
            let c = Container::read(raw, &base, "containers", j)?;
            let name = c.name.as_deref().unwrap_or_default();
            if c.restart_policy_rules.is_some() {
                continue;
            }
            if stored.is_none() {
                stored = Some(by_name(
                    old_ps.containers.as_ref(),
                    &old_base,
                    "containers",
                )?);
            }
            let Some(was) = stored
                .as_ref()
                .and_then(|s| s.get(name))
                .filter(|_| recorded(rjob, name))
            else {
                continue;
            };
            // A `restartPolicy` the update keeps as stored is not the user's change: clients
            // built with Kubernetes types older than the rules (1.28-1.33) send it back and
            // drop only `restartPolicyRules`.
            if c.restart_policy.is_some() && c.restart_policy != was.restart_policy {
                continue;
            }
            if was.restart_policy_rules.is_none()
                && (was.restart_policy.is_none() || c.restart_policy.is_some())
            {
                continue;
            }
            let path = base
                .with_trailing_token("containers")
                .with_trailing_token(j);
            if let (None, Some(p)) = (&c.restart_policy, &was.restart_policy) {
                out.patch
                    .add_under(&path, "restartPolicy", Arc::new(json!(p)));
            }
            if let Some(r) = &was.restart_policy_rules {
                out.patch
                    .add_under(&path, "restartPolicyRules", Arc::new(r.clone()));
            }
            restored += 1;
        }

        if ps.init_containers.is_some() {
            let mut stored = None;
            for (j, raw) in ps.init_containers.iter().flatten().enumerate() {
                if same_bytes(old_ps.init_containers.as_ref(), j, raw) {
                    continue;
                }
                let c = Container::read(raw, &base, "initContainers", j)?;
                let name = c.name.as_deref().unwrap_or_default();
                if c.restart_policy_rules.is_some() {
                    continue;
                }
                if stored.is_none() {
                    stored = Some(by_name(
                        old_ps.init_containers.as_ref(),
                        &old_base,
                        "initContainers",
                    )?);
                }
                let Some(rules) = stored
                    .as_ref()
                    .and_then(|s| s.get(name))
                    .filter(|_| recorded(rjob, name))
                    .and_then(|was| was.restart_policy_rules.as_ref())
                else {
                    continue;
                };
                let path = base
                    .with_trailing_token("initContainers")
                    .with_trailing_token(j);
                out.patch
                    .add_under(&path, "restartPolicyRules", Arc::new(rules.clone()));
                restored += 1;
            }
        }

        if let (None, Some(p)) = (&ps.restart_policy, &old_ps.restart_policy) {
            out.patch
                .add_under(&base, "restartPolicy", Arc::new(json!(p)));
        }
    }
    if restored > MAX_CHANGED_CONTAINERS {
        return Ok(Mutation {
            warnings: vec![format!(
                "this update dropped the restart rules of {restored} containers; the webhook \
                 restores at most {MAX_CHANGED_CONTAINERS}, so it left the update as it is"
            )],
            ..Mutation::default()
        });
    }

    if annotations_of(new).is_none_or(|a| !a.contains_key(APPLIED)) {
        add_applied(&mut out.patch, new.metadata.as_ref(), record);
    }
    if !out.patch.is_empty() {
        out.warnings.push(format!(
            "this update dropped what the webhook added when the JobSet was created; restored \
             as recorded in {APPLIED} ({restored} containers): {}",
            quote(record)
        ));
        out.summary = Some(record.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ClusterFacts, Config, DenialReason};
    use serde_json::Value;

    fn env(config: &Config) -> Environment<'_> {
        Environment {
            config,
            namespace_labels: None,
            namespace_opted_in: false,
            facts: ClusterFacts::default(),
        }
    }

    /// A manifest as a user writes it: opted in, a sidecar named in the list, no restart
    /// fields anywhere.
    fn manifest() -> Value {
        json!({
            "apiVersion": "jobset.x-k8s.io/v1alpha2",
            "kind": "JobSet",
            "metadata": { "name": "train", "annotations": {
                "restart.jobset.dev/in-place": "enabled",
                "restart.jobset.dev/containers": "trainer,log",
            } },
            "spec": { "suspend": true, "replicatedJobs": [
                { "name": "workers", "template": { "spec": { "template": { "spec": {
                    "initContainers": [{ "name": "log", "image": "x", "restartPolicy": "Always" }],
                    "containers": [
                        { "name": "trainer", "image": "x" },
                        { "name": "other", "image": "x" },
                    ],
                } } } } },
                { "name": "driver", "template": { "spec": { "template": { "spec": {
                    "restartPolicy": "OnFailure",
                    "containers": [{ "name": "main", "image": "x" }],
                } } } } },
            ] },
        })
    }

    /// What the API server stores after CREATE.
    fn stored(config: &Config) -> Value {
        let mut js = manifest();
        let m = mutate_jobset(&js.to_string(), &env(config)).unwrap_or_else(|d| panic!("{d}"));
        m.patch.apply(&mut js).unwrap_or_else(|e| panic!("{e}"));
        js
    }

    fn update(new: &Value, old: &Value) -> Result<Mutation, Denial> {
        let config = Config::default();
        update_jobset(&new.to_string(), &old.to_string(), &env(&config))
    }

    fn applied(m: &Mutation, to: &Value) -> Value {
        let mut out = to.clone();
        m.patch.apply(&mut out).unwrap_or_else(|e| panic!("{e}"));
        out
    }

    #[test]
    fn an_update_that_drops_our_fields_gets_them_back() {
        let old = stored(&Config::default());
        assert_ne!(old, manifest(), "CREATE changed nothing");
        let m = update(&manifest(), &old).unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(applied(&m, &manifest()), old);
        assert_eq!(
            m.summary.as_deref(),
            old["metadata"]["annotations"][APPLIED].as_str()
        );
        assert!(
            m.warnings.iter().any(|w| w.contains("(2 containers)")),
            "{:?}",
            m.warnings
        );
    }

    #[test]
    fn an_update_that_keeps_our_fields_gets_an_empty_answer() {
        let old = stored(&Config::default());
        let mut new = old.clone();
        new["spec"]["suspend"] = json!(false);
        new["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["nodeSelector"] =
            json!({ "pool": "a" });
        assert_eq!(update(&new, &old), Ok(Mutation::default()));
    }

    #[test]
    fn fields_the_update_sets_itself_are_left_alone() {
        let old = stored(&Config::default());
        let mut new = manifest();
        let trainer = &mut new["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
            ["containers"][0];
        trainer["restartPolicy"] = json!("Always");
        let m = update(&new, &old).unwrap_or_else(|d| panic!("{d}"));
        let out = applied(&m, &new);
        let spec = &out["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"];
        assert_eq!(spec["containers"][0]["restartPolicy"], json!("Always"));
        assert!(spec["containers"][0].get("restartPolicyRules").is_none());
        // The sidecar, the pod template and the record still come back.
        assert!(
            spec["initContainers"][0]
                .get("restartPolicyRules")
                .is_some()
        );
        assert_eq!(spec["restartPolicy"], json!("Never"));
        assert!(out["metadata"]["annotations"].get(APPLIED).is_some());
    }

    #[test]
    fn a_client_with_older_types_keeps_restart_policy_and_drops_the_rules() {
        let old = stored(&Config::default());
        let mut new = old.clone();
        let trainer = &mut new["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
            ["containers"][0];
        if let Some(c) = trainer.as_object_mut() {
            c.remove("restartPolicyRules");
        }
        let m = update(&new, &old).unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(m.patch.len(), 1, "{:?}", m.patch);
        assert_eq!(applied(&m, &new), old);
        // A different restartPolicy is the user's own: left alone.
        new["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
            ["restartPolicy"] = json!("Always");
        assert_eq!(update(&new, &old), Ok(Mutation::default()));
    }

    #[test]
    fn changed_settings_are_validated_and_never_fought() {
        let old = stored(&Config::default());
        let mut new = manifest();
        new["metadata"]["annotations"]["restart.jobset.dev/in-place"] = json!("disabled");
        let m = update(&new, &old).unwrap_or_else(|d| panic!("{d}"));
        assert!(m.patch.is_empty(), "{:?}", m.patch);
        assert_eq!(m.warnings, vec![SETTINGS_CHANGED.to_owned()]);

        new["metadata"]["annotations"]["restart.jobset.dev/in-place"] = json!("yes please");
        let d = update(&new, &old).err().map(|d| (d.reason, d.message));
        assert_eq!(
            d.map(|(c, m)| (
                c,
                m.starts_with("restart.jobset.dev/in-place: \"yes please\"")
            )),
            Some((DenialReason::Invalid, true))
        );
    }

    #[test]
    fn a_jobset_created_without_rules_gets_none_on_update() {
        let mut old = manifest();
        old["metadata"]["annotations"] = json!({ "restart.jobset.dev/containers": "trainer" });
        let new = old.clone();
        assert_eq!(update(&new, &old), Ok(Mutation::default()));
    }

    #[test]
    fn a_cut_record_restores_every_stored_rule() {
        let mut old = stored(&Config::default());
        old["metadata"]["annotations"][APPLIED] = json!("... and 3 more");
        let m = update(&manifest(), &old).unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(applied(&m, &manifest()), old);
    }

    #[test]
    fn unreadable_objects_are_answered_as_on_create() {
        let old = stored(&Config::default());
        let mut new = manifest();
        new["spec"]["replicatedJobs"] = json!("not a list");
        let d = update(&new, &old).err().map(|d| d.reason);
        assert_eq!(d, Some(DenialReason::BadRequest));
    }
}
