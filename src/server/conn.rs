//! Listeners and connections: accept with a connection cap, TLS handshake with a deadline,
//! HTTP/1.1 (or h2 when negotiated) through hyper, per-connection deadlines, graceful drain.
//!
//! Deadlines are kept here rather than with hyper's `header_read_timeout`, because hyper
//! starts that timer whenever the connection waits for a request head, so it also closes
//! idle keep-alive connections after a few seconds. kube-apiserver keeps webhook connections
//! alive for up to 90 s, and a server that closes them early races the client's next request.
//! So each connection has a [`Clock`]:
//!
//! - `header`: from the first byte of a request (or the end of the TLS handshake) until its
//!   head is parsed: `--header-read-timeout` (5 s). This is what stops half-sent headers.
//! - `idle`: between requests with no byte received: `--idle-timeout` (120 s, longer than the
//!   API server's 90 s so the client closes first).
//! - while a request is handled, the handler's body-read timeout applies instead.
//!
//! When a deadline passes the connection is dropped.
//!
//! The layer knows nothing of the routes: it serves any `tower` service (axum's `Router`
//! behind our layers) the way axum's `low-level-rustls` example does, so everything above
//! (accept, TLS, clock, buffers, linger, drain) stays ours rather than `axum::serve`'s.

use std::convert::Infallible;
use std::future::{Future, pending, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower_service::Service;
use tracing::{debug, warn};

use crate::telemetry::{CodeLabels, Metrics};

/// Timeouts and limits for one listener.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub header_read: Duration,
    pub idle: Duration,
    pub tls_handshake: Duration,
}

/// After answering and shutting down our side, keep reading (and discarding) what the client
/// still sends for this long / this much, so that closing a socket with unread data (a body
/// we refused with 413) does not reset the connection before the client has read our answer.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// Largest HTTP/1 request head (request line and headers), and hyper's read-buffer bound
/// (`max_buf_size`, ~400 KiB by default): a longer head is answered 431 and the connection
/// closed. Without it each connection could hold ~400 KiB of unfinished head until the
/// header deadline, outside `--max-body-memory` (see docs/BENCHMARKS.md). Bodies only pass
/// through this buffer, so it does not limit them (the handler does, see `MAX_BODY`).
/// kube-apiserver's heads are well under 8 KiB.
pub const MAX_HEAD: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------
// Clock

#[derive(Debug)]
struct ClockState {
    /// Requests being handled on this connection.
    busy: u32,
    /// When the current request's first byte arrived (or the handshake ended).
    head_started: Option<Instant>,
    /// When the connection last became idle.
    idle_since: Instant,
    /// HTTP/1 only: with h2, bytes arrive for pings and streams at any time.
    track_heads: bool,
}

/// Which deadline closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expired {
    Header,
    Idle,
}

pub(crate) struct Clock {
    state: Mutex<ClockState>,
    changed: Notify,
    limits: Limits,
}

impl Clock {
    /// A new connection is expected to send its first request at once: the header deadline
    /// runs from the start.
    fn new(limits: Limits) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            state: Mutex::new(ClockState {
                busy: 0,
                head_started: Some(now),
                idle_since: now,
                track_heads: true,
            }),
            changed: Notify::new(),
            limits,
        })
    }

    /// After the TLS handshake: restart the header deadline (HTTP/1), or stop timing heads (h2).
    fn handshake_done(&self, h2: bool) {
        let mut s = self.lock();
        let now = Instant::now();
        s.idle_since = now;
        s.track_heads = !h2;
        s.head_started = (!h2).then_some(now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        // Nothing in here can leave the state inconsistent; a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bytes_read(&self) {
        let mut s = self.lock();
        if s.track_heads && s.busy == 0 && s.head_started.is_none() {
            s.head_started = Some(Instant::now());
            drop(s);
            // The header deadline is earlier than the idle one: wake the watchdog.
            self.changed.notify_one();
        }
    }

    fn begin(&self) {
        let mut s = self.lock();
        s.busy = s.busy.saturating_add(1);
        s.head_started = None;
    }

    fn end(&self) {
        let mut s = self.lock();
        s.busy = s.busy.saturating_sub(1);
        if s.busy == 0 {
            s.idle_since = Instant::now();
            drop(s);
            // From "no deadline" to the idle deadline: wake the watchdog.
            self.changed.notify_one();
        }
    }

    fn deadline(&self) -> Option<(Instant, Expired)> {
        let s = self.lock();
        if s.busy > 0 {
            None
        } else if let Some(t) = s.head_started {
            Some((t + self.limits.header_read, Expired::Header))
        } else {
            Some((s.idle_since + self.limits.idle, Expired::Idle))
        }
    }
}

