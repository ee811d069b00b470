//! A real control plane for the end-to-end tests: etcd, kube-apiserver, optionally
//! kube-controller-manager and the JobSet controller (with its own webhooks), on free
//! loopback ports, in a temporary folder. The command lines are the ones verified in
//! tests/cluster/README.md.
//!
//! Processes: each component runs in its own process group, with stdout and stderr in
//! `<dir>/logs/<component>.log`. `Drop` stops them (SIGTERM to the group, SIGKILL after 5 s).
//! A `static` cluster is never dropped, and a test binary can die without unwinding, so
//! every cluster also has a watchdog: a `sh` in its own process group that blocks reading a
//! pipe from the test process and, when that pipe closes (the test process is gone, however
//! it ended), kills every process group listed in `<dir>/pgids` and removes the folder.
//!
//! On a failing test (`std::thread::panicking()` in `Drop`, or [`TestNamespace`]'s `Drop`
//! for the shared cluster) the last lines of every component's log go to stderr and the
//! folder is kept (`<dir>/keep`). `E2E_KEEP=1` keeps it always.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{free_port, http_get, repo_root, report_time, tail, wait_for};

/// The gates of a 1.36 cluster that supports everything the webhook injects (all three are
/// beta and on by default in 1.36; they are spelled out so a test reads what it runs on).
pub const DEFAULT_GATES: &str = "ContainerRestartRules=true,RestartAllContainersOnContainerExits=true,NodeDeclaredFeatures=true";
/// JobSet versions whose CRD the harness can install.
pub const JOBSET_V0_12_0: &str = "v0.12.0";
pub const JOBSET_V0_9_0: &str = "v0.9.0";
/// JobSet's configuration names, as its shipped kustomize (`namePrefix: jobset-`) produces.
pub const JOBSET_MUTATING_CONFIG: &str = "jobset-mutating-webhook-configuration";
pub const JOBSET_VALIDATING_CONFIG: &str = "jobset-validating-webhook-configuration";
/// Lines of each log printed for a failing test.
const LOG_TAIL_LINES: usize = 60;
/// Startup timeouts (generous: two cores, possibly two clusters starting at once).
const ETCD_READY: Duration = Duration::from_secs(30);
const APISERVER_READY: Duration = Duration::from_secs(90);
const CRD_ESTABLISHED: Duration = Duration::from_secs(30);
const KCM_READY: Duration = Duration::from_secs(60);
const JOBSET_READY: Duration = Duration::from_secs(60);
/// Time a component gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Short name for log lines and the temporary folder.
    pub name: &'static str,
    /// `--feature-gates` of kube-apiserver and kube-controller-manager.
    pub feature_gates: String,
    /// Version of the `sigs.k8s.io/jobset` module whose CRD is installed.
    pub jobset_crd: &'static str,
    /// Run kube-controller-manager (Jobs create Pods; namespaces get `default` SAs).
    pub controller_manager: bool,
    /// Run the JobSet controller (v0.12.0) and register its webhooks.
    pub jobset_controller: bool,
    /// Extra kube-apiserver flags (e.g. `--admission-control-config-file=...`).
    pub apiserver_args: Vec<String>,
    /// Run kube-scheduler (pods get bound to the harness's nodes, see node.rs).
    pub scheduler: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            name: "cluster",
            feature_gates: DEFAULT_GATES.to_owned(),
            jobset_crd: JOBSET_V0_12_0,
            controller_manager: true,
            jobset_controller: true,
            apiserver_args: Vec::new(),
            scheduler: false,
        }
    }
}

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
#[allow(dead_code)] // the benches share this module and list no manifests
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

/// The process groups the watchdog kills, mirrored into `<dir>/pgids`.
pub struct Tracker {
    file: PathBuf,
    pgids: Mutex<Vec<i32>>,
}

impl Tracker {
    pub fn track(&self, pgid: i32) {
        let mut pgids = self.pgids.lock().unwrap_or_else(|e| e.into_inner());
        pgids.push(pgid);
        self.write(&pgids);
    }

    pub fn untrack(&self, pgid: i32) {
        let mut pgids = self.pgids.lock().unwrap_or_else(|e| e.into_inner());
        pgids.retain(|p| *p != pgid);
        self.write(&pgids);
    }

    fn write(&self, pgids: &[i32]) {
        let text: String = pgids.iter().map(|p| format!("{p}\n")).collect();
        let tmp = self.file.with_extension("tmp");
        fs::write(&tmp, text)
            .and_then(|()| fs::rename(&tmp, &self.file))
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.file.display()));
    }
}

/// A process the harness started, in its own process group.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` in a new process group with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf, tracker: &Tracker) -> Proc {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = file
            .try_clone()
            .unwrap_or_else(|e| panic!("duplicating {}: {e}", log.display()));
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        tracker.track(child.id() as i32);
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// Panics (with the log's tail) when the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, LOG_TAIL_LINES)
            );
        }
    }

    pub fn print_log_tail(&self) {
        eprintln!(
            "----- last {LOG_TAIL_LINES} lines of {} ({}) -----\n{}\n----- end of {} -----",
            self.name,
            self.log.display(),
            tail(&self.log, LOG_TAIL_LINES),
            self.name
        );
    }
}

