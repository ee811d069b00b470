//! Polling files for changes by content. Kubernetes updates Secret and ConfigMap volumes by
//! swapping a `..data` symlink, which inotify reports awkwardly (controller-runtime re-adds its
//! watch on Remove/Chmod); reading the files every few seconds and comparing bytes is simple,
//! cannot miss an update, and costs a few small reads.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

/// What one poll read: each file's bytes, or why it could not be read.
pub(crate) type Snapshot = Vec<Result<Vec<u8>, FileError>>;

/// A file the reload loops could not read. The I/O error is kept as text: snapshots are
/// compared with the previous one and cloned, and `io::Error` is neither.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FileError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("internal: empty snapshot")]
    EmptySnapshot,
    #[error("internal: missing snapshot entries")]
    MissingEntries,
}

pub(crate) struct FileWatch {
    paths: Vec<PathBuf>,
    last: Option<Snapshot>,
}

impl FileWatch {
    /// `initial` is what was already loaded at start, so the first poll reports nothing
    /// unless the files changed since.
    pub(crate) fn new(paths: Vec<PathBuf>, initial: Option<Snapshot>) -> Self {
        Self {
            paths,
            last: initial,
        }
    }

    /// Reads every file; returns the snapshot when it differs from the previous one.
    pub(crate) async fn poll(&mut self) -> Option<Snapshot> {
        let mut now = Vec::with_capacity(self.paths.len());
        for p in &self.paths {
            now.push(tokio::fs::read(p).await.map_err(|e| FileError::Read {
                path: p.display().to_string(),
                reason: e.to_string(),
            }));
        }
        if self.last.as_ref() == Some(&now) {
            return None;
        }
        self.last = Some(now.clone());
        Some(now)
    }
}

/// The reload loop of `--tls-cert`/`--tls-key`, `--config` and `--client-ca`: every
/// `interval` (a late tick is delayed, not bunched), reads `paths` and hands `on_change` each
/// snapshot that differs from the previous one (the first from `initial`, what was loaded at
/// start); returns when `shutdown` turns true.
pub(crate) async fn poll_loop(
    paths: Vec<PathBuf>,
    initial: Snapshot,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut on_change: impl FnMut(Snapshot),
) {
    let mut watch = FileWatch::new(paths, Some(initial));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if let Some(snapshot) = watch.poll().await {
            on_change(snapshot);
        }
    }
}

/// The bytes of a one-file snapshot, or the read error.
pub(crate) fn only_file(snapshot: Snapshot) -> Result<Vec<u8>, FileError> {
    snapshot
        .into_iter()
        .next()
        .unwrap_or(Err(FileError::EmptySnapshot))
}
