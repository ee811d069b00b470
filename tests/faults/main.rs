//! Faults under load: the real binary on 127.0.0.1 with an in-test client sending reviews at a
//! steady rate over keep-alive connections while credentials rotate, the process is replaced,
//! the config breaks, and slow clients hold connections. Each test is bounded (< 45 s) and
//! asserts no failed request; latency and memory bounds are generous (a loaded 2-core CI
//! machine), and the figures are printed (`cargo test --test faults -- --nocapture`).

mod slow_clients;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::admission_reviews::*;
use testkit::hardening::*;
use testkit::webhook_process::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

fn opted_in_review(uid: &str) -> Vec<u8> {
    serde_json::to_vec(&review(uid, "CREATE", &jobset(&[(IN_PLACE, "enabled")]))).unwrap()
}

/// One POST with reqwest; `Ok` only for a 200 whose answer carries a patch.
async fn post_patched(c: &reqwest::Client, url: &str, body: &[u8]) -> Result<(), String> {
    let r = c
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = r.status();
    let text = r
        .text()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    if status != 200 {
        return Err(format!("status {status}: {text}"));
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    if v["response"]["patchType"] != "JSONPatch" {
        return Err(format!("not patched: {text}"));
    }
    Ok(())
}

fn assert_no_failures(what: &str, r: &LoadReport) {
    assert!(
        r.failures.is_empty(),
        "{what}: {} failed requests, first: {:?}",
        r.failures.len(),
        &r.failures[..r.failures.len().min(5)]
    );
}

// ------------------------------------------------------------------------------------------

/// The serving certificate and key are replaced every second for 30 s, alternating between
/// two CAs (clients trust both, as during a CA rotation with a two-CA caBundle). Keep-alive
/// clients and a client that handshakes for every request lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_replaced_every_second_under_load() {
    bounded(75, async {
        let tmp = tempfile::tempdir().unwrap();
        let sets = [
            Certs::new(&tmp.path().join("a")),
            Certs::new(&tmp.path().join("b")),
        ];
        let live = tmp.path().join("live");
        std::fs::create_dir(&live).unwrap();
        for f in ["tls.key", "tls.crt"] {
            std::fs::copy(sets[0].dir.join(f), live.join(f)).unwrap();
        }
        let (cert, key) = (live.join("tls.crt"), live.join("tls.key"));
        let w = Webhook::start(&[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--reload-interval",
            "200ms",
        ]);
        let both: [&[u8]; 2] = [&sets[0].ca, &sets[1].ca];
        let url = w.url("/mutate");
        let body = Arc::new(opted_in_review("rotate"));
        let state = Arc::new(LoadState::default());
        let mut tasks = Vec::new();
        // Two keep-alive clients at 50/s each.
        for _ in 0..2 {
            let c = w.client(&both);
            let (state, url, body) = (state.clone(), url.clone(), body.clone());
            tasks.push(tokio::spawn(steady(
                state,
                Duration::from_millis(20),
                move || {
                    let (c, url, body) = (c.clone(), url.clone(), body.clone());
                    async move { post_patched(&c, &url, &body).await }
                },
            )));
        }
        // A client with a new connection and a full handshake (a new client config: no
        // session resumption) per request, noting which certificate each handshake presented.
        let seen = Arc::new(Mutex::new(BTreeSet::<Vec<u8>>::new()));
        {
            let bundle = Arc::new([&sets[0].ca[..], &sets[1].ca[..]].concat());
            let (state, body, seen, addr) = (state.clone(), body.clone(), seen.clone(), w.tls);
            tasks.push(tokio::spawn(steady(
                state,
                Duration::from_millis(50),
                move || {
                    let (bundle, body, seen) = (bundle.clone(), body.clone(), seen.clone());
                    async move {
                        let mut s = try_tls(addr, &bundle).await?;
                        if let Some(leaf) =
                            s.get_ref().1.peer_certificates().and_then(|c| c.first())
                        {
                            seen.lock().unwrap().insert(leaf.to_vec());
                        }
                        match exchange(&mut s, &post_bytes(&body)).await {
                            Reply::Http(200, _) => Ok(()),
                            other => Err(format!("fresh: {other:?}")),
                        }
                    }
                },
            )));
        }

        // Rotate: key first, then certificate (the order `certs` writes them), every second.
        let start = Instant::now();
        let mut rotations = 0;
        while start.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            rotations += 1;
            let set = &sets[rotations % 2];
            replace_file(&key, &std::fs::read(set.dir.join("tls.key")).unwrap());
            replace_file(&cert, &std::fs::read(set.dir.join("tls.crt")).unwrap());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        state.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let report = state.report();
        let m = w.metrics().await;
        let reloads = metric(
            &m,
            r#"jobset_restart_webhook_tls_cert_reloads_total{result="success"}"#,
        );
        let errors = metric(
            &m,
            r#"jobset_restart_webhook_tls_cert_reloads_total{result="error"}"#,
        );
        println!(
            "cert rotation: {rotations} rotations, {reloads} reloads ok, {errors} half-rotated \
             pairs refused, {} distinct leaves seen; load: {}",
            seen.lock().unwrap().len(),
            report.summary()
        );
        assert_no_failures("certificate rotation", &report);
        assert!(report.ok >= 500, "{}", report.summary());
        assert!(
            reloads >= 10.0,
            "only {reloads} reloads in {rotations} rotations"
        );
        assert_eq!(seen.lock().unwrap().len(), 2, "both leaves were served");
        assert!(
            report.quantile(0.99) < Duration::from_secs(2),
            "{}",
            report.summary()
        );
    })
    .await;
}

