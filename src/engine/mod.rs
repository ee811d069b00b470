//! The engine: pure functions from (raw object JSON, annotations, cluster config, namespace
//! labels, cluster facts) to (JSON Patch, warnings) or a denial. No HTTP, TLS or Kubernetes
//! client types live here, so the same code serves the webhook, the `mutate` preview, the
//! benches and the fuzz targets.

pub mod annotations;
pub mod config;
pub mod mutate;
pub mod nodes;
pub mod patch;
pub mod policy;
pub mod update;

pub use annotations::{Action, AnnotationError, ExitCodes, InPlace, Operator};
pub use config::{Config, ConfigError, Targets};
pub use mutate::{Context, Denial, Mutation, ParentJobSet, mutate_jobset, mutate_pod};
pub use nodes::{NodeInfo, Nodes};
pub use patch::Patch;
pub use policy::ClusterFacts;
pub use update::update_jobset;
