//! Golden tests: the project's own JobSet manifests (tests/fixtures/jobsets) mutated by the
//! engine. Each case asserts exactly which JSON paths change, the warnings and the summary,
//! and snapshots the full result (tests/snapshots) so any drift is reviewed.

use std::collections::BTreeMap;

use jobset_restart_webhook::engine::{
    ClusterFacts, Config, DenialReason, Environment, ParentJobSet, mutate_jobset, mutate_pod,
};
use serde_json::{Value, json};

use testkit::engine_support::{apply, changed_paths};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text).expect("fixture is valid YAML")
}

fn config() -> Config {
    Config::from_yaml(&fixture("config.yaml"), "config.yaml").expect("fixture config is valid")
}

const RJ0: &str = "/spec/replicatedJobs/0/template/spec/template/spec";
const RJ1: &str = "/spec/replicatedJobs/1/template/spec/template/spec";
const RJ2: &str = "/spec/replicatedJobs/2/template/spec/template/spec";
const APPLIED: &str = "/metadata/annotations/restart.jobset.dev~1applied";
/// The engine runs here without a cluster, as the offline `mutate` does: the API server's
/// capability is unknown, so the default action is Restart, with this warning.
const UNKNOWN: &str = jobset_restart_webhook::engine::resolve::UNKNOWN_CAPABILITY;

struct Case {
    file: &'static str,
    paths: Vec<String>,
    summary: Option<&'static str>,
    warnings: Vec<&'static str>,
}

fn container(base: &str, i: usize) -> [String; 2] {
    [
        format!("{base}/containers/{i}/restartPolicy"),
        format!("{base}/containers/{i}/restartPolicyRules"),
    ]
}

fn cases() -> Vec<Case> {
    let pod_rp = |base: &str| format!("{base}/restartPolicy");
    let mut v = Vec::new();
    let paths = |parts: Vec<Vec<String>>| {
        let mut p: Vec<String> = parts.into_iter().flatten().collect();
        p.sort();
        p
    };
    v.push(Case {
        file: "single.yaml",
        paths: paths(vec![
            vec![APPLIED.into(), pod_rp(RJ0)],
            container(RJ0, 0).to_vec(),
        ]),
        summary: Some("workers/trainer=Restart:NotIn(0)"),
        warnings: vec![UNKNOWN],
    });
    v.push(Case {
        file: "multi.yaml",
        paths: paths(vec![
            vec![APPLIED.into(), pod_rp(RJ1)],
            container(RJ1, 0).to_vec(),
            container(RJ1, 1).to_vec(),
            container(RJ2, 0).to_vec(),
        ]),
        summary: Some(
            "workers/trainer=Restart:In(42,43,128-143), workers/logger=Restart:In(42,43,128-143), evaluators/eval=Restart:NotIn(0)",
        ),
        warnings: vec![],
    });
    v.push(Case {
        file: "sidecar.yaml",
        paths: paths(vec![
            vec![APPLIED.into(), pod_rp(RJ0), format!("{RJ0}/initContainers/1/restartPolicyRules")],
            container(RJ0, 0).to_vec(),
        ]),
        summary: Some("workers/worker=Restart:NotIn(0), workers/agent=Restart:NotIn(0)"),
        warnings: vec![
            UNKNOWN,
            "replicated job \"workers\": init container \"setup\" is not a sidecar (restartPolicy: Always); only regular containers and sidecars get restart rules; left unchanged",
        ],
    });
    v.push(Case {
        file: "user-set.yaml",
        paths: paths(vec![vec![APPLIED.into(), pod_rp(RJ0)], container(RJ0, 2).to_vec()]),
        summary: Some("workers/plain=Restart:NotIn(0,1)"),
        warnings: vec![
            UNKNOWN,
            "replicated job \"workers\": container \"custom\" already sets restartPolicy or restartPolicyRules; left unchanged",
            "replicated job \"workers\": container \"ruled\" already sets restartPolicy or restartPolicyRules; left unchanged",
        ],
    });
    v.push(Case {
        file: "onfailure.yaml",
        paths: paths(vec![vec![APPLIED.into()], container(RJ0, 0).to_vec()]),
        summary: Some("workers/trainer=Restart:NotIn(0)"),
        warnings: vec![
            UNKNOWN,
            "replicated job \"workers\": the pod template sets restartPolicy: OnFailure, so every in-place restart counts against the Job's backoffLimit; set it to Never to avoid that",
        ],
    });
    v.push(Case {
        file: "pod-failure-policy.yaml",
        paths: paths(vec![vec![APPLIED.into()], container(RJ0, 0).to_vec()]),
        summary: Some("workers/trainer=Restart:In(1,42,128-143)"),
        warnings: vec![UNKNOWN],
    });
    v.push(Case {
        file: "all-user-set.yaml",
        paths: vec![],
        summary: None,
        warnings: vec![
            UNKNOWN,
            "replicated job \"workers\": container \"custom\" already sets restartPolicy or restartPolicyRules; left unchanged",
            "replicated job \"workers\": container \"ruled\" already sets restartPolicy or restartPolicyRules; left unchanged",
            "replicated job \"workers\": no container gets the restart rule, so its pod template is left as it is",
            "in-place restart is enabled for this JobSet, but no container gets the restart rule, so the JobSet is left as it is",
        ],
    });
    v.push(Case {
        file: "disabled.yaml",
        paths: vec![],
        summary: None,
        warnings: vec![],
    });
    v.push(Case {
        file: "preset.yaml",
        paths: paths(vec![
            vec![APPLIED.into(), pod_rp(RJ0)],
            container(RJ0, 0).to_vec(),
        ]),
        summary: Some("workers/trainer=RestartAllContainers:NotIn(0,2)"),
        warnings: vec![],
    });
    v.push(Case {
        file: "unknown-fields.yaml",
        paths: paths(vec![
            vec![APPLIED.into(), pod_rp(RJ0)],
            container(RJ0, 0).to_vec(),
        ]),
        summary: Some("workers/trainer=Restart:NotIn(0)"),
        warnings: vec![UNKNOWN],
    });
    v
}

