//! Serving certificates: loading and validating PEM files, the per-handshake resolver that
//! lets a rotated certificate apply to new handshakes without dropping connections, the
//! reload loop, and the readiness probe that really completes a handshake with our own port.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::files::{FileWatch, Snapshot};
use crate::telemetry::{Metrics, ResultLabels};

/// The crypto provider: aws-lc-rs, whatever the process default is.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// A validated certificate chain and key, plus what the logs and metrics say about it.
#[derive(Clone, Debug)]
pub(crate) struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub subject: String,
    pub names: Vec<String>,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

/// Parses and checks a PEM certificate chain and private key. Errors name the file (by the
/// given names) and the problem.
pub(crate) fn load_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<Loaded, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{cert_name}: not a PEM certificate chain: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{cert_name}: no CERTIFICATE block found"));
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("{cert_name}: the first certificate cannot be parsed: {e}"))?;
    let subject = parsed.subject().to_string();
    let not_after = parsed.validity().not_after.timestamp();
    let names = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .map(|n| n.to_string())
                .collect()
        })
        .unwrap_or_default();
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("{key_name}: not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"))?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("{key_name} is not the private key of the certificate in {cert_name}")
        }
        other => format!("{key_name}: unusable private key: {other}"),
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        subject,
        names,
        not_after,
    })
}

/// Reads and checks the pair at start; errors name the file and the problem.
pub(crate) fn load_files(cert: &Path, key: &Path) -> anyhow::Result<(Loaded, Snapshot)> {
    let cert_pem =
        std::fs::read(cert).with_context(|| format!("reading --tls-cert {}", cert.display()))?;
    let key_pem =
        std::fs::read(key).with_context(|| format!("reading --tls-key {}", key.display()))?;
    let loaded = load_pem(
        &cert_pem,
        &key_pem,
        &cert.display().to_string(),
        &key.display().to_string(),
    )
    .map_err(|e| anyhow::anyhow!("TLS credentials: {e}"))?;
    Ok((loaded, vec![Ok(cert_pem), Ok(key_pem)]))
}

/// Logs (warns) when the certificate is outside its validity window.
pub(crate) fn check_validity(loaded: &Loaded, source: &str) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if loaded.not_after <= now {
        error!(source, subject = %loaded.subject, not_after = loaded.not_after, "the serving certificate has expired; the API server will refuse it");
    } else if loaded.not_after - now < 7 * 86_400 {
        warn!(source, subject = %loaded.subject, days_left = (loaded.not_after - now) / 86_400, "the serving certificate expires within 7 days");
    }
}

/// Answers every handshake with the current certificate; `set` swaps it atomically.
/// The rustls equivalent of Go's `tls.Config.GetCertificate`.
#[derive(Debug)]
pub(crate) struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    pub(crate) fn new(key: Arc<CertifiedKey>) -> Self {
        Self {
            current: ArcSwap::new(key),
        }
    }

    pub(crate) fn set(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// TLS 1.2 and 1.3, ALPN `http/1.1` (plus `h2` first when `http2`), no client auth.
pub(crate) fn server_config(
    resolver: Arc<CertResolver>,
    http2: bool,
) -> anyhow::Result<Arc<ServerConfig>> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("configuring TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(cfg))
}

/// Polls the certificate and key files; a changed, valid pair replaces the current one for
/// new handshakes; a bad pair is logged and counted once and the last good pair stays.
pub(crate) async fn reload_loop(
    cert: PathBuf,
    key: PathBuf,
    initial: Snapshot,
    resolver: Arc<CertResolver>,
    metrics: Arc<Metrics>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut watch = FileWatch::new(vec![cert.clone(), key.clone()], Some(initial));
    let (cert_name, key_name) = (cert.display().to_string(), key.display().to_string());
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let Some(snapshot) = watch.poll().await else {
            continue;
        };
        let result = match (snapshot.first(), snapshot.get(1)) {
            (Some(Ok(c)), Some(Ok(k))) => load_pem(c, k, &cert_name, &key_name),
            (Some(Err(e)), _) | (_, Some(Err(e))) => Err(e.clone()),
            _ => Err("internal: missing snapshot entries".to_owned()),
        };
        match result {
            Ok(loaded) => {
                check_validity(&loaded, &cert_name);
                resolver.set(loaded.key.clone());
                metrics.cert_not_after.set(loaded.not_after);
                metrics
                    .cert_reloads
                    .get_or_create(&ResultLabels { result: "success" })
                    .inc();
                info!(
                    cert = %cert_name,
                    subject = %loaded.subject,
                    names = %loaded.names.join(","),
                    not_after = loaded.not_after,
                    "serving certificate reloaded; new handshakes use it"
                );
            }
            Err(e) => {
                metrics
                    .cert_reloads
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
                error!(error = %e, "serving certificate files changed but cannot be used; keeping the last good certificate");
            }
        }
    }
}

