//! Restart times on a real node (docs/BENCHMARKS.md section 4): a JobSet of N one-pod workers on one node
//! (the e2e harness's control plane + kube-scheduler + kubelet/containerd/runc, see
//! testkit/src/node/); worker 0 fails with exit code 42; how long until every worker runs
//! again, and how many API writes that took, for
//! - recreate: no rules (what JobSet does without the webhook: the Job fails, JobSet restarts
//!   and recreates every pod);
//! - Restart: the webhook's rule `Restart` on 42 (the container restarts in place);
//! - RestartAllContainers: the webhook's rule `RestartAllContainers` on 42 (the pod's
//!   containers restart in place).
//!
//! Run: `cargo bench --features e2e --bench restart` (about 15 minutes on 2 cores;
//! `-- --quick`: N = 4 only, 3 failures). Without `--bench` it does nothing.
//!
//! Method. Each worker runs `workload -trigger /trig` (a hostPath): the bench fails worker 0
//! by creating `/trig/w-0` (the workload removes it and exits 42 within 20 ms), notes the
//! time, and polls the pods every 100 ms until every worker's container is running again:
//! for recreate, N new pods (new UIDs) Running with their container running; in place, the
//! failed container's restartCount went up and every container of every worker runs. Then
//! the next failure (1..5 in a row: each waits out the kubelet's CrashLoopBackOff, which
//! grows with every restart of the same container). API writes: the deltas of
//! kube-apiserver's `apiserver_request_total` for POST/PUT/PATCH/DELETE over the failure
//! (pods created and deleted, all pod writes including the kubelet's status patches, and
//! writes to every resource). The same runs again on a kubelet with
//! `crashLoopBackOff.maxContainerRestartPeriod` lowered (gate `KubeletCrashLoopBackOffMax`).
//!
//! Output: the table for docs/BENCHMARKS.md on stdout, and the rows as
//! `docs/restart-times.csv` with their plot `docs/restart-times.svg` (testkit's `plot`; shown
//! in the README). A `--quick` run writes those two under `target/restart-bench/` instead, so
//! that it does not replace the published measurements.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use testkit::cluster::{ADMIN_TOKEN as TOKEN, Cluster, ClusterOptions};
use testkit::node::{
    Node, NodeOptions, node_jobset, node_pod_spec, pod_summary, workload_container,
};
use testkit::plot;
use testkit::webhook::{Webhook, WebhookOptions};

/// Longest wait for the workers to run (first start of 16 pods, or after a failure with a
/// 160 s back-off).
const RUNNING: Duration = Duration::from_secs(330);
/// The whole bench stops starting new scenarios after this.
const BUDGET: Duration = Duration::from_secs(40 * 60);
const POLL: Duration = Duration::from_millis(100);
/// The lowered CrashLoopBackOff ceiling of the second node.
const LOWERED_MAX: &str = "1s";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Recreate,
    Restart,
    RestartAll,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Recreate => "recreate (no webhook)",
            Mode::Restart => "in place, Restart",
            Mode::RestartAll => "in place, RestartAllContainers",
        }
    }
    /// The `mode` column of the CSV.
    fn csv(self) -> &'static str {
        match self {
            Mode::Recreate => "recreate",
            Mode::Restart => "Restart",
            Mode::RestartAll => "RestartAllContainers",
        }
    }
    fn slug(self) -> &'static str {
        match self {
            Mode::Recreate => "recreate",
            Mode::Restart => "restart",
            Mode::RestartAll => "restart-all",
        }
    }
}

/// One failure's measurement.
struct Sample {
    node: &'static str,
    mode: Mode,
    workers: usize,
    failure: usize,
    seconds: f64,
    writes: Writes,
}

#[derive(Clone, Debug, Default)]
struct Writes {
    pods_created: f64,
    pods_deleted: f64,
    pod_writes: f64,
    all_writes: f64,
}

fn main() {
    let Some(quick) = testkit::control_plane_bench("restart") else {
        return;
    };
    let started = Instant::now();
    let cluster = Cluster::start(ClusterOptions {
        name: "restart-bench",
        scheduler: true,
        ..ClusterOptions::default()
    });
    let hook = Webhook::start_registered(&cluster, WebhookOptions::targets("jobsets,pods"));
    let api = Api::new(&cluster);
    let mut samples: Vec<Sample> = Vec::new();
    let sizes: &[usize] = if quick { &[4] } else { &[4, 16] };
    let failures = if quick { 3 } else { 5 };

    for (label, max) in [
        ("default back-off", None),
        ("maxContainerRestartPeriod 1s", Some(LOWERED_MAX)),
    ] {
        let node = Node::start(
            &cluster,
            NodeOptions {
                name: if max.is_some() { "lowered" } else { "default" },
                max_container_restart_period: max,
                ..NodeOptions::default()
            },
        );
        let label: &'static str = label;
        for &n in sizes {
            for mode in [Mode::Recreate, Mode::Restart, Mode::RestartAll] {
                // The kubelet's back-off does not apply to new pods: recreate once per size.
                if max.is_some() && mode == Mode::Recreate {
                    continue;
                }
                // 16 workers: one failure per mode (the back-off growth is the same per
                // container, and 16 pods make every recreate slower to wait for).
                let f = if n > 4 { 1 } else { failures };
                if started.elapsed() > BUDGET {
                    eprintln!("[bench] time budget spent; skipping {} N={n}", mode.label());
                    continue;
                }
                samples.extend(scenario(&cluster, &api, &node, label, mode, n, f));
            }
        }
        let name = node.name.clone();
        drop(node);
        cluster.kubectl_ok(&["delete", "node", &name, "--wait=false"], None);
    }
    drop(hook);
    println!("{}", report(&samples));
    write_plot(&samples, quick);
    eprintln!("[bench] done in {:.0} s", started.elapsed().as_secs_f64());
}

