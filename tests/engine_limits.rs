//! The work of one review is bounded before it starts (README: Opting in, "Bounds"): the
//! engine, called in-process on the shapes that cost seconds of CPU or hundreds of MB before
//! the bounds, with the CPU time this thread spent read from /proc (not wall-clock: the
//! machine may be shared) and held to 1 s per review, a wide margin over what each takes.
//! The memory of the same shapes, and of 3 MiB bodies, through the real server:
//! tests/hostile (`one_review_is_bounded`).

use std::collections::BTreeMap;
use std::sync::Arc;

use jobset_restart_webhook::engine::{
    ClusterFacts, Config, Denial, Environment, Mutation, NodeInfo, Nodes, mutate_jobset,
    too_many_replicated_jobs, update_jobset,
};
use serde_json::{Value, json};

/// CPU time per review, far above what each case takes with the bounds (debug build
/// included) and far below what it took without them.
const MAX_CPU_SECS: f64 = 1.0;

/// User + system CPU time of the calling thread, from /proc/thread-self/stat (clock ticks of
/// 10 ms): the test harness runs each test on its own thread.
fn thread_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("read stat");
    // The fields after the command name (which may hold spaces) start after the last ')'.
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| -> f64 {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .expect("utime/stime in /proc/thread-self/stat")
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs `f`, returns its result and the CPU seconds it took.
fn cpu<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = thread_cpu_secs();
    let out = f();
    (out, thread_cpu_secs() - start)
}

fn env(config: &Config, facts: ClusterFacts) -> Environment<'_> {
    Environment {
        config,
        namespace_labels: None,
        namespace_opted_in: false,
        facts,
    }
}

/// A JobSet of `rjobs` replicated jobs; `rjob(i)` gives replicated job `i`'s pod spec and
/// template annotations.
fn jobset(annotations: Value, rjobs: usize, rjob: impl Fn(usize) -> (Value, Value)) -> Value {
    json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": { "name": "big", "annotations": annotations },
        "spec": { "replicatedJobs": (0..rjobs).map(|i| {
            let (spec, anns) = rjob(i);
            json!({
                "name": format!("r{i}"),
                "template": {
                    "metadata": { "annotations": anns },
                    "spec": { "template": { "spec": spec } },
                },
            })
        }).collect::<Vec<_>>() },
    })
}

fn one_container(name: &str) -> Value {
    json!({ "containers": [{ "name": name, "image": "x" }] })
}

