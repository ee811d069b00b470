use serde_json::json;

use super::*;

fn pod_with(rules: Option<Value>) -> Value {
    let mut p = probe_pod("Restart");
    match rules {
        Some(r) => p["spec"]["containers"][0]["restartPolicyRules"] = r,
        None => {
            if let Some(c) = p["spec"]["containers"][0].as_object_mut() {
                c.remove("restartPolicyRules");
                c.remove("restartPolicy");
            }
        }
    }
    p
}

fn api(code: u16, message: &str) -> Failure {
    Failure::Api {
        code,
        message: message.to_owned(),
    }
}

#[test]
fn probe_pod_shape() {
    let p = probe_pod("RestartAllContainers");
    assert_eq!(
        p.pointer("/spec/containers/0/restartPolicyRules/0/action"),
        Some(&json!("RestartAllContainers"))
    );
    assert_eq!(
        p.pointer("/spec/containers/0/restartPolicy"),
        Some(&json!("Never"))
    );
    assert!(p.pointer("/metadata/name").is_none(), "generateName only");
}

#[test]
fn restart_probe() {
    let kept = Ok(probe_pod("Restart"));
    assert_eq!(interpret_restart_probe(&kept).value, Some(true));
    let dropped = Ok(pod_with(None));
    let f = interpret_restart_probe(&dropped);
    assert_eq!(f.value, Some(false));
    assert!(f.detail.contains("ContainerRestartRules"), "{}", f.detail);
    let forbidden = Err(api(
        422,
        "Pod \"x\" is invalid: spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers",
    ));
    assert_eq!(interpret_restart_probe(&forbidden).value, Some(false));
    for e in [
        api(403, "pods is forbidden: User cannot create resource"),
        api(422, "metadata.name: Invalid value"),
        Failure::Other("connection refused".into()),
    ] {
        let f = interpret_restart_probe(&Err(e.clone()));
        assert_eq!(f.value, None, "{e}");
        assert!(f.detail.contains(&e.to_string()));
    }
}

#[test]
fn restart_all_probe() {
    assert_eq!(
        interpret_restart_all_probe(&Ok(probe_pod("RestartAllContainers"))).value,
        Some(true)
    );
    // kept, but not the action we asked for: not accepted
    assert_eq!(
        interpret_restart_all_probe(&Ok(probe_pod("Restart"))).value,
        Some(false)
    );
    assert_eq!(
        interpret_restart_all_probe(&Ok(pod_with(None))).value,
        Some(false)
    );
    // the exact text of a 1.36 API server with the gate off
    let rejected = Err(api(
        422,
        "Pod \"jobset-restart-webhook-probe-x\" is invalid: spec.containers[0].restartPolicyRules[0].action: Unsupported value: \"RestartAllContainers\": supported values: \"Restart\"",
    ));
    let f = interpret_restart_all_probe(&rejected);
    assert_eq!(f.value, Some(false));
    assert!(f.detail.contains("RestartAllContainersOnContainerExits"));
    assert!(f.detail.contains("Unsupported value"));
    assert_eq!(
        interpret_restart_all_probe(&Err(api(500, "etcd is down"))).value,
        None
    );
}

/// The JobSet CRD's schema, cut down to the path that matters.
fn crd(container_props: Value) -> Value {
    json!({"spec": {"versions": [{"name": "v1alpha2", "schema": {"openAPIV3Schema": {
    "type": "object",
    "properties": {"spec": {"properties": {"replicatedJobs": {"type": "array", "items": {
        "properties": {"name": {"type": "string"}, "template": {"properties": {"spec": {
            "properties": {"template": {"properties": {"spec": {"properties": {
                "containers": {"type": "array", "items": {"properties": container_props}}
            }}}}}}}}}}}}}}}}}]}})
}

