//! Subcommands that run once and exit (the long-running `serve` lives in `server`).
pub mod check;
pub mod mutate;
pub mod policy;
