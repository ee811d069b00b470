use super::*;
use probe::Finding;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};

/// A round the API server answered.
fn answered(capabilities: Capabilities) -> probe::Round {
    probe::Round {
        capabilities,
        answered: true,
    }
}

/// A round that reached nobody (connection refused).
fn unanswered() -> probe::Round {
    probe::Round {
        capabilities: Capabilities {
            restart_policy_rules: Finding {
                value: None,
                detail: "the dry-run Pod probe failed: connection refused".into(),
            },
            ..Capabilities::default()
        },
        answered: false,
    }
}

fn list(cache: &Cache<Arc<NodeInfo>>, names: &[&str]) {
    cache.apply(watcher::Event::<()>::Init, |()| None);
    for name in names {
        cache.apply(watcher::Event::InitApply(()), |()| {
            Some((
                String::new(),
                (*name).to_owned(),
                Arc::new(NodeInfo::default()),
            ))
        });
    }
    cache.apply(watcher::Event::<()>::InitDone, |()| None);
}

/// Targets that a test flips, as a config reload would.
fn switchable(pods: bool) -> (Arc<AtomicBool>, TargetsSource) {
    let flag = Arc::new(AtomicBool::new(pods));
    let f = flag.clone();
    let source: TargetsSource = Arc::new(move || Targets {
        pods: f.load(Ordering::SeqCst),
        ..Targets::default()
    });
    (flag, source)
}

fn known(v: bool) -> Finding {
    Finding {
        value: Some(v),
        detail: String::new(),
    }
}

#[test]
fn view_reads_the_caches() {
    let c = Cluster::new();
    assert_eq!(c.namespace_labels("ml"), None);
    assert_eq!(c.parent_jobset("ml", "train"), None);
    c.namespaces.apply(watcher::Event::Apply(()), |()| {
        Some((
            String::new(),
            "ml".to_owned(),
            Arc::new(Labels::from([("k".into(), "v".into())])),
        ))
    });
    c.jobsets.apply(watcher::Event::Apply(()), |()| {
        Some((
            "ml".to_owned(),
            "train".to_owned(),
            Arc::new(jobset::CachedParent::default()),
        ))
    });
    assert_eq!(c.namespace_labels("ml").unwrap()["k"], "v");
    assert_eq!(
        c.parent_jobset("ml", "train"),
        Some(ParentJobSet::default())
    );
    assert_eq!(c.parent_jobset("other", "train"), None);
    assert_eq!(c.parent_misses.load(Ordering::Relaxed), 2);
    // One miss: "ml" before the cache had it (its later hit is not counted).
    assert_eq!(c.namespace_labels("other"), None);
    assert_eq!(c.namespace_misses.load(Ordering::Relaxed), 2);
    assert_eq!(c.facts(), ClusterFacts::default());
}

#[test]
fn a_node_watch_the_api_server_refuses_does_not_hold_readiness_back() {
    let c = Cluster::new();
    c.namespaces.apply(watcher::Event::<()>::Init, |()| None);
    c.namespaces
        .apply(watcher::Event::<()>::InitDone, |()| None);
    let e = c.caches_ready().unwrap_err().to_string();
    assert!(
        e.starts_with("waiting for the first list of nodes: "),
        "{e}"
    );
    // Not reaching the API server is not a refusal: still waiting.
    c.nodes.record_error(
        "failed to perform initial object list: connection refused".into(),
        false,
    );
    assert!(c.caches_ready().is_err());
    // RBAC without nodes: the server answered 403; the webhook works without node awareness.
    c.nodes.record_error("nodes is forbidden".into(), true);
    let detail = c.caches_ready().unwrap();
    assert!(
        detail.contains("nodes syncing, 0 objects (last watch error: nodes is forbidden)"),
        "{detail}"
    );
    c.record_probe(answered(Capabilities::default()));
    let detail: serde_json::Value = serde_json::from_str(&c.capabilities_ready().unwrap()).unwrap();
    assert_eq!(detail["nodes"], serde_json::Value::Null);
    assert_eq!(c.facts().nodes, None);
}

