//! Kubeflow Trainer v2.0.0 (built from its Go module) writing JobSets on a real control
//! plane. Trainer builds each TrainJob's JobSet from a TrainingRuntime and writes it by
//! server-side apply (field manager `trainer`, `force`) on every reconcile while the TrainJob
//! or its JobSet is suspended (pkg/runtime/framework/plugins/jobset: a running JobSet is
//! left alone). The manifest it applies never carries our rules: its TrainingRuntime CRD
//! and its JobSet types (JobSet v0.8.2, Kubernetes 1.32 types) do not even know the fields.
//!
//! The opt-in is the namespace label `restart.jobset.dev/in-place=enabled` (the TrainJob's
//! JobSet has no annotation of ours). Our webhook runs with the JobSet target only, so rules
//! on Jobs and Pods can only come from the JobSet's pod template.
//!
//! Trainer logs every successful apply at verbosity 5 ("Succeeded to update object"), which
//! is how the test knows a reconcile really re-applied the JobSet.

use std::time::Duration;

use serde_json::{Value, json};

use crate::addons::{TRAINER, start_trainer};
use crate::cluster::{Cluster, ClusterOptions};
use crate::util::{TestTimer, at, wait_for};
use crate::webhook::{Webhook, WebhookOptions};
use crate::{assert_rules, create_ok, template};

const STEP: Duration = Duration::from_secs(90);
const APPLIED: &str = "/metadata/annotations/restart.jobset.dev~1applied";
/// Trainer's log line for one successful server-side apply (V(5)).
const APPLY_OK: &str = "Succeeded to update object";

/// A TrainingRuntime without an ML policy plugin: one replicated job `node` (the trainer
/// step) with one container `node`, 2 nodes.
fn runtime(name: &str) -> Value {
    json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainingRuntime",
        "metadata": {"name": name},
        "spec": {
            "mlPolicy": {"numNodes": 2},
            "template": {"spec": {"replicatedJobs": [{
                "name": "node",
                "template": {
                    "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                    "spec": {"template": {"spec": {"containers": [{
                        "name": "node",
                        "image": "busybox:1.36",
                        "command": ["sh", "-c", "exit 0"]
                    }]}}}
                }
            }]}}
        }
    })
}

fn train_job(name: &str, runtime: &str, suspend: bool) -> Value {
    json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": name},
        "spec": {
            "suspend": suspend,
            "runtimeRef": {"name": runtime, "apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime"}
        }
    })
}

/// Trainer's successful applies of the JobSet `ns/name` so far.
fn applies(cluster: &Cluster, ns: &str, name: &str) -> usize {
    cluster
        .log(TRAINER)
        .lines()
        .filter(|l| {
            l.contains(APPLY_OK)
                && l.contains("Kind=JobSet")
                && l.contains(&format!("\"{ns}\""))
                && l.contains(&format!("\"{name}\""))
        })
        .count()
}

/// Everything Trainer reported as a failure about the TrainJob `ns/name`: its
/// `Reconciler error` log lines, its Warning events (`TrainJobResourcesCreationFailed` is
/// the failed apply), a Failed condition. Not counted, because Trainer retries them at once
/// and they say nothing about the JobSet's content: a conflict on the TrainJob's own status
/// update ("the object has been modified"), and the JobSet not yet in Trainer's cache when
/// it reads it back right after creating it (`JobSet.jobset.x-k8s.io "NAME" not found`).
fn failures(cluster: &Cluster, ns: &str, name: &str) -> Vec<String> {
    let mut out: Vec<String> = cluster
        .log(TRAINER)
        .lines()
        .filter(|l| {
            l.contains("Reconciler error")
                && l.contains(&format!("\"{ns}\""))
                && l.contains(&format!("\"{name}\""))
                && !l.contains("Operation cannot be fulfilled on trainjobs.trainer.kubeflow.org")
                && !l.contains(&format!(
                    r#""error":"JobSet.jobset.x-k8s.io \"{name}\" not found""#
                ))
        })
        .map(str::to_owned)
        .collect();
    let events = cluster.get_json(&["events", "-n", ns]);
    for e in events["items"].as_array().into_iter().flatten() {
        if e["involvedObject"]["name"] == name && e["type"] == "Warning" {
            out.push(format!("event {}: {}", e["reason"], e["message"]));
        }
    }
    let tj = cluster.get_json(&["trainjobs.trainer.kubeflow.org", name, "-n", ns]);
    for c in at(&tj, "/status/conditions")
        .as_array()
        .into_iter()
        .flatten()
    {
        if c["type"] == "Failed" && c["status"] == "True" {
            out.push(format!("condition Failed: {c}"));
        }
    }
    out
}

