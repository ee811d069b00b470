//! Helpers of the hardening tests (tests/hostile/, tests/faults/, tests/client_auth.rs): test certificates,
//! raw exchanges that tolerate a closed connection, memory figures from /proc, a steady-rate
//! load client.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::webhook_process::*;

/// Every test runs under this bound, so a hang fails instead of stalling CI.
pub async fn bounded<F: Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs}s"));
}

/// `certs` output in a folder: CA, leaf, key.
pub struct Certs {
    pub dir: PathBuf,
    pub ca: Vec<u8>,
}

impl Certs {
    pub fn new(dir: &Path) -> Self {
        write_certs(dir);
        let ca = std::fs::read(dir.join("ca.crt")).unwrap();
        Self {
            dir: dir.to_owned(),
            ca,
        }
    }
    pub fn cert(&self) -> String {
        self.dir.join("tls.crt").display().to_string()
    }
    pub fn key(&self) -> String {
        self.dir.join("tls.key").display().to_string()
    }
    pub fn args(&self) -> [String; 4] {
        [
            "--tls-cert".into(),
            self.cert(),
            "--tls-key".into(),
            self.key(),
        ]
    }

    /// Starts `serve` on these certificates with `extra` flags after them.
    pub fn serve(&self, extra: &[&str]) -> Webhook {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Webhook::start(&[&args[..], extra].concat())
    }
}

/// Memory of a process, from /proc/<pid>/status, in KiB.
#[derive(Clone, Copy, Debug)]
pub struct Mem {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

impl std::fmt::Display for Mem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            self.rss_kib as f64 / 1024.0,
            self.hwm_kib as f64 / 1024.0
        )
    }
}

pub fn mem(pid: u32) -> Mem {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    Mem {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    }
}

/// What the server did with a raw exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// An HTTP/1.1 response: status and body (lossy UTF-8).
    Http(u16, String),
    /// The connection was closed (or reset) without a response head.
    Closed,
}

impl Reply {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Http(s, _) => Some(*s),
            Self::Closed => None,
        }
    }
}

/// Reads one response, or notices the close; `within` bounds the wait.
pub async fn read_reply<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> Reply {
    read_reply_close(s, within).await.0
}

/// [`read_reply`], plus whether the response said `Connection: close`.
pub async fn read_reply_close<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> (Reply, bool) {
    tokio::time::timeout(within, read_reply_inner(s))
        .await
        .unwrap_or_else(|_| panic!("neither a response nor a close within {within:?}"))
}

async fn read_reply_inner<S: AsyncRead + Unpin>(s: &mut S) -> (Reply, bool) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return (Reply::Closed, false),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response head: {head:?}"));
    let close = head.split("\r\n").any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close")
        })
    });
    let len: usize = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    (
        Reply::Http(status, String::from_utf8_lossy(&body).into_owned()),
        close,
    )
}

/// A TLS connection trusting only `ca_pem` (HTTP/1.1), or the reason it failed.
pub async fn try_tls(
    addr: std::net::SocketAddr,
    ca_pem: &[u8],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?,
            tcp,
        )
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))
}

/// Writes `bytes` (ignoring a write error: the server may close early) and reads the reply.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> Reply {
    let _ = s.write_all(bytes).await;
    let _ = s.flush().await;
    read_reply(s, Duration::from_secs(30)).await
}

/// A POST /mutate with `body`, as raw bytes.
pub fn post_bytes(body: &[u8]) -> Vec<u8> {
    [post_head(body.len()).as_bytes(), body].concat()
}

/// A deterministic pseudo-random byte source (xorshift), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// The result of a steady-rate load.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: usize,
    /// Requests that got `Connection: close` on a 200 (the client reconnects).
    pub closed_by_server: usize,
    /// One line per failed request.
    pub failures: Vec<String>,
    /// Latencies of successful requests, microseconds, sorted.
    pub latencies_us: Vec<u64>,
}

impl LoadReport {
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies_us.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        Duration::from_micros(self.latencies_us[i])
    }
    pub fn summary(&self) -> String {
        format!(
            "{} ok, {} failed, {} closed by the server, p50 {:?}, p99 {:?}, max {:?}",
            self.ok,
            self.failures.len(),
            self.closed_by_server,
            self.quantile(0.5),
            self.quantile(0.99),
            self.quantile(1.0)
        )
    }
}

/// Shared state of a running load.
#[derive(Default)]
pub struct LoadState {
    pub stop: AtomicBool,
    pub ok: AtomicUsize,
    pub closed_by_server: AtomicUsize,
    pub failures: Mutex<Vec<String>>,
    pub latencies_us: Mutex<Vec<u64>>,
    /// Sent requests, for progress checks.
    pub sent: AtomicU64,
}

impl LoadState {
    pub fn report(&self) -> LoadReport {
        let mut latencies_us = self.latencies_us.lock().unwrap().clone();
        latencies_us.sort_unstable();
        LoadReport {
            ok: self.ok.load(Ordering::Relaxed),
            closed_by_server: self.closed_by_server.load(Ordering::Relaxed),
            failures: self.failures.lock().unwrap().clone(),
            latencies_us,
        }
    }

    pub fn record(&self, result: Result<Duration, String>) {
        match result {
            Ok(d) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.latencies_us.lock().unwrap().push(d.as_micros() as u64);
            }
            Err(e) => self.failures.lock().unwrap().push(e),
        }
    }
}

/// Sends one request per `period` with `send` until `state.stop`, each awaited before the
/// next (a steady, open-loop-ish rate: a slow answer delays the next request rather than
/// piling up).
pub async fn steady<F, Fut>(state: Arc<LoadState>, period: Duration, mut send: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !state.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        state.sent.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let r = send().await;
        state.record(r.map(|()| start.elapsed()));
    }
}
