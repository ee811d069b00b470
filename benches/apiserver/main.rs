//! JobSet and pod creation through a real kube-apiserver, with no admission of ours, with our
//! webhook, and with the admission policies `jobset-restart-webhook policy` generates (issue 7,
//! part 3). Run: `cargo bench --features e2e --bench apiserver` (about 11 minutes; `-- --quick`
//! about 3.5). Without `--bench` (as `cargo test --all-targets --features e2e` would run it) it
//! does nothing.
//!
//! The control plane is the e2e harness's (testkit's `cluster` and `webhook`): etcd, kube-apiserver, kube-controller-manager, the JobSet v0.12.0 controller with
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

mod load;
mod metrics;
mod modes;
mod report;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::Value;
use testkit::cluster::{Cluster, ClusterOptions};
use testkit::stats::{loadavg, loadavg_1};
use testkit::webhook::{Webhook, WebhookOptions};

use load::{Api, LARGE, SMALL, Shape, create_body, create_jobsets, pods_jobset};
use metrics::{Admission, PLUGINS, admission_families, webhooks_called, webhooks_called_on};
use modes::{Mode, Policies, delete_namespace, generated_policies, set_mode};
use report::{Run, report_creates};

const APPLIED: &str = "/metadata/annotations/restart.jobset.dev~1applied";
/// The shipped configuration's webhook for opted-in JobSets (the one the bench's JobSets meet).
const OUR_JOBSET_WEBHOOK: &str = "jobsets.restart.jobset.dev";

/// What every section runs against. Fields drop in this order: the client, the runtime, our
/// webhook, then the cluster.
struct Bench {
    api: Api,
    rt: tokio::runtime::Runtime,
    hook: Webhook,
    cluster: Cluster,
    policies: Policies,
    quick: bool,
    /// The mode the API server is in (`None` before the first switch).
    current: Option<Mode>,
}

impl Bench {
    /// Switches to `mode` unless the API server is in it already.
    fn ensure_mode(&mut self, mode: Mode) {
        if self.current != Some(mode) {
            set_mode(&self.cluster, &self.hook, &self.policies, mode);
            self.current = Some(mode);
        }
    }

    /// Switches to `mode` (through "none") even if the API server is in it already.
    fn switch_mode(&mut self, mode: Mode) {
        set_mode(&self.cluster, &self.hook, &self.policies, mode);
        self.current = Some(mode);
    }
}

