//! The clients that write JobSets again and again: server-side apply (GitOps tools, `kubectl
//! apply --server-side`), client-side `kubectl apply`, `kubectl replace`, and a queue
//! controller's suspend / schedule / resume. Each step must succeed and leave the rules, the
//! pod template's `restartPolicy` and the `applied` record in place, and Jobs must carry them.

use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::util::{TestTimer, at};
use crate::{any_failure_rules, shared, training_jobset};

const CHILDREN: Duration = Duration::from_secs(60);
const APPLIED: &str = "/metadata/annotations/restart.jobset.dev~1applied";
const RECORD: &str = "workers/trainer=RestartAllContainers:NotIn(0)";

fn opted_in(name: &str) -> Value {
    training_jobset(name, &[("restart.jobset.dev/in-place", "enabled")])
}

/// Runs kubectl with `manifest` on stdin; must succeed. Returns stderr (warnings).
fn kubectl_in(c: &Cluster, args: &[&str], manifest: &Value) -> String {
    let out = c.kubectl(args, Some(&manifest.to_string()));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "kubectl {} failed ({}):\n{stderr}",
        args.join(" "),
        out.status
    );
    stderr
}

/// The stored JobSet still carries everything CREATE added.
fn assert_keeps_rules(stored: &Value, step: &str) {
    let pod = at(stored, "/spec/replicatedJobs/0/template/spec/template/spec");
    assert_eq!(pod["restartPolicy"], "Never", "{step}: {stored:#}");
    assert_eq!(
        pod["containers"][0]["restartPolicy"], "Never",
        "{step}: {stored:#}"
    );
    assert_eq!(
        pod["containers"][0]["restartPolicyRules"],
        any_failure_rules("RestartAllContainers"),
        "{step}: {stored:#}"
    );
    assert_eq!(at(stored, APPLIED), RECORD, "{step}: {stored:#}");
}

