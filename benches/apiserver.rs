//! JobSet and pod creation through a real kube-apiserver, with no admission of ours, with our
//! webhook, and with the admission policies `jobset-restart-webhook policy` generates (issue 7,
//! part 3). Run: `cargo bench --features e2e --bench apiserver` (about 11 minutes; `-- --quick`
//! about 3.5). Without `--bench` (as `cargo test --all-targets --features e2e` would run it) it
//! does nothing.
//!
//! The control plane is the e2e harness's (tests/e2e/cluster.rs and webhook.rs, shared as
//! modules): etcd, kube-apiserver, kube-controller-manager, the JobSet v0.12.0 controller with
//! its own webhooks, and our release-built `serve --targets jobsets,pods` with the cluster's
//! kubeconfig (cluster-aware: it watches JobSets, so pods find their parent). Everything shares
//! the machine's cores: what is measured is the whole system, and the ratios between modes are
//! the result. Three modes:
//! - none: neither the shipped MutatingWebhookConfiguration nor the policies are registered;
//! - webhook (`Mode::Ours`): the shipped MutatingWebhookConfiguration (pointing at `serve`) is
//!   registered;
//! - policy: the MutatingWebhookConfiguration is deleted and the MutatingAdmissionPolicy,
//!   ValidatingAdmissionPolicy and bindings that the same binary's `policy -o json` prints
//!   (built-in defaults, as `serve` runs without `--config`) are applied.
//!
//! Every switch goes through "none" and waits until the API server really acts accordingly:
//! a server-side dry run of an opted-in JobSet carries no `applied` annotation and one with an
//! invalid annotation is accepted; then, for webhook or policy, the dry run carries the annotation
//! and the invalid one is denied.
//!
//! 1. JobSet creates: `conns` clients create opted-in, suspended JobSets (no pods) back to
//!    back, in the order none / webhook / policy / policy / webhook / none (so that a linear
//!    drift of the background load cancels) after a discarded warm-up, for 1 replicated job x
//!    1 container (15 s runs) and for 8 replicated jobs x 3 containers (10 s runs; the
//!    policy's CEL grows with containers). Per run: creates/s, the client's latency
//!    percentiles, and from kube-apiserver's /metrics (deltas)
//!    `apiserver_request_duration_seconds` for `POST jobsets`,
//!    `apiserver_admission_webhook_admission_duration_seconds` per webhook, the admission
//!    phases and plugins (`apiserver_admission_step_admission_duration_seconds`,
//!    `apiserver_admission_controller_admission_duration_seconds`) and the mutating policy's
//!    own `apiserver_mutating_admission_policy_check_duration_seconds` (the validating
//!    policy's check metrics only count denials and errors). Then one client creates 40
//!    JobSets of each shape one at a time in each mode: the engines' cost without queueing.
//! 2. Pods: 20 JobSets of one Job with 50 pods each (1,000 pods), created at once; the time
//!    until the controllers have created every pod, and the same metrics for `POST pods`,
//!    with no webhook of ours and with ours (pod target on; the policies have no pod target).

#[path = "../tests/e2e/cluster.rs"]
#[allow(dead_code)]
mod cluster;
#[path = "../tests/e2e/util.rs"]
#[allow(dead_code)]
mod util;
#[path = "../tests/e2e/webhook.rs"]
#[allow(dead_code)]
mod webhook;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use cluster::{Cluster, ClusterOptions};
use webhook::{SHIPPED_NAME, Webhook, WebhookOptions};

const TOKEN: &str = "admin-token";
const APPLIED: &str = "/metadata/annotations/restart.jobset.dev~1applied";
/// The shipped configuration's webhook for opted-in JobSets (the one the bench's JobSets meet).
const OUR_JOBSET_WEBHOOK: &str = "jobsets.restart.jobset.dev";

/// Which admission of ours the API server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    None,
    Ours,
    Policy,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Ours => "webhook",
            Mode::Policy => "policy",
        }
    }
}

/// The JobSets created: `rjobs` replicated jobs of one Job with `containers` containers.
#[derive(Clone, Copy)]
struct Shape {
    rjobs: usize,
    containers: usize,
}

const SMALL: Shape = Shape {
    rjobs: 1,
    containers: 1,
};
const LARGE: Shape = Shape {
    rjobs: 8,
    containers: 3,
};

