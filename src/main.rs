//! The `jobset-restart-webhook` binary: parses the command line and calls into the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jobset_restart_webhook::{certs, cli};

#[derive(Parser)]
#[command(
    name = "jobset-restart-webhook",
    version,
    about = "Mutating admission webhook that gives JobSets in-place container restarts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the admission webhook (HTTPS) and its admin port (metrics, health).
    Serve(Box<cli::serve::ServeArgs>),
    /// Preview the mutation offline: read JobSets/Pods/AdmissionReviews, print the result.
    Mutate(cli::mutate::MutateArgs),
    /// Write a CA and a serving certificate for the webhook's Service.
    Certs(certs::CertsArgs),
    /// Check the cluster in the current kubeconfig: can in-place restart work there, as the
    /// webhook is registered? Exit 0 yes, 1 no (one line per problem), 2 could not check.
    Check(cli::check::CheckArgs),
    /// Print the equivalent MutatingAdmissionPolicy and ValidatingAdmissionPolicy (with
    /// bindings) for a cluster config, for clusters that run no webhook.
    Policy(cli::policy::PolicyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(*args),
        Command::Mutate(args) => cli::mutate::run(args),
        Command::Certs(args) => certs::run(args),
        Command::Check(args) => cli::check::run(args),
        Command::Policy(args) => cli::policy::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
