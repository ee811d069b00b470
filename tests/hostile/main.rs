//! Hostile input catalog: the real binary over real TLS on 127.0.0.1, fed what a broken or
//! malicious client could send. Each case gets the right status or a closed connection,
//! never a crash; afterwards the server still answers a normal review and its memory stayed
//! bounded (the figures are printed: `cargo test --test hostile -- --nocapture`).

mod catalog;

use std::time::Duration;

use jobset_restart_webhook::engine::applied::MAX_CHANGED_CONTAINERS;
use jobset_restart_webhook::server::{MAX_BODY, MAX_HEAD};
use serde_json::{Value, json};
use testkit::admission_reviews::*;
use testkit::hardening::*;
use testkit::webhook_process::*;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

const ON_EXIT: &str = "restart.jobset.dev/on-exit-codes";
/// Generous: the server idles at a few MiB; a 7 MiB body and the biggest answers of the
/// catalog must not take it anywhere near this.
const MAX_HWM_MIB: u64 = 400;

/// `n` containers named `{prefix}{i}` with a one-character image: 30 bytes of JSON each.
fn wide_containers(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({ "name": format!("{prefix}{i}"), "image": "x" }))
        .collect()
}

/// The denial of a JobSet that would change `n` containers.
fn too_many(n: usize) -> String {
    format!(
        "in-place restart would change {n} containers of this JobSet, more than the \
         {MAX_CHANGED_CONTAINERS} the webhook changes in one JobSet; select the containers that \
         need it with restart.jobset.dev/containers (container names) or the replicated jobs \
         with restart.jobset.dev/replicated-jobs (replicated job names)"
    )
}

fn body_of(review: &Value) -> Vec<u8> {
    serde_json::to_vec(review).unwrap()
}

/// A review of a JobSet whose single pod template has `containers`.
fn jobset_with_containers(uid: &str, containers: Vec<Value>) -> Value {
    let mut js = jobset(&[(IN_PLACE, "enabled")]);
    js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"] =
        Value::Array(containers);
    review(uid, "CREATE", &js)
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
}

/// The admission answer of a 200, parsed.
fn answer(reply: &Reply, case: &str) -> Value {
    match reply {
        Reply::Http(200, body) => serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{case}: 200 without a JSON answer ({e}): {body:.200}")),
        other => panic!("{case}: expected 200, got {}", short(other)),
    }
}

fn short(r: &Reply) -> String {
    match r {
        Reply::Http(s, b) => format!("{s} {:.300}", b),
        Reply::Closed => "closed".to_owned(),
    }
}

async fn tls(w: &Webhook, certs: &Certs) -> tokio_rustls::client::TlsStream<TcpStream> {
    raw_tls(w.tls, &certs.ca, &[b"http/1.1"]).await
}

/// An opted-in review on a new connection gets a patch that applies (review uid `uid`).
async fn still_serves(w: &Webhook, certs: &Certs, uid: &str) {
    let js = jobset(&[(IN_PLACE, "enabled")]);
    let body = body_of(&review(uid, "CREATE", &js));
    let a = answer(&send(w, certs, &post_bytes(&body)).await, uid);
    apply_patch(response(&a, uid), &js);
}

