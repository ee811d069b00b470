//! Kueue v0.17.0 (JobSet integration, built from its Go module) writing an opted-in JobSet
//! on a real control plane: its webhook suspends the JobSet at CREATE, admission writes the
//! flavor's node selector into the pod templates and unsuspends it (an UPDATE of the
//! JobSet), preemption by a higher-priority workload suspends it and takes the node
//! selector out again (another UPDATE), and re-admission puts both back. After every step
//! the stored JobSet, its Jobs and its Pods must still carry the restart rules our webhook
//! injected at CREATE.
//!
//! Our webhook runs with the JobSet target only, so rules on Jobs and Pods can only come
//! from the JobSet's pod template (a pod target would add them to Pods by itself).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::addons::{Audit, KUEUE, describe_writes, start_kueue};
use crate::cluster::{Cluster, ClusterOptions};
use crate::util::{TestTimer, at, wait_for};
use crate::webhook::{Webhook, WebhookOptions};
use crate::{assert_rules, create_ok, template};

/// Time Kueue gets to admit, preempt or re-admit, and the controllers to create children.
const STEP: Duration = Duration::from_secs(90);
/// The node label of the ResourceFlavor, which Kueue writes into the admitted pod templates.
const POOL_LABEL: &str = "e2e.restart.jobset.dev/pool";
const POOL: &str = "pool-a";
const QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";
const PRIORITY_LABEL: &str = "kueue.x-k8s.io/priority-class";
const APPLIED: &str = "/metadata/annotations/restart.jobset.dev~1applied";

/// A JobSet of `replicas` Jobs × `pods` Pods, container `trainer` requesting `cpu`, queued
/// in `queue`.
fn queued_jobset(
    name: &str,
    queue: &str,
    replicas: u32,
    pods: u32,
    cpu: &str,
    annotations: &[(&str, &str)],
) -> Value {
    let mut js = json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": name, "labels": {QUEUE_LABEL: queue}},
        "spec": {"replicatedJobs": [{
            "name": "workers",
            "replicas": replicas,
            "template": {"spec": {
                "parallelism": pods,
                "completions": pods,
                "backoffLimit": 0,
                "template": {"spec": {"containers": [{
                    "name": "trainer",
                    "image": "busybox:1.36",
                    "command": ["sh", "-c", "exit 0"],
                    "resources": {"requests": {"cpu": cpu}}
                }]}}
            }}
        }]}
    });
    for (k, v) in annotations {
        js["metadata"]["annotations"][*k] = json!(v);
    }
    js
}

fn suspended(jobset: &Value) -> bool {
    at(jobset, "/spec/suspend") == &json!(true)
}

/// Kueue's Workload of the JobSet `name` (owned by it).
fn workload(cluster: &Cluster, ns: &str, name: &str) -> Value {
    let list = cluster.get_json(&["workloads.v1beta2.kueue.x-k8s.io", "-n", ns]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| {
            at(w, "/metadata/ownerReferences")
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o["kind"] == "JobSet" && o["name"] == name)
        })
        .cloned()
        .unwrap_or(Value::Null)
}

fn condition<'a>(object: &'a Value, kind: &str) -> &'a Value {
    at(object, "/status/conditions")
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .unwrap_or(&Value::Null)
}

/// Waits until the JobSet is admitted (unsuspended, with the flavor's node selector) and
/// returns it.
fn wait_admitted(cluster: &Cluster, ns: &str, name: &str) -> Value {
    wait_for(&format!("Kueue to admit JobSet {ns}/{name}"), STEP, || {
        cluster.assert_running(KUEUE);
        let js = cluster.jobset(ns, name);
        if !suspended(&js) && template(&js)["nodeSelector"][POOL_LABEL] == POOL {
            Ok(js)
        } else {
            Err(format!(
                "suspend={} nodeSelector={}; workload conditions {}",
                at(&js, "/spec/suspend"),
                template(&js)["nodeSelector"],
                at(&workload(cluster, ns, name), "/status/conditions")
            ))
        }
    })
}

