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

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

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

/// The cluster's nodes at one moment, with the cluster-wide counts precomputed. A snapshot
/// never changes (the watch builds a new one) and keeps no state of its own: the answers for
/// `nodeSelector`s are kept per review ([`Memo`]), so that one review with ever new selectors
/// cannot fill a memo that every other review shares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nodes {
    nodes: Vec<Arc<NodeInfo>>,
    schedulable: usize,
    declaring: usize,
}

/// The node answers of one review, per `nodeSelector`: a JobSet whose replicated jobs share a
/// node pool pays one pass over the nodes for all of them (a pass over 5,000 nodes took
/// ~0.5 ms, docs/BENCHMARKS.md "Node awareness"). It holds at most one answer per replicated
/// job the review plans, which the bound on those ([`super::applied::MAX_REPLICATED_JOBS`])
/// bounds, and it ends with the review.
#[derive(Debug, Default)]
pub struct Memo {
    answers: RefCell<HashMap<Vec<(String, String)>, Support>>,
}

impl Memo {
    /// [`Nodes::support`], each distinct selector worked out once.
    pub fn support(&self, nodes: &Nodes, node_selector: &[(&str, &str)]) -> Support {
        if node_selector.is_empty() {
            return nodes.support(node_selector);
        }
        let key: Vec<(String, String)> = node_selector
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let kept = self.answers.borrow().get(&key).copied();
        if let Some(s) = kept {
            return s;
        }
        let found = nodes.support(node_selector);
        self.answers.borrow_mut().insert(key, found);
        found
    }

    /// Selectors worked out so far.
    pub fn len(&self) -> usize {
        self.answers.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    /// The nodes a template with this `nodeSelector` can land on (see the module doc). The
    /// cluster-wide answer costs nothing; a selector costs one pass over the nodes.
    pub fn support(&self, node_selector: &[(&str, &str)]) -> Support {
        let cluster = Support {
            nodes: self.schedulable,
            declaring: self.declaring,
            pool: false,
        };
        if node_selector.is_empty() {
            return cluster;
        }
        self.scan(node_selector, cluster)
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
    fn a_review_works_out_each_selector_once_and_keeps_nothing_in_the_snapshot() {
        let nodes = Nodes::new(vec![node("gpu", true, false), node("cpu", false, false)]);
        let shared = nodes.clone();
        let memo = Memo::default();
        for i in 0..1000 {
            let v = if i % 2 == 0 { "gpu" } else { "cpu" };
            let s = memo.support(&nodes, &[("pool", v)]);
            assert_eq!(s, nodes.support(&[("pool", v)]));
        }
        assert_eq!(memo.len(), 2, "one answer per distinct selector");
        for i in 0..1000 {
            let v = i.to_string();
            memo.support(&nodes, &[("pool", &v)]);
        }
        assert_eq!(memo.len(), 1002);
        drop(memo);
        // The snapshot the other reviews share is as it was: nothing of this review is in it.
        assert_eq!(nodes, shared);
        assert_eq!(Memo::default().support(&nodes, &[]), nodes.support(&[]));
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