/// The rows as CSV and their plot: under docs/ after a full run, under target/ after a quick
/// one (docs/testing.md, "Benchmarks and plots").
fn write_plot(samples: &[Sample], quick: bool) {
    let rows: Vec<plot::Row> = samples
        .iter()
        .map(|s| plot::Row {
            kubelet: if s.node == "default back-off" {
                plot::DEFAULT_KUBELET.to_owned()
            } else {
                format!("maxContainerRestartPeriod={LOWERED_MAX}")
            },
            mode: s.mode.csv().to_owned(),
            workers: s.workers as u32,
            failure: s.failure as u32,
            seconds: (s.seconds * 100.0).round() / 100.0,
            pods_created: s.writes.pods_created,
            pods_deleted: s.writes.pods_deleted,
            pod_writes: s.writes.pod_writes,
            all_writes: s.writes.all_writes,
        })
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = if quick {
        root.join("target/restart-bench")
    } else {
        root.join("docs")
    };
    let comment = format!(
        "Restart times on one real node: benches/restart.rs, method in docs/BENCHMARKS.md section 4.\n\
         Written by `cargo bench --features e2e --bench restart`{}, which rewrites this file and\n\
         restart-times.svg when run; publish the rows (the table it prints) in docs/BENCHMARKS.md.\n{}",
        if quick { " -- --quick" } else { "" },
        plot::COLUMN_NOTES
    );
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("restart-times.csv"), plot::to_csv(&comment, &rows)))
        .and_then(|()| std::fs::write(dir.join("restart-times.svg"), plot::svg(&rows)));
    // The table is printed already; a failed write still fails the run.
    written.unwrap_or_else(|e| panic!("writing the CSV and plot into {}: {e}", dir.display()));
    eprintln!(
        "[bench] wrote restart-times.csv and restart-times.svg in {}",
        dir.display()
    );
}

/// Creates the JobSet, waits for every worker to run, then fails worker 0 `failures` times
/// in a row, measuring each.
fn scenario(
    cluster: &Cluster,
    api: &Api,
    node: &Node,
    node_label: &'static str,
    mode: Mode,
    workers: usize,
    failures: usize,
) -> Vec<Sample> {
    let ns = format!("{}-{workers}-{}", mode.slug(), node.opts.name);
    cluster.ensure_namespace(&ns);
    wait_default_sa(cluster, &ns);
    let trig = node.host_dir(&format!("trig-{ns}"));
    let mut worker = workload_container(
        "worker",
        &[
            "-name",
            "w-$(JOB_INDEX)",
            "-trigger",
            "/trig",
            "-run",
            "forever",
        ],
    );
    worker["volumeMounts"] = json!([{"name": "trig", "mountPath": "/trig"}]);
    let mut pod = node_pod_spec(json!([worker]));
    pod["restartPolicy"] = json!("Never");
    pod["volumes"] = json!([{"name": "trig", "hostPath": {"path": trig.display().to_string(), "type": "Directory"}}]);
    let annotations: Vec<(&str, &str)> = match mode {
        Mode::Recreate => vec![],
        Mode::Restart | Mode::RestartAll => vec![
            ("restart.jobset.dev/in-place", "enabled"),
            (
                "restart.jobset.dev/action",
                if mode == Mode::Restart {
                    "Restart"
                } else {
                    "RestartAllContainers"
                },
            ),
            ("restart.jobset.dev/on-exit-codes", "42"),
        ],
    };
    let js = node_jobset("bench", workers as u32, 10, &annotations, pod);
    cluster.kubectl_ok(&["create", "-n", &ns, "-f", "-"], Some(&js.to_string()));
    let start = Instant::now();
    let mut pods = wait_running(api, &ns, workers, |_| true);
    eprintln!(
        "[bench] {node_label}, {}, N={workers}: all running {:.1} s after create",
        mode.label(),
        start.elapsed().as_secs_f64()
    );
    let mut out = Vec::new();
    for failure in 1..=failures {
        let before_uids: Vec<String> = pods.iter().map(uid).collect();
        let before_restarts = restart_count(&pods, "0");
        let m0 = api.write_counts();
        std::fs::write(trig.join("w-0"), b"").expect("writing the trigger file");
        let t0 = Instant::now();
        pods = wait_running(api, &ns, workers, |pods| match mode {
            Mode::Recreate => pods.iter().all(|p| !before_uids.contains(&uid(p))),
            _ => restart_count(pods, "0") > before_restarts,
        });
        let seconds = t0.elapsed().as_secs_f64();
        // Let the status writes that belong to this recovery land before reading counters.
        std::thread::sleep(Duration::from_secs(2));
        let writes = api.write_counts().minus(&m0);
        eprintln!(
            "[bench] {node_label}, {}, N={workers}, failure {failure}: {seconds:.2} s, pods +{}/-{}, pod writes {}, all writes {}",
            mode.label(),
            writes.pods_created,
            writes.pods_deleted,
            writes.pod_writes,
            writes.all_writes
        );
        out.push(Sample {
            node: node_label,
            mode,
            workers,
            failure,
            seconds,
            writes,
        });
    }
    cluster.kubectl_ok(
        &["delete", "namespace", &ns, "--wait=true", "--timeout=120s"],
        None,
    );
    out
}