/// The generated policies (a `v1` `List`) and the mutating policy's name (the label of its
/// check metric).
struct Policies {
    list: Value,
    mutating: String,
}

/// One JobSet-creates run.
struct Run {
    mode: Mode,
    load: String,
    rate: f64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    post: String,
    post_mean_ms: f64,
    webhooks: String,
    applied: bool,
    admission: Admission,
}

/// Admission inside kube-apiserver over one run, from /metrics deltas.
struct Admission {
    /// JobSets created in the run (the denominator of the per-JobSet figures).
    created: f64,
    /// (sum s, count) of the mutating and validating phases (operation CREATE, every resource).
    admit: (f64, f64),
    validate: (f64, f64),
    /// (sum s, count) per admission plugin (operation CREATE), by plugin name.
    plugins: BTreeMap<String, (f64, f64)>,
    /// (sum s, count) of the mutating policy's own check histogram (one observation per
    /// evaluation). The validating policy's histogram only observes denials and errors.
    map_check: (f64, f64),
}

/// Admission plugins shown per run, in the API server's order: MAP, MAW, VAP, VAW.
const PLUGINS: [&str; 4] = [
    "MutatingAdmissionPolicy",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionWebhook",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("apiserver bench: runs only under `cargo bench --features e2e --bench apiserver`");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let started = Instant::now();
    let load_before = loadavg();
    let policies = generated_policies();
    let cluster = Cluster::start(ClusterOptions {
        name: "bench",
        ..ClusterOptions::default()
    });
    let hook = Webhook::start(
        &cluster,
        WebhookOptions {
            targets: Some("jobsets,pods".to_owned()),
            config: None,
        },
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let api = Api::new(&cluster);
    let conns = 8;
    let mut current: Option<Mode> = None;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Through kube-apiserver ({} mode; load average before {load_before})\n",
        if quick { "quick" } else { "full" }
    );

    use Mode::{None as N, Ours as O, Policy as P};
    let sections: [(Shape, u64, &[Mode]); 2] = if quick {
        [(SMALL, 6, &[N, O, P]), (LARGE, 6, &[O, P])]
    } else {
        [
            (SMALL, 15, &[N, O, P, P, O, N]),
            (LARGE, 10, &[N, O, P, P, O, N]),
        ]
    };
    let mut families_seen = String::new();
    let mut run_no = 0;
    for (section, (shape, secs, order)) in sections.into_iter().enumerate() {
        let secs = Duration::from_secs(secs);
        // A discarded warm-up run of the section's shape in its first mode: without it the
        // first run of the 8x3 section was ~30 % slower than the last at the same load.
        if current != Some(order[0]) {
            set_mode(&cluster, &hook, &policies, order[0]);
            current = Some(order[0]);
        }
        let warm_secs = Duration::from_secs(if quick { 2 } else { 5 });
        let ns = cluster
            .namespace(&format!("bench-warm-{section}"), &[])
            .name
            .clone();
        let (ok, _, _) = rt.block_on(create_jobsets(&api, &ns, conns, warm_secs, shape));
        eprintln!(
            "apiserver: warm-up {} {}x{}: {:.1} creates/s (discarded)",
            order[0].label(),
            shape.rjobs,
            shape.containers,
            ok as f64 / warm_secs.as_secs_f64()
        );
        delete_namespace(&cluster, &ns);
        let mut runs = Vec::new();
        for &mode in order {
            run_no += 1;
            if current != Some(mode) {
                set_mode(&cluster, &hook, &policies, mode);
                current = Some(mode);
            }
            let ns = cluster
                .namespace(&format!("bench-js-{run_no}"), &[])
                .name
                .clone();
            let load = loadavg_1();
            let before = rt.block_on(api.metrics());
            let (ok, errors, hist) = rt.block_on(create_jobsets(&api, &ns, conns, secs, shape));
            let after = rt.block_on(api.metrics());
            if mode == Mode::Policy && families_seen.is_empty() {
                families_seen = admission_families(&after);
            }
            let applied = rt
                .block_on(api.get_jobset(&ns, "js-0-0"))
                .is_some_and(|js| js.pointer(APPLIED).is_some_and(Value::is_string));
            let req = after
                .request_hist("jobsets", "POST")
                .delta(&before.request_hist("jobsets", "POST"));
            let run = Run {
                mode,
                load,
                rate: ok as f64 / secs.as_secs_f64(),
                errors,
                p50_ms: hist.value_at_quantile(0.5) as f64 / 1e3,
                p99_ms: hist.value_at_quantile(0.99) as f64 / 1e3,
                post: req.describe(),
                post_mean_ms: req.sum / req.count * 1e3,
                webhooks: webhooks_called(&before, &after),
                applied,
                admission: Admission::measure(&before, &after, &policies, ok as f64),
            };
            eprintln!(
                "apiserver: run {run_no} {} {}x{}: {:.1} creates/s, applied={applied}",
                mode.label(),
                shape.rjobs,
                shape.containers,
                run.rate
            );
            if applied != (mode != Mode::None) {
                eprintln!(
                    "apiserver: WARNING: run {run_no} ({}): applied annotation {applied}",
                    mode.label()
                );
            }
            runs.push(run);
            delete_namespace(&cluster, &ns);
        }
        report_creates(&mut out, shape, secs, conns, run_no + 1 - runs.len(), &runs);
    }
    // One client, one create at a time: the cost of each engine without queueing for the CPU.
    let seq = if quick { 10 } else { 40 };
    let _ = writeln!(
        out,
        "### One client, {seq} sequential creates per mode and shape (order none / webhook / \
         policy)\n"
    );
    out.push_str("| admission of ours | shape | client p50 / max ms | apiserver POST jobsets mean ms | our webhook: mean ms (calls per JobSet) | mutating phase | MAP plugin | MAW plugin | validating phase | VAP plugin | MAP check: mean ms (evaluations per JobSet) |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    let ns = cluster.namespace("bench-seq", &[]).name.clone();
    for mode in [Mode::None, Mode::Ours, Mode::Policy] {
        set_mode(&cluster, &hook, &policies, mode);
        for shape in [SMALL, LARGE] {
            let before = rt.block_on(api.metrics());
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
            for k in 0..seq {
                let name = format!(
                    "seq-{}-{}x{}-{k}",
                    mode.label(),
                    shape.rjobs,
                    shape.containers
                );
                let t = Instant::now();
                rt.block_on(api.create_jobset(&ns, &create_body(&name, shape)))
                    .unwrap_or_else(|e| panic!("creating {name}: {e}"));
                let _ = hist.record(t.elapsed().as_micros() as u64);
            }
            let after = rt.block_on(api.metrics());
            let a = Admission::measure(&before, &after, &policies, seq as f64);
            let req = after
                .request_hist("jobsets", "POST")
                .delta(&before.request_hist("jobsets", "POST"));
            let ours = after
                .webhook_hist(OUR_JOBSET_WEBHOOK)
                .delta(&before.webhook_hist(OUR_JOBSET_WEBHOOK));
            let per = |(sum, _): (f64, f64)| format!("{:.2}", sum / seq as f64 * 1e3);
            let plugin = |name: &str| per(a.plugins.get(name).copied().unwrap_or((0.0, 0.0)));
            let _ = writeln!(
                out,
                "| {} | {}x{} | {:.1} / {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
                mode.label(),
                shape.rjobs,
                shape.containers,
                hist.value_at_quantile(0.5) as f64 / 1e3,
                hist.max() as f64 / 1e3,
                req.sum / req.count * 1e3,
                if ours.count > 0.0 {
                    format!(
                        "{:.2} ({:.1})",
                        ours.sum / ours.count * 1e3,
                        ours.count / seq as f64
                    )
                } else {
                    "-".to_owned()
                },
                per(a.admit),
                plugin(PLUGINS[0]),
                plugin(PLUGINS[1]),
                per(a.validate),
                plugin(PLUGINS[2]),
                if a.map_check.1 > 0.0 {
                    format!(
                        "{:.2} ({:.1})",
                        a.map_check.0 / a.map_check.1 * 1e3,
                        a.map_check.1 / seq as f64
                    )
                } else {
                    "-".to_owned()
                },
            );
            eprintln!(
                "apiserver: sequential {} {}x{}: p50 {:.1} ms",
                mode.label(),
                shape.rjobs,
                shape.containers,
                hist.value_at_quantile(0.5) as f64 / 1e3
            );
        }
    }
    delete_namespace(&cluster, &ns);
    out.push('\n');

    let _ = writeln!(
        out,
        "kube-apiserver's admission families in /metrics after the first policy run \
         (name: label sets with a value):\n\n```\n{families_seen}```\n"
    );

    // Pods.
    set_mode(&cluster, &hook, &policies, Mode::None);
    let (jobsets, per) = if quick { (4, 50) } else { (20, 50) };
    let _ = writeln!(
        out,
        "### Pods: {jobsets} JobSets x 1 Job x {per} pods, created at once\n"
    );
    out.push_str("| webhook of ours | pods | seconds to all pods | pods/s | apiserver POST pods: mean / p50 / p99 ms (count) | admission webhooks called on pods, mean ms (calls) |\n|---|---|---|---|---|---|\n");
    for (i, ours) in [false, true].into_iter().enumerate() {
        set_mode(
            &cluster,
            &hook,
            &policies,
            if ours { Mode::Ours } else { Mode::None },
        );
        let ns = cluster
            .namespace(&format!("bench-pods-{i}"), &[])
            .name
            .clone();
        let before = rt.block_on(api.metrics());
        let t0 = Instant::now();
        for j in 0..jobsets {
            let js = pods_jobset(&format!("pods-{j}"), per);
            rt.block_on(api.create_jobset(&ns, &js))
                .unwrap_or_else(|e| panic!("creating {j}: {e}"));
        }
        let want = jobsets * per;
        let deadline = Duration::from_secs(if quick { 90 } else { 180 });
        let mut have = 0;
        while t0.elapsed() < deadline {
            have = rt.block_on(api.count_pods(&ns));
            if have >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let took = t0.elapsed().as_secs_f64();
        let after = rt.block_on(api.metrics());
        let req = after
            .request_hist("pods", "POST")
            .delta(&before.request_hist("pods", "POST"));
        let _ = writeln!(
            out,
            "| {} | {have} / {want} | {took:.1} | {:.1} | {} | {} |",
            if ours {
                "registered (pod target on)"
            } else {
                "none"
            },
            have as f64 / took,
            req.describe(),
            webhooks_called_on(&before, &after, |n| {
                n.starts_with("pods.") || n.starts_with("mpod") || n.starts_with("vpod")
            }),
        );
        eprintln!("apiserver: pods ours={ours}: {have}/{want} in {took:.1} s");
        delete_namespace(&cluster, &ns);
    }
    let _ = writeln!(
        out,
        "\nTotal {:.0} s; load average after {}.",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    println!("{out}");
}

/// Prints the two tables of one shape's runs and the ratios of the medians.
fn report_creates(
    out: &mut String,
    shape: Shape,
    secs: Duration,
    conns: usize,
    first: usize,
    runs: &[Run],
) {
    let order: Vec<&str> = runs.iter().map(|r| r.mode.label()).collect();
    let _ = writeln!(
        out,
        "### JobSet creates, {} replicated job(s) x {} container(s) ({conns} clients, {} s per \
         run, opted-in suspended JobSets, order {})\n",
        shape.rjobs,
        shape.containers,
        secs.as_secs(),
        order.join(" / ")
    );
    out.push_str("| run | admission of ours | load (1 min) | creates/s | client p50 / p99 ms | apiserver POST jobsets: mean / p50 / p99 ms (count) | admission webhooks called, mean ms (calls) |\n|---|---|---|---|---|---|---|\n");
    for (i, r) in runs.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {}{} | {} | {:.1}{} | {:.1} / {:.1} | {} | {} |",
            first + i,
            r.mode.label(),
            if r.applied == (r.mode != Mode::None) {
                ""
            } else {
                " (**applied annotation not as expected**)"
            },
            r.load,
            r.rate,
            if r.errors > 0 {
                format!(" ({} errors)", r.errors)
            } else {
                String::new()
            },
            r.p50_ms,
            r.p99_ms,
            r.post,
            r.webhooks,
        );
    }
    let _ = writeln!(
        out,
        "\nAdmission inside kube-apiserver, ms per JobSet created (sum of the histogram over the \
         run / JobSets created; the phases and plugins also time the other objects created \
         meanwhile, e.g. the controller's Jobs and Events, which no admission of ours matches):\n"
    );
    out.push_str("| run | admission of ours | mutating phase | MAP plugin | MAW plugin | validating phase | VAP plugin | VAW plugin | MAP check: mean ms (evaluations per JobSet) |\n|---|---|---|---|---|---|---|---|---|\n");
    for (i, r) in runs.iter().enumerate() {
        let a = &r.admission;
        let per = |(sum, _): (f64, f64)| {
            if a.created > 0.0 {
                format!("{:.2}", sum / a.created * 1e3)
            } else {
                "-".to_owned()
            }
        };
        let check = |(sum, count): (f64, f64)| {
            if count > 0.0 {
                format!("{:.2} ({:.1})", sum / count * 1e3, count / a.created)
            } else {
                "-".to_owned()
            }
        };
        let plugin = |name: &str| per(a.plugins.get(name).copied().unwrap_or((0.0, 0.0)));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            first + i,
            r.mode.label(),
            per(a.admit),
            plugin(PLUGINS[0]),
            plugin(PLUGINS[1]),
            per(a.validate),
            plugin(PLUGINS[2]),
            plugin(PLUGINS[3]),
            check(a.map_check),
        );
    }
    let med = |mode: Mode, f: fn(&Run) -> f64| {
        median(runs.iter().filter(|r| r.mode == mode).map(f).collect())
    };
    let (none, ours, policy) = (
        med(Mode::None, |r| r.rate),
        med(Mode::Ours, |r| r.rate),
        med(Mode::Policy, |r| r.rate),
    );
    let (none_ms, ours_ms, policy_ms) = (
        med(Mode::None, |r| r.post_mean_ms),
        med(Mode::Ours, |r| r.post_mean_ms),
        med(Mode::Policy, |r| r.post_mean_ms),
    );
    let _ = writeln!(out);
    if none.is_finite() {
        let _ = writeln!(
            out,
            "Creates/s (medians): none {none:.1}, webhook {ours:.1}, policy {policy:.1}; \
             **webhook / none {:.2}, policy / none {:.2}**, policy / webhook {:.2}. \
             Mean POST jobsets (medians): none {none_ms:.1} ms, webhook {ours_ms:.1} ms, \
             policy {policy_ms:.1} ms.\n",
            ours / none,
            policy / none,
            policy / ours
        );
    } else {
        let _ = writeln!(
            out,
            "Creates/s (medians): webhook {ours:.1}, policy {policy:.1}; **policy / webhook \
             {:.2}**. Mean POST jobsets (medians): webhook {ours_ms:.1} ms, policy \
             {policy_ms:.1} ms.\n",
            policy / ours
        );
    }
}

