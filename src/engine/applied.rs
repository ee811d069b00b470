//! The `restart.jobset.dev/applied` summary: what was injected, bounded, and the count of
//! containers a review changes.

use std::sync::Arc;

use serde_json::{Value, json};

use super::annotations::APPLIED;
use super::patch::Patch;
use super::view::Meta;

/// At most this many containers (regular and sidecar) get restart rules from one review; a
/// JobSet that would need more is refused (422), a pod is left unchanged with a warning.
/// Every changed container costs about 300 bytes of patch, so an unbounded hostile JobSet
/// made answers and memory many times the Deployment's limit; real JobSets need at most a few
/// hundred. See docs/BENCHMARKS.md (Hostile-size JobSets).
pub const MAX_CHANGED_CONTAINERS: usize = 1024;

/// At most this many replicated jobs of one JobSet get in-place restart; a JobSet over it is
/// refused (422) before any replicated job is planned. Each costs a resolution and, where
/// nodes are known, a pass over them (~0.5 ms at 5,000 nodes, docs/BENCHMARKS.md "Node
/// awareness"); real JobSets have a handful, and the generated admission policies stay
/// within the API server's CEL cost limit there (257 replicated jobs with 256 enabled exceeded it in tests/e2e/differential; 136 passed).
pub const MAX_REPLICATED_JOBS: usize = 128;

/// At most this many containers and init containers in the pod templates of the replicated
/// jobs that get in-place restart; a JobSet over it is refused (422) before any container is
/// read. Four times [`MAX_CHANGED_CONTAINERS`], so that a JobSet whose containers mostly set
/// their own rules, or are not named, still fits.
pub const MAX_CONTAINERS: usize = 4 * MAX_CHANGED_CONTAINERS;

/// The `restart.jobset.dev/applied` annotation (and the audit annotation) is cut to at most
/// this many bytes, ending with `, ... and N more` when cut. The API server refuses an
/// object whose annotations total more than 256 KiB, and the summary shares that with the
/// user's own (`kubectl apply` keeps a whole copy of the object in one). The cut depends
/// only on the entries, which follow the containers' order, so reviewing the webhook's own
/// output yields the same text and no patch.
pub const MAX_APPLIED_BYTES: usize = 16 * 1024;

/// Room kept in [`MAX_APPLIED_BYTES`] for `, ... and N more` (35 bytes for the largest N).
pub const APPLIED_TAIL_BYTES: usize = 40;

/// The `applied` summary, written into one buffer: `rjob/container=Action:Op(codes), ...`,
/// at most [`MAX_APPLIED_BYTES`]; and the count of containers the patch changes.
#[derive(Default)]
pub(super) struct Applied {
    text: String,
    /// Entries, listed in `text` or cut.
    pub(super) entries: usize,
    /// Entries left out of `text` (every one after the first that did not fit).
    cut: usize,
    /// Containers that get rules (the other entries already carried them).
    pub(super) changed: usize,
}

impl Applied {
    pub(super) fn add(&mut self, rjob: Option<&str>, container: &str, rule: &str) {
        self.entries += 1;
        let separator = if self.text.is_empty() { 0 } else { 2 };
        let len = rjob.map_or(0, |r| r.len() + 1) + container.len() + 1 + rule.len();
        if self.cut > 0
            || self.text.len() + separator + len > MAX_APPLIED_BYTES - APPLIED_TAIL_BYTES
        {
            self.cut += 1;
            return;
        }
        if separator > 0 {
            self.text.push_str(", ");
        }
        if let Some(r) = rjob {
            self.text.push_str(r);
            self.text.push('/');
        }
        self.text.push_str(container);
        self.text.push('=');
        self.text.push_str(rule);
    }

    /// Counts one more container to change; `false` once past [`MAX_CHANGED_CONTAINERS`]:
    /// then nothing more is planned (the review is refused), only counted for the message.
    pub(super) fn change(&mut self) -> bool {
        self.changed += 1;
        self.changed <= MAX_CHANGED_CONTAINERS
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub(super) fn finish(self) -> String {
        match (self.cut, self.text.is_empty()) {
            (0, _) => self.text,
            (n, true) => format!("... and {n} more"),
            (n, false) => format!("{}, ... and {n} more", self.text),
        }
    }
}

/// Sets the `applied` annotation of an object with `metadata` to `summary`, creating
/// `annotations` (and `metadata`) as needed.
pub(super) fn add_applied(patch: &mut Patch, metadata: Option<&Meta<'_>>, summary: &str) {
    let annotations = metadata.and_then(|m| m.annotations.as_ref());
    let (tokens, value): (&[&str], Value) = match (metadata, annotations) {
        (_, Some(_)) => (&["metadata", "annotations", APPLIED], json!(summary)),
        (Some(_), None) => (&["metadata", "annotations"], json!({ APPLIED: summary })),
        (None, None) => (
            &["metadata"],
            json!({ "annotations": { APPLIED: summary } }),
        ),
    };
    patch.add(tokens.iter().copied(), Arc::new(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_entry_too_long_for_the_bound_is_counted() {
        let mut a = Applied::default();
        a.add(
            Some("r"),
            &"n".repeat(MAX_APPLIED_BYTES),
            "Restart:NotIn(0)",
        );
        a.add(Some("r"), "short", "Restart:NotIn(0)");
        assert!(!a.is_empty());
        assert_eq!(a.finish(), "... and 2 more");
        let mut a = Applied::default();
        a.add(None, "c", "Restart:In(1)");
        assert_eq!(a.finish(), "c=Restart:In(1)");
    }
}
