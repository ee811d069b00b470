use super::*;

const JOBSET: &str = r#"{
  "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
  "metadata": {
    "name": "train", "namespace": "ml",
    "annotations": {
      "restart.jobset.dev/in-place": "enabled",
      "restart.jobset.dev/applied": "workers/trainer=Restart:NotIn(0)",
      "kubectl.kubernetes.io/last-applied-configuration": "{\"huge\": true}",
      "restart.jobset.dev\/on-exit-codes": "42"
    },
    "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
  },
  "spec": {
    "replicatedJobs": [
      {"name": "workers", "replicas": 2, "template": {
        "metadata": {"annotations": {"restart.jobset.dev/containers": "trainer", "other": "x"}},
        "spec": {"template": {"spec": {"containers": [{"name": "trainer", "image": "i"}]}}}}},
      {"name": "driver", "template": {"spec": {}}},
      {"template": {"metadata": {"annotations": {"restart.jobset.dev/in-place": "disabled"}}}}
    ]
  },
  "status": {"restarts": 0}
}"#;

#[test]
fn keeps_only_restart_annotations_of_named_replicated_jobs() {
    let p = ParentJobSet::from_jobset_json(JOBSET).unwrap_or_else(|e| panic!("{e}"));
    let keys: Vec<&str> = p.annotations.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "restart.jobset.dev/in-place",
            "restart.jobset.dev/on-exit-codes"
        ],
        "escaped keys are read too; applied and foreign keys are dropped"
    );
    assert_eq!(p.replicated_jobs.len(), 2, "unnamed jobs are skipped");
    assert_eq!(
        p.replicated_jobs["workers"],
        BTreeMap::from([(
            "restart.jobset.dev/containers".to_owned(),
            "trainer".to_owned()
        )])
    );
    assert!(p.replicated_jobs["driver"].is_empty());
}

#[test]
fn a_jobset_already_read_gives_the_same_view() {
    let doc: JobSetDoc<'_> = serde_json::from_str(JOBSET).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ParentJobSet::from_doc(&doc),
        ParentJobSet::from_jobset_json(JOBSET).unwrap_or_else(|e| panic!("{e}"))
    );
}

#[test]
fn sparse_and_null_fields_read_as_empty() {
    for doc in [
        r#"{}"#,
        r#"{"metadata": null, "spec": null}"#,
        r#"{"metadata": {"annotations": null}, "spec": {"replicatedJobs": null}}"#,
        r#"{"spec": {"replicatedJobs": [{"name": "w", "template": {"metadata": null}}]}}"#,
    ] {
        let p = ParentJobSet::from_jobset_json(doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
        assert!(p.annotations.is_empty(), "{doc}");
        assert!(p.replicated_jobs.values().all(BTreeMap::is_empty), "{doc}");
    }
    // A wrongly typed annotation value is an error (the API server never sends one).
    assert!(
        ParentJobSet::from_jobset_json(
            r#"{"metadata": {"annotations": {"restart.jobset.dev/in-place": 1}}}"#
        )
        .is_err()
    );
}
