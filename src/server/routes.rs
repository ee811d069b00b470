//! HTTP only: routing, request hygiene (content type, size, time), and turning
//! `admission::review`'s answer into a response. The review itself runs synchronously on the
//! connection's task: it is CPU-bound microseconds, cheaper than any hand-off to a thread.

use std::fmt::Display;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Body;
use tracing::{debug, error, info, warn};

use super::config::ConfigStore;
use super::ready::Readiness;
use crate::admission::{self, ClusterView};
use crate::telemetry::{CodeLabels, Metrics};

pub(crate) type Resp = Response<Full<Bytes>>;

/// Largest accepted AdmissionReview body (controller-runtime's limit; the API server's own
/// request limit is 3 MiB, and an UPDATE review carries two objects).
pub const MAX_BODY: usize = 7 * 1024 * 1024;
/// Reading starts with at most this much capacity, whatever Content-Length claims, so a
/// client cannot make us reserve memory it never sends.
const INITIAL_CAPACITY: usize = 64 * 1024;
/// The first bytes of every body are not counted against [`App::body_budget`], so that the
/// usual review (a JobSet or Pod of a few KiB) never waits behind large ones. What they can
/// hold is bounded by `--max-connections` x this.
pub const FREE_BODY_BYTES: usize = INITIAL_CAPACITY;

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything a request handler needs.
pub(crate) struct App {
    pub config: Arc<ConfigStore>,
    pub cluster: Arc<dyn ClusterView>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub max_body: usize,
    pub body_timeout: Duration,
    /// Bytes of body buffers beyond [`FREE_BODY_BYTES`], shared by every request: without
    /// it, clients that send 7 MiB bodies and withhold the last byte hold 7 MiB each until
    /// the body timeout, and a few dozen exceed a pod's memory limit. A body that needs more
    /// waits (within the body timeout) for others to finish. At least `max_body` permits.
    pub body_budget: Semaphore,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Port {
    /// The TLS port: /mutate, /healthz, /readyz.
    Webhook,
    /// The plain admin port: /metrics, /healthz, /readyz.
    Admin,
}

/// Routes one request. The connection code turns a panic in here into a 500.
pub(crate) async fn handle<B>(app: &App, port: Port, req: Request<B>) -> Resp
where
    B: Body<Data = Bytes>,
    B::Error: Display,
{
    let path = req.uri().path();
    let method = req.method();
    let get = method == Method::GET || method == Method::HEAD;
    let mut resp = match (port, path) {
        (Port::Webhook, "/mutate") if method == Method::POST => mutate(app, req).await,
        (Port::Webhook, "/mutate") => not_allowed(app, "POST"),
        (_, "/healthz") if get => text(StatusCode::OK, "ok\n"),
        (_, "/readyz") if get => {
            let (ready, body) = app.readiness.report().await;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, body)
        }
        (Port::Admin, "/metrics") if get => metrics(app),
        (_, "/healthz" | "/readyz") | (Port::Admin, "/metrics") => not_allowed(app, "GET, HEAD"),
        _ => {
            app.metrics
                .bad_requests
                .get_or_create(&CodeLabels { code: 404 })
                .inc();
            debug!(%path, "not found");
            text(StatusCode::NOT_FOUND, format!("no route for {path}\n"))
        }
    };
    // While draining, every answer closes its connection, so clients reconnect to a replica
    // that stays (kube-apiserver keeps webhook connections alive otherwise).
    if port == Port::Webhook && app.readiness.draining() {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn not_allowed(app: &App, allow: &'static str) -> Resp {
    app.metrics
        .bad_requests
        .get_or_create(&CodeLabels { code: 405 })
        .inc();
    let mut r = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}\n"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

fn metrics(app: &App) -> Resp {
    match app.metrics.encode() {
        Ok(body) => with_type(StatusCode::OK, OPENMETRICS, body.into()),
        Err(e) => {
            error!(error = %e, "encoding metrics failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
        }
    }
}

async fn mutate<B>(app: &App, req: Request<B>) -> Resp
where
    B: Body<Data = Bytes>,
    B::Error: Display,
{
    let start = Instant::now();
    app.metrics.in_flight.inc();
    let _in_flight = InFlight(&app.metrics);

    let reject = |code: StatusCode, reason: String, close: bool| {
        app.metrics
            .observe_rejected(code.as_u16(), start.elapsed().as_secs_f64());
        warn!(code = code.as_u16(), %reason, "request rejected");
        let mut r = text(code, format!("{reason}\n"));
        if close {
            // The body was not read to its end: the connection cannot carry another request.
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        r
    };

    let headers = req.headers();
    match headers.get(CONTENT_TYPE).map(HeaderValue::to_str) {
        Some(Ok(ct)) if is_json(ct) => {}
        Some(Ok(ct)) => {
            let reason = format!("unsupported content type {ct:?}; send application/json");
            return reject(StatusCode::UNSUPPORTED_MEDIA_TYPE, reason, true);
        }
        Some(Err(_)) => {
            let reason = "unreadable content type; send application/json".to_owned();
            return reject(StatusCode::UNSUPPORTED_MEDIA_TYPE, reason, true);
        }
        None => {
            let reason = "no content type; send application/json".to_owned();
            return reject(StatusCode::UNSUPPORTED_MEDIA_TYPE, reason, true);
        }
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.max_body as u64) {
        let reason = format!("the body is larger than the {} byte limit", app.max_body);
        return reject(StatusCode::PAYLOAD_TOO_LARGE, reason, true);
    }
    let hint = declared.map_or(INITIAL_CAPACITY, |n| (n as usize).min(INITIAL_CAPACITY));

    let body = match tokio::time::timeout(
        app.body_timeout,
        read_body(req.into_body(), app.max_body, hint, &app.body_budget),
    )
    .await
    {
        Err(_) => {
            app.metrics.timeout("body");
            let reason = format!("the body did not arrive within {:?}", app.body_timeout);
            return reject(StatusCode::REQUEST_TIMEOUT, reason, true);
        }
        Ok(Err(BodyError::TooLarge)) => {
            let reason = format!("the body is larger than the {} byte limit", app.max_body);
            return reject(StatusCode::PAYLOAD_TOO_LARGE, reason, true);
        }
        Ok(Err(BodyError::Read(e))) => {
            return reject(
                StatusCode::BAD_REQUEST,
                format!("reading the body failed: {e}"),
                true,
            );
        }
        Ok(Ok(b)) => b,
    };
    // Held until the answer is built: the buffer lives that long.
    let (body, _budget) = body;
    if body.is_empty() {
        let reason =
            "the body is empty; expected an admission.k8s.io/v1 AdmissionReview".to_owned();
        return reject(StatusCode::BAD_REQUEST, reason, false);
    }

    let config = app.config.load_current();
    let cluster = &*app.cluster;
    let reviewed = catch_unwind(AssertUnwindSafe(|| {
        admission::review(&body, &config, cluster)
    }));
    let micros = start.elapsed().as_micros() as u64;
    match reviewed {
        Ok(Ok(answer)) => {
            let r = &answer.record;
            app.metrics.observe_review(r, start.elapsed().as_secs_f64());
            info!(
                uid = %r.uid,
                kind = %r.kind,
                namespace = %r.namespace,
                name = %r.name,
                operation = %r.operation,
                dry_run = r.dry_run,
                outcome = r.outcome.as_str(),
                patch_ops = r.patch_ops,
                warnings = r.warnings,
                parent_unknown = r.parent_unknown,
                micros,
                "review"
            );
            with_type(StatusCode::OK, JSON, answer.body.into())
        }
        Ok(Err(bad)) => reject(StatusCode::BAD_REQUEST, bad.to_string(), false),
        Err(panic) => {
            app.metrics.panics.inc();
            app.metrics
                .observe_rejected(500, start.elapsed().as_secs_f64());
            error!(panic = %panic_message(&*panic), bytes = body.len(), "the review panicked; answered 500");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error while reviewing the request; see the webhook's log\n",
            )
        }
    }
}

/// `application/json`, any case, optionally with parameters (`; charset=utf-8`).
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(JSON))
}

enum BodyError {
    TooLarge,
    Read(String),
}

/// Reads the body into memory, stopping (without reading further) once it passes `max`.
/// The buffer's capacity beyond [`FREE_BODY_BYTES`] is taken from `budget` before it is
/// allocated (waiting when the budget is spent); the permits come back with the buffer.
async fn read_body<'b, B>(
    body: B,
    max: usize,
    hint: usize,
    budget: &'b Semaphore,
) -> Result<(Vec<u8>, Option<SemaphorePermit<'b>>), BodyError>
where
    B: Body<Data = Bytes>,
    B::Error: Display,
{
    let mut body = pin!(body);
    let mut buf = Vec::with_capacity(hint.min(FREE_BODY_BYTES));
    let mut held: Option<SemaphorePermit<'b>> = None;
    let mut held_bytes = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            let needed = buf.len().saturating_add(data.len());
            if needed > max {
                return Err(BodyError::TooLarge);
            }
            if needed > buf.capacity() {
                // Grow like `Vec` would (doubling), but never past `max`, and pay first.
                let capacity = needed.max(buf.capacity().saturating_mul(2)).min(max);
                let counted = capacity.saturating_sub(FREE_BODY_BYTES);
                if counted > held_bytes {
                    let more =
                        u32::try_from(counted - held_bytes).map_err(|_| BodyError::TooLarge)?;
                    let permit = budget
                        .acquire_many(more)
                        .await
                        .map_err(|_| BodyError::Read("the server is shutting down".into()))?;
                    match &mut held {
                        Some(h) => h.merge(permit),
                        None => held = Some(permit),
                    }
                    held_bytes = counted;
                }
                buf.reserve_exact(capacity - buf.len());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok((buf, held))
}

struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    with_type(status, TEXT, body.into())
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Resp {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::engine::{ClusterFacts, ParentJobSet};

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

    fn app(cluster: Arc<dyn ClusterView>) -> App {
        let (store, _) = ConfigStore::load(None, None).expect("config");
        let store = Arc::new(store);
        let addr = "127.0.0.1:9".parse().expect("addr");
        let readiness = Readiness::new(
            super::super::tls::SelfCheck::new(addr).expect("self check"),
            store.clone(),
            Vec::new(),
        );
        App {
            config: store,
            cluster,
            metrics: Arc::new(Metrics::new()),
            readiness: Arc::new(readiness),
            max_body: MAX_BODY,
            body_timeout: Duration::from_secs(1),
            body_budget: Semaphore::new(MAX_BODY),
        }
    }

    fn post(body: &str) -> Request<Full<Bytes>> {
        Request::post("/mutate")
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
        let app = app(Arc::new(Exploding));
        let resp = handle(&app, Port::Webhook, post(JOBSET_REVIEW)).await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(app.metrics.panics.get(), 1);
        assert_eq!(app.metrics.in_flight.get(), 0);
        // And the next request is served normally.
        let app2 = App {
            cluster: Arc::new(admission::Offline),
            ..app
        };
        let resp = handle(&app2, Port::Webhook, post(JOBSET_REVIEW)).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn routes_and_methods() {
        let app = app(Arc::new(admission::Offline));
        let get = |path: &str| {
            Request::get(path)
                .body(Full::new(Bytes::new()))
                .expect("request")
        };
        let status = |r: Resp| r.status().as_u16();
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
        let post_health = Request::post("/healthz")
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

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json(" application/json ;charset=UTF-8"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/jsonx"));
        assert!(!is_json("application/json-patch+json"));
        assert!(!is_json(""));
    }
}
