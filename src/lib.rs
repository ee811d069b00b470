//! jobset-restart-webhook: injects in-place container restart rules (KEP-5307/KEP-5532) into
//! JobSet pod templates and JobSet pods.
//!
//! Data flows one way: `server` receives bytes, `admission` decodes the AdmissionReview,
//! `engine` decides and returns patch operations, `admission` encodes the answer, `server`
//! sends it. `cluster` fills caches that the request path reads; it is never on that path.
#![forbid(unsafe_code)]

pub mod admission;
pub mod admission_policy;
pub mod args;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod engine;
pub mod server;
pub mod tasks;
pub mod telemetry;
