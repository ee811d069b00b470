//! Load benchmark of `serve` against the physical floor of the same stack (issue 7).
//!
//! `cargo bench --bench load` (about 7 minutes) or `cargo bench --bench load -- --quick`
//! (under 2 minutes). Run without `--bench` (as `cargo test --all-targets` does), it only
//! checks that every server answers every body correctly (a few seconds).
//!
//! Servers, each its own process on core 0 (`taskset -c 0`), all started at the beginning and
//! loaded one at a time:
//! - `tls floor` / `parse floor`: this binary's `floor-server` (see `floor.rs`);
//! - `webhook`: the shipped binary, `jobset-restart-webhook serve --targets jobsets,pods
//!   --log-format json` with the default log filter (one JSON line per review, to /dev/null);
//! - `webhook+parent` (pod body only): the library's `serve()` with a cluster view that knows
//!   the pod's parent JobSet, so that the pod review mutates (offline, the binary cannot know
//!   it and answers "parent unknown").
//!
//! The load generator (`client.rs`) runs in this process on core 1. Saturation runs are
//! repeated in rounds that alternate the servers (ABAB), and ratios are taken per round, so
//! that background load on the shared machine hits the floors and the webhook alike.
//! Other subcommands: `floor-server MODE ...` (the floors), `client ADDR CA BODY CONNS SECS`
//! (load an already running server, e.g. one under `perf record`).

mod bodies;
mod client;
mod floor;

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use client::{Conn, Run, Target};

const WEBHOOK: &str = "webhook";
const WEBHOOK_PARENT: &str = "webhook+parent";
const TLS_FLOOR: &str = "tls floor";
const PARSE_FLOOR: &str = "parse floor";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("floor-server") => return floor::main(&args[1..]),
        Some("client") => return client_only(&args[1..]),
        Some("pieces") => return pieces(&args[1..]),
        _ => {}
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let opts = Opts::parse(&args);
    if !opts.bench {
        smoke();
        return;
    }
    bench(&opts);
}

struct Opts {
    bench: bool,
    quick: bool,
    /// `--priority`: servers and load generator at nice -10, ahead of other jobs on the
    /// machine (what dedicated cores would show; takes CPU from those jobs while it runs).
    priority: bool,
    json: PathBuf,
}

impl Opts {
    fn parse(args: &[String]) -> Self {
        let mut o = Opts {
            bench: false,
            quick: false,
            priority: false,
            json: Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-load.json"),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--bench" => o.bench = true,
                "--quick" => o.quick = true,
                "--priority" => o.priority = true,
                "--json" => o.json = it.next().expect("--json PATH").into(),
                other if other.starts_with("--") => {}
                other => eprintln!("load: ignoring argument {other:?}"),
            }
        }
        o
    }
}

// ---------------------------------------------------------------------------------------
// Processes

/// Core pinning: servers on core 0, the load generator on core 1.
struct Pinning {
    enabled: bool,
    priority: bool,
}

