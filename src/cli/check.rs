//! `check`: can in-place restart work on the cluster in the current kubeconfig, as the
//! webhook is registered there? (SPEC §6, §7)
//!
//! It asks the API server itself (the same probes `serve` runs: `/version`, dry-run Pods,
//! the JobSet CRD's schema), lists the nodes (which of them declare
//! `RestartAllContainersOnContainerExits`), reads our MutatingWebhookConfiguration, and checks that each
//! webhook's `caBundle` verifies the serving certificate: for a `url` clientConfig by a TLS
//! handshake that trusts only the caBundle; for a `service` clientConfig (routable only
//! inside the cluster) from the Secret holding the certificate.
//!
//! Exit status: 0 when in-place restart can work as configured; 1 when it cannot (one line
//! per problem says why); 2 when the cluster could not be checked at all.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, RootCertStore};
use serde::Serialize;
use serde_json::{Value, json};

use crate::cluster::node::{self, SlimNode};
use crate::cluster::probe::{self, Capabilities, Failure, Finding};
use crate::engine::Targets;
use crate::engine::nodes::FEATURE;
use crate::policy;

/// The name the shipped manifests register the webhook under.
pub const DEFAULT_WEBHOOK_CONFIGURATION: &str = "00-jobset-restart-webhook";
/// The Secret holding the serving certificate in the shipped manifests.
pub const DEFAULT_TLS_SECRET: &str = "jobset-restart-webhook-tls";

const EXIT_PROBLEMS: u8 = 1;
const EXIT_UNCHECKED: u8 = 2;
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// kubeconfig context (default: the current context; KUBECONFIG is honoured).
    #[arg(long)]
    pub context: Option<String>,
    /// Namespace for the dry-run probe Pods (nothing is stored). Default: the context's
    /// namespace, else `default`.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Name of the MutatingWebhookConfiguration to check.
    #[arg(long, default_value = DEFAULT_WEBHOOK_CONFIGURATION)]
    pub webhook_configuration: String,
    /// Secret (`NAME` in the webhook Service's namespace, or `NAMESPACE/NAME`) whose
    /// `tls.crt` is the serving certificate; used to verify `service` clientConfigs.
    #[arg(long, default_value = DEFAULT_TLS_SECRET)]
    pub tls_secret: String,
    /// The targets `serve` runs with (`jobsets`, `pods` or `jobsets,pods`). Default: what
    /// the webhook configuration sends to the webhook.
    #[arg(long, value_parser = parse_targets)]
    pub targets: Option<Targets>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

fn parse_targets(s: &str) -> Result<Targets, String> {
    Targets::parse(s.split(','))
}

/// The whole report, as `-o json` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub cluster: String,
    pub probe_namespace: String,
    pub capabilities: Capabilities,
    pub nodes: NodesReport,
    pub webhook_configuration: WebhookReport,
    /// The admission-policy alternative (`policy`), by its objects' names.
    pub admission_policy: PolicyReport,
    /// The targets the verdict assumes, and where they come from.
    pub targets: String,
    pub targets_source: String,
    /// Why in-place restart cannot work as configured (non-empty: exit 1).
    pub problems: Vec<String>,
    /// Worth knowing, but in-place restart can work.
    pub warnings: Vec<String>,
    pub ok: bool,
}

/// The nodes, and whether they can run `RestartAllContainers` pods.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodesReport {
    /// Every schedulable node declares `RestartAllContainersOnContainerExits`; `None` when
    /// the nodes could not be listed or none is schedulable.
    pub restart_all_containers: Finding,
    /// `None` when the nodes could not be listed.
    pub total: Option<usize>,
    pub schedulable: Option<usize>,
    pub declaring: Option<usize>,
}

impl NodesReport {
    /// From a node list (or why there is none).
    pub fn from_list(result: Result<Vec<SlimNode>, Failure>) -> Self {
        let nodes = match result {
            Ok(n) => n,
            Err(e) => {
                let hint = match &e {
                    Failure::Api { code: 403, .. } => {
                        " (listing nodes needs the list verb on nodes, as in the webhook's \
                         ClusterRole)"
                    }
                    _ => "",
                };
                return Self {
                    restart_all_containers: Finding {
                        value: None,
                        detail: format!("could not list the nodes: {e}{hint}"),
                    },
                    ..Self::default()
                };
            }
        };
        let summary =
            crate::engine::Nodes::new(nodes.into_iter().map(|n| Arc::new(n.info)).collect());
        let (total, schedulable, declaring) =
            (summary.total(), summary.schedulable(), summary.declaring());
        let cordoned = match total - schedulable {
            0 => String::new(),
            n => format!(" ({n} cordoned not counted)"),
        };
        let restart_all_containers = if schedulable == 0 {
            let what = if total == 0 {
                "no nodes".to_owned()
            } else {
                format!("{total} nodes, none schedulable{cordoned}")
            };
            Finding {
                value: None,
                detail: format!(
                    "{what}: which kubelets will run the pods is unknown, so the API server's \
                     answer decides the default action"
                ),
            }
        } else {
            Finding {
                value: Some(declaring == schedulable),
                detail: format!(
                    "{declaring} of {schedulable} schedulable nodes declare {FEATURE}{cordoned}"
                ),
            }
        };
        Self {
            restart_all_containers,
            total: Some(total),
            schedulable: Some(schedulable),
            declaring: Some(declaring),
        }
    }