fn main() {
    let Some(quick) = testkit::control_plane_bench("apiserver") else {
        return;
    };
    let started = Instant::now();
    let load_before = loadavg();
    let policies = generated_policies();
    let cluster = Cluster::start(ClusterOptions {
        name: "bench",
        ..ClusterOptions::default()
    });
    let hook = Webhook::start(&cluster, WebhookOptions::targets("jobsets,pods"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let api = Api::new(&cluster);
    let mut bench = Bench {
        api,
        rt,
        hook,
        cluster,
        policies,
        quick,
        current: None,
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Through kube-apiserver ({} mode; load average before {load_before})\n",
        if quick { "quick" } else { "full" }
    );
    let families_seen = concurrent_creates(&mut bench, &mut out);
    sequential_creates(&mut bench, &mut out);
    let _ = writeln!(
        out,
        "kube-apiserver's admission families in /metrics after the first policy run \
         (name: label sets with a value):\n\n```\n{families_seen}```\n"
    );
    pod_creates(&mut bench, &mut out);
    let _ = writeln!(
        out,
        "\nTotal {:.0} s; load average after {}.",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    println!("{out}");
}

/// Section 1: `conns` clients creating JobSets per shape and mode. Returns what /metrics held
/// about admission after the first policy run.
fn concurrent_creates(bench: &mut Bench, out: &mut String) -> String {
    let quick = bench.quick;
    let conns = 8;
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
        bench.ensure_mode(order[0]);
        let warm_secs = Duration::from_secs(if quick { 2 } else { 5 });
        let ns = bench
            .cluster
            .namespace(&format!("bench-warm-{section}"), &[])
            .name
            .clone();
        let (ok, _, _) = bench
            .rt
            .block_on(create_jobsets(&bench.api, &ns, conns, warm_secs, shape));
        eprintln!(
            "apiserver: warm-up {} {}x{}: {:.1} creates/s (discarded)",
            order[0].label(),
            shape.rjobs,
            shape.containers,
            ok as f64 / warm_secs.as_secs_f64()
        );
        delete_namespace(&bench.cluster, &ns);
        let mut runs = Vec::new();
        for &mode in order {
            run_no += 1;
            bench.ensure_mode(mode);
            let ns = bench
                .cluster
                .namespace(&format!("bench-js-{run_no}"), &[])
                .name
                .clone();
            let load = loadavg_1();
            let before = bench.rt.block_on(bench.api.metrics());
            let (ok, errors, hist) = bench
                .rt
                .block_on(create_jobsets(&bench.api, &ns, conns, secs, shape));
            let after = bench.rt.block_on(bench.api.metrics());
            if mode == Mode::Policy && families_seen.is_empty() {
                families_seen = admission_families(&after);
            }
            let applied = bench
                .rt
                .block_on(bench.api.get_jobset(&ns, "js-0-0"))
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
                admission: Admission::measure(&before, &after, &bench.policies, ok as f64),
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
            delete_namespace(&bench.cluster, &ns);
        }
        report_creates(out, shape, secs, conns, run_no + 1 - runs.len(), &runs);
    }
    families_seen
}

/// Section 2: one client, one create at a time: the cost of each engine without queueing for
/// the CPU.
fn sequential_creates(bench: &mut Bench, out: &mut String) {
    let quick = bench.quick;
    let seq = if quick { 10 } else { 40 };
    let _ = writeln!(
        out,
        "### One client, {seq} sequential creates per mode and shape (order none / webhook / \
         policy)\n"
    );
    out.push_str("| admission of ours | shape | client p50 / max ms | apiserver POST jobsets mean ms | our webhook: mean ms (calls per JobSet) | mutating phase | MAP plugin | MAW plugin | validating phase | VAP plugin | MAP check: mean ms (evaluations per JobSet) |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    let ns = bench.cluster.namespace("bench-seq", &[]).name.clone();
    for mode in [Mode::None, Mode::Ours, Mode::Policy] {
        bench.switch_mode(mode);
        for shape in [SMALL, LARGE] {
            let before = bench.rt.block_on(bench.api.metrics());
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
            for k in 0..seq {
                let name = format!(
                    "seq-{}-{}x{}-{k}",
                    mode.label(),
                    shape.rjobs,
                    shape.containers
                );
                let t = Instant::now();
                bench
                    .rt
                    .block_on(bench.api.create_jobset(&ns, &create_body(&name, shape)))
                    .unwrap_or_else(|e| panic!("creating {name}: {e}"));
                let _ = hist.record(t.elapsed().as_micros() as u64);
            }
            let after = bench.rt.block_on(bench.api.metrics());
            let a = Admission::measure(&before, &after, &bench.policies, seq as f64);
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
    delete_namespace(&bench.cluster, &ns);
    out.push('\n');
}

/// Section 3: pods created by the controllers, with and without our webhook.
fn pod_creates(bench: &mut Bench, out: &mut String) {
    let quick = bench.quick;
    // Pods.
    bench.switch_mode(Mode::None);
    let (jobsets, per) = if quick { (4, 50) } else { (20, 50) };
    let _ = writeln!(
        out,
        "### Pods: {jobsets} JobSets x 1 Job x {per} pods, created at once\n"
    );
    out.push_str("| webhook of ours | pods | seconds to all pods | pods/s | apiserver POST pods: mean / p50 / p99 ms (count) | admission webhooks called on pods, mean ms (calls) |\n|---|---|---|---|---|---|\n");
    for (i, ours) in [false, true].into_iter().enumerate() {
        bench.switch_mode(if ours { Mode::Ours } else { Mode::None });
        let ns = bench
            .cluster
            .namespace(&format!("bench-pods-{i}"), &[])
            .name
            .clone();
        let before = bench.rt.block_on(bench.api.metrics());
        let t0 = Instant::now();
        for j in 0..jobsets {
            let js = pods_jobset(&format!("pods-{j}"), per);
            bench
                .rt
                .block_on(bench.api.create_jobset(&ns, &js))
                .unwrap_or_else(|e| panic!("creating {j}: {e}"));
        }
        let want = jobsets * per;
        let deadline = Duration::from_secs(if quick { 90 } else { 180 });
        let mut have = 0;
        while t0.elapsed() < deadline {
            have = bench.rt.block_on(bench.api.count_pods(&ns));
            if have >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let took = t0.elapsed().as_secs_f64();
        let after = bench.rt.block_on(bench.api.metrics());
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
        delete_namespace(&bench.cluster, &ns);
    }
}
