//! `/readyz` with the cluster side on: it waits for the first sync with the API server, so a
//! kubeconfig whose API server does not answer keeps the replica out of the endpoints.

use super::*;

/// A kubeconfig for an API server on a loopback port where nothing listens.
fn unreachable_kubeconfig(dir: &Path) -> PathBuf {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
        // dropped: the port is closed, connections are refused
    };
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: gone\n\
             clusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:{port}\n    \
             insecure-skip-tls-verify: true\n\
             users:\n- name: u\n  user:\n    token: not-a-real-token\n\
             contexts:\n- name: gone\n  context:\n    cluster: gone\n    user: u\n    namespace: default\n"
        ),
    )
    .unwrap();
    path
}

/// Before the fix `/readyz` turned 200 as soon as a probe round *finished* (every answer
/// unknown) and the node watch had failed once: about a second after start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_does_not_answer_keeps_readyz_failing() {
    bounded(60, async {
        let tmp = tempfile::tempdir().unwrap();
        let certs = Certs::new(&tmp.path().join("certs"));
        let kubeconfig = unreachable_kubeconfig(tmp.path());
        let w = Webhook::start_with_kubeconfig(
            &kubeconfig,
            &["--tls-cert", &certs.cert(), "--tls-key", &certs.key()],
        );
        let admin = Webhook::admin_client();
        let start = Instant::now();
        let mut last = (0u16, String::new());
        // The probe loop retries unanswered rounds and the watches back off; 10 s covers
        // several of each.
        while start.elapsed() < Duration::from_secs(10) {
            let r = admin.get(w.admin_url("/readyz")).send().await.unwrap();
            let code = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert_ne!(
                code,
                200,
                "/readyz is 200 after {:?} without reaching the API server:\n{body}",
                start.elapsed()
            );
            last = (code, body);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let (code, body) = last;
        assert_eq!(code, 503, "{body}");
        for line in [
            "[-]cluster-caches failed: waiting for the first list of namespaces, nodes: ",
            "[-]cluster-capabilities failed: no capability probe has reached the API server yet",
            "[+]tls ok",
        ] {
            assert!(body.contains(line), "{line:?} not in\n{body}");
        }
        // The JobSet watch is off without the pod target.
        assert!(
            body.contains("jobsets not watched (the pod target is off)"),
            "{body}"
        );
        let m = w.metrics().await;
        let p = "jobset_restart_webhook_";
        for task in [
            "namespaces-watch",
            "nodes-watch",
            "jobsets-switch",
            "capability-probe",
            "cert-reload",
        ] {
            assert_eq!(
                metric(
                    &m,
                    &format!("{p}background_task_restarts_total{{task=\"{task}\"}}")
                ),
                0.0,
                "{task}\n{m}"
            );
        }
        assert!(
            metric(
                &m,
                &format!("{p}cluster_watch_errors_total{{cache=\"namespaces\"}}")
            ) >= 1.0,
            "{m}"
        );
        assert!(
            !m.contains("cluster_capability_last_answered_probe_timestamp_seconds"),
            "no round was answered\n{m}"
        );
    })
    .await;
}

/// A self-signed pair for `localhost` valid from `from` to `until` (seconds from now).
fn pair_valid(dir: &Path, from: i64, until: i64) -> (String, String) {
    let now = time::OffsetDateTime::now_utc();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = now + time::Duration::seconds(from);
    params.not_after = now + time::Duration::seconds(until);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

async fn readyz(w: &Webhook) -> (u16, String) {
    let r = Webhook::admin_client()
        .get(w.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Before the fix an expired or not-yet-valid serving certificate kept `/readyz` at 200 (the
/// self-check accepts any certificate): the replica stayed in the endpoints while the API
/// server refused every call to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_serving_certificate_fails_readyz() {
    bounded(60, async {
        let tmp = tempfile::tempdir().unwrap();
        let (cert, key) = pair_valid(&tmp.path().join("expired"), -2 * 86_400, -60);
        let w = Webhook::start(&["--tls-cert", &cert, "--tls-key", &key]);
        let (code, body) = readyz(&w).await;
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains("[-]certificate failed: the serving certificate"),
            "{body}"
        );
        assert!(body.contains("expired at"), "{body}");
        drop(w);

        let (cert, key) = pair_valid(&tmp.path().join("future"), 3600, 86_400);
        let w = Webhook::start(&["--tls-cert", &cert, "--tls-key", &key]);
        let (code, body) = readyz(&w).await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("is not valid before"), "{body}");
        drop(w);

        // Valid, but for another name than the one the API server dials; then rotated to a
        // certificate that covers it.
        let certs = Certs::new(&tmp.path().join("good"));
        let (cert, key) = pair_valid(&tmp.path().join("rotating"), -60, 86_400);
        let w = Webhook::start(&[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-server-name",
            "jobset-restart-webhook.jobset-restart-webhook.svc",
            "--reload-interval",
            "100ms",
        ]);
        let (code, body) = readyz(&w).await;
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains(
                "does not cover --tls-server-name jobset-restart-webhook.jobset-restart-webhook.svc"
            ),
            "{body}"
        );
        replace_file(Path::new(&key), &std::fs::read(certs.key()).unwrap());
        replace_file(Path::new(&cert), &std::fs::read(certs.cert()).unwrap());
        let body = eventually(
            Duration::from_secs(10),
            "/readyz 200 after the rotation",
            || async {
                let (code, body) = readyz(&w).await;
                (code == 200).then_some(body)
            },
        )
        .await;
        assert!(
            body.contains("[+]certificate ok: ")
                && body.contains("covers jobset-restart-webhook.jobset-restart-webhook.svc"),
            "{body}"
        );
    })
    .await;
}
