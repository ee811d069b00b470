//! `POST /mutate`: request hygiene (content type, size, time) and turning
//! `admission::review`'s answer into a response. The review itself runs synchronously on the
//! connection's task: it is CPU-bound microseconds, cheaper than any hand-off to a thread.

use std::fmt::Display;
use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Body;
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::{info, warn};

use super::routes::{App, text, with_type};
use crate::admission::{self, Via};
use crate::telemetry::Metrics;

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

const JSON: &str = "application/json";

/// The raw body is read here, under the body budget and [`MAX_BODY`], not by axum's `Json`
/// or `Bytes` extractors (their 2 MiB default limit, owned copies and their own rejection
/// texts).
pub(crate) async fn mutate(State(app): State<Arc<App>>, req: Request) -> Response {
    let start = Instant::now();
    app.metrics.in_flight.inc();
    let _in_flight = InFlight {
        metrics: &app.metrics,
        start,
    };

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
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return reject(StatusCode::PAYLOAD_TOO_LARGE, too_large(), true);
    }
    let hint = declared.map_or(INITIAL_CAPACITY, |n| (n as usize).min(INITIAL_CAPACITY));
    // Set by the route (`routes::webhook`): which registration the API server called.
    let via = req.extensions().get::<Via>().copied().unwrap_or_default();

    let body = match tokio::time::timeout(
        app.body_timeout,
        read_body(req.into_body(), MAX_BODY, hint, &app.body_budget),
    )
    .await
    {
        Err(_) => {
            app.metrics.timeout("body");
            let reason = format!("the body did not arrive within {:?}", app.body_timeout);
            return reject(StatusCode::REQUEST_TIMEOUT, reason, true);
        }
        Ok(Err(BodyError::TooLarge)) => {
            return reject(StatusCode::PAYLOAD_TOO_LARGE, too_large(), true);
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
    let reviewed = admission::review_via(&body, &config, &*app.cluster, via);
    let micros = start.elapsed().as_micros() as u64;
    match reviewed {
        Ok(answer) => {
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
        Err(bad) => reject(StatusCode::BAD_REQUEST, bad.to_string(), false),
    }
}

/// The 413 reason, whether the declared length or the bytes read passed the limit.
fn too_large() -> String {
    format!("the body is larger than the {MAX_BODY} byte limit")
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

/// A `/mutate` request in flight. A panic while it is held is counted as a request answered
/// 500 (the panic itself is caught, logged and answered by [`super::layers::CatchPanic`]).
struct InFlight<'a> {
    metrics: &'a Metrics,
    start: Instant,
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
