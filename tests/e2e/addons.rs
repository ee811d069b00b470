//! Third-party controllers that write JobSets, on an e2e cluster: Kueue (v0.17.0) and
//! Kubeflow Trainer (v2.0.0). Each is built from its Go module by
//! `tests/cluster/build.sh --module NAME` (the modules in tests/cluster/kueue and
//! tests/cluster/trainer, cached in `.cache/NAME/`), its CRDs come from the same module
//! version (`build.sh --print-module-dir`), and it runs against the cluster's API server as
//! one more component of the [`Cluster`] (stopped, logged and watched like the others).
//! Their admission webhooks are registered by loopback `url` with a CA the test generates,
//! like the JobSet controller's in testkit's `cluster`.
//!
//! Two things neither program lets us configure, and what the harness does about them:
//! - Kueue with `internalCertManagement.enable: false` reads its metrics serving certificate
//!   from the fixed path `/etc/kueue/metrics/certs` at startup and exits when it is missing,
//!   even with metrics off (`bindAddress: "0"`). The harness writes a throwaway pair there
//!   when there is none (root is needed; without it the test fails saying so).
//! - Trainer v2.0.0 always runs its certificate rotator (no flag turns it off), which expects
//!   the Secret `kubeflow-system/kubeflow-trainer-webhook-cert` to be mounted at the fixed
//!   path `/tmp/k8s-webhook-server/serving-certs`, and its webhook server has no host flag
//!   (it listens on every interface, on the free port we give it). The harness creates that
//!   Secret with its own CA and a leaf for both the Service name the rotator checks and
//!   127.0.0.1, and writes the same files to that folder; the rotator accepts them as valid
//!   and injects the same CA into the webhook configuration.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::cluster::{Cluster, build_sh};
use crate::util::{free_port, http_get, load_yaml, repo_root, report_time, wait_for};

/// The Go modules whose manifests (CRDs, webhook configurations) the tests install, at the
/// version the binary's module pins (tests/cluster/<folder>/go.mod), so that a version bump
/// there moves the manifests too.
pub const KUEUE_MODULE: &str = "sigs.k8s.io/kueue";
pub const TRAINER_MODULE: &str = "github.com/kubeflow/trainer/v2";
/// Trainer watches PodGroups (coscheduling plugin): their CRD must exist.
pub const SCHEDULER_PLUGINS_MODULE: &str = "sigs.k8s.io/scheduler-plugins";

/// Component names (log files `logs/<name>.log` of the cluster).
pub const KUEUE: &str = "kueue-manager";
pub const TRAINER: &str = "trainer-controller-manager";

/// Kueue's namespace (its config's `namespace`) and the kustomize names of its webhook
/// configurations (`namePrefix: kueue-`).
pub const KUEUE_NAMESPACE: &str = "kueue-system";
const KUEUE_MUTATING: &str = "kueue-mutating-webhook-configuration";
const KUEUE_VALIDATING: &str = "kueue-validating-webhook-configuration";
/// Kueue reads this even with metrics off (see the module comment).
const KUEUE_METRICS_CERTS: &str = "/etc/kueue/metrics/certs";

/// Trainer's fixed names (cmd/trainer-controller-manager and pkg/util/cert of v2.0.0).
pub const TRAINER_NAMESPACE: &str = "kubeflow-system";
const TRAINER_WEBHOOK_CONFIG: &str = "validator.trainer.kubeflow.org";
const TRAINER_SECRET: &str = "kubeflow-trainer-webhook-cert";
const TRAINER_SERVICE_DNS: &str = "kubeflow-trainer-controller-manager.kubeflow-system.svc";
const TRAINER_CA_NAME: &str = "kubeflow-trainer-ca";
const TRAINER_CERT_DIR: &str = "/tmp/k8s-webhook-server/serving-certs";

const CRD_ESTABLISHED: Duration = Duration::from_secs(60);
const READY: Duration = Duration::from_secs(120);