    /// Warnings about the nodes (never problems: `Restart` needs nothing from them).
    pub fn warnings(&self, caps: &Capabilities) -> Vec<String> {
        if caps.restart_policy_rules.value == Some(false)
            || caps.restart_all_containers.value == Some(false)
        {
            // The API server already rules RestartAllContainers out.
            return Vec::new();
        }
        let (Some(schedulable), Some(declaring)) = (self.schedulable, self.declaring) else {
            return vec![self.restart_all_containers.detail.clone()];
        };
        if schedulable == 0 {
            vec![format!(
                "no schedulable nodes: {}",
                self.restart_all_containers.detail
            )]
        } else if declaring == 0 {
            vec![format!(
                "no schedulable node declares {FEATURE} (kubelets older than 1.35, or the gate \
                 is off on them): the webhook defaults to Restart and denies JobSets that ask \
                 for RestartAllContainers"
            )]
        } else if declaring < schedulable {
            vec![format!(
                "only {declaring} of {schedulable} schedulable nodes declare {FEATURE}: the \
                 webhook defaults to Restart, except for pod templates whose nodeSelector picks \
                 only nodes that declare it; JobSets that ask for RestartAllContainers run on \
                 those nodes only"
            )]
        } else {
            Vec::new()
        }
    }
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookReport {
    pub name: String,
    pub registered: Finding,
    pub webhooks: Vec<WebhookEntry>,
}

/// Whether the objects `policy` prints are in the cluster.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    /// `true`: all four; `false`: none, or only some (the detail names the missing ones).
    pub installed: Finding,
    /// Some but not all of the four are there.
    pub partial: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEntry {
    pub name: String,
    /// `jobsets`, `pods`: what its rules send.
    pub resources: Vec<String>,
    /// `url https://…` or `service NAMESPACE/NAME:PORT/PATH`.
    pub endpoint: String,
    /// Does the caBundle verify the serving certificate? `None`: could not tell.
    pub ca_bundle: Finding,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(check(args))
}

async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.context {
        Some(context) => kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions {
            context: Some(context.clone()),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string()),
        None => kube::Config::infer().await.map_err(|e| e.to_string()),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => return Ok(unchecked(&format!("cannot load a kubeconfig: {e}"))),
    };
    let cluster = config.cluster_url.to_string();
    let default_namespace = config.default_namespace.clone();
    let client = match kube::Client::try_from(config) {
        Ok(c) => c,
        Err(e) => {
            return Ok(unchecked(&format!(
                "cannot build a client for {cluster}: {e}"
            )));
        }
    };
    if let Err(e) = probe::get(&client, "/version").await {
        return Ok(unchecked(&format!(
            "cannot reach the API server at {cluster}: {e}"
        )));
    }
    let namespace = args.namespace.clone().unwrap_or(default_namespace);
    let capabilities = probe::probe(&client, &namespace).await;
    let nodes = NodesReport::from_list(node::list(&client).await);
    let (webhook, mwc) = read_webhook(&client, &args.webhook_configuration).await;
    let admission_policy = read_policy(&client).await;
    let mut webhook = webhook;
    if let Some(mwc) = &mwc {
        webhook.webhooks = verify_webhooks(&client, mwc, &args.tls_secret).await;
    }
    let (targets, targets_source) = match (args.targets, routed_targets(mwc.as_ref())) {
        (Some(t), _) => (t, "--targets".to_owned()),
        (None, Some(t)) => (t, format!("the rules of {}", args.webhook_configuration)),
        (None, None) => (
            Targets::default(),
            "the default (no webhook configuration)".to_owned(),
        ),
    };
    let (problems, mut warnings) = assess(&capabilities, &webhook, &admission_policy, targets);
    warnings.extend(nodes.warnings(&capabilities));
    let report = Report {
        cluster,
        probe_namespace: namespace,
        capabilities,
        nodes,
        webhook_configuration: webhook,
        admission_policy,
        targets: targets.to_string(),
        targets_source,
        ok: problems.is_empty(),
        problems,
        warnings,
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print!("{}", table(&report)),
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PROBLEMS)
    })
}

fn unchecked(why: &str) -> ExitCode {
    eprintln!("error: {why}");
    ExitCode::from(EXIT_UNCHECKED)
}

// ---- the webhook configuration ------------------------------------------------------------

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

