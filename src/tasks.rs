//! Background tasks that must keep running for the process's life (the caches' watches, the
//! capability probe loop, the config and certificate reloaders), supervised: a task that
//! returns or panics is started again after a backoff, the restart is logged and counted in
//! `jobset_restart_webhook_background_task_restarts_total{task=...}` (every task's series
//! exists from its start, at 0, so an alert on `increase(...) > 0` sees the first restart).
//! Without this a panic in a watch would stop it for good while `/readyz` stayed green.
//!
//! `serve` makes one [`Tasks`], hands it to the cluster side and the server, and registers it
//! as a metrics collector.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::error;

/// The first restart waits this long; each further one twice as long as the last.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Restarts are never further apart than this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A task that ran this long before ending starts over at [`FIRST_BACKOFF`].
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The supervisor: spawns tasks and counts their restarts (cheap to clone; clones share the
/// counts).
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    restarts: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

/// Aborts the supervised run when the supervisor itself is aborted or dropped, so that
/// stopping a supervised task (the JobSet watch when the pod target is switched off) stops
/// the work, not only the loop around it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Restarts of `task` so far.
    pub fn restarts(&self, task: &str) -> u64 {
        self.lock().get(task).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, u64>> {
        // A counter map cannot be left half-updated by a panic; a poisoned lock still works.
        self.restarts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `make()` on the current runtime for the process's life: whenever the future it
    /// returns ends (returns or panics), it is made and started again. Aborting the returned
    /// handle stops both the supervisor and the current run.
    pub fn spawn<F, Fut>(&self, task: &'static str, make: F) -> JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn_until(task, None, make)
    }

    /// [`Tasks::spawn`] for a task that ends by itself at shutdown: once `stop` is `true`, an
    /// ending run is not restarted.
    pub fn spawn_until<F, Fut>(
        &self,
        task: &'static str,
        stop: Option<watch::Receiver<bool>>,
        mut make: F,
    ) -> JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.lock().entry(task).or_insert(0);
        let tasks = self.clone();
        tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let started = Instant::now();
                // The run is its own tokio task, so a panic in it is caught by tokio (as a
                // `JoinError`) without taking the supervisor along.
                let mut run = AbortOnDrop(tokio::spawn(make()));
                let result = (&mut run.0).await;
                if stop.as_ref().is_some_and(|s| *s.borrow()) {
                    return;
                }
                let how = match &result {
                    Ok(()) => "returned".to_owned(),
                    Err(e) if e.is_panic() => "panicked".to_owned(),
                    Err(e) => format!("was stopped ({e})"),
                };
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = FIRST_BACKOFF;
                }
                *tasks.lock().entry(task).or_insert(0) += 1;
                error!(
                    task,
                    after_seconds = started.elapsed().as_secs(),
                    restart_in = ?backoff,
                    "background task {how}; restarting it"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: &'static str,
}

impl Collector for Tasks {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts: Vec<(&'static str, u64)> = self.lock().iter().map(|(k, v)| (*k, *v)).collect();
        let counter = ConstCounter::new(0u64);
        let mut e = encoder.encode_descriptor(
            "background_task_restarts",
            "Restarts of a background task (watch, probe loop, reloader) after it returned or \
             panicked; it is started again after a backoff of 1 s doubling to 30 s",
            None,
            counter.metric_type(),
        )?;
        for (task, n) in counts {
            ConstCounter::new(n).encode(e.encode_family(&TaskLabels { task })?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A task that panics on its first run is started again (after the first backoff, 1 s),
    /// counted, and runs on.
    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_counted() {
        let tasks = Tasks::new();
        let runs = Arc::new(AtomicU32::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let r = runs.clone();
        let handle = tasks.spawn("flaky", move || {
            let run = r.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            async move {
                if run == 0 {
                    panic!("first run fails");
                }
                let _ = tx.send(run);
                std::future::pending::<()>().await;
            }
        });
        assert_eq!(rx.recv().await, Some(1), "the second run started");
        assert_eq!(tasks.restarts("flaky"), 1);
        assert_eq!(runs.load(Ordering::SeqCst), 2);

        let mut registry = Registry::with_prefix("jobset_restart_webhook");
        registry.register_collector(Box::new(tasks.clone()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "jobset_restart_webhook_background_task_restarts_total{task=\"flaky\"} 1"
            ),
            "{text}"
        );

        // Aborting the supervisor stops the run too.
        handle.abort();
        let _ = handle.await;
        tokio::task::yield_now().await;
        assert_eq!(
            Arc::strong_count(&runs),
            1,
            "the run and its closure were dropped"
        );
    }

    /// A task that returns is restarted after a backoff; once `stop` is set, a returning
    /// task stays stopped.
    #[tokio::test]
    async fn returning_tasks_restart_until_shutdown() {
        let tasks = Tasks::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let handle = tasks.spawn_until("reloader", Some(stop_rx), move || {
            r.fetch_add(1, Ordering::SeqCst);
            async {}
        });
        // Runs at 0 s and 1 s (backoff 1 s); the next would be at 3 s.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(tasks.restarts("reloader"), 2);
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("the supervisor ends at shutdown")
            .unwrap();
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "the last run ended at shutdown"
        );
        assert_eq!(tasks.restarts("reloader"), 2);
        assert_eq!(tasks.restarts("never-started"), 0);
    }
}
