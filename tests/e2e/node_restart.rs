//! In-place restarts on a real node (kubelet v1.36.2, containerd v2.4.2, runc; see testkit/src/node/),
//! through a real JobSet with our webhook registered, read back from the pod status the
//! kubelet reports and from the pods' emptyDir folders on the host.
//!
//! One cluster (with kube-scheduler) and one node are shared by these tests, each in its own
//! namespace; the declared-features test adds a second, tainted node with the gate off.

use std::fs;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use crate::WEBHOOK_NAMESPACE;
use crate::cluster::{Cluster, ClusterOptions};
use crate::node::{
    Node, NodeOptions, RESTART_ALL_FEATURE, jobset_condition, node_jobset, node_pod_spec,
    pod_summary, workload_container,
};
use crate::util::{TestTimer, wait_for};
use crate::webhook::{Webhook, WebhookOptions};

/// From JobSet create to its end: pod start, a restart (with back-off), the runs.
const JOBSET_DONE: Duration = Duration::from_secs(180);
const POD_RUNNING: Duration = Duration::from_secs(120);

pub struct NodeShared {
    pub cluster: Cluster,
    pub webhook: Webhook,
    pub node: Node,
}

/// The node tests' cluster, webhook (`--targets jobsets,pods`, registered as shipped) and
/// node, started by the first test that asks. Never dropped: the watchdogs stop everything
/// when the test process ends.
pub fn node_shared() -> &'static NodeShared {
    static SHARED: OnceLock<Result<NodeShared, String>> = OnceLock::new();
    let started = SHARED.get_or_init(|| {
        std::panic::catch_unwind(|| {
            let cluster = Cluster::start(ClusterOptions {
                name: "node",
                scheduler: true,
                ..ClusterOptions::default()
            });
            cluster.ensure_namespace(WEBHOOK_NAMESPACE);
            let webhook =
                Webhook::start_registered(&cluster, WebhookOptions::targets("jobsets,pods"));
            let node = Node::start(&cluster, NodeOptions::default());
            for name in ["kubelet", "containerd"] {
                cluster.add_log(
                    &format!("{name} ({})", node.name),
                    node.dir.join("logs").join(format!("{name}.log")),
                );
            }
            NodeShared {
                cluster,
                webhook,
                node,
            }
        })
        .map_err(crate::util::panic_message)
    });
    match started {
        Ok(shared) => shared,
        Err(e) => panic!("the node test cluster did not start: {e}"),
    }
}

/// Waits until the JobSet has the condition `kind` (`Completed`, `Failed`) set to True.
pub fn wait_jobset(c: &Cluster, ns: &str, name: &str, kind: &str, timeout: Duration) -> Value {
    wait_for(&format!("JobSet {ns}/{name} {kind}"), timeout, || {
        let js = c.jobset(ns, name);
        if jobset_condition(&js, kind) {
            Ok(js)
        } else {
            Err(format!(
                "status {}; pods {}",
                js["status"],
                pod_summary(&c.children("pods", ns, name))
            ))
        }
    })
}

fn uid(pod: &Value) -> String {
    pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn status<'a>(pod: &'a Value, list: &str, container: &str) -> &'a Value {
    pod["status"][list]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["name"] == container))
        .unwrap_or_else(|| panic!("pod has no {list} entry for {container}: {pod:#}"))
}

/// Waits for the JobSet's first pod to be Running on the node; returns it.
fn wait_first_pod(c: &Cluster, ns: &str, name: &str, node: &Node) -> Value {
    wait_for(
        &format!("a Running pod of {ns}/{name}"),
        POD_RUNNING,
        || {
            let pods = c.children("pods", ns, name);
            match pods.first() {
                Some(p)
                    if p["status"]["phase"] == "Running" || p["status"]["phase"] == "Failed" =>
                {
                    assert_eq!(p["spec"]["nodeName"], node.name.as_str(), "{p:#}");
                    Ok(p.clone())
                }
                _ => Err(pod_summary(&pods)),
            }
        },
    )
}

