//! HTTP only: each port's routes as an axum [`Router`] (paths, methods, 404 and 405 with
//! `Allow`), served by our own connection layer ([`super::conn`]), and the answers' shapes.
//! The review itself is [`super::mutate`]; the state and the answers' helpers are
//! [`super::state`].

use std::sync::Arc;

use axum::{Extension, Router};
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{MethodRouter, get, post};
use http::header::ALLOW;
use http::{HeaderValue, StatusCode};
use tracing::{debug, error};

use super::layers::{CatchPanic, CloseWhileDraining};
use super::mutate::mutate;
pub(crate) use super::state::{App, text, with_type};
use crate::admission::Via;
use crate::telemetry::CodeLabels;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The webhook port (TLS): `/mutate`, `/healthz`, `/readyz`. While draining, every answer
/// closes its connection, so clients reconnect to a replica that stays (kube-apiserver keeps
/// webhook connections alive otherwise).
pub(crate) type WebhookService = CloseWhileDraining<CatchPanic<Router>>;

/// The admin port (plain HTTP): `/metrics`, `/healthz`, `/readyz`.
pub(crate) type AdminService = CatchPanic<Router>;

pub(crate) fn webhook(app: &Arc<App>) -> WebhookService {
    let router = Router::new()
        .route("/mutate", post(mutate).fallback(not_allowed_post))
        // The namespace-default registration's own path: the same handler, told that the API
        // server's namespaceSelector established the namespace's opt-in (`admission::Via`).
        .route(
            "/mutate/namespace-default",
            post(mutate)
                .fallback(not_allowed_post)
                .layer(Extension(Via::NamespaceDefault)),
        )
        .route("/healthz", health(get(healthz)))
        .route("/readyz", health(get(readyz)))
        .fallback(not_found)
        .with_state(app.clone());
    CloseWhileDraining::new(
        CatchPanic::new(router, app.metrics.clone()),
        app.readiness.clone(),
    )
}

pub(crate) fn admin(app: &Arc<App>) -> AdminService {
    let router = Router::new()
        .route("/metrics", health(get(metrics)))
        .route("/healthz", health(get(healthz)))
        .route("/readyz", health(get(readyz)))
        .fallback(not_found)
        .with_state(app.clone());
    CatchPanic::new(router, app.metrics.clone())
}

/// A GET route (axum answers HEAD with it too, without the body) whose other methods get
/// our 405.
fn health(route: MethodRouter<Arc<App>>) -> MethodRouter<Arc<App>> {
    route.fallback(not_allowed_get)
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n")
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let (ready, body) = app.readiness.report().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, body)
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
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

async fn not_found(State(app): State<Arc<App>>, req: Request) -> Response {
    app.metrics
        .bad_requests
        .get_or_create(&CodeLabels { code: 404 })
        .inc();
    let path = req.uri().path();
    debug!(%path, "not found");
    text(StatusCode::NOT_FOUND, format!("no route for {path}\n"))
}

async fn not_allowed_post(State(app): State<Arc<App>>) -> Response {
    not_allowed(&app, "POST")
}

async fn not_allowed_get(State(app): State<Arc<App>>) -> Response {
    not_allowed(&app, "GET, HEAD")
}

/// 405 with our own `Allow` (axum keeps a header the handler set).
fn not_allowed(app: &App, allow: &'static str) -> Response {
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

#[cfg(test)]
mod tests;