/// Touches the TrainJob (an annotation), which makes Trainer reconcile it, and waits until
/// that reconcile applied the JobSet (`expect_apply`) or, for a running JobSet, until the
/// TrainJob's update was seen and no apply followed.
fn reconcile(cluster: &Cluster, ns: &str, name: &str, round: usize, expect_apply: bool) {
    let before = applies(cluster, ns, name);
    cluster.kubectl_ok(
        &[
            "annotate",
            "--overwrite",
            "trainjobs.trainer.kubeflow.org",
            name,
            "-n",
            ns,
            &format!("e2e.restart.jobset.dev/reconcile={round}"),
        ],
        None,
    );
    if expect_apply {
        wait_for(
            &format!("reconcile {round} of TrainJob {ns}/{name} to apply its JobSet"),
            STEP,
            || {
                cluster.assert_running(TRAINER);
                let now = applies(cluster, ns, name);
                if now > before {
                    return Ok(());
                }
                let failed = failures(cluster, ns, name);
                if failed.is_empty() {
                    Err(format!("{now} applies so far"))
                } else {
                    panic!(
                        "reconcile {round}: Trainer's apply of the JobSet failed:\n{}",
                        failed.join("\n")
                    )
                }
            },
        );
    } else {
        // A running JobSet is not applied again; give the reconcile time to happen.
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(
            applies(cluster, ns, name),
            before,
            "reconcile {round}: Trainer re-applied a running JobSet"
        );
    }
}

/// The JobSet after a step: rules, our `applied` annotation, no failures reported.
fn check_jobset(cluster: &Cluster, ns: &str, name: &str, step: &str) -> Value {
    let js = cluster.jobset(ns, name);
    assert_rules(template(&js), step);
    assert_eq!(
        at(&js, APPLIED),
        "node/node=RestartAllContainers:NotIn(0)",
        "{step}: {js:#}"
    );
    let failed = failures(cluster, ns, name);
    assert!(
        failed.is_empty(),
        "{step}: Trainer reported failures:\n{}",
        failed.join("\n")
    );
    js
}

