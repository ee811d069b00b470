//! The outage matrix (docs/operations.md "While the webhook is down"): for each install variant, the webhook's `serve`
//! process is killed (the registration stays: the API server's calls are refused, as when no
//! replica is up) and every operation a cluster does on JobSets and their pods is tried. Each
//! cell of [`EXPECTED`] is asserted; the README's table is the same table.
//!
//! Per variant, while the webhook is still up, two opted-in JobSets are created suspended
//! with a finalizer of ours (so that deleting them leaves them in place until it is removed);
//! both get their rules. Then, with the webhook down:
//!
//! - create of an opted-in JobSet: refused by the fail-closed CREATE webhook;
//! - create of a JobSet that is not opted in: allowed (never sent), except with the cluster
//!   default, where every JobSet is sent;
//! - resume then suspend (what Kueue does), a label edit, delete, and the finalizer's removal
//!   of the deleted one: UPDATEs go to the updates webhook (Ignore; and an object being
//!   deleted is not even sent), DELETE is never sent;
//! - create of a Pod carrying JobSet's label: the pod webhook (registered with the pod target
//!   only) ignores failures.
//!
//! The namespace-label variant runs `serve --no-cluster`: it cannot read any namespace label,
//! so its opted-in JobSet gets rules only because the namespace-default webhook's own path
//! carries the API server's decision.

use std::net::TcpListener;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::{Cluster, ClusterOptions};
use crate::util::{TestTimer, at, repo_root, wait_for, yaml_documents};
use crate::webhook::{SHIPPED_NAME, Webhook, WebhookOptions};
use crate::{WEBHOOK_NAMESPACE, training_jobset};

const APPLIED: &str = "/metadata/annotations/restart.jobset.dev~1applied";
const HOLD: &str = "restart.jobset.dev/e2e-hold";
const ENABLED: (&str, &str) = ("restart.jobset.dev/in-place", "enabled");

/// The operations, in the order they run.
const OPERATIONS: [&str; 8] = [
    "create opted in",
    "create not opted in",
    "resume",
    "suspend",
    "label edit",
    "delete",
    "finalizer removal",
    "pod create",
];

/// (variant, the webhook that refuses an opted-in create, per operation: allowed?).
const EXPECTED: [(&str, &str, [bool; 8]); 4] = [
    (
        "annotation filter, pod target (overlays/pod-target)",
        "jobsets.restart.jobset.dev",
        [false, true, true, true, true, true, true, true],
    ),
    (
        "namespace label (base)",
        "namespace-default.jobsets.restart.jobset.dev",
        [false, true, true, true, true, true, true, true],
    ),
    (
        "cluster default (overlays/cluster-default-enabled)",
        "jobsets.restart.jobset.dev",
        [false, false, true, true, true, true, true, true],
    ),
    (
        "chart defaults",
        "jobsets.restart.jobset.dev",
        [false, true, true, true, true, true, true, true],
    ),
];

