//! `check`: can in-place restart work on the cluster in the current kubeconfig, as the
//! webhook is registered there? (README, "What the webhook learns from the cluster, and
//! `check`")
//!
//! It asks the API server itself (the same probes `serve` runs: `/version`, dry-run Pods,
//! the JobSet CRD's schema), lists the nodes (which of them declare
//! `RestartAllContainersOnContainerExits`), reads our MutatingWebhookConfiguration, and
//! checks that each webhook's `caBundle` verifies the serving certificate: for a `url`
//! clientConfig by a TLS handshake that trusts only the caBundle; for a `service`
//! clientConfig (routable only inside the cluster) from the Secret holding the certificate.
//!
//! Exit status: 0 when in-place restart can work as configured; 1 when it cannot (one line
//! per problem says why); 2 when the cluster could not be checked at all.
//!
//! The parts: [`webhook`] reads the MutatingWebhookConfiguration and the admission policies,
//! [`ca_bundle`] verifies each webhook's caBundle, [`nodes`] lists the nodes (all three through
//! kube's typed `Api`), [`verdict`] turns the findings into problems and warnings, [`report`]
//! holds the report and prints it.

mod ca_bundle;
mod nodes;
mod report;
#[cfg(test)]
mod tests;
mod verdict;
mod webhook;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use crate::args::parse_targets;
use crate::cluster::probe::{self, with_timeout};
use crate::engine::Targets;

pub use ca_bundle::{CaBundleError, verify_chain};
pub use report::{NodesReport, PolicyReport, Report, WebhookEntry, WebhookReport, table};
pub use verdict::assess;

use ca_bundle::verify_webhooks;
use webhook::{read_policy, read_webhook, routed_targets};

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
    if let Err(e) = with_timeout(client.apiserver_version()).await {
        return Ok(unchecked(&format!(
            "cannot reach the API server at {cluster}: {e}"
        )));
    }
    let namespace = args.namespace.clone().unwrap_or(default_namespace);
    let capabilities = probe::probe(&client, &namespace).await;
    let nodes = NodesReport::from_list(nodes::list(&client).await);
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
