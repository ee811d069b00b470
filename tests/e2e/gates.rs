//! What the cluster does with the injected rules when its feature gates are off. The JobSet
//! is a CRD, so the JobSet always keeps what the webhook wrote; the gates act when the JobSet
//! controller creates the child Jobs (and the Job controller the Pods).

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::{Cluster, ClusterOptions, control_plane_bin};
use crate::util::{TestTimer, at, free_port, mentions_rules, wait_for};
use crate::webhook::{Webhook, WebhookOptions};
use crate::{any_failure_rules, create_ok, training_jobset};

const CHILDREN: Duration = Duration::from_secs(60);
const OPTED_IN: (&str, &str) = ("restart.jobset.dev/in-place", "enabled");

/// kube-apiserver 1.36 refuses `ContainerRestartRules=false` on its own:
/// `RestartAllContainersOnContainerExits` (on by default) depends on it. Turning rules off
/// therefore means turning both off.
#[test]
fn container_restart_rules_off_alone_is_refused_by_the_apiserver() {
    let _t = TestTimer::start("container_restart_rules_off_alone_is_refused_by_the_apiserver");
    let bin = control_plane_bin();
    let dir = tempfile::tempdir().expect("temporary folder");
    let out = Command::new(bin.join("kube-apiserver"))
        .arg(format!("--etcd-servers=http://127.0.0.1:{}", free_port()))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={}", free_port()))
        .arg(format!("--cert-dir={}", dir.path().display()))
        .arg("--service-cluster-ip-range=10.0.0.0/24")
        .arg("--feature-gates=ContainerRestartRules=false")
        .output()
        .expect("running kube-apiserver");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "kube-apiserver must refuse to start");
    assert!(
        stderr.contains(
            "RestartAllContainersOnContainerExits is enabled, but depends on features that are disabled: [ContainerRestartRules]"
        ),
        "{stderr}"
    );
}

/// `ContainerRestartRules=false` (with `RestartAllContainersOnContainerExits=false`, which
/// depends on it): the JobSet keeps the rules, the child Jobs and Pods silently lose the
/// container `restartPolicy` and `restartPolicyRules` (HTTP 201, no event, no warning); the
/// pod-level `restartPolicy: Never` stays.
#[test]
fn container_restart_rules_off_silently_drops_the_rules_from_jobs_and_pods() {
    let _t =
        TestTimer::start("container_restart_rules_off_silently_drops_the_rules_from_jobs_and_pods");
    let c = Cluster::start(ClusterOptions {
        name: "rules-off",
        feature_gates: "ContainerRestartRules=false,RestartAllContainersOnContainerExits=false,NodeDeclaredFeatures=true".to_owned(),
        ..ClusterOptions::default()
    });
    // Offline (--no-cluster): this test records what the API server itself does with the
    // rules; the cluster-aware behaviour on this cluster is tests/e2e/cluster_aware/.
    let webhook =
        Webhook::start_with_args(&c, WebhookOptions::default(), &["--no-cluster".to_owned()]);
    let ns = c.namespace("rules-off", &[]);
    webhook.register(&c, None, &ns);
    create_ok(&c, &ns, &training_jobset("train", &[OPTED_IN]));

    let stored = c.jobset(&ns, "train");
    let pod = at(
        &stored,
        "/spec/replicatedJobs/0/template/spec/template/spec",
    );
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["containers"][0]["restartPolicy"], "Never");
    // Offline the default action is Restart (the cluster's support is unknown).
    assert_eq!(
        pod["containers"][0]["restartPolicyRules"],
        any_failure_rules("Restart"),
        "the JobSet (a CRD) keeps the rules: {stored:#}"
    );

    let jobs = c.wait_children("jobs", &ns, "train", 2, CHILDREN);
    for job in &jobs {
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never", "{job:#}");
        assert_eq!(
            pod["containers"][0]["restartPolicy"],
            Value::Null,
            "dropped: {job:#}"
        );
        assert!(!mentions_rules(job), "dropped: {job:#}");
    }
    let pods = c.wait_children("pods", &ns, "train", 4, CHILDREN);
    for pod in &pods {
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["spec"]["containers"][0]["restartPolicy"], Value::Null);
        assert!(!mentions_rules(pod), "{pod:#}");
    }
    let failures: Vec<_> = c
        .events(&ns, "train")
        .into_iter()
        .filter(|(reason, _)| reason == "JobCreationFailed")
        .collect();
    assert!(failures.is_empty(), "silently: {failures:?}");
}

