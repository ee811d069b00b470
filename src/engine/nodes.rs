//! Which nodes can run `RestartAllContainers` pods (KEP-5532): a node declares the feature
//! `RestartAllContainersOnContainerExits` in `status.declaredFeatures` when its kubelet has
//! the gate on; the scheduler places such pods only there, and a kubelet without it rejects
//! them. The webhook keeps a snapshot of the nodes ([`Nodes`], built by the cluster watch)
//! and the engine asks it, per pod template, how many of the nodes that template can land
//! on declare the feature ([`Nodes::support`]). Pure: data in, counts out.
//!
//! The nodes a template can land on: the schedulable (not cordoned) nodes whose labels
//! match the template's `nodeSelector` (a node pool). When the selector matches no node (a
//! pool scaled to zero, or one that does not exist yet), the cluster's schedulable nodes
//! stand in for it: the nodes that will join are unknown, and the rest of the cluster is
//! the best guess. Node affinity, taints and tolerations are not considered: they would
//! need the scheduler's full logic, and `nodeSelector` is how JobSets pick a pool.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// The name a node declares in `status.declaredFeatures` when its kubelet can restart all
/// containers of a pod in place.
pub const FEATURE: &str = "RestartAllContainersOnContainerExits";

/// One node, reduced to what the decision needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub labels: BTreeMap<String, String>,
    /// `spec.unschedulable` (cordoned): no new pod lands there.
    pub unschedulable: bool,
    /// `status.declaredFeatures` lists [`FEATURE`].
    pub declares: bool,
}

/// The cluster's nodes at one moment, with the cluster-wide counts precomputed.
///
/// A snapshot never changes (the watch builds a new one), so the answer for a
/// `nodeSelector` is kept: a pass over 5,000 nodes took ~0.5 ms, a kept answer a hash
/// lookup (docs/BENCHMARKS.md "Node awareness"). The snapshot is shared by every review, so
/// what one review may put in it is bounded: each review works out its selectors in its own
/// [`Memo`] and hands at most [`SHARED_PER_REVIEW`] of them to the snapshot, which keeps at
/// most [`MEMO`] and starts over when full. A review with thousands of new selectors thus
/// pays its own passes and cannot crowd out the pools the other reviews use.
#[derive(Debug, Default)]
pub struct Nodes {
    nodes: Vec<Arc<NodeInfo>>,
    schedulable: usize,
    declaring: usize,
    kept: Mutex<HashMap<Vec<(String, String)>, Support>>,
}

/// Selectors whose answer a snapshot keeps.
pub const MEMO: usize = 256;

/// New selectors one review may add to the answers its snapshot keeps: real JobSets pick a
/// node pool or two.
pub const SHARED_PER_REVIEW: usize = 4;

impl Clone for Nodes {
    fn clone(&self) -> Self {
        Self {
            nodes: self.nodes.clone(),
            schedulable: self.schedulable,
            declaring: self.declaring,
            kept: Mutex::default(),
        }
    }
}

impl PartialEq for Nodes {
    fn eq(&self, other: &Self) -> bool {
        self.nodes == other.nodes
    }
}

impl Eq for Nodes {}

/// The node answers of one review, per `nodeSelector`: a JobSet whose replicated jobs share a
/// node pool pays at most one pass over the nodes for all of them. It holds at most one answer
/// per replicated job the review plans, which the bound on those
/// ([`super::applied::MAX_REPLICATED_JOBS`]) bounds, and it ends with the review.
#[derive(Debug, Default)]
pub struct Memo {
    answers: RefCell<HashMap<Vec<(String, String)>, Support>>,
    /// Answers this review has handed to the shared snapshot.
    shared: Cell<usize>,
    /// Passes over the nodes this review paid.
    passes: Cell<usize>,
}

