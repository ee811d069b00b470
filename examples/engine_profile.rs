//! Runs the engine in a loop on the bench JobSet (50x8 unless a third argument gives the
//! number of replicated jobs), for profilers (perf, callgrind):
//! `cargo run --release --example engine_profile -- 2000 [engine|skip|value|update-noop|update-restore] [RJOBS]`.
//! `skip` and `value` are the floors: serde skipping the whole input, and decoding it into
//! a `serde_json::Value`; `update-noop` is an UPDATE that changes nothing of ours,
//! `update-restore` one that dropped every field CREATE added.
use jobset_restart_webhook::engine::{
    ClusterFacts, Config, Environment, mutate_jobset, update_jobset,
};

use testkit::engine_inputs as bench;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let mode = args.next().unwrap_or_else(|| "engine".to_owned());
    let rjobs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(50);
    let manifest = bench::jobset(rjobs, 8);
    let raw = manifest.to_string();
    let config = Config::default();
    let ctx = Environment {
        config: &config,
        namespace_labels: None,
        namespace_opted_in: false,
        facts: ClusterFacts::default(),
    };
    let (noop_new, noop_old) = bench::noop_update(&manifest, &ctx);
    let stored = bench::stored(&manifest, &ctx).to_string();
    let start = std::time::Instant::now();
    let mut work = 0usize;
    for _ in 0..n {
        work += match mode.as_str() {
            "skip" => usize::from(serde_json::from_str::<serde::de::IgnoredAny>(&raw).is_ok()),
            "value" => usize::from(serde_json::from_str::<serde_json::Value>(&raw).is_ok()),
            "update-noop" => update_jobset(&noop_new, &noop_old, &ctx)
                .map(|m| m.patch.len())
                .unwrap_or(0),
            "update-restore" => update_jobset(&raw, &stored, &ctx)
                .map(|m| m.patch.len())
                .unwrap_or(0),
            _ => mutate_jobset(&raw, &ctx)
                .map(|m| m.patch.len())
                .unwrap_or(0),
        };
    }
    println!(
        "{mode}: {n} runs ({work}), {:?}/run, {} bytes",
        start.elapsed() / n as u32,
        raw.len()
    );
}
