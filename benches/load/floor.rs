//! The servers this bench starts itself (as `load floor-server ...` child processes):
//!
//! - `tls`: the TLS floor. The same stack and settings as `serve` (rustls with aws-lc-rs,
//!   TLS 1.3 and 1.2, ALPN `http/1.1`, `TCP_NODELAY`, tokio's multi-thread runtime, hyper's
//!   HTTP/1.1 server with keep-alive); it reads the body and answers a fixed `allowed` review.
//! - `parse`: the parse floor: the same, plus decoding the body into a `serde_json::Value`.
//! - `webhook-parent`: the real `serve()` of the library (not the binary) with a cluster view
//!   that knows the benchmark pod's parent JobSet, so the pod review mutates; everything else
//!   as `jobset-restart-webhook serve` (JSON logs, default filter, same runtime).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use jobset_restart_webhook::admission::ClusterView;
use jobset_restart_webhook::engine::{ClusterFacts, ParentJobSet};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

const ALLOWED: &[u8] = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"3b0f8a52-6a4b-4c1e-9b8e-0d6f3f7a2c11","allowed":true}}"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tls,
    Parse,
}

/// `floor-server MODE LISTEN CERT KEY`: serves until killed; prints `ready` once listening.
pub fn main(args: &[String]) {
    let [mode, listen, cert, key, ..] = args else {
        panic!("usage: floor-server tls|parse|webhook-parent LISTEN CERT KEY [ARGS...]");
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN is an address");
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if mode == "webhook-parent" {
        return webhook_with_parent(listen, Path::new(cert), Path::new(key), &args[4..]);
    }
    let mode = match mode.as_str() {
        "tls" => Mode::Tls,
        "parse" => Mode::Parse,
        other => panic!("unknown floor mode {other:?}"),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("reading the certificate")
        .collect::<Result<_, _>>()
        .expect("parsing the certificate");
    let key = PrivateKeyDer::from_pem_file(key).expect("reading the key");
    // As `server::tls::server_config`: aws-lc-rs, TLS 1.3 + 1.2, no client auth, ALPN h1.
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("certificate and key");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    // As `cli::serve::run`: tokio's default multi-thread runtime (one worker per CPU it may use).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        println!("ready");
        let _ = std::io::stdout().flush();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(None)
                    .keep_alive(true);
                let service = service_fn(move |req| answer(mode, req));
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
}

async fn answer(mode: Mode, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    };
    if mode == Mode::Parse && serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return Ok(status(StatusCode::BAD_REQUEST));
    }
    let mut r = Response::new(Full::new(Bytes::from_static(ALLOWED)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}

/// A cluster view that knows one parent JobSet (the pod body's) and nothing else.
struct KnownParent(ParentJobSet);

impl ClusterView for KnownParent {
    fn namespace_labels(&self, _: &str) -> Option<Arc<BTreeMap<String, String>>> {
        None
    }
    fn parent_jobset(&self, _: &str, name: &str) -> Option<ParentJobSet> {
        (name == "train-large").then(|| self.0.clone())
    }
    fn facts(&self) -> ClusterFacts {
        ClusterFacts::default()
    }
}

fn webhook_with_parent(listen: SocketAddr, cert: &Path, key: &Path, extra: &[String]) {
    use clap::Parser as _;
    use jobset_restart_webhook::server::{self, ServerArgs, ServerOptions};
    use jobset_restart_webhook::telemetry::{self, LogFormat};

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServerArgs,
    }
    let mut argv = vec![
        "serve".to_owned(),
        format!("--listen={listen}"),
        format!("--tls-cert={}", cert.display()),
        format!("--tls-key={}", key.display()),
        "--targets=jobsets,pods".to_owned(),
        "--log-format=json".to_owned(),
    ];
    argv.extend(extra.iter().cloned());
    let args = Cli::parse_from(argv).serve;
    // As `cli::serve::run`, minus the signal handling (the bench kills this process).
    telemetry::init_logging(args.log_format);
    debug_assert_eq!(args.log_format, LogFormat::Json);
    let parent =
        ParentJobSet::from_jobset_json(&crate::bodies::jobset("train-large", 8, 3).to_string())
            .expect("the benchmark JobSet is readable");
    let options = ServerOptions {
        cluster: Arc::new(KnownParent(parent)),
        ..ServerOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(server::serve(args, options, std::future::pending()))
        .expect("serve");
}
