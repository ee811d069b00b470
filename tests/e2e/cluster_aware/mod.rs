//! Cluster-aware `serve` and `check` (the pod target, namespace defaults, capabilities, readiness; README) on real control planes:
//! namespace defaults from the namespace cache, the pod target resolving parents from the
//! JobSet cache, capability detection (dry-run Pods, the JobSet CRD's schema) feeding the
//! default action and denials, `/readyz` and metrics, the `check` subcommand, and the
//! memory the caches take with 1,000 JobSets.

mod capabilities;
mod memory;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Cluster, ClusterOptions, JOBSET_V0_9_0};
use crate::util::{TestTimer, at, http_get, mentions_rules, wait_for};
use crate::webhook::{Webhook, WebhookOptions};
use crate::{WEBHOOK_NAMESPACE, any_failure_rules, create, create_ok, shared, training_jobset};

/// Time the JobSet controller and the Job controller get to create children.
const CHILDREN: Duration = Duration::from_secs(90);
/// Time a watch event gets to reach the webhook's caches.
const CACHE: Duration = Duration::from_secs(30);

const APPLIED: &str = "/metadata/annotations/restart.jobset.dev~1applied";
const ENABLED: (&str, &str) = ("restart.jobset.dev/in-place", "enabled");

/// `jobset-restart-webhook check ARGS` against `cluster`: (exit code, stdout, stderr).
fn check(cluster: &Cluster, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_jobset-restart-webhook"))
        .arg("check")
        .args(args)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .stdin(Stdio::null())
        .output()
        .expect("running jobset-restart-webhook check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check -o json ARGS`: (exit code, report).
fn check_json(cluster: &Cluster, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = check(cluster, &all);
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("check -o json printed no JSON ({e}):\n{stdout}\n{stderr}"));
    (code, report)
}

/// The `/readyz` body of the webhook's admin port.
fn readyz(webhook: &Webhook) -> String {
    match http_get(webhook.admin, "/readyz") {
        Ok((_, body)) => body,
        Err(e) => panic!("GET /readyz: {e}"),
    }
}

/// The capabilities JSON from the `cluster-capabilities` line of `/readyz`.
fn readyz_capabilities(webhook: &Webhook) -> Value {
    let body = readyz(webhook);
    let line = body
        .lines()
        .find(|l| l.starts_with("[+]cluster-capabilities ok: "))
        .unwrap_or_else(|| panic!("no ready cluster-capabilities line in /readyz:\n{body}"));
    let json = line.trim_start_matches("[+]cluster-capabilities ok: ");
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// A Pod as the Job controller would create it for JobSet `jobset` (labels only).
fn jobset_pod(jobset: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{jobset}-workers-0-0-probe"), "labels": {
            "jobset.sigs.k8s.io/jobset-name": jobset,
            "jobset.sigs.k8s.io/replicatedjob-name": "workers"
        }},
        "spec": {"restartPolicy": "Never", "containers": [
            {"name": "trainer", "image": "busybox:1.36", "command": ["sh", "-c", "exit 0"]}
        ]}
    })
}

#[test]
fn namespace_label_enables_jobsets_without_annotations_and_disabled_wins() {
    let _t =
        TestTimer::start("namespace_label_enables_jobsets_without_annotations_and_disabled_wins");
    let s = shared();
    let c = &s.cluster;
    // No wait for the webhook's namespace cache: the namespace-default webhook's path
    // carries the API server's decision.
    let ns = c.namespace("ns-default", &[ENABLED]);
    create_ok(c, &ns, &training_jobset("plain", &[]));
    let stored = c.jobset(&ns, "plain");
    let container = at(
        &stored,
        "/spec/replicatedJobs/0/template/spec/template/spec/containers/0",
    );
    assert_eq!(container["restartPolicy"], "Never", "{stored:#}");
    assert_eq!(
        container["restartPolicyRules"],
        any_failure_rules("RestartAllContainers"),
        "{stored:#}"
    );
    assert_eq!(
        at(&stored, APPLIED),
        "workers/trainer=RestartAllContainers:NotIn(0)"
    );

    create_ok(
        c,
        &ns,
        &training_jobset("opted-out", &[("restart.jobset.dev/in-place", "disabled")]),
    );
    let stored = c.jobset(&ns, "opted-out");
    assert!(
        !mentions_rules(&stored),
        "disabled on the JobSet wins: {stored:#}"
    );
    assert!(at(&stored, APPLIED).is_null(), "{stored:#}");

    // Control: the same JobSet in a namespace without the label is left alone.
    let plain = c.namespace("ns-plain", &[]);
    create_ok(c, &plain, &training_jobset("plain", &[]));
    let stored = c.jobset(&plain, "plain");
    assert!(!mentions_rules(&stored), "{stored:#}");
}

#[test]
fn jobset_cache_follows_creates_and_deletes() {
    let _t = TestTimer::start("jobset_cache_follows_creates_and_deletes");
    let s = shared();
    let c = &s.cluster;
    let ns = c.namespace("cache-follows", &[]);
    let misses = "jobset_restart_webhook_pod_parent_unknown_total";
    let before = s
        .webhook
        .metric(misses)
        .expect("the parent-unknown counter is exported");

    // No JobSet yet: the pod is allowed unchanged, with a warning, and counted.
    let (stored, stderr) = c.dry_run_create(&ns, &jobset_pod("followed"));
    assert_eq!(stored["kind"], "Pod", "the pod is never denied: {stderr}");
    assert!(!mentions_rules(&stored), "{stored:#}");
    assert!(
        stderr.contains("its JobSet \"followed\" is not known to the webhook yet"),
        "{stderr}"
    );
    assert!(s.webhook.metric(misses).unwrap_or_default() > before);

    // The JobSet appears (suspended: its controllers create no pods of their own) ...
    let mut js = training_jobset(
        "followed",
        &[
            ENABLED,
            ("restart.jobset.dev/action", "Restart"),
            ("restart.jobset.dev/on-exit-codes", "42"),
        ],
    );
    js["spec"]["suspend"] = json!(true);
    create_ok(c, &ns, &js);
    let rules = json!([{"action": "Restart", "exitCodes": {"operator": "In", "values": [42]}}]);
    wait_for("the JobSet cache to follow the create", CACHE, || {
        let (stored, stderr) = c.dry_run_create(&ns, &jobset_pod("followed"));
        match at(&stored, "/spec/containers/0/restartPolicyRules") {
            r if *r == rules => Ok(()),
            other => Err(format!("rules {other}; {stderr}")),
        }
    });

    // ... and goes.
    c.kubectl_ok(
        &["delete", "jobset", "followed", "-n", &ns, "--wait=true"],
        None,
    );
    wait_for("the JobSet cache to follow the delete", CACHE, || {
        let (stored, stderr) = c.dry_run_create(&ns, &jobset_pod("followed"));
        if !mentions_rules(&stored) && stderr.contains("is not known to the webhook yet") {
            Ok(())
        } else {
            Err(format!("still known: {stderr}"))
        }
    });
    let synced = s
        .webhook
        .metric("jobset_restart_webhook_cluster_cache_synced{cache=\"jobsets\"}");
    assert_eq!(synced, Some(1.0));
}
