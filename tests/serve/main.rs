//! `serve` end to end: the real binary over real TLS on 127.0.0.1, certificates from the
//! `certs` subcommand, HTTP/1.1 clients that trust only the test CA.

mod lifecycle;
mod readiness;
mod startup;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use testkit::hardening::bounded;

use base64::Engine as _;
use serde_json::{Value, json};
use testkit::admission_reviews::*;
use testkit::webhook_process::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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

        // An opted-in JobSet CREATE gets a base64 JSON Patch that does what the README (Opting in) says.
        let js = jobset(&[(IN_PLACE, "enabled")]);
        let answer = post_review(&c, &w, &review("uid-create", "CREATE", &js)).await;
        let r = response(&answer, "uid-create");
        assert_eq!(r["allowed"], true);
        let out = apply_patch(r, &js);
        let ctr = container(&out);
        assert_eq!(ctr["restartPolicy"], "Never");
        // Without a cluster the API server's capability is unknown: Restart, with a warning.
        assert_eq!(
            ctr["restartPolicyRules"],
            json!([{ "action": "Restart", "exitCodes": { "operator": "NotIn", "values": [0] } }])
        );
        assert!(
            r["warnings"][0]
                .as_str()
                .is_some_and(|w| w.starts_with("the action defaults to Restart: ")),
            "{r}"
        );
        assert_eq!(
            out["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["restartPolicy"],
            "Never"
        );
        assert_eq!(
            out["metadata"]["annotations"][APPLIED],
            "workers/trainer=Restart:NotIn(0)"
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
        // Spans tie the line to its review and its connection.
        assert_eq!(first["spans"]["review"]["uid"], "uid-create", "{first}");
        let peer = first["spans"]["conn"]["peer"].as_str().unwrap_or_default();
        assert!(peer.starts_with("127.0.0.1:"), "{first}");
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
            // This test's clients all come from one address.
            "--max-connections-per-peer",
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

        // --max-connections 3, none idle (each waits for its head): a fourth connection is
        // closed at once.
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

/// HTTP/1.1 only: a client offering h2 first gets `http/1.1`, and `--http2` is gone (h2
/// escaped the body budget and the head deadline, and kube-apiserver calls service
/// webhooks over HTTP/1.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_offers_http1_only_and_there_is_no_http2_flag() {
    bounded(60, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let args = ["--tls-cert", &certs.cert(), "--tls-key", &certs.key()];
        let w = Webhook::start(&args);
        let s = raw_tls(w.tls, &certs.ca, &[b"h2", b"http/1.1"]).await;
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let mut s = raw_tls(w.tls, &certs.ca, &[b"h2", b"http/1.1"]).await;
        let body = serde_json::to_vec(&review("h1", "CREATE", &jobset(&[]))).unwrap();
        assert_eq!(raw_post(&mut s, &body).await.status, 200);
        drop(w);

        let mut child = Command::new(BIN)
            .args(["serve", "--no-cluster", "--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0", "--http2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("--http2"),
            "serve must refuse --http2: {err}"
        );
    })
    .await;
}

/// TLS 1.3 only by default (`--tls-min-version 1.3`): a client limited to TLS 1.2 is refused
/// in the handshake; `--tls-min-version 1.2` lets it in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_only_with_tls_min_version() {
    bounded(60, async {
        use rustls::pki_types::pem::PemObject as _;
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let tls12 = |addr: std::net::SocketAddr, ca: Vec<u8>| async move {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
                roots.add(c.unwrap()).unwrap();
            }
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(
                    rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                    tcp,
                )
                .await
                .map(|_| ())
        };
        let args = ["--tls-cert", &certs.cert(), "--tls-key", &certs.key()];
        let w = Webhook::start(&args);
        let refused = tls12(w.tls, certs.ca.clone()).await;
        assert!(refused.is_err(), "a TLS 1.2 client was served by default");
        drop(w);
        let w = Webhook::start(&[&args[..], &["--tls-min-version", "1.2"]].concat());
        tls12(w.tls, certs.ca.clone())
            .await
            .expect("TLS 1.2 with --tls-min-version 1.2");
    })
    .await;
}