/// The folder with the binaries of `tests/cluster/<module>` (built once per test process).
pub fn module_bin(module: &str) -> PathBuf {
    static BINS: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut bins = BINS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, bin)) = bins.iter().find(|(m, _)| m == module) {
        return bin.clone();
    }
    let start = Instant::now();
    let bin = PathBuf::from(build_sh(&["--module", module]).trim());
    report_time(
        &format!("{module} binaries (build.sh --module)"),
        start.elapsed(),
    );
    bins.push((module.to_owned(), bin.clone()));
    bin
}

/// The version of `module` that tests/cluster/<folder>/go.mod requires (directly or
/// `// indirect`).
pub fn pinned_version(folder: &str, module: &str) -> String {
    let go_mod = repo_root()
        .join("tests/cluster")
        .join(folder)
        .join("go.mod");
    let text =
        fs::read_to_string(&go_mod).unwrap_or_else(|e| panic!("reading {}: {e}", go_mod.display()));
    text.lines()
        .map(|l| l.trim().trim_start_matches("require").trim())
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(module)).then(|| words.next().map(str::to_owned))?
        })
        .unwrap_or_else(|| panic!("{} does not require {module}", go_mod.display()))
}

/// The folder (read-only, in the module cache) of `module` at the version the module in
/// tests/cluster/<folder> pins.
pub fn module_dir(folder: &str, module: &str) -> PathBuf {
    let at = format!("{module}@{}", pinned_version(folder, module));
    let dir = PathBuf::from(build_sh(&["--print-module-dir", &at]).trim());
    assert!(
        dir.is_dir(),
        "build.sh --print-module-dir {at} printed {dir:?}, not a folder"
    );
    dir
}

/// Every `*.yaml` file of `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Creates the CRDs of `files` (server-side apply: Kueue's Workload CRD is far over the
/// client-side `last-applied` limit) and waits until each is Established.
pub fn install_crds(cluster: &Cluster, files: &[PathBuf]) {
    let mut names = Vec::new();
    for file in files {
        for doc in load_yaml(file) {
            assert_eq!(
                doc["kind"],
                "CustomResourceDefinition",
                "{} holds a {}, not a CRD",
                file.display(),
                doc["kind"]
            );
            names.push(
                doc["metadata"]["name"]
                    .as_str()
                    .expect("a CRD name")
                    .to_owned(),
            );
        }
        cluster.kubectl_ok(
            &[
                "apply",
                "--server-side",
                "--field-manager=e2e",
                "-f",
                &file.display().to_string(),
            ],
            None,
        );
    }
    for name in &names {
        wait_for(
            &format!("CRD {name} to be Established"),
            CRD_ESTABLISHED,
            || {
                let out = cluster.kubectl(
                    &[
                        "get",
                        "crd",
                        name,
                        "-o",
                        "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
                    ],
                    None,
                );
                match String::from_utf8_lossy(&out.stdout).trim() {
                    "True" => Ok(()),
                    other => Err(format!(
                        "Established={other:?} {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )),
                }
            },
        );
    }
}

/// Rewrites every webhook's `clientConfig` from the `service` reference a kustomize config
/// ships to `url: https://127.0.0.1:<port><path>` + `caBundle` (base64 PEM); everything else
/// stays as shipped.
pub fn loopback_client_configs(config: &mut Value, port: u16, ca_bundle: &str) {
    for w in config["webhooks"]
        .as_array_mut()
        .expect("a webhook configuration has webhooks")
    {
        let path = w["clientConfig"]["service"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("webhook {} has no service path", w["name"]))
            .to_owned();
        w["clientConfig"] = json!({
            "url": format!("https://127.0.0.1:{port}{path}"),
            "caBundle": ca_bundle,
        });
    }
}

fn wait_ready(cluster: &Cluster, component: &str, health: SocketAddr) {
    wait_for(&format!("{component} /readyz"), READY, || {
        cluster.assert_running(component);
        match http_get(health, "/readyz")? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("HTTP {code}: {body}")),
        }
    });
}

