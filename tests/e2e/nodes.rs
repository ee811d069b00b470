//! Node-aware capability (issue 13, part 3) on a real API server: the test creates Node
//! objects and sets `status.declaredFeatures` through the status subresource (the API
//! server stores and serves them; no kubelet runs), and checks that `serve`'s node watch
//! turns them into the default action, denials and warnings, `/readyz`, the metrics, and
//! that `check` lists them. Own cluster: Nodes are cluster-wide and would change the shared
//! cluster's default action. No kube-controller-manager: its node lifecycle controller
//! would taint the kubelet-less nodes, which is noise here.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Cluster, ClusterOptions};
use crate::util::{TestTimer, at, http_get, repo_root};
use crate::webhook::{Webhook, WebhookOptions};
use crate::{WEBHOOK_NAMESPACE, create, training_jobset};

const FEATURE: &str = "RestartAllContainersOnContainerExits";
const APPLIED: &str = "/metadata/annotations/restart.jobset.dev~1applied";
const ENABLED: (&str, &str) = ("restart.jobset.dev/in-place", "enabled");
const RAC: (&str, &str) = ("restart.jobset.dev/action", "RestartAllContainers");
/// Time a node change gets to reach the webhook's snapshot.
const CATCH_UP: Duration = Duration::from_secs(30);

/// Creates Node `name` with the label `pool=<pool>` (cordoned when `unschedulable`) and
/// sets its `status.declaredFeatures` (with `RestartAllContainersOnContainerExits` when
/// `declares`) through the status subresource. Returns when the status write returned.
pub(crate) fn add_node(
    c: &Cluster,
    name: &str,
    pool: &str,
    declares: bool,
    unschedulable: bool,
) -> Instant {
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"pool": pool, "kubernetes.io/hostname": name}},
        "spec": {"unschedulable": unschedulable}
    });
    c.kubectl_ok(&["create", "-f", "-"], Some(&node.to_string()));
    set_features(c, name, declares)
}

/// Sets `status.declaredFeatures` of Node `name` (sorted, as the API server requires), and
/// checks that the API server stored them. Returns when the write returned.
fn set_features(c: &Cluster, name: &str, declares: bool) -> Instant {
    let features: Vec<&str> = if declares {
        vec!["GuaranteedQoSPodCPUResize", FEATURE]
    } else {
        vec!["GuaranteedQoSPodCPUResize"]
    };
    let patch = json!({"status": {"declaredFeatures": features}});
    c.kubectl_ok(
        &[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ],
        None,
    );
    let written = Instant::now();
    let stored = c.get_json(&["node", name]);
    assert_eq!(
        at(&stored, "/status/declaredFeatures"),
        &json!(features),
        "the API server stores status.declaredFeatures: {stored:#}"
    );
    written
}

/// The `nodes` object of `/readyz`'s `cluster-capabilities` line (`Null` while unknown or
/// not ready).
fn readyz_nodes(webhook: &Webhook) -> Value {
    let body = match http_get(webhook.admin, "/readyz") {
        Ok((_, body)) => body,
        Err(e) => panic!("GET /readyz: {e}"),
    };
    body.lines()
        .find_map(|l| l.strip_prefix("[+]cluster-capabilities ok: "))
        .and_then(|j| serde_json::from_str::<Value>(j).ok())
        .map(|caps| caps["nodes"].clone())
        .unwrap_or(Value::Null)
}

