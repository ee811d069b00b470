//! Listeners and connections: accept with a connection cap, TLS handshake with a deadline,
//! HTTP/1.1 through hyper, per-connection deadlines, graceful drain.
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
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tower_service::Service;
use tracing::{Instrument as _, debug, info_span, warn};

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
}

/// Which deadline closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expired {
    Header,
    Idle,
    /// Closed to make room for a newcomer at a cap ([`Conns`]).
    Evicted,
}

pub(crate) struct Clock {
    state: Mutex<ClockState>,
    changed: Notify,
    limits: Limits,
    /// Set by [`Conns`]: close as soon as no request is being handled.
    evicted: AtomicBool,
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
            }),
            changed: Notify::new(),
            limits,
            evicted: AtomicBool::new(false),
        })
    }

    /// After the TLS handshake: restart the header deadline.
    fn handshake_done(&self) {
        let mut s = self.lock();
        let now = Instant::now();
        s.idle_since = now;
        s.head_started = Some(now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        // Nothing in here can leave the state inconsistent; a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bytes_read(&self) {
        let mut s = self.lock();
        if s.busy == 0 && s.head_started.is_none() {
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

    /// `None` while a request is handled. The flags bound the limits (`args::TIMEOUT`); a
    /// limit past the clock's range anyway (a caller that builds `Limits` itself) means no
    /// deadline rather than a panic.
    fn deadline(&self) -> Option<(Instant, Expired)> {
        let s = self.lock();
        if s.busy > 0 {
            None
        } else if self.evicted.load(Ordering::Relaxed) {
            Some((Instant::now(), Expired::Evicted))
        } else if let Some(t) = s.head_started {
            Some((t.checked_add(self.limits.header_read)?, Expired::Header))
        } else {
            Some((s.idle_since.checked_add(self.limits.idle)?, Expired::Idle))
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
    /// The open connections, their caps and who may be evicted.
    pub connections: Arc<Conns>,
    /// Becomes `true` when connections should finish their current request and close.
    pub shutdown: watch::Receiver<bool>,
}

// ---------------------------------------------------------------------------------------
// Connection caps

/// Which connections [`Conns`] may close to make room for a newcomer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Evict {
    /// Idle keep-alive connections (between requests), oldest first.
    Idle,
    /// Idle ones first, then the ones still waiting for a request's head (the admin port:
    /// its clients, kubelet probes and scrapes, send their request at once, so a connection
    /// that has sent nothing is the likeliest to be holding a slot).
    IdleOrWaiting,
}

/// The open connections of one listener: at most `max`, at most `per_peer` from one IP
/// address. At either cap a newcomer takes the place of an evictable connection (see
/// [`Evict`]) of the same peer or, at the listener's cap, of anyone; only when every
/// candidate is handling a request is the newcomer closed at once. So a client that holds
/// idle connections cannot keep others out, and one peer cannot hold more than `per_peer`
/// (docs/security.md "Limits": why the default allows the API server, or a Konnectivity agent that
/// carries every API server's calls, half of the webhook port).
pub(crate) struct Conns {
    state: Mutex<ConnsState>,
    max: usize,
    per_peer: usize,
    evict: Evict,
    /// Notified whenever a connection closes (the drain waits on it).
    closed: Notify,
}

#[derive(Default)]
struct ConnsState {
    next_id: u64,
    open: std::collections::HashMap<u64, (IpAddr, Arc<Clock>)>,
    per_peer: std::collections::HashMap<IpAddr, usize>,
}

/// Why [`Conns::admit`] closed a newcomer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Cap,
    PerPeerCap,
}

impl Conns {
    pub(crate) fn new(max: usize, per_peer: usize, evict: Evict) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(ConnsState::default()),
            max: max.max(1),
            per_peer: per_peer.clamp(1, max.max(1)),
            evict,
            closed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnsState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Open connections.
    pub(crate) fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// Waits until no connection is open.
    pub(crate) async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            let mut closed = std::pin::pin!(closed);
            closed.as_mut().enable();
            if self.len() == 0 {
                return;
            }
            closed.await;
        }
    }

    /// Takes a place for a connection from `peer` with `clock`, evicting another when a cap
    /// is reached; `Ok(evicted)` says whether one was.
    fn admit(self: &Arc<Self>, peer: IpAddr, clock: &Arc<Clock>) -> Result<(Slot, bool), Refused> {
        let mut s = self.lock();
        let mut evicted = false;
        if s.per_peer.get(&peer).copied().unwrap_or(0) >= self.per_peer {
            let victim = self.victim(&s, Some(peer)).ok_or(Refused::PerPeerCap)?;
            Self::remove(&mut s, victim);
            evicted = true;
        } else if s.open.len() >= self.max {
            let victim = self.victim(&s, None).ok_or(Refused::Cap)?;
            Self::remove(&mut s, victim);
            evicted = true;
        }
        let id = s.next_id;
        s.next_id = s.next_id.wrapping_add(1);
        s.open.insert(id, (peer, clock.clone()));
        *s.per_peer.entry(peer).or_insert(0) += 1;
        Ok((
            Slot {
                conns: self.clone(),
                id,
            },
            evicted,
        ))
    }

    /// The connection to evict (of `peer` only, when given): the oldest idle one, else (with
    /// [`Evict::IdleOrWaiting`]) the oldest still waiting for a head; never one handling a
    /// request.
    fn victim(&self, s: &ConnsState, peer: Option<IpAddr>) -> Option<u64> {
        let mut best: Option<(u8, Instant, u64)> = None;
        for (id, (ip, clock)) in &s.open {
            if peer.is_some_and(|p| p != *ip) || clock.evicted.load(Ordering::Relaxed) {
                continue;
            }
            let c = clock.lock();
            let candidate = match (c.busy, c.head_started) {
                (0, None) => (0, c.idle_since),
                (0, Some(t)) if self.evict == Evict::IdleOrWaiting => (1, t),
                _ => continue,
            };
            drop(c);
            if best.is_none_or(|(rank, at, _)| (candidate.0, candidate.1) < (rank, at)) {
                best = Some((candidate.0, candidate.1, *id));
            }
        }
        best.map(|(_, _, id)| id)
    }

    /// Forgets `id` and tells its connection to close (its task ends on its own).
    fn remove(s: &mut ConnsState, id: u64) {
        if let Some((ip, clock)) = s.open.remove(&id) {
            Self::forget_peer(s, ip);
            clock.evicted.store(true, Ordering::Relaxed);
            clock.changed.notify_one();
        }
    }

    fn forget_peer(s: &mut ConnsState, ip: IpAddr) {
        if let Some(n) = s.per_peer.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_peer.remove(&ip);
            }
        }
    }
}

