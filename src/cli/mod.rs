//! The subcommands: `serve` (the composition root of the long-running server) and the ones
//! that run once and exit.
pub mod check;
pub mod mutate;
pub mod policy;
pub mod serve;