async fn send(w: &Webhook, certs: &Certs, bytes: &[u8]) -> Reply {
    let mut s = tls(w, certs).await;
    exchange(&mut s, bytes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_catalog() {
    bounded(240, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let mut w = certs.serve(&["--targets", "jobsets,pods", "--tls-handshake-timeout", "2s"]);
        let pid = w.pid();
        let idle = mem(pid);
        println!("idle: {idle}");
        let mut statuses: catalog::Statuses = Vec::new();

        for section in catalog::CATALOG {
            section.run(&w, &certs, &mut statuses).await;
        }

        // --- Still serving, memory bounded --------------------------------------------------
        let c = w.client(&[&certs.ca]);
        let js = jobset(&[(IN_PLACE, "enabled")]);
        let r = c
            .post(w.url("/mutate"))
            .header("content-type", "application/json")
            .body(body_of(&review("after", "CREATE", &js)))
            .send()
            .await
            .expect("a normal review after the catalog");
        assert_eq!(r.status(), 200);
        let a: Value = r.json().await.unwrap();
        apply_patch(response(&a, "after"), &js);
        assert!(w.wait_exit(Duration::ZERO).is_none(), "the server exited");
        assert_eq!(w.metric("jobset_restart_webhook_panics_total").await, 0.0);

        let after = mem(pid);
        println!("after the catalog: {after}");
        for (name, outcome) in &statuses {
            println!("  {name:<50} {outcome}");
        }
        assert!(
            after.hwm_kib < MAX_HWM_MIB * 1024,
            "peak memory {after} over {MAX_HWM_MIB} MiB"
        );
    })
    .await;
}

/// The JobSet that made a 48 MB answer and ~100 MiB of peak memory per review: 90k
/// containers in 2.7 MB (under the API server's 3 MiB request limit). Four at once, each on
/// its own connection: every one is refused (422, by the bound on the containers a review
/// reads) with a short answer, and the server's peak
/// memory stays far from the Deployment's 128 MiB limit (it was 370 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_jobsets_are_refused_with_a_bounded_answer() {
    /// Growth of the peak over the idle server: measured 8 MiB (release and debug builds);
    /// the four bodies alone may take 16 MiB of buffers when they arrive together.
    const MAX_GROWTH_MIB: u64 = 48;
    bounded(120, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let w = certs.serve(&[]);
        let idle = mem(w.pid());
        let rv = jobset_with_containers("wide-90k", wide_containers("c", 90_000));
        let bytes = std::sync::Arc::new(post_bytes(&body_of(&rv)));
        assert!(
            (2_600_000..3 << 20).contains(&bytes.len()),
            "{}",
            bytes.len()
        );
        let mut streams = Vec::new();
        for _ in 0..4 {
            streams.push(tls(&w, &certs).await);
        }
        let sends = streams.into_iter().map(|mut s| {
            let bytes = bytes.clone();
            tokio::spawn(async move { exchange(&mut s, &bytes).await })
        });
        let mut sizes = Vec::new();
        for send in sends {
            let reply = send.await.unwrap();
            let a = answer(&reply, "90k containers");
            let r = response(&a, "wide-90k");
            assert_eq!(r["allowed"], false, "{a}");
            assert_eq!(r["status"]["code"], 422, "{a}");
            assert_eq!(
                r["status"]["message"],
                jobset_restart_webhook::engine::too_many_containers(90_000),
                "{a}"
            );
            assert!(r.get("patch").is_none(), "{a}");
            let Reply::Http(_, body) = &reply else {
                unreachable!()
            };
            assert!(body.len() < 1024, "answer of {} bytes", body.len());
            sizes.push(body.len());
        }
        let after = mem(w.pid());
        println!(
            "4 x 90k containers ({} KiB each): answers of {sizes:?} bytes; idle {idle}, after \
             {after}",
            bytes.len() / 1024
        );
        assert!(
            after.hwm_kib < idle.hwm_kib + MAX_GROWTH_MIB * 1024,
            "peak memory {after} (idle {idle})"
        );
        still_serves(&w, &certs, "after").await;
    })
    .await;
}

/// A POST /mutate head of exactly `len` bytes (a padding header makes up the length), for
/// a body of `body_len` bytes; `None` for `body_len` leaves the head unterminated, as a
/// client that stalls in its headers.
fn padded_head(len: usize, body_len: Option<usize>) -> Vec<u8> {
    let start = format!(
        "POST /mutate?timeout=10s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{}X-Pad: ",
        body_len.map_or(String::new(), |n| format!("Content-Length: {n}\r\n"))
    );
    let end = if body_len.is_some() { "\r\n\r\n" } else { "" };
    let pad = len - start.len() - end.len();
    [start.as_bytes(), &vec![b'p'; pad], end.as_bytes()].concat()
}

