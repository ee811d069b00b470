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
//!
//! Which binary is `webhook`: the one Cargo built for the bench (release profile, dynamic
//! glibc), or `--exe EXE`, or `--image`: the binary of the image built from the Dockerfile
//! (`tests/image/build.sh`, run as root; the shipped build). `--baseline EXE` adds a second
//! binary's `serve`, `webhook (before)`, in the same rounds.

mod bodies;
mod client;
mod floor;

mod checks;
mod measure;
mod processes;
mod procfs;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::stats::loadavg;

use checks::*;
use measure::*;
use processes::*;
use procfs::*;

const WEBHOOK: &str = "webhook";
const WEBHOOK_PARENT: &str = "webhook+parent";
/// `--baseline EXE`: the same `serve` from an earlier build, loaded in the same rounds.
const WEBHOOK_BEFORE: &str = "webhook (before)";
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
    /// `--baseline EXE`: also load this binary's `serve` (an earlier build) as `webhook (before)`.
    baseline: Option<PathBuf>,
    /// `--exe EXE`: the `webhook` server runs this binary instead of the one Cargo built (e.g.
    /// another target's build).
    exe: Option<PathBuf>,
    /// `--image`: the `webhook` server runs the binary of the image built from the Dockerfile
    /// (tests/image/build.sh, cached), extracted from its archive: the shipped build.
    image: bool,
}

impl Opts {
    fn parse(args: &[String]) -> Self {
        let mut o = Opts {
            bench: false,
            quick: false,
            priority: false,
            json: Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-load.json"),
            baseline: None,
            exe: None,
            image: false,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--bench" => o.bench = true,
                "--quick" => o.quick = true,
                "--priority" => o.priority = true,
                "--json" => o.json = it.next().expect("--json PATH").into(),
                "--baseline" => o.baseline = Some(it.next().expect("--baseline EXE").into()),
                "--exe" => o.exe = Some(it.next().expect("--exe EXE").into()),
                "--image" => o.image = true,
                other if other.starts_with("--") => {}
                other => eprintln!("load: ignoring argument {other:?}"),
            }
        }
        o
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
    if opts.image && opts.exe.is_some() {
        panic!("load: --image and --exe both name the webhook's binary; give one");
    }
    let exe = if opts.image {
        let archive = testkit::image::image_archive();
        let bin = testkit::image::extract_binary(archive, dir.path())
            .unwrap_or_else(|e| panic!("load: the image's binary: {e}"));
        eprintln!("load: webhook = the binary of {}", archive.display());
        Some(bin)
    } else {
        opts.exe.clone()
    };
    let webhook = start_webhook(&pin, WEBHOOK, dir.path(), exe.as_deref());
    let webhook_parent = start_webhook(&pin, WEBHOOK_PARENT, dir.path(), None);
    let before = opts
        .baseline
        .as_deref()
        .map(|exe| start_webhook(&pin, WEBHOOK_BEFORE, dir.path(), Some(exe)));
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
        servers.extend(before.as_ref());
        for s in &servers {
            reset_peak(s.pid());
        }
        for &c in conc {
            let sat = b.saturate(&servers, body, c);
            let floor_rps = sat.rps_of(PARSE_FLOOR);
            let mut hooks = vec![WEBHOOK];
            if is_pod {
                hooks.push(WEBHOOK_PARENT);
            }
            if before.is_some() {
                hooks.push(WEBHOOK_BEFORE);
            }
            for hook in &hooks {
                let _ = writeln!(
                    sat_rows,
                    "| {}{} | {} | {c} | {:.0} | {:.0} | {:.0} | **{:.2}** ({:.2}) | **{:.2}** ({:.2}) | {:.1} / {:.1} / {:.1} | {:.0} % | {:.0} % |",
                    body.name,
                    match *hook {
                        WEBHOOK_PARENT => " (parent known)",
                        WEBHOOK_BEFORE => " (before)",
                        _ => "",
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
                for s in servers.iter().filter(|s| s.name != WEBHOOK_BEFORE) {
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
        let mut loaded = servers.to_vec();
        loaded.extend(before.as_ref());
        let sat = b.saturate(&loaded, &body, 16);
        let rate = sat.rps_of(PARSE_FLOOR) * 0.5;
        let before_cpu = before
            .as_ref()
            .map(|_| format!(" (before: {:.0})", sat.cpu_us[sat.idx(WEBHOOK_BEFORE)]))
            .unwrap_or_default();
        let mut p99 = Vec::new();
        for s in servers {
            let m = b.measure(s, &body, 16, Load::Rate(rate));
            p99.push(format!("{:.0} / {:.0}", m.us(0.5), m.us(0.99)));
        }
        let _ = writeln!(
            growth_rows,
            "| {n} | {} | {:.0} | {:.0} | {:.0} | {:.2} ({:.2}) | {:.2} ({:.2}) | {:.0} / {:.0} / {:.0}{before_cpu} | {} |",
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
    let _ = writeln!(
        out,
        "- webhook: {}{}",
        if opts.image {
            "the image's binary (tests/image/build.sh), ".to_owned()
        } else {
            String::new()
        },
        exe.as_deref()
            .unwrap_or(Path::new(env!("CARGO_BIN_EXE_jobset-restart-webhook")))
            .display()
    );
    if let Some(b) = &opts.baseline {
        let _ = writeln!(out, "- webhook (before): {}", b.display());
    }
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
