//! Engine cost per JobSet size (issue: the core engine). Each JobSet has N replicated jobs of
//! 8 containers with env, resources and probes, opted in; the bench measures one
//! `mutate_jobset` call on the raw JSON (decision + patch), which is what a review costs
//! beyond decoding the AdmissionReview envelope. Run: `cargo bench --bench engine`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use jobset_restart_webhook::engine::{
    ClusterFacts, Config, Environment, mutate_jobset, update_jobset,
};
use serde_json::{Value, json};
use testkit::engine_inputs::{jobset, noop_update, stored};

fn bench(c: &mut Criterion) {
    let config = Config::default();
    let ctx = Environment {
        config: &config,
        namespace_labels: None,
        namespace_opted_in: false,
        facts: ClusterFacts::default(),
    };
    let mut group = c.benchmark_group("mutate_jobset");
    for rjobs in [1usize, 10, 50] {
        let raw = jobset(rjobs, 8).to_string();
        group.throughput(Throughput::Elements((rjobs * 8) as u64));
        group.bench_with_input(BenchmarkId::new("rjobs_x8", rjobs), &raw, |b, raw| {
            b.iter(|| mutate_jobset(black_box(raw), &ctx).map(|m| m.patch.len()))
        });
    }
    // The same shape with lean containers (name and image only): the engine's own cost per
    // container, with little input to skip.
    let mut lean_v = jobset(50, 8);
    for rj in lean_v["spec"]["replicatedJobs"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        for c in rj["template"]["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            *c = json!({"name": c["name"].clone(), "image": c["image"].clone()});
        }
    }
    let lean_raw = lean_v.to_string();
    eprintln!("lean 50x8 JobSet JSON: {} bytes", lean_raw.len());
    group.bench_function("lean_rjobs_x8/50", |b| {
        b.iter(|| mutate_jobset(black_box(&lean_raw), &ctx).map(|m| m.patch.len()))
    });
    // The floor for comparison: decoding the same JSON into a serde_json::Value.
    let raw = jobset(50, 8).to_string();
    group.bench_function("parse_to_value_floor/50", |b| {
        b.iter(|| serde_json::from_str::<Value>(black_box(&raw)).map(|v| v.is_object()))
    });
    group.bench_function("skip_floor/50", |b| {
        b.iter(|| serde_json::from_str::<serde::de::IgnoredAny>(black_box(&raw)).is_ok())
    });
    // UPDATE: one that changes nothing of ours (the common case: queues, status-free
    // re-writes) and one that dropped everything (a server-side re-apply of the manifest).
    for rjobs in [1usize, 50] {
        let manifest = jobset(rjobs, 8);
        let (new, old) = noop_update(&manifest, &ctx);
        group.bench_with_input(
            BenchmarkId::new("update_noop", rjobs),
            &(new, old),
            |b, (n, o)| {
                b.iter(|| update_jobset(black_box(n), black_box(o), &ctx).map(|m| m.patch.len()))
            },
        );
        let old = stored(&manifest, &ctx).to_string();
        let new = manifest.to_string();
        group.bench_with_input(
            BenchmarkId::new("update_restore", rjobs),
            &(new, old),
            |b, (n, o)| {
                b.iter(|| update_jobset(black_box(n), black_box(o), &ctx).map(|m| m.patch.len()))
            },
        );
    }
    eprintln!("50x8 JobSet JSON: {} bytes", raw.len());
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
