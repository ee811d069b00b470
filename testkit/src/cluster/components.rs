//! The control plane's components: the binaries from tests/cluster/build.sh, and how each
//! component is started and waited for.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde_json::{Value, json};

use crate::util::{free_port, http_get, repo_root, report_time, wait_for};

use super::*;

/// The folder with the control-plane binaries, from `tests/cluster/build.sh` (cached; honours
/// `CONTROL_PLANE_BIN`). Panics with build.sh's output when it fails: the e2e tests never skip.
pub fn control_plane_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let start = Instant::now();
        let out = build_sh(&[]);
        let bin = PathBuf::from(out.trim());
        for name in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kubectl",
            "jobset-controller",
            "kube-scheduler",
            "kubelet",
        ] {
            assert!(
                bin.join(name).is_file(),
                "tests/cluster/build.sh printed {} but {name} is not in it",
                bin.display()
            );
        }
        report_time("control plane binaries (build.sh)", start.elapsed());
        bin
    })
}

/// The `sigs.k8s.io/jobset` module folder at `version` (read-only, in the module cache).
pub fn jobset_module_dir(version: &str) -> PathBuf {
    static DIRS: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut dirs = DIRS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, dir)) = dirs.iter().find(|(v, _)| v == version) {
        return dir.clone();
    }
    let out = build_sh(&[
        "--print-module-dir",
        &format!("sigs.k8s.io/jobset@{version}"),
    ]);
    let dir = PathBuf::from(out.trim());
    assert!(
        dir.is_dir(),
        "build.sh --print-module-dir printed {dir:?}, not a folder"
    );
    dirs.push((version.to_owned(), dir.clone()));
    dir
}

