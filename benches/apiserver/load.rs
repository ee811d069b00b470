//! The JobSets created and the clients that create them through the API server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use testkit::cluster::{ADMIN_TOKEN as TOKEN, Cluster};

use crate::metrics::Metrics;

/// The JobSets created: `rjobs` replicated jobs of one Job with `containers` containers.
#[derive(Clone, Copy)]
pub struct Shape {
    pub rjobs: usize,
    pub containers: usize,
}

pub const SMALL: Shape = Shape {
    rjobs: 1,
    containers: 1,
};
pub const LARGE: Shape = Shape {
    rjobs: 8,
    containers: 3,
};

/// An opted-in, suspended JobSet of `shape` (one pod per Job when resumed).
pub fn create_body(name: &str, shape: Shape) -> Value {
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
pub fn pods_jobset(name: &str, pods: usize) -> Value {
    let mut js = create_body(name, SMALL);
    js["spec"]["suspend"] = json!(false);
    js["spec"]["replicatedJobs"][0]["template"]["spec"]["parallelism"] = json!(pods);
    js["spec"]["replicatedJobs"][0]["template"]["spec"]["completions"] = json!(pods);
    js
}

pub async fn create_jobsets(
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
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    pub fn new(cluster: &Cluster) -> Self {
        let (http, base) = cluster.api_client();
        Self { http, base }
    }

    pub async fn create_jobset(&self, ns: &str, body: &Value) -> Result<(), String> {
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

    pub async fn get_jobset(&self, ns: &str, name: &str) -> Option<Value> {
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

    pub async fn count_pods(&self, ns: &str) -> usize {
        let url = format!("{}/api/v1/namespaces/{ns}/pods?limit=1", self.base);
        let Ok(resp) = self.http.get(url).bearer_auth(TOKEN).send().await else {
            return 0;
        };
        let v: Value = resp.json().await.unwrap_or_default();
        let first = v["items"].as_array().map_or(0, Vec::len);
        first + v["metadata"]["remainingItemCount"].as_u64().unwrap_or(0) as usize
    }

    pub async fn metrics(&self) -> Metrics {
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