/// An audit log of every JobSet write (create, update, patch; `Request` level: the bodies)
/// for a cluster started with [`Audit::apiserver_args`]: what each controller really sent.
pub struct Audit {
    dir: tempfile::TempDir,
}

impl Audit {
    pub fn new() -> Audit {
        let dir = tempfile::tempdir().expect("creating the audit folder");
        fs::write(
            dir.path().join("policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
             - level: Request\n  verbs: [create, update, patch]\n  \
             resources: [{group: jobset.x-k8s.io, resources: [jobsets]}]\n\
             - level: None\n",
        )
        .expect("writing the audit policy");
        Audit { dir }
    }

    pub fn apiserver_args(&self) -> Vec<String> {
        let p = |name: &str| self.dir.path().join(name).display().to_string();
        vec![
            format!("--audit-policy-file={}", p("policy.yaml")),
            format!("--audit-log-path={}", p("audit.log")),
            "--audit-log-format=json".to_owned(),
            "--audit-log-mode=blocking".to_owned(),
        ]
    }

    /// The audit events (`ResponseComplete`) of writes to the JobSet `ns/name`, in order.
    pub fn jobset_writes(&self, ns: &str, name: &str) -> Vec<Value> {
        let text = fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| {
                e["stage"] == "ResponseComplete"
                    && e["objectRef"]["namespace"] == ns
                    && e["objectRef"]["name"] == name
            })
            .collect()
    }
}