async fn read_webhook(
    client: &kube::Client,
    name: &str,
) -> (WebhookReport, Option<MutatingWebhookConfiguration>) {
    let mut report = WebhookReport {
        name: name.to_owned(),
        ..WebhookReport::default()
    };
    if !valid_name(name) {
        report.registered = Finding {
            value: None,
            detail: format!("{name:?} is not a valid object name"),
        };
        return (report, None);
    }
    let path =
        format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}");
    match probe::get(client, &path).await {
        Ok(v) => match serde_json::from_value::<MutatingWebhookConfiguration>(v) {
            Ok(mwc) => {
                let n = mwc.webhooks.as_ref().map_or(0, Vec::len);
                report.registered = Finding {
                    value: Some(true),
                    detail: format!("MutatingWebhookConfiguration {name} has {n} webhooks"),
                };
                (report, Some(mwc))
            }
            Err(e) => {
                report.registered = Finding {
                    value: None,
                    detail: format!("MutatingWebhookConfiguration {name} is unreadable: {e}"),
                };
                (report, None)
            }
        },
        Err(Failure::Api { code: 404, .. }) => {
            report.registered = Finding {
                value: Some(false),
                detail: format!("MutatingWebhookConfiguration {name} is not registered"),
            };
            (report, None)
        }
        Err(e) => {
            report.registered = Finding {
                value: None,
                detail: format!("reading MutatingWebhookConfiguration {name} failed: {e}"),
            };
            (report, None)
        }
    }
}

/// Looks for the four objects of `policy` by their names (a cluster without the v1 admission
/// policy APIs answers 404, the same as "not installed").
async fn read_policy(client: &kube::Client) -> PolicyReport {
    let objects = [
        ("mutatingadmissionpolicies", policy::MUTATING_NAME),
        ("mutatingadmissionpolicybindings", policy::MUTATING_NAME),
        ("validatingadmissionpolicies", policy::VALIDATING_NAME),
        ("validatingadmissionpolicybindings", policy::VALIDATING_NAME),
    ];
    let (mut present, mut missing, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (resource, name) in objects {
        let path = format!("/apis/admissionregistration.k8s.io/v1/{resource}/{name}");
        let what = format!("{resource}/{name}");
        match probe::get(client, &path).await {
            Ok(_) => present.push(what),
            Err(Failure::Api { code: 404, .. }) => missing.push(what),
            Err(e) => failed.push(format!("{what}: {e}")),
        }
    }
    let (value, detail) = if !failed.is_empty() {
        (None, format!("could not read {}", failed.join("; ")))
    } else if missing.is_empty() {
        (
            Some(true),
            format!(
                "{} and {} with their bindings",
                policy::MUTATING_NAME,
                policy::VALIDATING_NAME
            ),
        )
    } else if present.is_empty() {
        (Some(false), "not installed".to_owned())
    } else {
        (
            Some(false),
            format!("partly installed: {} missing", missing.join(", ")),
        )
    };
    PolicyReport {
        partial: !present.is_empty() && !missing.is_empty(),
        installed: Finding { value, detail },
    }
}

/// What the configuration sends to the webhook, by its rules' resources.
fn routed_targets(mwc: Option<&MutatingWebhookConfiguration>) -> Option<Targets> {
    let hooks = mwc?.webhooks.as_ref()?;
    let mut t = Targets {
        jobsets: false,
        pods: false,
    };
    for r in hooks.iter().flat_map(resources) {
        match r.as_str() {
            "jobsets" => t.jobsets = true,
            "pods" => t.pods = true,
            _ => {}
        }
    }
    (t.jobsets || t.pods).then_some(t)
}

fn resources(w: &MutatingWebhook) -> Vec<String> {
    let mut out: Vec<String> = w
        .rules
        .iter()
        .flatten()
        .flat_map(|r| r.resources.iter().flatten())
        .map(|r| match r.as_str() {
            "*" | "*/*" => "*".to_owned(),
            other => other.split('/').next().unwrap_or(other).to_owned(),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// How the API server reaches one webhook.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Endpoint {
    Url(String),
    Service {
        namespace: String,
        name: String,
        port: i32,
        path: String,
    },
    None,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(u) => write!(f, "url {u}"),
            Self::Service {
                namespace,
                name,
                port,
                path,
            } => write!(f, "service {namespace}/{name}:{port}{path}"),
            Self::None => f.write_str("no clientConfig"),
        }
    }
}

fn endpoint(w: &MutatingWebhook) -> Endpoint {
    let cc = &w.client_config;
    if let Some(u) = &cc.url {
        Endpoint::Url(u.clone())
    } else if let Some(s) = &cc.service {
        Endpoint::Service {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            port: s.port.unwrap_or(443),
            path: s.path.clone().unwrap_or_default(),
        }
    } else {
        Endpoint::None
    }
}

async fn verify_webhooks(
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
            Err(DialError::Setup(e)) => (Some(false), e),
            Err(DialError::Connect(e)) => (
                None,
                format!("cannot connect to {url} from here to verify it: {e}"),
            ),
        },
        Endpoint::Service {
            namespace, name, ..
        } => {
            let (secret_ns, secret_name) = match tls_secret.split_once('/') {
                Some((ns, n)) => (ns.to_owned(), n.to_owned()),
                None => (namespace.clone(), tls_secret.to_owned()),
            };
            let dns = format!("{name}.{namespace}.svc");
            let why_outside = format!(
                "the API server reaches Service {namespace}/{name}, which is routable only \
                 inside the cluster, so this check cannot dial it"
            );
            if !(valid_name(&secret_ns) && valid_name(&secret_name)) {
                (
                    None,
                    format!("{why_outside}; --tls-secret {tls_secret:?} is not a valid name"),
                )
            } else {
                let path = format!("/api/v1/namespaces/{secret_ns}/secrets/{secret_name}");
                match probe::get(client, &path).await {
                    Ok(secret) => match secret_cert(&secret) {
                        Some(chain) => match verify_chain(bundle, &chain, &dns) {
                            Ok(()) => (
                                Some(true),
                                format!(
                                    "the caBundle verifies the certificate in Secret \
                                     {secret_ns}/{secret_name} for {dns}"
                                ),
                            ),
                            Err(e) => (
                                Some(false),
                                format!(
                                    "the caBundle does not verify the certificate in Secret \
                                     {secret_ns}/{secret_name} for {dns}: {e}"
                                ),
                            ),
                        },
                        None => (
                            None,
                            format!(
                                "{why_outside}, and Secret {secret_ns}/{secret_name} has no tls.crt"
                            ),
                        ),
                    },
                    Err(e) => (
                        None,
                        format!(
                            "{why_outside}, and Secret {secret_ns}/{secret_name} (--tls-secret) \
                             could not be read: {e}"
                        ),
                    ),
                }
            }
        }
    };
    Finding { value, detail }
}

