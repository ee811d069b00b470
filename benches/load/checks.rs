//! Checks and the other subcommands: the answer of each server to each body, the smoke run
//! without `--bench`, `client` and `pieces`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::hardening::Certs;

use crate::bodies;
use crate::client::{self, Conn, Target};
use crate::measure::*;
use crate::processes::*;
use crate::{PARSE_FLOOR, TLS_FLOOR, WEBHOOK, WEBHOOK_PARENT};

/// One request per (server, body): the answer must be the right review.
pub fn check(rt: &tokio::runtime::Runtime, ca: &str, server: &Server, body: &Body) -> String {
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
pub fn smoke() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let ca = write_certs(dir.path());
    let pin = Pinning {
        enabled: false,
        priority: false,
    };
    let servers = [
        start_floor(&pin, TLS_FLOOR, "tls", dir.path()),
        start_floor(&pin, PARSE_FLOOR, "parse", dir.path()),
        start_webhook(&pin, WEBHOOK, dir.path(), None),
        start_webhook(&pin, WEBHOOK_PARENT, dir.path(), None),
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

pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime")
}

/// `client ADDR CA_FILE BODY CONNS SECS [PATH]`: saturate a running server (for profiling).
pub fn client_only(args: &[String]) {
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
pub fn pieces(args: &[String]) {
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

pub fn named_body(which: &str) -> Body {
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

/// `certs` into `dir`; returns the CA's PEM.
pub fn write_certs(dir: &Path) -> String {
    String::from_utf8(Certs::new(dir).ca).expect("the CA is PEM text")
}