/// One line per audit event: verb, subresource, HTTP code, the writer (user agent up to the
/// first '/'), and whether the body carried `restartPolicyRules`.
pub fn describe_writes(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {}{} -> {} by {} (body mentions restartPolicyRules: {})",
                e["verb"].as_str().unwrap_or("?"),
                e["objectRef"]["resource"].as_str().unwrap_or("?"),
                e["objectRef"]["subresource"]
                    .as_str()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default(),
                e["responseStatus"]["code"],
                e["userAgent"]
                    .as_str()
                    .unwrap_or("?")
                    .split('/')
                    .next()
                    .unwrap_or("?"),
                e["requestObject"]
                    .to_string()
                    .contains("\"restartPolicyRules\""),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// --- Kueue --------------------------------------------------------------------------------

/// Kueue's integrations that the tests turn on, in its `integrations.frameworks` spelling.
pub const KUEUE_JOBSET_FRAMEWORK: &str = "jobset.x-k8s.io/jobset";

/// Installs Kueue's CRDs, starts its manager (JobSet integration only, no leader election,
/// internal certificate management off, webhooks on 127.0.0.1 with a certificate from our
/// `certs::generate`) and registers the webhooks for Kueue's own kinds and JobSets (the
/// other integrations' webhooks are left out: those kinds do not exist here). Returns once
/// Kueue's JobSet defaulting shows in a server-side dry run (a queued JobSet is suspended).
pub fn start_kueue(cluster: &Cluster) {
    let start = Instant::now();
    let bin = module_bin("kueue");
    let module = module_dir("kueue", KUEUE_MODULE);
    install_crds(
        cluster,
        &yaml_files(&module.join("config/components/crd/bases")),
    );
    cluster.ensure_namespace(KUEUE_NAMESPACE);
    ensure_kueue_metrics_certs();

    let certs = cluster.dir.join("kueue-certs");
    fs::create_dir_all(&certs).expect("creating kueue-certs");
    let generated = jobset_restart_webhook::certs::generate(
        &["127.0.0.1".to_owned(), "localhost".to_owned()],
        7,
    )
    .expect("generating Kueue's webhook certificate");
    fs::write(certs.join("tls.crt"), &generated.cert_pem).expect("writing tls.crt");
    fs::write(certs.join("tls.key"), &generated.key_pem).expect("writing tls.key");
    let webhook_port = free_port();
    let health_port = free_port();
    let config = cluster.dir.join("kueue-config.yaml");
    // VisibilityOnDemand (beta, on by default) starts an aggregated API server on every
    // interface that the tests do not use.
    fs::write(
        &config,
        format!(
            "apiVersion: config.kueue.x-k8s.io/v1beta2\nkind: Configuration\n\
             namespace: {KUEUE_NAMESPACE}\n\
             leaderElection:\n  leaderElect: false\n\
             internalCertManagement:\n  enable: false\n\
             webhook:\n  host: 127.0.0.1\n  port: {webhook_port}\n  certDir: {}\n\
             metrics:\n  bindAddress: \"0\"\n\
             health:\n  healthProbeBindAddress: 127.0.0.1:{health_port}\n\
             manageJobsWithoutQueueName: false\n\
             integrations:\n  frameworks:\n  - {KUEUE_JOBSET_FRAMEWORK}\n\
             featureGates:\n  VisibilityOnDemand: false\n",
            certs.display()
        ),
    )
    .expect("writing Kueue's config");
    let mut cmd = Command::new(bin.join(KUEUE));
    cmd.arg(format!("--config={}", config.display()))
        .arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
        .arg("--zap-log-level=2")
        .env_remove("KUBECONFIG");
    cluster.spawn(KUEUE, cmd);
    wait_ready(cluster, KUEUE, ([127, 0, 0, 1], health_port).into());

    let ca = generated.ca_bundle_base64();
    let shipped = load_yaml(&module.join("config/components/webhook/manifests.yaml"));
    let mut configs = Vec::new();
    for mut config in shipped {
        let name = match config["kind"].as_str() {
            Some("MutatingWebhookConfiguration") => KUEUE_MUTATING,
            Some("ValidatingWebhookConfiguration") => KUEUE_VALIDATING,
            other => panic!("Kueue's webhook manifests hold a {other:?}"),
        };
        config["metadata"] = json!({"name": name});
        let webhooks = config["webhooks"]
            .as_array_mut()
            .expect("Kueue's configurations have webhooks");
        webhooks.retain(|w| {
            w["rules"].as_array().into_iter().flatten().any(|r| {
                r["apiGroups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|g| g == "kueue.x-k8s.io" || g == "jobset.x-k8s.io")
            })
        });
        assert!(
            webhooks.iter().any(|w| w.to_string().contains("jobsets")),
            "Kueue's {name} has no JobSet webhook: {config}"
        );
        loopback_client_configs(&mut config, webhook_port, &ca);
        configs.push(config);
    }
    cluster.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&json!({"apiVersion": "v1", "kind": "List", "items": configs}).to_string()),
    );
    wait_for("Kueue's JobSet webhook to be called", READY, || {
        cluster.assert_running(KUEUE);
        let probe = json!({
            "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
            "metadata": {"name": "probe-kueue-webhook",
                         "labels": {"kueue.x-k8s.io/queue-name": "probe"}},
            "spec": {"replicatedJobs": [{"name": "r", "replicas": 1, "template": {"spec": {
                "template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}}]}
        });
        let (stored, stderr) = cluster.dry_run_create("default", &probe);
        if stored.pointer("/spec/suspend") == Some(&json!(true)) {
            Ok(())
        } else {
            Err(format!("not suspended by Kueue yet: {}", stderr.trim()))
        }
    });
    report_time(
        &format!(
            "Kueue {} ready (CRDs, manager, webhooks)",
            pinned_version("kueue", KUEUE_MODULE)
        ),
        start.elapsed(),
    );
}

/// See the module comment: Kueue exits at startup without these two files.
fn ensure_kueue_metrics_certs() {
    let dir = Path::new(KUEUE_METRICS_CERTS);
    if dir.join("tls.crt").is_file() && dir.join("tls.key").is_file() {
        return;
    }
    let pair = jobset_restart_webhook::certs::generate(&["127.0.0.1".to_owned()], 3650)
        .expect("generating a throwaway metrics certificate for Kueue");
    let written = fs::create_dir_all(dir)
        .and_then(|()| fs::write(dir.join("tls.key"), &pair.key_pem))
        .and_then(|()| fs::write(dir.join("tls.crt"), &pair.cert_pem));
    if let Err(e) = written {
        panic!(
            "Kueue v0.17.0 with internal certificate management off reads its metrics \
             certificate from {KUEUE_METRICS_CERTS}/tls.crt and tls.key at startup and exits \
             without them (even with metrics off); writing them failed: {e}. Run the e2e \
             tests as root, or create that folder with any certificate and key."
        );
    }
}

// --- Kubeflow Trainer ---------------------------------------------------------------------

/// Installs Trainer's CRDs (and the PodGroup CRD it watches), registers its validating
/// webhooks by loopback URL, creates the certificate Secret its rotator checks, and starts
/// the controller manager (no leader election, metrics off, verbose enough (`5`) to log each
/// successful apply: "Succeeded to update object"). Returns once `/readyz` answers, which
/// Trainer ties to its certificates being in place, its CA injected and its webhook server
/// listening.
pub fn start_trainer(cluster: &Cluster) {
    let start = Instant::now();
    let bin = module_bin("trainer");
    let module = module_dir("trainer", TRAINER_MODULE);
    let mut crds = yaml_files(&module.join("manifests/base/crds"));
    crds.retain(|p| !p.ends_with("kustomization.yaml"));
    crds.push(
        module_dir("trainer", SCHEDULER_PLUGINS_MODULE).join("manifests/coscheduling/crd.yaml"),
    );
    install_crds(cluster, &crds);
    cluster.ensure_namespace(TRAINER_NAMESPACE);

    let pair = trainer_certificates();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": TRAINER_SECRET, "namespace": TRAINER_NAMESPACE},
        "type": "Opaque",
        "stringData": {
            "ca.crt": pair.ca_pem, "ca.key": pair.ca_key_pem,
            "tls.crt": pair.cert_pem, "tls.key": pair.key_pem,
        }
    });
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&secret.to_string()));
    let dir = Path::new(TRAINER_CERT_DIR);
    fs::create_dir_all(dir)
        .and_then(|()| fs::write(dir.join("ca.crt"), &pair.ca_pem))
        .and_then(|()| fs::write(dir.join("tls.key"), &pair.key_pem))
        .and_then(|()| fs::write(dir.join("tls.crt"), &pair.cert_pem))
        .unwrap_or_else(|e| {
            panic!("Trainer v2.0.0 reads its webhook certificate from {TRAINER_CERT_DIR} (fixed); writing it failed: {e}")
        });

    let webhook_port = free_port();
    let health_port = free_port();
    let ca = base64::engine::general_purpose::STANDARD.encode(&pair.ca_pem);
    let mut docs = load_yaml(&module.join("manifests/base/webhook/manifests.yaml"));
    assert_eq!(docs.len(), 1, "Trainer ships one webhook configuration");
    let mut config = docs.remove(0);
    // manifests/base/webhook/patch.yaml renames it; the rotator injects its CA by this name.
    config["metadata"] = json!({"name": TRAINER_WEBHOOK_CONFIG});
    loopback_client_configs(&mut config, webhook_port, &ca);
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&config.to_string()));

    let mut cmd = Command::new(bin.join(TRAINER));
    cmd.arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
        .arg(format!(
            "--health-probe-bind-address=127.0.0.1:{health_port}"
        ))
        .arg(format!("--webhook-server-port={webhook_port}"))
        .arg("--metrics-bind-address=0")
        .arg("--leader-elect=false")
        .arg("--zap-log-level=5")
        // The webhook server's default folder is $TMPDIR/k8s-webhook-server/..., the
        // rotator's is /tmp/k8s-webhook-server/...: they must agree.
        .env_remove("TMPDIR")
        .env_remove("KUBECONFIG");
    cluster.spawn(TRAINER, cmd);
    wait_ready(cluster, TRAINER, ([127, 0, 0, 1], health_port).into());
    report_time(
        &format!(
            "Kubeflow Trainer {} ready (CRDs, webhooks, controller manager)",
            pinned_version("trainer", TRAINER_MODULE)
        ),
        start.elapsed(),
    );
}