/// Checks the Jobs and waits for `count` Pods of the JobSet that are not in `old`, then
/// checks them: rules and the flavor's node selector on every one. Returns their UIDs.
fn check_children(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    count: usize,
    old: &BTreeSet<String>,
    step: &str,
) -> BTreeSet<String> {
    let jobs = cluster.wait_children("jobs", ns, name, 2, STEP);
    for job in &jobs {
        let spec = at(job, "/spec/template/spec");
        assert_rules(spec, &format!("{step}: Job {}", job["metadata"]["name"]));
        // JobSet copies the admitted node selector into its (suspended) Jobs on resume.
        wait_for(
            &format!(
                "{step}: Job {} to get Kueue's node selector",
                job["metadata"]["name"]
            ),
            STEP,
            || {
                let jobs = cluster.children("jobs", ns, name);
                let fresh = jobs
                    .iter()
                    .find(|j| j["metadata"]["name"] == job["metadata"]["name"])
                    .ok_or("the Job is gone")?;
                let spec = at(fresh, "/spec/template/spec");
                assert_rules(spec, &format!("{step}: Job {}", job["metadata"]["name"]));
                if spec["nodeSelector"][POOL_LABEL] == POOL {
                    Ok(())
                } else {
                    Err(format!(
                        "nodeSelector {} suspend {}",
                        spec["nodeSelector"],
                        at(fresh, "/spec/suspend")
                    ))
                }
            },
        );
    }
    let pods = wait_for(&format!("{step}: {count} new Pods of {name}"), STEP, || {
        let pods: Vec<Value> = cluster
            .children("pods", ns, name)
            .into_iter()
            .filter(|p| {
                !old.contains(p["metadata"]["uid"].as_str().unwrap_or_default())
                    && p["metadata"]["deletionTimestamp"].is_null()
            })
            .collect();
        if pods.len() >= count {
            Ok(pods)
        } else {
            Err(format!("{} so far", pods.len()))
        }
    });
    for pod in &pods {
        let spec = &pod["spec"];
        let what = format!("{step}: Pod {}", pod["metadata"]["name"]);
        assert_rules(spec, &what);
        assert_eq!(
            spec["nodeSelector"][POOL_LABEL], POOL,
            "{what}: no Kueue node selector: {spec:#}"
        );
    }
    pods.iter()
        .map(|p| p["metadata"]["uid"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn kueue_admission_preemption_and_readmission_keep_the_restart_rules() {
    let _t = TestTimer::start("kueue_admission_preemption_and_readmission_keep_the_restart_rules");
    let audit = Audit::new();
    let cluster = Cluster::start(ClusterOptions {
        name: "kueue",
        apiserver_args: audit.apiserver_args(),
        ..ClusterOptions::default()
    });
    let webhook = Webhook::start_registered(&cluster, WebhookOptions::targets("jobsets"));
    start_kueue(&cluster);
    let c = &cluster;
    let ns = c.namespace("kueue", &[]);

    // Quota for exactly one of the two JobSets below: 2 CPUs.
    let queues = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
         "metadata": {"name": "pool-a"},
         "spec": {"nodeLabels": {POOL_LABEL: POOL}}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
         "metadata": {"name": "cq"},
         "spec": {
             "namespaceSelector": {},
             "preemption": {"withinClusterQueue": "LowerPriority"},
             "resourceGroups": [{"coveredResources": ["cpu"],
                 "flavors": [{"name": "pool-a", "resources": [{"name": "cpu", "nominalQuota": "2"}]}]}]}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
         "metadata": {"name": "lq", "namespace": &*ns},
         "spec": {"clusterQueue": "cq"}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
         "metadata": {"name": "urgent"}, "value": 1000},
    ]});
    c.kubectl_ok(&["apply", "-f", "-"], Some(&queues.to_string()));
    wait_for("ClusterQueue cq to be Active", STEP, || {
        c.assert_running(KUEUE);
        let cq = c.get_json(&["clusterqueues.v1beta2.kueue.x-k8s.io", "cq"]);
        if condition(&cq, "Active")["status"] == "True" {
            Ok(())
        } else {
            Err(format!("conditions {}", at(&cq, "/status/conditions")))
        }
    });

    // 1. CREATE: our webhook injects the rules, Kueue's suspends the JobSet.
    create_ok(
        c,
        &ns,
        &queued_jobset(
            "train",
            "lq",
            2,
            2,
            "500m",
            &[("restart.jobset.dev/in-place", "enabled")],
        ),
    );
    let created = c.jobset(&ns, "train");
    assert_rules(template(&created), "created");
    assert_eq!(
        at(&created, APPLIED),
        "workers/trainer=RestartAllContainers:NotIn(0)"
    );
    let applied = at(&created, APPLIED).clone();

    // 2. Admission (UPDATE by Kueue: nodeSelector + suspend=false).
    let admitted = wait_admitted(c, &ns, "train");
    assert_rules(template(&admitted), "admitted");
    assert_eq!(at(&admitted, APPLIED), &applied, "admitted: {admitted:#}");
    let first = check_children(c, &ns, "train", 4, &BTreeSet::new(), "admitted");

    // 3. Preemption by a higher-priority workload (UPDATE by Kueue: suspend=true, node
    //    selector restored to the original, i.e. removed).
    create_ok(c, &ns, &{
        let mut urgent = queued_jobset("urgent", "lq", 1, 1, "2", &[]);
        urgent["metadata"]["labels"][PRIORITY_LABEL] = json!("urgent");
        urgent
    });
    let preempted = wait_for("Kueue to preempt JobSet train", STEP, || {
        c.assert_running(KUEUE);
        let js = c.jobset(&ns, "train");
        if suspended(&js) {
            Ok(js)
        } else {
            Err(format!(
                "train still running; workload conditions {}",
                at(&workload(c, &ns, "train"), "/status/conditions")
            ))
        }
    });
    assert_rules(template(&preempted), "preempted");
    assert_eq!(
        at(&preempted, APPLIED),
        &applied,
        "preempted: {preempted:#}"
    );
    let wl = workload(c, &ns, "train");
    assert_eq!(
        condition(&wl, "Evicted")["reason"],
        "Preempted",
        "the Workload of train was not evicted by preemption: {wl:#}"
    );
    wait_admitted(c, &ns, "urgent");
    wait_for("the Pods of the preempted JobSet to be gone", STEP, || {
        let left = c
            .children("pods", &ns, "train")
            .into_iter()
            .filter(|p| first.contains(p["metadata"]["uid"].as_str().unwrap_or_default()))
            .count();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} left"))
        }
    });
    for job in c.children("jobs", &ns, "train") {
        assert_rules(
            at(&job, "/spec/template/spec"),
            &format!("preempted: Job {}", job["metadata"]["name"]),
        );
    }

    // 4. Re-admission once the quota is free again.
    c.kubectl_ok(
        &["delete", "jobset", "urgent", "-n", &ns, "--wait=true"],
        None,
    );
    let readmitted = wait_admitted(c, &ns, "train");
    assert_rules(template(&readmitted), "re-admitted");
    assert_eq!(
        at(&readmitted, APPLIED),
        &applied,
        "re-admitted: {readmitted:#}"
    );
    let second = check_children(c, &ns, "train", 4, &first, "re-admitted");
    assert!(second.is_disjoint(&first));

    // What Kueue really wrote to the JobSet: JSON merge patches of the whole object as its
    // Go types see it (k8s.io/api v0.35, which knows restartPolicyRules), so the
    // `replicatedJobs` list it sends back carries the rules.
    let writes = audit.jobset_writes(&ns, "train");
    eprintln!(
        "[e2e] writes to JobSet train:\n{}",
        describe_writes(&writes)
    );
    // Kueue patches with the resourceVersion it read, so a 409 Conflict (then a retry on
    // the fresh object) is part of its normal work.
    let kueue_writes: Vec<&Value> = writes
        .iter()
        .filter(|e| {
            e["userAgent"]
                .as_str()
                .unwrap_or_default()
                .starts_with("kueue/")
                && e["objectRef"]["subresource"].is_null()
                && e["verb"] != "create"
        })
        .collect();
    for e in &kueue_writes {
        assert!(
            e["responseStatus"]["code"] == 200 || e["responseStatus"]["code"] == 409,
            "a write of Kueue failed: {e:#}"
        );
    }
    let done: Vec<&&Value> = kueue_writes
        .iter()
        .filter(|e| e["responseStatus"]["code"] == 200)
        .collect();
    assert!(
        done.len() >= 3,
        "expected Kueue to write the JobSet at admission, preemption and re-admission:\n{}",
        describe_writes(&writes)
    );
    eprintln!(
        "[e2e] Kueue's admission patch ({}): {}",
        done[0]["requestURI"], done[0]["requestObject"]
    );

    // Each of Kueue's patches reached our webhook as an UPDATE that dropped nothing of ours,
    // and got the empty answer.
    let updates: Vec<Value> = webhook
        .reviews(&ns, "train")
        .into_iter()
        .filter(|r| r["operation"] == "UPDATE" && r["dry_run"] == false)
        .collect();
    assert!(
        updates.len() >= done.len(),
        "expected the webhook to review each of Kueue's {} patches as an UPDATE: {updates:#?}",
        done.len()
    );
    for r in &updates {
        assert!(
            r["outcome"] == "allowed" && r["patch_ops"] == 0,
            "an UPDATE by Kueue got more than the empty answer: {r}"
        );
    }

    let log = c.log(KUEUE);
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("Reconciler error")
                && l.contains("train")
                // A stale read, retried at once (the 409s above).
                && !l.contains("the object has been modified")
        })
        .collect();
    assert!(
        errors.is_empty(),
        "Kueue failed to reconcile the JobSet:\n{}",
        errors.join("\n")
    );

    // 5. The same admission patch from a Kueue whose Go types predate the fields (built
    //    with k8s.io/api older than v0.34: no `restartPolicyRules`; older than v0.28: no
    //    container `restartPolicy` either): a JSON merge patch replaces the whole
    //    `replicatedJobs` list, so it sends the containers back without them. Replayed from
    //    a client on suspended, opted-in JobSets that Kueue does not manage (no queue label),
    //    without Kueue's `suspend: false`. Our webhook must restore what it injected (else
    //    JobSet's validation refuses the change of a container as immutable, and such a
    //    Kueue can never admit the JobSet). The first case keeps the container's
    //    `restartPolicy: Never`, which is what CREATE injected too (the `applied` record
    //    names the container), so it is no sign of a user's own setting.
    let mut patch = done[0]["requestObject"].clone();
    patch["metadata"]
        .as_object_mut()
        .expect("Kueue's patch has metadata")
        .remove("resourceVersion");
    patch["spec"]
        .as_object_mut()
        .expect("Kueue's patch has a spec")
        .remove("suspend");
    let mut refused = Vec::new();
    for (name, strip) in [
        ("old-kueue-no-rules", &["restartPolicyRules"][..]),
        (
            "old-kueue-no-container-policy",
            &["restartPolicyRules", "restartPolicy"][..],
        ),
    ] {
        let mut js = queued_jobset(
            name,
            "none",
            2,
            2,
            "500m",
            &[("restart.jobset.dev/in-place", "enabled")],
        );
        js["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("labels");
        js["spec"]["suspend"] = json!(true);
        create_ok(c, &ns, &js);
        assert_rules(template(&c.jobset(&ns, name)), &format!("{name}: created"));
        let mut old_patch = patch.clone();
        let container = old_patch
            .pointer_mut("/spec/replicatedJobs/0/template/spec/template/spec/containers/0")
            .and_then(Value::as_object_mut)
            .expect("Kueue's patch carries the container");
        for field in strip {
            container.remove(*field);
        }
        let out = c.kubectl(
            &[
                "patch",
                "jobset",
                name,
                "-n",
                &ns,
                "--type=merge",
                "-p",
                &old_patch.to_string(),
            ],
            None,
        );
        if !out.status.success() {
            refused.push(format!(
                "{name}: the admission patch of a Kueue that does not know {strip:?} was refused: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            continue;
        }
        let patched = c.jobset(&ns, name);
        assert_eq!(
            template(&patched)["nodeSelector"][POOL_LABEL],
            POOL,
            "{name}: the patch did not apply: {patched:#}"
        );
        assert_rules(
            template(&patched),
            &format!("{name}: patched without {strip:?}"),
        );
        assert_eq!(at(&patched, APPLIED), &applied, "{name}: {patched:#}");
        let restored = webhook
            .reviews(&ns, name)
            .into_iter()
            .any(|r| r["operation"] == "UPDATE" && r["patch_ops"].as_i64() > Some(0));
        assert!(
            restored,
            "{name}: the webhook did not restore anything on the UPDATE: {:#?}",
            webhook.reviews(&ns, name)
        );
    }
    assert!(refused.is_empty(), "{}", refused.join("\n"));
}