impl Memo {
    /// [`Nodes::support`], each distinct selector worked out once per review, from the
    /// snapshot's kept answers where it has one.
    pub fn support(&self, nodes: &Nodes, node_selector: &[(&str, &str)]) -> Support {
        if node_selector.is_empty() {
            return nodes.cluster();
        }
        let key: Vec<(String, String)> = node_selector
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let here = self.answers.borrow().get(&key).copied();
        if let Some(s) = here {
            return s;
        }
        let found = match nodes.kept_answer(&key) {
            Some(s) => s,
            None => {
                self.passes.set(self.passes.get() + 1);
                let s = nodes.support(node_selector);
                if self.shared.get() < SHARED_PER_REVIEW {
                    self.shared.set(self.shared.get() + 1);
                    nodes.keep(key.clone(), s);
                }
                s
            }
        };
        self.answers.borrow_mut().insert(key, found);
        found
    }

    /// Selectors worked out in this review.
    pub fn len(&self) -> usize {
        self.answers.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Passes over the nodes this review paid.
    pub fn passes(&self) -> usize {
        self.passes.get()
    }
}

/// How many nodes a pod template can land on, and how many of those declare [`FEATURE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Support {
    pub nodes: usize,
    pub declaring: usize,
    /// The counts are those of the nodes matching the template's `nodeSelector`.
    pub pool: bool,
}

impl Support {
    pub fn all(&self) -> bool {
        self.nodes > 0 && self.declaring == self.nodes
    }

    /// `3 of 4 schedulable nodes` or `0 of 2 schedulable nodes matching the pod template's
    /// nodeSelector`.
    pub fn describe(&self) -> String {
        format!(
            "{} of {} schedulable node{}{}",
            self.declaring,
            self.nodes,
            if self.nodes == 1 { "" } else { "s" },
            if self.pool {
                " matching the pod template's nodeSelector"
            } else {
                ""
            }
        )
    }
}

impl Nodes {
    pub fn new(nodes: Vec<Arc<NodeInfo>>) -> Self {
        let usable = || nodes.iter().filter(|n| !n.unschedulable);
        Self {
            schedulable: usable().count(),
            declaring: usable().filter(|n| n.declares).count(),
            nodes,
            kept: Mutex::default(),
        }
    }

    /// All nodes, cordoned ones included.
    pub fn total(&self) -> usize {
        self.nodes.len()
    }

    pub fn schedulable(&self) -> usize {
        self.schedulable
    }

    /// Schedulable nodes that declare [`FEATURE`].
    pub fn declaring(&self) -> usize {
        self.declaring
    }

    fn cluster(&self) -> Support {
        Support {
            nodes: self.schedulable,
            declaring: self.declaring,
            pool: false,
        }
    }

    /// The nodes a template with this `nodeSelector` can land on (see the module doc). The
    /// cluster-wide answer costs nothing; a selector costs one pass over the nodes (reviews
    /// ask through their [`Memo`], which keeps answers).
    pub fn support(&self, node_selector: &[(&str, &str)]) -> Support {
        let cluster = self.cluster();
        if node_selector.is_empty() {
            return cluster;
        }
        self.scan(node_selector, cluster)
    }

