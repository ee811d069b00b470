//! Watch-backed caches: a `kube::runtime::watcher` stream (list, then watch, resumed or
//! re-listed by the watcher after errors, with its default backoff) applied to a small map
//! of our own. The map holds only the value the request path needs (a namespace's labels,
//! a JobSet's restart annotations), keyed by namespace and name, so lookups take two
//! borrowed `&str`s and allocate nothing.
//!
//! Semantics follow `kube::runtime::reflector::Store`: `Init` starts a new buffer,
//! `InitApply` fills it, `InitDone` swaps it in whole (objects deleted while the watch was
//! down disappear), `Apply`/`Delete` change one entry. The cache counts as synced from the
//! first `InitDone` on; after that a re-list keeps serving the previous contents until the
//! new list is complete.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{Stream, StreamExt as _};
use kube::runtime::watcher;
use tracing::{info, warn};

type Map<V> = HashMap<String, HashMap<String, V>>;

/// One cache: namespace → name → value. Cluster-scoped objects use the namespace `""`.
pub struct Cache<V> {
    name: &'static str,
    map: RwLock<Map<V>>,
    /// The list being received (between `Init` and `InitDone`).
    buffer: Mutex<Option<Map<V>>>,
    synced: AtomicBool,
    len: AtomicU64,
    /// The last watch error, cleared by the next successful event; shown on `/readyz`.
    last_error: Mutex<Option<String>>,
    /// Watch errors since start.
    errors: AtomicU64,
    /// The last watch error was an answer of the API server (a `Status`, e.g. 403), not a
    /// failure to reach it: the server is there, it refused.
    last_error_answered: AtomicBool,
    /// Unix seconds when the last (re)list completed; 0 before the first.
    listed_at: AtomicU64,
    /// Unix seconds of the first error since the watch last worked; 0 while it works.
    failing_since: AtomicU64,
}

