//! Does each webhook's caBundle verify the serving certificate? By a TLS handshake for a
//! `url`, from the certificate Secret for a `service`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, RootCertStore};

use super::DIAL_TIMEOUT;
use super::report::WebhookEntry;
use super::webhook::{Endpoint, endpoint, one_path_segment, resources};
use crate::cluster::probe::{Finding, with_timeout};

pub(super) async fn verify_webhooks(
    client: &kube::Client,
    mwc: &MutatingWebhookConfiguration,
    tls_secret: &str,
) -> Vec<WebhookEntry> {
    // Webhooks usually share one endpoint and one caBundle: verify each pair once.
    let mut done: BTreeMap<(Endpoint, Vec<u8>), Finding> = BTreeMap::new();
    let mut out = Vec::new();
    for w in mwc.webhooks.iter().flatten() {
        let ep = endpoint(w);
        let bundle = w
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.clone())
            .unwrap_or_default();
        let key = (ep.clone(), bundle);
        let finding = match done.get(&key) {
            Some(f) => f.clone(),
            None => {
                let f = verify_endpoint(client, &key.0, &key.1, tls_secret).await;
                done.insert(key, f.clone());
                f
            }
        };
        out.push(WebhookEntry {
            name: w.name.clone(),
            resources: resources(w),
            endpoint: ep.to_string(),
            ca_bundle: finding,
        });
    }
    out
}

async fn verify_endpoint(
    client: &kube::Client,
    ep: &Endpoint,
    bundle: &[u8],
    tls_secret: &str,
) -> Finding {
    let (value, detail) = match ep {
        Endpoint::None => (
            Some(false),
            "the webhook has neither url nor service".to_owned(),
        ),
        Endpoint::Url(_) if bundle.is_empty() => (
            None,
            "no caBundle: the API server verifies the URL with its own trust roots, which \
             this check cannot see"
                .to_owned(),
        ),
        Endpoint::Service { .. } if bundle.is_empty() => (
            Some(false),
            "no caBundle: the API server cannot verify the webhook's certificate (is the \
             cert-manager CA injection or the self-signed overlay applied?)"
                .to_owned(),
        ),
        Endpoint::Url(url) => match dial(url, bundle).await {
            Ok(name) => (
                Some(true),
                format!(
                    "a TLS handshake trusting only the caBundle verified the certificate for {name}"
                ),
            ),
            Err(DialError::Verify(e)) => (
                Some(false),
                format!("the caBundle does not verify the certificate served there: {e}"),
            ),
            Err(DialError::Setup(e)) => (Some(false), e.to_string()),
            Err(DialError::Connect(e)) => (
                None,
                format!("cannot connect to {url} from here to verify it: {e}"),
            ),
        },
        Endpoint::Service {
            namespace, name, ..
        } => verify_service(client, namespace, name, bundle, tls_secret).await,
    };
    Finding { value, detail }
}

/// A `service` clientConfig is routable only inside the cluster: verify the certificate in
/// the Secret `tls_secret` (`NAME` in the Service's namespace, or `NAMESPACE/NAME`) instead.
async fn verify_service(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    bundle: &[u8],
    tls_secret: &str,
) -> (Option<bool>, String) {
    let (secret_ns, secret_name) = tls_secret
        .split_once('/')
        .unwrap_or((namespace, tls_secret));
    let dns = format!("{name}.{namespace}.svc");
    let why_outside = format!(
        "the API server reaches Service {namespace}/{name}, which is routable only inside the \
         cluster, so this check cannot dial it"
    );
    if !(one_path_segment(secret_ns) && one_path_segment(secret_name)) {
        return (
            None,
            format!("{why_outside}; --tls-secret {tls_secret:?} is not a valid name"),
        );
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), secret_ns);
    let secret = match with_timeout(secrets.get_opt(secret_name)).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return (
                None,
                format!(
                    "{why_outside}, and Secret {secret_ns}/{secret_name} (--tls-secret) does \
                     not exist"
                ),
            );
        }
        Err(e) => {
            return (
                None,
                format!(
                    "{why_outside}, and Secret {secret_ns}/{secret_name} (--tls-secret) could \
                     not be read: {e}"
                ),
            );
        }
    };
    let Some(chain) = tls_crt(&secret) else {
        return (
            None,
            format!("{why_outside}, and Secret {secret_ns}/{secret_name} has no tls.crt"),
        );
    };
    match verify_chain(bundle, chain, &dns) {
        Ok(()) => (
            Some(true),
            format!(
                "the caBundle verifies the certificate in Secret {secret_ns}/{secret_name} for \
                 {dns}"
            ),
        ),
        Err(e) => (
            Some(false),
            format!(
                "the caBundle does not verify the certificate in Secret \
                 {secret_ns}/{secret_name} for {dns}: {e}"
            ),
        ),
    }
}

