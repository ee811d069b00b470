//! Starting the node's runtime: containerd with its images, the kubelet in its own cgroup root.

use super::*;

impl Node {
    pub(super) fn start_containerd(&mut self) {
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

    pub(super) fn path_env(&self) -> std::ffi::OsString {
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
    pub(super) fn import_images(&self) {
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

    pub(super) fn start_kubelet(&mut self, cluster: &Cluster) {
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
    pub(super) fn create_cgroup_root(&self) {
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
}
