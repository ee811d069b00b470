//! The load generator: a minimal HTTP/1.1 client on tokio-rustls (one pre-built request,
//! `Content-Length` responses), so that the client core spends as little as possible per
//! request. It runs on a current-thread tokio runtime pinned to its own core.
//!
//! - closed loop (`saturate`): each connection sends its next request as soon as the previous
//!   answer arrived; throughput at saturation.
//! - open loop (`fixed_rate`): each connection has its own schedule (wrk2's method) and the
//!   latency of a request is counted from the time it was *due*, so a server that falls behind
//!   is charged for the queue it causes (no coordinated omission). Sends are paced to the
//!   microsecond (sleep to 1 ms before, then yield until due), and how late sends were when the
//!   connection was free is recorded separately, to show the pacing is not the error.
//! - fresh connections (`fresh`): closed loop, but each request on a new TCP connection with a
//!   full TLS handshake (no resumption, like kube-apiserver's webhook client).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Where to send and how.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// TLS 1.3/1.2 with the default provider, verifying the server against the bench CA.
    pub connector: TlsConnector,
}

impl Target {
    pub fn new(addr: SocketAddr, ca_pem: &str) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Go's webhook client keeps no session cache: every new connection is a full handshake.
        cfg.resumption = rustls::client::Resumption::disabled();
        Self {
            addr,
            connector: TlsConnector::from(Arc::new(cfg)),
        }
    }
}

/// The HTTP/1.1 request kube-apiserver sends to a webhook (as Go's client writes it).
pub fn request_bytes(addr: SocketAddr, path: &str, body: &str) -> Arc<[u8]> {
    let head = format!(
        "POST {path}?timeout=5s HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-apiserver-admission\r\n\
         Content-Length: {}\r\nAccept: application/json, */*\r\nContent-Type: application/json\r\n\
         Accept-Encoding: gzip\r\n\r\n",
        body.len()
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes.into()
}

pub struct Conn {
    tls: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

/// A response: status and body (the body only when asked for).
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub close: bool,
}

impl Conn {
    pub async fn connect(target: &Target) -> io::Result<Conn> {
        let tcp = TcpStream::connect(target.addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost").expect("server name");
        let tls = target.connector.connect(name, tcp).await?;
        Ok(Conn {
            tls,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// (protocol version, cipher suite, key exchange group) of the session, for the report.
    pub fn describe(&self) -> String {
        let c = self.tls.get_ref().1;
        format!(
            "{:?}, {:?}, {:?}",
            c.protocol_version(),
            c.negotiated_cipher_suite().map(|s| s.suite()),
            c.negotiated_key_exchange_group().map(|g| g.name())
        )
    }

    /// Sends `req` and reads the answer; keeps the body only when `keep_body`.
    pub async fn round_trip(&mut self, req: &[u8], keep_body: bool) -> io::Result<Answer> {
        self.tls.write_all(req).await?;
        self.tls.flush().await?;
        self.buf.clear();
        let mut searched = 0;
        let head_end = loop {
            if let Some(p) = find_head_end(&self.buf, searched) {
                break p;
            }
            searched = self.buf.len().saturating_sub(3);
            self.fill().await?;
        };
        let head = &self.buf[..head_end];
        let status = std::str::from_utf8(head.get(9..12).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| bad("no HTTP status line"))?;
        let mut length = None;
        let mut close = false;
        for line in head.split(|b| *b == b'\n') {
            let line = std::str::from_utf8(line).unwrap_or_default().trim_end();
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.trim().eq_ignore_ascii_case("close");
                }
            }
        }
        let length = length.ok_or_else(|| bad("no Content-Length in the answer"))?;
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        let body = if keep_body {
            self.buf[head_end..head_end + length].to_vec()
        } else {
            Vec::new()
        };
        Ok(Answer {
            status,
            body,
            close,
        })
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        let n = self.tls.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        Ok(())
    }

    pub async fn close(mut self) {
        let _ = self.tls.shutdown().await;
    }
}

fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Latencies in nanoseconds, 3 significant digits, up to a minute.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram bounds")
}

/// What one run measured.
pub struct Run {
    /// Answered requests in the recorded window.
    pub ok: u64,
    /// Answered requests including the warm-up (for CPU per request).
    pub all: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub secs: f64,
    pub latency: Histogram<u64>,
    /// Open loop only: how late a send was although its connection was free.
    pub lateness: Histogram<u64>,
}

impl Run {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.secs
    }
}

struct PerConn {
    ok: u64,
    all: u64,
    errors: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
    lateness: Histogram<u64>,
}

impl PerConn {
    fn new() -> Self {
        Self {
            ok: 0,
            all: 0,
            errors: 0,
            first_error: None,
            latency: histogram(),
            lateness: histogram(),
        }
    }

    fn count(&mut self, answer: &io::Result<Answer>) {
        if matches!(answer, Ok(a) if a.status == 200) {
            self.all += 1;
        }
    }

    fn error(&mut self, e: impl ToString) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    fn record(&mut self, answer: io::Result<Answer>, latency: Duration) -> bool {
        match answer {
            Ok(a) if a.status == 200 => {
                self.ok += 1;
                let _ = self.latency.record(latency.as_nanos() as u64);
                !a.close
            }
            Ok(a) => {
                self.error(format!("HTTP {}", a.status));
                !a.close
            }
            Err(e) => {
                self.error(e);
                false
            }
        }
    }
}

fn merge(parts: Vec<PerConn>, secs: f64) -> Run {
    let mut run = Run {
        ok: 0,
        all: 0,
        errors: 0,
        first_error: None,
        secs,
        latency: histogram(),
        lateness: histogram(),
    };
    for p in parts {
        run.ok += p.ok;
        run.all += p.all;
        run.errors += p.errors;
        if run.first_error.is_none() {
            run.first_error = p.first_error;
        }
        let _ = run.latency.add(&p.latency);
        let _ = run.lateness.add(&p.lateness);
    }
    run
}

async fn open_all(target: &Target, n: usize) -> io::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::connect(target).await?);
    }
    Ok(conns)
}