    /// The kept answer for a selector.
    fn kept_answer(&self, key: &[(String, String)]) -> Option<Support> {
        // A panic cannot leave the map half-written; a poisoned lock is still usable.
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    /// Keeps an answer; a full map starts over, so that selectors no review uses any more
    /// give way to those in use.
    fn keep(&self, key: Vec<(String, String)>, s: Support) {
        let mut m = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MEMO {
            m.clear();
        }
        m.insert(key, s);
    }

    fn scan(&self, node_selector: &[(&str, &str)], cluster: Support) -> Support {
        let (mut nodes, mut declaring) = (0, 0);
        for n in self.nodes.iter().filter(|n| !n.unschedulable) {
            let matches = node_selector
                .iter()
                .all(|(k, v)| n.labels.get(*k).map(String::as_str) == Some(*v));
            if matches {
                nodes += 1;
                declaring += usize::from(n.declares);
            }
        }
        if nodes == 0 {
            return cluster;
        }
        Support {
            nodes,
            declaring,
            pool: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(pool: &str, declares: bool, unschedulable: bool) -> Arc<NodeInfo> {
        Arc::new(NodeInfo {
            labels: BTreeMap::from([("pool".to_owned(), pool.to_owned())]),
            unschedulable,
            declares,
        })
    }

    #[test]
    fn counts_and_pools() {
        let nodes = Nodes::new(vec![
            node("gpu", true, false),
            node("gpu", true, false),
            node("cpu", false, false),
            node("cpu", false, true),
        ]);
        assert_eq!(
            (nodes.total(), nodes.schedulable(), nodes.declaring()),
            (4, 3, 2)
        );
        let all = nodes.support(&[]);
        assert_eq!((all.nodes, all.declaring, all.pool), (3, 2, false));
        assert!(!all.all());
        assert_eq!(all.describe(), "2 of 3 schedulable nodes");

        let gpu = nodes.support(&[("pool", "gpu")]);
        assert!(gpu.all() && gpu.pool, "{gpu:?}");
        let cpu = nodes.support(&[("pool", "cpu")]);
        assert_eq!(
            (cpu.nodes, cpu.declaring),
            (1, 0),
            "the cordoned one is out"
        );
        assert_eq!(
            cpu.describe(),
            "0 of 1 schedulable node matching the pod template's nodeSelector"
        );
        // every key must match
        let none = nodes.support(&[("pool", "gpu"), ("zone", "a")]);
        assert_eq!(none, all, "no node in the pool: the cluster stands in");
        assert_eq!(nodes.support(&[("pool", "tpu")]), all);
    }

    #[test]
    fn a_review_pays_each_selector_once_and_hands_few_to_the_snapshot() {
        let nodes = Nodes::new(vec![node("gpu", true, false), node("cpu", false, false)]);
        let memo = Memo::default();
        for i in 0..1000 {
            let v = if i % 2 == 0 { "gpu" } else { "cpu" };
            assert_eq!(
                memo.support(&nodes, &[("pool", v)]),
                nodes.support(&[("pool", v)])
            );
        }
        assert_eq!(
            (memo.len(), memo.passes()),
            (2, 2),
            "one pass per distinct selector"
        );
        // A review with ever new selectors pays its own passes and leaves at most
        // SHARED_PER_REVIEW of them in the snapshot that every review shares.
        let junk = Memo::default();
        for i in 0..1000 {
            let v = i.to_string();
            junk.support(&nodes, &[("pool", &v)]);
        }
        assert_eq!(junk.passes(), 1000);
        let kept = nodes.kept.lock().unwrap().len();
        assert_eq!(
            kept,
            2 + SHARED_PER_REVIEW,
            "the snapshot keeps only what reviews hand it"
        );
        // The next review finds the pools in use kept: no pass.
        let next = Memo::default();
        assert!(next.support(&nodes, &[("pool", "gpu")]).all());
        assert_eq!(next.passes(), 0);
        // Many reviews can fill the snapshot; it starts over instead of refusing new ones.
        for r in 0..MEMO {
            let m = Memo::default();
            let v = format!("r{r}");
            m.support(&nodes, &[("pool", &v)]);
        }
        assert!(nodes.kept.lock().unwrap().len() <= MEMO);
        assert_eq!(nodes.clone(), nodes);
    }

    #[test]
    fn no_nodes() {
        let nodes = Nodes::new(Vec::new());
        let s = nodes.support(&[("pool", "gpu")]);
        assert_eq!((s.nodes, s.declaring, s.pool), (0, 0, false));
        assert!(!s.all());
        let cordoned = Nodes::new(vec![node("gpu", true, true)]);
        assert_eq!(cordoned.support(&[]).nodes, 0);
    }
}