/// A kubeconfig whose API server does not answer: probe rounds finish (with every answer
/// unknown) but none reached it, so the replica is not ready; once one is answered it is, and
/// later rounds that reach nobody do not take it back (staleness is a metric).
#[test]
fn readiness_needs_an_answered_probe_and_then_latches() {
    let c = Cluster::new();
    let e = c.capabilities_ready().unwrap_err().to_string();
    assert_eq!(
        e,
        "no capability probe has reached the API server yet (first round running)"
    );
    c.record_probe(unanswered());
    let e = c.capabilities_ready().unwrap_err().to_string();
    assert!(e.contains("connection refused"), "{e}");
    assert_eq!(c.answered_at(), 0);
    c.record_probe(answered(Capabilities {
        server_version: Some("v1.36.2".into()),
        restart_all_containers: known(true),
        ..Capabilities::default()
    }));
    assert!(c.capabilities_ready().is_ok());
    let at = c.answered_at();
    assert!(at > 0);
    c.record_probe(unanswered());
    assert!(
        c.capabilities_ready().is_ok(),
        "latched after the first answer"
    );
    assert_eq!(c.answered_at(), at);
    assert_eq!(
        c.facts().restart_all_containers,
        Some(true),
        "last answer kept"
    );
}

/// `/readyz` follows the targets as they are now, not as they were at start: the JobSet cache
/// is waited for exactly while the pod target is on.
#[test]
fn readiness_follows_the_current_targets() {
    let (pods, targets) = switchable(false);
    let c = Cluster::with_targets(targets);
    c.namespaces.apply(watcher::Event::<()>::Init, |()| None);
    c.namespaces
        .apply(watcher::Event::<()>::InitDone, |()| None);
    list(&c.nodes, &["a"]);
    let detail = c.caches_ready().unwrap();
    assert!(
        detail.ends_with("jobsets not watched (the pod target is off)"),
        "{detail}"
    );
    pods.store(true, Ordering::SeqCst);
    let e = c.caches_ready().unwrap_err().to_string();
    assert!(
        e.starts_with("waiting for the first list of jobsets: "),
        "{e}"
    );
    c.jobsets.apply(watcher::Event::<()>::Init, |()| None);
    c.jobsets.apply(watcher::Event::<()>::InitDone, |()| None);
    assert!(c.caches_ready().is_ok());
    // Off again: the watch stops and its cache is dropped; readiness no longer needs it.
    pods.store(false, Ordering::SeqCst);
    c.jobsets.reset();
    assert!(c.caches_ready().is_ok());
    // A watch failing after the first list keeps the cache serving and readiness green;
    // the metrics say since when it fails.
    c.namespaces
        .record_error("connection refused".into(), false);
    assert!(c.caches_ready().is_ok());
    assert!(c.namespaces.failing_since() > 0);
}

