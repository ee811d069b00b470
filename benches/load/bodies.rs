//! Realistic AdmissionReview bodies, as kube-apiserver sends them for a JobSet CREATE (after
//! the built-in admission plugins, before JobSet's own defaulting) and for a pod that the Job
//! controller creates for a JobSet. `managedFields` are left out (they roughly double an
//! object; the size-growth table covers bigger bodies).

use serde_json::{Value, json};

/// One training container with the usual env, resources, probes and mounts (~0.9 KB of JSON).
fn container(rjob: usize, i: usize) -> Value {
    let mut env: Vec<Value> = (0..8)
        .map(
            |e| json!({"name": format!("TRAIN_ENV_{e}"), "value": format!("value-{e}-{rjob}-{i}")}),
        )
        .collect();
    env.push(json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}));
    json!({
        "name": if i == 0 { "trainer".to_owned() } else { format!("sidecar-{i}") },
        "image": format!("registry.example/ml/trainer-{i}:2026.11.3"),
        "command": ["python", "-m", "train"],
        "args": ["--epochs", "100", "--checkpoint-dir", "/data/ckpt", "--rank-from-env"],
        "env": env,
        "resources": {
            "limits": {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "8"},
            "requests": {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "8"}
        },
        "ports": [{"containerPort": 8080 + i, "name": format!("metrics-{i}"), "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080 + i}, "periodSeconds": 10},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    })
}

/// A JobSet opted in by annotation, with `rjobs` replicated jobs of `containers` containers.
pub fn jobset(name: &str, rjobs: usize, containers: usize) -> Value {
    json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": "6f1c9e0a-4f0e-4d59-9a39-2f1d8f3c1a01",
            "generation": 1,
            "creationTimestamp": "2026-11-03T10:00:00Z",
            "labels": {"team": "ml-platform", "app.kubernetes.io/part-of": "training"},
            "annotations": {"restart.jobset.dev/in-place": "enabled"}
        },
        "spec": {
            "failurePolicy": {"maxRestarts": 3},
            "replicatedJobs": (0..rjobs).map(|r| json!({
                "name": format!("workers-{r}"),
                "replicas": 4,
                "template": {"spec": {
                    "parallelism": 2,
                    "completions": 2,
                    "backoffLimit": 0,
                    "template": {"spec": {
                        "containers": (0..containers).map(|i| container(r, i)).collect::<Vec<_>>(),
                        "volumes": [{"name": "data", "emptyDir": {}}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
                        "nodeSelector": {"cloud.example/accelerator": "h100"},
                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
                    }}
                }}
            })).collect::<Vec<_>>()
        }
    })
}

/// The small JobSet: one replicated job, one container with a command and resources.
pub fn small_jobset() -> Value {
    let mut js = jobset("train-small", 1, 1);
    js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"] = json!({
        "containers": [{
            "name": "trainer",
            "image": "registry.example/ml/trainer:2026.11.3",
            "command": ["python", "-m", "train", "--epochs", "10"],
            "resources": {"limits": {"cpu": "4", "memory": "16Gi"}}
        }]
    });
    js
}

/// A pod of replicated job `workers-0` of [`jobset`]`("train-large", 8, 3)`, as the Job
/// controller creates it, after the built-in admission plugins (service account volume,
/// default tolerations).
pub fn pod() -> Value {
    let mut containers: Vec<Value> = (0..3).map(|i| container(0, i)).collect();
    for c in &mut containers {
        c["terminationMessagePath"] = json!("/dev/termination-log");
        c["terminationMessagePolicy"] = json!("File");
        c["imagePullPolicy"] = json!("IfNotPresent");
        if let Some(mounts) = c["volumeMounts"].as_array_mut() {
            mounts.push(json!({"name": "kube-api-access-x7k2p", "readOnly": true,
                               "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}));
        }
    }
    let labels = json!({
        "batch.kubernetes.io/controller-uid": "0b2c7f1e-9d1a-4c55-8a0e-5b7f3c2d9e10",
        "batch.kubernetes.io/job-completion-index": "1",
        "batch.kubernetes.io/job-name": "train-large-workers-0-0",
        "controller-uid": "0b2c7f1e-9d1a-4c55-8a0e-5b7f3c2d9e10",
        "job-name": "train-large-workers-0-0",
        "jobset.sigs.k8s.io/global-replicas": "32",
        "jobset.sigs.k8s.io/job-global-index": "0",
        "jobset.sigs.k8s.io/job-index": "0",
        "jobset.sigs.k8s.io/job-key": "5d4a0e9f3b2c1d7e6f8a9b0c1d2e3f4a5b6c7d8e",
        "jobset.sigs.k8s.io/jobset-name": "train-large",
        "jobset.sigs.k8s.io/jobset-uid": "6f1c9e0a-4f0e-4d59-9a39-2f1d8f3c1a01",
        "jobset.sigs.k8s.io/replicatedjob-name": "workers-0",
        "jobset.sigs.k8s.io/replicatedjob-replicas": "4",
        "jobset.sigs.k8s.io/restart-attempt": "0"
    });
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "train-large-workers-0-0-1-",
            "namespace": "ml",
            "labels": labels.clone(),
            "annotations": labels,
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "train-large-workers-0-0",
                                 "uid": "0b2c7f1e-9d1a-4c55-8a0e-5b7f3c2d9e10", "controller": true,
                                 "blockOwnerDeletion": true}],
            "finalizers": ["batch.kubernetes.io/job-tracking"]
        },
        "spec": {
            "containers": containers,
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                ]}}
            ],
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "hostname": "train-large-workers-0-0-1",
            "subdomain": "train-large",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "nodeSelector": {"cloud.example/accelerator": "h100"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {}
    })
}

/// The AdmissionReview (CREATE) around `object`.
pub fn review(object: &Value) -> String {
    let is_pod = object["kind"] == "Pod";
    let (group, version, kind, resource) = if is_pod {
        ("", "v1", "Pod", "pods")
    } else {
        ("jobset.x-k8s.io", "v1alpha2", "JobSet", "jobsets")
    };
    let gvk = json!({"group": group, "version": version, "kind": kind});
    let gvr = json!({"group": group, "version": version, "resource": resource});
    let (user, groups, manager) = if is_pod {
        (
            "system:serviceaccount:kube-system:job-controller",
            json!([
                "system:serviceaccounts",
                "system:serviceaccounts:kube-system",
                "system:authenticated"
            ]),
            "kube-controller-manager",
        )
    } else {
        (
            "alice@example.com",
            json!(["ml-team", "system:authenticated"]),
            "kubectl-create",
        )
    };
    let review = json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "3b0f8a52-6a4b-4c1e-9b8e-0d6f3f7a2c11",
            "kind": gvk.clone(),
            "resource": gvr.clone(),
            "requestKind": gvk,
            "requestResource": gvr,
            "name": object["metadata"]["name"].as_str().unwrap_or_default(),
            "namespace": "ml",
            "operation": "CREATE",
            "userInfo": {
                "username": user,
                "uid": "c1d2e3f4-0000-4000-8000-000000000001",
                "groups": groups,
                "extra": {"authentication.kubernetes.io/credential-id": ["X509SHA256=9f2c4e1d0b7a6c5e4d3f2a1b0c9d8e7f"]}
            },
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": manager}
        }
    });
    review.to_string()
}