/// Every JobSet manifest file we test with: the `sigs.k8s.io/jobset` module's
/// `config/samples/` (at the installed CRD's version) and our `tests/fixtures/jobsets/`,
/// each folder sorted.
pub fn example_manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in [
        jobset_module_dir(JOBSET_V0_12_0).join("config/samples"),
        repo_root().join("tests/fixtures/jobsets"),
    ] {
        let mut found: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

pub fn build_sh(args: &[&str]) -> String {
    let script = repo_root().join("tests/cluster/build.sh");
    let out = Command::new(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stdout.trim().is_empty(),
        "the e2e tests need the control plane: `tests/cluster/build.sh{}` failed ({}).\n\
         It needs Go >= 1.26 and the Go module proxy (or CONTROL_PLANE_BIN pointing at a \
         folder with the seven binaries). Its output:\n{stderr}{stdout}",
        args.iter().map(|a| format!(" {a}")).collect::<String>(),
        out.status
    );
    stdout
}

impl Cluster {
    pub(super) fn start_etcd(&mut self) {
        let client = free_port();
        let peer = free_port();
        let mut cmd = Command::new(self.bin.join("etcd"));
        cmd.arg("--name=e2e")
            .arg(format!("--data-dir={}", self.dir.join("etcd").display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=e2e=http://127.0.0.1:{peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn");
        self.spawn("etcd", cmd);
        self.etcd_port = client;
        let addr: SocketAddr = ([127, 0, 0, 1], client).into();
        wait_for("etcd /readyz", ETCD_READY, || {
            self.assert_running("etcd");
            match http_get(addr, "/readyz")? {
                (200, _) => Ok(()),
                (code, body) => Err(format!("HTTP {code}: {body}")),
            }
        });
    }

    pub(super) fn start_apiserver(&mut self) {
        let key = rcgen::KeyPair::generate().expect("generating the service-account key");
        fs::write(self.dir.join("sa.key"), key.serialize_pem()).expect("writing sa.key");
        fs::write(self.dir.join("sa.pub"), key.public_key_pem()).expect("writing sa.pub");
        fs::write(
            self.dir.join("tokens.csv"),
            "admin-token,admin,admin-uid,system:masters\n",
        )
        .expect("writing tokens.csv");
        let d = |name: &str| self.dir.join(name).display().to_string();
        let mut cmd = Command::new(self.bin.join("kube-apiserver"));
        cmd.arg(format!(
            "--etcd-servers=http://127.0.0.1:{}",
            self.etcd_port
        ))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        .arg(format!("--secure-port={}", self.api_port))
        .arg(format!("--cert-dir={}", d("apiserver-certs")))
        .arg(format!("--token-auth-file={}", d("tokens.csv")))
        .arg("--authorization-mode=RBAC")
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg(format!("--service-account-key-file={}", d("sa.pub")))
        .arg(format!(
            "--service-account-signing-key-file={}",
            d("sa.key")
        ))
        .arg("--service-cluster-ip-range=10.0.0.0/24")
        .arg(format!("--feature-gates={}", self.opts.feature_gates))
        .args(&self.opts.apiserver_args);
        self.spawn("kube-apiserver", cmd);
        let ca = self.dir.join("apiserver-certs/apiserver.crt");
        wait_for(
            "kube-apiserver to write its certificate",
            APISERVER_READY,
            || {
                self.assert_running("kube-apiserver");
                match fs::metadata(&ca) {
                    Ok(m) if m.len() > 0 => Ok(()),
                    _ => Err(format!("{} not there yet", ca.display())),
                }
            },
        );
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    \
             server: https://127.0.0.1:{}\n    certificate-authority: {}\n\
             users:\n- name: admin\n  user: {{token: admin-token}}\n\
             contexts:\n- name: e2e\n  context: {{cluster: e2e, user: admin}}\n\
             current-context: e2e\n",
            self.api_port,
            ca.display()
        );
        fs::write(&self.kubeconfig, kubeconfig).expect("writing the kubeconfig");
        wait_for("kube-apiserver /readyz", APISERVER_READY, || {
            self.assert_running("kube-apiserver");
            let out = self.kubectl(&["get", "--raw", "/readyz"], None);
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
            }
        });
    }

    pub(super) fn install_crd(&mut self) {
        let crd = jobset_module_dir(self.opts.jobset_crd)
            .join("config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml");
        // `create`, not client-side `apply`: the CRD does not fit the last-applied annotation.
        self.kubectl_ok(&["create", "-f", &crd.display().to_string()], None);
        wait_for("the JobSet CRD to be Established", CRD_ESTABLISHED, || {
            let out = self.kubectl(
                &[
                    "get",
                    "crd",
                    "jobsets.jobset.x-k8s.io",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
                ],
                None,
            );
            let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if status == "True" {
                Ok(())
            } else {
                Err(format!(
                    "Established={status:?} {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        });
    }

    pub(super) fn start_controller_manager(&mut self) {
        let d = |name: &str| self.dir.join(name).display().to_string();
        let kubeconfig = self.kubeconfig.display().to_string();
        let mut cmd = Command::new(self.bin.join("kube-controller-manager"));
        cmd.arg(format!("--kubeconfig={kubeconfig}"))
            .arg(format!("--authentication-kubeconfig={kubeconfig}"))
            .arg(format!("--authorization-kubeconfig={kubeconfig}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()))
            .arg(format!("--cert-dir={}", d("kcm-certs")))
            .arg("--leader-elect=false")
            .arg("--controllers=*")
            .arg("--use-service-account-credentials=false")
            .arg(format!(
                "--service-account-private-key-file={}",
                d("sa.key")
            ))
            .arg(format!(
                "--root-ca-file={}",
                d("apiserver-certs/apiserver.crt")
            ))
            .arg(format!("--feature-gates={}", self.opts.feature_gates));
        self.spawn("kube-controller-manager", cmd);
        // Ready for the tests = the serviceaccount controller works.
        self.wait_default_service_account("default");
    }

    pub(super) fn start_scheduler(&mut self) {
        let kubeconfig = self.kubeconfig.display().to_string();
        let port = free_port();
        let mut cmd = Command::new(self.bin.join("kube-scheduler"));
        cmd.arg(format!("--kubeconfig={kubeconfig}"))
            .arg(format!("--authentication-kubeconfig={kubeconfig}"))
            .arg(format!("--authorization-kubeconfig={kubeconfig}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg("--leader-elect=false")
            .arg(format!("--feature-gates={}", self.opts.feature_gates));
        self.spawn("kube-scheduler", cmd);
        // No readiness wait: nothing is scheduled before a node is Ready, which takes longer
        // than the scheduler's start; a scheduler that exits shows in `assert_running`.
        self.assert_running("kube-scheduler");
    }

    pub(super) fn wait_default_service_account(&self, namespace: &str) {
        wait_for(
            &format!("serviceaccount default in namespace {namespace}"),
            KCM_READY,
            || {
                self.assert_running("kube-controller-manager");
                let out =
                    self.kubectl(&["get", "serviceaccount", "default", "-n", namespace], None);
                if out.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
                }
            },
        );
    }

    pub(super) fn start_jobset_controller(&mut self) {
        let certs = self.dir.join("jobset-certs");
        fs::create_dir_all(&certs).expect("creating jobset-certs");
        let generated = jobset_restart_webhook::certs::generate(
            &["127.0.0.1".to_owned(), "localhost".to_owned()],
            7,
        )
        .expect("generating the JobSet controller's webhook certificate");
        fs::write(certs.join("tls.crt"), &generated.cert_pem).expect("writing tls.crt");
        fs::write(certs.join("tls.key"), &generated.key_pem).expect("writing tls.key");
        let webhook_port = free_port();
        let health_port = free_port();
        let config = self.dir.join("jobset-config.yaml");
        fs::write(
            &config,
            format!(
                "apiVersion: config.jobset.x-k8s.io/v1alpha1\nkind: Configuration\n\
                 leaderElection:\n  leaderElect: false\n\
                 internalCertManagement:\n  enable: false\n\
                 webhook:\n  host: 127.0.0.1\n  port: {webhook_port}\n  certDir: {}\n\
                 metrics:\n  bindAddress: \"0\"\n\
                 health:\n  healthProbeBindAddress: 127.0.0.1:{health_port}\n",
                certs.display()
            ),
        )
        .expect("writing the JobSet controller's config");
        let mut cmd = Command::new(self.bin.join("jobset-controller"));
        cmd.arg(format!("--config={}", config.display()))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--zap-log-level=info")
            .env_remove("KUBECONFIG");
        self.spawn("jobset-controller", cmd);
        let health: SocketAddr = ([127, 0, 0, 1], health_port).into();
        wait_for("jobset-controller /readyz", JOBSET_READY, || {
            self.assert_running("jobset-controller");
            match http_get(health, "/readyz")? {
                (200, _) => Ok(()),
                (code, body) => Err(format!("HTTP {code}: {body}")),
            }
        });
        let ca = generated.ca_bundle_base64();
        self.kubectl_ok(
            &["apply", "-f", "-"],
            Some(&jobset_webhook_configurations(webhook_port, &ca).to_string()),
        );
        self.jobset_ca_bundle = Some(ca);
        // The API server picks configurations up asynchronously: wait until JobSet's
        // defaulting shows in a server-side dry run.
        wait_for(
            "JobSet's defaulting webhook to be called",
            JOBSET_READY,
            || {
                self.assert_running("jobset-controller");
                let probe = json!({
                    "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
                    "metadata": {"name": "probe-jobset-webhook"},
                    "spec": {"replicatedJobs": [{"name": "r", "replicas": 1, "template": {"spec": {
                        "template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}}]}
                });
                let (stored, stderr) = self.dry_run_create("default", &probe);
                if stored.pointer("/spec/successPolicy/operator") == Some(&json!("All")) {
                    Ok(())
                } else {
                    Err(format!("not defaulted yet: {}", stderr.trim()))
                }
            },
        );
    }
}

/// JobSet's mutating and validating webhook configurations as its kustomize config produces
/// them (names with the `jobset-` prefix, the Pod webhooks' objectSelector from its
/// patches), with `url` client configs on loopback.
pub(super) fn jobset_webhook_configurations(port: u16, ca_bundle: &str) -> Value {
    let client = |path: &str| json!({"url": format!("https://127.0.0.1:{port}{path}"), "caBundle": ca_bundle});
    let jobsets = |ops: &[&str]| json!([{"apiGroups": ["jobset.x-k8s.io"], "apiVersions": ["v1alpha2"], "operations": ops, "resources": ["jobsets"]}]);
    let pods = json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]);
    let selector = json!({"matchExpressions": [{"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}]});
    json!({
        "apiVersion": "v1", "kind": "List", "items": [
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": JOBSET_MUTATING_CONFIG},
                "webhooks": [
                    {"name": "mjobset.kb.io", "admissionReviewVersions": ["v1"],
                     "clientConfig": client("/mutate-jobset-x-k8s-io-v1alpha2-jobset"),
                     "failurePolicy": "Fail", "sideEffects": "None", "rules": jobsets(&["CREATE"])},
                    {"name": "mpod.kb.io", "admissionReviewVersions": ["v1"],
                     "clientConfig": client("/mutate--v1-pod"),
                     "failurePolicy": "Fail", "sideEffects": "None", "objectSelector": selector, "rules": pods},
                ]
            },
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": JOBSET_VALIDATING_CONFIG},
                "webhooks": [
                    {"name": "vjobset.kb.io", "admissionReviewVersions": ["v1"],
                     "clientConfig": client("/validate-jobset-x-k8s-io-v1alpha2-jobset"),
                     "failurePolicy": "Fail", "sideEffects": "None", "rules": jobsets(&["CREATE", "UPDATE"])},
                    {"name": "vpod.kb.io", "admissionReviewVersions": ["v1"],
                     "clientConfig": client("/validate--v1-pod"),
                     "failurePolicy": "Fail", "sideEffects": "None", "objectSelector": selector, "rules": pods},
                ]
            }
        ]
    })
}