impl<V: Clone> Cache<V> {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            map: RwLock::new(HashMap::new()),
            buffer: Mutex::new(None),
            synced: AtomicBool::new(false),
            len: AtomicU64::new(0),
            last_error: Mutex::new(None),
            errors: AtomicU64::new(0),
            last_error_answered: AtomicBool::new(false),
            listed_at: AtomicU64::new(0),
            failing_since: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<V> {
        self.read().get(namespace)?.get(name).cloned()
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> Vec<V> {
        self.read()
            .values()
            .flat_map(|names| names.values().cloned())
            .collect()
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// The watch is failing and its last error came from the API server itself (it answered
    /// with a `Status`: RBAC forbids the resource, the API is not served), as opposed to not
    /// reaching the API server at all.
    pub fn refused_by_api_server(&self) -> bool {
        self.last_error().is_some() && self.last_error_answered.load(Ordering::Acquire)
    }

    /// Unix seconds when the last (re)list completed; 0 before the first.
    pub fn listed_at(&self) -> u64 {
        self.listed_at.load(Ordering::Relaxed)
    }

    /// Unix seconds of the first error since the watch last delivered an event; 0 while it
    /// works. After the first list the cache keeps serving what it has, so this (not
    /// readiness) is how staleness shows: `jobset_restart_webhook_cluster_cache_failing_since_timestamp_seconds`.
    pub fn failing_since(&self) -> u64 {
        self.failing_since.load(Ordering::Relaxed)
    }

    /// Forgets everything (the watch was switched off): not synced, empty. Error counts stay.
    pub fn reset(&self) {
        *lock(&self.buffer) = None;
        *self.write() = HashMap::new();
        self.len.store(0, Ordering::Relaxed);
        self.synced.store(false, Ordering::Release);
        self.listed_at.store(0, Ordering::Relaxed);
        self.failing_since.store(0, Ordering::Relaxed);
        lock(&self.last_error).take();
    }

    /// A line for `/readyz` and logs, e.g. `synced, 12 objects`.
    pub fn describe(&self) -> String {
        let state = if self.synced() { "synced" } else { "syncing" };
        let mut s = format!("{} {state}, {} objects", self.name, self.len());
        if let Some(e) = self.last_error() {
            s.push_str(&format!(" (last watch error: {e})"));
        }
        s
    }

    /// Applies one watcher event. `entry` extracts (namespace, name, value) from an object;
    /// an object it cannot key (no name) is ignored.
    pub fn apply<K>(
        &self,
        event: watcher::Event<K>,
        entry: impl Fn(K) -> Option<(String, String, V)>,
    ) {
        match event {
            watcher::Event::Init => {
                *lock(&self.buffer) = Some(HashMap::new());
            }
            watcher::Event::InitApply(obj) => {
                if let Some((ns, name, v)) = entry(obj) {
                    let mut buf = lock(&self.buffer);
                    // An InitApply without Init does not happen; be lenient anyway.
                    let map = buf.get_or_insert_with(HashMap::new);
                    map.entry(ns).or_default().insert(name, v);
                }
            }
            watcher::Event::InitDone => {
                let fresh = lock(&self.buffer).take().unwrap_or_default();
                let n = count(&fresh);
                *self.write() = fresh;
                self.len.store(n, Ordering::Relaxed);
                self.listed_at.store(unix_now(), Ordering::Relaxed);
                self.synced.store(true, Ordering::Release);
            }
            watcher::Event::Apply(obj) => {
                if let Some((ns, name, v)) = entry(obj) {
                    let mut map = self.write();
                    if map.entry(ns).or_default().insert(name, v).is_none() {
                        self.len.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            watcher::Event::Delete(obj) => {
                if let Some((ns, name, _)) = entry(obj) {
                    let mut map = self.write();
                    if let Some(names) = map.get_mut(&ns) {
                        if names.remove(&name).is_some() {
                            self.len.fetch_sub(1, Ordering::Relaxed);
                        }
                        if names.is_empty() {
                            map.remove(&ns);
                        }
                    }
                }
            }
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Map<V>> {
        // A panic while holding the lock cannot leave the map half-written (each write is
        // one insert, remove or swap), so a poisoned lock is still usable.
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Map<V>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a watch error; `answered`: the API server answered (see
    /// [`Self::refused_by_api_server`]). Returns whether the text differs from the last one.
    pub(super) fn record_error(&self, e: String, answered: bool) -> bool {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.last_error_answered.store(answered, Ordering::Release);
        let _ = self.failing_since.compare_exchange(
            0,
            unix_now().max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let mut last = lock(&self.last_error);
        let changed = last.as_deref() != Some(e.as_str());
        *last = Some(e);
        changed
    }

    fn clear_error(&self) -> bool {
        self.failing_since.store(0, Ordering::Relaxed);
        lock(&self.last_error).take().is_some()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn count<V>(map: &Map<V>) -> u64 {
    map.values().map(|m| m.len() as u64).sum()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Repeated identical watch errors are logged at most this often.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Drives a watcher stream into `cache` until the stream ends (it does not: the watcher
/// recovers from every error). Errors are logged (a new error at once, a repeated one once
/// a minute) and kept for `/readyz`; the watcher's own backoff spaces the retries.
pub async fn run<K, V, S>(
    cache: &Cache<V>,
    stream: S,
    entry: impl Fn(K) -> Option<(String, String, V)>,
) where
    V: Clone,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    run_then(cache, stream, entry, |_| {}).await;
}

/// Which kind of watcher event was just applied (for [`run_then`]'s hook).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Init,
    InitApply,
    InitDone,
    Apply,
    Delete,
}

/// [`run`], calling `after` once each event has been applied to the cache (to keep
/// something derived from the whole cache up to date).
pub async fn run_then<K, V, S>(
    cache: &Cache<V>,
    stream: S,
    entry: impl Fn(K) -> Option<(String, String, V)>,
    mut after: impl FnMut(Applied),
) where
    V: Clone,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut last_logged: Option<Instant> = None;
    let mut logged_synced = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                let kind = match &event {
                    watcher::Event::Init => Applied::Init,
                    watcher::Event::InitApply(_) => Applied::InitApply,
                    watcher::Event::InitDone => Applied::InitDone,
                    watcher::Event::Apply(_) => Applied::Apply,
                    watcher::Event::Delete(_) => Applied::Delete,
                };
                let done = kind == Applied::InitDone;
                cache.apply(event, &entry);
                after(kind);
                if cache.clear_error() {
                    info!(cache = cache.name(), "watch recovered");
                    last_logged = None;
                }
                if done && !logged_synced {
                    logged_synced = true;
                    info!(cache = cache.name(), objects = cache.len(), "cache synced");
                }
            }
            Err(e) => {
                let text = error_text(&e);
                let changed = cache.record_error(text.clone(), answered(&e));
                if changed || last_logged.is_none_or(|t| t.elapsed() >= ERROR_LOG_INTERVAL) {
                    warn!(cache = cache.name(), error = %text, "watch failed; retrying with backoff");
                    last_logged = Some(Instant::now());
                }
            }
        }
    }
}

/// The `Status` the API server answered with, when the error is one.
fn status(e: &watcher::Error) -> Option<&kube::core::Status> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.as_ref()),
        watcher::Error::WatchError(s) => Some(s.as_ref()),
        _ => None,
    }
}

/// The API server answered (a `Status`), as opposed to a connection, TLS or timeout error.
fn answered(e: &watcher::Error) -> bool {
    status(e).is_some()
}

/// A watch error in one line, with a hint for the usual causes.
fn error_text(e: &watcher::Error) -> String {
    match status(e) {
        Some(s) if s.code == 404 => {
            format!("{e}: the API is not served (for JobSets: is the JobSet CRD installed?)")
        }
        Some(s) if s.code == 403 => format!("{e}: RBAC forbids it (see the webhook's ClusterRole)"),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use watcher::Event;

    type Obj = (&'static str, &'static str, u32);

    fn entry(o: Obj) -> Option<(String, String, u32)> {
        if o.1.is_empty() {
            None
        } else {
            Some((o.0.to_owned(), o.1.to_owned(), o.2))
        }
    }

    #[test]
    fn list_then_watch() {
        let c: Cache<u32> = Cache::new("test");
        assert!(!c.synced());
        c.apply(Event::Init, entry);
        c.apply(Event::InitApply(("a", "x", 1)), entry);
        c.apply(Event::InitApply(("b", "x", 2)), entry);
        c.apply(Event::InitApply(("b", "", 9)), entry);
        assert_eq!(c.get("a", "x"), None, "nothing is visible before InitDone");
        assert!(!c.synced());
        c.apply(Event::InitDone, entry);
        assert!(c.synced());
        assert_eq!(
            (c.get("a", "x"), c.get("b", "x"), c.len()),
            (Some(1), Some(2), 2)
        );

        c.apply(Event::Apply(("a", "y", 3)), entry);
        c.apply(Event::Apply(("a", "x", 4)), entry);
        assert_eq!(
            (c.get("a", "x"), c.get("a", "y"), c.len()),
            (Some(4), Some(3), 3)
        );
        c.apply(Event::Delete(("a", "x", 4)), entry);
        c.apply(Event::Delete(("a", "nope", 0)), entry);
        c.apply(Event::Delete(("zz", "nope", 0)), entry);
        assert_eq!((c.get("a", "x"), c.len()), (None, 2));
        c.apply(Event::Delete(("a", "y", 3)), entry);
        assert_eq!(c.len(), 1);
        assert!(c.read().get("a").is_none(), "empty namespaces are dropped");
    }

    #[test]
    fn relist_replaces_whole_and_keeps_serving_meanwhile() {
        let c: Cache<u32> = Cache::new("test");
        c.apply(Event::Init, entry);
        c.apply(Event::InitApply(("a", "gone", 1)), entry);
        c.apply(Event::InitApply(("a", "stays", 1)), entry);
        c.apply(Event::InitDone, entry);
        // the watch broke and the watcher re-lists
        c.apply(Event::Init, entry);
        c.apply(Event::InitApply(("a", "stays", 2)), entry);
        assert_eq!(
            c.get("a", "gone"),
            Some(1),
            "old contents serve until the list is done"
        );
        assert!(c.synced());
        c.apply(Event::InitDone, entry);
        assert_eq!(
            (c.get("a", "gone"), c.get("a", "stays"), c.len()),
            (None, Some(2), 1)
        );
    }

    #[test]
    fn errors_are_kept_until_the_next_event() {
        let c: Cache<u32> = Cache::new("test");
        assert!(c.record_error("boom".into(), false));
        assert!(
            !c.record_error("boom".into(), false),
            "same error: not a change"
        );
        assert!(!c.refused_by_api_server());
        let since = c.failing_since();
        assert!(since > 0);
        assert!(c.record_error("other".into(), true));
        assert!(c.refused_by_api_server());
        assert_eq!(c.failing_since(), since, "failing since the first error");
        assert_eq!(c.errors(), 3);
        assert!(
            c.describe()
                .contains("syncing, 0 objects (last watch error: other)"),
            "{}",
            c.describe()
        );
        assert!(c.clear_error());
        assert!(!c.clear_error());
        assert_eq!(c.failing_since(), 0);
        assert!(!c.refused_by_api_server());
    }

    #[test]
    fn reset_forgets_the_contents() {
        let c: Cache<u32> = Cache::new("test");
        c.apply(Event::Init, entry);
        c.apply(Event::InitApply(("a", "x", 1)), entry);
        c.apply(Event::InitDone, entry);
        assert!(c.synced() && c.listed_at() > 0);
        c.reset();
        assert!(!c.synced());
        assert_eq!((c.get("a", "x"), c.len(), c.listed_at()), (None, 0, 0));
    }

    #[tokio::test]
    async fn run_drives_a_stream() {
        let c: Cache<u32> = Cache::new("test");
        let events: Vec<Result<Event<Obj>, watcher::Error>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(("a", "x", 1))),
            Err(watcher::Error::NoResourceVersion),
            Ok(Event::InitDone),
            Ok(Event::Apply(("a", "y", 2))),
        ];
        run(&c, futures_util::stream::iter(events), entry).await;
        assert!(c.synced());
        assert_eq!(c.len(), 2);
        assert_eq!(c.errors(), 1);
        assert_eq!(c.last_error(), None);
    }
}
