//! `serve --client-ca` with a real kube-apiserver that presents a client certificate to
//! webhooks, configured as the README says: `--admission-control-config-file` with an
//! AdmissionConfiguration whose `MutatingAdmissionWebhook` plugin points at a kubeconfig with
//! a user entry (here `*`: the webhook is registered by loopback URL, whose port is not known
//! before the API server starts) holding the client certificate and key.

use std::fs;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::cluster::{Cluster, ClusterOptions};
use crate::util::{TestTimer, at, wait_for};
use crate::webhook::{Webhook, WebhookOptions, dry_run_probe};

/// A CA (PEM) and a client certificate + key it signed.
fn client_pki(cn: &str) -> (String, String, String) {
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{cn} CA"));
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_pem = ca.self_signed(&ca_key).expect("CA").pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    leaf.distinguished_name = dn;
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().expect("client key");
    let cert = leaf.signed_by(&key, &issuer).expect("client cert").pem();
    (ca_pem, cert, key.serialize_pem())
}

#[test]
fn apiserver_presents_a_client_certificate_to_a_client_ca_webhook() {
    let _t = TestTimer::start("apiserver_presents_a_client_certificate_to_a_client_ca_webhook");
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = client_pki("kube-apiserver-webhook-client");
    let (other_ca, _, _) = client_pki("someone-else");
    let p = |name: &str| dir.path().join(name).display().to_string();
    fs::write(p("client.crt"), &cert).unwrap();
    fs::write(p("client.key"), &key).unwrap();
    fs::write(p("client-ca.crt"), &ca).unwrap();
    fs::write(
        p("webhook-kubeconfig.yaml"),
        format!(
            "apiVersion: v1\nkind: Config\nusers:\n- name: '*'\n  user:\n    \
             client-certificate: {}\n    client-key: {}\n",
            p("client.crt"),
            p("client.key")
        ),
    )
    .unwrap();
    fs::write(
        p("admission.yaml"),
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n\
             - name: MutatingAdmissionWebhook\n  configuration:\n    \
             apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    \
             kubeConfigFile: {}\n",
            p("webhook-kubeconfig.yaml")
        ),
    )
    .unwrap();

    let c = Cluster::start(ClusterOptions {
        name: "mtls",
        controller_manager: false,
        jobset_controller: false,
        apiserver_args: vec![format!(
            "--admission-control-config-file={}",
            p("admission.yaml")
        )],
        ..ClusterOptions::default()
    });
    let webhook = Webhook::start_with_args(
        &c,
        WebhookOptions::default(),
        &[
            "--client-ca".to_owned(),
            p("client-ca.crt"),
            "--reload-interval".to_owned(),
            "500ms".to_owned(),
        ],
    );
    let ns = c.namespace("mtls", &[]);
    // Waits until a dry-run JobSet comes back mutated: the API server's handshake with the
    // client certificate passed.
    webhook.register(&c, None, &ns);
    let applied = "/metadata/annotations/restart.jobset.dev~1applied";
    assert!(at(&dry_run_probe(&c, &ns), applied).is_string());

    // A second webhook that trusts another CA only, registered after ours: the API server's
    // certificate is refused at the handshake, the call fails, and the shipped failurePolicy
    // (Fail) refuses the create. (Changing the first webhook's --client-ca would apply to new
    // handshakes only, and the API server keeps its connection alive.)
    fs::write(p("other-ca.crt"), &other_ca).unwrap();
    let other = Webhook::start_with_args(
        &c,
        WebhookOptions::default(),
        &["--client-ca".to_owned(), p("other-ca.crt")],
    );
    let name = "zz-jobset-restart-webhook-other-ca";
    let config = other.configuration(Some(name));
    c.kubectl_ok(&["apply", "-f", "-"], Some(&config.to_string()));
    let refusal = wait_for(
        "the API server to be refused",
        Duration::from_secs(30),
        || {
            let out = c.kubectl(
                &["create", "--dry-run=server", "-n", &ns, "-f", "-", "-o", "json"],
                Some(
                    r#"{"apiVersion":"jobset.x-k8s.io/v1alpha2","kind":"JobSet","metadata":{"name":"x","annotations":{"restart.jobset.dev/in-place":"enabled"}},"spec":{"replicatedJobs":[]}}"#,
                ),
            );
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.success() {
                Err("still admitted".to_owned())
            } else {
                Ok(stderr)
            }
        },
    );
    // Go reports the TLS 1.3 refusal (an alert after its Finished) as a closed connection.
    let other_url = format!("127.0.0.1:{}", other.addr.port());
    assert!(
        refusal.contains("failed calling webhook") && refusal.contains(&other_url),
        "{refusal}"
    );
    let handshake_errors = other
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("jobset_restart_webhook_tls_handshake_errors_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_default();
    assert!(handshake_errors >= 1.0, "{handshake_errors}");
    assert!(other.reviews_in(&ns).is_empty(), "{}", other.log());
    // Without it: served again.
    c.kubectl_ok(&["delete", "mutatingwebhookconfiguration", name], None);
    wait_for(
        "the API server to be served again",
        Duration::from_secs(30),
        || {
            if at(&dry_run_probe(&c, &ns), applied).is_string() {
                Ok(())
            } else {
                Err("not mutated yet".to_owned())
            }
        },
    );
    println!("[e2e] refusal as kubectl shows it: {}", refusal.trim());
}
