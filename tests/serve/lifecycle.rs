//! A running server over its life: certificate rotation, SIGTERM, the drain delay, config
//! hot reload, the development certificate.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_keeps_every_request() {
    bounded(90, async {
        let tmp = tempfile::tempdir().unwrap();
        let old = Certs::new(&tmp.path().join("old"));
        let new = Certs::new(&tmp.path().join("new"));
        let live = tmp.path().join("live");
        std::fs::create_dir(&live).unwrap();
        for f in ["tls.key", "tls.crt"] {
            std::fs::copy(old.dir.join(f), live.join(f)).unwrap();
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
        let body = serde_json::to_vec(&review("rot", "CREATE", &jobset(&[(IN_PLACE, "enabled")])))
            .unwrap();

        // Load during the rotation: one client with a new connection (handshake) per request
        // trusting both CAs (a caBundle during a CA rotation), one keep-alive client trusting
        // only the old CA (its open connection must survive the rotation).
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::<String>::new()));
        let fresh = w
            .client_builder(&[&old.ca, &new.ca])
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let kept = w.client(&[&old.ca]);
        let mut tasks = Vec::new();
        for client in [fresh, kept] {
            let (stop, ok, failed, body, url) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                body.clone(),
                w.url("/mutate"),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failed
                            .lock()
                            .unwrap()
                            .push(format!("status {}", r.status())),
                        Err(e) => failed.lock().unwrap().push(format!("{e:?}")),
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Rotate to a new CA and leaf; key first, like `certs` does.
        replace_file(&key, &std::fs::read(new.dir.join("tls.key")).unwrap());
        replace_file(&cert, &std::fs::read(new.dir.join("tls.crt")).unwrap());

        // New handshakes present the new certificate.
        let only_new = w
            .client_builder(&[&new.ca])
            .tls_info(true)
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let peer = eventually(
            Duration::from_secs(10),
            "a handshake trusting only the new CA",
            || async {
                let r = only_new.get(w.url("/healthz")).send().await.ok()?;
                let info = r.extensions().get::<reqwest::tls::TlsInfo>()?;
                info.peer_certificate().map(<[u8]>::to_vec)
            },
        )
        .await;
        assert_eq!(peer, new.leaf_der());
        let only_old = w
            .client_builder(&[&old.ca])
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        assert!(
            only_old.get(w.url("/healthz")).send().await.is_err(),
            "old CA must no longer verify"
        );
        let m = w.metrics().await;
        assert!(
            metric(
                &m,
                r#"jobset_restart_webhook_tls_cert_reloads_total{result="success"}"#
            ) >= 1.0
        );
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(&std::fs::read(new.dir.join("tls.crt")).unwrap())
                .unwrap();
        let not_after = pem.parse_x509().unwrap().validity().not_after.timestamp() as f64;
        assert_eq!(
            metric(&m, "jobset_restart_webhook_tls_cert_not_after_seconds"),
            not_after
        );

        // Broken files keep the last good pair and count an error.
        let errors = metric(
            &m,
            r#"jobset_restart_webhook_tls_cert_reloads_total{result="error"}"#,
        );
        replace_file(
            &cert,
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        );
        eventually(
            Duration::from_secs(10),
            "the reload error metric",
            || async {
                let now = w
                    .metric(r#"jobset_restart_webhook_tls_cert_reloads_total{result="error"}"#)
                    .await;
                (now > errors).then_some(())
            },
        )
        .await;
        let r = only_new
            .get(w.url("/healthz"))
            .send()
            .await
            .expect("still serving the last good pair");
        let info = r
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .expect("tls info");
        assert_eq!(info.peer_certificate(), Some(&new.leaf_der()[..]));
        tokio::task::block_in_place(|| {
            w.wait_log(
                &["keeping the last good certificate"],
                Duration::from_secs(5),
            )
        });

        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let failed = failed.lock().unwrap();
        assert!(
            failed.is_empty(),
            "{} failed requests: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(
            ok.load(Ordering::Relaxed) >= 20,
            "only {} requests",
            ok.load(Ordering::Relaxed)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_in_flight_requests_then_exits_0() {
    bounded(60, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let mut w = Webhook::start(&[
            "--tls-cert",
            &certs.cert(),
            "--tls-key",
            &certs.key(),
            "--shutdown-grace-period",
            "20s",
        ]);
        // Four requests whose bodies are half sent: in flight when the signal arrives.
        const N: usize = 4;
        let mut conns = Vec::new();
        let mut bodies = Vec::new();
        for i in 0..N {
            let uid = format!("inflight-{i}");
            let body =
                serde_json::to_vec(&review(&uid, "CREATE", &jobset(&[(IN_PLACE, "enabled")])))
                    .unwrap();
            let mut s = raw_tls(w.tls, &certs.ca, &[b"http/1.1"]).await;
            s.write_all(post_head(body.len()).as_bytes()).await.unwrap();
            s.write_all(&body[..body.len() / 2]).await.unwrap();
            s.flush().await.unwrap();
            conns.push(s);
            bodies.push((uid, body));
        }
        eventually(Duration::from_secs(10), "4 requests in flight", || async {
            (w.metric("jobset_restart_webhook_requests_in_flight").await == N as f64).then_some(())
        })
        .await;

        w.signal("TERM");

        // Draining: /readyz fails on the admin port, the webhook port refuses new connections.
        let admin = Webhook::admin_client();
        let body = eventually(Duration::from_secs(5), "/readyz 503", || async {
            let r = admin.get(w.admin_url("/readyz")).send().await.ok()?;
            (r.status() == 503).then_some(r.text().await.ok()?)
        })
        .await;
        assert!(body.contains("[-]shutdown failed"), "{body}");
        eventually(
            Duration::from_secs(5),
            "the webhook port to close",
            || async {
                tokio::net::TcpStream::connect(w.tls)
                    .await
                    .is_err()
                    .then_some(())
            },
        )
        .await;

        // Every in-flight request still gets its answer.
        for (s, (uid, body)) in conns.iter_mut().zip(&bodies) {
            s.write_all(&body[body.len() / 2..]).await.unwrap();
            s.flush().await.unwrap();
            let r = read_response(s).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.header("connection"), Some("close"));
            let answer: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(response(&answer, uid)["patchType"], "JSONPatch");
        }
        let status = tokio::task::block_in_place(|| w.wait_exit(Duration::from_secs(10)))
            .expect("serve exits after draining");
        assert_eq!(status.code(), Some(0), "{}", w.logs_text());
        tokio::task::block_in_place(|| {
            w.wait_log(&["all connections finished"], Duration::from_secs(5))
        });
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delay_keeps_serving_with_connection_close() {
    bounded(60, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let mut w = Webhook::start(&[
            "--tls-cert",
            &certs.cert(),
            "--tls-key",
            &certs.key(),
            "--drain-delay",
            "2s",
        ]);
        let c = w.client(&[&certs.ca]);
        let js = review("d", "CREATE", &jobset(&[]));
        post_review(&c, &w, &js).await;
        let start = Instant::now();
        w.signal("INT");
        let admin = Webhook::admin_client();
        eventually(Duration::from_secs(2), "/readyz 503", || async {
            let r = admin.get(w.admin_url("/readyz")).send().await.ok()?;
            (r.status() == 503).then_some(())
        })
        .await;
        // Within the delay: still answering, on the TLS port too, but closing connections.
        assert_eq!(c.get(w.url("/readyz")).send().await.unwrap().status(), 503);
        let r = c
            .post(w.url("/mutate"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&js).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["connection"], "close");
        assert!(start.elapsed() < Duration::from_secs(2));
        let status =
            tokio::task::block_in_place(|| w.wait_exit(Duration::from_secs(10))).expect("exits");
        assert_eq!(status.code(), Some(0));
        assert!(
            start.elapsed() >= Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_hot_reload_applies_good_files_and_keeps_the_last_good_one() {
    bounded(60, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(&tmp.path().join("certs"));
        let cfg = tmp.path().join("config.yaml");
        std::fs::write(&cfg, "targets: jobsets\n").unwrap();
        let w = Webhook::start(&[
            "--tls-cert",
            &certs.cert(),
            "--tls-key",
            &certs.key(),
            "--config",
            cfg.to_str().unwrap(),
            "--reload-interval",
            "200ms",
        ]);
        let c = w.client(&[&certs.ca]);
        let plain = jobset(&[]);
        let patched = |answer: &Value| answer["response"]["patch"].is_string();
        assert!(!patched(
            &post_review(&c, &w, &review("a", "CREATE", &plain)).await
        ));

        replace_file(&cfg, b"targets: jobsets\ndefaults:\n  inPlace: enabled\n");
        eventually(
            Duration::from_secs(10),
            "the new default to apply",
            || async {
                patched(&post_review(&c, &w, &review("b", "CREATE", &plain)).await).then_some(())
            },
        )
        .await;
        let m = w.metrics().await;
        assert_eq!(
            metric(
                &m,
                r#"jobset_restart_webhook_config_reloads_total{result="success"}"#
            ),
            1.0
        );
        assert_eq!(
            metric(&m, "jobset_restart_webhook_config_last_reload_successful"),
            1.0
        );

        replace_file(&cfg, b"defaults:\n  inPlace: maybe\n");
        eventually(Duration::from_secs(10), "the reload error", || async {
            let m = w.metrics().await;
            (metric(
                &m,
                r#"jobset_restart_webhook_config_reloads_total{result="error"}"#,
            ) == 1.0)
                .then_some(())
        })
        .await;
        assert_eq!(
            w.metric("jobset_restart_webhook_config_last_reload_successful")
                .await,
            0.0
        );
        // The last good config still applies.
        assert!(patched(
            &post_review(&c, &w, &review("c", "CREATE", &plain)).await
        ));
        tokio::task::block_in_place(|| {
            w.wait_log(
                &[
                    "keeping the last good config",
                    "defaults.inPlace",
                    "config.yaml",
                ],
                Duration::from_secs(5),
            )
        });
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_certificate_when_no_files_are_given() {
    bounded(60, async {
        let w = Webhook::start(&[]);
        assert!(
            w.logs_text()
                .contains("generated a self-signed development CA")
        );
        let c = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .http1_only()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let r = c
            .get(format!("https://127.0.0.1:{}/readyz", w.tls.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    })
    .await;
}
