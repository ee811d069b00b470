//! Clusters that lack a capability: an old JobSet CRD, no RestartAllContainers gate, an API
//! server that drops the rules; what `serve` and `check` make of them.

use super::*;

/// A cluster with JobSet v0.9.0's CRD (no `restartPolicyRules` in its schema) and our
/// webhook with both targets, registered as shipped.
pub(super) fn old_crd_cluster(name: &'static str) -> (Cluster, Webhook) {
    let cluster = Cluster::start(ClusterOptions {
        name,
        jobset_crd: JOBSET_V0_9_0,
        ..ClusterOptions::default()
    });
    cluster.ensure_namespace(WEBHOOK_NAMESPACE);
    let webhook = Webhook::start_registered(&cluster, WebhookOptions::targets("jobsets,pods"));
    (cluster, webhook)
}

#[test]
pub(super) fn old_jobset_crd_is_detected_and_check_reports_the_pruning() {
    let _t = TestTimer::start("old_jobset_crd_is_detected_and_check_reports_the_pruning");
    let (cluster, webhook) = old_crd_cluster("old-crd-check");

    let caps = readyz_capabilities(&webhook);
    assert_eq!(caps["jobsetCrdInstalled"], true, "{caps}");
    assert_eq!(caps["jobsetCrdKeepsRules"], false, "{caps}");
    assert_eq!(caps["restartPolicyRules"], true, "{caps}");
    assert_eq!(
        webhook.metric(
            "jobset_restart_webhook_cluster_capability{capability=\"jobset_crd_keeps_rules\"}"
        ),
        Some(0.0)
    );

    // JobSet reviews warn and point to the pod target.
    let ns = cluster.namespace("old-crd", &[]);
    let warnings = create_ok(&cluster, &ns, &training_jobset("train", &[ENABLED]));
    assert!(
        warnings.contains("predates restartPolicyRules"),
        "the JobSet review warns about the pruning CRD: {warnings}"
    );
    let stored = cluster.jobset(&ns, "train");
    assert!(
        !mentions_rules(&stored),
        "the v0.9.0 CRD prunes the rules: {stored:#}"
    );

    // `check` sees the pruning; with the pod target registered it is a warning ...
    let (code, report) = check_json(&cluster, &[]);
    assert_eq!(
        report["capabilities"]["jobsetCrdKeepsRules"]["value"], false,
        "{report:#}"
    );
    assert_eq!(report["targets"], "jobsets,pods", "{report:#}");
    assert_eq!(code, 0, "{report:#}");
    assert!(
        report["warnings"]
            .to_string()
            .contains("prunes restartPolicyRules"),
        "{report:#}"
    );
    // ... and with the JobSet target alone, in-place restart cannot work.
    let (code, stdout, _) = check(&cluster, &["--targets", "jobsets"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("problem: the installed JobSet CRD prunes restartPolicyRules"),
        "{stdout}"
    );
}

#[test]
pub(super) fn old_jobset_crd_pods_get_the_rules_from_the_pod_target() {
    let _t = TestTimer::start("old_jobset_crd_pods_get_the_rules_from_the_pod_target");
    let (cluster, _webhook) = old_crd_cluster("old-crd-pods");
    let ns = cluster.namespace("old-crd", &[]);
    create_ok(&cluster, &ns, &training_jobset("train", &[ENABLED]));
    let stored = cluster.jobset(&ns, "train");
    assert!(!mentions_rules(&stored), "{stored:#}");
    let pods = cluster.wait_children("pods", &ns, "train", 4, CHILDREN);
    for pod in &pods {
        let container = at(pod, "/spec/containers/0");
        assert_eq!(container["restartPolicy"], "Never", "{pod:#}");
        assert_eq!(
            container["restartPolicyRules"],
            any_failure_rules("RestartAllContainers"),
            "the pod target put the rules on the pod: {pod:#}"
        );
    }
}

#[test]
pub(super) fn without_restart_all_containers_the_default_is_restart_and_explicit_asks_are_denied() {
    let _t = TestTimer::start(
        "without_restart_all_containers_the_default_is_restart_and_explicit_asks_are_denied",
    );
    let cluster = Cluster::start(ClusterOptions {
        name: "no-restart-all",
        feature_gates: "ContainerRestartRules=true,RestartAllContainersOnContainerExits=false,\
                        NodeDeclaredFeatures=true"
            .to_owned(),
        ..ClusterOptions::default()
    });
    cluster.ensure_namespace(WEBHOOK_NAMESPACE);
    let webhook = Webhook::start_registered(&cluster, WebhookOptions::default());
    let caps = readyz_capabilities(&webhook);
    assert_eq!(caps["restartPolicyRules"], true, "{caps}");
    assert_eq!(caps["restartAllContainers"], false, "{caps}");
    assert_eq!(
        webhook.metric(
            "jobset_restart_webhook_cluster_capability{capability=\"restart_all_containers\"}"
        ),
        Some(0.0)
    );

    let ns = cluster.namespace("no-rac", &[]);
    create_ok(&cluster, &ns, &training_jobset("train", &[ENABLED]));
    let stored = cluster.jobset(&ns, "train");
    assert_eq!(
        at(&stored, APPLIED),
        "workers/trainer=Restart:NotIn(0)",
        "{stored:#}"
    );
    let jobs = cluster.wait_children("jobs", &ns, "train", 2, CHILDREN);
    for job in &jobs {
        assert_eq!(
            at(job, "/spec/template/spec/containers/0/restartPolicyRules"),
            &any_failure_rules("Restart"),
            "{job:#}"
        );
    }
    let pods = cluster.wait_children("pods", &ns, "train", 4, CHILDREN);
    assert_eq!(pods.len(), 4);

    let (ok, stderr) = create(
        &cluster,
        &ns,
        &training_jobset(
            "explicit",
            &[
                ENABLED,
                ("restart.jobset.dev/action", "RestartAllContainers"),
            ],
        ),
    );
    assert!(!ok, "an explicit RestartAllContainers must be denied");
    assert!(
        stderr.contains(
            "restart.jobset.dev/action: \"RestartAllContainers\": this cluster's API server does \
             not accept the RestartAllContainers action"
        ),
        "{stderr}"
    );

    let (code, stdout, _) = check(&cluster, &[]);
    assert_eq!(
        code, 0,
        "RestartAllContainers missing is not fatal:\n{stdout}"
    );
    assert!(
        stdout.contains("warning: the API server does not accept RestartAllContainers"),
        "{stdout}"
    );
}

#[test]
pub(super) fn check_fails_when_the_api_server_drops_the_rules() {
    let _t = TestTimer::start("check_fails_when_the_api_server_drops_the_rules");
    let cluster = Cluster::start(ClusterOptions {
        name: "no-rules",
        feature_gates: "ContainerRestartRules=false,RestartAllContainersOnContainerExits=false"
            .to_owned(),
        jobset_controller: false,
        ..ClusterOptions::default()
    });
    cluster.ensure_namespace(WEBHOOK_NAMESPACE);
    let webhook = Webhook::start_registered(&cluster, WebhookOptions::default());
    assert_eq!(readyz_capabilities(&webhook)["restartPolicyRules"], false);

    let (code, stdout, stderr) = check(&cluster, &[]);
    eprintln!("[e2e] `check` on a cluster without ContainerRestartRules:\n{stdout}");
    assert_eq!(code, 1, "{stdout}{stderr}");
    let problems: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("problem: "))
        .collect();
    assert_eq!(problems.len(), 1, "{stdout}");
    assert!(
        problems[0].starts_with(
            "problem: the API server drops or rejects restartPolicyRules, so no in-place \
             restart can work on this cluster"
        ) && problems[0].contains("ContainerRestartRules feature gate is off"),
        "{stdout}"
    );
    // The webhook itself checks out: registered, and its caBundle verifies the certificate
    // served at its url.
    assert!(stdout.contains("webhook registered"), "{stdout}");
    let (_, report) = check_json(&cluster, &[]);
    let hooks = report["webhookConfiguration"]["webhooks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // The base's three JobSet webhooks (the pod webhook comes with the pod-target component,
    // which the harness's registration does not add).
    assert_eq!(hooks.len(), 3, "{report:#}");
    for h in &hooks {
        assert_eq!(h["caBundle"]["value"], true, "{report:#}");
    }
    // Another configuration name is not registered: a second problem.
    let (code, report) = check_json(&cluster, &["--webhook-configuration", "nope"]);
    assert_eq!(code, 1);
    assert_eq!(
        report["problems"].as_array().map(Vec::len),
        Some(2),
        "{report:#}"
    );

    // A `service` clientConfig (as shipped) cannot be dialled from outside the cluster: the
    // serving certificate is read from its Secret instead and verified for
    // <service>.<namespace>.svc against the caBundle.
    let certs = webhook.dir.join("certs");
    let crt = certs.join("tls.crt").display().to_string();
    let key = certs.join("tls.key").display().to_string();
    cluster.kubectl_ok(
        &[
            "create",
            "secret",
            "tls",
            "jobset-restart-webhook-tls",
            "-n",
            WEBHOOK_NAMESPACE,
            "--cert",
            &crt,
            "--key",
            &key,
        ],
        None,
    );
    let other_ca = jobset_restart_webhook::certs::generate(&["elsewhere".to_owned()], 30)
        .expect("generating another CA")
        .ca_bundle_base64();
    let hook = |name: &str, ca: &str| {
        json!({
            "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Ignore",
            "clientConfig": {"caBundle": ca, "service": {
                "namespace": WEBHOOK_NAMESPACE, "name": "jobset-restart-webhook", "path": "/mutate"}},
            // never called: no namespace carries this label
            "namespaceSelector": {"matchLabels": {"restart.jobset.dev/check-test": "never"}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["configmaps"]}]
        })
    };
    let config = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "service-check"},
        "webhooks": [hook("right.restart.jobset.dev", &webhook.ca_bundle),
                     hook("wrong.restart.jobset.dev", &other_ca)]
    });
    cluster.kubectl_ok(&["create", "-f", "-"], Some(&config.to_string()));
    let (code, report) = check_json(&cluster, &["--webhook-configuration", "service-check"]);
    assert_eq!(code, 1, "{report:#}");
    let hooks = &report["webhookConfiguration"]["webhooks"];
    assert_eq!(hooks[0]["caBundle"]["value"], true, "{report:#}");
    assert!(
        hooks[0]["caBundle"]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(
                "the caBundle verifies the certificate in Secret \
                 jobset-restart-webhook/jobset-restart-webhook-tls for \
                 jobset-restart-webhook.jobset-restart-webhook.svc"
            ),
        "{report:#}"
    );
    assert_eq!(hooks[1]["caBundle"]["value"], false, "{report:#}");
    assert!(
        report["problems"]
            .to_string()
            .contains("webhook wrong.restart.jobset.dev (service jobset-restart-webhook/jobset-restart-webhook:443/mutate): the caBundle does not verify"),
        "{report:#}"
    );
    // Without the Secret it says why it cannot tell (a warning, not a problem).
    let (_, report) = check_json(
        &cluster,
        &[
            "--webhook-configuration",
            "service-check",
            "--tls-secret",
            "absent",
        ],
    );
    let detail = report["webhookConfiguration"]["webhooks"][0]["caBundle"].clone();
    assert_eq!(detail["value"], Value::Null, "{report:#}");
    assert!(
        detail["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("routable only inside the cluster"),
        "{report:#}"
    );
}