/// The start lines (`NAME start NANOS`) of a log file, as (name, nanos).
fn start_lines(path: &std::path::Path) -> Vec<(String, u128)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split(" start ");
            Some((it.next()?.to_owned(), it.next()?.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn node_restart_on_exit_code_42_restarts_the_container_in_place() {
    let _t = TestTimer::start("node_restart_on_exit_code_42_restarts_the_container_in_place");
    let s = node_shared();
    let c = &s.cluster;
    let ns = c.namespace("node-restart", &[]);
    let pod = node_pod_spec(json!([workload_container(
        "trainer",
        &[
            "-log",
            "/data/runs",
            "-fail-first",
            "1",
            "-fail-after",
            "1s",
            "-run",
            "2s"
        ]
    )]));
    let js = node_jobset(
        "restart",
        1,
        0,
        &[
            ("restart.jobset.dev/in-place", "enabled"),
            ("restart.jobset.dev/action", "Restart"),
            ("restart.jobset.dev/on-exit-codes", "42"),
        ],
        pod,
    );
    crate::create_ok(c, &ns, &js);
    assert!(
        !s.webhook.reviews(&ns, "restart").is_empty(),
        "our webhook reviewed the JobSet"
    );
    let first = wait_first_pod(c, &ns, "restart", &s.node);
    let done = wait_jobset(c, &ns, "restart", "Completed", JOBSET_DONE);

    let pods = c.children("pods", &ns, "restart");
    assert_eq!(
        pods.len(),
        1,
        "one pod, never recreated:{}",
        pod_summary(&pods)
    );
    let pod = &pods[0];
    assert_eq!(
        uid(pod),
        uid(&first),
        "the same pod UID as at the first start"
    );
    assert_eq!(pod["status"]["phase"], "Succeeded", "{pod:#}");
    let trainer = status(pod, "containerStatuses", "trainer");
    assert_eq!(trainer["restartCount"], 1, "{trainer:#}");
    assert_eq!(
        trainer["lastState"]["terminated"]["exitCode"], 42,
        "the restart followed the exit code 42: {trainer:#}"
    );
    assert_eq!(trainer["state"]["terminated"]["exitCode"], 0, "{trainer:#}");
    assert!(
        done["status"]["restarts"].as_u64().unwrap_or(0) == 0,
        "the JobSet was not restarted: {}",
        done["status"]
    );
    let jobs = c.children("jobs", &ns, "restart");
    assert_eq!(jobs.len(), 1);
    assert!(
        jobs[0]["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Complete" && c["status"] == "True"),
        "the Job completed: {:#}",
        jobs[0]["status"]
    );
    assert_eq!(jobs[0]["status"]["failed"].as_u64().unwrap_or(0), 0);
}

#[test]
fn node_restart_all_containers_reruns_init_and_sidecar_and_keeps_empty_dir() {
    let _t =
        TestTimer::start("node_restart_all_containers_reruns_init_and_sidecar_and_keeps_empty_dir");
    let s = node_shared();
    let c = &s.cluster;
    let ns = c.namespace("node-restart-all", &[]);
    let log = ["-log", "/data/runs"];
    let mut sidecar = workload_container("sidecar", &[&log[..], &["-run", "forever"]].concat());
    sidecar["restartPolicy"] = json!("Always");
    let mut pod = node_pod_spec(json!([
        workload_container(
            "trainer",
            &[
                &log[..],
                &["-fail-first", "1", "-fail-after", "3s", "-run", "3s"]
            ]
            .concat()
        ),
        workload_container("helper", &[&log[..], &["-run", "25s"]].concat()),
    ]));
    pod["initContainers"] = json!([
        workload_container("init", &[&log[..], &["-run", "0s"]].concat()),
        sidecar
    ]);
    let js = node_jobset(
        "restart-all",
        1,
        0,
        &[
            ("restart.jobset.dev/in-place", "enabled"),
            ("restart.jobset.dev/action", "RestartAllContainers"),
            ("restart.jobset.dev/on-exit-codes", "42"),
        ],
        pod,
    );
    crate::create_ok(c, &ns, &js);
    let first = wait_first_pod(c, &ns, "restart-all", &s.node);
    let runs = s.node.empty_dir(&uid(&first), "data").join("runs");

    // While the pod runs again (the helper runs 25 s per run), every container has started
    // twice, in the order init, sidecar, then the regular ones, and the first run's lines
    // are still in the emptyDir.
    let lines = wait_for(
        &format!("every container to start twice ({})", runs.display()),
        POD_RUNNING,
        || {
            let lines = start_lines(&runs);
            let count = |n: &str| lines.iter().filter(|(name, _)| name == n).count();
            if ["init", "sidecar", "trainer", "helper"]
                .iter()
                .all(|n| count(n) >= 2)
            {
                Ok(lines)
            } else {
                Err(format!(
                    "{lines:?}; pods:{}",
                    pod_summary(&c.children("pods", &ns, "restart-all"))
                ))
            }
        },
    );
    let names: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
    eprintln!("[e2e] restart-all: start order in the emptyDir: {names:?}");
    assert_eq!(
        names.iter().filter(|n| **n == "init").count(),
        2,
        "the init container ran exactly twice: {names:?}"
    );
    let second_init = names
        .iter()
        .enumerate()
        .filter(|(_, n)| **n == "init")
        .nth(1)
        .map(|(i, _)| i)
        .expect("a second init line");
    for n in ["sidecar", "trainer", "helper"] {
        assert_eq!(
            names[..second_init].iter().filter(|x| **x == n).count(),
            1,
            "{n} ran once before the init container re-ran: {names:?}"
        );
    }
    assert_eq!(
        names[second_init + 1],
        "sidecar",
        "the sidecar restarted after the init container: {names:?}"
    );

    let done = wait_jobset(c, &ns, "restart-all", "Completed", JOBSET_DONE);
    let pods = c.children("pods", &ns, "restart-all");
    assert_eq!(
        pods.len(),
        1,
        "one pod, never recreated:{}",
        pod_summary(&pods)
    );
    let pod = &pods[0];
    eprintln!("[e2e] restart-all: final pod:{}", pod_summary(&pods));
    assert_eq!(
        uid(pod),
        uid(&first),
        "the same pod UID as at the first start"
    );
    assert_eq!(pod["status"]["phase"], "Succeeded", "{pod:#}");
    let trainer = status(pod, "containerStatuses", "trainer");
    assert!(
        trainer["restartCount"].as_u64() >= Some(1),
        "trainer restarted: {trainer:#}"
    );
    let helper = status(pod, "containerStatuses", "helper");
    assert!(
        helper["restartCount"].as_u64() >= Some(1),
        "helper (exit 0 never) was restarted with the trainer: {helper:#}"
    );
    assert!(
        done["status"]["restarts"].as_u64().unwrap_or(0) == 0,
        "the JobSet was not restarted: {}",
        done["status"]
    );
}

#[test]
fn node_exit_code_outside_the_rule_fails_the_pod_and_jobset_restarts() {
    let _t = TestTimer::start("node_exit_code_outside_the_rule_fails_the_pod_and_jobset_restarts");
    let s = node_shared();
    let c = &s.cluster;
    let ns = c.namespace("node-other-code", &[]);
    let pod = node_pod_spec(json!([workload_container(
        "trainer",
        &[
            "-log",
            "/data/runs",
            "-fail-first",
            "1",
            "-fail-code",
            "7",
            "-fail-after",
            "1s",
            "-run",
            "2s"
        ]
    )]));
    let js = node_jobset(
        "other-code",
        1,
        1,
        &[
            ("restart.jobset.dev/in-place", "enabled"),
            ("restart.jobset.dev/action", "Restart"),
            ("restart.jobset.dev/on-exit-codes", "42"),
        ],
        pod,
    );
    crate::create_ok(c, &ns, &js);
    let first = wait_first_pod(c, &ns, "other-code", &s.node);
    // Each new pod starts with an empty emptyDir, so it fails again: one JobSet restart
    // (maxRestarts 1), then the JobSet fails.
    let done = wait_jobset(c, &ns, "other-code", "Failed", JOBSET_DONE);
    assert_eq!(
        done["status"]["restarts"], 1,
        "the JobSet's failure policy restarted it once: {}",
        done["status"]
    );
    let pods = c.children("pods", &ns, "other-code");
    assert!(
        pods.iter().all(|p| uid(p) != uid(&first)),
        "the first pod was replaced by the JobSet restart:{}",
        pod_summary(&pods)
    );
    let events = c.events(&ns, "other-code");
    assert!(
        !events.is_empty(),
        "the JobSet has events about its failure"
    );
    // The pods that ran failed with 7 without an in-place restart.
    for p in pods.iter().filter(|p| p["status"]["phase"] == "Failed") {
        let t = status(p, "containerStatuses", "trainer");
        assert_eq!(t["restartCount"], 0, "{t:#}");
        assert_eq!(t["state"]["terminated"]["exitCode"], 7, "{t:#}");
    }
}

#[test]
fn node_without_the_webhook_the_jobset_recreates_every_pod() {
    let _t = TestTimer::start("node_without_the_webhook_the_jobset_recreates_every_pod");
    let s = node_shared();
    let c = &s.cluster;
    // Our namespace is excluded by the shipped selectors: the webhook never sees this JobSet.
    let ns = WEBHOOK_NAMESPACE;
    let host = s.node.host_dir("no-webhook");
    // Runs are counted on a hostPath, so the recreated pods see the first run and succeed;
    // only worker 0 fails its first run.
    let mut trainer = workload_container(
        "trainer",
        &[
            "-name",
            "trainer-$(JOB_INDEX)",
            "-log",
            "/host/runs",
            "-only",
            "trainer-0",
            "-fail-first",
            "1",
            "-fail-after",
            "1s",
            "-run",
            "3s",
        ],
    );
    trainer["volumeMounts"] = json!([{"name": "host", "mountPath": "/host"}]);
    let mut pod = node_pod_spec(json!([trainer]));
    pod["volumes"] = json!([{"name": "host", "hostPath": {"path": host.display().to_string(), "type": "Directory"}}]);
    let js = node_jobset(
        "no-webhook",
        2,
        1,
        &[
            ("restart.jobset.dev/in-place", "enabled"),
            ("restart.jobset.dev/action", "Restart"),
            ("restart.jobset.dev/on-exit-codes", "42"),
        ],
        pod,
    );
    crate::create_ok(c, ns, &js);
    let stored = c.jobset(ns, "no-webhook");
    assert!(
        !crate::util::mentions_rules(&stored),
        "the webhook did not mutate the JobSet: {stored:#}"
    );
    let first: Vec<String> = c
        .wait_children("pods", ns, "no-webhook", 2, POD_RUNNING)
        .iter()
        .map(uid)
        .collect();
    let done = wait_jobset(c, ns, "no-webhook", "Completed", JOBSET_DONE);
    assert_eq!(done["status"]["restarts"], 1, "{}", done["status"]);
    let pods = c.children("pods", ns, "no-webhook");
    assert_eq!(pods.len(), 2, "{}", pod_summary(&pods));
    for p in &pods {
        assert!(
            !first.contains(&uid(p)),
            "every pod was recreated (both workers, though only worker 0 failed):{}",
            pod_summary(&pods)
        );
        assert_eq!(p["status"]["phase"], "Succeeded", "{}", pod_summary(&pods));
        let t = status(p, "containerStatuses", "trainer");
        assert_eq!(t["restartCount"], 0, "no in-place restart: {t:#}");
    }
    let lines = start_lines(&host.join("runs"));
    let count = |n: &str| lines.iter().filter(|(name, _)| name == n).count();
    assert_eq!(count("trainer-0"), 2, "{lines:?}");
    assert!(count("trainer-1") >= 1, "{lines:?}");
}

#[test]
fn node_declared_features_follow_the_kubelet_gate() {
    let _t = TestTimer::start("node_declared_features_follow_the_kubelet_gate");
    let s = node_shared();
    let c = &s.cluster;
    let on = s.node.declared_features(c);
    assert!(
        on.iter().any(|f| f == RESTART_ALL_FEATURE),
        "a default 1.36 kubelet declares {RESTART_ALL_FEATURE}: {on:?}"
    );
    let off = Node::start(
        c,
        NodeOptions {
            name: "gate-off",
            restart_all_containers: false,
            taint: true,
            ..NodeOptions::default()
        },
    );
    let features = off.declared_features(c);
    eprintln!("[e2e] declared features: default kubelet {on:?}; gate off {features:?}");
    assert!(
        !features.iter().any(|f| f == RESTART_ALL_FEATURE),
        "a kubelet with {RESTART_ALL_FEATURE}=false does not declare it: {features:?}"
    );
    assert!(
        !features.is_empty(),
        "it still declares its other features (the list is not just missing): {features:?}"
    );

    // A RestartAllContainers pod pinned to that node (tolerating its taint) is not scheduled.
    let ns = c.namespace("node-gate-off", &[]);
    let mut container = workload_container("trainer", &["-run", "1s"]);
    container["restartPolicy"] = json!("Never");
    container["restartPolicyRules"] = json!([{"action": "RestartAllContainers",
        "exitCodes": {"operator": "In", "values": [42]}}]);
    let mut spec = node_pod_spec(json!([container]));
    spec["nodeSelector"] = json!({"kubernetes.io/hostname": off.name});
    spec["tolerations"] = json!([{"key": crate::node::TEST_TAINT, "operator": "Exists"}]);
    let pod =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pinned"}, "spec": spec});
    crate::create_ok(c, &ns, &pod);
    let message = wait_for("a FailedScheduling event", POD_RUNNING, || {
        c.events(&ns, "pinned")
            .into_iter()
            .find(|(reason, _)| reason == "FailedScheduling")
            .map(|(_, m)| m)
            .ok_or_else(|| {
                format!(
                    "pod: {}",
                    c.get_json(&["pod", "pinned", "-n", &ns])["status"]
                )
            })
    });
    eprintln!("[e2e] gate-off node: {message}");
    assert!(
        message.contains("didn't match Pod's required features"),
        "the scheduler filtered the gate-off node on its declared features: {message}"
    );
    let stored = c.get_json(&["pod", "pinned", "-n", &ns]);
    assert_eq!(stored["status"]["phase"], "Pending", "{stored:#}");
    assert!(stored["spec"]["nodeName"].is_null(), "{stored:#}");

    // The webhook reads the same declared features (issue 13, node-aware capability): an
    // explicit RestartAllContainers for a pool of only the gate-off kubelet is refused with
    // why, and the default for the whole cluster (one of two nodes declares) is Restart.
    let pinned = |annotations: &[(&str, &str)], pool: Option<&str>| {
        let mut pod = node_pod_spec(json!([workload_container("trainer", &["-run", "1s"])]));
        if let Some(node) = pool {
            pod["nodeSelector"] = json!({"kubernetes.io/hostname": node});
        }
        node_jobset("gate-off-js", 1, 0, annotations, pod)
    };
    let explicit = pinned(
        &[
            ("restart.jobset.dev/in-place", "enabled"),
            ("restart.jobset.dev/action", "RestartAllContainers"),
        ],
        Some(off.name.as_str()),
    );
    let refusal = wait_for("the webhook to see the gate-off node", POD_RUNNING, || {
        let (stored, stderr) = c.dry_run_create(&ns, &explicit);
        if stored.is_null() && stderr.contains("RestartAllContainersOnContainerExits") {
            Ok(stderr)
        } else {
            Err(format!("not refused yet: {}", stderr.trim()))
        }
    });
    assert!(
        refusal.contains(
            "none of the 1 schedulable node matching the pod template's nodeSelector declares"
        ),
        "{refusal}"
    );
    let (stored, stderr) = c.dry_run_create(
        &ns,
        &pinned(&[("restart.jobset.dev/in-place", "enabled")], None),
    );
    let rules = &stored["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"]
        [0]["restartPolicyRules"];
    assert_eq!(rules[0]["action"], "Restart", "{stderr}\n{stored:#}");
    assert!(
        stderr.contains("1 of 2 schedulable nodes declare"),
        "{stderr}"
    );
}
