use super::*;
use probe::Finding;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;

/// The `/readyz` checks as the composition root (`cli::serve`) shows them.
struct CachesCheck {
    cluster: Arc<Cluster>,
    required: bool,
}

impl CachesCheck {
    fn check(&self) -> Result<String, String> {
        self.cluster
            .caches_ready(self.required)
            .map_err(|e| e.to_string())
    }
}

struct CapabilitiesCheck(Arc<Cluster>);

impl CapabilitiesCheck {
    fn check(&self) -> Result<String, String> {
        self.0.capabilities_ready().map_err(|e| e.to_string())
    }
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
fn a_failing_node_watch_does_not_hold_readiness_back() {
    let c = Arc::new(Cluster::new());
    c.record_probe(Capabilities::default());
    let caps = CapabilitiesCheck(c.clone());
    assert!(caps.check().is_err());
    c.nodes.record_error("nodes is forbidden".into());
    let detail: serde_json::Value = serde_json::from_str(&caps.check().unwrap()).unwrap();
    assert_eq!(detail["nodes"], serde_json::Value::Null);
    assert_eq!(c.facts().nodes, None);
}

#[test]
fn readiness_and_metrics() {
    let c = Arc::new(Cluster::new());
    // As `start` sets it with the pod target on.
    c.jobsets_watched.store(true, Ordering::Relaxed);
    let caches = CachesCheck {
        cluster: c.clone(),
        required: true,
    };
    let optional = CachesCheck {
        cluster: c.clone(),
        required: false,
    };
    let caps = CapabilitiesCheck(c.clone());
    assert!(caches.check().is_err());
    assert!(optional.check().is_ok());
    assert!(caps.check().is_err());

    c.namespaces.apply(watcher::Event::<()>::Init, |()| None);
    c.namespaces
        .apply(watcher::Event::<()>::InitDone, |()| None);
    assert!(caches.check().is_err(), "jobsets not synced yet");
    c.jobsets.apply(watcher::Event::<()>::Init, |()| None);
    c.jobsets.apply(watcher::Event::<()>::InitDone, |()| None);
    let detail = caches.check().unwrap();
    assert!(
        detail.contains("namespaces synced, 0 objects; jobsets synced"),
        "{detail}"
    );

    c.record_probe(Capabilities {
        server_version: Some("v1.36.2".into()),
        restart_policy_rules: known(true),
        restart_all_containers: known(false),
        jobset_crd_installed: known(true),
        jobset_crd_keeps_rules: Finding::default(),
    });
    let waiting = caps.check().unwrap_err();
    assert!(waiting.starts_with("listing the nodes"), "{waiting}");
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
    let detail: serde_json::Value = serde_json::from_str(&caps.check().unwrap()).unwrap();
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