impl Admission {
    fn measure(before: &Metrics, after: &Metrics, policies: &Policies, created: f64) -> Self {
        let d = |f: &dyn Fn(&Metrics) -> Hist| {
            let h = f(after).delta(&f(before));
            (h.sum, h.count)
        };
        let step = |ty: &'static str| {
            move |m: &Metrics| {
                let t = format!("type=\"{ty}\"");
                m.hist("apiserver_admission_step_admission_duration_seconds", |l| {
                    l.contains(&t)
                        && l.contains("operation=\"CREATE\"")
                        && l.contains("rejected=\"false\"")
                })
            }
        };
        let mut plugins = BTreeMap::new();
        for name in PLUGINS {
            let n = format!("name=\"{name}\"");
            plugins.insert(
                name.to_owned(),
                d(&|m: &Metrics| {
                    m.hist(
                        "apiserver_admission_controller_admission_duration_seconds",
                        |l| {
                            l.contains(&n)
                                && l.contains("operation=\"CREATE\"")
                                && l.contains("rejected=\"false\"")
                        },
                    )
                }),
            );
        }
        let check = |family: &'static str, policy: &str| {
            let p = format!("policy=\"{policy}\"");
            d(&move |m: &Metrics| m.hist(family, |l| l.contains(&p)))
        };
        Admission {
            created,
            admit: d(&step("admit")),
            validate: d(&step("validate")),
            plugins,
            map_check: check(
                "apiserver_mutating_admission_policy_check_duration_seconds",
                &policies.mutating,
            ),
        }
    }
}