/// A connection's place in [`Conns`], given back when dropped (unless it was evicted, which
/// gave it back already).
pub(crate) struct Slot {
    conns: Arc<Conns>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.conns.lock();
        if let Some((ip, _)) = s.open.remove(&self.id) {
            Conns::forget_peer(&mut s, ip);
        }
        drop(s);
        self.conns.closed.notify_waiters();
    }
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
        let clock = Clock::new(l.limits);
        let slot = match l.connections.admit(peer.ip(), &clock) {
            Ok((slot, _evicted)) => slot,
            Err(why) => {
                // Every candidate is busy: close at once rather than let the kernel queue
                // grow unseen.
                if let Some(m) = &l.metrics {
                    m.connections_rejected.inc();
                }
                debug!(%peer, ?why, "connection limit reached; closing");
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let l = l.clone();
        // Every line of the connection, its reviews' included, carries `conn{peer}`.
        let span = info_span!("conn", %peer);
        tokio::spawn(
            async move {
                let _open = l.metrics.as_ref().map(OpenConnection::new);
                connection(tcp, peer, &l, clock, slot).await;
            }
            .instrument(span),
        );
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
    clock: Arc<Clock>,
    _slot: Slot,
) {
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
    clock.handshake_done();
    serve_h1(tls, clock, l).await;
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
        Expired::Evicted => {
            if let Some(m) = &l.metrics {
                m.connections_evicted.inc();
            }
            debug!("connection evicted to make room; closing");
            return;
        }
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
