//! `serve` end to end: the real binary over real TLS on 127.0.0.1, certificates from the
//! `certs` subcommand, HTTP/1.1 clients that trust only the test CA.

#[path = "support/admission_reviews.rs"]
mod admission_reviews;
#[path = "support/webhook_process.rs"]
mod webhook_process;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use admission_reviews::*;
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use webhook_process::*;

/// Every test runs under this bound, so a hang fails instead of stalling CI.
async fn bounded<F: Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs}s"));
}

struct Certs {
    dir: PathBuf,
    ca: Vec<u8>,
    bundle: String,
}

impl Certs {
    fn new(dir: &Path) -> Self {
        let bundle = write_certs(dir);
        let ca = std::fs::read(dir.join("ca.crt")).unwrap();
        Self {
            dir: dir.to_owned(),
            ca,
            bundle,
        }
    }
    fn cert(&self) -> String {
        self.dir.join("tls.crt").display().to_string()
    }
    fn key(&self) -> String {
        self.dir.join("tls.key").display().to_string()
    }
    fn leaf_der(&self) -> Vec<u8> {
        let pem = std::fs::read(self.dir.join("tls.crt")).unwrap();
        let (_, p) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        p.contents
    }
}

async fn post_review(c: &reqwest::Client, w: &Webhook, review: &Value) -> Value {
    let r = c
        .post(w.url("/mutate?timeout=10s"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(review).unwrap())
        .send()
        .await
        .expect("POST /mutate");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    r.json().await.expect("JSON answer")
}

async fn post_raw(
    c: &reqwest::Client,
    w: &Webhook,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, String) {
    let r = c
        .post(w.url("/mutate"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST /mutate");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

fn container(obj: &Value) -> &Value {
    &obj["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_over_tls() {
    bounded(60, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(&tmp.path().join("certs"));
        // `certs` prints the base64 CA bundle and nothing else on stdout.
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&certs.bundle)
            .expect("stdout is base64");
        assert_eq!(decoded, certs.ca);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for key in ["tls.key", "ca.key"] {
                let mode = std::fs::metadata(certs.dir.join(key)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{key}");
            }
        }

        let w = Webhook::start(&[
            "--tls-cert",
            &certs.cert(),
            "--tls-key",
            &certs.key(),
            "--targets",
            "jobsets,pods",
        ]);
        let c = w.client(&[&certs.ca]);

        // An opted-in JobSet CREATE gets a base64 JSON Patch that does what SPEC §4 says.
        let js = jobset(&[(IN_PLACE, "enabled")]);
        let answer = post_review(&c, &w, &review("uid-create", "CREATE", &js)).await;
        let r = response(&answer, "uid-create");
        assert_eq!(r["allowed"], true);
        let out = apply_patch(r, &js);
        let ctr = container(&out);
        assert_eq!(ctr["restartPolicy"], "Never");
        assert_eq!(
            ctr["restartPolicyRules"],
            json!([{ "action": "RestartAllContainers", "exitCodes": { "operator": "NotIn", "values": [0] } }])
        );
        assert_eq!(
            out["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["restartPolicy"],
            "Never"
        );
        assert_eq!(
            out["metadata"]["annotations"][APPLIED],
            "workers/trainer=RestartAllContainers:NotIn(0)"
        );
        assert_eq!(container(&out)["image"], container(&js)["image"]);

        // An invalid annotation is denied with 422 and the exact message.
        let bad = jobset(&[(IN_PLACE, "enabled"), ("restart.jobset.dev/on-exit-codes", "42,abc")]);
        let answer = post_review(&c, &w, &review("uid-deny", "CREATE", &bad)).await;
        let r = response(&answer, "uid-deny");
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 422);
        assert_eq!(
            r["status"]["message"],
            r#"restart.jobset.dev/on-exit-codes: "42,abc": "abc" is not an exit code (0-255) or range a-b"#
        );
        assert!(r.get("patch").is_none() && r.get("patchType").is_none(), "{r}");

        // A JobSet pod (no cluster: parent unknown) and an UPDATE: allowed, no patch.
        let pod = jobset_pod();
        let answer = post_review(&c, &w, &review("uid-pod", "CREATE", &pod)).await;
        let r = response(&answer, "uid-pod");
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none() && r.get("patchType").is_none(), "{r}");
        let answer = post_review(&c, &w, &review("uid-update", "UPDATE", &js)).await;
        let r = response(&answer, "uid-update");
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none() && r.get("patchType").is_none(), "{r}");

        // Probes on both ports.
        for url in [w.url("/readyz"), w.url("/healthz")] {
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
        }
        let admin = Webhook::admin_client();
        let r = admin.get(w.admin_url("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body = r.text().await.unwrap();
        assert!(body.contains("[+]tls ok") && body.contains("[+]config ok"), "{body}");
        assert_eq!(admin.get(w.admin_url("/healthz")).send().await.unwrap().status(), 200);

        // Metrics moved with the requests.
        let m = w.metrics().await;
        let p = "jobset_restart_webhook_";
        for (series, want) in [
            (r#"requests_total{kind="JobSet",operation="CREATE",outcome="patched",code="200"}"#, 1.0),
            (r#"requests_total{kind="JobSet",operation="CREATE",outcome="denied",code="200"}"#, 1.0),
            (r#"requests_total{kind="Pod",operation="CREATE",outcome="allowed",code="200"}"#, 1.0),
            (r#"requests_total{kind="JobSet",operation="UPDATE",outcome="allowed",code="200"}"#, 1.0),
            (r#"patch_operations_total{kind="JobSet"}"#, 4.0),
            (r#"denials_total{kind="JobSet"}"#, 1.0),
            ("request_duration_seconds_count", 4.0),
            ("requests_in_flight", 0.0),
            ("panics_total", 0.0),
        ] {
            assert_eq!(metric(&m, &format!("{p}{series}")), want, "{series}\n{m}");
        }
        assert!(metric(&m, &format!("{p}tls_cert_not_after_seconds")) > 1.7e9);
        assert!(m.contains(r#"request_duration_seconds_bucket{le="0.0001"}"#), "{m}");

        // One log line per review.
        let lines = w.log_events("review");
        assert_eq!(lines.len(), 4, "{}", w.logs_text());
        let first = lines.iter().find(|l| l["uid"] == "uid-create").expect("uid-create logged");
        assert_eq!(first["kind"], "JobSet");
        assert_eq!(first["namespace"], "ml");
        assert_eq!(first["name"], "train");
        assert_eq!(first["operation"], "CREATE");
        assert_eq!(first["outcome"], "patched");
        assert_eq!(first["patch_ops"], 4);
        assert!(first["micros"].as_u64().is_some(), "{first}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused() {
    bounded(60, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let w = Webhook::start(&["--tls-cert", &certs.cert(), "--tls-key", &certs.key()]);
        let c = w.client(&[&certs.ca]);

        let (code, body) = post_raw(&c, &w, "application/json", b"this is not json".to_vec()).await;
        assert_eq!(code, 400);
        assert!(body.starts_with("the body is not valid JSON"), "{body}");
        let no_request = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec();
        let (code, body) = post_raw(&c, &w, "application/json; charset=utf-8", no_request).await;
        assert_eq!((code, body.as_str()), (400, "the AdmissionReview has no request\n"));
        let (code, body) = post_raw(&c, &w, "application/json", Vec::new()).await;
        assert_eq!(code, 400, "{body}");
        let (code, _) = post_raw(&c, &w, "application/json", vec![b' '; 8 << 20]).await;
        assert_eq!(code, 413);
        let js = serde_json::to_vec(&review("u", "CREATE", &jobset(&[]))).unwrap();
        let (code, body) = post_raw(&c, &w, "text/plain", js.clone()).await;
        assert_eq!(code, 415, "{body}");
        let r = c.get(w.url("/mutate")).send().await.unwrap();
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()["allow"], "POST");
        assert_eq!(c.get(w.url("/nothing")).send().await.unwrap().status(), 404);

        // A chunked body over the limit is refused too, without waiting for its end.
        let mut s = raw_tls(w.tls, &certs.ca, &[b"http/1.1"]).await;
        s.write_all(
            b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..8 {
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            if s.write_all(&framed).await.is_err() {
                break;
            }
        }
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 413);
        assert_eq!(r.header("connection"), Some("close"));

        // Still serving.
        let (code, _) = post_raw(&c, &w, "application/json", js).await;
        assert_eq!(code, 200);

        let m = w.metrics().await;
        let p = "jobset_restart_webhook_bad_requests_total";
        assert_eq!(metric(&m, &format!("{p}{{code=\"400\"}}")), 3.0, "{m}");
        assert_eq!(metric(&m, &format!("{p}{{code=\"413\"}}")), 2.0, "{m}");
        assert_eq!(metric(&m, &format!("{p}{{code=\"415\"}}")), 1.0, "{m}");
        assert_eq!(metric(&m, &format!("{p}{{code=\"405\"}}")), 1.0, "{m}");
        assert_eq!(metric(&m, &format!("{p}{{code=\"404\"}}")), 1.0, "{m}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_header_is_closed_but_idle_keep_alive_is_not() {
    bounded(60, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let w = Webhook::start(&[
            "--tls-cert",
            &certs.cert(),
            "--tls-key",
            &certs.key(),
            "--header-read-timeout",
            "1s",
        ]);

        // Half a header, then silence: the server closes the connection after ~1 s.
        let mut s = raw_tls(w.tls, &certs.ca, &[b"http/1.1"]).await;
        s.write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Ty")
            .await
            .unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the server must close a half-sent request");
        let elapsed = start.elapsed();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
            "closed after {elapsed:?}"
        );

        // A keep-alive connection idle for longer than the header timeout stays usable.
        let body = serde_json::to_vec(&review("ka-1", "CREATE", &jobset(&[(IN_PLACE, "enabled")])))
            .unwrap();
        let mut s = raw_tls(w.tls, &certs.ca, &[b"http/1.1"]).await;
        let r = raw_post(&mut s, &body).await;
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let r = raw_post(&mut s, &body).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), None);

        let m = w.metrics().await;
        assert_eq!(
            metric(
                &m,
                r#"jobset_restart_webhook_connection_timeouts_total{phase="header"}"#
            ),
            1.0,
            "{m}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handshakes_slow_bodies_and_extra_connections_are_cut_off() {
    bounded(60, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let w = Webhook::start(&[
            "--tls-cert",
            &certs.cert(),
            "--tls-key",
            &certs.key(),
            "--tls-handshake-timeout",
            "1s",
            "--body-read-timeout",
            "1s",
            "--max-connections",
            "3",
        ]);
        let closes_within = |mut s: tokio::net::TcpStream, min: Duration, max: Duration| async move {
            let start = Instant::now();
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("the server must close the connection");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
            let elapsed = start.elapsed();
            assert!(elapsed >= min && elapsed < max, "closed after {elapsed:?}");
        };

        // A TCP connection that never starts TLS.
        let tcp = tokio::net::TcpStream::connect(w.tls).await.unwrap();
        closes_within(tcp, Duration::from_millis(900), Duration::from_secs(4)).await;

        // A body that stops arriving: 408, and the connection closes.
        let mut s = raw_tls(w.tls, &certs.ca, &[b"http/1.1"]).await;
        s.write_all(post_head(1000).as_bytes()).await.unwrap();
        s.write_all(b"{\"apiVersion\":").await.unwrap();
        let start = Instant::now();
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(start.elapsed() < Duration::from_secs(4), "{:?}", start.elapsed());
        drop(s);

        // --max-connections 3: a fourth connection is closed at once.
        eventually(Duration::from_secs(5), "earlier connections to close", || async {
            (w.metric("jobset_restart_webhook_connections_open").await == 0.0).then_some(())
        })
        .await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(raw_tls(w.tls, &certs.ca, &[b"http/1.1"]).await);
        }
        let tcp = tokio::net::TcpStream::connect(w.tls).await.unwrap();
        closes_within(tcp, Duration::ZERO, Duration::from_secs(1)).await;
        let body = serde_json::to_vec(&review("cap", "CREATE", &jobset(&[]))).unwrap();
        assert_eq!(raw_post(&mut held[0], &body).await.status, 200);

        let m = w.metrics().await;
        let p = "jobset_restart_webhook_";
        for (series, want) in [
            (r#"connection_timeouts_total{phase="handshake"}"#, 1.0),
            (r#"connection_timeouts_total{phase="body"}"#, 1.0),
            (r#"bad_requests_total{code="408"}"#, 1.0),
            ("connections_rejected_total", 1.0),
            ("connections_open", 3.0),
        ] {
            assert_eq!(metric(&m, &format!("{p}{series}")), want, "{series}\n{m}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_offers_http1_only_unless_http2_is_on() {
    bounded(60, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let args = ["--tls-cert", &certs.cert(), "--tls-key", &certs.key()];
        let w = Webhook::start(&args);
        let s = raw_tls(w.tls, &certs.ca, &[b"h2", b"http/1.1"]).await;
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        drop(w);

        let w = Webhook::start(&[&args[..], &["--http2"]].concat());
        let s = raw_tls(w.tls, &certs.ca, &[b"h2", b"http/1.1"]).await;
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut s = raw_tls(w.tls, &certs.ca, &[b"http/1.1"]).await;
        let body = serde_json::to_vec(&review("h1", "CREATE", &jobset(&[]))).unwrap();
        assert_eq!(raw_post(&mut s, &body).await.status, 200);
    })
    .await;
}

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

/// Runs the binary to its exit (bounded) and returns (success, stderr).
fn run_to_exit(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} did not exit within 20s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn startup_errors_name_the_file_and_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::new(tmp.path());
    let listen = ["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
    let missing = tmp.path().join("missing.crt");
    let (ok, err) = run_to_exit(
        &[
            &[
                "serve",
                "--tls-cert",
                missing.to_str().unwrap(),
                "--tls-key",
                &certs.key(),
            ],
            &listen[..],
        ]
        .concat(),
    );
    assert!(!ok && err.contains("missing.crt"), "{err}");

    let garbage = tmp.path().join("garbage.crt");
    std::fs::write(&garbage, "hello").unwrap();
    let (ok, err) = run_to_exit(
        &[
            &[
                "serve",
                "--tls-cert",
                garbage.to_str().unwrap(),
                "--tls-key",
                &certs.key(),
            ],
            &listen[..],
        ]
        .concat(),
    );
    assert!(
        !ok && err.contains("garbage.crt: no CERTIFICATE block found"),
        "{err}"
    );

    let other = Certs::new(&tmp.path().join("other"));
    let (ok, err) = run_to_exit(
        &[
            &[
                "serve",
                "--tls-cert",
                &certs.cert(),
                "--tls-key",
                &other.key(),
            ],
            &listen[..],
        ]
        .concat(),
    );
    assert!(
        !ok && err.contains("is not the private key of the certificate"),
        "{err}"
    );

    let cfg = tmp.path().join("bad.yaml");
    std::fs::write(&cfg, "defaults:\n  inPlace: maybe\n").unwrap();
    let (ok, err) =
        run_to_exit(&[&["serve", "--config", cfg.to_str().unwrap()], &listen[..]].concat());
    assert!(
        !ok && err.contains("bad.yaml") && err.contains("defaults.inPlace"),
        "{err}"
    );

    let (ok, err) = run_to_exit(&[&["serve", "--tls-cert", &certs.cert()], &listen[..]].concat());
    assert!(!ok && err.contains("--tls-key"), "{err}");
}

/// A zero `--reload-interval` is refused at start, naming the flag and what it takes; it
/// used to pass, and the file reloaders (tokio intervals) then panicked, so rotated
/// certificates were never picked up while the server kept serving.
#[test]
fn zero_reload_interval_is_a_startup_error() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::new(tmp.path());
    let listen = ["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
    for zero in ["0s", "0", "0ms"] {
        let (ok, err) = run_to_exit(
            &[
                &[
                    "serve",
                    "--no-cluster",
                    "--tls-cert",
                    &certs.cert(),
                    "--tls-key",
                    &certs.key(),
                    "--reload-interval",
                    zero,
                ],
                &listen[..],
            ]
            .concat(),
        );
        assert!(!ok, "{zero}: {err}");
        assert!(
            err.contains("--reload-interval") && err.contains("more than 0"),
            "{zero}: {err}"
        );
        assert!(!err.contains("panic"), "{zero}: {err}");
    }
}

#[test]
fn zero_capability_interval_is_a_startup_error() {
    // A zero period would send dry-run probes to the API server without pause.
    let (ok, err) = run_to_exit(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--capability-interval",
        "0s",
    ]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("--capability-interval") && err.contains("more than 0"),
        "{err}"
    );
}
