use std::collections::BTreeMap;

use http_body_util::{BodyExt as _, Full};
use tower_service::Service as _;

use super::*;
use crate::admission::{self, ClusterView};
use crate::engine::{ClusterFacts, ParentJobSet};
use crate::server::MAX_BODY;
use crate::server::config_store::ConfigStore;
use crate::server::ready::Readiness;
use crate::server::state::TEXT;
use crate::telemetry::Metrics;
use bytes::Bytes;
use http::header::CONTENT_TYPE;

/// A cluster view whose every answer panics: stands in for a bug on the request path.
struct Exploding;

impl ClusterView for Exploding {
    fn namespace_labels(&self, _: &str) -> Option<Arc<BTreeMap<String, String>>> {
        panic!("namespace cache exploded")
    }
    fn parent_jobset(&self, _: &str, _: &str) -> Option<ParentJobSet> {
        panic!("jobset cache exploded")
    }
    fn facts(&self) -> ClusterFacts {
        panic!("facts exploded")
    }
}

#[derive(Clone, Copy)]
enum Port {
    Webhook,
    Admin,
}

/// One request through the port's service, as the connection layer makes it.
async fn handle(app: &Arc<App>, port: Port, req: http::Request<Full<Bytes>>) -> Response {
    let answer = match port {
        Port::Webhook => webhook(app).call(req).await,
        Port::Admin => admin(app).call(req).await,
    };
    match answer {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

fn app(cluster: Arc<dyn ClusterView>) -> App {
    let (store, _) = ConfigStore::load(None, None).expect("config");
    let store = Arc::new(store);
    let addr = "127.0.0.1:9".parse().expect("addr");
    let g = crate::certs::generate(&["localhost".to_owned()], 1).expect("certificate");
    let loaded = super::super::tls::load_pem(g.cert_pem.as_bytes(), g.key_pem.as_bytes(), "c", "k")
        .expect("load");
    let readiness = Readiness::new(
        super::super::tls::SelfCheck::new(addr).expect("self check"),
        super::super::ready::Listening {
            addr,
            accepting: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        },
        super::super::ready::CertCheck {
            resolver: Arc::new(super::super::tls::CertResolver::new(&loaded)),
            server_name: None,
        },
        store.clone(),
        Vec::new(),
    );
    App {
        config: store,
        cluster,
        metrics: Arc::new(Metrics::new()),
        readiness: Arc::new(readiness),
        body: super::super::body::BodyLimits {
            timeout: std::time::Duration::from_secs(1),
            budget: Arc::new(tokio::sync::Semaphore::new(MAX_BODY)),
        },
        reviews: super::super::mutate::Reviews::new(16),
    }
}

fn post(body: &str) -> http::Request<Full<Bytes>> {
    http::Request::post("/mutate")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request")
}

const JOBSET_REVIEW: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",
    "request":{"uid":"u1","kind":{"group":"jobset.x-k8s.io","version":"v1alpha2","kind":"JobSet"},
    "operation":"CREATE","namespace":"ml","name":"js",
    "object":{"metadata":{"name":"js","annotations":{"restart.jobset.dev/in-place":"enabled"}},
    "spec":{"replicatedJobs":[]}}}}"#;

#[tokio::test]
async fn a_panicking_review_is_answered_500_and_counted() {
    let app = Arc::new(app(Arc::new(Exploding)));
    let resp = handle(&app, Port::Webhook, post(JOBSET_REVIEW)).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(app.metrics.panics.get(), 1);
    assert_eq!(app.metrics.in_flight.get(), 0);
    // And the next request is served normally.
    let app = Arc::into_inner(app).expect("the services are gone");
    let app2 = Arc::new(App {
        cluster: Arc::new(admission::Offline),
        ..app
    });
    let resp = handle(&app2, Port::Webhook, post(JOBSET_REVIEW)).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

/// The panic layer is the only catch; the review's request is still counted as answered 500.
#[tokio::test]
async fn a_panicking_review_counts_as_a_500_request() {
    let app = Arc::new(app(Arc::new(Exploding)));
    let resp = handle(&app, Port::Webhook, post(JOBSET_REVIEW)).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let text = app.metrics.encode().expect("metrics");
    assert!(
        text.lines()
            .any(|l| l.starts_with("jobset_restart_webhook_requests_total{")
                && l.contains("code=\"500\"")
                && l.ends_with(" 1")),
        "{text}"
    );
}

#[tokio::test]
async fn routes_and_methods() {
    let app = Arc::new(app(Arc::new(admission::Offline)));
    let get = |path: &str| {
        http::Request::get(path)
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let status = |r: Response| r.status().as_u16();
    assert_eq!(
        status(handle(&app, Port::Webhook, get("/healthz")).await),
        200
    );
    assert_eq!(
        status(handle(&app, Port::Webhook, get("/metrics")).await),
        404
    );
    assert_eq!(
        status(handle(&app, Port::Admin, get("/metrics")).await),
        200
    );
    assert_eq!(status(handle(&app, Port::Admin, get("/mutate")).await), 404);
    assert_eq!(
        status(handle(&app, Port::Webhook, get("/mutate")).await),
        405
    );
    let post_health = http::Request::post("/healthz")
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(status(handle(&app, Port::Admin, post_health).await), 405);
    // Nothing listens on the self-check address: not ready, and the body says why.
    let r = handle(&app, Port::Admin, get("/readyz")).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = r.into_body().collect().await.expect("body").to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("[-]tls failed") && body.contains("[+]config ok"),
        "{body}"
    );
}

/// The answers axum would shape differently keep ours: the 405 and 404 texts, our `Allow`,
/// HEAD answered like GET without a body.
#[tokio::test]
async fn not_found_and_not_allowed_keep_their_texts() {
    let app = Arc::new(app(Arc::new(admission::Offline)));
    let request = |method: &str, path: &str| {
        http::Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let body = |r: Response| async move {
        let b = r.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&b).into_owned()
    };
    let r = handle(&app, Port::Webhook, request("PUT", "/readyz")).await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()[ALLOW], "GET, HEAD");
    assert_eq!(body(r).await, "method not allowed; use GET, HEAD\n");
    let r = handle(&app, Port::Webhook, request("GET", "/mutate")).await;
    assert_eq!(r.headers()[ALLOW], "POST");
    assert_eq!(body(r).await, "method not allowed; use POST\n");
    let r = handle(&app, Port::Webhook, request("GET", "/healthz/")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()[CONTENT_TYPE], TEXT);
    assert_eq!(body(r).await, "no route for /healthz/\n");
    let r = handle(&app, Port::Admin, request("HEAD", "/healthz")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[http::header::CONTENT_LENGTH], "3");
    assert_eq!(body(r).await, "");
}

/// `/mutate/namespace-default` is the namespace-default registration's path: the API server's
/// namespaceSelector already established the opt-in, so an unannotated JobSet gets its rules
/// there with no namespace cache at all (`Offline`), and is left alone on `/mutate`.
#[tokio::test]
async fn the_namespace_default_path_carries_the_opt_in() {
    const UNANNOTATED: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",
        "request":{"uid":"u2","kind":{"group":"jobset.x-k8s.io","version":"v1alpha2","kind":"JobSet"},
        "operation":"CREATE","namespace":"ml","name":"js",
        "object":{"metadata":{"name":"js"},"spec":{"replicatedJobs":[{"name":"w","template":
        {"spec":{"template":{"spec":{"containers":[{"name":"c","image":"i"}]}}}}}]}}}}"#;
    let app = Arc::new(app(Arc::new(admission::Offline)));
    let answer = |path: &'static str| {
        let app = app.clone();
        async move {
            let req = http::Request::post(path)
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(UNANNOTATED)))
                .expect("request");
            let resp = handle(&app, Port::Webhook, req).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).expect("JSON")
        }
    };
    let opted_in = answer("/mutate/namespace-default").await;
    assert_eq!(opted_in["response"]["patchType"], "JSONPatch", "{opted_in}");
    let plain = answer("/mutate").await;
    assert_eq!(plain["response"]["allowed"], true, "{plain}");
    assert!(plain["response"].get("patch").is_none(), "{plain}");

    let get = http::Request::get("/mutate/namespace-default")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = handle(&app, Port::Webhook, get).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()[ALLOW], "POST");
}