/// What kube-apiserver's /metrics holds about admission policies: the series of every family
/// whose name mentions `admission_policy` or `match_condition` (without `_bucket`, `le`), and
/// the plugins `apiserver_admission_controller_admission_duration_seconds` timed for CREATE.
/// Only series with a non-zero value.
fn admission_families(m: &Metrics) -> String {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut plugins: Vec<String> = Vec::new();
    for line in m.0.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if value.parse::<f64>().unwrap_or(0.0) == 0.0 {
            continue;
        }
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let labels = labels.trim_end_matches('}');
        if name == "apiserver_admission_controller_admission_duration_seconds_count"
            && labels.contains("operation=\"CREATE\"")
        {
            if let (Some(n), Some(t)) = (label(labels, "name"), label(labels, "type")) {
                let p = format!("{n} ({t})");
                if !plugins.contains(&p) {
                    plugins.push(p);
                }
            }
            continue;
        }
        if !(name.contains("admission_policy") || name.contains("match_condition"))
            || name.ends_with("_bucket")
        {
            continue;
        }
        let entry = seen.entry(name.to_owned()).or_default();
        if !entry.iter().any(|l| l == labels) {
            entry.push(labels.to_owned());
        }
    }
    let mut s = String::new();
    for (name, sets) in seen {
        let _ = writeln!(s, "{name}{{{}}}", sets.join("} {"));
    }
    let _ = writeln!(
        s,
        "apiserver_admission_controller_admission_duration_seconds, CREATE: {}",
        plugins.join(", ")
    );
    s
}

