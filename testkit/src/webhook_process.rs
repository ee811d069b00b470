//! Runs the real `jobset-restart-webhook` binary for integration tests: `certs` into a temp
//! dir, `serve` on 127.0.0.1 port 0 (ports learned from the JSON "listening" log line), a
//! guard that kills the process on drop, HTTPS clients that trust only the test CA, a raw TLS
//! client for byte-level tests, and a Prometheus text reader.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The webhook binary, for `Command::new(BIN)`: see [`crate::webhook_bin`].
#[derive(Clone, Copy, Debug)]
pub struct Bin;

pub const BIN: Bin = Bin;

impl AsRef<std::ffi::OsStr> for Bin {
    fn as_ref(&self) -> &std::ffi::OsStr {
        crate::webhook_bin().as_os_str()
    }
}

/// Runs `certs --out-dir dir`; returns the stdout (the base64 CA bundle, trimmed).
pub fn write_certs(dir: &Path) -> String {
    let out = Command::new(BIN)
        .args(["certs", "--out-dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run certs");
    assert!(
        out.status.success(),
        "certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 stdout")
        .trim()
        .to_owned()
}

/// A running `serve`, killed on drop.
pub struct Webhook {
    child: Option<Child>,
    pub tls: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Webhook {
    /// Starts `serve` with `args` added to the test defaults (JSON logs, port 0 on loopback).
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, None)
    }

    /// [`Webhook::start`] with the cluster side on, reading `kubeconfig` (and nothing of the
    /// developer's: no `~/.kube/config`, no in-cluster variables).
    pub fn start_with_kubeconfig(kubeconfig: &Path, args: &[&str]) -> Self {
        Self::start_with(args, Some(kubeconfig))
    }

    fn start_with(args: &[&str], kubeconfig: Option<&Path>) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "serve",
            "--log-format",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ]);
        match kubeconfig {
            Some(path) => {
                cmd.env("KUBECONFIG", path)
                    .env_remove("KUBERNETES_SERVICE_HOST")
                    .env_remove("KUBERNETES_SERVICE_PORT");
            }
            // Hermetic: never the developer's kubeconfig (the cluster features have their
            // own tests on the real control plane, tests/e2e).
            None => {
                cmd.arg("--no-cluster");
            }
        }
        let mut child = cmd
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "listening"
                {
                    let _ = tx.send(v);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut w = Self {
            child: Some(child),
            tls: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            logs,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(v) => {
                    w.tls = v["tls_addr"].as_str().unwrap().parse().unwrap();
                    w.admin = v["admin_addr"].as_str().unwrap().parse().unwrap();
                    return w;
                }
                Err(_) => {
                    if let Some(status) = w.child.as_mut().unwrap().try_wait().unwrap() {
                        panic!(
                            "serve exited with {status} before listening:\n{}",
                            w.logs_text()
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "serve did not log `listening` within 30s:\n{}",
                        w.logs_text()
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit (bounded); `None` when it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn logs_text(&self) -> String {
        self.logs().join("\n")
    }

    /// Waits (bounded) until some log line contains every one of `needles`.
    pub fn wait_log(&self, needles: &[&str], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self
                .logs()
                .iter()
                .any(|l| needles.iter().all(|n| l.contains(n)))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needles:?} within {within:?}:\n{}",
                self.logs_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Log lines (parsed) whose message is `message`.
    pub fn log_events(&self, message: &str) -> Vec<Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.tls.port())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// An HTTP/1.1 client that trusts only `ca_pems` and resolves `localhost` to the server.
    pub fn client(&self, ca_pems: &[&[u8]]) -> reqwest::Client {
        self.client_builder(ca_pems).build().expect("client")
    }

    pub fn client_builder(&self, ca_pems: &[&[u8]]) -> reqwest::ClientBuilder {
        let certs = ca_pems
            .iter()
            .map(|p| reqwest::Certificate::from_pem(p).expect("ca pem"));
        reqwest::Client::builder()
            .tls_certs_only(certs)
            .http1_only()
            .no_proxy()
            .resolve("localhost", self.tls)
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(5))
    }

    /// The admin port's plain-HTTP client.
    pub fn admin_client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("admin client")
    }

    pub async fn metrics(&self) -> String {
        let r = Self::admin_client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(r.status(), 200);
        r.text().await.expect("metrics body")
    }

    /// One series' value, e.g. `metric(&text, "x_total{code=\"400\"}")`; 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics().await, series)
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("metric value"))
        .unwrap_or(0.0)
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `bytes` to `path` by rename, as Kubernetes volume updates and `certs` do.
pub fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp: PathBuf = path.with_extension("tmp-replace");
    std::fs::write(&tmp, bytes).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename");
}

// ---------------------------------------------------------------------------------------
// Raw TLS

/// A TLS connection that trusts only `ca_pem`, offering `alpn`.
pub async fn raw_tls(addr: SocketAddr, ca_pem: &[u8], alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem).expect("ca"))
        .expect("root");
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response with a Content-Length body.
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> RawResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.expect("read head");
        assert!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().expect("content-length"))
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "connection closed inside the body");
        body.extend_from_slice(&chunk[..n]);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

/// The head of a POST /mutate with a JSON body of `len` bytes.
pub fn post_head(len: usize) -> String {
    format!(
        "POST /mutate?timeout=10s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// Sends a whole POST /mutate on `s` and reads the answer.
pub async fn raw_post<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    body: &[u8],
) -> RawResponse {
    s.write_all(post_head(body.len()).as_bytes())
        .await
        .expect("write head");
    s.write_all(body).await.expect("write body");
    s.flush().await.expect("flush");
    read_response(s).await
}