// ------------------------------------------------------------------------------------------

/// What a rolling update does: instance A gets SIGTERM while under load, instance B (another
/// port) is up. Clients keep their keep-alive connection to A until an answer says
/// `Connection: close` (A's drain delay) or A refuses to connect, then use B. No request sent
/// to A fails, including the ones in flight when the signal arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_hands_over_without_failures() {
    bounded(60, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let extra = ["--drain-delay", "2s", "--shutdown-grace-period", "20s"];
        let mut a = certs.serve(&extra);
        let b = certs.serve(&[]);
        let ca = Arc::new(certs.ca.clone());
        let body = Arc::new(opted_in_review("handover"));
        let state = Arc::new(LoadState::default());
        let on_a = Arc::new(AtomicUsize::new(0));
        let on_b = Arc::new(AtomicUsize::new(0));
        let handed_over = Arc::new(AtomicUsize::new(0));

        const WORKERS: usize = 6;
        let mut tasks = Vec::new();
        for _ in 0..WORKERS {
            let (state, ca, body) = (state.clone(), ca.clone(), body.clone());
            let (on_a, on_b, handed_over) = (on_a.clone(), on_b.clone(), handed_over.clone());
            let (addr_a, addr_b) = (a.tls, b.tls);
            tasks.push(tokio::spawn(async move {
                let mut use_b = false;
                let mut conn = None;
                let mut tick = tokio::time::interval(Duration::from_millis(25));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !state.stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    if conn.is_none() {
                        let addr: SocketAddr = if use_b { addr_b } else { addr_a };
                        match try_tls(addr, &ca).await {
                            Ok(s) => conn = Some(s),
                            // A's listener is closed: what a removed endpoint looks like.
                            // Nothing was sent, nothing failed; go to B.
                            Err(_) if !use_b => {
                                use_b = true;
                                handed_over.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            Err(e) => {
                                state.record(Err(e));
                                continue;
                            }
                        }
                    }
                    let Some(s) = conn.as_mut() else { continue };
                    let start = Instant::now();
                    let _ = s.write_all(&post_bytes(&body)).await;
                    let (reply, close) = read_reply_close(s, Duration::from_secs(20)).await;
                    match reply {
                        Reply::Http(200, _) => {
                            state.record(Ok(start.elapsed()));
                            let n = if use_b { &on_b } else { &on_a };
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                        other => state
                            .record(Err(format!("{} {other:?}", if use_b { "B" } else { "A" }))),
                    }
                    if close {
                        state.closed_by_server.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                        if !use_b {
                            use_b = true;
                            handed_over.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }

        // Two requests in flight on A across the signal: their bodies are finished 1 s after
        // it (inside the drain delay) and 3 s after it (after the listener closed).
        let mut slow = Vec::new();
        for i in 0..2 {
            let body = opted_in_review(&format!("slow-{i}"));
            let mut s = try_tls(a.tls, &certs.ca).await.unwrap();
            s.write_all(post_head(body.len()).as_bytes()).await.unwrap();
            s.write_all(&body[..body.len() / 2]).await.unwrap();
            s.flush().await.unwrap();
            slow.push((s, body));
        }

        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = on_a.load(Ordering::Relaxed);
        a.signal("TERM");
        let signalled = Instant::now();
        let mut slow_results = Vec::new();
        for ((mut s, body), after) in slow.into_iter().zip([1u64, 3]) {
            tokio::time::sleep_until((signalled + Duration::from_secs(after)).into()).await;
            s.write_all(&body[body.len() / 2..]).await.unwrap();
            s.flush().await.unwrap();
            slow_results.push(read_reply_close(&mut s, Duration::from_secs(10)).await);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        state.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let status = tokio::task::block_in_place(|| a.wait_exit(Duration::from_secs(15)))
            .expect("A exits after draining");
        let report = state.report();
        println!(
            "handover: {} on A ({before} before SIGTERM), {} on B, {} workers handed over, \
             slow in-flight: {:?}; load: {}",
            on_a.load(Ordering::Relaxed),
            on_b.load(Ordering::Relaxed),
            handed_over.load(Ordering::Relaxed),
            slow_results
                .iter()
                .map(|(r, close)| (r.status(), *close))
                .collect::<Vec<_>>(),
            report.summary()
        );
        assert_no_failures("SIGTERM handover", &report);
        for (r, close) in &slow_results {
            assert_eq!(r.status(), Some(200), "in-flight request on A: {r:?}");
            assert!(close, "an answer while draining closes its connection");
        }
        assert_eq!(status.code(), Some(0), "{}", a.logs_text());
        assert_eq!(handed_over.load(Ordering::Relaxed), WORKERS);
        assert!(
            on_a.load(Ordering::Relaxed) > before,
            "A served during its drain delay"
        );
        assert!(on_b.load(Ordering::Relaxed) > 0);
    })
    .await;
}

// ------------------------------------------------------------------------------------------

/// The config file is replaced by a broken one and back, three times, under load: every
/// answer follows the last good config (JobSets without annotations are patched because the
/// good config enables in-place restart by default), and each broken version is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_under_load_keeps_the_last_good_one() {
    bounded(60, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(&tmp.path().join("certs"));
        let cfg = tmp.path().join("config.yaml");
        let good = b"targets: jobsets\ndefaults:\n  inPlace: enabled\n";
        let broken: [&[u8]; 3] = [
            b"defaults:\n  inPlace: maybe\n",
            b"targets: [jobsets\n",
            b"\xff\xfe not even text",
        ];
        std::fs::write(&cfg, good).unwrap();
        let w = certs.serve(&[
            "--config",
            cfg.to_str().unwrap(),
            "--reload-interval",
            "200ms",
        ]);
        // No annotation: only the config's default makes it patched.
        let body = Arc::new(serde_json::to_vec(&review("cfg", "CREATE", &jobset(&[]))).unwrap());
        let url = w.url("/mutate");
        let state = Arc::new(LoadState::default());
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let c = w.client(&[&certs.ca]);
            let (state, url, body) = (state.clone(), url.clone(), body.clone());
            tasks.push(tokio::spawn(steady(
                state,
                Duration::from_millis(20),
                move || {
                    let (c, url, body) = (c.clone(), url.clone(), body.clone());
                    async move { post_patched(&c, &url, &body).await }
                },
            )));
        }
        let series =
            |r: &str| format!("jobset_restart_webhook_config_reloads_total{{result=\"{r}\"}}");
        for (i, bad) in broken.iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            replace_file(&cfg, bad);
            let want = (i + 1) as f64;
            eventually(Duration::from_secs(10), "the reload error", || async {
                (w.metric(&series("error")).await >= want).then_some(())
            })
            .await;
            assert_eq!(
                w.metric("jobset_restart_webhook_config_last_reload_successful")
                    .await,
                0.0
            );
            tokio::time::sleep(Duration::from_millis(1000)).await;
            replace_file(&cfg, good);
            eventually(Duration::from_secs(10), "the good config back", || async {
                (w.metric(&series("success")).await >= want).then_some(())
            })
            .await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        state.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let report = state.report();
        let m = w.metrics().await;
        println!(
            "broken config: {} errors and {} successful reloads counted; load: {}",
            metric(&m, &series("error")),
            metric(&m, &series("success")),
            report.summary()
        );
        assert_no_failures("broken config", &report);
        assert!(report.ok >= 100, "{}", report.summary());
        assert_eq!(metric(&m, &series("error")), 3.0, "{m}");
        assert_eq!(metric(&m, &series("success")), 3.0, "{m}");
        assert_eq!(
            metric(&m, "jobset_restart_webhook_config_last_reload_successful"),
            1.0
        );
        let errors =
            w.log_events("cluster config changed but is not valid; keeping the last good config");
        assert_eq!(errors.len(), 3, "{}", w.logs_text());
    })
    .await;
}
