//! The engine bench's JobSets (`benches/engine.rs`), shared with `examples/engine_profile.rs`
//! so that a profile runs on exactly what the bench measures.

use jobset_restart_webhook::engine::{Environment, mutate_jobset};
use serde_json::{Value, json};

/// Container `i`: env, resources, a port, a probe and a mount, like a training worker.
pub fn container(i: usize) -> Value {
    json!({
        "name": format!("c{i}"),
        "image": format!("registry.example/train/worker-{i}:2026.11"),
        "command": ["python", "-m", "train", "--epochs", "100"],
        "env": (0..6).map(|e| json!({"name": format!("ENV_{e}"), "value": format!("value-{e}-{i}")})).collect::<Vec<_>>(),
        "resources": {"limits": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}, "requests": {"cpu": "8", "memory": "32Gi"}},
        "ports": [{"containerPort": 8080 + i, "name": "metrics"}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080 + i}, "periodSeconds": 10},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    })
}

/// An opted-in JobSet of `rjobs` replicated jobs with `containers` containers each.
pub fn jobset(rjobs: usize, containers: usize) -> Value {
    json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": "bench", "namespace": "ml", "annotations": {"restart.jobset.dev/in-place": "enabled"}},
        "spec": {"replicatedJobs": (0..rjobs).map(|r| json!({
            "name": format!("rjob-{r}"),
            "replicas": 4,
            "template": {"spec": {"parallelism": 2, "completions": 2, "backoffLimit": 0, "template": {"spec": {
                "containers": (0..containers).map(container).collect::<Vec<_>>(),
                "volumes": [{"name": "data", "emptyDir": {}}],
            }}}}
        })).collect::<Vec<_>>()}
    })
}

/// The JobSet as the API server stores it after CREATE (the engine's patch applied).
pub fn stored(manifest: &Value, ctx: &Environment<'_>) -> Value {
    let mut out = manifest.clone();
    if let Ok(m) = mutate_jobset(&manifest.to_string(), ctx) {
        let _ = m.patch.apply(&mut out);
    }
    out
}

/// An UPDATE that changes nothing of ours (a queue resuming the JobSet): old and new are the
/// stored object, `suspend` flipped.
pub fn noop_update(manifest: &Value, ctx: &Environment<'_>) -> (String, String) {
    let old = stored(manifest, ctx);
    let mut new = old.clone();
    new["spec"]["suspend"] = json!(false);
    (new.to_string(), old.to_string())
}