/// A CA and leaf that Trainer's rotator (open-policy-agent/cert-controller v0.12) accepts as
/// they are: it verifies the CA against the DNS name `kubeflow-trainer-ca` and the leaf
/// against the Service name, both valid beyond its 90-day look-ahead, and before injecting
/// the CA it parses the CA key as PKCS#1 RSA (an ECDSA or PKCS#8 key fails with "secret is
/// not well-formed, cannot update webhook configurations ... failed to parse private key",
/// and `/readyz` never turns ready). 127.0.0.1 is what the API server dials.
fn trainer_certificates() -> jobset_restart_webhook::certs::Generated {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let now = time::OffsetDateTime::now_utc();
    let mut ca_params =
        CertificateParams::new(vec![TRAINER_CA_NAME.to_owned()]).expect("the CA's name");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, TRAINER_CA_NAME);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = now - time::Duration::hours(1);
    ca_params.not_after = now + time::Duration::days(3650);
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("generating the CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("signing the CA");
    let ca_pem = ca_cert.pem();
    let ca_key_pem = pkcs1_pem(&ca_key.serialize_der());
    let issuer = Issuer::new(ca_params, ca_key);

    let sans = vec![TRAINER_SERVICE_DNS.to_owned(), "127.0.0.1".to_owned()];
    let mut leaf = CertificateParams::new(sans.clone()).expect("the leaf's names");
    leaf.distinguished_name
        .push(DnType::CommonName, TRAINER_SERVICE_DNS);
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now - time::Duration::hours(1);
    let not_after = now + time::Duration::days(365);
    leaf.not_after = not_after;
    let leaf_key = KeyPair::generate().expect("generating the serving key");
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .expect("signing the serving certificate");
    jobset_restart_webhook::certs::Generated {
        ca_pem,
        ca_key_pem,
        cert_pem: leaf_cert.pem(),
        key_pem: leaf_key.serialize_pem(),
        sans,
        not_after,
    }
}