/// `policy -o json` of the binary `serve` runs from, with the built-in defaults.
fn generated_policies() -> Policies {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobset-restart-webhook"))
        .args(["policy", "-o", "json"])
        .output()
        .expect("running jobset-restart-webhook policy");
    assert!(
        out.status.success(),
        "policy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("policy -o json prints JSON");
    let name_of = |kind: &str| {
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["kind"] == kind)
            .and_then(|i| i["metadata"]["name"].as_str())
            .unwrap_or_else(|| panic!("policy prints no {kind}"))
            .to_owned()
    };
    assert!(
        !name_of("ValidatingAdmissionPolicy").is_empty(),
        "policy prints a ValidatingAdmissionPolicy"
    );
    Policies {
        mutating: name_of("MutatingAdmissionPolicy"),
        list,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn loadavg_1() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A server-side dry run in `default`: (stored object or Null, refusal text or "").
fn dry_run(cluster: &Cluster, in_place: &str) -> (Value, String) {
    let probe = json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
        "metadata": {"name": "probe-restart-webhook", "annotations": {"restart.jobset.dev/in-place": in_place}},
        "spec": {"replicatedJobs": [{"name": "r", "replicas": 1, "template": {"spec": {
            "template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}}]}
    });
    cluster.dry_run_create("default", &probe)
}

/// Whether the API server mutates an opted-in dry run and denies one with an invalid
/// annotation, or neither; `Err` while it is in between.
fn acting(cluster: &Cluster, want: bool) -> Result<(), String> {
    let (stored, _) = dry_run(cluster, "enabled");
    if !stored["metadata"]["name"].is_string() {
        return Err(format!("the opted-in dry run was not stored: {stored}"));
    }
    let mutated = stored.pointer(APPLIED).is_some_and(Value::is_string);
    let (accepted, refusal) = dry_run(cluster, "maybe");
    let denied = !accepted["metadata"]["name"].is_string();
    if mutated == want && denied == want {
        Ok(())
    } else {
        Err(format!(
            "mutated {mutated}, invalid annotation denied {denied} ({})",
            refusal.trim()
        ))
    }
}

/// Puts the API server in `mode` (always through "none") and waits until it acts so.
fn set_mode(cluster: &Cluster, hook: &Webhook, policies: &Policies, mode: Mode) {
    let t = Instant::now();
    cluster.kubectl_ok(
        &[
            "delete",
            "mutatingwebhookconfiguration",
            SHIPPED_NAME,
            "--ignore-not-found",
        ],
        None,
    );
    cluster.kubectl_ok(
        &["delete", "-f", "-", "--ignore-not-found"],
        Some(&policies.list.to_string()),
    );
    util::wait_for(
        "the API server to run no admission of ours",
        Duration::from_secs(60),
        || acting(cluster, false),
    );
    match mode {
        Mode::None => {}
        Mode::Ours => hook.register(cluster, None, "default"),
        Mode::Policy => {
            cluster.kubectl_ok(&["apply", "-f", "-"], Some(&policies.list.to_string()));
        }
    }
    if mode != Mode::None {
        util::wait_for(
            "the API server to run our admission",
            Duration::from_secs(60),
            || acting(cluster, true),
        );
    }
    eprintln!(
        "apiserver: mode {} in effect after {:.1} s",
        mode.label(),
        t.elapsed().as_secs_f64()
    );
}

fn delete_namespace(cluster: &Cluster, ns: &str) {
    cluster.kubectl_ok(&["delete", "namespace", ns, "--wait=false"], None);
    // Bounded: the next run starts after at most 60 s even if the garbage collector is busy.
    let t = Instant::now();
    let deadline = t + Duration::from_secs(60);
    while Instant::now() < deadline {
        if !cluster
            .kubectl(&["get", "namespace", ns], None)
            .status
            .success()
        {
            eprintln!(
                "apiserver: namespace {ns} deleted in {:.1} s",
                t.elapsed().as_secs_f64()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("apiserver: namespace {ns} still terminating after 60 s; going on");
}

/// An opted-in, suspended JobSet of `shape` (one pod per Job when resumed).
fn create_body(name: &str, shape: Shape) -> Value {
    let containers: Vec<Value> = (0..shape.containers)
        .map(|c| {
            json!({
                "name": if c == 0 { "trainer".to_owned() } else { format!("helper-{c}") },
                "image": "busybox:1.36",
                "command": ["sh", "-c", "exit 0"],
                "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}
            })
        })
        .collect();
    let rjobs: Vec<Value> = (0..shape.rjobs)
        .map(|r| {
            json!({
                "name": if shape.rjobs == 1 { "workers".to_owned() } else { format!("workers-{r}") },
                "replicas": 1,
                "template": {"spec": {
                    "parallelism": 1, "completions": 1, "backoffLimit": 0,
                    "template": {"spec": {"containers": containers}}
                }}
            })
        })
        .collect();
    json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": name, "annotations": {"restart.jobset.dev/in-place": "enabled"}},
        "spec": {"suspend": true, "replicatedJobs": rjobs}
    })
}

/// An opted-in JobSet whose one Job runs `pods` pods at once.
fn pods_jobset(name: &str, pods: usize) -> Value {
    let mut js = create_body(name, SMALL);
    js["spec"]["suspend"] = json!(false);
    js["spec"]["replicatedJobs"][0]["template"]["spec"]["parallelism"] = json!(pods);
    js["spec"]["replicatedJobs"][0]["template"]["spec"]["completions"] = json!(pods);
    js
}

async fn create_jobsets(
    api: &Api,
    ns: &str,
    conns: usize,
    secs: Duration,
    shape: Shape,
) -> (u64, u64, Histogram<u64>) {
    let end = Instant::now() + secs;
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            let api = api.clone();
            let ns = ns.to_owned();
            let errors = errors.clone();
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
                let mut ok = 0u64;
                let mut k = 0;
                while Instant::now() < end {
                    let body = create_body(&format!("js-{c}-{k}"), shape);
                    k += 1;
                    let t = Instant::now();
                    match api.create_jobset(&ns, &body).await {
                        Ok(()) => {
                            ok += 1;
                            let _ = hist.record(t.elapsed().as_micros() as u64);
                        }
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("apiserver: create failed: {e}");
                            }
                        }
                    }
                }
                (ok, hist)
            })
        })
        .collect();
    let mut total = 0;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
    for t in tasks {
        let (ok, h) = t.await.expect("creator");
        total += ok;
        let _ = hist.add(&h);
    }
    (total, errors.load(Ordering::Relaxed), hist)
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(cluster: &Cluster) -> Self {
        let ca = std::fs::read(cluster.dir.join("apiserver-certs/apiserver.crt"))
            .expect("the API server's certificate");
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA PEM"))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        Self {
            http,
            base: format!("https://127.0.0.1:{}", cluster.api_port),
        }
    }

    async fn create_jobset(&self, ns: &str, body: &Value) -> Result<(), String> {
        let url = format!(
            "{}/apis/jobset.x-k8s.io/v1alpha2/namespaces/{ns}/jobsets",
            self.base
        );
        let resp = self
            .http
            .post(url)
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read the answer to its end, as a client would.
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}: {text}"))
        }
    }

    async fn get_jobset(&self, ns: &str, name: &str) -> Option<Value> {
        let url = format!(
            "{}/apis/jobset.x-k8s.io/v1alpha2/namespaces/{ns}/jobsets/{name}",
            self.base
        );
        let resp = self.http.get(url).bearer_auth(TOKEN).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    async fn count_pods(&self, ns: &str) -> usize {
        let url = format!("{}/api/v1/namespaces/{ns}/pods?limit=1", self.base);
        let Ok(resp) = self.http.get(url).bearer_auth(TOKEN).send().await else {
            return 0;
        };
        let v: Value = resp.json().await.unwrap_or_default();
        let first = v["items"].as_array().map_or(0, Vec::len);
        first + v["metadata"]["remainingItemCount"].as_u64().unwrap_or(0) as usize
    }

    async fn metrics(&self) -> Metrics {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        Metrics(text)
    }
}