fn assert_jobs_keep_rules(c: &Cluster, ns: &str, name: &str) {
    for job in c.wait_children("jobs", ns, name, 2, CHILDREN) {
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never", "{job:#}");
        assert_eq!(
            pod["containers"][0]["restartPolicyRules"],
            any_failure_rules("RestartAllContainers"),
            "{job:#}"
        );
    }
}

/// Which Apply managers own the container's `restartPolicyRules` in `managedFields`.
fn rule_owners(stored: &Value) -> Vec<String> {
    stored["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            m["fieldsV1"]
                .to_string()
                .contains("\"f:restartPolicyRules\"")
        })
        .map(|m| {
            format!(
                "{}/{}",
                m["manager"].as_str().unwrap_or("?"),
                m["operation"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

#[test]
fn server_side_apply_again_and_with_another_manager_keeps_the_rules() {
    let _t = TestTimer::start("server_side_apply_again_and_with_another_manager_keeps_the_rules");
    let s = shared();
    let c = &s.cluster;
    let ns = c.namespace("ssa", &[]);
    let manifest = opted_in("ssa");
    let apply = ["apply", "--server-side", "-n", &ns, "-f", "-"];

    kubectl_in(c, &apply, &manifest);
    let first = c.jobset(&ns, "ssa");
    assert_keeps_rules(&first, "first apply");
    // The webhook's additions are recorded under the applier: the next apply of a manifest
    // without them removes them, which is what UPDATE handling restores.
    assert_eq!(rule_owners(&first), ["kubectl/Apply"], "{first:#}");
    // Running: JobSet now refuses changes to the pod templates.
    assert_jobs_keep_rules(c, &ns, "ssa");

    let stderr = kubectl_in(c, &apply, &manifest);
    let second = c.jobset(&ns, "ssa");
    assert_keeps_rules(&second, "second apply");
    assert_eq!(
        second["metadata"]["generation"], first["metadata"]["generation"],
        "re-applying the same manifest must not change the spec: {stderr}"
    );
    let reviews = s.webhook.reviews(&ns, "ssa");
    assert!(
        reviews
            .iter()
            .any(|r| r["operation"] == "UPDATE" && r["patch_ops"].as_i64() > Some(0)),
        "the second apply dropped our fields and the webhook restored them: {reviews:#?}"
    );

    let forced = [
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=gitops",
        "-n",
        &ns,
        "-f",
        "-",
    ];
    kubectl_in(c, &forced, &manifest);
    let third = c.jobset(&ns, "ssa");
    assert_keeps_rules(&third, "apply by another manager");
    assert_eq!(
        third["metadata"]["generation"],
        first["metadata"]["generation"]
    );
    let managers: Vec<String> = third["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            format!(
                "{}/{}",
                m["manager"].as_str().unwrap_or("?"),
                m["operation"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert!(
        managers.contains(&"kubectl/Apply".to_owned())
            && managers.contains(&"gitops/Apply".to_owned()),
        "{managers:?}"
    );
    // Both appliers now co-own the restored fields; either applying alone keeps them.
    let mut owners = rule_owners(&third);
    owners.sort();
    assert_eq!(owners, ["gitops/Apply", "kubectl/Apply"], "{third:#}");
    assert_jobs_keep_rules(c, &ns, "ssa");
}

#[test]
fn client_side_apply_twice_and_replace_keep_the_rules() {
    let _t = TestTimer::start("client_side_apply_twice_and_replace_keep_the_rules");
    let s = shared();
    let c = &s.cluster;
    let ns = c.namespace("csa", &[]);
    let manifest = opted_in("csa");
    let apply = ["apply", "-n", &ns, "-f", "-"];
    kubectl_in(c, &apply, &manifest);
    assert_keeps_rules(&c.jobset(&ns, "csa"), "first apply");
    assert_jobs_keep_rules(c, &ns, "csa");
    kubectl_in(c, &apply, &manifest);
    assert_keeps_rules(&c.jobset(&ns, "csa"), "second apply");

    // `kubectl replace` sends the whole manifest: without the rules and the record.
    let generation = c.jobset(&ns, "csa")["metadata"]["generation"].clone();
    let stderr = kubectl_in(c, &["replace", "-n", &ns, "-f", "-"], &manifest);
    let replaced = c.jobset(&ns, "csa");
    assert_keeps_rules(&replaced, "replace");
    assert_eq!(replaced["metadata"]["generation"], generation);
    assert!(
        stderr.contains("restored as recorded in restart.jobset.dev/applied"),
        "kubectl shows the webhook's warning: {stderr}"
    );
}

#[test]
fn a_suspended_jobset_scheduled_and_resumed_by_a_queue_keeps_the_rules() {
    let _t =
        TestTimer::start("a_suspended_jobset_scheduled_and_resumed_by_a_queue_keeps_the_rules");
    let s = shared();
    let c = &s.cluster;
    let ns = c.namespace("queued", &[]);
    let mut manifest = opted_in("queued");
    manifest["spec"]["suspend"] = json!(true);
    kubectl_in(c, &["create", "-n", &ns, "-f", "-"], &manifest);
    assert_keeps_rules(&c.jobset(&ns, "queued"), "created suspended");

    // What a queue does on admission: node selector and tolerations into the pod template,
    // then resume. Both are UPDATEs that keep our fields: the webhook answers them empty.
    let admit = json!({"spec": {"suspend": false, "replicatedJobs": [{
        "name": "workers",
        "template": {"spec": {"template": {"spec": {
            "nodeSelector": {"pool": "a100"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        }}}},
    }]}});
    let mut stored = c.jobset(&ns, "queued");
    stored["spec"]["suspend"] = admit["spec"]["suspend"].clone();
    let pod = &mut stored["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"];
    pod["nodeSelector"] =
        admit["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["nodeSelector"]
            .clone();
    pod["tolerations"] = admit["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
        ["tolerations"]
        .clone();
    kubectl_in(c, &["replace", "-n", &ns, "-f", "-"], &stored);
    let admitted = c.jobset(&ns, "queued");
    assert_keeps_rules(&admitted, "admitted");
    assert_eq!(
        at(
            &admitted,
            "/spec/replicatedJobs/0/template/spec/template/spec/nodeSelector/pool"
        ),
        "a100"
    );
    let updates: Vec<Value> = s
        .webhook
        .reviews(&ns, "queued")
        .into_iter()
        .filter(|r| r["operation"] == "UPDATE")
        .collect();
    assert!(!updates.is_empty(), "the UPDATE reached the webhook");
    assert!(
        updates.iter().all(|r| r["patch_ops"] == 0),
        "an update that keeps our fields gets an empty answer: {updates:#?}"
    );
    let jobs = c.wait_children("jobs", &ns, "queued", 2, CHILDREN);
    for job in &jobs {
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["nodeSelector"]["pool"], "a100", "{job:#}");
        assert_eq!(
            pod["containers"][0]["restartPolicyRules"],
            any_failure_rules("RestartAllContainers"),
            "{job:#}"
        );
    }
}

#[test]
fn changing_the_settings_of_a_suspended_jobset_is_not_fought() {
    let _t = TestTimer::start("changing_the_settings_of_a_suspended_jobset_is_not_fought");
    let s = shared();
    let c = &s.cluster;
    let ns = c.namespace("optout", &[]);
    let mut manifest = opted_in("optout");
    manifest["spec"]["suspend"] = json!(true);
    let apply = ["apply", "--server-side", "-n", &ns, "-f", "-"];
    kubectl_in(c, &apply, &manifest);
    assert_keeps_rules(&c.jobset(&ns, "optout"), "created suspended");

    // The user opts out in the manifest and re-applies: the applier's fields (ours among
    // them) go, and the webhook does not put them back.
    manifest["metadata"]["annotations"]["restart.jobset.dev/in-place"] = json!("disabled");
    let out = c.kubectl(&apply, Some(&manifest.to_string()));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stored = c.jobset(&ns, "optout");
    let container = at(
        &stored,
        "/spec/replicatedJobs/0/template/spec/template/spec/containers/0",
    );
    if out.status.success() {
        assert!(
            stderr.contains("take effect when a JobSet is created"),
            "the webhook says why it restored nothing: {stderr}"
        );
        assert!(container.get("restartPolicyRules").is_none(), "{stored:#}");
    } else {
        // JobSet's own validation may refuse the template change; then nothing changed and
        // the refusal is JobSet's, not ours.
        assert!(!stderr.contains("restart.jobset.dev"), "{stderr}");
        assert!(container.get("restartPolicyRules").is_some(), "{stored:#}");
    }

    // An invalid value in an update is refused with the same text as on CREATE.
    manifest["metadata"]["annotations"]["restart.jobset.dev/in-place"] = json!("maybe");
    let out = c.kubectl(&apply, Some(&manifest.to_string()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("restart.jobset.dev/in-place: \"maybe\""),
        "{stderr}"
    );
}