/// Closed loop on `conns` keep-alive connections: `warmup` unrecorded, then `secs` recorded.
pub async fn saturate(
    target: &Target,
    req: Arc<[u8]>,
    conns: usize,
    warmup: Duration,
    secs: Duration,
) -> io::Result<Run> {
    let opened = open_all(target, conns).await?;
    let t0 = Instant::now();
    let (start, end) = (t0 + warmup, t0 + warmup + secs);
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|mut c| {
            let req = req.clone();
            tokio::spawn(async move {
                let mut m = PerConn::new();
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let answer = c.round_trip(&req, false).await;
                    let done = Instant::now();
                    m.count(&answer);
                    if sent < start {
                        if answer.is_err() {
                            m.error(answer.err().map_or_else(String::new, |e| e.to_string()));
                            break;
                        }
                        continue;
                    }
                    if done > end {
                        break;
                    }
                    if !m.record(answer, done - sent) {
                        break;
                    }
                }
                c.close().await;
                m
            })
        })
        .collect();
    let mut parts = Vec::new();
    for t in tasks {
        parts.push(t.await.expect("connection task"));
    }
    Ok(merge(parts, secs.as_secs_f64()))
}

/// Open loop at `rate` requests per second in total, spread over `conns` connections.
pub async fn fixed_rate(
    target: &Target,
    req: Arc<[u8]>,
    conns: usize,
    rate: f64,
    warmup: Duration,
    secs: Duration,
) -> io::Result<Run> {
    let opened = open_all(target, conns).await?;
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let t0 = Instant::now() + Duration::from_millis(5);
    let (start, end) = (t0 + warmup, t0 + warmup + secs);
    let tasks: Vec<_> = opened
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let req = req.clone();
            let first = t0 + interval.mul_f64(i as f64 / conns as f64);
            tokio::spawn(async move {
                let mut m = PerConn::new();
                let mut k: u32 = 0;
                loop {
                    let due = first + interval * k;
                    k += 1;
                    if due >= end {
                        break;
                    }
                    let now = Instant::now();
                    if now > end + secs {
                        // Bounded: a server far behind its schedule is reported overloaded.
                        m.error("overloaded: still sending at twice the run's length");
                        break;
                    }
                    let free_before_due = now < due;
                    if due > now + Duration::from_micros(1500) {
                        tokio::time::sleep_until((due - Duration::from_millis(1)).into()).await;
                    }
                    while Instant::now() < due {
                        tokio::task::yield_now().await;
                    }
                    let sent = Instant::now();
                    let answer = c.round_trip(&req, false).await;
                    let done = Instant::now();
                    m.count(&answer);
                    if due < start {
                        if let Err(e) = answer {
                            m.error(e);
                            break;
                        }
                        continue;
                    }
                    if free_before_due {
                        let _ = m.lateness.record((sent - due).as_nanos() as u64);
                    }
                    if !m.record(answer, done - due) {
                        break;
                    }
                }
                c.close().await;
                m
            })
        })
        .collect();
    let mut parts = Vec::new();
    for t in tasks {
        parts.push(t.await.expect("connection task"));
    }
    Ok(merge(parts, secs.as_secs_f64()))
}

/// Closed loop where every request opens a new connection (TCP + full TLS handshake).
pub async fn fresh(
    target: &Target,
    req: Arc<[u8]>,
    conns: usize,
    warmup: Duration,
    secs: Duration,
) -> io::Result<Run> {
    let t0 = Instant::now();
    let (start, end) = (t0 + warmup, t0 + warmup + secs);
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let req = req.clone();
            let target = target.clone();
            tokio::spawn(async move {
                let mut m = PerConn::new();
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let answer = match Conn::connect(&target).await {
                        Ok(mut c) => {
                            let a = c.round_trip(&req, false).await;
                            c.close().await;
                            a
                        }
                        Err(e) => Err(e),
                    };
                    let done = Instant::now();
                    m.count(&answer);
                    if sent < start || done > end {
                        continue;
                    }
                    m.record(answer, done - sent);
                }
                m
            })
        })
        .collect();
    let mut parts = Vec::new();
    for t in tasks {
        parts.push(t.await.expect("connection task"));
    }
    Ok(merge(parts, secs.as_secs_f64()))
}
