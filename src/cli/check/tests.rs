use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};

use super::ca_bundle::{DialError, dial};
use super::webhook::{
    endpoint, one_path_segment, policy_report, registration, resources, routed_targets,
};
use super::*;
use crate::cluster::node::SlimNode;
use crate::cluster::probe::{Capabilities, Failure, Finding};

/// The report as the JSON value `-o json` prints.
fn to_json(r: &Report) -> Value {
    serde_json::to_value(r).unwrap_or_else(|e| json!({ "error": e.to_string() }))
}

fn f(v: Option<bool>, d: &str) -> Finding {
    Finding {
        value: v,
        detail: d.to_owned(),
    }
}

fn caps(
    rules: Option<bool>,
    rac: Option<bool>,
    crd: Option<bool>,
    keeps: Option<bool>,
) -> Capabilities {
    Capabilities {
        server_version: Some("v1.36.2".into()),
        restart_policy_rules: f(rules, "rules"),
        restart_all_containers: f(rac, "rac"),
        jobset_crd_installed: f(crd, "crd"),
        jobset_crd_keeps_rules: f(keeps, "keeps"),
    }
}

fn registered(ca: Option<bool>) -> WebhookReport {
    WebhookReport {
        name: DEFAULT_WEBHOOK_CONFIGURATION.into(),
        registered: f(Some(true), "registered"),
        webhooks: vec![WebhookEntry {
            name: "jobsets.restart.jobset.dev".into(),
            resources: vec!["jobsets".into()],
            endpoint: "url https://127.0.0.1:8443/mutate".into(),
            ca_bundle: f(ca, "ca detail"),
        }],
    }
}

const JOBSETS: Targets = Targets {
    jobsets: true,
    pods: false,
};
const BOTH: Targets = Targets {
    jobsets: true,
    pods: true,
};

fn no_policy() -> PolicyReport {
    PolicyReport {
        installed: f(Some(false), "not installed"),
        partial: false,
    }
}

fn policy_installed() -> PolicyReport {
    PolicyReport {
        installed: f(Some(true), "installed"),
        partial: false,
    }
}

#[test]
fn the_admission_policies_stand_in_for_the_webhook() {
    let c = caps(Some(true), Some(true), Some(true), Some(true));
    let absent = WebhookReport {
        name: "x".into(),
        registered: f(
            Some(false),
            "MutatingWebhookConfiguration x is not registered",
        ),
        webhooks: vec![],
    };
    let (p, w) = assess(&c, &absent, &policy_installed(), JOBSETS);
    assert!(p.is_empty() && w.is_empty(), "{p:?} {w:?}");
    let (p, _) = assess(&c, &absent, &policy_installed(), BOTH);
    assert!(p[0].contains("they have no pod target"), "{p:?}");
    let (p, w) = assess(&c, &registered(Some(true)), &policy_installed(), JOBSETS);
    assert!(p.is_empty());
    assert!(w[0].contains("keep one"), "{w:?}");
    let partial = PolicyReport {
        installed: f(Some(false), "partly installed: a missing"),
        partial: true,
    };
    let (p, _) = assess(&c, &registered(Some(true)), &partial, JOBSETS);
    assert_eq!(
        p,
        [
            "the admission policies of `policy` are partly installed: a missing: apply all four objects or none"
        ]
    );
    let no_restart_all = caps(Some(true), Some(false), Some(true), Some(true));
    let (_, w) = assess(&no_restart_all, &absent, &policy_installed(), JOBSETS);
    assert!(
        w.iter().any(|w| w.contains("defaults.action: Restart")),
        "{w:?}"
    );
}

