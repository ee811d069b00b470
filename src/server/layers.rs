//! The two layers around each port's [`axum::Router`]: one panic guard, and (webhook port)
//! `Connection: close` while draining. Plain wrappers (no boxing) rather than
//! `Router::layer`, which would box every route once more.

use std::convert::Infallible;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::Response;
use http::header::CONNECTION;
use http::{HeaderValue, Request, StatusCode};
use tower_service::Service;
use tracing::error;

use super::ready::Readiness;
use super::routes::text;
use crate::telemetry::Metrics;

/// The one place a panic while handling a request is caught: answered 500, counted and
/// logged; the connection closes after the answer.
#[derive(Clone)]
pub(crate) struct CatchPanic<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> CatchPanic<S> {
    pub(crate) fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

impl<S, B> Service<Request<B>> for CatchPanic<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = CatchPanicFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        CatchPanicFuture {
            inner: self.inner.call(req),
            metrics: self.metrics.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct CatchPanicFuture<F> {
        #[pin]
        inner: F,
        metrics: Arc<Metrics>,
    }
}

impl<F> Future for CatchPanicFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let inner = this.inner;
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => {
                this.metrics.panics.inc();
                error!(panic = %panic_message(&*panic), "handling a request panicked; answered 500");
                let mut r = text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the webhook's log\n",
                );
                r.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                Poll::Ready(Ok(r))
            }
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// While the server drains, every answer closes its connection, so that clients reconnect
/// to a replica that stays.
#[derive(Clone)]
pub(crate) struct CloseWhileDraining<S> {
    inner: S,
    readiness: Arc<Readiness>,
}

impl<S> CloseWhileDraining<S> {
    pub(crate) fn new(inner: S, readiness: Arc<Readiness>) -> Self {
        Self { inner, readiness }
    }
}

impl<S, B> Service<Request<B>> for CloseWhileDraining<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = CloseWhileDrainingFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        CloseWhileDrainingFuture {
            inner: self.inner.call(req),
            readiness: self.readiness.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct CloseWhileDrainingFuture<F> {
        #[pin]
        inner: F,
        readiness: Arc<Readiness>,
    }
}

impl<F> Future for CloseWhileDrainingFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut resp) = std::task::ready!(this.inner.poll(cx));
        if this.readiness.draining() {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(resp))
    }
}
