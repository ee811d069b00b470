//! JobSet and pod creation through a real kube-apiserver, with and without our webhook
//! (issue 7, part 3). Run: `cargo bench --features e2e --bench apiserver` (about 6 minutes;
//! `-- --quick` about 3). Without `--bench` (as `cargo test --all-targets --features e2e`
//! would run it) it does nothing.
//!
//! The control plane is the e2e harness's (tests/e2e/cluster.rs and webhook.rs, shared as
//! modules): etcd, kube-apiserver, kube-controller-manager, the JobSet v0.12.0 controller with
//! its own webhooks, and our release-built `serve --targets jobsets,pods` with the cluster's
//! kubeconfig (cluster-aware: it watches JobSets, so pods find their parent), registered with
//! the shipped MutatingWebhookConfiguration. Everything shares the machine's cores: what is
//! measured is the whole system, and the ratios between modes are the result.
//!
//! 1. JobSet creates: `CONNS` clients create opted-in, suspended JobSets (no Jobs run, no
//!    pods) back to back for `SECS` seconds, in the order none / ours / ours / none (ABBA, so
//!    that a drift of the background load cancels). Per run: creates/s, the client's latency
//!    percentiles, and from kube-apiserver's /metrics (deltas) `apiserver_request_duration_seconds`
//!    for `POST jobsets` and `apiserver_admission_webhook_admission_duration_seconds` per webhook.
//! 2. Pods: 20 JobSets of one Job with 50 pods each (1,000 pods), created at once; the time
//!    until the controllers have created every pod, and the same metrics for `POST pods`,
//!    with no webhook of ours and with ours (pod target on).

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
    let secs = Duration::from_secs(if quick { 6 } else { 15 });
    let conns = 8;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Through kube-apiserver ({} mode; load average before {load_before})\n",
        if quick { "quick" } else { "full" }
    );
    let _ = writeln!(
        out,
        "### JobSet creates ({conns} clients, {} s per run, opted-in suspended JobSets, order none/ours/ours/none)\n",
        secs.as_secs()
    );
    out.push_str("| run | webhook of ours | creates/s | client p50 / p99 ms | apiserver POST jobsets: mean / p50 / p99 ms (count) | admission webhooks called, mean ms (calls) |\n|---|---|---|---|---|---|\n");
    let order: &[bool] = if quick {
        &[false, true]
    } else {
        &[false, true, true, false]
    };
    let mut rates: BTreeMap<bool, Vec<f64>> = BTreeMap::new();
    for (i, &ours) in order.iter().enumerate() {
        set_registered(&cluster, &hook, ours);
        let ns = cluster
            .namespace(&format!("bench-js-{i}"), &[])
            .name
            .clone();
        let before = rt.block_on(api.metrics());
        let (ok, errors, hist) = rt.block_on(create_jobsets(&api, &ns, conns, secs));
        let after = rt.block_on(api.metrics());
        let rate = ok as f64 / secs.as_secs_f64();
        rates.entry(ours).or_default().push(rate);
        let req = after
            .request_hist("jobsets", "POST")
            .delta(&before.request_hist("jobsets", "POST"));
        let _ = writeln!(
            out,
            "| {} | {} | {rate:.1}{} | {:.1} / {:.1} | {} | {} |",
            i + 1,
            if ours { "registered" } else { "none" },
            if errors > 0 {
                format!(" ({errors} errors)")
            } else {
                String::new()
            },
            hist.value_at_quantile(0.5) as f64 / 1e3,
            hist.value_at_quantile(0.99) as f64 / 1e3,
            req.describe(),
            webhooks_called(&before, &after),
        );
        eprintln!("apiserver: run {} ours={ours}: {rate:.1} creates/s", i + 1);
        delete_namespace(&cluster, &ns);
    }
    let none = median(rates.get(&false).cloned().unwrap_or_default());
    let ours = median(rates.get(&true).cloned().unwrap_or_default());
    let _ = writeln!(
        out,
        "\nCreates/s with our webhook / without: **{:.2}** (medians {ours:.1} / {none:.1}).\n",
        ours / none
    );

    // Pods.
    let (jobsets, per) = if quick { (4, 50) } else { (20, 50) };
    let _ = writeln!(
        out,
        "### Pods: {jobsets} JobSets x 1 Job x {per} pods, created at once\n"
    );
    out.push_str("| webhook of ours | pods | seconds to all pods | pods/s | apiserver POST pods: mean / p50 / p99 ms (count) | admission webhooks called on pods, mean ms (calls) |\n|---|---|---|---|---|---|\n");
    for (i, ours) in [false, true].into_iter().enumerate() {
        set_registered(&cluster, &hook, ours);
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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
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

/// Registers the shipped configuration (pointing at `hook`) or deletes it, and waits until
/// the API server acts accordingly (a server-side dry run is or is not mutated).
fn set_registered(cluster: &Cluster, hook: &Webhook, on: bool) {
    if on {
        hook.register(cluster, None, "default");
        return;
    }
    cluster.kubectl_ok(
        &[
            "delete",
            "mutatingwebhookconfiguration",
            SHIPPED_NAME,
            "--ignore-not-found",
        ],
        None,
    );
    util::wait_for(
        "the API server to stop calling our webhook",
        Duration::from_secs(30),
        || {
            let stored = webhook::dry_run_probe(cluster, "default");
            if stored["metadata"]["name"].is_string()
                && stored
                    .pointer("/metadata/annotations/restart.jobset.dev~1applied")
                    .is_none()
            {
                Ok(())
            } else {
                Err("the dry run is still mutated".to_owned())
            }
        },
    );
}

fn delete_namespace(cluster: &Cluster, ns: &str) {
    cluster.kubectl_ok(&["delete", "namespace", ns, "--wait=false"], None);
    // Bounded: the next run starts after at most 60 s even if the garbage collector is busy.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if !cluster
            .kubectl(&["get", "namespace", ns], None)
            .status
            .success()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("apiserver: namespace {ns} still terminating after 60 s; going on");
}

/// An opted-in, suspended JobSet (one Job of one pod when resumed).
fn create_body(name: &str) -> Value {
    json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": name, "annotations": {"restart.jobset.dev/in-place": "enabled"}},
        "spec": {
            "suspend": true,
            "replicatedJobs": [{
                "name": "workers",
                "replicas": 1,
                "template": {"spec": {
                    "parallelism": 1, "completions": 1, "backoffLimit": 0,
                    "template": {"spec": {"containers": [{
                        "name": "trainer",
                        "image": "busybox:1.36",
                        "command": ["sh", "-c", "exit 0"],
                        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}
                    }]}}
                }}
            }]
        }
    })
}

/// An opted-in JobSet whose one Job runs `pods` pods at once.
fn pods_jobset(name: &str, pods: usize) -> Value {
    let mut js = create_body(name);
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
                    let body = create_body(&format!("js-{c}-{k}"));
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
