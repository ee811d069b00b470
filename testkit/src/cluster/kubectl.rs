//! kubectl against a cluster, what the tests read through it, and an HTTPS client for the
//! benches that call the API server directly.

use std::fs;
use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::wait_for;

use super::*;

/// The bearer token of the cluster's `system:masters` user (the kubeconfig's).
pub const ADMIN_TOKEN: &str = "admin-token";

impl Cluster {
    /// An HTTPS client that trusts this API server's certificate (30 s timeout), and the
    /// API server's base URL. Requests authenticate with [`ADMIN_TOKEN`].
    pub fn api_client(&self) -> (reqwest::Client, String) {
        let ca = fs::read(self.dir.join("apiserver-certs/apiserver.crt"))
            .expect("the API server's certificate");
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA PEM"))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        (http, format!("https://127.0.0.1:{}", self.api_port))
    }

    /// Runs the cluster's kubectl with this cluster's kubeconfig (and a per-cluster discovery
    /// cache, a 30 s request timeout); `stdin` is written to its standard input.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir.join("kube-cache").display()
            ))
            .arg("--request-timeout=30s")
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting kubectl {}: {e}", args.join(" ")));
        let writer = stdin.map(|text| {
            let mut pipe = child.stdin.take().expect("kubectl's stdin pipe");
            let text = text.to_owned();
            std::thread::spawn(move || {
                let _ = pipe.write_all(text.as_bytes());
            })
        });
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for kubectl {}: {e}", args.join(" ")));
        if let Some(w) = writer {
            let _ = w.join();
        }
        out
    }

    /// A server-side dry-run create of `object` in `namespace`: what the API server would
    /// store (`Null` when it refuses) and kubectl's stderr (the refusal, warnings).
    pub fn dry_run_create(&self, namespace: &str, object: &Value) -> (Value, String) {
        let out = self.kubectl(
            &[
                "create",
                "--dry-run=server",
                "-n",
                namespace,
                "-f",
                "-",
                "-o",
                "json",
            ],
            Some(&object.to_string()),
        );
        (
            serde_json::from_slice(&out.stdout).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// [`Cluster::kubectl`] that must succeed; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl get ARGS -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl_ok(&all, None);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("kubectl {} printed no JSON ({e}): {out}", all.join(" ")))
    }

    /// The JobSet as the API server stored it.
    pub fn jobset(&self, namespace: &str, name: &str) -> Value {
        self.get_json(&["jobset", name, "-n", namespace])
    }

    /// Objects of `kind` belonging to the JobSet `name` (by JobSet's label).
    pub fn children(&self, kind: &str, namespace: &str, jobset: &str) -> Vec<Value> {
        let selector = format!("jobset.sigs.k8s.io/jobset-name={jobset}");
        let list = self.get_json(&[kind, "-n", namespace, "-l", &selector]);
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until the JobSet `name` has `count` objects of `kind` (`jobs`, `pods`).
    pub fn wait_children(
        &self,
        kind: &str,
        namespace: &str,
        jobset: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<Value> {
        wait_for(
            &format!("{count} {kind} of JobSet {namespace}/{jobset}"),
            timeout,
            || {
                let items = self.children(kind, namespace, jobset);
                if items.len() >= count {
                    Ok(items)
                } else {
                    Err(format!("{} so far", items.len()))
                }
            },
        )
    }

    /// Events in `namespace` about the object `name`, as (reason, message).
    pub fn events(&self, namespace: &str, name: &str) -> Vec<(String, String)> {
        let list = self.get_json(&["events", "-n", namespace]);
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["involvedObject"]["name"] == name)
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_owned(),
                    e["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}