#[test]
fn readiness_and_metrics() {
    let (_, targets) = switchable(true);
    let c = Arc::new(Cluster::with_targets(targets));
    let e = c.caches_ready().unwrap_err().to_string();
    assert!(
        e.starts_with("waiting for the first list of namespaces, nodes, jobsets: "),
        "{e}"
    );
    assert!(c.capabilities_ready().is_err());

    c.namespaces.apply(watcher::Event::<()>::Init, |()| None);
    c.namespaces
        .apply(watcher::Event::<()>::InitDone, |()| None);
    c.jobsets.apply(watcher::Event::<()>::Init, |()| None);
    c.jobsets.apply(watcher::Event::<()>::InitDone, |()| None);
    let e = c.caches_ready().unwrap_err().to_string();
    assert!(
        e.starts_with("waiting for the first list of nodes: "),
        "{e}"
    );

    c.record_probe(answered(Capabilities {
        server_version: Some("v1.36.2".into()),
        restart_policy_rules: known(true),
        restart_all_containers: known(false),
        jobset_crd_installed: known(true),
        jobset_crd_keeps_rules: Finding::default(),
    }));
    let node = |declares| NodeInfo {
        declares,
        ..NodeInfo::default()
    };
    c.nodes.apply(watcher::Event::<()>::Init, |()| None);
    for (name, declares) in [("a", true), ("b", true), ("c", false)] {
        c.nodes.apply(watcher::Event::InitApply(()), |()| {
            Some((String::new(), name.to_owned(), Arc::new(node(declares))))
        });
    }
    c.nodes.apply(watcher::Event::<()>::InitDone, |()| None);
    c.summarise_nodes();
    let detail = c.caches_ready().unwrap();
    assert!(
        detail.contains("namespaces synced, 0 objects; nodes synced, 3 objects; jobsets synced"),
        "{detail}"
    );
    let detail: serde_json::Value = serde_json::from_str(&c.capabilities_ready().unwrap()).unwrap();
    assert_eq!(
        detail["nodes"],
        json!({"total": 3, "schedulable": 3, "declaringRestartAllContainers": 2})
    );
    assert_eq!(c.facts().nodes.map(|n| n.declaring()), Some(2));
    assert_eq!(detail["serverVersion"], "v1.36.2");
    assert_eq!(detail["restartAllContainers"], false);
    assert_eq!(detail["jobsetCrdKeepsRules"], serde_json::Value::Null);
    assert_eq!(c.facts().restart_all_containers, Some(false));

    let mut registry = Registry::with_prefix("jobset_restart_webhook");
    registry.register_collector(Box::new(ClusterMetrics(c.clone())));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "jobset_restart_webhook_cluster_capability{capability=\"container_restart_rules\"} 1",
        "jobset_restart_webhook_cluster_capability{capability=\"restart_all_containers\"} 0",
        "jobset_restart_webhook_cluster_capability{capability=\"jobset_crd_installed\"} 1",
        "jobset_restart_webhook_cluster_cache_objects{cache=\"jobsets\"} 0",
        "jobset_restart_webhook_cluster_cache_synced{cache=\"namespaces\"} 1",
        "jobset_restart_webhook_cluster_watch_errors_total{cache=\"jobsets\"} 0",
        "jobset_restart_webhook_pod_parent_unknown_total 0",
        "jobset_restart_webhook_namespace_labels_unknown_total 0",
        "jobset_restart_webhook_cluster_capability{capability=\"nodes_restart_all_containers\"} 0",
        "jobset_restart_webhook_cluster_nodes{state=\"total\"} 3",
        "jobset_restart_webhook_cluster_nodes{state=\"schedulable\"} 3",
        "jobset_restart_webhook_cluster_nodes{state=\"declaring\"} 2",
        "jobset_restart_webhook_cluster_cache_objects{cache=\"nodes\"} 3",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    assert!(
        !text.contains("jobset_crd_keeps_rules\"}"),
        "unknown is absent\n{text}"
    );
    assert!(
        text.contains("jobset_restart_webhook_cluster_capability_last_probe_timestamp_seconds ")
    );
    for series in [
        "jobset_restart_webhook_cluster_capability_last_answered_probe_timestamp_seconds ",
        "jobset_restart_webhook_cluster_cache_last_list_timestamp_seconds{cache=\"nodes\"} ",
        "jobset_restart_webhook_cluster_cache_failing_since_timestamp_seconds{cache=\"namespaces\"} 0",
    ] {
        assert!(text.contains(series), "{series} not in\n{text}");
    }
}

/// The JobSet watch runs only while the pod target is on, and switching it off drops the
/// cache. The client points at a closed port: the watch itself only fails and retries.
#[tokio::test]
async fn the_jobset_watch_follows_the_pod_target() {
    let (pods, targets) = switchable(false);
    let c = Arc::new(Cluster::with_targets(targets));
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let tasks = Tasks::new();
    let running = |c: &Cluster| c.jobset_watch.lock().unwrap().is_some();
    c.switch_jobset_watch(&client, &tasks);
    assert!(!running(&c));
    pods.store(true, Ordering::SeqCst);
    c.switch_jobset_watch(&client, &tasks);
    assert!(running(&c));
    c.switch_jobset_watch(&client, &tasks);
    c.jobsets.apply(watcher::Event::<()>::Init, |()| None);
    c.jobsets.apply(watcher::Event::<()>::InitDone, |()| None);
    assert!(c.jobsets.synced());
    pods.store(false, Ordering::SeqCst);
    c.switch_jobset_watch(&client, &tasks);
    assert!(!running(&c));
    assert!(!c.jobsets.synced(), "the cache was dropped");
    assert_eq!(tasks.restarts("jobsets-watch"), 0);
}

/// Without the pod target the JobSet watch does not run: readiness and the metrics say so
/// instead of showing a cache that never syncs.
#[test]
fn an_unwatched_jobset_cache_is_neither_waited_for_nor_exported() {
    let c = Arc::new(Cluster::new());
    let optional = CachesCheck {
        cluster: c.clone(),
        required: false,
    };
    let detail = optional.check().unwrap();
    assert!(
        detail.contains("jobsets not watched (pod target off)"),
        "{detail}"
    );
    let mut registry = Registry::with_prefix("jobset_restart_webhook");
    registry.register_collector(Box::new(ClusterMetrics(c.clone())));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(!text.contains("cache=\"jobsets\""), "{text}");
    assert!(
        text.contains("jobset_restart_webhook_cluster_cache_synced{cache=\"namespaces\"} 0"),
        "{text}"
    );
}
