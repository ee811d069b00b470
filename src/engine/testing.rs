//! Builders shared by the engine's unit tests.

use serde_json::{Value, json};

use super::annotations;
use super::config::Config;
use super::{ClusterFacts, Denial, Environment, Mutation, mutate_jobset};

pub(super) fn env(config: &Config) -> Environment<'_> {
    Environment {
        config,
        namespace_labels: None,
        namespace_opted_in: false,
        // A cluster whose API server accepts RestartAllContainers (1.36); the unknown
        // capability has its own tests (resolve).
        facts: ClusterFacts {
            restart_all_containers: Some(true),
            ..ClusterFacts::default()
        },
    }
}

pub(super) fn containers(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({ "name": format!("{prefix}{i}"), "image": "x:1" }))
        .collect()
}

/// An opted-in JobSet with one replicated job per entry of `rjobs` (name, containers).
pub(super) fn jobset(annotations: Value, rjobs: Vec<(&str, Vec<Value>)>) -> Value {
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

pub(super) fn enabled() -> Value {
    json!({ annotations::IN_PLACE: "enabled" })
}

pub(super) fn mutate(js: &Value) -> Result<Mutation, Denial> {
    let config = Config::default();
    mutate_jobset(&js.to_string(), &env(&config))
}

/// Applies the mutation and reviews the result again: nothing more may change.
pub(super) fn assert_idempotent(js: &Value, m: &Mutation) -> Value {
    let mut out = js.clone();
    m.patch.apply(&mut out).unwrap_or_else(|e| panic!("{e}"));
    let again = mutate(&out).unwrap_or_else(|d| panic!("{d}"));
    assert!(again.patch.is_empty(), "{:?}", again.patch);
    assert_eq!(again.summary, m.summary);
    out
}
