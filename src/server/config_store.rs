//! The cluster config as the request path sees it: one `ArcSwap<Config>`, swapped whole when
//! the `--config` file changes to a valid new version. A bad new file never replaces a good
//! config; it is logged (the error names the file and the field) and counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::sync::watch;
use tracing::{error, info};

use super::files::{FileError, Snapshot, only_file, poll_loop};
use crate::engine::{Config, ConfigError, Targets};
use crate::telemetry::{Metrics, ResultLabels};

/// Why a config file cannot be used. The texts name the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("{file}: not UTF-8 text: {source}")]
    NotUtf8 {
        file: String,
        source: std::str::Utf8Error,
    },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The reload loop could not read the file.
    #[error(transparent)]
    File(#[from] FileError),
}

pub(crate) struct ConfigStore {
    current: ArcSwap<Config>,
    /// `--targets`, which wins over the file's `targets`.
    targets_override: Option<Targets>,
    path: Option<PathBuf>,
}

impl ConfigStore {
    /// Loads `path` (when given) at start. Errors stop the server before it binds.
    pub(crate) fn load(
        path: Option<&Path>,
        targets_override: Option<Targets>,
    ) -> anyhow::Result<(Self, Option<Snapshot>)> {
        let (mut config, snapshot) = match path {
            None => (Config::default(), None),
            Some(p) => {
                let bytes = std::fs::read(p)
                    .with_context(|| format!("reading --config {}", p.display()))?;
                let config =
                    parse(&bytes, p).map_err(|e| anyhow::anyhow!("cluster config: {e}"))?;
                (config, Some(vec![Ok(bytes)]))
            }
        };
        if let Some(t) = targets_override {
            config.targets = t;
        }
        Ok((
            Self {
                current: ArcSwap::from_pointee(config),
                targets_override,
                path: path.map(Path::to_path_buf),
            },
            snapshot,
        ))
    }

    /// The config for one request: a cheap guard, no lock.
    pub(crate) fn load_current(&self) -> arc_swap::Guard<Arc<Config>> {
        self.current.load()
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn apply(&self, bytes: &[u8], path: &Path) -> Result<(), LoadError> {
        let mut config = parse(bytes, path)?;
        if let Some(t) = self.targets_override {
            config.targets = t;
        }
        self.current.store(Arc::new(config));
        Ok(())
    }
}

fn parse(bytes: &[u8], path: &Path) -> Result<Config, LoadError> {
    let name = path.display().to_string();
    let text = std::str::from_utf8(bytes).map_err(|source| LoadError::NotUtf8 {
        file: name.clone(),
        source,
    })?;
    Ok(Config::from_yaml(text, &name)?)
}

/// Marks the start-up load in the metrics.
pub(crate) fn record_initial(metrics: &Metrics) {
    metrics.config_last_reload_successful.set(1);
    metrics.config_last_reload_success_time.set(now_seconds());
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Polls the config file and applies changed, valid versions.
pub(crate) async fn reload_loop(
    store: Arc<ConfigStore>,
    initial: Snapshot,
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let Some(path) = store.path().map(Path::to_path_buf) else {
        return;
    };
    poll_loop(vec![path.clone()], initial, interval, shutdown, |snapshot| {
        let applied = only_file(snapshot)
            .map_err(LoadError::from)
            .and_then(|bytes| store.apply(&bytes, &path));
        match applied {
            Ok(()) => {
                metrics
                    .config_reloads
                    .get_or_create(&ResultLabels { result: "success" })
                    .inc();
                metrics.config_last_reload_successful.set(1);
                metrics.config_last_reload_success_time.set(now_seconds());
                let targets = store.load_current().targets;
                info!(config = %path.display(), %targets, "cluster config reloaded");
            }
            Err(e) => {
                metrics
                    .config_reloads
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
                metrics.config_last_reload_successful.set(0);
                error!(error = %e, "cluster config changed but is not valid; keeping the last good config");
            }
        }
    })
    .await;
}
