use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::engine::ClusterFacts;
use crate::engine::config::Config;
use crate::engine::testing::{containers, env};

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
    let env = Environment {
        config: &config,
        namespace_labels: None,
        namespace_opted_in: false,
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
    let on = |pool: &str| json!({"nodeSelector": {"pool": pool}, "containers": containers("c", 1)});
    let m = mutate_pod(&pod(on("gpu")), &env, &|_| Some(parent(None)));
    assert_eq!(
        m.summary.as_deref(),
        Some("c0=RestartAllContainers:NotIn(0)")
    );
    let m = mutate_pod(&pod(on("cpu")), &env, &|_| Some(parent(None)));
    assert_eq!(m.summary.as_deref(), Some("c0=Restart:NotIn(0)"));
    // a pod is never denied: an impossible ask leaves it unchanged, with the reason
    let m = mutate_pod(&pod(on("cpu")), &env, &|_| {
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
    let m = mutate_pod(&pod(json!({"nodeSelector": 7})), &env, &|_| {
        Some(disabled.clone())
    });
    assert_eq!(m, Mutation::default());
    let m = mutate_pod(&pod(json!({"nodeSelector": 7})), &env, &|_| {
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
    let m = mutate_pod(&pod(MAX_CHANGED_CONTAINERS), &env(&config), &|_| {
        Some(parent.clone())
    });
    assert_eq!(m.patch.len(), 2 * MAX_CHANGED_CONTAINERS);
    let m = mutate_pod(&pod(5000), &env(&config), &|_| Some(parent.clone()));
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
