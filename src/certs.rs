//! CA and serving certificate generation. (Being written: issue "serve".)
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct CertsArgs {}

pub fn run(_args: CertsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("certs is not built yet")
}
