//! What every handler shares ([`App`]) and the shapes of plain answers.

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, StatusCode};

use super::body::BodyLimits;
use super::config_store::ConfigStore;
use super::mutate::Reviews;
use super::ready::Readiness;
use crate::admission::ClusterView;
use crate::telemetry::Metrics;

pub(crate) const TEXT: &str = "text/plain; charset=utf-8";

/// Everything a request handler needs.
pub(crate) struct App {
    pub config: Arc<ConfigStore>,
    pub cluster: Arc<dyn ClusterView>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// Body reading: its timeout, and the memory budget shared by every request (without
    /// it, clients that send 7 MiB bodies and withhold the last byte hold 7 MiB each until
    /// the body timeout, and a few dozen exceed a pod's memory limit).
    pub body: BodyLimits,
    /// Reviews in flight and the workers that run them.
    pub reviews: Reviews,
}

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response {
    with_type(status, TEXT, body.into())
}

pub(crate) fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