fn slim(declares: bool, unschedulable: bool) -> SlimNode {
    SlimNode {
        info: crate::engine::NodeInfo {
            declares,
            unschedulable,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn nodes_are_counted_and_warned_about() {
    let good = caps(Some(true), Some(true), Some(true), Some(true));
    let all = NodesReport::from_list(Ok(vec![slim(true, false), slim(false, true)]));
    assert_eq!(all.restart_all_containers.value, Some(true));
    assert_eq!(
        all.restart_all_containers.detail,
        "1 of 1 schedulable nodes declare RestartAllContainersOnContainerExits (1 cordoned \
         not counted)"
    );
    assert_eq!(
        (all.total, all.schedulable, all.declaring),
        (Some(2), Some(1), Some(1))
    );
    assert!(all.warnings(&good).is_empty());

    let some = NodesReport::from_list(Ok(vec![slim(true, false), slim(false, false)]));
    assert_eq!(some.restart_all_containers.value, Some(false));
    let w = some.warnings(&good);
    assert!(
        w[0].starts_with("only 1 of 2 schedulable nodes declare"),
        "{w:?}"
    );

    let none = NodesReport::from_list(Ok(vec![slim(false, false)]));
    let w = none.warnings(&good);
    assert!(
        w[0].contains("denies JobSets that ask for RestartAllContainers"),
        "{w:?}"
    );
    // the API server's "no" already says it all
    let api_no = caps(Some(true), Some(false), Some(true), Some(true));
    assert!(none.warnings(&api_no).is_empty());

    let empty = NodesReport::from_list(Ok(vec![]));
    assert_eq!(empty.restart_all_containers.value, None);
    assert!(
        empty.warnings(&good)[0].starts_with("no schedulable nodes: no nodes: which kubelets"),
        "{:?}",
        empty.warnings(&good)
    );
    let forbidden = NodesReport::from_list(Err(Failure::Api {
        code: 403,
        message: "nodes is forbidden".into(),
    }));
    assert_eq!(forbidden.total, None);
    assert!(
        forbidden.warnings(&good)[0].contains("needs the list verb on nodes"),
        "{:?}",
        forbidden.warnings(&good)
    );
}

#[test]
fn all_good() {
    let (p, w) = assess(
        &caps(Some(true), Some(true), Some(true), Some(true)),
        &registered(Some(true)),
        &no_policy(),
        JOBSETS,
    );
    assert!(p.is_empty() && w.is_empty(), "{p:?} {w:?}");
}

#[test]
fn rules_dropped_is_a_problem() {
    let (p, w) = assess(
        &caps(Some(false), Some(false), Some(true), Some(true)),
        &registered(Some(true)),
        &no_policy(),
        BOTH,
    );
    assert_eq!(p.len(), 1);
    assert!(
        p[0].contains("drops or rejects restartPolicyRules"),
        "{p:?}"
    );
    assert!(w.is_empty(), "RestartAllContainers is moot then: {w:?}");
}

#[test]
fn no_restart_all_is_a_warning() {
    let (p, w) = assess(
        &caps(Some(true), Some(false), Some(true), Some(true)),
        &registered(Some(true)),
        &no_policy(),
        JOBSETS,
    );
    assert!(p.is_empty());
    assert!(w[0].contains("defaults to Restart"), "{w:?}");
}

#[test]
fn pruning_crd_needs_the_pod_target() {
    let c = caps(Some(true), Some(true), Some(true), Some(false));
    let (p, _) = assess(&c, &registered(Some(true)), &no_policy(), JOBSETS);
    assert_eq!(p.len(), 1);
    assert!(
        p[0].contains("prunes restartPolicyRules") && p[0].contains("pod target"),
        "{p:?}"
    );
    let (p, w) = assess(&c, &registered(Some(true)), &no_policy(), BOTH);
    assert!(p.is_empty());
    assert!(w[0].contains("prunes"), "{w:?}");
    let (p, _) = assess(
        &caps(Some(true), Some(true), Some(false), None),
        &registered(Some(true)),
        &no_policy(),
        BOTH,
    );
    assert!(p[0].contains("not installed"), "{p:?}");
}

#[test]
fn webhook_problems() {
    let c = caps(Some(true), Some(true), Some(true), Some(true));
    let (p, _) = assess(&c, &registered(Some(false)), &no_policy(), JOBSETS);
    assert_eq!(
        p,
        ["webhook jobsets.restart.jobset.dev (url https://127.0.0.1:8443/mutate): ca detail"]
    );
    let (p, w) = assess(&c, &registered(None), &no_policy(), JOBSETS);
    assert!(p.is_empty());
    assert_eq!(w, ["webhook jobsets.restart.jobset.dev: ca detail"]);
    let missing = WebhookReport {
        name: "x".into(),
        registered: f(
            Some(false),
            "MutatingWebhookConfiguration x is not registered",
        ),
        webhooks: vec![],
    };
    let (p, _) = assess(&c, &missing, &no_policy(), JOBSETS);
    assert_eq!(
        p,
        [
            "MutatingWebhookConfiguration x is not registered: nothing sends JobSets or Pods to the webhook"
        ]
    );
}

#[test]
fn names_that_are_not_one_path_segment_are_not_looked_up() {
    for ok in ["00-jobset-restart-webhook", "Upper_case", "a.b"] {
        assert!(one_path_segment(ok), "{ok}");
    }
    for bad in ["", ".", "..", "a/b", "a?watch=1", "a#b", "a%2Fb"] {
        assert!(!one_path_segment(bad), "{bad}");
    }
    let (report, mwc) = registration("a/b", None);
    assert_eq!(
        (report.registered, mwc),
        (f(None, "\"a/b\" is not a valid object name"), None)
    );
}

#[test]
fn what_the_configuration_lookup_found() {
    let config = mwc(json!({"metadata": {"name": "x"}, "webhooks": [
        {"name": "a", "admissionReviewVersions": ["v1"], "sideEffects": "None",
         "clientConfig": {"url": "https://127.0.0.1:1/mutate"}}
    ]}));
    let (report, found) = registration("x", Some(Ok(Some(config.clone()))));
    assert_eq!(report.name, "x");
    assert_eq!(
        report.registered,
        f(Some(true), "MutatingWebhookConfiguration x has 1 webhooks")
    );
    assert_eq!(found, Some(config));
    let (report, found) = registration("x", Some(Ok(None)));
    assert_eq!(
        (report.registered, found),
        (
            f(
                Some(false),
                "MutatingWebhookConfiguration x is not registered"
            ),
            None
        )
    );
    let forbidden = Failure::Api {
        code: 403,
        message: "forbidden".into(),
    };
    let (report, _) = registration("x", Some(Err(forbidden)));
    assert_eq!(
        report.registered,
        f(
            None,
            "reading MutatingWebhookConfiguration x failed: HTTP 403: forbidden"
        )
    );
}

#[test]
fn what_the_policy_lookups_found() {
    let objects = |found: [Result<bool, Failure>; 2]| -> Vec<(String, Result<bool, Failure>)> {
        [
            "mutatingadmissionpolicies/a",
            "validatingadmissionpolicies/b",
        ]
        .into_iter()
        .map(str::to_owned)
        .zip(found)
        .collect()
    };
    let all = policy_report(&objects([Ok(true), Ok(true)]));
    assert_eq!(all.installed.value, Some(true));
    assert!(!all.partial);
    let none = policy_report(&objects([Ok(false), Ok(false)]));
    assert_eq!(none.installed, f(Some(false), "not installed"));
    assert!(!none.partial);
    let part = policy_report(&objects([Ok(true), Ok(false)]));
    assert_eq!(
        part.installed,
        f(
            Some(false),
            "partly installed: validatingadmissionpolicies/b missing"
        )
    );
    assert!(part.partial);
    let failed = policy_report(&objects([Ok(true), Err(Failure::Other("timeout".into()))]));
    assert_eq!(
        failed.installed,
        f(
            None,
            "could not read validatingadmissionpolicies/b: timeout"
        )
    );
}

fn mwc(json: Value) -> MutatingWebhookConfiguration {
    serde_json::from_value(json).unwrap()
}

#[test]
fn targets_from_rules() {
    let m = mwc(json!({"metadata": {"name": "x"}, "webhooks": [
        {"name": "a", "admissionReviewVersions": ["v1"], "sideEffects": "None",
         "clientConfig": {"service": {"namespace": "ns", "name": "svc", "path": "/mutate"}},
         "rules": [{"apiGroups": ["jobset.x-k8s.io"], "apiVersions": ["v1alpha2"], "operations": ["CREATE"], "resources": ["jobsets"]}]},
        {"name": "b", "admissionReviewVersions": ["v1"], "sideEffects": "None",
         "clientConfig": {"url": "https://127.0.0.1:1/mutate"},
         "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods", "pods/status"]}]}
    ]}));
    assert_eq!(routed_targets(Some(&m)), Some(BOTH));
    let hooks = m.webhooks.as_ref().unwrap();
    assert_eq!(resources(&hooks[1]), ["pods"]);
    assert_eq!(endpoint(&hooks[0]).to_string(), "service ns/svc:443/mutate");
    assert_eq!(
        endpoint(&hooks[1]).to_string(),
        "url https://127.0.0.1:1/mutate"
    );
    assert_eq!(routed_targets(None), None);
    assert_eq!(
        routed_targets(Some(&mwc(json!({"metadata": {"name": "x"}})))),
        None
    );
}

