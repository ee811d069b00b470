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

mod components;
mod kubectl;
mod process;

pub use components::{build_sh, control_plane_bin, example_manifests, jobset_module_dir};
pub use kubectl::ADMIN_TOKEN;
pub use process::{Proc, Tracker, spawn_watchdog, stop_all};

use std::fs;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::{free_port, report_time, tail};

use process::start_watchdog;

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
    /// Run kube-scheduler (pods get bound to the harness's nodes, see `crate::node`).
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
        } else {
            // Without a controller manager nothing makes the `default` ServiceAccount, which
            // the webhook's capability probe (dry-run Pods in `default`) needs: refused, the
            // capability stays unknown and the default action `Restart` (README: Opting in).
            cluster.kubectl_ok(
                &["apply", "-f", "-"],
                Some("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: default}\n"),
            );
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

    pub(super) fn log_path(&self, name: &str) -> PathBuf {
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
