//! Polling files for changes by content. Kubernetes updates Secret and ConfigMap volumes by
//! swapping a `..data` symlink, which inotify reports awkwardly (controller-runtime re-adds its
//! watch on Remove/Chmod); reading the files every few seconds and comparing bytes is simple,
//! cannot miss an update, and costs a few small reads.

use std::path::PathBuf;

/// What one poll read: each file's bytes, or the read error's text.
pub(crate) type Snapshot = Vec<Result<Vec<u8>, String>>;

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
            now.push(
                tokio::fs::read(p)
                    .await
                    .map_err(|e| format!("reading {}: {e}", p.display())),
            );
        }
        if self.last.as_ref() == Some(&now) {
            return None;
        }
        self.last = Some(now.clone());
        Some(now)
    }
}