impl Pinning {
    fn setup(priority: bool) -> Self {
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

    fn server_command(&self, exe: &Path) -> Command {
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

struct Server {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    req_path: &'static str,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

fn server_log() -> Stdio {
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

fn start_floor(pin: &Pinning, name: &'static str, mode: &str, certs: &Path) -> Server {
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

fn start_webhook(pin: &Pinning, name: &'static str, certs: &Path) -> Server {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let cmd = if name == WEBHOOK {
        let mut c = pin.server_command(Path::new(env!("CARGO_BIN_EXE_jobset-restart-webhook")));
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

fn http_get(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// /proc

const CLK_TCK: f64 = 100.0;

/// CPU seconds a process has run (all its threads; nanosecond `schedstat`, not 10 ms ticks).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// (busy, total) jiffies of cores 0 and 1.
fn cores() -> [(f64, f64); 2] {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut out = [(0.0, 0.0); 2];
    for (i, name) in ["cpu0 ", "cpu1 "].iter().enumerate() {
        if let Some(line) = stat.lines().find(|l| l.starts_with(name)) {
            let v: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: f64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
            out[i] = (total - idle, total);
        }
    }
    out
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS (`clear_refs` 5), so that the next peak is per phase.
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------
// Measurement

#[derive(Clone, Copy)]
enum Load {
    Saturate,
    Rate(f64),
    Fresh,
}

/// One run with the CPU it cost on both sides.
struct Measured {
    run: Run,
    wall: f64,
    server_cpu: f64,
    client_cpu: f64,
    /// Busy share of core 0 / core 1 not due to the server / the client (other jobs).
    foreign: [f64; 2],
}

impl Measured {
    fn us(&self, q: f64) -> f64 {
        self.run.latency.value_at_quantile(q) as f64 / 1000.0
    }
    /// Server CPU per answered request (warm-up included on both sides), µs.
    fn cpu_per_req(&self) -> f64 {
        self.server_cpu / (self.run.all.max(1) as f64) * 1e6
    }
    fn to_json(&self) -> Value {
        json!({
            "ok": self.run.ok, "errors": self.run.errors, "first_error": self.run.first_error,
            "req_per_s": self.run.throughput(),
            "p50_us": self.us(0.5), "p99_us": self.us(0.99), "p999_us": self.us(0.999),
            "max_us": self.run.latency.max() as f64 / 1000.0,
            "send_lateness_p99_us": self.run.lateness.value_at_quantile(0.99) as f64 / 1000.0,
            "server_cpu_us_per_req": self.cpu_per_req(),
            "server_core_util": self.server_cpu / self.wall,
            "client_core_util": self.client_cpu / self.wall,
            "foreign_core0": self.foreign[0], "foreign_core1": self.foreign[1],
        })
    }
}

struct Bench {
    rt: tokio::runtime::Runtime,
    ca_pem: String,
    warmup: Duration,
    secs: Duration,
    lat_secs: Duration,
    rounds: usize,
    log: Vec<Value>,
}

impl Bench {
    fn measure(&mut self, server: &Server, body: &Body, conns: usize, load: Load) -> Measured {
        let target = Target::new(server.addr, &self.ca_pem);
        let req = client::request_bytes(server.addr, server.req_path, &body.json);
        let (s0, c0, k0, t0) = (
            cpu_secs(server.pid()),
            cpu_secs(std::process::id()),
            cores(),
            Instant::now(),
        );
        let run = self
            .rt
            .block_on(async {
                match load {
                    Load::Saturate => {
                        client::saturate(&target, req, conns, self.warmup, self.secs).await
                    }
                    Load::Rate(r) => {
                        let warm = self.warmup.min(Duration::from_millis(300));
                        client::fixed_rate(&target, req, conns, r, warm, self.lat_secs).await
                    }
                    Load::Fresh => client::fresh(&target, req, conns, self.warmup, self.secs).await,
                }
            })
            .unwrap_or_else(|e| panic!("{} on {}: {e}", server.name, body.name));
        let wall = t0.elapsed().as_secs_f64();
        let (server_cpu, client_cpu, k1) = (
            cpu_secs(server.pid()) - s0,
            cpu_secs(std::process::id()) - c0,
            cores(),
        );
        let share = |i: usize, ours: f64| {
            let (busy, total) = (k1[i].0 - k0[i].0, k1[i].1 - k0[i].1);
            if total <= 0.0 {
                0.0
            } else {
                ((busy / CLK_TCK - ours) / (total / CLK_TCK)).max(0.0)
            }
        };
        let m = Measured {
            foreign: [share(0, server_cpu), share(1, client_cpu)],
            run,
            wall,
            server_cpu,
            client_cpu,
        };
        if m.run.errors > 0 {
            eprintln!(
                "load: {} {} c={conns}: {} errors, first: {}",
                server.name,
                body.name,
                m.run.errors,
                m.run.first_error.as_deref().unwrap_or("?")
            );
        }
        let (kind, rate) = match load {
            Load::Saturate => ("saturate", None),
            Load::Rate(r) => ("rate", Some(r)),
            Load::Fresh => ("fresh", None),
        };
        let mut j = m.to_json();
        j["server"] = json!(server.name);
        j["body"] = json!(body.name);
        j["bytes"] = json!(body.json.len());
        j["conns"] = json!(conns);
        j["load"] = json!(kind);
        j["rate"] = json!(rate);
        self.log.push(j);
        m
    }

    /// Saturation in rounds alternating `servers`; per server the median throughput, the
    /// per-round ratios to each server, and the median CPU per request.
    fn saturate(&mut self, servers: &[&Server], body: &Body, conns: usize) -> Sat {
        let mut per: Vec<Vec<Measured>> = servers.iter().map(|_| Vec::new()).collect();
        for _ in 0..self.rounds {
            for (i, s) in servers.iter().enumerate() {
                per[i].push(self.measure(s, body, conns, Load::Saturate));
            }
        }
        let rps: Vec<Vec<f64>> = per
            .iter()
            .map(|ms| ms.iter().map(|m| m.run.throughput()).collect())
            .collect();
        let sat = Sat {
            names: servers.iter().map(|s| s.name).collect(),
            rps: rps.iter().map(|v| median(v.clone())).collect(),
            cpu_us: per
                .iter()
                .map(|ms| median(ms.iter().map(Measured::cpu_per_req).collect()))
                .collect(),
            client_util: per
                .iter()
                .map(|ms| median(ms.iter().map(|m| m.client_cpu / m.wall).collect()))
                .collect(),
            foreign0: per
                .iter()
                .flat_map(|ms| ms.iter().map(|m| m.foreign[0]))
                .fold(0.0, f64::max),
            rounds: rps,
        };
        eprintln!(
            "load: {} c={conns}: {}",
            body.name,
            sat.names
                .iter()
                .zip(&sat.rps)
                .map(|(n, r)| format!("{n} {r:.0}/s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        sat
    }
}

struct Sat {
    names: Vec<&'static str>,
    /// Median req/s per server.
    rps: Vec<f64>,
    /// Per server, per round req/s.
    rounds: Vec<Vec<f64>>,
    cpu_us: Vec<f64>,
    client_util: Vec<f64>,
    foreign0: f64,
}

impl Sat {
    fn idx(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| *n == name)
            .expect("server in run")
    }
    fn rps_of(&self, name: &str) -> f64 {
        self.rps[self.idx(name)]
    }
    /// b's CPU per request / a's: the throughput ratio a core of its own would give.
    fn cpu_ratio(&self, a: &str, b: &str) -> f64 {
        self.cpu_us[self.idx(b)] / self.cpu_us[self.idx(a)]
    }
    /// Median over rounds of (a's req/s / b's req/s) in the same round.
    fn ratio(&self, a: &str, b: &str) -> f64 {
        let (a, b) = (&self.rounds[self.idx(a)], &self.rounds[self.idx(b)]);
        median(a.iter().zip(b).map(|(x, y)| x / y).collect())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Body {
    name: String,
    json: String,
}

fn body(name: &str, object: &Value) -> Body {
    Body {
        name: name.to_owned(),
        json: bodies::review(object),
    }
}

fn kib(bytes: usize) -> String {
    if bytes < 10 * 1024 {
        format!("{:.1} KB", bytes as f64 / 1024.0)
    } else {
        format!("{:.0} KB", bytes as f64 / 1024.0)
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ---------------------------------------------------------------------------------------
// Checks

/// One request per (server, body): the answer must be the right review.
fn check(rt: &tokio::runtime::Runtime, ca: &str, server: &Server, body: &Body) -> String {
    let target = Target::new(server.addr, ca);
    let req = client::request_bytes(server.addr, server.req_path, &body.json);
    let (answer, tls) = rt
        .block_on(async {
            let mut c = Conn::connect(&target).await?;
            let a = c.round_trip(&req, true).await?;
            let d = c.describe();
            c.close().await;
            Ok::<_, std::io::Error>((a, d))
        })
        .unwrap_or_else(|e| panic!("{} on {}: {e}", server.name, body.name));
    let text = String::from_utf8_lossy(&answer.body);
    assert_eq!(
        answer.status, 200,
        "{} on {}: HTTP {}: {text}",
        server.name, body.name, answer.status
    );
    let v: Value = serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("{} on {}: not JSON ({e}): {text}", server.name, body.name));
    assert_eq!(v["response"]["allowed"], true, "{}: {text}", server.name);
    let patched = v["response"]["patchType"] == "JSONPatch";
    let warned = v["response"]["warnings"].is_array();
    match server.name {
        WEBHOOK | WEBHOOK_PARENT if body.name == "pod" => {
            if server.name == WEBHOOK {
                assert!(
                    !patched && warned,
                    "offline, the pod's parent is unknown: {text}"
                );
            } else {
                assert!(patched, "with its parent known, the pod is patched: {text}");
            }
        }
        WEBHOOK | WEBHOOK_PARENT => assert!(patched, "the JobSet is patched: {text}"),
        _ => {}
    }
    format!(
        "{} on {}: answer {} bytes{} ({tls})",
        server.name,
        body.name,
        answer.body.len(),
        if patched { ", patched" } else { "" }
    )
}

/// Without `--bench` (`cargo test --all-targets`): every server answers every body right.
fn smoke() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let ca = write_certs(dir.path());
    let pin = Pinning {
        enabled: false,
        priority: false,
    };
    let servers = [
        start_floor(&pin, TLS_FLOOR, "tls", dir.path()),
        start_floor(&pin, PARSE_FLOOR, "parse", dir.path()),
        start_webhook(&pin, WEBHOOK, dir.path()),
        start_webhook(&pin, WEBHOOK_PARENT, dir.path()),
    ];
    let rt = client_runtime();
    let bodies = [named_body("small"), body("pod", &bodies::pod())];
    for s in &servers {
        for b in &bodies {
            check(&rt, &ca, s, b);
        }
    }
    let target = Target::new(servers[2].addr, &ca);
    let req = client::request_bytes(servers[2].addr, "/mutate", &bodies[0].json);
    let run = rt
        .block_on(client::saturate(
            &target,
            req,
            2,
            Duration::ZERO,
            Duration::from_millis(200),
        ))
        .expect("a short closed loop");
    assert!(
        run.ok > 0 && run.errors == 0,
        "closed loop: {} ok, {} errors",
        run.ok,
        run.errors
    );
    println!(
        "load bench smoke check: ok (4 servers x 2 bodies answered; {} requests in 0.2 s)",
        run.ok
    );
}

fn write_certs(dir: &Path) -> String {
    let g = jobset_restart_webhook::certs::generate(
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
        30,
    )
    .expect("generating certificates");
    jobset_restart_webhook::certs::write_files(dir, &g).expect("writing certificates");
    g.ca_pem
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime")
}

/// `client ADDR CA_FILE BODY CONNS SECS [PATH]`: saturate a running server (for profiling).
fn client_only(args: &[String]) {
    let [addr, ca, which, conns, secs, rest @ ..] = args else {
        panic!("usage: client ADDR CA_FILE small|large|xl|pod|grow-N CONNS SECS [PATH]");
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let addr: SocketAddr = addr.parse().expect("ADDR");
    let ca = std::fs::read_to_string(ca).expect("CA_FILE");
    let b = named_body(which);
    let path = rest.first().map_or("/mutate", String::as_str);
    let rt = client_runtime();
    let target = Target::new(addr, &ca);
    let req = client::request_bytes(addr, path, &b.json);
    let run = rt
        .block_on(client::saturate(
            &target,
            req,
            conns.parse().expect("CONNS"),
            Duration::from_millis(500),
            Duration::from_secs_f64(secs.parse().expect("SECS")),
        ))
        .expect("run");
    println!(
        "{} ({} bytes): {:.0} req/s, p50 {:.0} us, p99 {:.0} us, {} errors {:?}",
        b.name,
        b.json.len(),
        run.throughput(),
        run.latency.value_at_quantile(0.5) as f64 / 1000.0,
        run.latency.value_at_quantile(0.99) as f64 / 1000.0,
        run.errors,
        run.first_error
    );
}

/// `pieces [N]`: in-process cost per call of the review and of the floors' extra work, per
/// body, with no TLS, HTTP or logging (where the time goes, without the network).
fn pieces(args: &[String]) {
    use jobset_restart_webhook::admission::{self, Offline};
    use jobset_restart_webhook::engine::{Config, Targets};
    let n: u32 = args.first().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let only = args.get(1).map(String::as_str);
    let config = Config {
        targets: Targets {
            jobsets: true,
            pods: true,
        },
        ..Config::default()
    };
    for which in ["small", "large", "xl", "pod"] {
        if only.is_some_and(|o| o != which) {
            continue;
        }
        let b = named_body(which);
        let bytes = b.json.as_bytes();
        let time = |f: &dyn Fn() -> usize| {
            let t = Instant::now();
            let mut w = 0;
            for _ in 0..n {
                w += f();
            }
            (t.elapsed().as_secs_f64() / f64::from(n) * 1e6, w)
        };
        let (review, _) =
            time(&|| admission::review(bytes, &config, &Offline).map_or(0, |a| a.body.len()));
        let (value, _) = time(&|| usize::from(serde_json::from_slice::<Value>(bytes).is_ok()));
        let (skip, _) =
            time(&|| usize::from(serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()));
        println!(
            "{:>10} {:>7} B: review {review:8.1} us, Value {value:8.1} us, skip {skip:8.1} us",
            b.name,
            bytes.len()
        );
    }
}

fn named_body(which: &str) -> Body {
    match which {
        "small" => body("small", &bodies::small_jobset()),
        "large" => body("large", &bodies::jobset("train-large", 8, 3)),
        "xl" => body("very large", &bodies::jobset("train-xl", 50, 8)),
        "pod" => body("pod", &bodies::pod()),
        other => {
            let n: usize = other
                .strip_prefix("grow-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unknown body {other:?}"));
            body(&format!("{n} x 3"), &bodies::jobset("grow", n, 3))
        }
    }
}

// ---------------------------------------------------------------------------------------
// The benchmark

fn bench(opts: &Opts) {
    let started = Instant::now();
    let pin = Pinning::setup(opts.priority);
    let load_before = loadavg();
    let dir = tempfile::tempdir().expect("temporary folder");
    let ca_pem = write_certs(dir.path());
    let tls = start_floor(&pin, TLS_FLOOR, "tls", dir.path());
    let parse = start_floor(&pin, PARSE_FLOOR, "parse", dir.path());
    let webhook = start_webhook(&pin, WEBHOOK, dir.path());
    let webhook_parent = start_webhook(&pin, WEBHOOK_PARENT, dir.path());
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = status_kib(webhook.pid(), "VmRSS");
    let idle_rss_parent = status_kib(webhook_parent.pid(), "VmRSS");

    let mut b = Bench {
        rt: client_runtime(),
        ca_pem: ca_pem.clone(),
        warmup: Duration::from_millis(if opts.quick { 250 } else { 500 }),
        secs: Duration::from_millis(if opts.quick { 1000 } else { 1500 }),
        lat_secs: Duration::from_millis(if opts.quick { 1000 } else { 2000 }),
        rounds: if opts.quick { 1 } else { 3 },
        log: Vec::new(),
    };
    let conc: &[usize] = if opts.quick { &[16] } else { &[16, 64] };
    let fractions = [0.1, 0.5, 0.9];

    let main_bodies = [
        named_body("small"),
        named_body("large"),
        named_body("xl"),
        named_body("pod"),
    ];
    let mut out = String::new();
    let mut checks = Vec::new();
    for body in &main_bodies {
        for s in [&tls, &parse, &webhook] {
            checks.push(check(&b.rt, &ca_pem, s, body));
        }
    }
    checks.push(check(&b.rt, &ca_pem, &webhook_parent, &main_bodies[3]));

    // 1. Keep-alive: saturation and fixed-rate latency per body.
    let mut sat_rows = String::new();
    let mut lat_rows = String::new();
    let mut rss_rows = String::new();
    for body in &main_bodies {
        let is_pod = body.name == "pod";
        let mut servers: Vec<&Server> = vec![&tls, &parse, &webhook];
        if is_pod {
            servers.push(&webhook_parent);
        }
        for s in &servers {
            reset_peak(s.pid());
        }
        for &c in conc {
            let sat = b.saturate(&servers, body, c);
            let floor_rps = sat.rps_of(PARSE_FLOOR);
            let hooks: &[&str] = if is_pod {
                &[WEBHOOK, WEBHOOK_PARENT]
            } else {
                &[WEBHOOK]
            };
            for hook in hooks {
                let _ = writeln!(
                    sat_rows,
                    "| {}{} | {} | {c} | {:.0} | {:.0} | {:.0} | **{:.2}** ({:.2}) | **{:.2}** ({:.2}) | {:.1} / {:.1} / {:.1} | {:.0} % | {:.0} % |",
                    body.name,
                    if *hook == WEBHOOK_PARENT {
                        " (parent known)"
                    } else {
                        ""
                    },
                    kib(body.json.len()),
                    sat.rps_of(TLS_FLOOR),
                    floor_rps,
                    sat.rps_of(hook),
                    sat.ratio(hook, TLS_FLOOR),
                    sat.cpu_ratio(hook, TLS_FLOOR),
                    sat.ratio(hook, PARSE_FLOOR),
                    sat.cpu_ratio(hook, PARSE_FLOOR),
                    sat.cpu_us[sat.idx(TLS_FLOOR)],
                    sat.cpu_us[sat.idx(PARSE_FLOOR)],
                    sat.cpu_us[sat.idx(hook)],
                    sat.client_util[sat.idx(hook)] * 100.0,
                    sat.foreign0 * 100.0,
                );
            }
            for f in fractions {
                let rate = floor_rps * f;
                let mut cells = Vec::new();
                let mut late: f64 = 0.0;
                for s in &servers {
                    let m = b.measure(s, body, c, Load::Rate(rate));
                    late = late.max(m.run.lateness.value_at_quantile(0.99) as f64 / 1000.0);
                    cells.push(if m.run.errors > 0 {
                        format!("overloaded ({} errors)", m.run.errors)
                    } else {
                        format!("{:.0} / {:.0} / {:.0}", m.us(0.5), m.us(0.99), m.us(0.999))
                    });
                }
                if !is_pod {
                    cells.push(String::new());
                }
                let _ = writeln!(
                    lat_rows,
                    "| {} | {c} | {:.0} % ({rate:.0}/s) | {} | {late:.0} |",
                    body.name,
                    f * 100.0,
                    cells.join(" | ")
                );
            }
        }
        let _ = writeln!(
            rss_rows,
            "| {} | {} | {} | {} |",
            body.name,
            mib(status_kib(webhook.pid(), "VmHWM")),
            mib(status_kib(tls.pid(), "VmHWM")),
            mib(status_kib(parse.pid(), "VmHWM")),
        );
    }

    // 2. Growth: 1, 10, 50, 200 replicated jobs of 3 containers, 16 connections.
    let growth_rounds = if opts.quick { 1 } else { 2 };
    let saved_rounds = std::mem::replace(&mut b.rounds, growth_rounds);
    let mut growth_rows = String::new();
    for n in [1usize, 10, 50, 200] {
        let body = named_body(&format!("grow-{n}"));
        let servers = [&tls, &parse, &webhook];
        let sat = b.saturate(&servers, &body, 16);
        let rate = sat.rps_of(PARSE_FLOOR) * 0.5;
        let mut p99 = Vec::new();
        for s in servers {
            let m = b.measure(s, &body, 16, Load::Rate(rate));
            p99.push(format!("{:.0} / {:.0}", m.us(0.5), m.us(0.99)));
        }
        let _ = writeln!(
            growth_rows,
            "| {n} | {} | {:.0} | {:.0} | {:.0} | {:.2} ({:.2}) | {:.2} ({:.2}) | {:.0} / {:.0} / {:.0} | {} |",
            kib(body.json.len()),
            sat.rps_of(TLS_FLOOR),
            sat.rps_of(PARSE_FLOOR),
            sat.rps_of(WEBHOOK),
            sat.ratio(WEBHOOK, TLS_FLOOR),
            sat.cpu_ratio(WEBHOOK, TLS_FLOOR),
            sat.ratio(WEBHOOK, PARSE_FLOOR),
            sat.cpu_ratio(WEBHOOK, PARSE_FLOOR),
            sat.cpu_us[sat.idx(TLS_FLOOR)],
            sat.cpu_us[sat.idx(PARSE_FLOOR)],
            sat.cpu_us[sat.idx(WEBHOOK)],
            p99.join(" | "),
        );
    }
    b.rounds = saved_rounds;

    // 3. Fresh connections: small body, a full handshake per request.
    let small = &main_bodies[0];
    let mut fresh_rows = String::new();
    for s in [&tls, &parse, &webhook] {
        let mut ms: Vec<Measured> = (0..growth_rounds)
            .map(|_| b.measure(s, small, 16, Load::Fresh))
            .collect();
        ms.sort_by(|x, y| x.run.throughput().total_cmp(&y.run.throughput()));
        let m = &ms[ms.len() / 2];
        let _ = writeln!(
            fresh_rows,
            "| {} | {:.0} | {:.0} / {:.0} | {:.0} | {:.0} % | {:.0} % |",
            s.name,
            m.run.throughput(),
            m.us(0.5),
            m.us(0.99),
            m.cpu_per_req(),
            m.server_cpu / m.wall * 100.0,
            m.client_cpu / m.wall * 100.0,
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let after_rss = status_kib(webhook.pid(), "VmRSS");
    let load_after = loadavg();

    // Report.
    let _ = writeln!(
        out,
        "\n## Load benchmark ({} mode, {:.0} s; load average before {load_before}, after {load_after}; pinned: {}; priority: {})\n",
        if opts.quick { "quick" } else { "full" },
        started.elapsed().as_secs_f64(),
        pin.enabled,
        pin.priority
    );
    for c in &checks {
        let _ = writeln!(out, "- {c}");
    }
    let _ = writeln!(
        out,
        "\n### Saturation, keep-alive (closed loop; median of {} rounds, ratios per round)\n",
        b.rounds
    );
    out.push_str("| body | size | conns | TLS floor req/s | parse floor req/s | webhook req/s | webhook / TLS floor (by CPU/req) | webhook / parse floor (by CPU/req) | server CPU µs/req (TLS / parse / webhook) | client core busy | other jobs on server core (max) |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    out.push_str(&sat_rows);
    out.push_str("\n### Latency at fixed rates (open loop, % of the parse floor's saturation), p50 / p99 / p99.9 µs\n\n");
    out.push_str("| body | conns | rate | TLS floor | parse floor | webhook | webhook+parent | load generator's send lateness p99 µs (max) |\n|---|---|---|---|---|---|---|---|\n");
    out.push_str(&lat_rows);
    let _ = writeln!(
        out,
        "\n### Memory (VmHWM per body phase; webhook idle after start {}, parent variant {}, after the run {})\n",
        mib(idle_rss),
        mib(idle_rss_parent),
        mib(after_rss)
    );
    out.push_str("| body phase | webhook | TLS floor | parse floor |\n|---|---|---|---|\n");
    out.push_str(&rss_rows);
    out.push_str("\n### Growth (N replicated jobs x 3 containers; 16 connections)\n\n");
    out.push_str("| N | size | TLS floor req/s | parse floor req/s | webhook req/s | webhook / TLS (by CPU) | webhook / parse (by CPU) | CPU µs/req (TLS / parse / webhook) | p50 / p99 µs at 50 % (TLS floor) | (parse floor) | (webhook) |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    out.push_str(&growth_rows);
    out.push_str(
        "\n### Fresh connection per request (small body, 16 concurrent, full TLS handshake)\n\n",
    );
    out.push_str("| server | req/s | p50 / p99 µs | server CPU µs/req | server core busy | client core busy |\n|---|---|---|---|---|---|\n");
    out.push_str(&fresh_rows);
    println!("{out}");
    let report = json!({
        "mode": if opts.quick { "quick" } else { "full" },
        "seconds": started.elapsed().as_secs_f64(),
        "loadavg_before": load_before, "loadavg_after": load_after,
        "webhook_idle_rss_kib": idle_rss, "webhook_after_rss_kib": after_rss,
        "runs": b.log,
        "markdown": out,
    });
    if let Some(parent) = opts.json.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    match std::fs::write(
        &opts.json,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    ) {
        Ok(()) => eprintln!("load: raw runs written to {}", opts.json.display()),
        Err(e) => eprintln!("load: writing {}: {e}", opts.json.display()),
    }
}
