//! Runs the engine in a loop on the 50x8 bench JobSet, for profilers (perf, callgrind).
//! `cargo run --release --example engine_profile -- 2000`
use jobset_restart_webhook::engine::{ClusterFacts, Config, Context, mutate_jobset};

#[path = "../benches/engine.rs"]
#[allow(dead_code)]
mod bench;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let raw = bench::jobset(50, 8).to_string();
    let config = Config::default();
    let ctx = Context {
        config: &config,
        namespace_labels: None,
        facts: ClusterFacts::default(),
    };
    let start = std::time::Instant::now();
    let mut ops = 0;
    for _ in 0..n {
        ops += mutate_jobset(&raw, &ctx)
            .map(|m| m.patch.len())
            .unwrap_or(0);
    }
    println!("{n} runs, {ops} ops, {:?}/run", start.elapsed() / n as u32);
}
