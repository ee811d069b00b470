//! The clients that write JobSets again and again: server-side apply (GitOps tools, `kubectl
//! apply --server-side`), client-side `kubectl apply`, `kubectl replace`, and a queue
//! controller's suspend / schedule / resume. Each step must succeed and leave the rules, the
//! pod template's `restartPolicy` and the `applied` record in place, and Jobs must carry them.

use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::util::{TestTimer, at};
use crate::{Shared, any_failure_rules, shared, training_jobset};

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

/// The UPDATE reviews the shared webhook logged for `ns/name`.
fn update_reviews(s: &Shared, ns: &str, name: &str) -> Vec<Value> {
    s.webhook
        .reviews(ns, name)
        .into_iter()
        .filter(|r| r["operation"] == "UPDATE")
        .collect()
}

/// The stored JobSet with its `managedFields` (kubectl hides them by default).
fn with_managed_fields(c: &Cluster, ns: &str, name: &str) -> Value {
    c.get_json(&["jobset", name, "-n", ns, "--show-managed-fields"])
}

/// `manager/operation` of each `managedFields` entry of `stored` for which `owns` holds.
fn managers(stored: &Value, owns: impl Fn(&Value) -> bool) -> Vec<String> {
    stored["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| owns(m))
        .map(|m| {
            format!(
                "{}/{}",
                m["manager"].as_str().unwrap_or("?"),
                m["operation"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// Which Apply managers own the container's `restartPolicyRules` in `managedFields`.
fn rule_owners(stored: &Value) -> Vec<String> {
    managers(stored, |m| {
        m["fieldsV1"]
            .to_string()
            .contains("\"f:restartPolicyRules\"")
    })
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
    let first = with_managed_fields(c, &ns, "ssa");
    assert_keeps_rules(&first, "first apply");
    // Kubernetes 1.36 attributes fields that mutating admission adds during an apply to no
    // manager, so a later apply of the same manifest does not remove them.
    assert_eq!(
        rule_owners(&first),
        Vec::<String>::new(),
        "{:#}",
        first["metadata"]["managedFields"]
    );
    // Running: JobSet now refuses changes to the pod templates.
    assert_jobs_keep_rules(c, &ns, "ssa");

    let stderr = kubectl_in(c, &apply, &manifest);
    let second = c.jobset(&ns, "ssa");
    assert_keeps_rules(&second, "second apply");
    assert_eq!(
        second["metadata"]["generation"], first["metadata"]["generation"],
        "re-applying the same manifest must not change the spec: {stderr}"
    );
    // The apply reached the webhook as an UPDATE that dropped nothing: an empty answer.
    let updates = update_reviews(s, &ns, "ssa");
    assert!(
        !updates.is_empty() && updates.iter().all(|r| r["patch_ops"] == 0),
        "{updates:#?}"
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
    let third = with_managed_fields(c, &ns, "ssa");
    assert_keeps_rules(&third, "apply by another manager");
    assert_eq!(
        third["metadata"]["generation"],
        first["metadata"]["generation"]
    );
    let managers = managers(&third, |_| true);
    assert!(
        managers.contains(&"kubectl/Apply".to_owned())
            && managers.contains(&"gitops/Apply".to_owned()),
        "{managers:?}"
    );
    assert_eq!(rule_owners(&third), Vec::<String>::new(), "{third:#}");
    assert_jobs_keep_rules(c, &ns, "ssa");
}

#[test]
fn client_side_apply_twice_and_replace_keep_the_rules() {
    let _t = TestTimer::start("client_side_apply_twice_and_replace_keep_the_rules");
    let s = shared();
    let c = &s.cluster;
    let ns = c.namespace("csa", &[]);

    // A bare manifest cannot be applied twice client-side or replaced, with or without us:
    // for custom resources kubectl sends a JSON merge patch, which replaces the whole
    // replicatedJobs list, and JobSet's defaults (set on CREATE only) go with it.
    let bare = training_jobset("bare", &[]);
    kubectl_in(c, &["apply", "-n", &ns, "-f", "-"], &bare);
    let out = c.kubectl(&["apply", "-n", &ns, "-f", "-"], Some(&bare.to_string()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("field is immutable"),
        "JobSet refuses its own defaults being dropped: {stderr}"
    );

    // A manifest that spells out JobSet's defaults (as GitOps repositories often hold them)
    // applies again and replaces cleanly; ours are what the update drops.
    let manifest = complete_manifest(c, &ns, opted_in("csa"));
    let apply = ["apply", "-n", &ns, "-f", "-"];
    kubectl_in(c, &apply, &manifest);
    assert_keeps_rules(&c.jobset(&ns, "csa"), "first apply");
    assert_jobs_keep_rules(c, &ns, "csa");
    let stderr = kubectl_in(c, &apply, &manifest);
    assert_keeps_rules(&c.jobset(&ns, "csa"), "second apply");
    assert!(
        stderr.contains("restored as recorded in restart.jobset.dev/applied"),
        "kubectl shows the webhook's warning: {stderr}"
    );

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

/// `manifest` with JobSet's defaults spelled out: what JobSet's defaulting makes of it
/// without our annotations (a server dry run, which our webhook never sees), with the
/// server's metadata removed, the annotations put back, and the pod templates'
/// `restartPolicy` left unset as in `manifest`.
fn complete_manifest(c: &Cluster, ns: &str, manifest: Value) -> Value {
    let mut plain = manifest.clone();
    if let Some(m) = plain["metadata"].as_object_mut() {
        m.remove("annotations");
    }
    let (mut defaulted, stderr) = c.dry_run_create(ns, &plain);
    assert!(defaulted.is_object(), "dry run of {plain}: {stderr}");
    defaulted["metadata"] = manifest["metadata"].clone();
    if let Some(m) = defaulted.as_object_mut() {
        m.remove("status");
    }
    // JobSet's pod template default (OnFailure) is left out, as the user left it out.
    for rj in defaulted["spec"]["replicatedJobs"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if let Some(pod) = rj["template"]["spec"]["template"]["spec"].as_object_mut() {
            pod.remove("restartPolicy");
        }
    }
    defaulted
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
    let updates = update_reviews(s, &ns, "queued");
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

    // The user opts out in the manifest and re-applies. The update changes a setting: the
    // webhook adds and restores nothing, and says so. Our fields stay, as nobody owns them
    // (see the server-side apply test) and JobSet forbids changing its pod templates' other
    // fields even while suspended: opting an existing JobSet out means recreating it.
    manifest["metadata"]["annotations"]["restart.jobset.dev/in-place"] = json!("disabled");
    let stderr = kubectl_in(c, &apply, &manifest);
    assert!(
        stderr.contains("take effect when a JobSet is created"),
        "the webhook says why it does nothing: {stderr}"
    );
    let stored = c.jobset(&ns, "optout");
    assert_eq!(
        at(
            &stored,
            "/metadata/annotations/restart.jobset.dev~1in-place"
        ),
        "disabled"
    );
    assert_keeps_rules(&stored, "opted out by re-apply");
    let updates = update_reviews(s, &ns, "optout");
    assert!(
        !updates.is_empty() && updates.iter().all(|r| r["patch_ops"] == 0),
        "{updates:#?}"
    );

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