/// Only `RestartAllContainersOnContainerExits=false`: a JobSet asking for
/// `RestartAllContainers` is stored (by an offline webhook, which cannot know), but the API server rejects its child Jobs, which the
/// JobSet controller reports as `JobCreationFailed` events (and keeps retrying); with
/// `restart.jobset.dev/action: Restart` the Jobs and Pods are created with the rules.
#[test]
fn restart_all_containers_off_rejects_the_child_jobs_of_the_default_action() {
    let _t =
        TestTimer::start("restart_all_containers_off_rejects_the_child_jobs_of_the_default_action");
    let c = Cluster::start(ClusterOptions {
        name: "restart-all-off",
        feature_gates: "ContainerRestartRules=true,RestartAllContainersOnContainerExits=false,NodeDeclaredFeatures=true".to_owned(),
        ..ClusterOptions::default()
    });
    // Offline (--no-cluster): this test records what the API server itself does with the
    // rules; the cluster-aware behaviour on this cluster is tests/e2e/cluster_aware/.
    let webhook =
        Webhook::start_with_args(&c, WebhookOptions::default(), &["--no-cluster".to_owned()]);
    let ns = c.namespace("restart-all-off", &[]);
    webhook.register(&c, None, &ns);

    // RestartAllContainers, asked for explicitly (offline the default is Restart).
    create_ok(
        &c,
        &ns,
        &training_jobset(
            "all",
            &[
                OPTED_IN,
                ("restart.jobset.dev/action", "RestartAllContainers"),
            ],
        ),
    );
    let stored = c.jobset(&ns, "all");
    assert_eq!(
        at(
            &stored,
            "/spec/replicatedJobs/0/template/spec/template/spec/containers/0/restartPolicyRules"
        ),
        &any_failure_rules("RestartAllContainers"),
        "the JobSet is stored with the rules: {stored:#}"
    );
    let event = wait_for("a JobCreationFailed event on JobSet all", CHILDREN, || {
        c.events(&ns, "all")
            .into_iter()
            .find(|(reason, _)| reason == "JobCreationFailed")
            .ok_or_else(|| "no JobCreationFailed event yet".to_owned())
    });
    let expected = r#"spec.template.spec.containers[0].restartPolicyRules[0].action: Unsupported value: "RestartAllContainers": supported values: "Restart""#;
    assert!(
        event.1.contains(expected),
        "event message lacks {expected:?}: {}",
        event.1
    );
    assert!(
        c.log("jobset-controller").contains("creating jobs"),
        "the controller logs the failed create"
    );
    assert!(
        c.children("jobs", &ns, "all").is_empty(),
        "no Job was created"
    );

    // action: Restart works on this cluster.
    create_ok(
        &c,
        &ns,
        &training_jobset(
            "restart",
            &[OPTED_IN, ("restart.jobset.dev/action", "Restart")],
        ),
    );
    let jobs = c.wait_children("jobs", &ns, "restart", 2, CHILDREN);
    for job in &jobs {
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["restartPolicyRules"],
            any_failure_rules("Restart"),
            "{job:#}"
        );
    }
    let pods = c.wait_children("pods", &ns, "restart", 4, CHILDREN);
    for pod in &pods {
        assert_eq!(pod["spec"]["containers"][0]["restartPolicy"], "Never");
        assert_eq!(
            pod["spec"]["containers"][0]["restartPolicyRules"],
            any_failure_rules("Restart"),
            "{pod:#}"
        );
    }
    // Still nothing for the first one.
    assert!(c.children("jobs", &ns, "all").is_empty());
}