/// Stops processes: SIGTERM to every group at once, SIGKILL to what is left after
/// [`STOP_GRACE`], then reaps them.
pub fn stop_all(procs: &mut [&mut Proc], tracker: &Tracker) {
    use rustix::process::{Pid, Signal, kill_process_group};
    let mut running = Vec::new();
    for p in procs.iter_mut() {
        if matches!(p.child.try_wait(), Ok(None)) {
            if let Some(pid) = Pid::from_raw(p.child.id() as i32) {
                let _ = kill_process_group(pid, Signal::TERM);
            }
            running.push(&mut **p);
        } else {
            tracker.untrack(p.child.id() as i32);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline
        && running
            .iter_mut()
            .any(|p| matches!(p.child.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in running {
        if matches!(p.child.try_wait(), Ok(None)) {
            eprintln!(
                "[e2e] {} did not stop within {STOP_GRACE:?} of SIGTERM; SIGKILL",
                p.name
            );
            if let Some(pid) = Pid::from_raw(p.child.id() as i32) {
                let _ = kill_process_group(pid, Signal::KILL);
            }
            let _ = p.child.wait();
        }
        tracker.untrack(p.child.id() as i32);
    }
}

pub struct Cluster {
    pub opts: ClusterOptions,
    /// The temporary folder: logs, certificates, kubeconfig, etcd data.
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub etcd_port: u16,
    pub api_port: u16,
    /// Base64 CA bundle that signed the JobSet controller's webhook certificate.
    pub jobset_ca_bundle: Option<String>,
    /// Startup phases and their durations.
    pub startup: Vec<(&'static str, Duration)>,
    pub tracker: Arc<Tracker>,
    procs: Mutex<Vec<Proc>>,
    watchdog: Option<(Child, ChildStdin)>,
    logs_printed: AtomicBool,
    namespaces: AtomicUsize,
    /// Extra logs (our webhook's) printed with the cluster's on failure.
    extra_logs: Mutex<Vec<(String, PathBuf)>>,
}

impl Cluster {
    /// Starts a cluster and waits until every component is ready. Panics with the failing
    /// component's log when something does not come up.
    pub fn start(opts: ClusterOptions) -> Cluster {
        let total = Instant::now();
        let bin = control_plane_bin().to_path_buf();
        let dir = tempfile::Builder::new()
            .prefix(&format!("jrw-e2e-{}-", opts.name))
            .tempdir()
            .expect("creating the cluster's temporary folder")
            .keep();
        fs::create_dir_all(dir.join("logs")).expect("creating the logs folder");
        let tracker = Arc::new(Tracker {
            file: dir.join("pgids"),
            pgids: Mutex::new(Vec::new()),
        });
        tracker.write(&[]);
        let watchdog = start_watchdog(&dir);
        let mut cluster = Cluster {
            kubeconfig: dir.join("kubeconfig"),
            opts,
            dir,
            bin,
            etcd_port: 0,
            api_port: free_port(),
            jobset_ca_bundle: None,
            startup: Vec::new(),
            tracker,
            procs: Mutex::new(Vec::new()),
            watchdog: Some(watchdog),
            logs_printed: AtomicBool::new(false),
            namespaces: AtomicUsize::new(0),
            extra_logs: Mutex::new(Vec::new()),
        };
        eprintln!(
            "[e2e] starting cluster {:?} in {} (gates {}, JobSet CRD {}, kcm {}, jobset-controller {})",
            cluster.opts.name,
            cluster.dir.display(),
            cluster.opts.feature_gates,
            cluster.opts.jobset_crd,
            cluster.opts.controller_manager,
            cluster.opts.jobset_controller
        );
        cluster.phase("etcd", Cluster::start_etcd);
        cluster.phase("kube-apiserver", Cluster::start_apiserver);
        cluster.phase("JobSet CRD", Cluster::install_crd);
        if cluster.opts.controller_manager {
            cluster.phase("kube-controller-manager", Cluster::start_controller_manager);
        }
        if cluster.opts.jobset_controller {
            cluster.phase("jobset-controller", Cluster::start_jobset_controller);
        }
        if cluster.opts.scheduler {
            cluster.phase("kube-scheduler", Cluster::start_scheduler);
        }
        let phases: Vec<String> = cluster
            .startup
            .iter()
            .map(|(name, d)| format!("{name} {:.1}s", d.as_secs_f64()))
            .collect();
        report_time(
            &format!(
                "cluster {:?} ready ({})",
                cluster.opts.name,
                phases.join(", ")
            ),
            total.elapsed(),
        );
        cluster
    }

    fn phase(&mut self, name: &'static str, f: fn(&mut Cluster)) {
        let start = Instant::now();
        f(self);
        self.startup.push((name, start.elapsed()));
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    pub fn spawn(&self, name: &str, cmd: Command) {
        let proc = Proc::spawn(name, cmd, self.log_path(name), &self.tracker);
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(proc);
    }

    /// Panics with the log of `name` when that component has exited.
    pub fn assert_running(&self, name: &str) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = procs.iter_mut().find(|p| p.name == name) {
            p.assert_running();
        }
    }

    /// The log file of a component (`etcd`, `kube-apiserver`, `kube-controller-manager`,
    /// `jobset-controller`).
    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Adds a log file that is printed together with the cluster's on failure.
    pub fn add_log(&self, name: &str, path: PathBuf) {
        self.extra_logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_owned(), path));
    }

    fn start_etcd(&mut self) {
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

    fn start_apiserver(&mut self) {
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

    fn install_crd(&mut self) {
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

    fn start_controller_manager(&mut self) {
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

    fn start_scheduler(&mut self) {
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

    fn wait_default_service_account(&self, namespace: &str) {
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

    fn start_jobset_controller(&mut self) {
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

    /// Creates a fresh namespace `<prefix>-<n>` (with `labels`), waits for its `default`
    /// ServiceAccount when the controller manager runs, and returns a guard that prints the
    /// cluster's logs if the test fails while it lives.
    pub fn namespace(&self, prefix: &str, labels: &[(&str, &str)]) -> TestNamespace<'_> {
        let n = self.namespaces.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}-{n}");
        let mut ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        for (k, v) in labels {
            ns["metadata"]["labels"][*k] = json!(v);
        }
        self.kubectl_ok(&["create", "-f", "-"], Some(&ns.to_string()));
        if self.opts.controller_manager {
            self.wait_default_service_account(&name);
        }
        TestNamespace {
            cluster: self,
            name,
        }
    }

    /// Creates a namespace by exact name unless it exists.
    pub fn ensure_namespace(&self, name: &str) {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        self.kubectl_ok(&["apply", "-f", "-"], Some(&ns.to_string()));
    }

    /// Prints the tail of every component's log (once per cluster) and keeps the folder.
    pub fn print_logs(&self) {
        if self.logs_printed.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = fs::write(self.dir.join("keep"), b"");
        eprintln!(
            "[e2e] cluster {:?} logs (folder kept: {})",
            self.opts.name,
            self.dir.display()
        );
        for p in self.procs.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            p.print_log_tail();
        }
        for (name, path) in self
            .extra_logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            eprintln!(
                "----- last {LOG_TAIL_LINES} lines of {name} ({}) -----\n{}\n----- end of {name} -----",
                path.display(),
                tail(path, LOG_TAIL_LINES)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            self.print_logs();
        }
        let start = Instant::now();
        {
            // etcd last: kube-apiserver does not finish its graceful shutdown without it.
            let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
            let (mut etcd, mut rest): (Vec<&mut Proc>, Vec<&mut Proc>) =
                procs.iter_mut().partition(|p| p.name == "etcd");
            stop_all(&mut rest, &self.tracker);
            stop_all(&mut etcd, &self.tracker);
        }
        if let Some((mut watchdog, stdin)) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
            drop(stdin);
        }
        let keep = failed
            || self.dir.join("keep").exists()
            || std::env::var_os("E2E_KEEP").is_some_and(|v| v == "1");
        if !keep {
            let _ = fs::remove_dir_all(&self.dir);
        }
        report_time(
            &format!("cluster {:?} stopped", self.opts.name),
            start.elapsed(),
        );
    }
}

/// A per-test namespace. Dropped while its test panics, it prints the cluster's logs (the
/// shared cluster is never dropped, so this is how its logs reach a failing test's output).
pub struct TestNamespace<'c> {
    pub cluster: &'c Cluster,
    pub name: String,
}

impl std::ops::Deref for TestNamespace<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.cluster.print_logs();
        }
    }
}

/// Starts the watchdog (see the module comment) for `dir`.
fn start_watchdog(dir: &Path) -> (Child, ChildStdin) {
    const SCRIPT: &str = r#"
trap '' INT HUP
read -r _ || true
groups=$(cat "$1/pgids" 2>/dev/null)
for p in $groups; do kill -TERM "-$p" 2>/dev/null; done
sleep 3
for p in $groups; do kill -KILL "-$p" 2>/dev/null; done
if [ ! -e "$1/keep" ] && [ "$2" != 1 ]; then rm -rf "$1"; fi
"#;
    let keep = std::env::var("E2E_KEEP").unwrap_or_default();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("e2e-watchdog")
        .arg(dir)
        .arg(keep)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the watchdog shell");
    let stdin = child.stdin.take().expect("the watchdog's stdin pipe");
    (child, stdin)
}

/// JobSet's mutating and validating webhook configurations as its kustomize config produces
/// them (names with the `jobset-` prefix, the Pod webhooks' objectSelector from its
/// patches), with `url` client configs on loopback.
fn jobset_webhook_configurations(port: u16, ca_bundle: &str) -> Value {
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
