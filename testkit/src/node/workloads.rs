//! Pods and JobSets for the node tests and the restart bench, and how to read them back.

use super::*;

/// A pod template for the node: host network (no CNI), no service-account token (fewer
/// mounts), a short grace period, and `restartPolicy: Never` spelled out (what the webhook
/// would set), so that a JobSet the webhook does not see is not defaulted to `OnFailure`,
/// whose kubelet restarts would blur the "recreate" case.
pub fn node_pod_spec(containers: Value) -> Value {
    json!({
        "restartPolicy": "Never",
        "hostNetwork": true,
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": 2,
        "containers": containers,
    })
}

/// A workload container: `workload -name NAME ARGS...`.
pub fn workload_container(name: &str, args: &[&str]) -> Value {
    let mut all = vec!["-name".to_owned(), name.to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    json!({
        "name": name,
        "image": WORKLOAD_IMAGE,
        "imagePullPolicy": "Never",
        "args": all,
    })
}

/// A JobSet of `replicas` one-pod Jobs on the node (backoffLimit 0, JobSet `maxRestarts`),
/// pod spec from [`node_pod_spec`] with an emptyDir `data` at /data in every container, the
/// JobSet's job index in `JOB_INDEX`, and `annotations` on the JobSet.
pub fn node_jobset(
    name: &str,
    replicas: u32,
    max_restarts: u32,
    annotations: &[(&str, &str)],
    mut pod: Value,
) -> Value {
    let mount = json!([{"name": "data", "mountPath": "/data"}]);
    let env = json!([{"name": "JOB_INDEX", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.labels['jobset.sigs.k8s.io/job-index']"}}}]);
    for list in ["initContainers", "containers"] {
        if let Some(containers) = pod[list].as_array_mut() {
            for c in containers {
                if c["volumeMounts"].is_null() {
                    c["volumeMounts"] = mount.clone();
                }
                c["env"] = env.clone();
            }
        }
    }
    let mut volumes = vec![json!({"name": "data", "emptyDir": {}})];
    if let Some(extra) = pod["volumes"].as_array() {
        volumes.extend(extra.iter().cloned());
    }
    pod["volumes"] = json!(volumes);
    let mut js = json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": {"maxRestarts": max_restarts},
            "replicatedJobs": [{
                "name": "workers",
                "replicas": replicas,
                "template": {"spec": {
                    "parallelism": 1,
                    "completions": 1,
                    "backoffLimit": 0,
                    "template": {"spec": pod}
                }}
            }]
        }
    });
    for (k, v) in annotations {
        js["metadata"]["annotations"][*k] = json!(v);
    }
    js
}

/// Whether the JobSet has the condition `kind` set to True.
pub fn jobset_condition(js: &Value, kind: &str) -> bool {
    js["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

/// One line per pod: name, uid, phase, node, and per container state and restart count.
pub fn pod_summary(pods: &[Value]) -> String {
    pods.iter()
        .map(|p| {
            let statuses: Vec<String> = ["initContainerStatuses", "containerStatuses"]
                .iter()
                .flat_map(|k| p["status"][*k].as_array().cloned().unwrap_or_default())
                .map(|s| {
                    let state = s["state"]
                        .as_object()
                        .and_then(|o| o.keys().next().cloned())
                        .unwrap_or_default();
                    format!(
                        "{}={state}/r{}",
                        s["name"].as_str().unwrap_or("?"),
                        s["restartCount"]
                    )
                })
                .collect();
            format!(
                "\n  {} uid={} phase={} node={} [{}]",
                p["metadata"]["name"].as_str().unwrap_or("?"),
                p["metadata"]["uid"].as_str().unwrap_or("?"),
                p["status"]["phase"].as_str().unwrap_or("?"),
                p["spec"]["nodeName"].as_str().unwrap_or("-"),
                statuses.join(" ")
            )
        })
        .collect()
}