#[test]
fn golden_jobsets() {
    let config = config();
    let ctx = Environment {
        config: &config,
        namespace_labels: None,
        namespace_opted_in: false,
        facts: ClusterFacts::default(),
    };
    for case in cases() {
        let doc = yaml_docs(&fixture(&format!("jobsets/{}", case.file))).remove(0);
        let m = mutate_jobset(&doc.to_string(), &ctx)
            .unwrap_or_else(|d| panic!("{}: denied: {d}", case.file));
        let out = apply(&doc, &m);
        assert_eq!(
            changed_paths(&doc, &out),
            case.paths,
            "{}: changed paths",
            case.file
        );
        assert_eq!(m.summary.as_deref(), case.summary, "{}: summary", case.file);
        assert_eq!(m.warnings, case.warnings, "{}: warnings", case.file);
        if let Some(s) = case.summary {
            assert_eq!(
                out.pointer(APPLIED),
                Some(&json!(s)),
                "{}: applied annotation",
                case.file
            );
        }
        // Idempotent: the engine on its own output changes nothing.
        let again = mutate_jobset(&out.to_string(), &ctx).expect("own output is accepted");
        assert!(
            again.patch.is_empty(),
            "{}: second pass patched {:?}",
            case.file,
            again.patch
        );
        assert_eq!(again.summary, m.summary, "{}: summary is stable", case.file);

        let snapshot = json!({ "warnings": m.warnings, "patch": m.patch, "mutated": out });
        let name = case.file.trim_end_matches(".yaml");
        insta::assert_snapshot!(
            name,
            serde_json::to_string_pretty(&snapshot).unwrap_or_default()
        );
    }
}