/// `body` as a chunked request (64 KiB chunks).
fn chunked_post(body: &[u8]) -> Vec<u8> {
    let mut out = b"POST /mutate?timeout=10s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in body.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Request heads are bounded by `MAX_HEAD` (hyper's HTTP/1 read buffer): a longer head gets
/// 431 and a closed connection at once (not at the header deadline), is counted, and the
/// server keeps serving. The bound is on the head only: bodies stream through that buffer,
/// so a body of exactly 7 MiB is still served and 7 MiB + 1 still gets 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_over_the_bound_get_431_and_bodies_are_not_cut() {
    bounded(180, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        // A long header deadline: only the head bound can explain a prompt answer.
        let mut w = certs.serve(&["--header-read-timeout", "60s"]);
        let js = jobset(&[(IN_PLACE, "enabled")]);
        let small = body_of(&review("head", "CREATE", &js));

        // A head of exactly MAX_HEAD bytes is served; one byte more is not.
        let mut s = tls(&w, &certs).await;
        let bytes = [&padded_head(MAX_HEAD, Some(small.len()))[..], &small].concat();
        let a = answer(&exchange(&mut s, &bytes).await, "head of MAX_HEAD bytes");
        apply_patch(response(&a, "head"), &js);

        let mut too_large = 0.0;
        for (name, bytes) in [
            (
                "head of MAX_HEAD + 1 bytes",
                padded_head(MAX_HEAD + 1, Some(0)),
            ),
            ("a 1 MiB header line", padded_head(1 << 20, Some(0))),
            // As the 400 KB heads that held 114 MiB over 256 connections: never terminated.
            ("390 KB of head, then silence", padded_head(390_000, None)),
        ] {
            let mut s = tls(&w, &certs).await;
            let start = std::time::Instant::now();
            let r = exchange(&mut s, &bytes).await;
            assert_eq!(r, Reply::Http(431, String::new()), "{name}");
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name}: {:?}",
                start.elapsed()
            );
            let after = read_reply(&mut s, Duration::from_secs(10)).await;
            assert_eq!(
                after,
                Reply::Closed,
                "{name}: the connection must close after 431"
            );
            too_large += 1.0;
        }
        assert_eq!(
            w.metric(r#"jobset_restart_webhook_bad_requests_total{code="431"}"#)
                .await,
            too_large
        );

        // Bodies: exactly MAX_BODY with Content-Length and chunked, then MAX_BODY + 1 sent in
        // full, chunked (no length to refuse it by up front).
        let mut big = body_of(&review("body", "CREATE", &js));
        big.resize(MAX_BODY, b' ');
        for (name, bytes) in [
            ("7 MiB body, Content-Length", post_bytes(&big)),
            ("7 MiB body, chunked", chunked_post(&big)),
        ] {
            let a = answer(&send(&w, &certs, &bytes).await, name);
            apply_patch(response(&a, "body"), &js);
        }
        big.push(b' ');
        let r = send(&w, &certs, &chunked_post(&big)).await;
        assert_eq!(r.status(), Some(413), "7 MiB + 1, chunked: {}", short(&r));

        // Still serving.
        let a = answer(&send(&w, &certs, &post_bytes(&small)).await, "after");
        apply_patch(response(&a, "head"), &js);
        assert!(w.wait_exit(Duration::ZERO).is_none(), "the server exited");
        assert_eq!(w.metric("jobset_restart_webhook_panics_total").await, 0.0);
    })
    .await;
}

/// 256 connections (the shipped Deployment's --max-connections) each send 390 KB of head
/// and stall, then 256 more each send a head just under `MAX_HEAD` and stall. The first are
/// answered 431 at once; the others are held until the header deadline, and what they hold
/// is bounded by `MAX_HEAD`. Before the bound (hyper's ~400 KiB read buffer), the 390 KB
/// heads alone held 114 MiB (release build, 11 MiB idle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_heads_hold_bounded_memory() {
    const CONNECTIONS: usize = 256;
    /// Growth of the peak over the idle server: measured 25-27 MiB (release and debug).
    const MAX_GROWTH_MIB: u64 = 64;
    bounded(180, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        // All from one address here: the per-peer cap (half by default) is lifted to the cap.
        let w = certs.serve(&[
            "--header-read-timeout",
            "60s",
            "--max-connections",
            "256",
            "--max-connections-per-peer",
            "256",
        ]);
        let idle = mem(w.pid());

        let over = padded_head(390_000, None);
        let mut answered = Vec::new();
        for i in 0..CONNECTIONS {
            let mut s = tls(&w, &certs).await;
            let r = exchange(&mut s, &over).await;
            assert_eq!(r.status(), Some(431), "390 KB head #{i}: {}", short(&r));
            answered.push(s);
        }
        let after_over = mem(w.pid());
        // The server closes them after its linger time (2 s), though the client keeps them.
        eventually(
            Duration::from_secs(10),
            "the 431 connections to close",
            || async {
                let open = w.metric("jobset_restart_webhook_connections_open").await;
                (open == 0.0).then_some(())
            },
        )
        .await;

        let under = padded_head(MAX_HEAD - 512, None);
        let mut held = Vec::new();
        for _ in 0..CONNECTIONS - 1 {
            let mut s = tls(&w, &certs).await;
            s.write_all(&under).await.unwrap();
            s.flush().await.unwrap();
            held.push(s);
        }
        eventually(
            Duration::from_secs(10),
            "the stalled connections",
            || async {
                let open = w.metric("jobset_restart_webhook_connections_open").await;
                (open >= (CONNECTIONS - 1) as f64).then_some(())
            },
        )
        .await;
        // Time for the server to read every head it was sent.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = mem(w.pid());
        println!(
            "{CONNECTIONS} x {} bytes of head: idle {idle}, after {after_over}; then {} x {} \
             bytes, stalled: {after}",
            over.len(),
            CONNECTIONS - 1,
            under.len()
        );
        assert!(
            after.hwm_kib < idle.hwm_kib + MAX_GROWTH_MIB * 1024,
            "peak memory {after} (idle {idle})"
        );
        // On the last connection the cap allows.
        still_serves(&w, &certs, "beside").await;
        drop((answered, held));
    })
    .await;
}