fn names(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("{prefix}{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn report(case: &str, secs: f64, bytes: usize, outcome: &Result<Mutation, Denial>) {
    let what = match outcome {
        Ok(m) => format!(
            "allowed, {} ops, {} warnings",
            m.patch.len(),
            m.warnings.len()
        ),
        Err(d) => format!("denied: {:.120}", d.message),
    };
    println!("{case}: {bytes} bytes, {secs:.2} s CPU, {what}");
    assert!(
        secs <= MAX_CPU_SECS,
        "{case}: {secs:.2} s of CPU, over {MAX_CPU_SECS} s"
    );
}

/// The ~65 KB JobSet that peaked at 205 MB: 400 replicated jobs, and a `containers` list of
/// 2,000 names found nowhere plus one found everywhere. Refused by the bound on the list,
/// before any replicated job is read.
#[test]
fn a_list_of_2001_names_over_400_replicated_jobs() {
    let config = Config::default();
    let list = format!("{},main", names("n", 2000));
    let js = jobset(
        json!({ "restart.jobset.dev/in-place": "enabled", "restart.jobset.dev/containers": list }),
        400,
        |_| (one_container("main"), json!({})),
    );
    let raw = js.to_string();
    let (out, secs) = cpu(|| mutate_jobset(&raw, &env(&config, ClusterFacts::default())));
    report("2,001 names x 400 replicated jobs", secs, raw.len(), &out);
    let d = out.err().map(|d| d.message).unwrap_or_default();
    assert!(
        d.ends_with(&format!(
            "a list of container names may have at most 4096 bytes and 64 names; this one \
             has {} bytes",
            list.len()
        )),
        "{d}"
    );
}

/// The list that took 10.8 s (60,000 names) and 17.9 s (110,000) of CPU to de-duplicate.
#[test]
fn lists_of_60k_and_110k_distinct_names() {
    let config = Config::default();
    for n in [60_000, 110_000] {
        let list = names("c", n);
        let js = jobset(
            json!({ "restart.jobset.dev/in-place": "enabled" }),
            1,
            |_| {
                (
                    one_container("main"),
                    json!({ "restart.jobset.dev/containers": list }),
                )
            },
        );
        let raw = js.to_string();
        let (out, secs) = cpu(|| mutate_jobset(&raw, &env(&config, ClusterFacts::default())));
        report(&format!("{n} names"), secs, raw.len(), &out);
        let d = out.err().map(|d| d.message).unwrap_or_default();
        assert!(
            d.starts_with("replicated job \"r0\": restart.jobset.dev/containers: ")
                && d.ends_with(&format!("this one has {} bytes", list.len())),
            "{d:.300}"
        );
    }
}

/// `n` schedulable nodes, each in its own pool `p{i}`, every other one declaring the
/// feature; three labels each, as a real node has more.
fn nodes(n: usize) -> ClusterFacts {
    let nodes = (0..n)
        .map(|i| {
            Arc::new(NodeInfo {
                labels: BTreeMap::from([
                    ("kubernetes.io/hostname".to_owned(), format!("node-{i}")),
                    ("pool".to_owned(), format!("p{i}")),
                    ("zone".to_owned(), format!("z{}", i % 3)),
                ]),
                unschedulable: false,
                declares: i % 2 == 0,
            })
        })
        .collect();
    ClusterFacts {
        restart_all_containers: Some(true),
        nodes: Some(Arc::new(Nodes::new(nodes))),
        ..ClusterFacts::default()
    }
}

/// Replicated jobs with distinct `nodeSelector`s against 5,000 nodes: each distinct selector
/// costs a pass over the nodes. 10,000 of them (5 s of passes before) are refused by the
/// bound on replicated jobs before any pass; at the bound, 128 passes.
#[test]
fn distinct_node_selectors_against_5000_nodes() {
    let config = Config::default();
    let facts = nodes(5_000);
    let spec = |i: usize| {
        let mut s = one_container("main");
        s["nodeSelector"] = json!({ "pool": format!("p{i}"), "zone": format!("z{}", i % 3) });
        (s, json!({}))
    };
    let enabled = json!({ "restart.jobset.dev/in-place": "enabled" });
    let js = jobset(enabled.clone(), 10_000, spec);
    let raw = js.to_string();
    let (out, secs) = cpu(|| mutate_jobset(&raw, &env(&config, facts.clone())));
    report("10,000 selectors x 5,000 nodes", secs, raw.len(), &out);
    assert_eq!(
        out.err().map(|d| d.message),
        Some(too_many_replicated_jobs(10_000))
    );

    let js = jobset(enabled, 128, spec);
    let raw = js.to_string();
    let (out, secs) = cpu(|| mutate_jobset(&raw, &env(&config, facts.clone())));
    report("128 selectors x 5,000 nodes", secs, raw.len(), &out);
    let m = out.unwrap_or_else(|d| panic!("{d}"));
    // Half the pools declare the feature: RestartAllContainers there, Restart elsewhere.
    assert_eq!(m.patch.len(), 3 * 128 + 1);
    let summary = m.summary.unwrap_or_default();
    assert!(
        summary.starts_with("r0/main=RestartAllContainers:NotIn(0), r1/main=Restart:NotIn(0)"),
        "{summary:.200}"
    );
}

/// An UPDATE carries two objects: a stored JobSet of 7,000 replicated jobs whose `applied`
/// record was cut (every replicated job is looked up in the stored one) and the same JobSet
/// without our fields, under the API server's 3 MiB together. Each lookup by name was a scan
/// of the stored replicated jobs.
#[test]
fn an_update_of_7000_replicated_jobs_with_a_cut_record() {
    let config = Config::default();
    let spec = |_: usize| (one_container("main"), json!({}));
    let new = jobset(json!({}), 7_000, spec);
    let mut old = new.clone();
    old["metadata"]["annotations"]["restart.jobset.dev/applied"] = json!("... and 7000 more");
    for rj in old["spec"]["replicatedJobs"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        let c = &mut rj["template"]["spec"]["template"]["spec"]["containers"][0];
        c["restartPolicy"] = json!("Never");
        c["restartPolicyRules"] =
            json!([{ "action": "Restart", "exitCodes": { "operator": "NotIn", "values": [0] } }]);
    }
    let (raw, old_raw) = (new.to_string(), old.to_string());
    assert!(
        raw.len() + old_raw.len() <= 3 << 20,
        "{}",
        raw.len() + old_raw.len()
    );
    let (out, secs) = cpu(|| update_jobset(&raw, &old_raw, &env(&config, ClusterFacts::default())));
    report(
        "UPDATE, 7,000 replicated jobs, cut record",
        secs,
        raw.len() + old_raw.len(),
        &out,
    );
    // More than the webhook restores in one update: left as it is, with the warning.
    let m = out.unwrap_or_else(|d| panic!("{d}"));
    assert!(m.patch.is_empty());
    assert!(
        m.warnings
            .first()
            .is_some_and(|w| w.contains("dropped the restart rules of 7000 containers")),
        "{:?}",
        m.warnings
    );
}
