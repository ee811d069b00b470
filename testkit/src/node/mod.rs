//! A real node for the end-to-end tests: containerd v2.4.2 (+ its runc shim and `ctr`, built by
//! `tests/cluster/build.sh --module node`), Debian's `runc`, and kubelet v1.36.2 (built with the
//! control plane), registered to a [`Cluster`] that runs kube-scheduler.
//!
//! Everything lives in one temporary folder `/tmp/jrw-node-<name>-XXXXXX`: containerd's root,
//! state, sockets and runc state, kubelet's root dir, pod logs, the images. The kubelet's
//! cgroup root is `/<folder name>` in every cgroup hierarchy. Settings this machine needs
//! (cgroup v1, root without CAP_SYS_RESOURCE, no registry, no CNI) are explained where they
//! are set.
//!
//! Cleanup (Drop, also while a test panics; and a watchdog when the test process dies
//! without dropping): the kubelet is stopped, every container task is killed through `ctr`,
//! containerd is stopped, then [`CLEANUP`] kills what is left *that this node started* (a
//! process whose command line names the node's folder, or whose cgroup is under the node's
//! cgroup root), lazily unmounts the mounts under the node's folder, removes the node's
//! cgroups and the folder. Nothing else on the machine is touched.
//!
//! Not under the folder (fixed paths in the programs): the runc shims' sockets
//! `/run/containerd/s/<hash>` (the shim removes its own; the cleanup removes those of the
//! node's shims it had to kill), and the kernel settings every kubelet applies at start (`vm.overcommit_memory=1`,
//! `kernel.panic=10`, `kernel.panic_on_oops=1`).

mod runtime;
mod workloads;

pub use workloads::{
    jobset_condition, node_jobset, node_pod_spec, pod_summary, workload_container,
};

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Cluster, Proc, Tracker, spawn_watchdog, stop_all};
use crate::util::{free_port, repo_root, report_time, tail, wait_for};

/// Image references of the two test images (imported, never pulled).
pub const PAUSE_IMAGE: &str = "docker.io/library/jrw-pause:1";
pub const WORKLOAD_IMAGE: &str = "docker.io/library/jrw-workload:1";
/// The kubelet feature every `RestartAllContainers` pod needs (node declared feature).
pub const RESTART_ALL_FEATURE: &str = "RestartAllContainersOnContainerExits";

const CONTAINERD_READY: Duration = Duration::from_secs(60);
const NODE_READY: Duration = Duration::from_secs(120);
const LOG_TAIL_LINES: usize = 80;

