//! Property tests over generated JobSets and Pods (README: Opting in): the patch always applies, the
//! engine is idempotent, nothing outside the named fields changes, user-set container fields
//! are never touched, and injected exit codes are sorted, unique and at most 255.

use std::collections::BTreeMap;

use jobset_restart_webhook::engine::{
    ClusterFacts, Config, Environment, ParentJobSet, mutate_jobset, mutate_pod,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use testkit::engine_support::{apply, changed_paths};

const CONTAINER_NAMES: &[&str] = &["trainer", "agent", "logger", "a", "b"];
const RJOB_NAMES: &[&str] = &["workers", "driver", "ps", "eval"];

fn opt<T: Clone + std::fmt::Debug + 'static>(
    items: &'static [T],
) -> impl Strategy<Value = Option<T>> {
    prop_oneof![Just(None), prop::sample::select(items).prop_map(Some)]
}

fn container(name: &'static str, init: bool) -> impl Strategy<Value = Value> {
    let policies: &'static [&'static str] = if init {
        &["Always"]
    } else {
        &["Never", "OnFailure", "Always"]
    };
    (
        opt(policies),
        any::<bool>(),
        any::<bool>(),
        opt(&["Restart", "RestartAllContainers"]),
    )
        .prop_map(move |(policy, with_rules, odd_key, rule_action)| {
            let mut c = Map::new();
            c.insert("name".into(), json!(name));
            c.insert("image".into(), json!(format!("img/{name}:1")));
            if let Some(p) = policy {
                c.insert("restartPolicy".into(), json!(p));
            }
            if with_rules {
                let action = rule_action.unwrap_or("Restart");
                c.insert(
                    "restartPolicyRules".into(),
                    json!([{ "action": action, "exitCodes": { "operator": "In", "values": [3] } }]),
                );
            }
            if odd_key {
                c.insert("x~odd/key".into(), json!({ "keep": [1, "two", null] }));
            }
            Value::Object(c)
        })
}

fn containers(init: bool) -> impl Strategy<Value = Vec<Value>> {
    prop::sample::subsequence(CONTAINER_NAMES, if init { 0..=2 } else { 1..=4 }).prop_flat_map(
        move |names| {
            names
                .into_iter()
                .map(|n| container(n, init))
                .collect::<Vec<_>>()
        },
    )
}

fn annotations(rjob_level: bool) -> impl Strategy<Value = Map<String, Value>> {
    (
        opt(&["enabled", "disabled", "true"]),
        opt(&["Restart", "RestartAllContainers"]),
        opt(&["on:42,43", "on:1-10, 200", "except:0", "except:0,1,137"]),
        opt(&["trainer", "agent,trainer", "a,b,logger", "agent"]),
        opt(&["workers", "driver,ps"]),
        any::<bool>(),
    )
        .prop_map(move |(in_place, action, codes, names, rjobs, foreign)| {
            let mut m = Map::new();
            let mut put = |k: &str, v: &str| {
                m.insert(format!("restart.jobset.dev/{k}"), json!(v));
            };
            if let Some(v) = in_place {
                put("in-place", v);
            }
            if let Some(v) = action {
                put("action", v);
            }
            match codes.and_then(|c| c.split_once(':')) {
                Some(("on", v)) => put("on-exit-codes", v),
                Some((_, v)) => put("except-exit-codes", v),
                None => {}
            }
            if let Some(v) = names {
                put("containers", v);
            }
            if let (Some(v), false) = (rjobs, rjob_level) {
                put("replicated-jobs", v);
            }
            if foreign {
                m.insert("x~y/z".into(), json!("kept"));
            }
            m
        })
}

fn pod_spec() -> impl Strategy<Value = Value> {
    (
        containers(false),
        containers(true),
        opt(&["Never", "OnFailure"]),
        any::<bool>(),
    )
        .prop_map(|(containers, init, policy, extra)| {
            let mut s = Map::new();
            s.insert("containers".into(), Value::Array(containers));
            if !init.is_empty() {
                s.insert("initContainers".into(), Value::Array(init));
            }
            if let Some(p) = policy {
                s.insert("restartPolicy".into(), json!(p));
            }
            if extra {
                s.insert("futurePodField".into(), json!({ "a/b": "~" }));
            }
            Value::Object(s)
        })
}