/// The PKCS#1 `RSA PRIVATE KEY` PEM of an RSA key given as PKCS#8 DER (`PrivateKeyInfo ::=
/// SEQUENCE { version, algorithm, privateKey OCTET STRING }`, the OCTET STRING holding the
/// PKCS#1 key).
fn pkcs1_pem(pkcs8: &[u8]) -> String {
    /// (tag, content) of the DER element at the start of `der`, and what follows it.
    fn element(der: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = der[0];
        let (len, header) = match der[1] {
            n if n < 0x80 => (usize::from(n), 2),
            n => {
                let count = usize::from(n & 0x7f);
                let len = der[2..2 + count]
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                (len, 2 + count)
            }
        };
        (tag, &der[header..header + len], &der[header + len..])
    }
    let (tag, info, _) = element(pkcs8);
    assert_eq!(tag, 0x30, "PKCS#8 is a SEQUENCE");
    let (_, _, rest) = element(info); // version
    let (_, _, rest) = element(rest); // algorithm
    let (tag, pkcs1, _) = element(rest);
    assert_eq!(tag, 0x04, "PKCS#8's privateKey is an OCTET STRING");
    let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs1);
    let mut pem = String::from("-----BEGIN RSA PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END RSA PRIVATE KEY-----\n");
    pem
}