/// A Prometheus exposition.
struct Metrics(String);

impl Metrics {
    fn hist(&self, family: &str, filter: impl Fn(&str) -> bool) -> Hist {
        let mut h = Hist::default();
        for line in self.0.lines() {
            let Some(rest) = line.strip_prefix(family) else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once(' ') else {
                continue;
            };
            if !filter(labels) {
                continue;
            }
            let value: f64 = value.parse().unwrap_or(0.0);
            if let Some(l) = labels.strip_prefix("_bucket{") {
                if let Some(le) = label(l, "le") {
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap_or(f64::INFINITY)
                    };
                    *h.buckets.entry(OrdF64(le)).or_default() += value;
                }
            } else if labels.starts_with("_sum{") {
                h.sum += value;
            } else if labels.starts_with("_count{") {
                h.count += value;
            }
        }
        h
    }

    fn request_hist(&self, resource: &str, verb: &str) -> Hist {
        let (r, v) = (
            format!("resource=\"{resource}\""),
            format!("verb=\"{verb}\""),
        );
        self.hist("apiserver_request_duration_seconds", |l| {
            l.contains(&r) && l.contains(&v) && l.contains("subresource=\"\"")
        })
    }

    fn webhook_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .0
            .lines()
            .filter_map(|l| {
                l.strip_prefix("apiserver_admission_webhook_admission_duration_seconds_count{")
            })
            .filter_map(|l| label(l, "name").map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn webhook_hist(&self, name: &str) -> Hist {
        let n = format!("name=\"{name}\"");
        self.hist(
            "apiserver_admission_webhook_admission_duration_seconds",
            |l| l.contains(&n) && l.contains("operation=\"CREATE\""),
        )
    }
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    let start = labels.find(&key)? + key.len();
    let end = labels[start..].find('"')?;
    Some(&labels[start..start + end])
}

