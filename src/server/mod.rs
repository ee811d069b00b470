//! The HTTPS admission server and its admin port. (Being written: issue "serve".)
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {}

pub fn run(_args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("serve is not built yet")
}
