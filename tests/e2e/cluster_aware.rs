//! Cluster-aware `serve` and `check` (SPEC §4 pods, §5, §6, §7) on real control planes:
//! namespace defaults from the namespace cache, the pod target resolving parents from the
//! JobSet cache, capability detection (dry-run Pods, the JobSet CRD's schema) feeding the
//! default action and denials, `/readyz` and metrics, the `check` subcommand, and the
//! memory the caches take with 1,000 JobSets.

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

/// A server-side dry-run create: (the object as it would be stored, kubectl's stderr with
/// the admission warnings). `Value::Null` when the create was refused.
fn dry_run(cluster: &Cluster, namespace: &str, object: &Value) -> (Value, String) {
    let out = cluster.kubectl(
        &[
            "create",
            "--dry-run=server",
            "-n",
            namespace,
            "-f",
            "-",
            "-o",
            "json",
        ],
        Some(&object.to_string()),
    );
    (
        serde_json::from_slice(&out.stdout).unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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

/// The value of the first sample whose line starts with `series` (name and labels).
fn metric(webhook: &Webhook, series: &str) -> Option<f64> {
    webhook.metrics().lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
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
    let ns = c.namespace("ns-default", &[ENABLED]);
    // The label reaches the webhook through its namespace watch, moments after the create.
    wait_for(
        "the webhook's namespace cache to see the label",
        CACHE,
        || {
            let (stored, stderr) = dry_run(c, &ns, &training_jobset("probe", &[]));
            if at(&stored, APPLIED).is_string() {
                Ok(())
            } else {
                Err(format!("not mutated yet: {stderr}"))
            }
        },
    );

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
    let before = metric(&s.webhook, misses).expect("the parent-unknown counter is exported");

    // No JobSet yet: the pod is allowed unchanged, with a warning, and counted.
    let (stored, stderr) = dry_run(c, &ns, &jobset_pod("followed"));
    assert_eq!(stored["kind"], "Pod", "the pod is never denied: {stderr}");
    assert!(!mentions_rules(&stored), "{stored:#}");
    assert!(
        stderr.contains("its JobSet \"followed\" is not known to the webhook yet"),
        "{stderr}"
    );
    assert!(metric(&s.webhook, misses).unwrap_or_default() > before);

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
        let (stored, stderr) = dry_run(c, &ns, &jobset_pod("followed"));
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
        let (stored, stderr) = dry_run(c, &ns, &jobset_pod("followed"));
        if !mentions_rules(&stored) && stderr.contains("is not known to the webhook yet") {
            Ok(())
        } else {
            Err(format!("still known: {stderr}"))
        }
    });
    let synced = metric(
        &s.webhook,
        "jobset_restart_webhook_cluster_cache_synced{cache=\"jobsets\"}",
    );
    assert_eq!(synced, Some(1.0));
}

/// A cluster with JobSet v0.9.0's CRD (no `restartPolicyRules` in its schema) and our
/// webhook with both targets, registered as shipped.
fn old_crd_cluster(name: &'static str) -> (Cluster, Webhook) {
    let cluster = Cluster::start(ClusterOptions {
        name,
        jobset_crd: JOBSET_V0_9_0,
        ..ClusterOptions::default()
    });
    cluster.ensure_namespace(WEBHOOK_NAMESPACE);
    let webhook = Webhook::start(
        &cluster,
        WebhookOptions {
            targets: Some("jobsets,pods".to_owned()),
            config: None,
        },
    );
    webhook.register(&cluster, None, "default");
    (cluster, webhook)
}

