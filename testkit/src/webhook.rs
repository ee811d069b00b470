//! Our webhook on a test cluster: `certs` writes a CA and a serving certificate, `serve`
//! listens on free loopback ports (read back from its JSON "listening" log line), and the
//! MutatingWebhookConfiguration the product ships (manifests/base/) is registered with each
//! `clientConfig` rewritten to `url: https://127.0.0.1:<port><path>` + `caBundle`. Everything
//! else in the configuration stays as shipped.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::{Cluster, Proc, Tracker, stop_all};
use crate::util::{at, http_get, load_yaml, repo_root, wait_for};

/// The configuration the product ships.
pub const SHIPPED_CONFIGURATION: &str = "manifests/base/mutatingwebhookconfiguration.yaml";
/// Its name (the tests check the file says so).
pub const SHIPPED_NAME: &str = "00-jobset-restart-webhook";
/// The JSON patch that appends the pod webhook (registered only with the pod target).
pub const POD_WEBHOOK_PATCH: &str = "manifests/components/pod-target/pod-webhook.yaml";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the API server may take to start calling a newly registered webhook.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Default)]
pub struct WebhookOptions {
    /// `--targets` (e.g. `jobsets,pods`); `serve`'s default when `None`.
    pub targets: Option<String>,
    /// `--config` file.
    pub config: Option<PathBuf>,
}

impl WebhookOptions {
    /// `--targets targets` (e.g. `jobsets,pods`), without a config file.
    pub fn targets(targets: &str) -> Self {
        Self {
            targets: Some(targets.to_owned()),
            config: None,
        }
    }
}

pub struct Webhook {
    proc: Proc,
    tracker: Arc<Tracker>,
    pub dir: PathBuf,
    /// The HTTPS webhook port.
    pub addr: SocketAddr,
    /// The plain-HTTP admin port (/metrics, /readyz).
    pub admin: SocketAddr,
    /// Base64 PEM of the CA that signed the serving certificate (from `certs`' stdout).
    pub ca_bundle: String,
    /// `serve` runs with the pod target: [`Webhook::configuration`] registers the pod
    /// webhook too, as the shipped pod-target component does.
    pub pod_target: bool,
}

/// Whether `opts` turn the pod target on (`--targets`, else the config file's `targets`).
fn pod_target(opts: &WebhookOptions) -> bool {
    if let Some(t) = &opts.targets {
        return t.split(',').any(|t| t.trim() == "pods");
    }
    let Some(config) = &opts.config else {
        return false;
    };
    let docs = load_yaml(config);
    let targets = docs.first().map(|d| &d["targets"]);
    match targets {
        Some(Value::String(s)) => s.split(',').any(|t| t.trim() == "pods"),
        Some(Value::Array(a)) => a.iter().any(|t| t == "pods"),
        _ => false,
    }
}

/// The pod webhook as the pod-target component appends it.
pub fn shipped_pod_webhook() -> Value {
    let path = repo_root().join(POD_WEBHOOK_PATCH);
    let docs = load_yaml(&path);
    let ops = docs
        .first()
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{POD_WEBHOOK_PATCH} holds a JSON patch"));
    let op = ops
        .iter()
        .find(|o| o["path"] == "/webhooks/-")
        .unwrap_or_else(|| panic!("{POD_WEBHOOK_PATCH} appends no webhook"));
    op["value"].clone()
}

impl Webhook {
    /// Writes certificates with `certs`, starts `serve` and waits for its `/readyz`.
    /// `serve` gets the cluster's kubeconfig in `KUBECONFIG`, so that versions which read
    /// namespace labels and parent JobSets from the cluster can.
    pub fn start(cluster: &Cluster, opts: WebhookOptions) -> Webhook {
        Self::start_with_args(cluster, opts, &[])
    }