/// User + system CPU time of process `pid` in seconds, from /proc/<pid>/stat (10 ms ticks).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> f64 {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .expect("utime/stime in /proc/<pid>/stat")
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// `n` distinct names `{prefix}{i}`, comma-separated.
fn name_list(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("{prefix}{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A JobSet of `n` replicated jobs `r{i}`; `pod(i)` is replicated job `i`'s pod spec.
fn jobset_of(annotations: Value, n: usize, pod: impl Fn(usize) -> Value) -> Value {
    let mut js = jobset(&[]);
    js["metadata"]["annotations"] = annotations;
    js["spec"]["replicatedJobs"] = (0..n)
        .map(|i| {
            json!({ "name": format!("r{i}"), "replicas": 1,
                    "template": { "spec": { "template": { "spec": pod(i) } } } })
        })
        .collect();
    js
}

/// Every shape that cost seconds of CPU or hundreds of MB in one review before the bounds
/// (README: Opting in, "Bounds"), one after the other against one server at the API server's
/// own limits (bodies up to 3 MiB; an UPDATE carries two objects): each answered at once
/// with its bound's denial (or, within the bounds, allowed with folded warnings), at most
/// 1 s of the server's CPU per review (read from /proc, not timed), and the server's peak
/// memory within idle + 32 MiB for all of them. Replicated jobs with distinct node selectors
/// against 5,000 nodes are measured in-process (tests/engine_limits.rs): this server has no
/// cluster, so no nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_review_is_bounded() {
    const MAX_GROWTH_MIB: u64 = 32;
    const MAX_CPU_SECS: f64 = 1.0;
    const API_SERVER_BODY: usize = 3 << 20;
    bounded(240, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let w = certs.serve(&[]);
        still_serves(&w, &certs, "warm-up").await;
        let idle = mem(w.pid());
        let main = |_: usize| json!({ "containers": [{ "name": "main", "image": "x" }] });
        let enabled = |k: &str, v: &str| json!({ IN_PLACE: "enabled", k: v });
        const CONTAINERS: &str = "restart.jobset.dev/containers";

        // (name, review, expected denial ending; `None`: allowed).
        let mut cases: Vec<(String, Value, Option<String>)> = Vec::new();
        // The ~65 KB JobSet that peaked at 205 MB: 400 replicated jobs and a list of 2,000
        // names found nowhere plus one found everywhere.
        let list = format!("{},main", name_list("n", 2000));
        cases.push((
            "400 replicated jobs x 2,001 names".into(),
            review(
                "w65k",
                "CREATE",
                &jobset_of(enabled(CONTAINERS, &list), 400, main),
            ),
            Some(format!("this one has {} bytes", list.len())),
        ));
        // The lists that took 10.8 s and 17.9 s of CPU to de-duplicate.
        for n in [60_000, 110_000] {
            let list = name_list("c", n);
            let mut js = jobset_of(json!({ IN_PLACE: "enabled" }), 1, main);
            js["spec"]["replicatedJobs"][0]["template"]["metadata"] =
                json!({ "annotations": { CONTAINERS: list } });
            cases.push((
                format!("{n} distinct names"),
                review("names", "CREATE", &js),
                Some(format!("this one has {} bytes", list.len())),
            ));
        }
        // A list as large as the API server's body limit allows, on CREATE and on an UPDATE
        // that carries it twice (object and oldObject, the settings changed).
        let fill = |budget: usize| {
            let mut n = budget / 8;
            loop {
                let l = name_list("x", n);
                if l.len() <= budget {
                    return l;
                }
                n -= n / 50;
            }
        };
        let big = fill(API_SERVER_BODY - 4096);
        cases.push((
            "CREATE, a 3 MiB list".into(),
            review(
                "create3m",
                "CREATE",
                &jobset_of(enabled(CONTAINERS, &big), 1, main),
            ),
            Some(format!("this one has {} bytes", big.len())),
        ));
        let half = fill(API_SERVER_BODY / 2 - 4096);
        let mut update = review(
            "update3m",
            "UPDATE",
            &jobset_of(enabled(CONTAINERS, &half), 1, main),
        );
        update["request"]["oldObject"]["metadata"]["annotations"][CONTAINERS] =
            json!(format!("{half},y"));
        cases.push((
            "UPDATE, two 1.5 MiB lists".into(),
            update,
            Some(format!("this one has {} bytes", half.len())),
        ));
        // 10,000 replicated jobs with distinct nodeSelectors: the bound on replicated jobs.
        cases.push((
            "10,000 replicated jobs, distinct nodeSelectors".into(),
            review(
                "selectors",
                "CREATE",
                &jobset_of(json!({ IN_PLACE: "enabled" }), 10_000, |i| {
                    json!({ "nodeSelector": { "pool": format!("p{i}") },
                            "containers": [{ "name": "main", "image": "x" }] })
                }),
            ),
            Some(jobset_restart_webhook::engine::too_many_replicated_jobs(
                10_000,
            )),
        ));
        // Within the bounds, the most warnings a list makes: 128 replicated jobs (the bound),
        // each with one of the 64 names of the list; 63 x 128 missing names, folded while
        // written.
        let list = name_list("c", 64);
        cases.push((
            "128 replicated jobs x 63 missing names".into(),
            review(
                "warnings",
                "CREATE",
                &jobset_of(
                    enabled(CONTAINERS, &list),
                    128,
                    |i| json!({ "containers": [{ "name": format!("c{}", i % 64), "image": "x" }] }),
                ),
            ),
            None,
        ));

        let mut worst = (String::new(), 0.0f64);
        for (name, rv, want) in &cases {
            let body = body_of(rv);
            assert!(
                body.len() <= API_SERVER_BODY,
                "{name}: {} bytes",
                body.len()
            );
            let before = cpu_secs(w.pid());
            let reply = send(&w, &certs, &post_bytes(&body)).await;
            let secs = cpu_secs(w.pid()) - before;
            let now = mem(w.pid());
            println!(
                "{name}: body {} KiB, {secs:.2} s CPU, {now} (idle {idle}): {}",
                body.len() / 1024,
                short(&reply)
            );
            let a = answer(&reply, name);
            let r = &a["response"];
            match want {
                Some(end) => {
                    assert_eq!(r["allowed"], false, "{name}: {a:.300}");
                    assert_eq!(r["status"]["code"], 422, "{name}: {a:.300}");
                    let msg = r["status"]["message"].as_str().unwrap_or_default();
                    assert!(msg.ends_with(end.as_str()), "{name}: {msg:.300}");
                }
                None => {
                    assert_eq!(r["allowed"], true, "{name}: {a:.300}");
                    let warnings = r["warnings"].as_array().cloned().unwrap_or_default();
                    assert_eq!(warnings.len(), 16, "{name}: {warnings:?}");
                    // 63 x 128 missing names and the default action's (no cluster), 15 shown.
                    assert_eq!(warnings[15], "... and 8050 more warnings", "{name}");
                }
            }
            assert!(secs <= MAX_CPU_SECS, "{name}: {secs:.2} s of CPU");
            if secs >= worst.1 {
                worst = (name.clone(), secs);
            }
        }
        let after = mem(w.pid());
        println!(
            "worst review: {} ({:.2} s CPU); peak memory {after}, idle {idle}",
            worst.0, worst.1
        );
        assert!(
            after.hwm_kib <= idle.hwm_kib + MAX_GROWTH_MIB * 1024,
            "peak memory {after} (idle {idle})"
        );
        still_serves(&w, &certs, "after").await;
    })
    .await;
}
