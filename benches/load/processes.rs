//! The servers under load: each its own process, pinned to core 0.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::util::free_port;

use crate::WEBHOOK_PARENT;

/// Core pinning: servers on core 0, the load generator on core 1.
pub struct Pinning {
    pub enabled: bool,
    pub priority: bool,
}

impl Pinning {
    pub fn setup(priority: bool) -> Self {
        if priority {
            let ok = Command::new("renice")
                .args(["-n", "-10", "-p", &std::process::id().to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "--priority: renice failed (it needs root)");
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let has_taskset = Command::new("taskset")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if cpus < 2 || !has_taskset {
            eprintln!("load: not pinning (cpus {cpus}, taskset found: {has_taskset})");
            return Self {
                enabled: false,
                priority,
            };
        }
        // Before any other thread exists: pin this process (the load generator) to core 1.
        let ok = Command::new("taskset")
            .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "taskset could not pin the load generator to core 1");
        Self {
            enabled: true,
            priority,
        }
    }

    pub fn server_command(&self, exe: &Path) -> Command {
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if self.enabled {
            argv.extend(["taskset".into(), "-c".into(), "0".into()]);
        }
        if self.priority {
            argv.extend(["nice".into(), "-n".into(), "-10".into()]);
        }
        argv.push(exe.into());
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    }
}

pub struct Server {
    pub name: &'static str,
    pub child: Child,
    pub addr: SocketAddr,
    pub req_path: &'static str,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn server_log() -> Stdio {
    // LOAD_SERVER_LOG=path keeps the servers' logs (they grow fast under load).
    match std::env::var_os("LOAD_SERVER_LOG") {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("LOAD_SERVER_LOG"),
        ),
        None => Stdio::null(),
    }
}

pub fn start_floor(pin: &Pinning, name: &'static str, mode: &str, certs: &Path) -> Server {
    let exe = std::env::current_exe().expect("this bench's path");
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut child = pin
        .server_command(&exe)
        .arg("floor-server")
        .arg(mode)
        .arg(addr.to_string())
        .arg(certs.join("tls.crt"))
        .arg(certs.join("tls.key"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(server_log())
        .spawn()
        .expect("starting a floor server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("reading the floor's ready line");
    assert_eq!(line.trim(), "ready", "{name} did not start");
    Server {
        name,
        child,
        addr,
        req_path: "/",
    }
}

/// Starts `serve` of this build (`webhook`), of another binary (`exe`: an earlier build, for a
/// before/after comparison in the same run), or the library's `serve()` with a parent-aware
/// cluster view (`webhook+parent`).
pub fn start_webhook(
    pin: &Pinning,
    name: &'static str,
    certs: &Path,
    exe: Option<&Path>,
) -> Server {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let cmd = if name != WEBHOOK_PARENT {
        let exe = exe.unwrap_or(Path::new(env!("CARGO_BIN_EXE_jobset-restart-webhook")));
        let mut c = pin.server_command(exe);
        c.arg("serve")
            .arg(format!("--listen={addr}"))
            .arg(format!("--tls-cert={}", certs.join("tls.crt").display()))
            .arg(format!("--tls-key={}", certs.join("tls.key").display()))
            .arg("--targets=jobsets,pods")
            .arg("--no-cluster")
            .arg("--log-format=json");
        c
    } else {
        let mut c = pin.server_command(&std::env::current_exe().expect("this bench's path"));
        c.arg("floor-server")
            .arg("webhook-parent")
            .arg(addr.to_string())
            .arg(certs.join("tls.crt"))
            .arg(certs.join("tls.key"));
        c
    };
    let mut cmd = cmd;
    cmd.arg(format!("--metrics-listen={admin}"))
        .env_remove("KUBECONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(server_log());
    let mut child = cmd.spawn().expect("starting the webhook");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{name} exited at start ({status}); rerun with LOAD_SERVER_LOG=/tmp/serve.log");
        }
        if http_get(admin, "/readyz").is_some_and(|s| s == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "{name} not ready within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        name,
        child,
        addr,
        req_path: "/mutate",
    }
}

/// The status of `GET path` over plain HTTP (`None` when there is no answer yet).
fn http_get(addr: SocketAddr, path: &str) -> Option<u16> {
    testkit::util::http_get(addr, path)
        .ok()
        .map(|(status, _)| status)
}