fn wait_default_sa(cluster: &Cluster, ns: &str) {
    testkit::util::wait_for(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || {
            let out = cluster.kubectl(&["get", "serviceaccount", "default", "-n", ns], None);
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        },
    );
}

fn uid(pod: &Value) -> String {
    pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn job_index(pod: &Value) -> &str {
    pod["metadata"]["labels"]["jobset.sigs.k8s.io/job-index"]
        .as_str()
        .unwrap_or("")
}

fn restart_count(pods: &[Value], index: &str) -> u64 {
    pods.iter()
        .filter(|p| job_index(p) == index)
        .filter_map(|p| p["status"]["containerStatuses"][0]["restartCount"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Polls until exactly `workers` pods are not terminating, all Running with every container
/// running, and `done(pods)` holds; returns those pods.
fn wait_running(
    api: &Api,
    ns: &str,
    workers: usize,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < RUNNING {
        let list = api.get(&format!("/api/v1/namespaces/{ns}/pods"));
        let pods: Vec<Value> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| p["status"]["phase"] != "Failed" && p["status"]["phase"] != "Succeeded")
            .cloned()
            .collect();
        let running = pods.len() == workers
            && pods.iter().all(|p| {
                p["status"]["phase"] == "Running"
                    && p["status"]["containerStatuses"]
                        .as_array()
                        .is_some_and(|s| {
                            !s.is_empty() && s.iter().all(|c| c["state"]["running"].is_object())
                        })
            });
        if running && done(&pods) {
            return pods;
        }
        last = pod_summary(&pods);
        std::thread::sleep(POLL);
    }
    panic!("timed out after {RUNNING:?} waiting for {workers} running workers in {ns}:{last}");
}

/// The table for docs/BENCHMARKS.md.
fn report(samples: &[Sample]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| kubelet | mode | N | failure | seconds until every worker runs | POST / DELETE pods | all pod writes | all API writes |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for s in samples {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} | {} / {} | {} | {} |",
            s.node,
            s.mode.label(),
            s.workers,
            s.failure,
            s.seconds,
            s.writes.pods_created,
            s.writes.pods_deleted,
            s.writes.pod_writes,
            s.writes.all_writes
        );
    }
    out
}

/// A small HTTPS client for the cluster's API server (admin token), blocking.
struct Api {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(cluster: &Cluster) -> Self {
        let (http, base) = cluster.api_client();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Self { rt, http, base }
    }

    fn text(&self, path: &str) -> String {
        self.rt.block_on(async {
            let resp = self
                .http
                .get(format!("{}{path}", self.base))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}"));
            let status = resp.status();
            let text = resp
                .text()
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}"));
            assert!(status.is_success(), "GET {path}: HTTP {status}: {text}");
            text
        })
    }

    fn get(&self, path: &str) -> Value {
        serde_json::from_str(&self.text(path)).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Cumulative write counts from `apiserver_request_total`.
    fn write_counts(&self) -> Writes {
        let text = self.text("/metrics");
        let mut w = Writes::default();
        let mut by: BTreeMap<(String, String, String), f64> = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| l.starts_with("apiserver_request_total{"))
        {
            let Some((labels, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let label = |k: &str| {
                labels
                    .split(&format!("{k}=\""))
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("")
                    .to_owned()
            };
            *by.entry((label("verb"), label("resource"), label("subresource")))
                .or_default() += value;
        }
        for ((verb, resource, subresource), v) in by {
            if !matches!(
                verb.as_str(),
                "POST" | "PUT" | "PATCH" | "DELETE" | "DELETECOLLECTION"
            ) {
                continue;
            }
            w.all_writes += v;
            if resource == "pods" {
                w.pod_writes += v;
                if subresource.is_empty() && verb == "POST" {
                    w.pods_created += v;
                }
                if subresource.is_empty() && verb == "DELETE" {
                    w.pods_deleted += v;
                }
            }
        }
        w
    }
}

impl Writes {
    fn minus(&self, before: &Writes) -> Writes {
        Writes {
            pods_created: self.pods_created - before.pods_created,
            pods_deleted: self.pods_deleted - before.pods_deleted,
            pod_writes: self.pod_writes - before.pod_writes,
            all_writes: self.all_writes - before.all_writes,
        }
    }
}