/// Kills what the node left behind, unmounts, removes its cgroups and (unless kept) its
/// folder. `$1` folder, `$2` cgroup root name, `$3` "1" to keep the folder. Used by `Drop`
/// and, when the test process dies without dropping, by the watchdog.
const CLEANUP: &str = r#"
dir=$1 cg=$2 keep=$3
mine() { # a process this node started: its command line names the folder, or its cgroup is ours
    [ "$1" = "$$" ] && return 1
    tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -qF "$dir/" && return 0
    grep -qF ":/$cg/" "/proc/$1/cgroup" 2>/dev/null && return 0
    grep -qE ":/$cg\$" "/proc/$1/cgroup" 2>/dev/null
}
# The runc shims listen on /run/containerd/s/<hash> (a fixed folder); a killed shim leaves its
# socket behind, so note the sockets of this node's shims first and remove them afterwards.
socks=
for p in /proc/[0-9]*; do
    tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -qF -- "-address $dir/" || continue
    for f in "$p"/fd/*; do
        l=$(readlink "$f" 2>/dev/null) || continue
        case $l in
        socket:*)
            i=${l#socket:?}
            i=${i%?}
            socks="$socks $(awk -v i="$i" '$7 == i && index($8, "/run/containerd/s/") == 1 { print $8 }' /proc/net/unix)"
            ;;
        esac
    done
done
for round in 1 2 3 4 5; do
    found=
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        if mine "$p"; then kill -KILL "$p" 2>/dev/null; found=1; fi
    done
    [ -z "$found" ] && break
    sleep 0.3
done
for sock in $socks; do rm -f "$sock"; done
awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null
done
for h in /sys/fs/cgroup/*; do
    [ -d "$h/$cg" ] || continue
    for i in 1 2 3 4 5; do
        find "$h/$cg" -depth -type d -exec rmdir {} + 2>/dev/null
        [ -d "$h/$cg" ] || break
        sleep 0.3
    done
done
if [ "$keep" != 1 ] && [ ! -e "$dir/keep" ]; then rm -rf "$dir"; fi
"#;

#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Short name for the folder, the node name and log lines.
    pub name: &'static str,
    /// kubelet feature gate `RestartAllContainersOnContainerExits` (on by default in 1.36).
    pub restart_all_containers: bool,
    /// kubelet `crashLoopBackOff.maxContainerRestartPeriod` (gate `KubeletCrashLoopBackOffMax`),
    /// e.g. `"2s"`; `None` keeps the default back-off (10 s doubling to 5 min).
    pub max_container_restart_period: Option<&'static str>,
    /// Register with the taint [`TEST_TAINT`] (NoSchedule), so that pods of other tests
    /// never land here.
    pub taint: bool,
}

/// The taint of a node started with `taint: true`.
pub const TEST_TAINT: &str = "jrw.test/no-pods";

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            name: "node",
            restart_all_containers: true,
            max_container_restart_period: None,
            taint: false,
        }
    }
}

/// The node programs from `tests/cluster/build.sh --module node` (containerd,
/// containerd-shim-runc-v2, ctr, pause, workload, imagepack). Panics with build.sh's output.
pub fn node_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let start = Instant::now();
        let script = repo_root().join("tests/cluster/build.sh");
        let out = Command::new(&script)
            .args(["--module", "node"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success() && !stdout.is_empty(),
            "the node tests need containerd: `tests/cluster/build.sh --module node` failed ({}). \
             It needs Go >= 1.26 and the Go module proxy. Its output:\n{}{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        report_time("node binaries (build.sh --module node)", start.elapsed());
        PathBuf::from(stdout)
    })
}

/// The `runc` on PATH (Debian's package); panics saying what to install.
fn runc() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("runc"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the node tests need runc on PATH (Debian: `apt-get install -y runc`; \
                 tests/run-all.sh installs it). crun 1.8 does not work with containerd 2.4 \
                 (`unknown version specified`)."
            )
        })
}

/// A non-loopback IPv4 address of this machine: kubelet refuses a loopback `--node-ip`.
fn node_ip() -> String {
    // Connecting a UDP socket sends nothing; it only picks the outgoing interface's address.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
        .and_then(|s| s.local_addr());
    match probe {
        Ok(addr) if !addr.ip().is_loopback() && !addr.ip().is_unspecified() => {
            addr.ip().to_string()
        }
        other => panic!(
            "the node tests need a non-loopback IPv4 address with a route (kubelet refuses a \
             loopback --node-ip); found {other:?}"
        ),
    }
}

pub struct Node {
    pub opts: NodeOptions,
    pub dir: PathBuf,
    /// The Node object's name.
    pub name: String,
    /// `/<folder name>`: the kubelet's cgroup root.
    pub cgroup_root: String,
    pub bin: PathBuf,
    pub socket: PathBuf,
    pub startup: Vec<(&'static str, Duration)>,
    kubelet_root: PathBuf,
    tracker: Arc<Tracker>,
    containerd: Option<Proc>,
    kubelet: Option<Proc>,
    watchdog: Option<(Child, ChildStdin)>,
}

impl Node {
    /// Starts containerd, imports the test images and starts a kubelet registered to
    /// `cluster` (which must run kube-scheduler for pods to land here); returns once the Node
    /// is Ready. Panics with the logs when something does not come up.
    pub fn start(cluster: &Cluster, opts: NodeOptions) -> Node {
        let total = Instant::now();
        let bin = node_bin().to_path_buf();
        let runc = runc();
        let dir = tempfile::Builder::new()
            .prefix(&format!("jrw-node-{}-", opts.name))
            .tempdir_in("/tmp")
            .expect("creating the node's temporary folder")
            .keep();
        let base = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a temporary folder name")
            .to_owned();
        fs::create_dir_all(dir.join("logs")).expect("creating the node's logs folder");
        let watchdog = start_watchdog(&dir, &base);
        let mut node = Node {
            name: base.to_lowercase(),
            cgroup_root: format!("/{base}"),
            socket: dir.join("containerd.sock"),
            kubelet_root: dir.join("kubelet"),
            bin,
            startup: Vec::new(),
            tracker: cluster.tracker.clone(),
            containerd: None,
            kubelet: None,
            watchdog: Some(watchdog),
            opts,
            dir,
        };
        eprintln!(
            "[e2e] starting node {:?} in {} (runc {}, RestartAllContainersOnContainerExits={}, maxContainerRestartPeriod {:?})",
            node.name,
            node.dir.display(),
            runc.display(),
            node.opts.restart_all_containers,
            node.opts.max_container_restart_period
        );
        let t = Instant::now();
        node.start_containerd();
        node.startup.push(("containerd", t.elapsed()));
        let t = Instant::now();
        node.import_images();
        node.startup.push(("images", t.elapsed()));
        let t = Instant::now();
        node.start_kubelet(cluster);
        node.startup.push(("kubelet Ready", t.elapsed()));
        let phases: Vec<String> = node
            .startup
            .iter()
            .map(|(n, d)| format!("{n} {:.1}s", d.as_secs_f64()))
            .collect();
        report_time(
            &format!("node {:?} ready ({})", node.opts.name, phases.join(", ")),
            total.elapsed(),
        );
        node
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// Panics with the logs when containerd or the kubelet has exited.
    pub fn assert_running(&mut self) {
        for p in [self.containerd.as_mut(), self.kubelet.as_mut()]
            .into_iter()
            .flatten()
        {
            p.assert_running();
        }
    }

    /// The Node object as the API server stores it.
    pub fn object(&self, cluster: &Cluster) -> Value {
        cluster.get_json(&["node", &self.name])
    }

    /// `status.declaredFeatures` of the Node object.
    pub fn declared_features(&self, cluster: &Cluster) -> Vec<String> {
        self.object(cluster)["status"]["declaredFeatures"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect()
    }

    /// The kubelet's folder of a pod's emptyDir volume (`volume`), readable from the host.
    pub fn empty_dir(&self, pod_uid: &str, volume: &str) -> PathBuf {
        self.kubelet_root
            .join("pods")
            .join(pod_uid)
            .join("volumes/kubernetes.io~empty-dir")
            .join(volume)
    }

    /// A folder on the host that pods can mount with `hostPath` (under the node's folder).
    pub fn host_dir(&self, name: &str) -> PathBuf {
        let path = self.dir.join("host").join(name);
        fs::create_dir_all(&path).expect("creating a hostPath folder");
        path
    }

    pub fn print_logs(&self) {
        let _ = fs::write(self.dir.join("keep"), b"");
        eprintln!(
            "[e2e] node {:?} logs (folder kept: {})",
            self.name,
            self.dir.display()
        );
        for p in [self.containerd.as_ref(), self.kubelet.as_ref()]
            .into_iter()
            .flatten()
        {
            p.print_log_tail();
        }
    }

    /// Kills every container task through containerd, so that no shim or container outlives
    /// the node (the shims are in their own process groups).
    fn kill_tasks(&self) {
        let out = self.ctr(&["tasks", "list", "--quiet"]);
        let list = String::from_utf8_lossy(&out.stdout).into_owned();
        for id in list.split_whitespace() {
            let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
        }
        for id in list.split_whitespace() {
            let _ = self.ctr(&["tasks", "delete", "--force", id]);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            self.print_logs();
        }
        let start = Instant::now();
        if let Some(mut kubelet) = self.kubelet.take() {
            stop_all(&mut [&mut kubelet], &self.tracker);
        }
        if self
            .containerd
            .as_mut()
            .is_some_and(|c| matches!(c.child.try_wait(), Ok(None)))
        {
            self.kill_tasks();
        }
        if let Some(mut containerd) = self.containerd.take() {
            stop_all(&mut [&mut containerd], &self.tracker);
        }
        if let Some((mut watchdog, stdin)) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
            drop(stdin);
        }
        let keep = failed || std::env::var_os("E2E_KEEP").is_some_and(|v| v == "1");
        let base = self.cgroup_root.trim_start_matches('/').to_owned();
        let status = Command::new("sh")
            .arg("-c")
            .arg(CLEANUP)
            .arg("node-cleanup")
            .arg(&self.dir)
            .arg(&base)
            .arg(if keep { "1" } else { "0" })
            .stdin(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "[e2e] node {:?}: the cleanup script failed ({status:?})",
                self.name
            );
        }
        report_time(&format!("node {:?} stopped", self.name), start.elapsed());
    }
}

/// A `sh` in its own process group that runs [`CLEANUP`] once the test process is gone
/// (its stdin pipe closes) without having dropped the node.
fn start_watchdog(dir: &Path, base: &str) -> (Child, ChildStdin) {
    let script = format!("trap '' INT HUP\nread -r _ || true\nsleep 1\n{CLEANUP}");
    let keep = std::env::var("E2E_KEEP").unwrap_or_default();
    let (child, mut stdin) = spawn_watchdog(
        "node watchdog",
        &script,
        &[
            "node-watchdog".as_ref(),
            dir.as_os_str(),
            base.as_ref(),
            keep.as_ref(),
        ],
    );
    // Nothing is ever written; a failed flush only means the watchdog is already gone.
    let _ = stdin.flush();
    (child, stdin)
}
