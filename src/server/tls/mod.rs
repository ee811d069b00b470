//! Serving certificates: loading and validating PEM files, the per-handshake resolver that
//! lets a rotated certificate apply to new handshakes without dropping connections, the
//! reload loop; with `--client-ca`, client authentication ([`client_auth`]); and the
//! readiness probe that really completes a handshake with our own port ([`self_check`]).

mod client_auth;
mod self_check;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::files::{FileError, Snapshot, poll_loop};
use crate::telemetry::{Metrics, ResultLabels};

pub(crate) use client_auth::ClientAuth;
pub(crate) use self_check::SelfCheck;

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
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// The leaf's DNS names and IP addresses (subjectAltName), for the served-name check.
    pub dns_names: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
}

/// Why a certificate chain and key cannot be used. Every text names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PemError {
    #[error("{file}: not a PEM certificate chain: {source}")]
    NotAChain {
        file: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{file}: no CERTIFICATE block found")]
    NoCertificate { file: String },
    #[error("{file}: the first certificate cannot be parsed: {source}")]
    Unparsable {
        file: String,
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    #[error("{file}: not a PEM private key (PKCS#8, PKCS#1 or SEC1): {source}")]
    NotAKey {
        file: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{key} is not the private key of the certificate in {cert}")]
    KeyMismatch { key: String, cert: String },
    #[error("{file}: unusable private key: {source}")]
    UnusableKey { file: String, source: rustls::Error },
    /// The reload loop could not read a file.
    #[error(transparent)]
    File(#[from] FileError),
}

/// Parses and checks a PEM certificate chain and private key. Errors name the file (by the
/// given names) and the problem.
pub(crate) fn load_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<Loaded, PemError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|source| PemError::NotAChain {
            file: cert_name.to_owned(),
            source,
        })?;
    let Some(leaf) = chain.first() else {
        return Err(PemError::NoCertificate {
            file: cert_name.to_owned(),
        });
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|source| {
        PemError::Unparsable {
            file: cert_name.to_owned(),
            source,
        }
    })?;
    let subject = parsed.subject().to_string();
    let not_after = parsed.validity().not_after.timestamp();
    let not_before = parsed.validity().not_before.timestamp();
    let general: Vec<&x509_parser::extensions::GeneralName> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| ext.value.general_names.iter().collect())
        .unwrap_or_default();
    let names = general.iter().map(|n| n.to_string()).collect();
    let dns_names = general
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    let ips = general
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| PemError::NotAKey {
        file: key_name.to_owned(),
        source,
    })?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => PemError::KeyMismatch {
            key: key_name.to_owned(),
            cert: cert_name.to_owned(),
        },
        source => PemError::UnusableKey {
            file: key_name.to_owned(),
            source,
        },
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        subject,
        names,
        not_after,
        not_before,
        dns_names,
        ips,
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
    current: ArcSwap<Loaded>,
}

/// Why the certificate being served is not one the API server would accept (`/readyz`'s
/// `certificate` line).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CertError {
    #[error(
        "the serving certificate ({subject}) expired at {not_after} (Unix seconds); the API server refuses it"
    )]
    Expired { subject: String, not_after: i64 },
    #[error(
        "the serving certificate ({subject}) is not valid before {not_before} (Unix seconds; now {now})"
    )]
    NotYetValid {
        subject: String,
        not_before: i64,
        now: i64,
    },
    #[error("the serving certificate ({subject}) does not match its private key")]
    KeyMismatch { subject: String },
    #[error(
        "the serving certificate ({subject}) does not cover --tls-server-name {name} (it names {names})"
    )]
    NameMismatch {
        subject: String,
        name: String,
        names: String,
    },
}

impl CertResolver {
    pub(crate) fn new(loaded: &Loaded) -> Self {
        Self {
            current: ArcSwap::from_pointee(loaded.clone()),
        }
    }

    pub(crate) fn set(&self, loaded: &Loaded) {
        self.current.store(Arc::new(loaded.clone()));
    }

    /// The certificate being served is valid at `now` (Unix seconds), matches its key, and
    /// covers `server_name` (the name the API server dials) when one is given. A file
    /// reload refuses a pair whose key does not match, so that check guards only against a
    /// regression; expiry is what happens when rotation stops.
    pub(crate) fn check(&self, now: i64, server_name: Option<&str>) -> Result<String, CertError> {
        let c = self.current.load();
        let subject = c.subject.clone();
        if now >= c.not_after {
            return Err(CertError::Expired {
                subject,
                not_after: c.not_after,
            });
        }
        if now < c.not_before {
            return Err(CertError::NotYetValid {
                subject,
                not_before: c.not_before,
                now,
            });
        }
        // `Unknown`: the key cannot tell its public half; the pair was checked at load.
        if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
            c.key.keys_match()
        {
            return Err(CertError::KeyMismatch { subject });
        }
        if let Some(name) = server_name
            && !covers(&c, name)
        {
            return Err(CertError::NameMismatch {
                subject,
                name: name.to_owned(),
                names: c.names.join(", "),
            });
        }
        let days = (c.not_after - now) / 86_400;
        Ok(match server_name {
            Some(name) => format!("{subject}, covers {name}, valid for {days} more days"),
            None => format!("{subject}, valid for {days} more days"),
        })
    }
}

/// The leaf names `name`: an IP address among its IP SANs, or a DNS name equal to one of its
/// DNS SANs or matched by a wildcard SAN in the left-most label (RFC 6125 6.4.3, as Go's
/// `crypto/x509` matches: `*.example.com` covers `a.example.com`, not `a.b.example.com`).
fn covers(leaf: &Loaded, name: &str) -> bool {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return leaf.ips.contains(&ip);
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    leaf.dns_names.iter().any(|san| {
        let san = san.trim_end_matches('.');
        match san.strip_prefix("*.") {
            Some(parent) => name
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == parent),
            None => san == name,
        }
    })
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

/// The oldest TLS version the webhook port accepts (`--tls-min-version`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TlsMinVersion {
    /// TLS 1.2 and 1.3 (for clients without 1.3).
    #[value(name = "1.2")]
    V1_2,
    /// TLS 1.3 only: every supported kube-apiserver speaks it (Go has since 1.12).
    #[default]
    #[value(name = "1.3")]
    V1_3,
}

/// TLS from `min` up to 1.3, ALPN `http/1.1` only (kube-apiserver calls service webhooks
/// over HTTP/1.1; docs/security.md "Limits"); client certificates required when `client_auth` is
/// given, else not requested.
pub(crate) fn server_config(
    resolver: Arc<CertResolver>,
    min: TlsMinVersion,
    client_auth: Option<&Arc<ClientAuth>>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min {
        TlsMinVersion::V1_3 => &[&rustls::version::TLS13],
        TlsMinVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .context("configuring TLS versions")?;
    let builder = match client_auth {
        Some(auth) => builder.with_client_cert_verifier(auth.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
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
            (Some(Err(e)), _) | (_, Some(Err(e))) => Err(e.clone().into()),
            _ => Err(FileError::MissingEntries.into()),
        };
        match result {
            Ok(loaded) => {
                check_validity(&loaded, &cert_name);
                resolver.set(&loaded);
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

#[cfg(test)]
mod tests;
