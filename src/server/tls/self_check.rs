//! The TLS readiness probe: dial our own port and complete a handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use super::provider;

/// Why the probe found the TLS port not ready. Cloned out of the cache, so the I/O errors
/// are shared.
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum SelfCheckError {
    #[error("no TLS handshake with {addr} within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: Arc<std::io::Error>,
    },
    #[error("{0}")]
    ServerName(String),
    #[error("TLS handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: Arc<std::io::Error>,
    },
    #[error("{addr} accepted a client without a certificate although --client-ca is set")]
    AcceptedWithoutCertificate { addr: SocketAddr },
}

/// The readiness client has no client certificate: it notes that the server asked for one.
#[derive(Debug, Default)]
struct NoClientCert {
    asked: std::sync::atomic::AtomicBool,
}

impl ResolvesClientCert for NoClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, std::sync::atomic::Ordering::SeqCst);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

fn alert_of(e: &std::io::Error) -> Option<AlertDescription> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(a) => Some(*a),
        _ => None,
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
///
/// With `--client-ca` the probe has no certificate to present (it does not hold the CA's key),
/// so it checks what a caller without one meets: the server completes its side of the
/// handshake (its certificate and signature verified by the probe), asks for a client
/// certificate, and refuses the connection with `certificate_required`. Anything else, a
/// server that does not ask or serves without a certificate included, is not ready.
pub(crate) struct SelfCheck {
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    /// `Some` when the server requires client certificates.
    client_auth: Option<Arc<NoClientCert>>,
    cache: tokio::sync::Mutex<Option<(Instant, Result<String, SelfCheckError>)>>,
}

impl SelfCheck {
    const TTL: Duration = Duration::from_secs(2);
    const TIMEOUT: Duration = Duration::from_secs(2);

    /// `bound` is the TLS listener's address; an unspecified IP is dialled on loopback.
    pub(crate) fn new(bound: SocketAddr) -> anyhow::Result<Self> {
        let mut addr = bound;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let cfg = client_config(None)?;
        Ok(Self {
            addr,
            connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            client_auth: None,
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// The server requires client certificates (`--client-ca`): success is the refusal
    /// described on [`SelfCheck`].
    pub(crate) fn expecting_client_auth(mut self, required: bool) -> anyhow::Result<Self> {
        if !required {
            return Ok(self);
        }
        let resolver = Arc::new(NoClientCert::default());
        let mut cfg = client_config(Some(resolver.clone()))?;
        // Every probe is a full handshake: a resumed session would skip the request.
        cfg.resumption = rustls::client::Resumption::disabled();
        self.connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        self.client_auth = Some(resolver);
        Ok(self)
    }

    /// `Ok(detail)` when a handshake with our port succeeded (or, with client auth, was
    /// refused as it must be) within the last [`Self::TTL`].
    pub(crate) async fn check(&self) -> Result<String, SelfCheckError> {
        let mut cache = self.cache.lock().await;
        if let Some((at, result)) = cache.as_ref()
            && at.elapsed() < Self::TTL
        {
            return result.clone();
        }
        let result = match tokio::time::timeout(Self::TIMEOUT, self.dial()).await {
            Ok(r) => r,
            Err(_) => Err(SelfCheckError::Timeout {
                addr: self.addr,
                after: Self::TIMEOUT,
            }),
        };
        *cache = Some((Instant::now(), result.clone()));
        result
    }

    async fn dial(&self) -> Result<String, SelfCheckError> {
        let addr = self.addr;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| SelfCheckError::Connect {
                addr,
                source: Arc::new(e),
            })?;
        let name = ServerName::try_from("localhost")
            .map_err(|e| SelfCheckError::ServerName(e.to_string()))?;
        if let Some(auth) = &self.client_auth {
            auth.asked.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        let handshake = self.connector.connect(name, tcp).await;
        let Some(auth) = &self.client_auth else {
            let mut tls = handshake.map_err(|e| SelfCheckError::Handshake {
                addr,
                source: Arc::new(e),
            })?;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            return Ok(format!("handshake with {} succeeded", self.addr));
        };
        // TLS 1.3: the client's side completes, and the refusal arrives as an alert on the
        // first read. TLS 1.2: the handshake itself fails with the alert.
        let refusal = match handshake {
            Err(e) => e,
            Ok(mut tls) => {
                let mut byte = [0u8; 1];
                match tokio::io::AsyncReadExt::read(&mut tls, &mut byte).await {
                    Err(e) => e,
                    Ok(_) => return Err(SelfCheckError::AcceptedWithoutCertificate { addr }),
                }
            }
        };
        let asked = auth.asked.load(std::sync::atomic::Ordering::SeqCst);
        match alert_of(&refusal) {
            Some(AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure)
                if asked =>
            {
                Ok(format!(
                    "handshake with {} reached client authentication; a client without a \
                     certificate is refused, as --client-ca requires",
                    self.addr
                ))
            }
            _ => Err(SelfCheckError::Handshake {
                addr,
                source: Arc::new(refusal),
            }),
        }
    }
}

/// The probe's client: TLS 1.3 and 1.2, ALPN `http/1.1`, any server certificate (its
/// handshake signature still checked), and `resolver` when the server asks for a client
/// certificate.
fn client_config(resolver: Option<Arc<NoClientCert>>) -> anyhow::Result<rustls::ClientConfig> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("configuring the readiness TLS client")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)));
    let mut cfg = match resolver {
        Some(r) => builder.with_client_cert_resolver(r),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}