    /// [`Webhook::start`] with extra `serve` flags (e.g. `--client-ca FILE`).
    pub fn start_with_args(
        cluster: &Cluster,
        opts: WebhookOptions,
        extra_args: &[String],
    ) -> Webhook {
        let exe = crate::webhook_bin();
        let n = fs::read_dir(&cluster.dir).map_or(0, |d| d.count());
        let dir = cluster.dir.join(format!("webhook-{n}"));
        fs::create_dir_all(&dir).expect("creating the webhook's folder");
        let certs = dir.join("certs");
        let out = Command::new(exe)
            .arg("certs")
            .arg("--out-dir")
            .arg(&certs)
            .stdin(Stdio::null())
            .output()
            .expect("running jobset-restart-webhook certs");
        assert!(
            out.status.success(),
            "jobset-restart-webhook certs failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let ca_bundle = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            !ca_bundle.is_empty(),
            "`certs` printed no CA bundle on stdout"
        );

        let log = dir.join("serve.log");
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .arg("--tls-cert")
            .arg(certs.join("tls.crt"))
            .arg("--tls-key")
            .arg(certs.join("tls.key"))
            .args(["--log-format", "json"])
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("RUST_LOG", "info");
        if let Some(targets) = &opts.targets {
            cmd.args(["--targets", targets]);
        }
        if let Some(config) = &opts.config {
            cmd.arg("--config").arg(config);
        }
        cmd.args(extra_args);
        let mut proc = Proc::spawn("jobset-restart-webhook", cmd, log.clone(), &cluster.tracker);
        cluster.add_log(
            &format!("jobset-restart-webhook ({})", dir.display()),
            log.clone(),
        );
        let (addr, admin) = wait_for("serve's \"listening\" log line", START_TIMEOUT, || {
            proc.assert_running();
            let text = fs::read_to_string(&log).unwrap_or_default();
            let listening = json_lines(&text)
                .into_iter()
                .find(|l| l["message"] == "listening")
                .ok_or("no listening line yet")?;
            let parse = |field: &str| -> Result<SocketAddr, String> {
                listening[field]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| {
                        format!("the listening line has no address {field}: {listening}")
                    })
            };
            Ok((parse("tls_addr")?, parse("admin_addr")?))
        });
        wait_for("serve's /readyz", START_TIMEOUT, || {
            proc.assert_running();
            match http_get(admin, "/readyz")? {
                (200, _) => Ok(()),
                (code, body) => Err(format!("HTTP {code}: {body}")),
            }
        });
        Webhook {
            proc,
            tracker: cluster.tracker.clone(),
            dir,
            addr,
            admin,
            ca_bundle,
            pod_target: pod_target(&opts),
        }
    }

    /// The shipped configuration with loopback `url` client configs, optionally renamed; with
    /// the pod webhook when `serve` runs with the pod target (as the shipped pod-target
    /// component registers it).
    pub fn configuration(&self, name: Option<&str>) -> Value {
        let path = repo_root().join(SHIPPED_CONFIGURATION);
        let mut docs = load_yaml(&path);
        assert_eq!(docs.len(), 1, "{SHIPPED_CONFIGURATION} holds one document");
        let mut config = docs.remove(0);
        assert_eq!(config["kind"], "MutatingWebhookConfiguration");
        assert_eq!(config["metadata"]["name"], SHIPPED_NAME);
        if let Some(name) = name {
            config["metadata"]["name"] = json!(name);
        }
        if self.pod_target {
            config["webhooks"]
                .as_array_mut()
                .expect("the configuration has webhooks")
                .push(shipped_pod_webhook());
        }
        self.point_at_me(&mut config);
        config
    }

    /// Rewrites every webhook's `clientConfig` of the configuration `config` to this
    /// webhook's loopback `url` (keeping each service path) and CA.
    pub fn point_at_me(&self, config: &mut Value) {
        self.point_at(config, self.addr);
    }

    /// [`Webhook::point_at_me`], but to `addr` (e.g. a closed port: a webhook that is down).
    pub fn point_at(&self, config: &mut Value, addr: SocketAddr) {
        let webhooks = config["webhooks"]
            .as_array_mut()
            .expect("the configuration has webhooks");
        for w in webhooks {
            let path = match at(&w["clientConfig"], "/service/path").as_str() {
                Some(p) => p.to_owned(),
                None => {
                    let url = w["clientConfig"]["url"]
                        .as_str()
                        .unwrap_or_else(|| panic!("webhook {} has no path", w["name"]));
                    let rest = url.split_once("://").map_or(url, |(_, r)| r);
                    rest.find('/').map_or("/", |i| &rest[i..]).to_owned()
                }
            };
            w["clientConfig"] = json!({
                "url": format!("https://{addr}{path}"),
                "caBundle": self.ca_bundle,
            });
        }
    }

    /// [`Webhook::start`], then [`Webhook::register`] of the shipped configuration as is,
    /// waiting in `default`: what most clusters do before their first create.
    pub fn start_registered(cluster: &Cluster, opts: WebhookOptions) -> Webhook {
        let webhook = Self::start(cluster, opts);
        webhook.register(cluster, None, "default");
        webhook
    }

    /// Registers the shipped configuration (renamed to `name` if given) and waits until the
    /// API server calls the webhook for an opted-in JobSet (server-side dry run in
    /// `namespace`).
    pub fn register(&self, cluster: &Cluster, name: Option<&str>, namespace: &str) {
        let config = self.configuration(name);
        cluster.kubectl_ok(&["apply", "-f", "-"], Some(&config.to_string()));
        wait_for(
            "the API server to call our webhook",
            REGISTRATION_TIMEOUT,
            || {
                let stored = dry_run_probe(cluster, namespace);
                if at(&stored, "/metadata/annotations/restart.jobset.dev~1applied").is_string() {
                    Ok(())
                } else {
                    Err("the dry-run JobSet has no applied annotation yet".to_owned())
                }
            },
        );
    }

    /// `serve`'s log.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.proc.log).unwrap_or_default()
    }

    /// The JSON log lines of answered reviews (`message == "review"`) in `namespace`, of
    /// any kind (dry runs included). Pods are created with `generateName`, so their `name`
    /// field is empty.
    pub fn reviews_in(&self, namespace: &str) -> Vec<Value> {
        json_lines(&self.log())
            .into_iter()
            .filter(|l| l["message"] == "review" && l["namespace"] == namespace)
            .collect()
    }

    /// [`Webhook::reviews_in`] about the object `name`.
    pub fn reviews(&self, namespace: &str, name: &str) -> Vec<Value> {
        self.reviews_in(namespace)
            .into_iter()
            .filter(|l| l["name"] == name)
            .collect()
    }

    /// The Prometheus exposition from the admin port.
    pub fn metrics(&self) -> String {
        match http_get(self.admin, "/metrics") {
            Ok((200, body)) => body,
            other => panic!("GET /metrics on {}: {other:?}", self.admin),
        }
    }

    /// The value of the first sample whose line starts with `series` (name and labels).
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        // On failure the cluster prints this log with its own (see `Cluster::add_log`).
        stop_all(&mut [&mut self.proc], &self.tracker);
    }
}

/// A server-side dry-run create of an opted-in JobSet; returns what the API server answered.
pub fn dry_run_probe(cluster: &Cluster, namespace: &str) -> Value {
    let probe = json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
        "metadata": {"name": "probe-restart-webhook", "annotations": {"restart.jobset.dev/in-place": "enabled"}},
        "spec": {"replicatedJobs": [{"name": "r", "replicas": 1, "template": {"spec": {
            "template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}}]}
    });
    cluster.dry_run_create(namespace, &probe).0
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}