/// `data["tls.crt"]` of a Secret (kube's typed Secret has decoded it).
fn tls_crt(secret: &Secret) -> Option<&[u8]> {
    Some(secret.data.as_ref()?.get("tls.crt")?.0.as_slice())
}

/// Why a caBundle or a certificate is unusable, or does not verify.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CaBundleError {
    #[error("the caBundle is not PEM certificates: {0}")]
    BundleNotPem(String),
    #[error("the caBundle holds an unusable certificate: {0}")]
    UnusableCertificate(String),
    #[error("the caBundle holds no PEM certificate")]
    EmptyBundle,
    /// rustls could not build a verifier or a client from the bundle.
    #[error("{0}")]
    Setup(String),
    #[error("the certificate is not PEM: {0}")]
    CertificateNotPem(String),
    #[error("the certificate file holds no certificate")]
    NoCertificate,
    #[error("{name:?}: {reason}")]
    BadServerName { name: String, reason: String },
    #[error("the webhook url {url:?} is not a URL: {reason}")]
    NotAUrl { url: String, reason: String },
    #[error("the webhook url {url:?} is not https")]
    NotHttps { url: String },
    #[error("the webhook url {url:?} has no host")]
    NoHost { url: String },
    /// webpki's verdict on the certificate.
    #[error(transparent)]
    Rejected(#[from] rustls::Error),
}

fn roots(bundle: &[u8]) -> Result<RootCertStore, CaBundleError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle) {
        let cert = cert.map_err(|e| CaBundleError::BundleNotPem(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| CaBundleError::UnusableCertificate(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(CaBundleError::EmptyBundle);
    }
    Ok(roots)
}

fn server_name(name: &str) -> Result<ServerName<'static>, CaBundleError> {
    ServerName::try_from(name.to_owned()).map_err(|e| CaBundleError::BadServerName {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// Verifies a PEM chain (leaf first) for `name` against the PEM `bundle`, as the API server
/// would (webpki, the current time).
pub fn verify_chain(bundle: &[u8], chain_pem: &[u8], name: &str) -> Result<(), CaBundleError> {
    let roots = roots(bundle)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| CaBundleError::Setup(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CaBundleError::CertificateNotPem(e.to_string()))?;
    let (leaf, intermediates) = chain.split_first().ok_or(CaBundleError::NoCertificate)?;
    let server_name = server_name(name)?;
    verifier.verify_server_cert(leaf, intermediates, &server_name, &[], UnixTime::now())?;
    Ok(())
}

/// How far a dial got.
#[derive(Debug, thiserror::Error)]
pub(super) enum DialError {
    /// The URL or the caBundle is unusable.
    #[error(transparent)]
    Setup(#[from] CaBundleError),
    /// Could not connect (or no handshake answer).
    #[error("{0}")]
    Connect(String),
    /// The handshake failed: the certificate does not verify.
    #[error("{0}")]
    Verify(String),
}

/// TLS-dials `url` trusting only `bundle`; returns the verified server name.
pub(super) async fn dial(url: &str, bundle: &[u8]) -> Result<String, DialError> {
    let uri: http::Uri =
        url.parse()
            .map_err(|e: http::uri::InvalidUri| CaBundleError::NotAUrl {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
    if uri.scheme_str() != Some("https") {
        return Err(CaBundleError::NotHttps {
            url: url.to_owned(),
        }
        .into());
    }
    let host = uri
        .host()
        .ok_or_else(|| CaBundleError::NoHost {
            url: url.to_owned(),
        })?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let roots = roots(bundle)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CaBundleError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = server_name(&host)?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| DialError::Connect(e.to_string()))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .map_err(|e| {
                match e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                {
                    Some(tls) => DialError::Verify(tls.to_string()),
                    None => DialError::Connect(e.to_string()),
                }
            })
    };
    match tokio::time::timeout(DIAL_TIMEOUT, connect).await {
        Ok(Ok(_)) => Ok(host),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(DialError::Connect(format!(
            "no TLS handshake within {}s",
            DIAL_TIMEOUT.as_secs()
        ))),
    }
}
