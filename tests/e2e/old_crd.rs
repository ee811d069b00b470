//! JobSet v0.9.0's CRD (k8s.io/api 0.33) has no `restartPolicyRules` in its schema, and the
//! schema does not preserve unknown fields: the API server prunes what our webhook injects,
//! silently. This is what `check` must detect, and why the pod target exists.

use std::time::Duration;

use serde_json::json;

use crate::cluster::{Cluster, ClusterOptions, JOBSET_V0_9_0};
use crate::util::{TestTimer, at, mentions_rules};
use crate::webhook::{Webhook, WebhookOptions};
use crate::{create, create_ok, mutate_preview, training_jobset};

const POD: &str = "/spec/replicatedJobs/0/template/spec/template/spec";

#[test]
fn jobset_v0_9_0_crd_prunes_the_injected_rules() {
    let _t = TestTimer::start("jobset_v0_9_0_crd_prunes_the_injected_rules");
    let c = Cluster::start(ClusterOptions {
        name: "jobset-v0.9.0",
        jobset_crd: JOBSET_V0_9_0,
        ..ClusterOptions::default()
    });
    let webhook = Webhook::start(&c, WebhookOptions::default());
    let ns = c.namespace("old-crd", &[]);
    // register() waits until a dry-run create carries our applied annotation, which the old
    // schema keeps (metadata is never pruned).
    webhook.register(&c, None, &ns);

    // The user's JobSet has no rules, so kubectl's strict field validation (it checks the
    // request body, before admission) passes; the rules our patch adds are pruned after.
    create_ok(
        &c,
        &ns,
        &training_jobset("pruned", &[("restart.jobset.dev/in-place", "enabled")]),
    );
    let stored = c.jobset(&ns, "pruned");
    assert!(
        !mentions_rules(&stored),
        "the API server pruned restartPolicyRules: {stored:#}"
    );
    // What the old schema knows survives: the pod's and the container's restartPolicy (the
    // latter exists since sidecars, 1.28), and our annotation, which now claims rules that
    // are not there.
    assert_eq!(at(&stored, &format!("{POD}/restartPolicy")), "Never");
    assert_eq!(
        at(&stored, &format!("{POD}/containers/0/restartPolicy")),
        "Never"
    );
    assert_eq!(
        at(&stored, "/metadata/annotations/restart.jobset.dev~1applied"),
        "workers/trainer=RestartAllContainers:NotIn(0)"
    );
    // Proof that the patch had the rules: the webhook answered with a 4-operation patch
    // (container restartPolicy, container restartPolicyRules, pod restartPolicy, annotation)
    // ...
    let reviews = webhook.reviews(&ns, "pruned");
    assert!(
        reviews.first().and_then(|r| r["patch_ops"].as_i64()) == Some(4),
        "{reviews:#?}"
    );
    // ... and the offline preview of the same input shows the rules in it.
    let preview = mutate_preview(
        &training_jobset("pruned", &[("restart.jobset.dev/in-place", "enabled")]),
        &["-o", "patch"],
    );
    assert!(
        preview
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op["path"]
                .as_str()
                .unwrap_or_default()
                .ends_with("/restartPolicyRules"))),
        "{preview:#}"
    );

    // A JobSet that already carries rules: kubectl's default strict validation refuses the
    // unknown field; with --validate=false (fieldValidation=Ignore) it is stored pruned.
    let mut with_rules = training_jobset("user-rules", &[]);
    with_rules["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"]
        [0]["restartPolicy"] = json!("Never");
    with_rules["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"]
        [0]["restartPolicyRules"] =
        json!([{"action": "Restart", "exitCodes": {"operator": "In", "values": [42]}}]);
    let (ok, stderr) = create(&c, &ns, &with_rules);
    assert!(!ok, "strict validation rejects it");
    assert!(
        stderr.contains("strict decoding error: unknown field")
            && stderr.contains("restartPolicyRules"),
        "{stderr}"
    );
    c.kubectl_ok(
        &["create", "--validate=false", "-n", &ns, "-f", "-"],
        Some(&with_rules.to_string()),
    );
    let stored = c.jobset(&ns, "user-rules");
    assert!(!mentions_rules(&stored), "{stored:#}");
    assert_eq!(
        at(&stored, &format!("{POD}/containers/0/restartPolicy")),
        "Never"
    );

    // The child Jobs and Pods (kube-controller-manager runs) carry the container
    // restartPolicy Never without rules: plain "never restart", not in-place restarts.
    let jobs = c.wait_children("jobs", &ns, "pruned", 2, Duration::from_secs(60));
    for job in &jobs {
        assert!(!mentions_rules(job), "{job:#}");
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["restartPolicy"],
            "Never"
        );
    }
}