#[test]
fn old_jobset_crd_is_detected_and_check_reports_the_pruning() {
    let _t = TestTimer::start("old_jobset_crd_is_detected_and_check_reports_the_pruning");
    let (cluster, webhook) = old_crd_cluster("old-crd-check");

    let caps = readyz_capabilities(&webhook);
    assert_eq!(caps["jobsetCrdInstalled"], true, "{caps}");
    assert_eq!(caps["jobsetCrdKeepsRules"], false, "{caps}");
    assert_eq!(caps["restartPolicyRules"], true, "{caps}");
    assert_eq!(
        metric(
            &webhook,
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
fn old_jobset_crd_pods_get_the_rules_from_the_pod_target() {
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
fn without_restart_all_containers_the_default_is_restart_and_explicit_asks_are_denied() {
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
    let webhook = Webhook::start(&cluster, WebhookOptions::default());
    webhook.register(&cluster, None, "default");
    let caps = readyz_capabilities(&webhook);
    assert_eq!(caps["restartPolicyRules"], true, "{caps}");
    assert_eq!(caps["restartAllContainers"], false, "{caps}");
    assert_eq!(
        metric(
            &webhook,
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
fn check_fails_when_the_api_server_drops_the_rules() {
    let _t = TestTimer::start("check_fails_when_the_api_server_drops_the_rules");
    let cluster = Cluster::start(ClusterOptions {
        name: "no-rules",
        feature_gates: "ContainerRestartRules=false,RestartAllContainersOnContainerExits=false"
            .to_owned(),
        jobset_controller: false,
        ..ClusterOptions::default()
    });
    cluster.ensure_namespace(WEBHOOK_NAMESPACE);
    let webhook = Webhook::start(&cluster, WebhookOptions::default());
    webhook.register(&cluster, None, "default");
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

// ---- memory -------------------------------------------------------------------------------

/// The pid of the `serve` process started for `webhook` (found by its folder in the command
/// line).
fn serve_pid(webhook: &Webhook) -> u32 {
    let dir = webhook.dir.display().to_string();
    for entry in fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(" serve ") && cmdline.contains(&dir) {
            return pid;
        }
    }
    panic!("no serve process for {dir} in /proc");
}

/// `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// A realistic JobSet: restart annotations on the JobSet and a replicated job, foreign
/// annotations (one of 2 KiB, like kubectl's last-applied-configuration), two replicated
/// jobs with full pod templates.
fn big_jobset(i: usize) -> Value {
    let container = |name: &str| {
        json!({"name": name, "image": "trainer:1.0", "command": ["python", "train.py", "--epochs", "100"],
               "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
               "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}})
    };
    let rjob = |name: &str, annotations: Value| {
        json!({"name": name, "replicas": 4, "template": {
            "metadata": {"annotations": annotations},
            "spec": {"parallelism": 2, "completions": 2, "backoffLimit": 0,
                     "template": {"spec": {"containers": [container("trainer"), container("logger")]}}}}})
    };
    json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
        "metadata": {"name": format!("js-{i:04}"), "annotations": {
            "restart.jobset.dev/in-place": "enabled",
            "restart.jobset.dev/on-exit-codes": "42,43,128-143",
            "example.com/owner": "team-ml",
            "example.com/notes": "x".repeat(2048)
        }, "labels": {"team": "ml"}},
        "spec": {"suspend": true, "replicatedJobs": [
            rjob("workers", json!({"restart.jobset.dev/containers": "trainer", "example.com/x": "y"})),
            rjob("driver", json!({}))
        ]}
    })
}

#[test]
fn memory_of_the_caches_with_1000_jobsets() {
    let _t = TestTimer::start("memory_of_the_caches_with_1000_jobsets");
    const N: usize = 1000;
    let cluster = Cluster::start(ClusterOptions {
        name: "memory",
        controller_manager: false,
        jobset_controller: false,
        ..ClusterOptions::default()
    });
    let opts = WebhookOptions {
        targets: Some("jobsets,pods".to_owned()),
        config: None,
    };
    let webhook = Webhook::start(&cluster, opts.clone());
    let pid = serve_pid(&webhook);
    let ns = cluster.namespace("many", &[]);
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_kib(pid);

    let start = Instant::now();
    for chunk in (0..N).collect::<Vec<_>>().chunks(250) {
        let items: Vec<Value> = chunk.iter().map(|&i| big_jobset(i)).collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        cluster.kubectl_ok(
            &["create", "-n", &ns, "-f", "-", "-o", "name"],
            Some(&list.to_string()),
        );
    }
    let created = start.elapsed();
    let objects = "jobset_restart_webhook_cluster_cache_objects{cache=\"jobsets\"}";
    wait_for(
        "the JobSet cache to hold every JobSet",
        CACHE,
        || match metric(&webhook, objects) {
            Some(n) if n >= N as f64 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(pid);

    // A second process that finds the 1,000 JobSets at start (one paged list).
    let second = Webhook::start(&cluster, opts);
    let second_pid = serve_pid(&second);
    assert_eq!(
        metric(&second, objects),
        Some(N as f64),
        "readiness waited for the list"
    );
    std::thread::sleep(Duration::from_secs(2));
    let second_rss = rss_kib(second_pid);

    let growth = after.saturating_sub(before);
    eprintln!(
        "[e2e] memory: serve RSS {before} KiB before, {after} KiB after {N} JobSets were created \
         and watched (+{growth} KiB, {:.2} KiB per JobSet; creating them took {:.1} s); a \
         second serve that listed the {N} JobSets at start: {second_rss} KiB",
        growth as f64 / N as f64,
        created.as_secs_f64()
    );
    // Regression bound: the cache keeps names and restart annotations only.
    assert!(
        growth < 16 * 1024,
        "the caches grew by {growth} KiB for {N} JobSets"
    );
}