/// Accepts any certificate but still checks the handshake signatures, so a success means our
/// listener completed a real handshake with a key that matches the certificate it sent.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// controller-runtime's StartedChecker in Rust: dial our own TLS port and complete a
/// handshake. The result is cached for [`SelfCheck::TTL`] so that probes stay cheap.
pub(crate) struct SelfCheck {
    addr: std::net::SocketAddr,
    connector: tokio_rustls::TlsConnector,
    cache: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl SelfCheck {
    const TTL: Duration = Duration::from_secs(2);
    const TIMEOUT: Duration = Duration::from_secs(2);

    /// `bound` is the TLS listener's address; an unspecified IP is dialled on loopback.
    pub(crate) fn new(bound: std::net::SocketAddr) -> anyhow::Result<Self> {
        let mut addr = bound;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let provider = provider();
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("configuring the readiness TLS client")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            addr,
            connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            cache: tokio::sync::Mutex::new(None),
        })
    }

    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `Ok(())` when a handshake with our port succeeded within the last [`Self::TTL`].
    pub(crate) async fn check(&self) -> Result<(), String> {
        let mut cache = self.cache.lock().await;
        if let Some((at, result)) = cache.as_ref()
            && at.elapsed() < Self::TTL
        {
            return result.clone();
        }
        let result = match tokio::time::timeout(Self::TIMEOUT, self.dial()).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no TLS handshake with {} within {:?}",
                self.addr,
                Self::TIMEOUT
            )),
        };
        *cache = Some((Instant::now(), result.clone()));
        result
    }

    async fn dial(&self) -> Result<(), String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.addr))?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let mut tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {}: {e}", self.addr))?;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> crate::certs::Generated {
        crate::certs::generate(&["localhost".to_owned()], 1).expect("generate")
    }

    #[test]
    fn loads_a_generated_pair() {
        let g = pair();
        let l = load_pem(g.cert_pem.as_bytes(), g.key_pem.as_bytes(), "c", "k").expect("load");
        assert!(l.subject.contains("localhost"));
        assert_eq!(l.names, ["DNSName(localhost)"]);
        assert!(l.not_after > time::OffsetDateTime::now_utc().unix_timestamp());
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let g = pair();
        let other = pair();
        let e = load_pem(b"garbage", g.key_pem.as_bytes(), "tls.crt", "tls.key").unwrap_err();
        assert_eq!(e, "tls.crt: no CERTIFICATE block found");
        let e = load_pem(g.cert_pem.as_bytes(), b"", "tls.crt", "tls.key").unwrap_err();
        assert!(e.starts_with("tls.key: not a PEM private key"), "{e}");
        let e = load_pem(
            g.cert_pem.as_bytes(),
            other.key_pem.as_bytes(),
            "tls.crt",
            "tls.key",
        )
        .unwrap_err();
        assert_eq!(
            e,
            "tls.key is not the private key of the certificate in tls.crt"
        );
        let broken = g.cert_pem.replace("MII", "xyz");
        let e = load_pem(
            broken.as_bytes(),
            g.key_pem.as_bytes(),
            "tls.crt",
            "tls.key",
        )
        .unwrap_err();
        assert!(e.starts_with("tls.crt: "), "{e}");
    }
}