/// Polls `/readyz` every 10 ms until the webhook's node snapshot shows these counts;
/// returns how long after `since` (when the API write returned to kubectl) that was.
fn wait_nodes(
    webhook: &Webhook,
    since: Instant,
    (total, schedulable, declaring): (u64, u64, u64),
) -> Duration {
    let want = json!({"total": total, "schedulable": schedulable,
                      "declaringRestartAllContainers": declaring});
    let start = since;
    loop {
        let seen = readyz_nodes(webhook);
        if seen == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < CATCH_UP,
            "the webhook's nodes did not reach {want} within {CATCH_UP:?}; /readyz shows {seen}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A dry-run create of the training JobSet (with `annotations` and, when given, a pod
/// template `nodeSelector: {pool: ...}`): (the action it would be stored with, or the
/// refusal; kubectl's stderr with the warnings).
fn action_for(
    c: &Cluster,
    ns: &str,
    annotations: &[(&str, &str)],
    pool: Option<&str>,
) -> (Result<String, String>, String) {
    let mut js = training_jobset("train", annotations);
    if let Some(pool) = pool {
        js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["nodeSelector"] =
            json!({"pool": pool});
    }
    let (stored, stderr) = c.dry_run_create(ns, &js);
    if stored.is_null() {
        return (Err(stderr.clone()), stderr);
    }
    let applied = at(&stored, APPLIED).as_str().unwrap_or_default().to_owned();
    let action = applied
        .strip_prefix("workers/trainer=")
        .and_then(|s| s.split(':').next())
        .unwrap_or_else(|| panic!("unexpected summary {applied:?}: {stored:#}"))
        .to_owned();
    (Ok(action), stderr)
}

fn ok(action: &str) -> Result<String, String> {
    Ok(action.to_owned())
}

#[test]
fn declared_node_features_decide_the_default_action() {
    let _t = TestTimer::start("declared_node_features_decide_the_default_action");
    let c = Cluster::start(ClusterOptions {
        name: "nodes",
        controller_manager: false,
        ..ClusterOptions::default()
    });
    c.ensure_namespace(WEBHOOK_NAMESPACE);
    // Without kube-controller-manager the harness creates the `default` ServiceAccount that
    // the capability probe's dry-run Pods (in `default`) need (testkit `Cluster::start`).
    let webhook = Webhook::start_registered(&c, WebhookOptions::default());
    let ns = c.namespace("nodes", &[]);
    let mut catch_up = Vec::new();

    // A fresh cluster without nodes: which kubelets will run the pods is unknown, the API
    // server's answer decides (as without node awareness).
    wait_nodes(&webhook, Instant::now(), (0, 0, 0));
    let body = http_get(webhook.admin, "/readyz")
        .map(|r| r.1)
        .unwrap_or_default();
    assert!(
        body.contains("\"restartAllContainers\":true"),
        "the API server accepts RestartAllContainers: {body}"
    );
    let (action, stderr) = action_for(&c, &ns, &[ENABLED], None);
    assert_eq!(action, ok("RestartAllContainers"), "{stderr}");
    assert!(!stderr.contains("Warning"), "{stderr}");
    assert_eq!(
        webhook.metric("jobset_restart_webhook_cluster_nodes{state=\"total\"}"),
        Some(0.0)
    );
    assert_eq!(
        webhook.metric(
            "jobset_restart_webhook_cluster_capability{capability=\"nodes_restart_all_containers\"}"
        ),
        None,
        "unknown without schedulable nodes"
    );

    // Every schedulable node declares it: RestartAllContainers, no warning.
    add_node(&c, "gpu-1", "gpu", true, false);
    let t = add_node(&c, "gpu-2", "gpu", true, false);
    catch_up.push((
        "2 declaring nodes added",
        wait_nodes(&webhook, t, (2, 2, 2)),
    ));
    let (action, stderr) = action_for(&c, &ns, &[ENABLED], None);
    assert_eq!(action, ok("RestartAllContainers"), "{stderr}");
    assert!(!stderr.contains("Warning"), "{stderr}");
    assert_eq!(
        webhook.metric(
            "jobset_restart_webhook_cluster_capability{capability=\"nodes_restart_all_containers\"}"
        ),
        Some(1.0)
    );

    // One lacks it: the default is Restart, with a warning that names the count ...
    let t = add_node(&c, "cpu-1", "cpu", false, false);
    catch_up.push((
        "a node without it added",
        wait_nodes(&webhook, t, (3, 3, 2)),
    ));
    let (action, stderr) = action_for(&c, &ns, &[ENABLED], None);
    assert_eq!(action, ok("Restart"), "{stderr}");
    assert!(
        stderr.contains(
            "the action defaults to Restart, not RestartAllContainers: 2 of 3 schedulable nodes \
             declare the RestartAllContainersOnContainerExits feature"
        ),
        "{stderr}"
    );
    for (state, n) in [("total", 3.0), ("schedulable", 3.0), ("declaring", 2.0)] {
        assert_eq!(
            webhook.metric(&format!(
                "jobset_restart_webhook_cluster_nodes{{state=\"{state}\"}}"
            )),
            Some(n),
            "{state}"
        );
    }
    assert_eq!(
        webhook.metric(
            "jobset_restart_webhook_cluster_capability{capability=\"nodes_restart_all_containers\"}"
        ),
        Some(0.0)
    );
    // ... an explicit ask is allowed (the scheduler uses the nodes that have it), with a
    // warning ...
    let (action, stderr) = action_for(&c, &ns, &[ENABLED, RAC], None);
    assert_eq!(action, ok("RestartAllContainers"), "{stderr}");
    assert!(
        stderr.contains("RestartAllContainers: only 2 of 3 schedulable nodes declare"),
        "{stderr}"
    );
    // ... and a pool picked by nodeSelector is judged by its own nodes.
    let (action, stderr) = action_for(&c, &ns, &[ENABLED], Some("gpu"));
    assert_eq!(action, ok("RestartAllContainers"), "{stderr}");
    assert!(!stderr.contains("Warning"), "{stderr}");
    let (refused, _) = action_for(&c, &ns, &[ENABLED, RAC], Some("cpu"));
    let refused = refused.expect_err("RestartAllContainers on a pool without it is refused");
    assert!(
        refused.contains(
            "restart.jobset.dev/action: \"RestartAllContainers\": RestartAllContainers pods need \
             nodes that declare support for it: none of the 1 schedulable node matching the pod \
             template's nodeSelector declares the RestartAllContainersOnContainerExits feature"
        ) && refused.contains("use Restart, or upgrade the kubelets or enable the gate on them"),
        "{refused}"
    );

    // The node goes: RestartAllContainers again. A cordoned node without it does not count.
    c.kubectl_ok(&["delete", "node", "cpu-1"], None);
    let t = Instant::now();
    catch_up.push(("a node deleted", wait_nodes(&webhook, t, (2, 2, 2))));
    let (action, stderr) = action_for(&c, &ns, &[ENABLED], None);
    assert_eq!(action, ok("RestartAllContainers"), "{stderr}");
    let t = add_node(&c, "old-1", "cpu", false, true);
    catch_up.push(("a cordoned node added", wait_nodes(&webhook, t, (3, 2, 2))));
    let (action, _) = action_for(&c, &ns, &[ENABLED], None);
    assert_eq!(action, ok("RestartAllContainers"));

    // The kubelets lose the feature (a downgrade, or the gate turned off): no schedulable
    // node declares it. The default is Restart, an explicit ask is refused with why.
    // How soon a status change reaches the webhook, over a few toggles.
    let mut toggles = Vec::new();
    for _ in 0..10 {
        let t = set_features(&c, "gpu-1", false);
        toggles.push(wait_nodes(&webhook, t, (3, 2, 1)));
        let t = set_features(&c, "gpu-1", true);
        toggles.push(wait_nodes(&webhook, t, (3, 2, 2)));
    }
    toggles.sort();
    eprintln!(
        "[e2e] nodes: {} declaredFeatures changes reached the webhook {:.0} ms (min) / {:.0} ms \
         (median) / {:.0} ms (max) after the status write returned",
        toggles.len(),
        toggles[0].as_secs_f64() * 1000.0,
        toggles[toggles.len() / 2].as_secs_f64() * 1000.0,
        toggles[toggles.len() - 1].as_secs_f64() * 1000.0
    );
    set_features(&c, "gpu-1", false);
    let t = set_features(&c, "gpu-2", false);
    catch_up.push((
        "declaredFeatures changed",
        wait_nodes(&webhook, t, (3, 2, 0)),
    ));
    let (action, stderr) = action_for(&c, &ns, &[ENABLED], None);
    assert_eq!(action, ok("Restart"), "{stderr}");
    assert!(
        stderr.contains("0 of 2 schedulable nodes declare"),
        "{stderr}"
    );
    let (ok_, stderr) = create(&c, &ns, &training_jobset("explicit", &[ENABLED, RAC]));
    assert!(!ok_, "an explicit RestartAllContainers must be refused");
    assert!(
        stderr.contains(
            "restart.jobset.dev/action: \"RestartAllContainers\": RestartAllContainers pods need \
             nodes that declare support for it: none of the 2 schedulable nodes declares the \
             RestartAllContainersOnContainerExits feature (their kubelets are older than 1.35 \
             or run with that feature gate off), so the scheduler would leave every pod \
             Pending; use Restart"
        ),
        "{stderr}"
    );

    // `check` lists the nodes.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobset-restart-webhook"))
        .args(["check", "-o", "json"])
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("running check");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check -o json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        out.status.code(),
        Some(0),
        "Restart still works: {report:#}"
    );
    assert_eq!(
        (
            &report["nodes"]["total"],
            &report["nodes"]["schedulable"],
            &report["nodes"]["declaring"]
        ),
        (&json!(3), &json!(2), &json!(0)),
        "{report:#}"
    );
    assert_eq!(report["nodes"]["restartAllContainers"]["value"], false);
    assert!(
        report["warnings"]
            .to_string()
            .contains("no schedulable node declares RestartAllContainersOnContainerExits"),
        "{report:#}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobset-restart-webhook"))
        .arg("check")
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("running check");
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("[e2e] `check` with 3 nodes, none declaring:\n{table}");
    assert!(
        table.lines().any(|l| l
            .starts_with("nodes declaring RestartAllContainersOnContainerExits")
            && l.contains("0 of 2")
            && l.contains("(1 cordoned not counted)")),
        "{table}"
    );

    // The shipped ClusterRole lets the webhook's ServiceAccount list and watch nodes.
    let rbac = repo_root().join("manifests/base/rbac.yaml");
    c.kubectl_ok(&["apply", "-f", &rbac.display().to_string()], None);
    let sa = format!("--as=system:serviceaccount:{WEBHOOK_NAMESPACE}:jobset-restart-webhook");
    for verb in ["list", "watch"] {
        let answer = c.kubectl(&["auth", "can-i", verb, "nodes", &sa], None);
        assert_eq!(
            String::from_utf8_lossy(&answer.stdout).trim(),
            "yes",
            "{verb} nodes: {}",
            String::from_utf8_lossy(&answer.stderr)
        );
    }
    let answer = c.kubectl(&["auth", "can-i", "patch", "nodes", &sa], None);
    assert_eq!(String::from_utf8_lossy(&answer.stdout).trim(), "no");

    for (what, d) in &catch_up {
        eprintln!(
            "[e2e] nodes: the webhook saw \"{what}\" {:.0} ms after the write returned",
            d.as_secs_f64() * 1000.0
        );
    }
}
