//! `--client-ca`: mutual TLS on the webhook port, with the real binary on 127.0.0.1. Callers
//! without a certificate, or with one from another CA, are refused at the handshake; a
//! certificate from the CA is served; the CA file is re-read; the admin port stays plain and
//! `/readyz` stays honest.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use testkit::admission_reviews::*;
use testkit::hardening::*;
use testkit::webhook_process::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A client CA and a client certificate it signed (what the API server presents).
struct ClientPki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl ClientPki {
    fn new(name: &str) -> Self {
        let mut ca = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{name} client CA"));
        ca.distinguished_name = dn;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        leaf.distinguished_name = dn;
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert_pem = leaf.signed_by(&key, &issuer).unwrap().pem();
        Self {
            ca_pem,
            cert_pem,
            key_pem: key.serialize_pem(),
        }
    }

    fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}{}", self.cert_pem, self.key_pem).as_bytes())
            .unwrap()
    }
}

/// How a raw TLS exchange (one review) with the webhook port ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// HTTP status of the answer.
    Served(u16),
    /// Refused with this TLS alert (in the handshake or on the first read).
    Refused(rustls::AlertDescription),
}

async fn exchange_with(w: &Webhook, server_ca: &[u8], client: Option<&ClientPki>) -> Outcome {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client {
        None => builder.with_no_client_auth(),
        Some(p) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(p.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(p.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(w.tls).await.unwrap();
    let alert = |e: &std::io::Error| -> rustls::AlertDescription {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(a)) => *a,
            _ => panic!("not a TLS alert: {e}"),
        }
    };
    let mut s = match tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    {
        Ok(s) => s,
        Err(e) => return Outcome::Refused(alert(&e)),
    };
    let body =
        serde_json::to_vec(&review("m", "CREATE", &jobset(&[(IN_PLACE, "enabled")]))).unwrap();
    // With TLS 1.3 the refusal arrives after the client's Finished: on the write or the read.
    if let Err(e) = s.write_all(&post_bytes(&body)).await {
        return Outcome::Refused(alert(&e));
    }
    let mut buf = vec![0u8; 64 * 1024];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer or a refusal")
    {
        Err(e) => Outcome::Refused(alert(&e)),
        Ok(0) => panic!("closed without an alert"),
        Ok(_) => {
            let head = String::from_utf8_lossy(&buf);
            Outcome::Served(head.split(' ').nth(1).unwrap().parse().unwrap())
        }
    }
}

async fn review_with(w: &Webhook, server_ca: &[u8], client: &ClientPki, uid: &str) -> Value {
    let c = w
        .client_builder(&[server_ca])
        .identity(client.identity())
        .build()
        .unwrap();
    let js = jobset(&[(IN_PLACE, "enabled")]);
    let r = c
        .post(w.url("/mutate"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&review(uid, "CREATE", &js)).unwrap())
        .send()
        .await
        .expect("a client with a certificate from the CA is served");
    assert_eq!(r.status(), 200);
    let a: Value = r.json().await.unwrap();
    apply_patch(response(&a, uid), &js);
    a
}

fn write(path: &Path, text: &str) {
    replace_file(path, text.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ca_requires_a_certificate_from_the_ca() {
    bounded(90, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(&tmp.path().join("serving"));
        let (trusted, other) = (ClientPki::new("trusted"), ClientPki::new("other"));
        let ca_file = tmp.path().join("client-ca.crt");
        write(&ca_file, &trusted.ca_pem);
        let w = certs.serve(&[
            "--client-ca",
            ca_file.to_str().unwrap(),
            "--reload-interval",
            "200ms",
        ]);

        // No certificate, or one from another CA: refused in the handshake.
        assert_eq!(
            exchange_with(&w, &certs.ca, None).await,
            Outcome::Refused(rustls::AlertDescription::CertificateRequired)
        );
        let r = exchange_with(&w, &certs.ca, Some(&other)).await;
        assert!(matches!(r, Outcome::Refused(_)), "{r:?}");
        let plain = w.client(&[&certs.ca]);
        assert!(plain.get(w.url("/healthz")).send().await.is_err());
        // A certificate from the CA: served.
        assert_eq!(
            exchange_with(&w, &certs.ca, Some(&trusted)).await,
            Outcome::Served(200)
        );
        review_with(&w, &certs.ca, &trusted, "mtls-1").await;

        // The admin port stays plain, and /readyz says what the self-check saw.
        let admin = Webhook::admin_client();
        let r = admin.get(w.admin_url("/readyz")).send().await.unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("[+]tls ok") && body.contains("reached client authentication"),
            "{body}"
        );
        // Exactly the three refused clients above: the self-check's own handshake, refused
        // on purpose, is not a TLS error (it was counted on every probe, ~12 a minute).
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let r = admin.get(w.admin_url("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let m = w.metrics().await;
        assert_eq!(
            metric(&m, "jobset_restart_webhook_tls_handshake_errors_total"),
            3.0,
            "{m}"
        );
        let listening = &w.log_events("listening")[0];
        assert_eq!(listening["client_ca"], ca_file.to_str().unwrap());

        // The CA file is re-read: now only `other` is trusted.
        write(&ca_file, &other.ca_pem);
        eventually(Duration::from_secs(10), "the new client CA", || async {
            (exchange_with(&w, &certs.ca, Some(&other)).await == Outcome::Served(200)).then_some(())
        })
        .await;
        assert!(matches!(
            exchange_with(&w, &certs.ca, Some(&trusted)).await,
            Outcome::Refused(_)
        ));
        review_with(&w, &certs.ca, &other, "mtls-2").await;

        // A broken file keeps the last good CA; a bundle of both trusts both.
        write(
            &ca_file,
            "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n",
        );
        tokio::task::block_in_place(|| {
            w.wait_log(
                &["keeping the last good client CA"],
                Duration::from_secs(10),
            )
        });
        review_with(&w, &certs.ca, &other, "mtls-3").await;
        write(&ca_file, &format!("{}{}", trusted.ca_pem, other.ca_pem));
        eventually(Duration::from_secs(10), "the two-CA bundle", || async {
            (exchange_with(&w, &certs.ca, Some(&trusted)).await == Outcome::Served(200))
                .then_some(())
        })
        .await;
        review_with(&w, &certs.ca, &other, "mtls-4").await;
        review_with(&w, &certs.ca, &trusted, "mtls-5").await;
        let r = admin.get(w.admin_url("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_client_ca_no_certificate_is_asked_for() {
    bounded(60, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(tmp.path());
        let w = certs.serve(&[]);
        let pki = ClientPki::new("any");
        assert_eq!(
            exchange_with(&w, &certs.ca, None).await,
            Outcome::Served(200)
        );
        assert_eq!(
            exchange_with(&w, &certs.ca, Some(&pki)).await,
            Outcome::Served(200)
        );
        let r = Webhook::admin_client()
            .get(w.admin_url("/readyz"))
            .send()
            .await
            .unwrap();
        let body = r.text().await.unwrap();
        assert!(body.contains("[+]tls ok: handshake with"), "{body}");
        assert_eq!(w.log_events("listening")[0]["client_ca"], "-");
    })
    .await;
}

#[test]
fn a_bad_client_ca_stops_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::new(tmp.path());
    let garbage = tmp.path().join("garbage.crt");
    std::fs::write(&garbage, "hello").unwrap();
    let missing = tmp.path().join("missing.crt");
    for (file, want) in [
        (&garbage, "garbage.crt: no CERTIFICATE block found"),
        (&missing, "missing.crt"),
    ] {
        let child = std::process::Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--tls-cert",
                &certs.cert(),
                "--tls-key",
                &certs.key(),
                "--client-ca",
                file.to_str().unwrap(),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded: a server that starts anyway is killed, and the assertion below fails.
        let pid = child.id();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(20));
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        });
        let out = child.wait_with_output().unwrap();
        drop(killer);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{err}");
    }
}