#[test]
fn crd_schema_walk() {
    let new =
        crd(json!({"name": {}, "restartPolicy": {}, "restartPolicyRules": {"type": "array"}}));
    assert_eq!(crd_keeps_rules(&new), Ok(true));
    let old = crd(json!({"name": {}, "restartPolicy": {}}));
    assert_eq!(crd_keeps_rules(&old), Ok(false));

    let mut preserving = old.clone();
    preserving["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["replicatedJobs"]["x-kubernetes-preserve-unknown-fields"] = json!(true);
    assert_eq!(crd_keeps_rules(&preserving), Ok(true));

    let mut other_version = new.clone();
    other_version["spec"]["versions"][0]["name"] = json!("v1");
    assert!(
        crd_keeps_rules(&other_version)
            .unwrap_err()
            .to_string()
            .contains("v1alpha2")
    );
    let truncated = json!({"spec": {"versions": [{"name": "v1alpha2", "schema": {
        "openAPIV3Schema": {"properties": {"spec": {"properties": {}}}}}}]}});
    assert_eq!(
        crd_keeps_rules(&truncated).map_err(|e| e.to_string()),
        Err("no properties.replicatedJobs under .spec".to_owned())
    );
    assert!(crd_keeps_rules(&json!({})).is_err());
}

#[test]
fn crd_answers() {
    let (i, k) = interpret_crd(&Ok(crd(json!({"restartPolicyRules": {}}))));
    assert_eq!((i.value, k.value), (Some(true), Some(true)));
    let (i, k) = interpret_crd(&Ok(crd(json!({"name": {}}))));
    assert_eq!((i.value, k.value), (Some(true), Some(false)));
    assert!(k.detail.contains("pod target"));
    let (i, k) = interpret_crd(&Err(api(404, "not found")));
    assert_eq!((i.value, k.value), (Some(false), None));
    let (i, k) = interpret_crd(&Err(api(403, "forbidden")));
    assert_eq!((i.value, k.value), (None, None));
}

#[test]
fn facts_and_last_known_answers() {
    let good = Capabilities {
        server_version: Some("v1.36.2".into()),
        restart_policy_rules: Finding::yes("kept"),
        restart_all_containers: Finding::no("rejected"),
        jobset_crd_installed: Finding::yes("installed"),
        jobset_crd_keeps_rules: Finding::no("prunes"),
    };
    assert_eq!(
        good.facts(),
        ClusterFacts {
            restart_all_containers: Some(false),
            jobset_crd_keeps_rules: Some(false),
            nodes: None,
        }
    );
    let failed = Capabilities {
        server_version: None,
        restart_policy_rules: Finding::unknown("timeout"),
        restart_all_containers: Finding::unknown("timeout"),
        jobset_crd_installed: Finding::unknown("timeout"),
        jobset_crd_keeps_rules: Finding::unknown("timeout"),
    };
    let merged = failed.clone().over(&good);
    assert_eq!(merged.facts(), good.facts());
    assert_eq!(merged.server_version.as_deref(), Some("v1.36.2"));
    assert_eq!(
        merged.restart_all_containers.detail,
        "timeout (keeping the last known answer)"
    );
    // a real answer replaces the last one
    let changed = Capabilities {
        restart_all_containers: Finding::yes("accepted"),
        ..failed.clone()
    }
    .over(&good);
    assert_eq!(changed.facts().restart_all_containers, Some(true));
    // nothing known yet: the engine trusts the config
    assert_eq!(failed.facts(), ClusterFacts::default());
    // a CRD that is not installed says nothing about pruning
    let gone = Capabilities {
        jobset_crd_installed: Finding::no("not installed"),
        jobset_crd_keeps_rules: Finding::no("stale"),
        ..good
    };
    assert_eq!(gone.facts().jobset_crd_keeps_rules, None);
}

#[test]
fn namespaces() {
    assert!(valid_namespace("jobset-restart-webhook"));
    assert!(!valid_namespace("a/b"));
    assert!(!valid_namespace(""));
    assert!(!valid_namespace("-a"));
    assert!(!valid_namespace("A"));
}