#[test]
fn trainer_reapplies_keep_the_restart_rules_of_an_opted_in_namespace() {
    let _t = TestTimer::start("trainer_reapplies_keep_the_restart_rules_of_an_opted_in_namespace");
    let cluster = Cluster::start(ClusterOptions {
        name: "trainer",
        ..ClusterOptions::default()
    });
    let webhook = Webhook::start_registered(&cluster, WebhookOptions::targets("jobsets"));
    start_trainer(&cluster);
    let c = &cluster;
    let ns = c.namespace("trainer", &[("restart.jobset.dev/in-place", "enabled")]);
    create_ok(c, &ns, &runtime("plain"));

    // Reconcile 1: the TrainJob is created suspended (as Kueue would hold it); Trainer
    // creates the JobSet by server-side apply and our webhook injects the rules.
    create_ok(c, &ns, &train_job("tj", "plain", true));
    wait_for("Trainer to create JobSet tj", STEP, || {
        c.assert_running(TRAINER);
        if applies(c, &ns, "tj") > 0 {
            Ok(())
        } else {
            Err(format!("failures so far: {:?}", failures(c, &ns, "tj")))
        }
    });
    let created = check_jobset(c, &ns, "tj", "created");
    assert_eq!(at(&created, "/spec/suspend"), true, "{created:#}");
    let with_fields = c.get_json(&["jobset", "tj", "-n", &ns, "--show-managed-fields"]);
    let trainer_apply = at(&with_fields, "/metadata/managedFields")
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["manager"] == "trainer" && m["operation"] == "Apply")
        .cloned();
    // For the record (issue 14's question of what a re-apply does to fields a webhook
    // added): which managers own the rules. On kube-apiserver 1.36.2: none.
    let owners: Vec<String> = at(&with_fields, "/metadata/managedFields")
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["fieldsV1"].to_string().contains("f:restartPolicyRules"))
        .map(|m| format!("{}/{}", m["manager"], m["operation"]))
        .collect();
    eprintln!("[e2e] managers that own the injected restartPolicyRules: {owners:?}");
    assert!(
        trainer_apply.is_some(),
        "the JobSet has no managedFields entry of Trainer's apply: {with_fields:#}"
    );

    // Reconciles 2 and 3: the same manifest applied again with force, while suspended.
    reconcile(c, &ns, "tj", 2, true);
    check_jobset(c, &ns, "tj", "reconcile 2 (suspended)");
    reconcile(c, &ns, "tj", 3, true);
    check_jobset(c, &ns, "tj", "reconcile 3 (suspended)");

    // Reconcile 4: resume (what Kueue's admission of a TrainJob does): applied with
    // suspend=false; the JobSet runs and its Jobs and Pods carry the rules.
    let before = applies(c, &ns, "tj");
    c.kubectl_ok(
        &[
            "patch",
            "trainjobs.trainer.kubeflow.org",
            "tj",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"suspend":false}}"#,
        ],
        None,
    );
    let resumed = wait_for("Trainer to resume JobSet tj", STEP, || {
        c.assert_running(TRAINER);
        let js = c.jobset(&ns, "tj");
        if applies(c, &ns, "tj") > before && at(&js, "/spec/suspend") != &json!(true) {
            return Ok(js);
        }
        let failed = failures(c, &ns, "tj");
        if failed.is_empty() {
            Err(format!("suspend={}", at(&js, "/spec/suspend")))
        } else {
            panic!("resuming: Trainer's apply failed:\n{}", failed.join("\n"))
        }
    });
    assert_rules(template(&resumed), "resumed");
    check_jobset(c, &ns, "tj", "resumed");
    let jobs = c.wait_children("jobs", &ns, "tj", 1, STEP);
    for job in &jobs {
        assert_rules(
            at(job, "/spec/template/spec"),
            &format!("resumed: Job {}", job["metadata"]["name"]),
        );
    }
    let pods = c.wait_children("pods", &ns, "tj", 2, STEP);
    for pod in &pods {
        assert_rules(
            &pod["spec"],
            &format!("resumed: Pod {}", pod["metadata"]["name"]),
        );
    }

    // Reconcile 5: a running JobSet is left alone by Trainer.
    reconcile(c, &ns, "tj", 5, false);
    check_jobset(c, &ns, "tj", "reconcile 5 (running)");

    // Each forced re-apply reached our webhook as an UPDATE that dropped nothing of ours
    // (the fields are owned by no manager), so each got the empty answer.
    let updates: Vec<Value> = webhook
        .reviews(&ns, "tj")
        .into_iter()
        .filter(|r| r["operation"] == "UPDATE" && r["dry_run"] == false)
        .collect();
    assert!(
        updates.len() >= 3,
        "expected the webhook to review Trainer's re-applies (reconciles 2, 3 and the resume) \
         as UPDATEs: {updates:#?}"
    );
    for r in &updates {
        assert!(
            r["outcome"] == "allowed" && r["patch_ops"] == 0,
            "an UPDATE by Trainer got more than the empty answer: {r}"
        );
    }
}
