//! Serving certificates: loading and validating PEM files, the per-handshake resolver that
//! lets a rotated certificate apply to new handshakes without dropping connections, the
//! reload loop, and the readiness probe that really completes a handshake with our own port.
//! With `--client-ca`, also client authentication: a verifier (webpki) of the callers'
//! certificates that is swapped whole when the CA file changes, like the serving pair.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::files::{Snapshot, only_file, poll_loop};
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

/// TLS 1.2 and 1.3, ALPN `http/1.1` (plus `h2` first when `http2`); client certificates
/// required when `client_auth` is given, else not requested.
pub(crate) fn server_config(
    resolver: Arc<CertResolver>,
    http2: bool,
    client_auth: Option<&Arc<ClientAuth>>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("configuring TLS versions")?;
    let builder = match client_auth {
        Some(auth) => builder.with_client_cert_verifier(auth.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(resolver);
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
    shutdown: watch::Receiver<bool>,
) {
    let (cert_name, key_name) = (cert.display().to_string(), key.display().to_string());
    poll_loop(vec![cert, key], initial, interval, shutdown, |snapshot| {
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
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Client authentication (--client-ca)

/// Builds a webpki verifier of client certificates from a PEM bundle of CA certificates.
/// Errors name the file and the problem.
fn client_verifier(pem: &[u8], name: &str) -> Result<(Arc<dyn ClientCertVerifier>, usize), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{name}: not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{name}: no CERTIFICATE block found"));
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "{name}: none of its {ignored} certificates can be used as a CA"
        ));
    }
    if ignored > 0 {
        warn!(
            file = name,
            added,
            ignored,
            "some certificates of the client CA bundle cannot be used and are ignored"
        );
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("{name}: {e}"))?;
    Ok((verifier, added))
}

/// The `--client-ca` verifier: requires a client certificate that chains to one of the CAs of
/// the current bundle; [`ClientAuth::reload_loop`] swaps the bundle when the file changes, for
/// new handshakes (open connections stay). The `certificate_authorities` hint is left empty
/// so that a client whose certificate comes from a CA added by a rotation still sends it
/// (Go's TLS client holds back a certificate whose issuer is not among the hints).
#[derive(Debug)]
pub(crate) struct ClientAuth {
    path: PathBuf,
    current: ArcSwap<DynVerifier>,
    initial: Snapshot,
}

#[derive(Debug)]
struct DynVerifier(Arc<dyn ClientCertVerifier>);

impl ClientAuth {
    /// Reads and checks `--client-ca` at start; `None` without the flag.
    pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(path) = path else {
            return Ok(None);
        };
        let pem = std::fs::read(path)
            .with_context(|| format!("reading --client-ca {}", path.display()))?;
        let (verifier, cas) = client_verifier(&pem, &path.display().to_string())
            .map_err(|e| anyhow::anyhow!("client CA: {e}"))?;
        info!(client_ca = %path.display(), cas, "client certificates required on the webhook port");
        Ok(Some(Arc::new(Self {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(DynVerifier(verifier)),
            initial: vec![Ok(pem)],
        })))
    }

    /// Polls the file; a changed, valid bundle replaces the current one; a bad one is logged
    /// and the last good bundle stays.
    pub(crate) async fn reload_loop(
        self: Arc<Self>,
        interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) {
        let name = self.path.display().to_string();
        let (path, initial) = (self.path.clone(), self.initial.clone());
        poll_loop(vec![path], initial, interval, shutdown, |snapshot| {
            match only_file(snapshot).and_then(|pem| client_verifier(&pem, &name)) {
                Ok((verifier, cas)) => {
                    self.current.store(Arc::new(DynVerifier(verifier)));
                    info!(client_ca = %name, cas, "client CA reloaded; new handshakes verify against it");
                }
                Err(e) => {
                    error!(error = %e, "client CA file changed but cannot be used; keeping the last good client CA");
                }
            }
        })
        .await;
    }
}

impl ClientCertVerifier for ClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current
            .load()
            .0
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .0
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .0
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().0.supported_verify_schemes()
    }
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
    addr: std::net::SocketAddr,
    connector: tokio_rustls::TlsConnector,
    /// `Some` when the server requires client certificates.
    client_auth: Option<Arc<NoClientCert>>,
    cache: tokio::sync::Mutex<Option<(Instant, Result<String, String>)>>,
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
        let provider = provider();
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("configuring the readiness TLS client")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
            .with_client_cert_resolver(resolver.clone());
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Every probe is a full handshake: a resumed session would skip the request.
        cfg.resumption = rustls::client::Resumption::disabled();
        self.connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        self.client_auth = Some(resolver);
        Ok(self)
    }

    /// `Ok(detail)` when a handshake with our port succeeded (or, with client auth, was
    /// refused as it must be) within the last [`Self::TTL`].
    pub(crate) async fn check(&self) -> Result<String, String> {
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

    async fn dial(&self) -> Result<String, String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.addr))?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        if let Some(auth) = &self.client_auth {
            auth.asked.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        let handshake = self.connector.connect(name, tcp).await;
        let Some(auth) = &self.client_auth else {
            let mut tls =
                handshake.map_err(|e| format!("TLS handshake with {}: {e}", self.addr))?;
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
                    Ok(_) => {
                        return Err(format!(
                            "{} accepted a client without a certificate although --client-ca \
                             is set",
                            self.addr
                        ));
                    }
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
            _ => Err(format!("TLS handshake with {}: {refusal}", self.addr)),
        }
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
