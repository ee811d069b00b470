//! `POST /mutate`: read the body ([`super::body`]), review it on a worker thread within the
//! in-flight bound ([`Reviews`]), answer. Nothing here knows the AdmissionReview format.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::header::RETRY_AFTER;
use http::{HeaderValue, StatusCode, Uri};
use tokio::sync::Semaphore;
use tracing::{Instrument as _, error, info, info_span, warn};

use super::body::{self, BodyRejection};
use super::state::{App, text, with_type};
use crate::admission::{self, Answer, ReviewFailed, Via};
use crate::args::parse_duration;
use crate::telemetry::{Metrics, ReasonLabels};

const JSON: &str = "application/json";

/// How long a review may wait for a worker when the API server sent no `timeout` parameter
/// (its own default webhook timeout is 10 s, and it always sends the parameter).
const DEFAULT_API_TIMEOUT: Duration = Duration::from_secs(10);

/// Every line of one review carries `review{uid}` (the uid is recorded once the body is
/// decoded, by `admission::review`).
pub(crate) async fn mutate(State(app): State<Arc<App>>, req: Request) -> Response {
    let span = info_span!("review", uid = tracing::field::Empty);
    handle(app, req).instrument(span).await
}

async fn handle(app: Arc<App>, req: Request) -> Response {
    let start = Instant::now();
    let _in_flight = InFlight::new(&app.metrics, start);
    let deadline = start + api_server_timeout(req.uri());
    // Set by the route (`routes::webhook`): which registration the API server called.
    let via = req.extensions().get::<Via>().copied().unwrap_or_default();
    let body = match body::read(req, &app.body).await {
        Ok(b) => b,
        Err(why) => return refuse(&app, start, Refusal::Body(why)),
    };
    let (config, cluster) = (app.config.load_current(), app.cluster.clone());
    let work = move || admission::review_via(&body.bytes, &config, &*cluster, via);
    match app.reviews.run(deadline, work).await {
        Ok(Ok(answer)) => answered(&app, start, answer),
        Ok(Err(ReviewFailed::Bad(bad))) => refuse(&app, start, Refusal::BadReview(bad.to_string())),
        Ok(Err(ReviewFailed::Encode(e))) => refuse(&app, start, Refusal::Encode(e)),
        Err(shed) => {
            app.metrics
                .reviews_shed
                .get_or_create(&ReasonLabels {
                    reason: shed.reason(),
                })
                .inc();
            refuse(&app, start, Refusal::Shed(shed))
        }
    }
}

fn answered(app: &App, start: Instant, answer: Answer) -> Response {
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
        micros = start.elapsed().as_micros() as u64,
        "review"
    );
    with_type(StatusCode::OK, JSON, answer.body.into())
}

/// Why `/mutate` gave no review answer.
enum Refusal {
    Body(BodyRejection),
    BadReview(String),
    Shed(Shed),
    Encode(String),
}

/// Counts, logs and answers a refusal.
fn refuse(app: &App, start: Instant, why: Refusal) -> Response {
    let (status, reason, response) = match why {
        Refusal::Body(b) => (b.status(), b.to_string(), b.into_response()),
        Refusal::BadReview(reason) => {
            let r = text(StatusCode::BAD_REQUEST, format!("{reason}\n"));
            (StatusCode::BAD_REQUEST, reason, r)
        }
        Refusal::Shed(s) => {
            let reason = s.to_string();
            let mut r = text(StatusCode::TOO_MANY_REQUESTS, format!("{reason}\n"));
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            (StatusCode::TOO_MANY_REQUESTS, reason, r)
        }
        Refusal::Encode(e) => {
            error!(error = %e, "encoding the answer failed; answered 500");
            let r = text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the answer failed\n",
            );
            (StatusCode::INTERNAL_SERVER_ERROR, e, r)
        }
    };
    if status == StatusCode::REQUEST_TIMEOUT {
        app.metrics.timeout("body");
    }
    app.metrics
        .observe_rejected(status.as_u16(), start.elapsed().as_secs_f64());
    warn!(code = status.as_u16(), %reason, "request rejected");
    response
}

/// The API server's timeout for this call: kube-apiserver sends it as `?timeout=5s`
/// (`k8s.io/apiserver` `pkg/admission/plugin/webhook/mutating/dispatcher.go`, `r.Timeout`).
fn api_server_timeout(uri: &Uri) -> Duration {
    uri.query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("timeout="))
        .and_then(|v| parse_duration(v).ok())
        .map_or(DEFAULT_API_TIMEOUT, |t| t.min(Duration::from_secs(30)))
}

/// Why a review was not run: answered 429 with `Retry-After: 1`.
///
/// kube-apiserver's webhook client (client-go's `rest.Request`, `maxRetries` 10, no client
/// rate limiter: `k8s.io/apiserver` `pkg/util/webhook/client.go` sets `QPS = -1`) retries a
/// 429 or 5xx answer that carries an integer `Retry-After`, after that many seconds and
/// within the webhook's timeout (`k8s.io/client-go` `rest/with_retry.go` `checkWait` and
/// `IsNextRetry`; the review body is kept as bytes, so it can be re-sent). A denial would
/// fail the user's request for good, and a queue past the API server's timeout would apply
/// the failure policy after the whole timeout. docs/security.md "Limits" says the same.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Shed {
    #[error("{0} reviews are in flight (--max-reviews-in-flight); retry")]
    InFlight(usize),
    #[error("no review worker was free within the API server's timeout; retry")]
    QueueTimeout,
}

