//! The main path on the default cluster (our configuration as shipped, JobSet's own webhooks
//! registered too): opt-in, no opt-in, invalid opt-in.

use std::time::Duration;

use serde_json::json;

use crate::util::{TestTimer, at, mentions_rules};
use crate::{WEBHOOK_NAMESPACE, any_failure_rules, create, create_ok, shared, training_jobset};

/// Time the JobSet controller and the Job controller get to create children.
const CHILDREN: Duration = Duration::from_secs(60);

#[test]
fn opted_in_jobset_is_stored_with_rules_and_its_jobs_and_pods_carry_them() {
    let _t =
        TestTimer::start("opted_in_jobset_is_stored_with_rules_and_its_jobs_and_pods_carry_them");
    let s = shared();
    let c = &s.cluster;
    let ns = c.namespace("opt-in", &[]);
    create_ok(
        c,
        &ns,
        &training_jobset("train", &[("restart.jobset.dev/in-place", "enabled")]),
    );

    let stored = c.jobset(&ns, "train");
    let rjob = &stored["spec"]["replicatedJobs"][0]["template"]["spec"];
    let container = &rjob["template"]["spec"]["containers"][0];
    assert_eq!(container["restartPolicy"], "Never", "{stored:#}");
    assert_eq!(
        container["restartPolicyRules"],
        any_failure_rules("RestartAllContainers"),
        "{stored:#}"
    );
    assert_eq!(
        rjob["template"]["spec"]["restartPolicy"], "Never",
        "the pod template's restartPolicy must be ours (Never), not JobSet's default OnFailure: {stored:#}"
    );
    assert_eq!(
        at(&stored, "/metadata/annotations/restart.jobset.dev~1applied"),
        "workers/trainer=RestartAllContainers:NotIn(0)"
    );
    // JobSet's own defaulting ran as well (after ours: see ordering.rs).
    assert_eq!(at(&stored, "/spec/successPolicy/operator"), "All");
    assert_eq!(at(&stored, "/spec/network/enableDNSHostnames"), true);
    assert_eq!(rjob["completionMode"], "Indexed");

    // Our webhook ran first with a patch and was called again after JobSet's defaulting
    // changed the object (reinvocationPolicy: IfNeeded), answering with an empty patch.
    let reviews = s.webhook.reviews(&ns, "train");
    let ops: Vec<i64> = reviews
        .iter()
        .map(|r| r["patch_ops"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(
        ops.len(),
        2,
        "expected the first call and one reinvocation: {reviews:#?}"
    );
    assert!(ops[0] > 0, "first call patched: {ops:?}");
    assert_eq!(ops[1], 0, "reinvocation answered an empty patch: {ops:?}");

    // The JobSet controller creates the Jobs with the rules in their pod template ...
    let jobs = c.wait_children("jobs", &ns, "train", 2, CHILDREN);
    assert_eq!(jobs.len(), 2);
    for job in &jobs {
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never", "{job:#}");
        assert_eq!(pod["containers"][0]["restartPolicy"], "Never", "{job:#}");
        assert_eq!(
            pod["containers"][0]["restartPolicyRules"],
            any_failure_rules("RestartAllContainers"),
            "{job:#}"
        );
    }
    // ... and the Job controller creates Pods that carry them.
    let pods = c.wait_children("pods", &ns, "train", 4, CHILDREN);
    assert_eq!(pods.len(), 4);
    for pod in &pods {
        assert_eq!(pod["spec"]["restartPolicy"], "Never", "{pod:#}");
        assert_eq!(pod["spec"]["containers"][0]["restartPolicy"], "Never");
        assert_eq!(
            pod["spec"]["containers"][0]["restartPolicyRules"],
            any_failure_rules("RestartAllContainers"),
            "{pod:#}"
        );
        assert_eq!(
            at(pod, "/status/phase"),
            "Pending",
            "no kubelet: pods stay Pending"
        );
    }
    // The pod webhook (objectSelector: JobSet's label) saw each Pod twice (JobSet's pod
    // webhook, `mpod.kb.io`, runs after ours and adds a label, so ours is reinvoked) and left
    // it alone: the rules were already there.
    let pod_reviews: Vec<_> = s
        .webhook
        .reviews_in(&ns)
        .into_iter()
        .filter(|r| r["kind"] == "Pod")
        .collect();
    assert_eq!(pod_reviews.len(), 2 * pods.len(), "{pod_reviews:#?}");
    assert!(
        pod_reviews
            .iter()
            .all(|r| r["patch_ops"] == 0 && r["outcome"] == "allowed"),
        "{pod_reviews:#?}"
    );
}

/// A namespace labelled `restart.jobset.dev/in-place=enabled` is served by the
/// `namespace-default` webhook, which has no annotation matchCondition: a JobSet without any
/// annotation reaches the webhook there (it never does elsewhere, see
/// `jobset_without_annotation_is_stored_unchanged`), and an annotated one reaches it through
/// exactly one of the two JobSet webhooks (two calls: the first and the reinvocation after
/// JobSet's defaulting; both webhooks matching would make four).
///
/// The webhook's own path carries the API server's decision, so the JobSet gets its rules
/// without waiting for the webhook's namespace cache: right after the namespace is created
/// with the label, and right after `kubectl label` of an existing namespace. (That no cache
/// is read at all: tests/e2e/outage.rs, whose namespace-label variant runs `--no-cluster`.)
#[test]
fn labelled_namespace_routes_every_jobset_to_the_namespace_default_webhook() {
    let _t =
        TestTimer::start("labelled_namespace_routes_every_jobset_to_the_namespace_default_webhook");
    let s = shared();
    let c = &s.cluster;
    let ns = c.namespace("ns-default", &[("restart.jobset.dev/in-place", "enabled")]);
    let applied = "/metadata/annotations/restart.jobset.dev~1applied";

    create_ok(c, &ns, &training_jobset("unannotated", &[]));
    let calls = s.webhook.reviews(&ns, "unannotated");
    assert_eq!(calls.len(), 2, "{calls:#?}");
    let stored = c.jobset(&ns, "unannotated");
    assert_eq!(
        at(&stored, applied),
        "workers/trainer=RestartAllContainers:NotIn(0)",
        "{stored:#}"
    );

    // Labelled after it was created (and cached without the label): the very next create.
    for round in 0..3 {
        let later = c.namespace("ns-labelled-later", &[]);
        c.kubectl_ok(
            &[
                "label",
                "namespace",
                &later,
                "restart.jobset.dev/in-place=enabled",
            ],
            None,
        );
        let name = format!("right-after-label-{round}");
        create_ok(c, &later, &training_jobset(&name, &[]));
        let stored = c.jobset(&later, &name);
        assert_eq!(
            at(&stored, applied),
            "workers/trainer=RestartAllContainers:NotIn(0)",
            "created right after `kubectl label`: {stored:#}"
        );
    }

    create_ok(
        c,
        &ns,
        &training_jobset("annotated", &[("restart.jobset.dev/in-place", "enabled")]),
    );
    let calls = s.webhook.reviews(&ns, "annotated");
    assert_eq!(calls.len(), 2, "{calls:#?}");
    let stored = c.jobset(&ns, "annotated");
    assert_eq!(
        at(&stored, "/metadata/annotations/restart.jobset.dev~1applied"),
        "workers/trainer=RestartAllContainers:NotIn(0)"
    );

    // `in-place: disabled` on the JobSet wins over the namespace default.
    create_ok(
        c,
        &ns,
        &training_jobset("opted-out", &[("restart.jobset.dev/in-place", "disabled")]),
    );
    let stored = c.jobset(&ns, "opted-out");
    assert!(!mentions_rules(&stored), "{stored:#}");
    assert_eq!(
        at(
            &stored,
            "/spec/replicatedJobs/0/template/spec/template/spec/restartPolicy"
        ),
        "OnFailure"
    );
}

#[test]
fn jobset_without_annotation_is_stored_unchanged() {
    let _t = TestTimer::start("jobset_without_annotation_is_stored_unchanged");
    let s = shared();
    let c = &s.cluster;
    let ns = c.namespace("no-annotation", &[]);
    let name = "plain";
    let js = training_jobset(name, &[("example.com/owner", "someone")]);
    create_ok(c, &ns, &js);
    let stored = c.jobset(&ns, name);
    assert!(!mentions_rules(&stored), "{stored:#}");
    assert_eq!(
        at(&stored, "/metadata/annotations"),
        &json!({"example.com/owner": "someone"}),
        "no applied annotation"
    );
    assert_eq!(
        at(
            &stored,
            "/spec/replicatedJobs/0/template/spec/template/spec/restartPolicy"
        ),
        "OnFailure",
        "JobSet's default, untouched by us"
    );
    // Byte-for-byte the spec the cluster stores without our webhook: the same JobSet created
    // in our own namespace, which the shipped namespaceSelectors exclude.
    let baseline_name = format!("{name}-{}", ns.name);
    let mut baseline = js.clone();
    baseline["metadata"]["name"] = json!(baseline_name);
    create_ok(c, WEBHOOK_NAMESPACE, &baseline);
    let baseline = c.jobset(WEBHOOK_NAMESPACE, &baseline_name);
    assert_eq!(stored["spec"], baseline["spec"]);
    // The matchCondition kept the request away from the webhook altogether.
    assert!(
        s.webhook.reviews(&ns, name).is_empty(),
        "the webhook was called for a JobSet without restart.jobset.dev/ annotations"
    );
    assert!(
        s.webhook
            .reviews(WEBHOOK_NAMESPACE, &baseline_name)
            .is_empty()
    );
}

#[test]
fn invalid_annotation_is_denied_with_our_message() {
    let _t = TestTimer::start("invalid_annotation_is_denied_with_our_message");
    let s = shared();
    let c = &s.cluster;
    let ns = c.namespace("invalid", &[]);
    let expected = r#"restart.jobset.dev/on-exit-codes: "42,abc": "abc" is not an exit code (0-255) or range a-b"#;
    let js = training_jobset(
        "bad",
        &[
            ("restart.jobset.dev/in-place", "enabled"),
            ("restart.jobset.dev/on-exit-codes", "42,abc"),
        ],
    );
    let (ok, stderr) = create(c, &ns, &js);
    assert!(!ok, "kubectl create must fail");
    assert!(
        stderr.contains(expected),
        "kubectl create's stderr lacks our message {expected:?}:\n{stderr}"
    );
    assert!(
        stderr.contains("denied the request"),
        "the API server names the denial:\n{stderr}"
    );
    // `kubectl apply` (client-side, the common path) fails the same way.
    let out = c.kubectl(&["apply", "-n", &ns, "-f", "-"], Some(&js.to_string()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "kubectl apply must fail");
    assert!(
        stderr.contains(expected),
        "kubectl apply's stderr:\n{stderr}"
    );
    // Nothing was stored.
    let out = c.kubectl(&["get", "jobset", "bad", "-n", &ns], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
}
