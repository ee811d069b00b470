//! `policy`: prints the MutatingAdmissionPolicy (+ binding) and the ValidatingAdmissionPolicy
//! (+ binding) that implement the JobSet target for a cluster config, for clusters that run
//! admission policies instead of the webhook.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::admission_policy;
use crate::engine::Config;

#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    /// Cluster config file (the one `serve --config` reads): its defaults and presets are
    /// compiled into the policies. Without it, the built-in defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output format: a YAML stream with comments, or a JSON `v1` `List`.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Yaml)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Yaml,
    Json,
}

pub fn run(args: PolicyArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(p) => {
            let t =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Config::from_yaml(&t, &p.display().to_string())?
        }
        None => Config::default(),
    };
    let docs = admission_policy::generate(&config);
    match args.output {
        Output::Yaml => print!(
            "{}",
            admission_policy::to_yaml(&docs).context("writing YAML")?
        ),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&admission_policy::to_list(&docs))
                .context("writing JSON")?
        ),
    }
    Ok(ExitCode::SUCCESS)
}