fn generated(names: &[&str]) -> crate::certs::Generated {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    crate::certs::generate(&names, 30).unwrap()
}

#[test]
fn chain_verification() {
    let g = generated(&["svc.ns.svc"]);
    let other = generated(&["svc.ns.svc"]);
    assert_eq!(
        verify_chain(g.ca_pem.as_bytes(), g.cert_pem.as_bytes(), "svc.ns.svc"),
        Ok(())
    );
    let e = verify_chain(other.ca_pem.as_bytes(), g.cert_pem.as_bytes(), "svc.ns.svc")
        .unwrap_err()
        .to_string();
    // (the generated CAs share a subject, so webpki reports the signature, not the issuer)
    assert!(e.starts_with("invalid peer certificate"), "{e}");
    let e = verify_chain(g.ca_pem.as_bytes(), g.cert_pem.as_bytes(), "other.ns.svc")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not valid for name \"other.ns.svc\""), "{e}");
    assert!(
        verify_chain(b"", g.cert_pem.as_bytes(), "svc.ns.svc")
            .unwrap_err()
            .to_string()
            .contains("no PEM")
    );
    assert!(verify_chain(g.ca_pem.as_bytes(), b"", "svc.ns.svc").is_err());
}

#[tokio::test]
async fn dial_verifies_against_the_bundle_only() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let g = generated(&["127.0.0.1"]);
    let other = generated(&["127.0.0.1"]);
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(g.key_pem.as_bytes()).unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(g.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let a = acceptor.clone();
            tokio::spawn(async move {
                let _ = a.accept(tcp).await;
            });
        }
    });
    let url = format!("https://127.0.0.1:{port}/mutate");
    assert_eq!(dial(&url, g.ca_pem.as_bytes()).await.unwrap(), "127.0.0.1");
    match dial(&url, other.ca_pem.as_bytes()).await {
        Err(DialError::Verify(e)) => assert!(e.starts_with("invalid peer certificate"), "{e}"),
        other => panic!("{other:?}"),
    }
    // nothing listens there
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    match dial(&format!("https://127.0.0.1:{closed}/"), g.ca_pem.as_bytes()).await {
        Err(DialError::Connect(_)) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        dial("http://127.0.0.1/", g.ca_pem.as_bytes()).await,
        Err(DialError::Setup(_))
    ));
}