/// `data["tls.crt"]` of a Secret (JSON), decoded.
fn secret_cert(secret: &Value) -> Option<Vec<u8>> {
    let b64 = secret.pointer("/data/tls.crt")?.as_str()?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

fn roots(bundle: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle) {
        let cert = cert.map_err(|e| format!("the caBundle is not PEM certificates: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("the caBundle holds an unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the caBundle holds no PEM certificate".to_owned());
    }
    Ok(roots)
}

/// Verifies a PEM chain (leaf first) for `name` against the PEM `bundle`, as the API server
/// would (webpki, the current time).
pub fn verify_chain(bundle: &[u8], chain_pem: &[u8], name: &str) -> Result<(), String> {
    let roots = roots(bundle)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate is not PEM: {e}"))?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or("the certificate file holds no certificate")?;
    let server_name =
        ServerName::try_from(name.to_owned()).map_err(|e| format!("{name:?}: {e}"))?;
    verifier
        .verify_server_cert(leaf, intermediates, &server_name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[derive(Debug)]
enum DialError {
    /// The URL or the caBundle is unusable.
    Setup(String),
    /// Could not connect (or no handshake answer).
    Connect(String),
    /// The handshake failed: the certificate does not verify.
    Verify(String),
}

/// TLS-dials `url` trusting only `bundle`; returns the verified server name.
async fn dial(url: &str, bundle: &[u8]) -> Result<String, DialError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| DialError::Setup(format!("the webhook url {url:?} is not a URL: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(DialError::Setup(format!(
            "the webhook url {url:?} is not https"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| DialError::Setup(format!("the webhook url {url:?} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let roots = roots(bundle).map_err(DialError::Setup)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DialError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| DialError::Setup(format!("{host:?}: {e}")))?;
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

// ---- the verdict --------------------------------------------------------------------------

/// (problems, warnings): problems mean in-place restart cannot work as configured.
pub fn assess(
    caps: &Capabilities,
    webhook: &WebhookReport,
    admission_policy: &PolicyReport,
    targets: Targets,
) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    match caps.restart_policy_rules.value {
        Some(false) => problems.push(format!(
            "the API server drops or rejects restartPolicyRules, so no in-place restart can \
             work on this cluster: {}",
            caps.restart_policy_rules.detail
        )),
        None => warnings.push(format!(
            "could not tell whether the API server keeps restartPolicyRules: {}",
            caps.restart_policy_rules.detail
        )),
        Some(true) => {}
    }
    if caps.restart_policy_rules.value != Some(false) {
        match caps.restart_all_containers.value {
            Some(false) => warnings.push(
                "the API server does not accept RestartAllContainers: the webhook defaults to \
                 Restart and denies JobSets that ask for RestartAllContainers"
                    .to_owned(),
            ),
            None => warnings.push(format!(
                "could not tell whether the API server accepts RestartAllContainers: {}",
                caps.restart_all_containers.detail
            )),
            Some(true) => {}
        }
    }
    match (
        caps.jobset_crd_installed.value,
        caps.jobset_crd_keeps_rules.value,
    ) {
        (Some(false), _) => problems.push(format!(
            "the JobSet CRD is not installed: {}",
            caps.jobset_crd_installed.detail
        )),
        (Some(true), Some(false)) if targets.jobsets && !targets.pods => problems.push(
            "the installed JobSet CRD prunes restartPolicyRules (JobSet < v0.10) and only the \
             JobSet target is on: the rules injected into JobSets are dropped when they are \
             stored; turn on the pod target (serve --targets jobsets,pods and the pods webhook)"
                .to_owned(),
        ),
        (Some(true), Some(false)) => warnings.push(
            "the installed JobSet CRD prunes restartPolicyRules (JobSet < v0.10): JobSets lose \
             the rules, the pod target puts them on the pods"
                .to_owned(),
        ),
        (None, _) | (Some(true), None) => warnings.push(format!(
            "could not read the JobSet CRD's schema: {}",
            caps.jobset_crd_keeps_rules.detail
        )),
        (Some(true), Some(true)) => {}
    }
    let policy_installed = admission_policy.installed.value == Some(true);
    if admission_policy.partial {
        problems.push(format!(
            "the admission policies of `policy` are {}: apply all four objects or none",
            admission_policy.installed.detail
        ));
    } else if admission_policy.installed.value.is_none() {
        warnings.push(admission_policy.installed.detail.clone());
    }
    if policy_installed && webhook.registered.value == Some(true) {
        warnings.push(format!(
            "both the webhook ({}) and the admission policies of `policy` are installed: they \
             do the same for JobSets, so keep one",
            webhook.name
        ));
    }
    if policy_installed && caps.restart_all_containers.value == Some(false) {
        warnings.push(
            "the admission policies do not probe the cluster: their config must set \
             defaults.action: Restart here, or JobSets that resolve to RestartAllContainers \
             make child Jobs the API server rejects"
                .to_owned(),
        );
    }
    match webhook.registered.value {
        // The admission policies do the webhook's JobSet target.
        Some(false) if policy_installed && !targets.pods => {}
        Some(false) if policy_installed => problems.push(
            "the pod target is asked for, and only the admission policies are installed: they \
             have no pod target; register the webhook for pods"
                .to_owned(),
        ),
        Some(false) => problems.push(format!(
            "{}: nothing sends JobSets or Pods to the webhook",
            webhook.registered.detail
        )),
        None => warnings.push(webhook.registered.detail.clone()),
        Some(true) => {
            if webhook.webhooks.is_empty() {
                problems.push(format!(
                    "MutatingWebhookConfiguration {} has no webhooks",
                    webhook.name
                ));
            }
            for w in &webhook.webhooks {
                match w.ca_bundle.value {
                    Some(false) => problems.push(format!(
                        "webhook {} ({}): {}",
                        w.name, w.endpoint, w.ca_bundle.detail
                    )),
                    None => warnings.push(format!("webhook {}: {}", w.name, w.ca_bundle.detail)),
                    Some(true) => {}
                }
            }
        }
    }
    dedup(&mut warnings);
    (problems, warnings)
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|s| seen.insert(s.clone()));
}

// ---- output -------------------------------------------------------------------------------

fn word(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "unknown",
    }
}

/// The human-readable table.
pub fn table(r: &Report) -> String {
    let c = &r.capabilities;
    let mut rows: Vec<(String, String, String)> = vec![
        (
            "API server".into(),
            c.server_version.clone().unwrap_or_else(|| "unknown".into()),
            r.cluster.clone(),
        ),
        (
            "restartPolicyRules kept".into(),
            word(c.restart_policy_rules.value).into(),
            c.restart_policy_rules.detail.clone(),
        ),
        (
            "RestartAllContainers accepted".into(),
            word(c.restart_all_containers.value).into(),
            c.restart_all_containers.detail.clone(),
        ),
        (
            "JobSet CRD installed".into(),
            word(c.jobset_crd_installed.value).into(),
            c.jobset_crd_installed.detail.clone(),
        ),
        (
            "JobSet CRD keeps the rules".into(),
            word(c.jobset_crd_keeps_rules.value).into(),
            c.jobset_crd_keeps_rules.detail.clone(),
        ),
        (
            "nodes declaring RestartAllContainersOnContainerExits".into(),
            match (r.nodes.declaring, r.nodes.schedulable) {
                (Some(d), Some(s)) => format!("{d} of {s}"),
                _ => "unknown".into(),
            },
            r.nodes.restart_all_containers.detail.clone(),
        ),
        (
            "webhook registered".into(),
            word(r.webhook_configuration.registered.value).into(),
            r.webhook_configuration.registered.detail.clone(),
        ),
    ];
    rows.push((
        "admission policies".into(),
        word(r.admission_policy.installed.value).into(),
        r.admission_policy.installed.detail.clone(),
    ));
    for w in &r.webhook_configuration.webhooks {
        rows.push((
            format!("caBundle of {}", w.name),
            match w.ca_bundle.value {
                Some(true) => "verified".into(),
                Some(false) => "FAILED".into(),
                None => "unknown".into(),
            },
            format!("{}: {}", w.endpoint, w.ca_bundle.detail),
        ));
    }
    rows.push((
        "targets".into(),
        r.targets.clone(),
        format!("from {}", r.targets_source),
    ));
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(5);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(6);
    let mut out = format!("{:w0$}  {:w1$}  DETAIL\n", "CHECK", "RESULT");
    for (a, b, c) in rows {
        out.push_str(&format!("{a:w0$}  {b:w1$}  {c}\n"));
    }
    out.push('\n');
    for p in &r.problems {
        out.push_str(&format!("problem: {p}\n"));
    }
    for w in &r.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    if r.ok {
        out.push_str("ok: in-place restart can work as configured\n");
    } else {
        out.push_str(&format!(
            "in-place restart cannot work as configured ({} problem{})\n",
            r.problems.len(),
            if r.problems.len() == 1 { "" } else { "s" }
        ));
    }
    out
}

/// For tests and `-o json` readers: the report as a JSON value.
pub fn to_json(r: &Report) -> Value {
    serde_json::to_value(r).unwrap_or_else(|e| json!({ "error": e.to_string() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: Option<bool>, d: &str) -> Finding {
        Finding {
            value: v,
            detail: d.to_owned(),
        }
    }

    fn caps(
        rules: Option<bool>,
        rac: Option<bool>,
        crd: Option<bool>,
        keeps: Option<bool>,
    ) -> Capabilities {
        Capabilities {
            server_version: Some("v1.36.2".into()),
            restart_policy_rules: f(rules, "rules"),
            restart_all_containers: f(rac, "rac"),
            jobset_crd_installed: f(crd, "crd"),
            jobset_crd_keeps_rules: f(keeps, "keeps"),
        }
    }

    fn registered(ca: Option<bool>) -> WebhookReport {
        WebhookReport {
            name: DEFAULT_WEBHOOK_CONFIGURATION.into(),
            registered: f(Some(true), "registered"),
            webhooks: vec![WebhookEntry {
                name: "jobsets.restart.jobset.dev".into(),
                resources: vec!["jobsets".into()],
                endpoint: "url https://127.0.0.1:8443/mutate".into(),
                ca_bundle: f(ca, "ca detail"),
            }],
        }
    }

    const JOBSETS: Targets = Targets {
        jobsets: true,
        pods: false,
    };
    const BOTH: Targets = Targets {
        jobsets: true,
        pods: true,
    };

    fn no_policy() -> PolicyReport {
        PolicyReport {
            installed: f(Some(false), "not installed"),
            partial: false,
        }
    }

    fn policy_installed() -> PolicyReport {
        PolicyReport {
            installed: f(Some(true), "installed"),
            partial: false,
        }
    }

    #[test]
    fn the_admission_policies_stand_in_for_the_webhook() {
        let c = caps(Some(true), Some(true), Some(true), Some(true));
        let absent = WebhookReport {
            name: "x".into(),
            registered: f(
                Some(false),
                "MutatingWebhookConfiguration x is not registered",
            ),
            webhooks: vec![],
        };
        let (p, w) = assess(&c, &absent, &policy_installed(), JOBSETS);
        assert!(p.is_empty() && w.is_empty(), "{p:?} {w:?}");
        let (p, _) = assess(&c, &absent, &policy_installed(), BOTH);
        assert!(p[0].contains("they have no pod target"), "{p:?}");
        let (p, w) = assess(&c, &registered(Some(true)), &policy_installed(), JOBSETS);
        assert!(p.is_empty());
        assert!(w[0].contains("keep one"), "{w:?}");
        let partial = PolicyReport {
            installed: f(Some(false), "partly installed: a missing"),
            partial: true,
        };
        let (p, _) = assess(&c, &registered(Some(true)), &partial, JOBSETS);
        assert_eq!(
            p,
            [
                "the admission policies of `policy` are partly installed: a missing: apply all four objects or none"
            ]
        );
        let no_restart_all = caps(Some(true), Some(false), Some(true), Some(true));
        let (_, w) = assess(&no_restart_all, &absent, &policy_installed(), JOBSETS);
        assert!(
            w.iter().any(|w| w.contains("defaults.action: Restart")),
            "{w:?}"
        );
    }

    fn slim(declares: bool, unschedulable: bool) -> SlimNode {
        SlimNode {
            info: crate::engine::NodeInfo {
                declares,
                unschedulable,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn nodes_are_counted_and_warned_about() {
        let good = caps(Some(true), Some(true), Some(true), Some(true));
        let all = NodesReport::from_list(Ok(vec![slim(true, false), slim(false, true)]));
        assert_eq!(all.restart_all_containers.value, Some(true));
        assert_eq!(
            all.restart_all_containers.detail,
            "1 of 1 schedulable nodes declare RestartAllContainersOnContainerExits (1 cordoned \
             not counted)"
        );
        assert_eq!(
            (all.total, all.schedulable, all.declaring),
            (Some(2), Some(1), Some(1))
        );
        assert!(all.warnings(&good).is_empty());

        let some = NodesReport::from_list(Ok(vec![slim(true, false), slim(false, false)]));
        assert_eq!(some.restart_all_containers.value, Some(false));
        let w = some.warnings(&good);
        assert!(
            w[0].starts_with("only 1 of 2 schedulable nodes declare"),
            "{w:?}"
        );

        let none = NodesReport::from_list(Ok(vec![slim(false, false)]));
        let w = none.warnings(&good);
        assert!(
            w[0].contains("denies JobSets that ask for RestartAllContainers"),
            "{w:?}"
        );
        // the API server's "no" already says it all
        let api_no = caps(Some(true), Some(false), Some(true), Some(true));
        assert!(none.warnings(&api_no).is_empty());

        let empty = NodesReport::from_list(Ok(vec![]));
        assert_eq!(empty.restart_all_containers.value, None);
        assert!(
            empty.warnings(&good)[0].starts_with("no schedulable nodes: no nodes: which kubelets"),
            "{:?}",
            empty.warnings(&good)
        );
        let forbidden = NodesReport::from_list(Err(Failure::Api {
            code: 403,
            message: "nodes is forbidden".into(),
        }));
        assert_eq!(forbidden.total, None);
        assert!(
            forbidden.warnings(&good)[0].contains("needs the list verb on nodes"),
            "{:?}",
            forbidden.warnings(&good)
        );
    }

    #[test]
    fn all_good() {
        let (p, w) = assess(
            &caps(Some(true), Some(true), Some(true), Some(true)),
            &registered(Some(true)),
            &no_policy(),
            JOBSETS,
        );
        assert!(p.is_empty() && w.is_empty(), "{p:?} {w:?}");
    }

    #[test]
    fn rules_dropped_is_a_problem() {
        let (p, w) = assess(
            &caps(Some(false), Some(false), Some(true), Some(true)),
            &registered(Some(true)),
            &no_policy(),
            BOTH,
        );
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("drops or rejects restartPolicyRules"),
            "{p:?}"
        );
        assert!(w.is_empty(), "RestartAllContainers is moot then: {w:?}");
    }

    #[test]
    fn no_restart_all_is_a_warning() {
        let (p, w) = assess(
            &caps(Some(true), Some(false), Some(true), Some(true)),
            &registered(Some(true)),
            &no_policy(),
            JOBSETS,
        );
        assert!(p.is_empty());
        assert!(w[0].contains("defaults to Restart"), "{w:?}");
    }

    #[test]
    fn pruning_crd_needs_the_pod_target() {
        let c = caps(Some(true), Some(true), Some(true), Some(false));
        let (p, _) = assess(&c, &registered(Some(true)), &no_policy(), JOBSETS);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("prunes restartPolicyRules") && p[0].contains("pod target"),
            "{p:?}"
        );
        let (p, w) = assess(&c, &registered(Some(true)), &no_policy(), BOTH);
        assert!(p.is_empty());
        assert!(w[0].contains("prunes"), "{w:?}");
        let (p, _) = assess(
            &caps(Some(true), Some(true), Some(false), None),
            &registered(Some(true)),
            &no_policy(),
            BOTH,
        );
        assert!(p[0].contains("not installed"), "{p:?}");
    }

    #[test]
    fn webhook_problems() {
        let c = caps(Some(true), Some(true), Some(true), Some(true));
        let (p, _) = assess(&c, &registered(Some(false)), &no_policy(), JOBSETS);
        assert_eq!(
            p,
            ["webhook jobsets.restart.jobset.dev (url https://127.0.0.1:8443/mutate): ca detail"]
        );
        let (p, w) = assess(&c, &registered(None), &no_policy(), JOBSETS);
        assert!(p.is_empty());
        assert_eq!(w, ["webhook jobsets.restart.jobset.dev: ca detail"]);
        let missing = WebhookReport {
            name: "x".into(),
            registered: f(
                Some(false),
                "MutatingWebhookConfiguration x is not registered",
            ),
            webhooks: vec![],
        };
        let (p, _) = assess(&c, &missing, &no_policy(), JOBSETS);
        assert_eq!(
            p,
            [
                "MutatingWebhookConfiguration x is not registered: nothing sends JobSets or Pods to the webhook"
            ]
        );
    }

    fn mwc(json: Value) -> MutatingWebhookConfiguration {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn targets_from_rules() {
        let m = mwc(json!({"metadata": {"name": "x"}, "webhooks": [
            {"name": "a", "admissionReviewVersions": ["v1"], "sideEffects": "None",
             "clientConfig": {"service": {"namespace": "ns", "name": "svc", "path": "/mutate"}},
             "rules": [{"apiGroups": ["jobset.x-k8s.io"], "apiVersions": ["v1alpha2"], "operations": ["CREATE"], "resources": ["jobsets"]}]},
            {"name": "b", "admissionReviewVersions": ["v1"], "sideEffects": "None",
             "clientConfig": {"url": "https://127.0.0.1:1/mutate"},
             "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods", "pods/status"]}]}
        ]}));
        assert_eq!(routed_targets(Some(&m)), Some(BOTH));
        let hooks = m.webhooks.as_ref().unwrap();
        assert_eq!(resources(&hooks[1]), ["pods"]);
        assert_eq!(endpoint(&hooks[0]).to_string(), "service ns/svc:443/mutate");
        assert_eq!(
            endpoint(&hooks[1]).to_string(),
            "url https://127.0.0.1:1/mutate"
        );
        assert_eq!(routed_targets(None), None);
        assert_eq!(
            routed_targets(Some(&mwc(json!({"metadata": {"name": "x"}})))),
            None
        );
    }

    fn generated(names: &[&str]) -> crate::certs::Generated {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        crate::certs::generate(&names, 30).unwrap()
    }

    #[test]
    fn chain_verification() {
        let g = generated(&["svc.ns.svc"]);
        let other = generated(&["svc.ns.svc"]);
        assert_eq!(
            verify_chain(g.ca_pem.as_bytes(), g.cert_pem.as_bytes(), "svc.ns.svc"),
            Ok(())
        );
        let e =
            verify_chain(other.ca_pem.as_bytes(), g.cert_pem.as_bytes(), "svc.ns.svc").unwrap_err();
        // (the generated CAs share a subject, so webpki reports the signature, not the issuer)
        assert!(e.starts_with("invalid peer certificate"), "{e}");
        let e =
            verify_chain(g.ca_pem.as_bytes(), g.cert_pem.as_bytes(), "other.ns.svc").unwrap_err();
        assert!(e.contains("not valid for name \"other.ns.svc\""), "{e}");
        assert!(
            verify_chain(b"", g.cert_pem.as_bytes(), "svc.ns.svc")
                .unwrap_err()
                .contains("no PEM")
        );
        assert!(verify_chain(g.ca_pem.as_bytes(), b"", "svc.ns.svc").is_err());
    }

    #[tokio::test]
    async fn dial_verifies_against_the_bundle_only() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let g = generated(&["127.0.0.1"]);
        let other = generated(&["127.0.0.1"]);
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(g.key_pem.as_bytes()).unwrap();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(g.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let a = acceptor.clone();
                tokio::spawn(async move {
                    let _ = a.accept(tcp).await;
                });
            }
        });
        let url = format!("https://127.0.0.1:{port}/mutate");
        assert_eq!(dial(&url, g.ca_pem.as_bytes()).await.unwrap(), "127.0.0.1");
        match dial(&url, other.ca_pem.as_bytes()).await {
            Err(DialError::Verify(e)) => assert!(e.starts_with("invalid peer certificate"), "{e}"),
            other => panic!("{other:?}"),
        }
        // nothing listens there
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        match dial(&format!("https://127.0.0.1:{closed}/"), g.ca_pem.as_bytes()).await {
            Err(DialError::Connect(_)) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            dial("http://127.0.0.1/", g.ca_pem.as_bytes()).await,
            Err(DialError::Setup(_))
        ));
    }

    #[test]
    fn table_and_json() {
        let c = caps(Some(true), Some(false), Some(true), Some(false));
        let webhook = registered(Some(true));
        let (problems, warnings) = assess(&c, &webhook, &no_policy(), JOBSETS);
        let r = Report {
            cluster: "https://127.0.0.1:6443/".into(),
            probe_namespace: "default".into(),
            capabilities: c,
            nodes: NodesReport::from_list(Ok(vec![slim(true, false), slim(false, false)])),
            webhook_configuration: webhook,
            admission_policy: no_policy(),
            targets: JOBSETS.to_string(),
            targets_source: "--targets".into(),
            ok: problems.is_empty(),
            problems,
            warnings,
        };
        let t = table(&r);
        assert!(t.starts_with("CHECK"), "{t}");
        let row = t
            .lines()
            .find(|l| l.starts_with("JobSet CRD keeps the rules "))
            .unwrap_or_default();
        assert_eq!(row.split_whitespace().nth(5), Some("NO"), "{t}");
        assert!(
            t.lines()
                .any(|l| l
                    .starts_with("nodes declaring RestartAllContainersOnContainerExits  1 of 2 ")),
            "{t}"
        );
        assert!(
            t.contains("problem: the installed JobSet CRD prunes"),
            "{t}"
        );
        assert!(
            t.ends_with("in-place restart cannot work as configured (1 problem)\n"),
            "{t}"
        );
        let j = to_json(&r);
        assert_eq!(j["ok"], false);
        assert_eq!(j["capabilities"]["jobsetCrdKeepsRules"]["value"], false);
        assert_eq!(
            j["webhookConfiguration"]["webhooks"][0]["caBundle"]["value"],
            true
        );
    }
}