fn jobset() -> impl Strategy<Value = Value> {
    let rjob = |name: &'static str| {
        (pod_spec(), prop::option::of(annotations(true))).prop_map(move |(spec, ann)| {
            let mut template =
                json!({ "spec": { "backoffLimit": 0, "template": { "spec": spec } } });
            if let Some(a) = ann {
                template["metadata"] = json!({ "annotations": a });
            }
            json!({ "name": name, "replicas": 1, "template": template })
        })
    };
    let rjobs = prop::sample::subsequence(RJOB_NAMES, 1..=3)
        .prop_flat_map(move |names| names.into_iter().map(rjob).collect::<Vec<_>>());
    (rjobs, prop::option::of(annotations(false))).prop_map(|(rjobs, ann)| {
        let mut meta = json!({ "name": "js" });
        if let Some(a) = ann {
            meta["annotations"] = Value::Object(a);
        }
        json!({ "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": meta, "spec": { "replicatedJobs": rjobs } })
    })
}

fn is_restart_field(path: &str) -> bool {
    path.ends_with("/restartPolicy") || path.ends_with("/restartPolicyRules")
}

/// Every injected rule list: action valid, exit codes sorted, unique, 1..=255 values.
fn check_rules(doc: &Value, path: &str) -> Result<(), TestCaseError> {
    if let Some(Value::Array(rules)) = doc.pointer(path) {
        for r in rules {
            prop_assert!(matches!(
                r["action"].as_str(),
                Some("Restart" | "RestartAllContainers")
            ));
            let vals: Vec<i64> = r["exitCodes"]["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_i64)
                .collect();
            prop_assert!(!vals.is_empty() && vals.len() <= 255, "{vals:?}");
            prop_assert!(
                vals.windows(2).all(|w| w[0] < w[1]),
                "sorted and unique: {vals:?}"
            );
            prop_assert!(vals.iter().all(|v| (0..=255).contains(v)));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn jobset_mutation_properties(doc in jobset(), ns_enabled in any::<bool>()) {
        let config = Config::default();
        let mut labels = BTreeMap::new();
        if ns_enabled {
            labels.insert("restart.jobset.dev/in-place".to_owned(), "enabled".to_owned());
        }
        let ctx = Environment { config: &config, namespace_labels: Some(&labels), namespace_opted_in: false, facts: ClusterFacts::default() };
        let raw = doc.to_string();
        let m = match mutate_jobset(&raw, &ctx) {
            Ok(m) => m,
            Err(d) => {
                // Generated annotations are all valid; only a replicated-jobs list naming an
                // absent replicated job, or a containers list naming a container that no
                // replicated job has, may be refused.
                let names: Vec<&str> = doc["spec"]["replicatedJobs"].as_array().into_iter().flatten().filter_map(|r| r["name"].as_str()).collect();
                let listed = doc.pointer("/metadata/annotations/restart.jobset.dev~1replicated-jobs").and_then(Value::as_str).unwrap_or_default();
                let absent_rjob = listed.split(',').any(|n| !names.contains(&n));
                // The typo is not among the containers the message says exist, and those do.
                let typo = d.message.split("no container or sidecar \"").nth(1).and_then(|t| t.split('"').next());
                let existing: Vec<String> = doc["spec"]["replicatedJobs"].as_array().into_iter().flatten()
                    .flat_map(|rj| ["containers", "initContainers"].map(|l| rj["template"]["spec"]["template"]["spec"][l].clone()))
                    .flat_map(|l| l.as_array().cloned().unwrap_or_default())
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect();
                let they_have: Vec<&str> = d.message.split("they have: ").nth(1).map(|t| t.split(", ").collect()).unwrap_or_default();
                let absent_container = typo.is_some_and(|t| !they_have.contains(&t))
                    && they_have.iter().all(|n| existing.iter().any(|e| e == n));
                prop_assert!(absent_rjob || absent_container, "unexpected denial: {}", d.message);
                return Ok(());
            }
        };
        // 1. the patch applies to the object it was computed from
        let out = apply(&doc, &m);
        // 2. idempotent
        let again = mutate_jobset(&out.to_string(), &ctx).map_err(|d| TestCaseError::fail(d.message))?;
        prop_assert!(again.patch.is_empty(), "second pass: {:?}", again.patch);
        // 3. only additions, and only of the fields the README (Opting in) names
        for path in changed_paths(&doc, &out) {
            prop_assert!(doc.pointer(&path).is_none(), "{path} existed and was changed");
            let allowed = path == "/metadata/annotations/restart.jobset.dev~1applied"
                || (path == "/metadata/annotations" && doc["metadata"].get("annotations").is_none())
                || (path.starts_with("/spec/replicatedJobs/") && is_restart_field(&path));
            prop_assert!(allowed, "changed a field outside the restart fields: {path}");
            if path.ends_with("/restartPolicyRules") {
                check_rules(&out, &path)?;
            }
        }
        // 4. user-set container fields are never changed (covered by "only additions", and
        //    a container that had one of the fields gets neither)
        for (i, rj) in doc["spec"]["replicatedJobs"].as_array().into_iter().flatten().enumerate() {
            for list in ["containers", "initContainers"] {
                for (j, c) in rj["template"]["spec"]["template"]["spec"][list].as_array().into_iter().flatten().enumerate() {
                    if c.get("restartPolicyRules").is_some() || (list == "containers" && c.get("restartPolicy").is_some()) {
                        let p = format!("/spec/replicatedJobs/{i}/template/spec/template/spec/{list}/{j}");
                        prop_assert_eq!(out.pointer(&p), Some(c), "user-set container changed");
                    }
                }
            }
        }
        // the summary and the annotation agree
        if let Some(s) = &m.summary {
            prop_assert_eq!(out.pointer("/metadata/annotations/restart.jobset.dev~1applied"), Some(&json!(s)));
        }
    }

    #[test]
    fn pod_mutation_properties(spec in pod_spec(), parent_ann in annotations(false), rjob_ann in prop::option::of(annotations(true))) {
        let config = Config::default();
        let ctx = Environment { config: &config, namespace_labels: None, namespace_opted_in: false, facts: ClusterFacts::default() };
        let to_map = |m: &Map<String, Value>| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).filter(|(k, _)| k.starts_with("restart.jobset.dev/")).collect::<BTreeMap<_, _>>();
        let mut parent = ParentJobSet { annotations: to_map(&parent_ann), replicated_jobs: BTreeMap::new() };
        if let Some(a) = &rjob_ann {
            parent.replicated_jobs.insert("workers".into(), to_map(a));
        }
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "js-workers-0-0-x", "labels": { "jobset.sigs.k8s.io/jobset-name": "js", "jobset.sigs.k8s.io/replicatedjob-name": "workers" } },
            "spec": spec,
        });
        let m = mutate_pod(&pod.to_string(), &ctx, &|_| Some(parent.clone()));
        let out = apply(&pod, &m);
        let again = mutate_pod(&out.to_string(), &ctx, &|_| Some(parent.clone()));
        prop_assert!(again.patch.is_empty(), "second pass: {:?}", again.patch);
        prop_assert_eq!(&out["spec"]["restartPolicy"], &pod["spec"]["restartPolicy"], "pod restartPolicy never changes");
        for path in changed_paths(&pod, &out) {
            prop_assert!(pod.pointer(&path).is_none(), "{path} existed and was changed");
            prop_assert!(path.starts_with("/spec/") && is_restart_field(&path) && path != "/spec/restartPolicy", "changed {path}");
            if path.ends_with("/restartPolicyRules") {
                check_rules(&out, &path)?;
            }
        }
    }
}