#[test]
fn table_and_json() {
    let c = caps(Some(true), Some(false), Some(true), Some(false));
    let webhook = registered(Some(true));
    let (problems, warnings) = assess(&c, &webhook, &no_policy(), JOBSETS);
    let r = Report {
        cluster: "https://127.0.0.1:6443/".into(),
        probe_namespace: "default".into(),
        capabilities: c,
        nodes: NodesReport::from_list(Ok(vec![slim(true, false), slim(false, false)])),
        webhook_configuration: webhook,
        admission_policy: no_policy(),
        targets: JOBSETS.to_string(),
        targets_source: "--targets".into(),
        ok: problems.is_empty(),
        problems,
        warnings,
    };
    let t = table(&r);
    assert!(t.starts_with("CHECK"), "{t}");
    let row = t
        .lines()
        .find(|l| l.starts_with("JobSet CRD keeps the rules "))
        .unwrap_or_default();
    assert_eq!(row.split_whitespace().nth(5), Some("NO"), "{t}");
    assert!(
        t.lines()
            .any(|l| l
                .starts_with("nodes declaring RestartAllContainersOnContainerExits  1 of 2 ")),
        "{t}"
    );
    assert!(
        t.contains("problem: the installed JobSet CRD prunes"),
        "{t}"
    );
    assert!(
        t.ends_with("in-place restart cannot work as configured (1 problem)\n"),
        "{t}"
    );
    let j = to_json(&r);
    assert_eq!(j["ok"], false);
    assert_eq!(j["capabilities"]["jobsetCrdKeepsRules"]["value"], false);
    assert_eq!(
        j["webhookConfiguration"]["webhooks"][0]["caBundle"]["value"],
        true
    );
}
