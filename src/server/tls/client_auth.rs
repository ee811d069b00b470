//! Client authentication (`--client-ca`): a verifier (webpki) of the callers' certificates
//! that is swapped whole when the CA file changes, like the serving pair.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::provider;
use crate::server::files::{FileError, Snapshot, only_file, poll_loop};

/// Why a client CA bundle cannot be used. Every text names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CaError {
    #[error("{file}: not a PEM certificate bundle: {source}")]
    NotABundle {
        file: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{file}: no CERTIFICATE block found")]
    NoCertificate { file: String },
    #[error("{file}: none of its {ignored} certificates can be used as a CA")]
    NoUsableCa { file: String, ignored: usize },
    #[error("{file}: {source}")]
    Verifier {
        file: String,
        source: rustls::server::VerifierBuilderError,
    },
    /// The reload loop could not read the file.
    #[error(transparent)]
    File(#[from] FileError),
}

/// Builds a webpki verifier of client certificates from a PEM bundle of CA certificates.
/// Errors name the file and the problem.
fn client_verifier(
    pem: &[u8],
    name: &str,
) -> Result<(Arc<dyn ClientCertVerifier>, usize), CaError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|source| CaError::NotABundle {
            file: name.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CaError::NoCertificate {
            file: name.to_owned(),
        });
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(CaError::NoUsableCa {
            file: name.to_owned(),
            ignored,
        });
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
        .map_err(|source| CaError::Verifier {
            file: name.to_owned(),
            source,
        })?;
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
            let verifier = only_file(snapshot)
                .map_err(CaError::from)
                .and_then(|pem| client_verifier(&pem, &name));
            match verifier {
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