#[test]
fn injected_rule_shapes_are_the_api_shape() {
    let config = config();
    let ctx = Environment {
        config: &config,
        namespace_labels: None,
        namespace_opted_in: false,
        facts: ClusterFacts::default(),
    };
    let doc = yaml_docs(&fixture("jobsets/multi.yaml")).remove(0);
    let out = apply(
        &doc,
        &mutate_jobset(&doc.to_string(), &ctx).expect("allowed"),
    );
    let c = out
        .pointer(&format!("{RJ1}/containers/0"))
        .expect("container");
    assert_eq!(c["restartPolicy"], json!("Never"));
    assert_eq!(
        c["restartPolicyRules"],
        json!([{ "action": "Restart", "exitCodes": { "operator": "In", "values": [42, 43, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 140, 141, 142, 143] } }])
    );
    // the driver is not selected and keeps its shape exactly
    assert_eq!(
        out["spec"]["replicatedJobs"][0],
        doc["spec"]["replicatedJobs"][0]
    );
}

#[test]
fn golden_pod_resolves_from_its_parent() {
    let config = config();
    let docs = yaml_docs(&fixture("pods.yaml"));
    let parent = ParentJobSet::from_jobset_json(&docs[0].to_string()).expect("parent parses");
    let ctx = Environment {
        config: &config,
        namespace_labels: None,
        namespace_opted_in: false,
        facts: ClusterFacts::default(),
    };
    let pod = &docs[1];
    let m = mutate_pod(&pod.to_string(), &ctx, &|name| {
        (name == "train").then(|| parent.clone())
    });
    let out = apply(pod, &m);
    assert_eq!(
        changed_paths(pod, &out),
        [
            "/spec/containers/0/restartPolicy",
            "/spec/containers/0/restartPolicyRules"
        ]
    );
    assert_eq!(
        out["spec"]["restartPolicy"],
        json!("OnFailure"),
        "a pod's restartPolicy is never changed"
    );
    assert_eq!(m.summary.as_deref(), Some("trainer=Restart:In(42)"));
    assert_eq!(m.warnings, [UNKNOWN]);
    // a pod created from an already-mutated template gets an empty patch, and no warning
    // but the default action's
    let again = mutate_pod(&out.to_string(), &ctx, &|_| Some(parent.clone()));
    assert!(
        again.patch.is_empty() && again.warnings == [UNKNOWN],
        "{again:?}"
    );
    // an unknown parent leaves the pod alone, with a warning and the flag for the metric
    let unknown = mutate_pod(&pod.to_string(), &ctx, &|_| None);
    assert!(unknown.patch.is_empty() && unknown.parent_unknown);
    assert_eq!(
        unknown.warnings,
        ["pod left unchanged: its JobSet \"train\" is not known to the webhook yet"]
    );
}

#[test]
fn namespace_label_enables_unannotated_jobset() {
    let config = Config::default();
    let mut labels = BTreeMap::new();
    labels.insert(
        "restart.jobset.dev/in-place".to_owned(),
        "enabled".to_owned(),
    );
    let ctx = Environment {
        config: &config,
        namespace_labels: Some(&labels),
        namespace_opted_in: false,
        facts: ClusterFacts::default(),
    };
    let doc = yaml_docs(&fixture("jobsets/disabled.yaml")).remove(0);
    let m = mutate_jobset(&doc.to_string(), &ctx).expect("allowed");
    assert_eq!(
        m.summary.as_deref(),
        Some("workers/trainer=Restart:NotIn(0)")
    );
}

