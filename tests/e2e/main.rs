//! End-to-end tests on a real control plane (kube-apiserver v1.36.2, etcd, kube-controller-
//! manager, the JobSet v0.12.0 controller with its own webhooks), built from Go modules by
//! `tests/cluster/build.sh` (cached in `.cache/`; a missing Go toolchain or a failed build fails
//! these tests, it never skips them).
//!
//! Run: `cargo test --features e2e --test e2e` (add `-- --nocapture` for per-test and
//! per-cluster timings; `E2E_KEEP=1` keeps every cluster's folder with its logs).
//!
//! What these tests establish is what the API server *stores*: they create objects with the
//! cluster's kubectl and read them back with `kubectl get -o json`.
//!
//! Clusters: tests that need the default setup share one cluster (and one `serve`),
//! each in its own namespace; tests that need other feature gates, another JobSet CRD or
//! another webhook registration start their own.

// The harness (control plane, node, our webhook on it, helpers) lives in testkit, shared
// with the apiserver and restart benches.
use testkit::{cluster, node, util, webhook};

// Third-party controllers that write JobSets (issue 14): Kueue and Kubeflow Trainer.
mod addons;
mod kueue;
mod trainer;

mod basic;
mod client_auth;
mod cluster_aware;
mod deploy;
mod differential;
mod gates;
mod helm;
mod manifests;
mod monitoring;
mod node_restart;
mod nodes;
mod old_crd;
mod ordering;
mod outage;
mod writers;

use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;

use serde_json::{Value, json};

use cluster::{Cluster, ClusterOptions};
use webhook::{Webhook, WebhookOptions};

/// The default cluster with our webhook registered as shipped.
pub struct Shared {
    pub cluster: Cluster,
    pub webhook: Webhook,
}

/// Our namespace: excluded by the shipped namespaceSelectors, so a create there shows what
/// the cluster stores without our webhook (JobSet's own defaulting still runs).
pub const WEBHOOK_NAMESPACE: &str = "jobset-restart-webhook";

/// The shared cluster, started by the first test that asks. `serve` runs with
/// `--targets jobsets,pods` and the fixtures' cluster config (for the `pytorch` preset).
/// If it fails to start, that test shows why and every other one says it did not start.
pub fn shared() -> &'static Shared {
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    let started = SHARED.get_or_init(|| {
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            let cluster = Cluster::start(ClusterOptions {
                name: "shared",
                ..ClusterOptions::default()
            });
            cluster.ensure_namespace(WEBHOOK_NAMESPACE);
            let webhook = Webhook::start(
                &cluster,
                WebhookOptions {
                    targets: Some("jobsets,pods".to_owned()),
                    config: Some(util::repo_root().join("tests/fixtures/config.yaml")),
                },
            );
            webhook.register(&cluster, None, "default");
            Shared { cluster, webhook }
        }))
        .map_err(util::panic_message)
    });
    match started {
        Ok(shared) => shared,
        Err(e) => panic!("the shared e2e cluster did not start: {e}"),
    }
}

/// A small training JobSet: replicated job `workers` (2 Jobs × 2 Pods), container `trainer`,
/// no `restartPolicy` anywhere (JobSet's defaulting would set the pod's to OnFailure).
pub fn training_jobset(name: &str, annotations: &[(&str, &str)]) -> Value {
    let mut js = json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": name},
        "spec": {"replicatedJobs": [{
            "name": "workers",
            "replicas": 2,
            "template": {"spec": {
                "parallelism": 2,
                "completions": 2,
                "backoffLimit": 0,
                "template": {"spec": {"containers": [{
                    "name": "trainer",
                    "image": "busybox:1.36",
                    "command": ["sh", "-c", "exit 0"]
                }]}}
            }}
        }]}
    });
    for (k, v) in annotations {
        js["metadata"]["annotations"][*k] = json!(v);
    }
    js
}

/// The rule list the webhook injects for `action` and "any failure".
pub fn any_failure_rules(action: &str) -> Value {
    json!([{"action": action, "exitCodes": {"operator": "NotIn", "values": [0]}}])
}

/// What our webhook injected at CREATE for "any failure" with `RestartAllContainers`, checked
/// on a pod spec (JobSet template, Job template or Pod) after a third-party controller
/// (Kueue, Trainer) rewrote the JobSet.
pub fn assert_rules(pod_spec: &Value, what: &str) {
    let container = &pod_spec["containers"][0];
    assert_eq!(
        container["restartPolicy"], "Never",
        "{what}: the container restartPolicy is gone: {pod_spec:#}"
    );
    assert_eq!(
        container["restartPolicyRules"],
        any_failure_rules("RestartAllContainers"),
        "{what}: the restartPolicyRules are gone or changed: {pod_spec:#}"
    );
    assert_eq!(
        pod_spec["restartPolicy"], "Never",
        "{what}: the pod restartPolicy is not ours: {pod_spec:#}"
    );
}

/// The pod spec of the first replicated job's template.
pub fn template(jobset: &Value) -> &Value {
    util::at(jobset, "/spec/replicatedJobs/0/template/spec/template/spec")
}

/// `kubectl create -f - -n NS` of `object`; returns (success, stderr).
pub fn create(cluster: &Cluster, namespace: &str, object: &Value) -> (bool, String) {
    let out = cluster.kubectl(
        &["create", "-n", namespace, "-f", "-"],
        Some(&object.to_string()),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`create`] that must succeed; returns kubectl's stderr (admission warnings).
pub fn create_ok(cluster: &Cluster, namespace: &str, object: &Value) -> String {
    let (ok, stderr) = create(cluster, namespace, object);
    assert!(
        ok,
        "creating {} {}/{} failed:\n{stderr}",
        object["kind"], namespace, object["metadata"]["name"]
    );
    stderr
}

/// Runs `jobset-restart-webhook mutate -f - EXTRA...` on `input` (the offline preview of what
/// the webhook does) and parses its JSON output (`-o json` or `-o patch` in `extra`).
pub fn mutate_preview(input: &Value, extra: &[&str]) -> Value {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_jobset-restart-webhook"))
        .args(["mutate", "-f", "-"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running jobset-restart-webhook mutate");
    let mut stdin = child.stdin.take().expect("mutate's stdin");
    let text = input.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().expect("waiting for mutate");
    let _ = writer.join();
    assert!(
        out.status.success(),
        "mutate {} failed on {}: {}",
        extra.join(" "),
        input["metadata"]["name"],
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("mutate prints JSON")
}
