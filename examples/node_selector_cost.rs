//! What node awareness costs one JobSet review: the engine on a one-container JobSet with
//! no node snapshot, with N nodes and no `nodeSelector` (precomputed counts), with N nodes
//! and a `nodeSelector` (answer kept by the snapshot after the first review), and the pass
//! over the nodes itself (`Nodes::support`, which keeps nothing).
//! `cargo run --release --example node_selector_cost -- [NODES] [RUNS]` (docs/BENCHMARKS.md).
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use jobset_restart_webhook::engine::{
    ClusterFacts, Config, Environment, NodeInfo, Nodes, mutate_jobset,
};
use serde_json::json;

/// A node with labels like a cloud node's (a dozen, one of them its pool).
fn node(i: usize) -> Arc<NodeInfo> {
    let mut labels = BTreeMap::new();
    for (k, v) in [
        ("kubernetes.io/arch", "amd64".to_owned()),
        ("kubernetes.io/os", "linux".to_owned()),
        ("kubernetes.io/hostname", format!("node-{i}")),
        (
            "node.kubernetes.io/instance-type",
            "a3-highgpu-8g".to_owned(),
        ),
        ("topology.kubernetes.io/region", "us-central1".to_owned()),
        (
            "topology.kubernetes.io/zone",
            format!("us-central1-{}", i % 3),
        ),
        ("cloud.example.com/node-pool", format!("pool-{}", i % 4)),
        ("cloud.example.com/accelerator", "gpu".to_owned()),
        ("cloud.example.com/machine-family", "a3".to_owned()),
        ("example.com/rack", format!("rack-{}", i % 64)),
        ("example.com/block", format!("block-{}", i % 16)),
        ("example.com/team", "ml".to_owned()),
    ] {
        labels.insert(k.to_owned(), v);
    }
    Arc::new(NodeInfo {
        labels,
        unschedulable: false,
        declares: true,
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n_nodes: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5000);
    let runs: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let nodes = Arc::new(Nodes::new((0..n_nodes).map(node).collect()));
    let jobset = |selector: Option<serde_json::Value>| {
        let mut spec = json!({"containers": [{"name": "trainer", "image": "t:1"}]});
        if let Some(s) = selector {
            spec["nodeSelector"] = s;
        }
        json!({"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
               "metadata": {"name": "t", "annotations": {"restart.jobset.dev/in-place": "enabled"}},
               "spec": {"replicatedJobs": [{"name": "workers", "template": {"spec": {
                   "template": {"spec": spec}}}}]}})
        .to_string()
    };
    let plain = jobset(None);
    let pooled = jobset(Some(json!({"cloud.example.com/node-pool": "pool-1",
                                     "cloud.example.com/accelerator": "gpu"})));
    let config = Config::default();
    let time = |what: &str, raw: &str, facts: ClusterFacts| {
        let ctx = Environment {
            config: &config,
            namespace_labels: None,
            namespace_opted_in: false,
            facts,
        };
        let mut ops = 0;
        let start = Instant::now();
        for _ in 0..runs {
            ops += mutate_jobset(raw, &ctx).map(|m| m.patch.len()).unwrap_or(0);
        }
        println!(
            "{what}: {:?}/review ({runs} runs, {ops} ops)",
            start.elapsed() / runs
        );
    };
    let with_nodes = ClusterFacts {
        restart_all_containers: Some(true),
        nodes: Some(nodes),
        ..ClusterFacts::default()
    };
    // warm-up: the first timed loop otherwise pays for cold caches
    time("warm-up, no node snapshot", &plain, ClusterFacts::default());
    time("no node snapshot", &plain, ClusterFacts::default());
    time(
        &format!("{n_nodes} nodes, no nodeSelector"),
        &plain,
        with_nodes.clone(),
    );
    let snapshot = with_nodes.nodes.clone();
    time(
        &format!("{n_nodes} nodes, nodeSelector of 2 labels"),
        &pooled,
        with_nodes,
    );
    if let Some(nodes) = snapshot {
        let values: Vec<String> = (0..runs as usize).map(|i| format!("rack-{i}")).collect();
        // `Nodes::support` itself keeps nothing (reviews keep answers through
        // `engine::nodes::Memo`): every call is the pass.
        let start = Instant::now();
        let mut matched = 0;
        for v in &values {
            matched += nodes
                .support(&[
                    ("cloud.example.com/node-pool", "pool-1"),
                    ("example.com/rack", v),
                ])
                .nodes;
        }
        println!(
            "{n_nodes} nodes, a selector not kept (the pass): {:?}/call ({runs} calls, {matched})",
            start.elapsed() / runs
        );
    }
}