#[test]
fn outage_matrix_every_operation_per_install_variant_with_the_webhook_down() {
    let _t =
        TestTimer::start("outage_matrix_every_operation_per_install_variant_with_the_webhook_down");
    let c = Cluster::start(ClusterOptions {
        name: "outage",
        ..ClusterOptions::default()
    });
    c.ensure_namespace(WEBHOOK_NAMESPACE);
    let tmp = tempfile::tempdir().expect("tempdir");
    let cluster_default_config = tmp.path().join("cluster-default.yaml");
    std::fs::write(
        &cluster_default_config,
        "defaults: {inPlace: enabled}\ntargets: [jobsets]\n",
    )
    .expect("writing the cluster-default config");

    let mut problems = Vec::new();
    let mut table = vec![format!("| variant | {} |", OPERATIONS.join(" | "))];
    for (i, (variant, refusing, expected)) in EXPECTED.iter().enumerate() {
        let labelled = i == 1;
        let (opts, extra, configuration): (WebhookOptions, Vec<String>, Registration) = match i {
            0 => (
                WebhookOptions::targets("jobsets,pods"),
                vec![],
                Registration::Shipped,
            ),
            1 => (
                WebhookOptions::targets("jobsets"),
                vec!["--no-cluster".to_owned()],
                Registration::Shipped,
            ),
            2 => (
                WebhookOptions {
                    targets: None,
                    config: Some(cluster_default_config.clone()),
                },
                vec![],
                Registration::Kustomize("manifests/overlays/cluster-default-enabled"),
            ),
            _ => (
                WebhookOptions::targets("jobsets"),
                vec![],
                Registration::Chart,
            ),
        };
        let ns_labels: &[(&str, &str)] = if labelled { &[ENABLED] } else { &[] };
        let test_ns = c.namespace("outage", ns_labels);
        let ns: &str = &test_ns;
        // Not opted in: the namespace-label variant needs a namespace without the label.
        let plain_ns = labelled.then(|| c.namespace("outage-plain", &[]));
        // Opted in: by annotation, or (namespace label) by the namespace alone.
        let opted_in = |name: &str| {
            if labelled {
                training_jobset(name, &[])
            } else {
                training_jobset(name, &[ENABLED])
            }
        };

        let webhook = Webhook::start_with_args(&c, opts, &extra);
        let mut mwc = match configuration {
            Registration::Shipped => webhook.configuration(None),
            Registration::Kustomize(dir) => {
                let rendered = c.kubectl_ok(
                    &["kustomize", &repo_root().join(dir).display().to_string()],
                    None,
                );
                mwc_of(yaml_documents(&rendered, dir), dir)
            }
            Registration::Chart => {
                let (_, docs) = crate::helm::template(&[]);
                mwc_of(docs, "helm template")
            }
        };
        webhook.point_at_me(&mut mwc);
        let _ = c.kubectl(
            &["delete", "mutatingwebhookconfiguration", SHIPPED_NAME],
            None,
        );
        c.kubectl_ok(&["create", "-f", "-"], Some(&mwc.to_string()));
        wait_for(
            &format!("{variant}: the API server to call the webhook"),
            Duration::from_secs(30),
            || {
                let (stored, stderr) = c.dry_run_create(ns, &opted_in("probe"));
                if at(&stored, APPLIED).is_string() {
                    Ok(())
                } else {
                    Err(format!("not mutated yet: {stderr}"))
                }
            },
        );
        // The JobSets the operations act on, created while the webhook is up.
        for name in ["kept", "deleted"] {
            let mut js = opted_in(name);
            js["spec"]["suspend"] = json!(true);
            js["metadata"]["finalizers"] = json!([HOLD]);
            c.kubectl_ok(&["create", "-n", ns, "-f", "-"], Some(&js.to_string()));
            let stored = c.jobset(ns, name);
            if !at(&stored, APPLIED).is_string() {
                problems.push(format!(
                    "{variant}: {name} was stored without rules while the webhook was up: \
                     {stored:#}"
                ));
            }
        }

        // Down: the process is killed, the registration stays.
        let port = webhook.addr.port();
        drop(webhook);
        wait_for(
            &format!("{variant}: the API server's calls to be refused"),
            Duration::from_secs(30),
            || {
                let out = c.kubectl(
                    &["create", "--dry-run=server", "-n", ns, "-f", "-"],
                    Some(&opted_in("probe").to_string()),
                );
                if out.status.success() {
                    Err("still admitted".to_owned())
                } else {
                    Ok(())
                }
            },
        );
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "{variant}: nothing listens on the webhook's port any more"
        );

        let not_opted_in_ns: &str = plain_ns.as_deref().unwrap_or(ns);
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "outage-pod", "labels": {
                "jobset.sigs.k8s.io/jobset-name": "kept",
                "jobset.sigs.k8s.io/replicatedjob-name": "workers"
            }},
            "spec": {"restartPolicy": "Never", "containers": [
                {"name": "trainer", "image": "busybox:1.36", "command": ["sh", "-c", "exit 0"]}
            ]}
        });
        pod["metadata"]["namespace"] = json!(ns);
        let finalizer_patch = json!([{"op": "remove", "path": "/metadata/finalizers"}]).to_string();
        let runs: [(&str, Vec<&str>, Option<String>); 8] = [
            (
                OPERATIONS[0],
                vec!["create", "-n", ns, "-f", "-"],
                Some(opted_in("refused").to_string()),
            ),
            (
                OPERATIONS[1],
                vec!["create", "-n", not_opted_in_ns, "-f", "-"],
                Some(training_jobset("plain", &[]).to_string()),
            ),
            (
                OPERATIONS[2],
                vec![
                    "patch",
                    "jobset",
                    "kept",
                    "-n",
                    ns,
                    "--type=merge",
                    "-p",
                    r#"{"spec":{"suspend":false}}"#,
                ],
                None,
            ),
            (
                OPERATIONS[3],
                vec![
                    "patch",
                    "jobset",
                    "kept",
                    "-n",
                    ns,
                    "--type=merge",
                    "-p",
                    r#"{"spec":{"suspend":true}}"#,
                ],
                None,
            ),
            (
                OPERATIONS[4],
                vec!["label", "jobset", "kept", "-n", ns, "team=ml-platform"],
                None,
            ),
            (
                OPERATIONS[5],
                vec!["delete", "jobset", "deleted", "-n", ns, "--wait=false"],
                None,
            ),
            (
                OPERATIONS[6],
                vec![
                    "patch",
                    "jobset",
                    "deleted",
                    "-n",
                    ns,
                    "--type=json",
                    "-p",
                    finalizer_patch.as_str(),
                ],
                None,
            ),
            (
                OPERATIONS[7],
                vec!["create", "-f", "-"],
                Some(pod.to_string()),
            ),
        ];
        let mut row = Vec::new();
        for ((op, args, stdin), want) in runs.iter().zip(expected) {
            let out = c.kubectl(args, stdin.as_deref());
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let allowed = out.status.success();
            row.push(if allowed { "allowed" } else { "refused" });
            if allowed != *want {
                problems.push(format!(
                    "{variant} / {op}: expected {}, got {}: {}",
                    if *want { "allowed" } else { "refused" },
                    if allowed { "allowed" } else { "refused" },
                    stderr.trim()
                ));
            } else if !allowed
                && !stderr.contains(&format!("failed calling webhook \"{refusing}\""))
            {
                problems.push(format!(
                    "{variant} / {op}: refused, but not by the fail-closed {refusing}: {}",
                    stderr.trim()
                ));
            }
        }
        // What the allowed operations did, as stored.
        let kept = c.jobset(ns, "kept");
        if at(&kept, "/metadata/labels/team") != "ml-platform"
            || at(&kept, "/spec/suspend") != true
            || !at(&kept, APPLIED).is_string()
        {
            problems.push(format!(
                "{variant}: kept is not relabelled, suspended and still recorded: {kept:#}"
            ));
        }
        let gone = wait_for(
            &format!("{variant}: the deleted JobSet to go once its finalizer is removed"),
            Duration::from_secs(30),
            || {
                let out = c.kubectl(&["get", "jobset", "deleted", "-n", ns], None);
                if String::from_utf8_lossy(&out.stderr).contains("NotFound") {
                    Ok(true)
                } else {
                    Err("still there".to_owned())
                }
            },
        );
        assert!(gone);
        table.push(format!("| {variant} | {} |", row.join(" | ")));
        // Let the next variant's registration start from nothing.
        c.kubectl_ok(
            &[
                "patch",
                "jobset",
                "kept",
                "-n",
                ns,
                "--type=json",
                "-p",
                finalizer_patch.as_str(),
            ],
            None,
        );
    }
    eprintln!("[e2e] outage matrix:\n{}", table.join("\n"));
    assert!(
        problems.is_empty(),
        "{} cell(s) of the outage matrix differ:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Where a variant's webhook configuration comes from.
enum Registration {
    /// manifests/base (plus the pod webhook with the pod target), as testkit registers it.
    Shipped,
    /// The configuration `kubectl kustomize DIR` renders.
    Kustomize(&'static str),
    /// The configuration `helm template` renders with the chart's default values.
    Chart,
}

fn mwc_of(docs: Vec<Value>, what: &str) -> Value {
    docs.into_iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .unwrap_or_else(|| panic!("{what} renders no MutatingWebhookConfiguration"))
}
