//! The warnings of one review, capped while they are written: past [`MAX_WARNINGS`] only a
//! count is kept, and the answer carries the first ones and a line that counts the rest.
//! Folding here rather than at encoding bounds the memory a review can spend on warnings:
//! one missing container name over hundreds of replicated jobs used to keep one string per
//! replicated job until the answer was encoded (README: Opting in, "Bounds").

use std::collections::HashSet;

/// Warnings beyond this are folded into one line: the API server and kubectl show them all,
/// and a JobSet with hundreds of user-set containers should not produce a wall of text.
pub const MAX_WARNINGS: usize = 16;

/// The warnings of one review: the first [`MAX_WARNINGS`] and the count of all.
#[derive(Debug, Default)]
pub struct Warnings {
    kept: Vec<String>,
    total: usize,
    /// Texts given to [`Self::push_once`]; one per distinct node answer, so at most one per
    /// replicated job.
    once: HashSet<String>,
}

impl Warnings {
    pub fn push(&mut self, w: String) {
        self.total += 1;
        if self.kept.len() < MAX_WARNINGS {
            self.kept.push(w);
        }
    }

    /// Pushes `w` unless this review already has the same text from this method.
    pub fn push_once(&mut self, w: String) {
        if !self.once.contains(&w) {
            self.once.insert(w.clone());
            self.push(w);
        }
    }

    /// The warnings as sent: at most [`MAX_WARNINGS`], the last one counting the rest
    /// (`... and N more warnings`).
    pub fn finish(mut self) -> Vec<String> {
        if self.total > MAX_WARNINGS {
            let more = self.total - (MAX_WARNINGS - 1);
            self.kept.truncate(MAX_WARNINGS - 1);
            self.kept.push(format!("... and {more} more warnings"));
        }
        self.kept
    }
}

impl From<Vec<String>> for Warnings {
    fn from(list: Vec<String>) -> Self {
        let mut w = Self::default();
        for item in list {
            w.push(item);
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_cap_only_the_count_is_kept() {
        let mut w = Warnings::default();
        for i in 0..100_000 {
            w.push(format!("w{i}"));
        }
        assert_eq!(w.kept.len(), MAX_WARNINGS, "stored past the cap");
        let out = w.finish();
        assert_eq!(out.len(), MAX_WARNINGS);
        assert_eq!(out[14], "w14");
        assert_eq!(out[15], "... and 99985 more warnings");
    }

    #[test]
    fn up_to_the_cap_nothing_is_folded() {
        let list: Vec<String> = (0..MAX_WARNINGS).map(|i| format!("w{i}")).collect();
        assert_eq!(Warnings::from(list.clone()).finish(), list);
        let mut w = Warnings::default();
        w.push_once("a".into());
        w.push_once("a".into());
        w.push("a".into());
        assert_eq!(w.finish(), ["a", "a"]);
    }
}
