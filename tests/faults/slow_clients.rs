//! Clients that are slow or withhold bodies: cut off, within the body budget, and nobody else
//! notices.

use super::*;

/// Slow and silent clients: connections that never start TLS, TLS connections that send
/// nothing, request heads sent a byte at a time, 50 MiB bodies announced and trickled, and
/// chunked bodies trickled. Each is cut off by its deadline or refused; memory stays bounded;
/// a steady client on the side sees no failure and low latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_others_unaffected() {
    bounded(75, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let w = certs.serve(&[
                    "--tls-handshake-timeout",
                    "3s",
                    "--header-read-timeout",
                    "3s",
                    "--body-read-timeout",
                    "5s",
                ]);
        let pid = w.pid();
        let url = w.url("/mutate");
        let body = Arc::new(opted_in_review("steady"));
        // Warm up (first TLS handshakes, allocator arenas), then measure.
        let c = w.client(&[&certs.ca]);
        for _ in 0..20 {
            post_patched(&c, &url, &body).await.unwrap();
        }
        let before = mem(pid);

        let state = Arc::new(LoadState::default());
        let steady_task = {
            let (state, url, body) = (state.clone(), url.clone(), body.clone());
            tokio::spawn(steady(state, Duration::from_millis(20), move || {
                let (c, url, body) = (c.clone(), url.clone(), body.clone());
                async move { post_patched(&c, &url, &body).await }
            }))
        };

        const N: usize = 20;
        /// How each slow connection ended: (kind, status or none, seconds open).
        type Ending = (&'static str, Option<u16>, f64);
        let endings = Arc::new(Mutex::new(Vec::<Ending>::new()));
        let mut slow = Vec::new();
        let ca = Arc::new(certs.ca.clone());
        for i in 0..N {
            let (endings1, addr) = (endings.clone(), w.tls);
            // 1. TCP only, never a ClientHello.
            slow.push(tokio::spawn(async move {
                let start = Instant::now();
                let mut s = TcpStream::connect(addr).await.unwrap();
                let mut buf = [0u8; 16];
                let _ = s.read(&mut buf).await;
                endings1.lock().unwrap().push(("silent TCP", None, start.elapsed().as_secs_f64()));
            }));
            // 2. TLS, then nothing.
            let (ca2, endings2) = (ca.clone(), endings.clone());
            slow.push(tokio::spawn(async move {
                let mut s = try_tls(addr, &ca2).await.unwrap();
                let start = Instant::now();
                let r = read_reply(&mut s, Duration::from_secs(30)).await;
                endings2
                    .lock()
                    .unwrap()
                    .push(("silent TLS", r.status(), start.elapsed().as_secs_f64()));
            }));
            // 3. A request head one byte every 100 ms.
            let (ca3, endings3) = (ca.clone(), endings.clone());
            slow.push(tokio::spawn(async move {
                let mut s = try_tls(addr, &ca3).await.unwrap();
                let start = Instant::now();
                let head = post_head(100);
                for b in head.as_bytes() {
                    if s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() {
                        break;
                    }
                    if start.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let r = read_reply(&mut s, Duration::from_secs(10)).await;
                endings3
                    .lock()
                    .unwrap()
                    .push(("head byte by byte", r.status(), start.elapsed().as_secs_f64()));
            }));
            // 4. Content-Length: 50 MiB, body trickled at 64 KiB / 100 ms.
            let (ca4, endings4) = (ca.clone(), endings.clone());
            slow.push(tokio::spawn(async move {
                let mut s = try_tls(addr, &ca4).await.unwrap();
                let start = Instant::now();
                s.write_all(post_head(50 << 20).as_bytes()).await.unwrap();
                let (mut rd, mut wr) = tokio::io::split(s);
                let writer = tokio::spawn(async move {
                    let chunk = vec![b' '; 64 << 10];
                    for _ in 0..800 {
                        if wr.write_all(&chunk).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
                let r = read_reply(&mut rd, Duration::from_secs(10)).await;
                endings4
                    .lock()
                    .unwrap()
                    .push(("50 MiB declared, trickled", r.status(), start.elapsed().as_secs_f64()));
                writer.abort();
            }));
            // 5. Chunked (no length), 64 KiB / 100 ms: cut by the body deadline (408) long
            // before the 7 MiB limit. One in four only: each holds up to what it sent.
            if i % 4 == 0 {
                let (ca5, endings5) = (ca.clone(), endings.clone());
                slow.push(tokio::spawn(async move {
                    let mut s = try_tls(addr, &ca5).await.unwrap();
                    let start = Instant::now();
                    s.write_all(
                        b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                    )
                    .await
                    .unwrap();
                    let (mut rd, mut wr) = tokio::io::split(s);
                    let writer = tokio::spawn(async move {
                        let chunk = vec![b' '; 64 << 10];
                        let framed =
                            [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                        for _ in 0..800 {
                            if wr.write_all(&framed).await.is_err() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    });
                    let r = read_reply(&mut rd, Duration::from_secs(15)).await;
                    endings5
                        .lock()
                        .unwrap()
                        .push(("chunked, trickled", r.status(), start.elapsed().as_secs_f64()));
                    writer.abort();
                }));
            }
        }
        // Peak while they are open.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let during = mem(pid);
        let open = w.metric("jobset_restart_webhook_connections_open").await;
        for t in slow {
            t.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        state.stop.store(true, Ordering::Relaxed);
        steady_task.await.unwrap();
        let after = mem(pid);
        let report = state.report();

        let endings = endings.lock().unwrap().clone();
        let mut kinds: Vec<&str> = endings.iter().map(|e| e.0).collect();
        kinds.dedup();
        let kinds: BTreeSet<&str> = kinds.into_iter().collect();
        println!("slow clients ({} connections, {open} open at the peak):", endings.len());
        for kind in &kinds {
            let mine: Vec<&Ending> = endings.iter().filter(|e| e.0 == *kind).collect();
            let statuses: BTreeSet<String> = mine
                .iter()
                .map(|e| e.1.map_or("closed".to_owned(), |s| s.to_string()))
                .collect();
            let max = mine.iter().map(|e| e.2).fold(0.0, f64::max);
            println!("  {kind:<28} x{:<3} {statuses:?}, open at most {max:.1} s", mine.len());
        }
        println!("memory: before {before}; with the slow clients {during}; after {after}");
        println!("steady client beside them: {}", report.summary());

        for (kind, status, secs) in &endings {
            match *kind {
                "silent TCP" => assert!(*secs < 10.0, "{kind}: open {secs} s"),
                "silent TLS" | "head byte by byte" => {
                    assert_eq!(*status, None, "{kind}");
                    assert!(*secs < 10.0, "{kind}: open {secs} s");
                }
                "50 MiB declared, trickled" => {
                    assert_eq!(*status, Some(413), "{kind}");
                    assert!(*secs < 5.0, "{kind}: answered after {secs} s");
                }
                "chunked, trickled" => {
                    assert_eq!(*status, Some(408), "{kind}");
                    assert!(*secs < 12.0, "{kind}: answered after {secs} s");
                }
                other => panic!("{other}"),
            }
        }
        assert_no_failures("beside slow clients", &report);
        assert!(report.ok >= 100, "{}", report.summary());
        assert!(
            report.quantile(0.99) < Duration::from_secs(1),
            "{}",
            report.summary()
        );
        // 20 x 50 MiB were announced; nothing near that may be held.
        assert!(during.hwm_kib < 200 * 1024, "{during}");
        assert!(after.rss_kib < before.rss_kib + 100 * 1024, "{before} -> {after}");
        // Every slow connection was closed (the steady client's may still be closing).
        eventually(Duration::from_secs(5), "slow connections closed", || async {
            (w.metric("jobset_restart_webhook_connections_open").await <= 1.0).then_some(())
        })
        .await;
    })
    .await;
}

// ------------------------------------------------------------------------------------------

/// Clients that send almost 7 MiB and withhold the last bytes, each holding its buffer until
/// the body deadline: without a shared budget 32 of them held 224 MiB (the Deployment's
/// limit is 128 MiB). The body budget (`--max-body-memory`, 32Mi by default) caps what they
/// hold; small reviews beside them are served (the first 64 KiB of a body is not counted);
/// the withheld ones get 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_large_bodies_stay_within_the_body_budget() {
    bounded(60, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let w = certs.serve(&["--body-read-timeout", "4s"]);
        let pid = w.pid();
        let url = w.url("/mutate");
        let body = Arc::new(opted_in_review("beside"));
        let c = w.client(&[&certs.ca]);
        for _ in 0..20 {
            post_patched(&c, &url, &body).await.unwrap();
        }
        let before = mem(pid);
        let state = Arc::new(LoadState::default());
        let steady_task = {
            let (state, url, body) = (state.clone(), url.clone(), body.clone());
            tokio::spawn(steady(state, Duration::from_millis(20), move || {
                let (c, url, body) = (c.clone(), url.clone(), body.clone());
                async move { post_patched(&c, &url, &body).await }
            }))
        };

        const N: usize = 32;
        const LEN: usize = 7_000_000;
        let mut held = Vec::new();
        for _ in 0..N {
            let s = try_tls(w.tls, &certs.ca).await.unwrap();
            let (mut rd, mut wr) = tokio::io::split(s);
            let writer = tokio::spawn(async move {
                let _ = wr.write_all(post_head(LEN).as_bytes()).await;
                let chunk = vec![b' '; 1 << 20];
                let mut sent = 0;
                while sent < LEN - 10 {
                    let n = chunk.len().min(LEN - 10 - sent);
                    if wr.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                }
                // Withhold the rest; keep the socket open.
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(wr);
            });
            held.push(tokio::spawn(async move {
                let start = Instant::now();
                let r = read_reply(&mut rd, Duration::from_secs(30)).await;
                writer.abort();
                (r.status(), start.elapsed())
            }));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let during = mem(pid);
        let mut statuses = BTreeSet::new();
        let mut slowest = Duration::ZERO;
        for h in held {
            let (status, took) = h.await.unwrap();
            statuses.insert(status);
            slowest = slowest.max(took);
        }
        state.stop.store(true, Ordering::Relaxed);
        steady_task.await.unwrap();
        let report = state.report();
        let after = mem(pid);
        println!(
            "{N} x 7 MB bodies withheld: statuses {statuses:?} (last after {slowest:?}); memory \
             before {before}, while held {during}, after {after}; beside them: {}",
            report.summary()
        );
        assert_eq!(statuses, BTreeSet::from([Some(408)]));
        assert_no_failures("beside withheld bodies", &report);
        assert!(report.ok >= 50, "{}", report.summary());
        // While held: 32 MiB of budget + 32 x 64 KiB free + connection buffers. The peak
        // (when the deadlines free the budget and waiting bodies take it, before the
        // allocator reuses the freed buffers) stays far below the 224 MiB these clients held
        // without the budget.
        assert!(
            during.rss_kib < before.rss_kib + 64 * 1024,
            "{before} -> {during}"
        );
        assert!(
            after.hwm_kib < before.rss_kib + 120 * 1024,
            "{before} -> peak {after}"
        );
    })
    .await;
}

/// Eight reviews of ~4.5 MiB each (an UPDATE carries two objects of up to the API server's
/// 3 MiB) sent at once with their Content-Length over a slow link (4.1 MB, a pause, the
/// rest), in the default 32 MiB body budget: each takes its share of the budget all at
/// once, so they are all served. When each body bought
/// the budget step by step as its buffer doubled, all eight held ~4 MiB at the 4 MiB step,
/// none could take the next step, and all eight got 408 after the 10 s body timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_sent_at_once_are_all_served() {
    bounded(60, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let w = certs.serve(&[]);
        const N: usize = 8;
        let pad = "x".repeat(2_300_000);
        let mut tasks = Vec::new();
        for i in 0..N {
            let js = jobset(&[("example.com/padding", &pad)]);
            let mut r = review(&format!("large-{i}"), "UPDATE", &js);
            r["request"]["oldObject"] = js;
            let body = serde_json::to_vec(&r).unwrap();
            assert!(
                body.len() > 4_500_000 && body.len() < 7 << 20,
                "{}",
                body.len()
            );
            let ca = certs.ca.clone();
            let addr = w.tls;
            tasks.push(tokio::spawn(async move {
                let mut s = try_tls(addr, &ca).await.unwrap();
                let start = Instant::now();
                // The first 4.1 MB, a pause (a slow link: every body then fills its 4 MiB
                // buffer), the rest.
                let bytes = post_bytes(&body);
                let _ = s.write_all(&bytes[..4_100_000]).await;
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                let reply = exchange(&mut s, &bytes[4_100_000..]).await;
                (reply.status(), start.elapsed())
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        println!("{N} x 4.6 MB bodies at once: {statuses:?}");
        // All served. (Stuck bodies wait for the 10 s body timeout, and only a 408 frees the
        // budget for the others: measured before, one 408 and seven 200s after 10 s.)
        let refused: Vec<_> = statuses.iter().filter(|(s, _)| *s != Some(200)).collect();
        assert!(
            refused.is_empty(),
            "{} of {N} large bodies sent at once were not served: {statuses:?}",
            refused.len()
        );
    })
    .await;
}

/// Other clients cannot starve the probes: with 80 idle keep-alive connections held on each
/// port (past the admin port's cap of 64 and a webhook cap of 64) and 80 more that never send
/// a byte on the admin port, the admin port's /healthz and /readyz answer 200 (the TLS
/// self-check included) and the webhook port serves a new client. Idle connections make
/// room at a cap instead of newcomers being refused, and one address holds at most its
/// per-peer share. Before, the admin port reset newcomers past 64 and the self-check found
/// no free slot on the webhook port, so every replica turned NotReady and liveness failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_while_other_clients_hold_both_ports() {
    bounded(90, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let w = certs.serve(&["--max-connections", "64"]);
        const HELD: usize = 80;
        let get =
            |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes();
        let mut held_tls = Vec::new();
        let mut held_admin = Vec::new();
        for _ in 0..HELD {
            if let Ok(mut s) = try_tls(w.tls, &certs.ca).await {
                let _ = exchange(&mut s, &get("/healthz")).await;
                held_tls.push(s);
            }
            if let Ok(mut s) = TcpStream::connect(w.admin).await {
                if exchange(&mut s, &get("/healthz")).await.status().is_some() {
                    held_admin.push(s);
                }
            }
        }
        let mut silent = Vec::new();
        for _ in 0..HELD {
            if let Ok(s) = TcpStream::connect(w.admin).await {
                silent.push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;

        let mut failed = Vec::new();
        for round in 0..3 {
            for path in ["/healthz", "/readyz"] {
                let answer = match TcpStream::connect(w.admin).await {
                    Ok(mut s) => exchange(&mut s, &get(path)).await,
                    Err(e) => panic!("connect to the admin port: {e}"),
                };
                if answer.status() != Some(200) {
                    failed.push(format!("round {round}: admin {path}: {answer:?}"));
                }
            }
            let review = post_bytes(&opted_in_review(&format!("beside-held-{round}")));
            let answer = match try_tls(w.tls, &certs.ca).await {
                Ok(mut s) => exchange(&mut s, &review).await,
                Err(e) => Reply::Http(0, e),
            };
            if answer.status() != Some(200) {
                failed.push(format!("round {round}: review: {answer:?}"));
            }
        }
        println!(
            "held {} TLS, {} admin idle, {} admin silent; failures: {failed:?}",
            held_tls.len(),
            held_admin.len(),
            silent.len()
        );
        assert!(
            failed.is_empty(),
            "{} of 9 probes and reviews failed: {failed:?}",
            failed.len()
        );
        let m = w.metrics().await;
        let open = metric(&m, "jobset_restart_webhook_connections_open");
        // One address (all of this test's clients) holds at most half of the cap.
        assert!(open <= 33.0, "{open} connections open from one address");
        assert!(
            metric(&m, "jobset_restart_webhook_connections_evicted_total") >= 1.0,
            "{m}"
        );
    })
    .await;
}
