//! Reading a `/mutate` body: content type, size, time and memory bounds, and the answer when
//! one of them is not met ([`BodyRejection`], an axum `IntoResponse`).

use std::fmt::Display;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Body;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::routes::text;
use crate::admission::clip;

/// Largest accepted AdmissionReview body (controller-runtime's limit; the API server's own
/// request limit is 3 MiB, and an UPDATE review carries two objects).
pub const MAX_BODY: usize = 7 * 1024 * 1024;
/// The first bytes of every body are not counted against the body budget, so that the usual
/// review (a JobSet or Pod of a few KiB) never waits behind large ones. What they can hold is
/// bounded by `--max-connections` x this. Reading also starts with at most this much
/// capacity, whatever Content-Length claims, so a client cannot make us reserve memory it
/// never sends.
pub const FREE_BODY_BYTES: usize = 64 * 1024;

const JSON: &str = "application/json";

/// How bodies are read: `budget` holds one permit per byte of body buffers beyond
/// [`FREE_BODY_BYTES`], shared by every request (at least [`MAX_BODY`] permits).
pub(crate) struct BodyLimits {
    pub budget: Arc<Semaphore>,
    pub timeout: Duration,
}

/// A body read in full, with the budget its buffer holds (given back when dropped).
pub(crate) struct ReviewBody {
    pub bytes: Vec<u8>,
    _budget: Option<OwnedSemaphorePermit>,
}

/// Why a body was not read; answered with its status and reason as plain text.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyRejection {
    /// The content type as sent, cut to the clip length (it may be 64 KiB long).
    #[error("unsupported content type {0}; send application/json")]
    UnsupportedType(String),
    #[error("unreadable content type; send application/json")]
    UnreadableType,
    #[error("no content type; send application/json")]
    NoType,
    #[error("the body is larger than the {} byte limit", MAX_BODY)]
    TooLarge,
    #[error("the body did not arrive within {0:?}")]
    Timeout(Duration),
    #[error("reading the body failed: {0}")]
    Read(String),
    #[error("the body is empty; expected an admission.k8s.io/v1 AdmissionReview")]
    Empty,
}

impl BodyRejection {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedType(_) | Self::UnreadableType | Self::NoType => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Read(_) | Self::Empty => StatusCode::BAD_REQUEST,
        }
    }

    /// Whether the body may still be arriving: the connection cannot carry another request.
    fn closes(&self) -> bool {
        !matches!(self, Self::Empty)
    }
}

impl IntoResponse for BodyRejection {
    fn into_response(self) -> Response {
        let mut r = text(self.status(), format!("{self}\n"));
        if self.closes() {
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

/// Checks the content type and the declared length, then reads the body within
/// `limits.timeout`, under [`MAX_BODY`] and the budget.
pub(crate) async fn read(req: Request, limits: &BodyLimits) -> Result<ReviewBody, BodyRejection> {
    let headers = req.headers();
    check_type(headers)?;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let declared = match declared {
        Some(n) if n > MAX_BODY as u64 => return Err(BodyRejection::TooLarge),
        // At most MAX_BODY: fits a usize.
        Some(n) => Some(n as usize),
        None => None,
    };
    let read = read_body(req.into_body(), MAX_BODY, declared, &limits.budget);
    let body = tokio::time::timeout(limits.timeout, read)
        .await
        .map_err(|_| BodyRejection::Timeout(limits.timeout))??;
    if body.bytes.is_empty() {
        return Err(BodyRejection::Empty);
    }
    Ok(body)
}

fn check_type(headers: &HeaderMap) -> Result<(), BodyRejection> {
    match headers.get(CONTENT_TYPE).map(HeaderValue::to_str) {
        Some(Ok(ct)) if is_json(ct) => Ok(()),
        Some(Ok(ct)) => Err(BodyRejection::UnsupportedType(clip(format!("{ct:?}")))),
        Some(Err(_)) => Err(BodyRejection::UnreadableType),
        None => Err(BodyRejection::NoType),
    }
}

/// `application/json`, any case, optionally with parameters (`; charset=utf-8`).
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(JSON))
}

/// Reads the body into memory, stopping (without reading further) once it passes `max`.
/// The buffer's capacity beyond [`FREE_BODY_BYTES`] is paid from `budget` before it is
/// allocated:
/// - with a declared length, all of it at once when the body first outgrows the free bytes
///   (all or nothing: bodies that each held part of the budget while waiting for the rest
///   waited on each other until the body timeout, eight 4 MiB bodies in the default 32 MiB;
///   `tests/faults`, large bodies at once are all served);
/// - without one (chunked; kube-apiserver always declares its length), step by step as the
///   buffer doubles.
async fn read_body<B>(
    body: B,
    max: usize,
    declared: Option<usize>,
    budget: &Arc<Semaphore>,
) -> Result<ReviewBody, BodyRejection>
where
    B: Body<Data = Bytes>,
    B::Error: Display,
{
    let mut body = pin!(body);
    let mut buf = Vec::with_capacity(declared.unwrap_or(FREE_BODY_BYTES).min(FREE_BODY_BYTES));
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut held_bytes = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyRejection::Read(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let needed = buf.len().saturating_add(data.len());
        if needed > max {
            return Err(BodyRejection::TooLarge);
        }
        if needed > buf.capacity() {
            let capacity = match declared {
                Some(n) if n >= needed => n,
                // More than declared (hyper refuses that) or chunked: grow like `Vec` would
                // (doubling), never past `max`.
                _ => needed.max(buf.capacity().saturating_mul(2)).min(max),
            };
            let counted = capacity.saturating_sub(FREE_BODY_BYTES);
            if counted > held_bytes {
                let more =
                    u32::try_from(counted - held_bytes).map_err(|_| BodyRejection::TooLarge)?;
                let permit = budget
                    .clone()
                    .acquire_many_owned(more)
                    .await
                    .map_err(|_| BodyRejection::Read("the server is shutting down".into()))?;
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
    Ok(ReviewBody {
        bytes: buf,
        _budget: held,
    })
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

    /// A 64 KiB content type is quoted and cut in the answer (and so in the log line).
    #[test]
    fn a_long_content_type_is_clipped() {
        let mut h = HeaderMap::new();
        let long = "x".repeat(64 * 1024);
        h.insert(CONTENT_TYPE, HeaderValue::from_str(&long).unwrap());
        let e = check_type(&h).unwrap_err();
        let reason = e.to_string();
        assert!(reason.len() < 1200, "{}", reason.len());
        assert!(reason.contains("message cut, 65538 bytes"), "{reason}");
    }
}