#[test]
fn invalid_annotations_are_denied_with_422_and_the_message() {
    let config = Config::default();
    let ctx = Environment {
        config: &config,
        namespace_labels: None,
        namespace_opted_in: false,
        facts: ClusterFacts::default(),
    };
    let mut doc = yaml_docs(&fixture("jobsets/single.yaml")).remove(0);
    doc["metadata"]["annotations"]["restart.jobset.dev/on-exit-codes"] = json!("42,abc");
    let d = mutate_jobset(&doc.to_string(), &ctx).unwrap_err();
    assert_eq!(d.reason, DenialReason::Invalid);
    assert_eq!(
        d.message,
        "restart.jobset.dev/on-exit-codes: \"42,abc\": \"abc\" is not an exit code (0-255) or range a-b"
    );
    // an override on a replicated job names the replicated job
    let mut doc = yaml_docs(&fixture("jobsets/single.yaml")).remove(0);
    doc["spec"]["replicatedJobs"][0]["template"]["metadata"] =
        json!({"annotations": {"restart.jobset.dev/action": "Reboot"}});
    let d = mutate_jobset(&doc.to_string(), &ctx).unwrap_err();
    assert_eq!(
        d.message,
        "replicated job \"workers\": restart.jobset.dev/action: \"Reboot\": allowed values are Restart or RestartAllContainers"
    );
    // a replicated-jobs list naming a replicated job that does not exist
    let mut doc = yaml_docs(&fixture("jobsets/single.yaml")).remove(0);
    doc["metadata"]["annotations"]["restart.jobset.dev/replicated-jobs"] = json!("wrkers");
    let d = mutate_jobset(&doc.to_string(), &ctx).unwrap_err();
    assert_eq!(
        d.message,
        "restart.jobset.dev/replicated-jobs: \"wrkers\": this JobSet has no replicated job \"wrkers\"; it has: workers"
    ); // a containers list naming a container that no selected replicated job has (a typo)
    let mut doc = yaml_docs(&fixture("jobsets/single.yaml")).remove(0);
    doc["metadata"]["annotations"]["restart.jobset.dev/containers"] = json!("trainr");
    let d = mutate_jobset(&doc.to_string(), &ctx).unwrap_err();
    assert_eq!(d.reason, DenialReason::Invalid);
    assert_eq!(
        d.message,
        "restart.jobset.dev/containers: \"trainr\": no container or sidecar \"trainr\" in the replicated jobs it applies to; they have: trainer"
    );
}

#[test]
fn pruning_crd_with_pod_target_leaves_the_containers_to_the_pods() {
    let mut config = Config::default();
    config.targets.pods = true;
    // A probed cluster: its API server accepts RestartAllContainers, its CRD prunes.
    let facts = ClusterFacts {
        jobset_crd_keeps_rules: Some(false),
        restart_all_containers: Some(true),
        ..ClusterFacts::default()
    };
    let ctx = Environment {
        config: &config,
        namespace_labels: None,
        namespace_opted_in: false,
        facts: facts.clone(),
    };
    let doc = yaml_docs(&fixture("jobsets/single.yaml")).remove(0);
    let m = mutate_jobset(&doc.to_string(), &ctx).expect("allowed");
    let out = apply(&doc, &m);
    // Only what the CRD keeps: the pod template's restartPolicy and the summary.
    assert_eq!(
        changed_paths(&doc, &out),
        [APPLIED.to_owned(), format!("{RJ0}/restartPolicy")]
    );
    assert_eq!(
        m.summary.as_deref(),
        Some("workers/trainer=RestartAllContainers:NotIn(0)")
    );
    assert_eq!(
        m.warnings,
        [
            "the installed JobSet CRD predates restartPolicyRules (JobSet < v0.10) and would prune them: the rules are injected into this JobSet's pods instead (pod target)"
        ]
    );
    // ...so the pods made from that template get the rules.
    let parent = ParentJobSet::from_jobset_json(&out.to_string()).expect("parent");
    let template = out.pointer(RJ0).cloned().unwrap_or_default();
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "single-workers-0-0-x", "labels": {"jobset.sigs.k8s.io/jobset-name": "single", "jobset.sigs.k8s.io/replicatedjob-name": "workers"}},
        "spec": template});
    let pm = mutate_pod(&pod.to_string(), &ctx, &|_| Some(parent.clone()));
    let pod_out = apply(&pod, &pm);
    assert_eq!(
        changed_paths(&pod, &pod_out),
        [
            "/spec/containers/0/restartPolicy",
            "/spec/containers/0/restartPolicyRules"
        ]
    );
    // Without the pod target the JobSet is mutated as usual, with a warning that the CRD prunes.
    let config = Config::default();
    let ctx = Environment {
        config: &config,
        namespace_labels: None,
        namespace_opted_in: false,
        facts,
    };
    let m = mutate_jobset(&doc.to_string(), &ctx).expect("allowed");
    assert_eq!(m.patch.len(), 4);
    assert!(
        m.warnings[0].contains("the injected rules will not be stored"),
        "{:?}",
        m.warnings
    );
}
