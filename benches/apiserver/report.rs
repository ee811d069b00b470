//! The markdown tables of the JobSet-creates runs.

use std::fmt::Write as _;
use std::time::Duration;

use testkit::stats::median;

use crate::load::Shape;
use crate::metrics::{Admission, PLUGINS};
use crate::modes::Mode;

/// One JobSet-creates run.
pub struct Run {
    pub mode: Mode,
    pub load: String,
    pub rate: f64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub post: String,
    pub post_mean_ms: f64,
    pub webhooks: String,
    pub applied: bool,
    pub admission: Admission,
}

/// Prints the two tables of one shape's runs and the ratios of the medians.
pub fn report_creates(
    out: &mut String,
    shape: Shape,
    secs: Duration,
    conns: usize,
    first: usize,
    runs: &[Run],
) {
    let order: Vec<&str> = runs.iter().map(|r| r.mode.label()).collect();
    let _ = writeln!(
        out,
        "### JobSet creates, {} replicated job(s) x {} container(s) ({conns} clients, {} s per \
         run, opted-in suspended JobSets, order {})\n",
        shape.rjobs,
        shape.containers,
        secs.as_secs(),
        order.join(" / ")
    );
    out.push_str("| run | admission of ours | load (1 min) | creates/s | client p50 / p99 ms | apiserver POST jobsets: mean / p50 / p99 ms (count) | admission webhooks called, mean ms (calls) |\n|---|---|---|---|---|---|---|\n");
    for (i, r) in runs.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {}{} | {} | {:.1}{} | {:.1} / {:.1} | {} | {} |",
            first + i,
            r.mode.label(),
            if r.applied == (r.mode != Mode::None) {
                ""
            } else {
                " (**applied annotation not as expected**)"
            },
            r.load,
            r.rate,
            if r.errors > 0 {
                format!(" ({} errors)", r.errors)
            } else {
                String::new()
            },
            r.p50_ms,
            r.p99_ms,
            r.post,
            r.webhooks,
        );
    }
    let _ = writeln!(
        out,
        "\nAdmission inside kube-apiserver, ms per JobSet created (sum of the histogram over the \
         run / JobSets created; the phases and plugins also time the other objects created \
         meanwhile, e.g. the controller's Jobs and Events, which no admission of ours matches):\n"
    );
    out.push_str("| run | admission of ours | mutating phase | MAP plugin | MAW plugin | validating phase | VAP plugin | VAW plugin | MAP check: mean ms (evaluations per JobSet) |\n|---|---|---|---|---|---|---|---|---|\n");
    for (i, r) in runs.iter().enumerate() {
        let a = &r.admission;
        let per = |(sum, _): (f64, f64)| {
            if a.created > 0.0 {
                format!("{:.2}", sum / a.created * 1e3)
            } else {
                "-".to_owned()
            }
        };
        let check = |(sum, count): (f64, f64)| {
            if count > 0.0 {
                format!("{:.2} ({:.1})", sum / count * 1e3, count / a.created)
            } else {
                "-".to_owned()
            }
        };
        let plugin = |name: &str| per(a.plugins.get(name).copied().unwrap_or((0.0, 0.0)));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            first + i,
            r.mode.label(),
            per(a.admit),
            plugin(PLUGINS[0]),
            plugin(PLUGINS[1]),
            per(a.validate),
            plugin(PLUGINS[2]),
            plugin(PLUGINS[3]),
            check(a.map_check),
        );
    }
    let med = |mode: Mode, f: fn(&Run) -> f64| {
        median(runs.iter().filter(|r| r.mode == mode).map(f).collect())
    };
    let (none, ours, policy) = (
        med(Mode::None, |r| r.rate),
        med(Mode::Ours, |r| r.rate),
        med(Mode::Policy, |r| r.rate),
    );
    let (none_ms, ours_ms, policy_ms) = (
        med(Mode::None, |r| r.post_mean_ms),
        med(Mode::Ours, |r| r.post_mean_ms),
        med(Mode::Policy, |r| r.post_mean_ms),
    );
    let _ = writeln!(out);
    if none.is_finite() {
        let _ = writeln!(
            out,
            "Creates/s (medians): none {none:.1}, webhook {ours:.1}, policy {policy:.1}; \
             **webhook / none {:.2}, policy / none {:.2}**, policy / webhook {:.2}. \
             Mean POST jobsets (medians): none {none_ms:.1} ms, webhook {ours_ms:.1} ms, \
             policy {policy_ms:.1} ms.\n",
            ours / none,
            policy / none,
            policy / ours
        );
    } else {
        let _ = writeln!(
            out,
            "Creates/s (medians): webhook {ours:.1}, policy {policy:.1}; **policy / webhook \
             {:.2}**. Mean POST jobsets (medians): webhook {ours_ms:.1} ms, policy \
             {policy_ms:.1} ms.\n",
            policy / ours
        );
    }
}