fn webhooks_called(before: &Metrics, after: &Metrics) -> String {
    webhooks_called_on(before, after, |n| {
        !n.starts_with("pods.") && !n.contains("pod")
    })
}

fn webhooks_called_on(before: &Metrics, after: &Metrics, keep: impl Fn(&str) -> bool) -> String {
    let mut parts = Vec::new();
    for name in after.webhook_names() {
        if !keep(&name) {
            continue;
        }
        let d = after.webhook_hist(&name).delta(&before.webhook_hist(&name));
        if d.count > 0.0 {
            parts.push(format!(
                "{name} {:.2} ({:.0})",
                d.sum / d.count * 1e3,
                d.count
            ));
        }
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join("; ")
    }
}

#[derive(Clone, Copy, PartialEq)]
struct OrdF64(f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A cumulative histogram (bucket upper bound → count), its sum and count.
#[derive(Default)]
struct Hist {
    buckets: BTreeMap<OrdF64, f64>,
    sum: f64,
    count: f64,
}

impl Hist {
    fn delta(&self, before: &Hist) -> Hist {
        Hist {
            buckets: self
                .buckets
                .iter()
                .map(|(le, v)| (*le, v - before.buckets.get(le).copied().unwrap_or(0.0)))
                .collect(),
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    /// `histogram_quantile`: linear interpolation inside the bucket, in seconds.
    fn quantile(&self, q: f64) -> f64 {
        if self.count <= 0.0 {
            return f64::NAN;
        }
        let rank = q * self.count;
        let mut prev = (0.0, 0.0);
        for (le, cum) in &self.buckets {
            if *cum >= rank {
                if le.0.is_infinite() {
                    return prev.0;
                }
                let in_bucket = cum - prev.1;
                let frac = if in_bucket > 0.0 {
                    (rank - prev.1) / in_bucket
                } else {
                    0.0
                };
                return prev.0 + (le.0 - prev.0) * frac;
            }
            prev = (le.0, *cum);
        }
        prev.0
    }

    fn describe(&self) -> String {
        if self.count <= 0.0 {
            return "-".to_owned();
        }
        format!(
            "{:.1} / {:.1} / {:.1} ({:.0})",
            self.sum / self.count * 1e3,
            self.quantile(0.5) * 1e3,
            self.quantile(0.99) * 1e3,
            self.count
        )
    }
}