impl Shed {
    fn reason(&self) -> &'static str {
        match self {
            Self::InFlight(_) => "in_flight_limit",
            Self::QueueTimeout => "queue_timeout",
        }
    }
}

/// Reviews run on tokio's blocking threads, never on the async workers, so that a long
/// review (up to the engine's bounds) cannot stall the accept loops, the deadlines or the
/// probes. At most `in_flight` reviews wait or run at once (more are shed at once); at most
/// `workers` (the CPUs, at least 2) run at once, in arrival order.
///
/// Sizing (docs/security.md "Limits"): a review of a typical JobSet or Pod takes tens of
/// microseconds and a 3 MiB JobSet about a millisecond (docs/BENCHMARKS.md), so 256 waiting
/// reviews clear in well under a second on one CPU, inside the shipped 3-5 s webhook
/// timeouts. A 5,000-pod burst reaches a replica no faster than the API servers call it
/// (each admits at most `--max-mutating-requests-inflight`, 200 by default, mutating
/// requests at once, shared across the replicas), and a 429 is retried after 1 s, so a
/// burst beyond 256 at once is spread out, not failed.
pub(crate) struct Reviews {
    in_flight: Arc<Semaphore>,
    limit: usize,
    workers: Arc<Semaphore>,
}

impl Reviews {
    pub(crate) fn new(in_flight: usize) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        Self::with_workers(in_flight, cpus.max(2))
    }

    fn with_workers(in_flight: usize, workers: usize) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(in_flight.max(1))),
            limit: in_flight.max(1),
            workers: Arc::new(Semaphore::new(workers.max(1))),
        }
    }

    /// Runs `work` on a blocking thread once a worker is free, unless `limit` reviews are in
    /// flight already or no worker frees up before `deadline`. A panic in `work` is resumed
    /// here, so the request's panic guard answers and counts it.
    async fn run<T: Send + 'static>(
        &self,
        deadline: Instant,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Shed> {
        let Ok(_in_flight) = self.in_flight.clone().try_acquire_owned() else {
            return Err(Shed::InFlight(self.limit));
        };
        let worker = tokio::time::timeout_at(deadline.into(), self.workers.clone().acquire_owned())
            .await
            .map_err(|_| Shed::QueueTimeout)?
            .map_err(|_| Shed::QueueTimeout)?;
        let span = tracing::Span::current();
        let joined = tokio::task::spawn_blocking(move || {
            let _worker = worker;
            span.in_scope(work)
        })
        .await;
        match joined {
            Ok(v) => Ok(v),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down.
            Err(_) => Err(Shed::QueueTimeout),
        }
    }
}

/// A `/mutate` request in flight. A panic while it is held is counted as a request answered
/// 500 (the panic itself is caught, logged and answered by [`super::layers::CatchPanic`]).
struct InFlight<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl<'a> InFlight<'a> {
    fn new(metrics: &'a Metrics, start: Instant) -> Self {
        metrics.in_flight.inc();
        Self { metrics, start }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        if std::thread::panicking() {
            self.metrics
                .observe_rejected(500, self.start.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_servers_timeout_parameter() {
        let t = |s: &str| api_server_timeout(&s.parse::<Uri>().unwrap());
        assert_eq!(t("/mutate?timeout=5s"), Duration::from_secs(5));
        assert_eq!(t("/mutate?x=1&timeout=3s"), Duration::from_secs(3));
        assert_eq!(t("/mutate"), DEFAULT_API_TIMEOUT);
        assert_eq!(t("/mutate?timeout=junk"), DEFAULT_API_TIMEOUT);
        assert_eq!(t("/mutate?timeout=1h"), Duration::from_secs(30));
    }

    /// Past the in-flight limit a review is refused at once; while the only worker is busy
    /// the next one waits, and gives up at its deadline; reviews run off the async thread.
    #[tokio::test]
    async fn reviews_past_the_bounds_are_shed() {
        let reviews = Arc::new(Reviews::with_workers(2, 1));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let far = Instant::now() + Duration::from_secs(30);
        let async_thread = std::thread::current().id();
        let first = {
            let reviews = reviews.clone();
            tokio::spawn(async move {
                reviews
                    .run(far, move || {
                        let _ = wait.recv();
                        std::thread::current().id()
                    })
                    .await
            })
        };
        // The first holds the worker: the second waits for it until its deadline.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let soon = Instant::now() + Duration::from_millis(100);
        let second = reviews.run(soon, || ());
        let third = {
            let reviews = reviews.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                reviews.run(far, || ()).await
            }
        };
        let (second, third) = tokio::join!(second, third);
        assert!(matches!(third, Err(Shed::InFlight(2))), "{third:?}");
        assert!(matches!(second, Err(Shed::QueueTimeout)), "{second:?}");
        release.send(()).unwrap();
        let ran_on = first.await.unwrap().unwrap();
        assert_ne!(ran_on, async_thread);
        assert!(reviews.run(far, || 7).await.is_ok_and(|v| v == 7));
    }
}
