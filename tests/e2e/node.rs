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

use std::fs;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Cluster, Proc, Tracker, stop_all};
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

    fn start_containerd(&mut self) {
        let d = |p: &str| self.dir.join(p).display().to_string();
        // No CNI plugin is ever called (the test pods use the host network), but the CRI
        // plugin reports the network ready only once it has loaded a network config, and the
        // kubelet keeps the node NotReady until then.
        fs::create_dir_all(self.dir.join("cni")).expect("creating the CNI config folder");
        fs::write(
            self.dir.join("cni/10-none.conflist"),
            r#"{"cniVersion": "1.0.0", "name": "jrw-host-network-only", "plugins": [{"type": "loopback"}]}"#,
        )
        .expect("writing the CNI config");
        let config = format!(
            r#"version = 3
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause}"

[plugins."io.containerd.cri.v1.runtime"]
  # root here lacks CAP_SYS_RESOURCE: without this every sandbox fails with
  # "can't get final child's PID from pipe: EOF" (runc cannot lower oom_score_adj).
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni}"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
    BinaryName = "{runc}"
    Root = "{runc_root}"
    SystemdCgroup = false
"#,
            root = d("containerd/root"),
            state = d("containerd/state"),
            sock = self.socket.display(),
            opt = d("containerd/opt"),
            pause = PAUSE_IMAGE,
            cni_bin = d("cni/bin"),
            cni = d("cni"),
            runc = runc().display(),
            runc_root = d("runc"),
        );
        let config_path = self.dir.join("containerd.toml");
        fs::write(&config_path, config).expect("writing containerd.toml");
        let mut cmd = Command::new(self.bin.join("containerd"));
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--log-level=info")
            // containerd finds containerd-shim-runc-v2 on PATH.
            .env("PATH", self.path_env());
        let proc = Proc::spawn(
            "containerd",
            cmd,
            self.log_path("containerd"),
            &self.tracker,
        );
        self.containerd = Some(proc);
        wait_for(
            "containerd to answer `ctr version`",
            CONTAINERD_READY,
            || {
                self.assert_running();
                let out = self.ctr(&["version"]);
                if out.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
                }
            },
        );
    }

    fn path_env(&self) -> std::ffi::OsString {
        let mut paths = vec![self.bin.clone()];
        if let Some(p) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&p));
        }
        std::env::join_paths(paths).expect("joining PATH")
    }

    /// `ctr --address <socket> -n k8s.io ARGS` (the CRI namespace).
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.bin.join("ctr"))
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io", "--timeout", "30s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running ctr {}: {e}", args.join(" ")))
    }

    /// Packs the static `pause` and `workload` programs into docker-archive images and
    /// imports them (there is no registry; pods use `imagePullPolicy: Never`).
    fn import_images(&self) {
        let images = self.dir.join("images");
        fs::create_dir_all(&images).expect("creating the images folder");
        for (program, reference) in [("pause", PAUSE_IMAGE), ("workload", WORKLOAD_IMAGE)] {
            let tarball = images.join(format!("{program}.tar"));
            let src = self.bin.join(program);
            let out = Command::new(self.bin.join("imagepack"))
                .arg("-o")
                .arg(&tarball)
                .args(["-ref", reference, "-entrypoint", &format!("/{program}")])
                .arg("-file")
                .arg(format!("{}:/{program}", src.display()))
                .output()
                .expect("running imagepack");
            assert!(
                out.status.success(),
                "imagepack {program} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let tar = tarball.display().to_string();
            let out = self.ctr(&["images", "import", &tar]);
            assert!(
                out.status.success(),
                "ctr images import {tar} failed: {}{}\ncontainerd's log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout),
                tail(&self.log_path("containerd"), LOG_TAIL_LINES)
            );
        }
    }

    fn start_kubelet(&mut self, cluster: &Cluster) {
        self.create_cgroup_root();
        let d = |p: &str| self.dir.join(p).display().to_string();
        let mut gates = vec![
            "ContainerRestartRules: true".to_owned(),
            format!(
                "{RESTART_ALL_FEATURE}: {}",
                self.opts.restart_all_containers
            ),
            "NodeDeclaredFeatures: true".to_owned(),
        ];
        let mut backoff = String::new();
        if let Some(max) = self.opts.max_container_restart_period {
            gates.push("KubeletCrashLoopBackOffMax: true".to_owned());
            backoff = format!("crashLoopBackOff:\n  maxContainerRestartPeriod: {max}\n");
        }
        let config = format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\n\
             kind: KubeletConfiguration\n\
             # cgroup v1 here: 1.36 refuses it unless told not to; no systemd, so cgroupfs.\n\
             failCgroupV1: false\n\
             cgroupDriver: cgroupfs\n\
             cgroupRoot: {cgroup_root}\n\
             # root here cannot lower its own oom_score_adj (no CAP_SYS_RESOURCE).\n\
             oomScoreAdj: 0\n\
             failSwapOn: false\n\
             containerRuntimeEndpoint: unix://{sock}\n\
             imageServiceEndpoint: unix://{sock}\n\
             podLogsDir: {pod_logs}\n\
             address: 127.0.0.1\n\
             port: {port}\n\
             healthzBindAddress: 127.0.0.1\n\
             healthzPort: {healthz}\n\
             readOnlyPort: 0\n\
             authentication:\n  anonymous: {{enabled: false}}\n  webhook: {{enabled: false}}\n\
             authorization: {{mode: AlwaysAllow}}\n\
             # the disk is shared with the builds: never evict or garbage-collect the test images.\n\
             evictionHard: {{memory.available: 1Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}}\n\
             imageGCHighThresholdPercent: 100\n\
             imageGCLowThresholdPercent: 99\n\
             featureGates:\n  {gates}\n\
             {backoff}{taints}",
            cgroup_root = self.cgroup_root,
            sock = self.socket.display(),
            pod_logs = d("pod-logs"),
            port = free_port(),
            healthz = free_port(),
            gates = gates.join("\n  "),
            taints = if self.opts.taint {
                format!("registerWithTaints:\n- {{key: {TEST_TAINT}, effect: NoSchedule}}\n")
            } else {
                String::new()
            },
        );
        let config_path = self.dir.join("kubelet.yaml");
        fs::write(&config_path, config).expect("writing kubelet.yaml");
        let mut cmd = Command::new(cluster.bin.join("kubelet"));
        cmd.arg(format!("--config={}", config_path.display()))
            .arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
            .arg(format!("--root-dir={}", self.kubelet_root.display()))
            .arg(format!("--cert-dir={}", d("kubelet-pki")))
            .arg(format!("--hostname-override={}", self.name))
            .arg(format!("--node-ip={}", node_ip()))
            .arg("--v=2")
            .env_remove("KUBECONFIG")
            .env("PATH", self.path_env());
        self.kubelet = Some(Proc::spawn(
            "kubelet",
            cmd,
            self.log_path("kubelet"),
            &self.tracker,
        ));
        wait_for(
            &format!("node {} to be Ready", self.name),
            NODE_READY,
            || {
                self.assert_running();
                let out = cluster.kubectl(&["get", "node", &self.name, "-o", "json"], None);
                if !out.status.success() {
                    return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
                }
                let node: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
                let ready = node["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "Ready")
                    .cloned()
                    .unwrap_or(Value::Null);
                // kube-controller-manager removes its not-ready taint once the node is Ready.
                let tainted = node["spec"]["taints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|t| t["key"] != TEST_TAINT);
                if ready["status"] == "True" && !tainted {
                    Ok(())
                } else {
                    Err(format!(
                        "Ready={} ({}), taints {}",
                        ready["status"], ready["message"], node["spec"]["taints"]
                    ))
                }
            },
        );
    }

    /// Creates `/<folder name>` in every cgroup hierarchy (kubelet refuses a cgroup root that
    /// does not exist); a new cpuset cgroup starts with no CPUs and no memory nodes, so those
    /// are copied from the parent.
    fn create_cgroup_root(&self) {
        let hierarchies = fs::read_dir("/sys/fs/cgroup").expect("listing /sys/fs/cgroup");
        for h in hierarchies.flatten() {
            let path = h.path().join(self.cgroup_root.trim_start_matches('/'));
            if !h.path().is_dir() || fs::create_dir(&path).is_err() {
                continue;
            }
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(value) = fs::read_to_string(h.path().join(file)) {
                    let _ = fs::write(path.join(file), value.trim());
                }
            }
        }
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
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("node-watchdog")
        .arg(dir)
        .arg(base)
        .arg(keep)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the node watchdog shell");
    let mut stdin = child.stdin.take().expect("the node watchdog's stdin pipe");
    // Nothing is ever written; a failed flush only means the watchdog is already gone.
    let _ = stdin.flush();
    (child, stdin)
}

/// A pod template for the node: host network (no CNI), no service-account token (fewer
/// mounts), a short grace period, and `restartPolicy: Never` spelled out (what the webhook
/// would set), so that a JobSet the webhook does not see is not defaulted to `OnFailure`,
/// whose kubelet restarts would blur the "recreate" case.
pub fn node_pod_spec(containers: Value) -> Value {
    json!({
        "restartPolicy": "Never",
        "hostNetwork": true,
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": 2,
        "containers": containers,
    })
}

/// A workload container: `workload -name NAME ARGS...`.
pub fn workload_container(name: &str, args: &[&str]) -> Value {
    let mut all = vec!["-name".to_owned(), name.to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    json!({
        "name": name,
        "image": WORKLOAD_IMAGE,
        "imagePullPolicy": "Never",
        "args": all,
    })
}

/// A JobSet of `replicas` one-pod Jobs on the node (backoffLimit 0, JobSet `maxRestarts`),
/// pod spec from [`node_pod_spec`] with an emptyDir `data` at /data in every container, the
/// JobSet's job index in `JOB_INDEX`, and `annotations` on the JobSet.
pub fn node_jobset(
    name: &str,
    replicas: u32,
    max_restarts: u32,
    annotations: &[(&str, &str)],
    mut pod: Value,
) -> Value {
    let mount = json!([{"name": "data", "mountPath": "/data"}]);
    let env = json!([{"name": "JOB_INDEX", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.labels['jobset.sigs.k8s.io/job-index']"}}}]);
    for list in ["initContainers", "containers"] {
        if let Some(containers) = pod[list].as_array_mut() {
            for c in containers {
                if c["volumeMounts"].is_null() {
                    c["volumeMounts"] = mount.clone();
                }
                c["env"] = env.clone();
            }
        }
    }
    let mut volumes = vec![json!({"name": "data", "emptyDir": {}})];
    if let Some(extra) = pod["volumes"].as_array() {
        volumes.extend(extra.iter().cloned());
    }
    pod["volumes"] = json!(volumes);
    let mut js = json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": {"maxRestarts": max_restarts},
            "replicatedJobs": [{
                "name": "workers",
                "replicas": replicas,
                "template": {"spec": {
                    "parallelism": 1,
                    "completions": 1,
                    "backoffLimit": 0,
                    "template": {"spec": pod}
                }}
            }]
        }
    });
    for (k, v) in annotations {
        js["metadata"]["annotations"][*k] = json!(v);
    }
    js
}

/// Whether the JobSet has the condition `kind` set to True.
pub fn jobset_condition(js: &Value, kind: &str) -> bool {
    js["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

/// One line per pod: name, uid, phase, node, and per container state and restart count.
pub fn pod_summary(pods: &[Value]) -> String {
    pods.iter()
        .map(|p| {
            let statuses: Vec<String> = ["initContainerStatuses", "containerStatuses"]
                .iter()
                .flat_map(|k| p["status"][*k].as_array().cloned().unwrap_or_default())
                .map(|s| {
                    let state = s["state"]
                        .as_object()
                        .and_then(|o| o.keys().next().cloned())
                        .unwrap_or_default();
                    format!(
                        "{}={state}/r{}",
                        s["name"].as_str().unwrap_or("?"),
                        s["restartCount"]
                    )
                })
                .collect();
            format!(
                "\n  {} uid={} phase={} node={} [{}]",
                p["metadata"]["name"].as_str().unwrap_or("?"),
                p["metadata"]["uid"].as_str().unwrap_or("?"),
                p["status"]["phase"].as_str().unwrap_or("?"),
                p["spec"]["nodeName"].as_str().unwrap_or("-"),
                statuses.join(" ")
            )
        })
        .collect()
}