/// Marks a request as being handled until dropped (also on panic).
struct Busy(Arc<Clock>);

impl Busy {
    fn new(clock: &Arc<Clock>) -> Self {
        clock.begin();
        Self(clock.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The socket, reporting received bytes to the clock. It sits under TLS, so a client that
/// trickles TLS records is timed like one that trickles plaintext.
pub(crate) struct ClockedIo<T> {
    inner: T,
    clock: Arc<Clock>,
}

impl<T: AsyncRead + Unpin> AsyncRead for ClockedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.bytes_read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClockedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// ---------------------------------------------------------------------------------------
// Listeners

/// What a listener serves: `service` answers each request; `metrics`, when given, counts
/// the connections (the webhook port's; the admin port's are not counted).
#[derive(Clone)]
pub(crate) struct Listener<S> {
    pub service: S,
    pub metrics: Option<Arc<Metrics>>,
    /// `None` for the plain admin port.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub limits: Limits,
    /// One permit per open connection.
    pub connections: Arc<Semaphore>,
    /// Becomes `true` when connections should finish their current request and close.
    pub shutdown: watch::Receiver<bool>,
}

/// What the connection layer needs of a service: axum's `Router` (behind our layers) is one.
/// Its `poll_ready` is not called: a `Router` is always ready (axum's own examples call it
/// the same way). `Unpin`, as hyper's `poll_without_shutdown` needs, without a box: axum's
/// route future is `Unpin` already.
pub(crate) trait HttpService:
    Service<
        Request<Incoming>,
        Response = Response<axum::body::Body>,
        Error = Infallible,
        Future: Send + Unpin + 'static,
    > + Clone
    + Send
    + Sync
    + Unpin
    + 'static
{
}

impl<S> HttpService for S where
    S: Service<
            Request<Incoming>,
            Response = Response<axum::body::Body>,
            Error = Infallible,
            Future: Send + Unpin + 'static,
        > + Clone
        + Send
        + Sync
        + Unpin
        + 'static
{
}

/// Accepts until `stop` becomes `true`, then returns (dropping the listening socket, so new
/// connections are refused). Open connections keep running in their own tasks.
pub(crate) async fn accept_loop<S: HttpService>(
    listener: TcpListener,
    l: Listener<S>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off, never exit.
                warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = l.connections.clone().try_acquire_owned() else {
            // At the cap: close at once rather than let the kernel queue grow unseen.
            if let Some(m) = &l.metrics {
                m.connections_rejected.inc();
            }
            debug!(%peer, "connection limit reached; closing");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let l = l.clone();
        tokio::spawn(async move {
            let _open = l.metrics.as_ref().map(OpenConnection::new);
            connection(tcp, peer, &l, permit).await;
        });
    }
}

/// Counts an open connection until dropped.
struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    fn new(metrics: &Arc<Metrics>) -> Self {
        metrics.connections_open.inc();
        Self(metrics.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

async fn connection<S: HttpService>(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    l: &Listener<S>,
    _permit: OwnedSemaphorePermit,
) {
    let clock = Clock::new(l.limits);
    let io = ClockedIo {
        inner: tcp,
        clock: clock.clone(),
    };
    let Some(acceptor) = &l.tls else {
        serve_h1(io, clock, l).await;
        return;
    };
    let mut shutdown = l.shutdown.clone();
    let handshake = tokio::select! {
        r = tokio::time::timeout(l.limits.tls_handshake, acceptor.accept(io)) => r,
        // Draining: a connection without a request yet has nothing to finish.
        _ = shutdown.wait_for(|s| *s) => return,
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            if let Some(m) = &l.metrics {
                m.tls_handshake_errors.inc();
            }
            debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            if let Some(m) = &l.metrics {
                m.timeout("handshake");
            }
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    clock.handshake_done(h2);
    if h2 {
        serve_h2(tls, clock, l).await;
    } else {
        serve_h1(tls, clock, l).await;
    }
}

pin_project_lite::pin_project! {
    /// The service's future, with the connection's busy mark held until the answer is ready
    /// (or the future is dropped).
    pub(crate) struct Guarded<F> {
        #[pin]
        inner: F,
        _busy: Busy,
    }
}

impl<F: Future> Future for Guarded<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

fn service<S: HttpService>(
    service: &S,
    clock: &Arc<Clock>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<axum::body::Body>,
    Error = Infallible,
    Future = Guarded<S::Future>,
> + Clone
+ Send
+ Unpin
+ 'static {
    let service = service.clone();
    let clock = clock.clone();
    service_fn(move |req| Guarded {
        _busy: Busy::new(&clock),
        inner: service.clone().call(req),
    })
}

async fn sleep_until(deadline: Option<(Instant, Expired)>) {
    match deadline {
        Some((at, _)) => tokio::time::sleep_until(at).await,
        None => pending().await,
    }
}

enum Event<T> {
    Finished(T),
    Changed,
    Tick,
    Drain,
}

/// Runs the connection's watchdog around `poll`: returns `Ok(output)` when `poll` finishes,
/// or `Err(expired)` when a deadline passed. `graceful` is called once when draining starts.
async fn watched<T>(
    clock: &Clock,
    shutdown: &mut watch::Receiver<bool>,
    mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    mut graceful: impl FnMut(),
) -> Result<T, Expired> {
    let mut draining = false;
    loop {
        let deadline = clock.deadline();
        let event = tokio::select! {
            r = poll_fn(&mut poll) => Event::Finished(r),
            _ = clock.changed.notified() => Event::Changed,
            _ = sleep_until(deadline) => Event::Tick,
            _ = shutdown.wait_for(|s| *s), if !draining => Event::Drain,
        };
        match event {
            Event::Finished(r) => return Ok(r),
            Event::Changed => {}
            Event::Tick => {
                if let Some((at, kind)) = clock.deadline()
                    && Instant::now() >= at
                {
                    return Err(kind);
                }
            }
            Event::Drain => {
                draining = true;
                graceful();
            }
        }
    }
}

fn expired<S>(l: &Listener<S>, kind: Expired) {
    let phase = match kind {
        Expired::Header => "header",
        Expired::Idle => "idle",
    };
    if let Some(m) = &l.metrics {
        m.timeout(phase);
    }
    debug!(phase, "connection deadline passed; closing");
}

async fn serve_h1<I, S>(io: I, clock: Arc<Clock>, l: &Listener<S>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Deadlines are the clock's business (see the module comment).
        .header_read_timeout(None)
        // The buffer bound caps memory (a read may overshoot it a little); the header-size
        // bound makes the limit on the head exact.
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD)
        .keep_alive(true);
    let mut conn = builder.serve_connection(TokioIo::new(io), service(&l.service, &clock));
    let mut shutdown = l.shutdown.clone();
    if *shutdown.borrow() {
        Pin::new(&mut conn).graceful_shutdown();
    }
    let graceful = AtomicBool::new(false);
    let result = watched(
        &clock,
        &mut shutdown,
        |cx| {
            if graceful.swap(false, Ordering::Relaxed) {
                Pin::new(&mut conn).graceful_shutdown();
            }
            conn.poll_without_shutdown(cx)
        },
        || graceful.store(true, Ordering::Relaxed),
    )
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            if e.is_parse_too_large()
                && let Some(m) = &l.metrics
            {
                // hyper answered 431 itself: the head was longer than MAX_HEAD.
                m.bad_requests
                    .get_or_create(&CodeLabels { code: 431 })
                    .inc();
            }
            debug!(error = %e, "HTTP/1 connection ended with an error");
        }
        Err(kind) => return expired(l, kind),
    }
    // Only the socket lingers: hyper's buffers (up to MAX_HEAD read) are dropped here.
    let io = conn.into_parts().io.into_inner();
    linger(io).await;
}

async fn serve_h2<I, S>(io: I, clock: Arc<Clock>, l: &Listener<S>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(Some(100));
    let conn = builder.serve_connection(TokioIo::new(io), service(&l.service, &clock));
    let mut conn = std::pin::pin!(conn);
    let mut shutdown = l.shutdown.clone();
    if *shutdown.borrow() {
        conn.as_mut().graceful_shutdown();
    }
    let graceful = AtomicBool::new(false);
    let result = watched(
        &clock,
        &mut shutdown,
        |cx| {
            if graceful.swap(false, Ordering::Relaxed) {
                conn.as_mut().graceful_shutdown();
            }
            conn.as_mut().poll(cx)
        },
        || graceful.store(true, Ordering::Relaxed),
    )
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "HTTP/2 connection ended with an error"),
        Err(kind) => expired(l, kind),
    }
}

/// Shuts down our side, then reads and discards what the client still sends, bounded in
/// time and bytes, before closing (see [`LINGER_TIME`]).
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(mut io: I) {
    let deadline = Instant::now() + LINGER_TIME;
    if tokio::time::timeout_at(deadline, io.shutdown())
        .await
        .is_err()
    {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0usize;
    while total < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => return,
        }
    }
}
