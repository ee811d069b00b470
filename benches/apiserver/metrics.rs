//! kube-apiserver's /metrics: histograms, their deltas over a run, and the admission figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::modes::Policies;

/// Admission inside kube-apiserver over one run, from /metrics deltas.
pub struct Admission {
    /// JobSets created in the run (the denominator of the per-JobSet figures).
    pub created: f64,
    /// (sum s, count) of the mutating and validating phases (operation CREATE, every resource).
    pub admit: (f64, f64),
    pub validate: (f64, f64),
    /// (sum s, count) per admission plugin (operation CREATE), by plugin name.
    pub plugins: BTreeMap<String, (f64, f64)>,
    /// (sum s, count) of the mutating policy's own check histogram (one observation per
    /// evaluation). The validating policy's histogram only observes denials and errors.
    pub map_check: (f64, f64),
}

/// Admission plugins shown per run, in the API server's order: MAP, MAW, VAP, VAW.
pub const PLUGINS: [&str; 4] = [
    "MutatingAdmissionPolicy",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionWebhook",
];

impl Admission {
    pub fn measure(before: &Metrics, after: &Metrics, policies: &Policies, created: f64) -> Self {
        let d = |f: &dyn Fn(&Metrics) -> Hist| {
            let h = f(after).delta(&f(before));
            (h.sum, h.count)
        };
        let step = |ty: &'static str| {
            move |m: &Metrics| {
                let t = format!("type=\"{ty}\"");
                m.hist("apiserver_admission_step_admission_duration_seconds", |l| {
                    l.contains(&t)
                        && l.contains("operation=\"CREATE\"")
                        && l.contains("rejected=\"false\"")
                })
            }
        };
        let mut plugins = BTreeMap::new();
        for name in PLUGINS {
            let n = format!("name=\"{name}\"");
            plugins.insert(
                name.to_owned(),
                d(&|m: &Metrics| {
                    m.hist(
                        "apiserver_admission_controller_admission_duration_seconds",
                        |l| {
                            l.contains(&n)
                                && l.contains("operation=\"CREATE\"")
                                && l.contains("rejected=\"false\"")
                        },
                    )
                }),
            );
        }
        let check = |family: &'static str, policy: &str| {
            let p = format!("policy=\"{policy}\"");
            d(&move |m: &Metrics| m.hist(family, |l| l.contains(&p)))
        };
        Admission {
            created,
            admit: d(&step("admit")),
            validate: d(&step("validate")),
            plugins,
            map_check: check(
                "apiserver_mutating_admission_policy_check_duration_seconds",
                &policies.mutating,
            ),
        }
    }
}

/// What kube-apiserver's /metrics holds about admission policies: the series of every family
/// whose name mentions `admission_policy` or `match_condition` (without `_bucket`, `le`), and
/// the plugins `apiserver_admission_controller_admission_duration_seconds` timed for CREATE.
/// Only series with a non-zero value.
pub fn admission_families(m: &Metrics) -> String {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut plugins: Vec<String> = Vec::new();
    for line in m.0.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if value.parse::<f64>().unwrap_or(0.0) == 0.0 {
            continue;
        }
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let labels = labels.trim_end_matches('}');
        if name == "apiserver_admission_controller_admission_duration_seconds_count"
            && labels.contains("operation=\"CREATE\"")
        {
            if let (Some(n), Some(t)) = (label(labels, "name"), label(labels, "type")) {
                let p = format!("{n} ({t})");
                if !plugins.contains(&p) {
                    plugins.push(p);
                }
            }
            continue;
        }
        if !(name.contains("admission_policy") || name.contains("match_condition"))
            || name.ends_with("_bucket")
        {
            continue;
        }
        let entry = seen.entry(name.to_owned()).or_default();
        if !entry.iter().any(|l| l == labels) {
            entry.push(labels.to_owned());
        }
    }
    let mut s = String::new();
    for (name, sets) in seen {
        let _ = writeln!(s, "{name}{{{}}}", sets.join("} {"));
    }
    let _ = writeln!(
        s,
        "apiserver_admission_controller_admission_duration_seconds, CREATE: {}",
        plugins.join(", ")
    );
    s
}

/// A Prometheus exposition.
pub struct Metrics(pub String);

impl Metrics {
    pub fn hist(&self, family: &str, filter: impl Fn(&str) -> bool) -> Hist {
        let mut h = Hist::default();
        for line in self.0.lines() {
            let Some(rest) = line.strip_prefix(family) else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once(' ') else {
                continue;
            };
            if !filter(labels) {
                continue;
            }
            let value: f64 = value.parse().unwrap_or(0.0);
            if let Some(l) = labels.strip_prefix("_bucket{") {
                if let Some(le) = label(l, "le") {
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap_or(f64::INFINITY)
                    };
                    *h.buckets.entry(OrdF64(le)).or_default() += value;
                }
            } else if labels.starts_with("_sum{") {
                h.sum += value;
            } else if labels.starts_with("_count{") {
                h.count += value;
            }
        }
        h
    }

    pub fn request_hist(&self, resource: &str, verb: &str) -> Hist {
        let (r, v) = (
            format!("resource=\"{resource}\""),
            format!("verb=\"{verb}\""),
        );
        self.hist("apiserver_request_duration_seconds", |l| {
            l.contains(&r) && l.contains(&v) && l.contains("subresource=\"\"")
        })
    }

    pub fn webhook_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .0
            .lines()
            .filter_map(|l| {
                l.strip_prefix("apiserver_admission_webhook_admission_duration_seconds_count{")
            })
            .filter_map(|l| label(l, "name").map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub fn webhook_hist(&self, name: &str) -> Hist {
        let n = format!("name=\"{name}\"");
        self.hist(
            "apiserver_admission_webhook_admission_duration_seconds",
            |l| l.contains(&n) && l.contains("operation=\"CREATE\""),
        )
    }
}

pub fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    let start = labels.find(&key)? + key.len();
    let end = labels[start..].find('"')?;
    Some(&labels[start..start + end])
}

pub fn webhooks_called(before: &Metrics, after: &Metrics) -> String {
    webhooks_called_on(before, after, |n| {
        !n.starts_with("pods.") && !n.contains("pod")
    })
}

pub fn webhooks_called_on(
    before: &Metrics,
    after: &Metrics,
    keep: impl Fn(&str) -> bool,
) -> String {
    let mut parts = Vec::new();
    for name in after.webhook_names() {
        if !keep(&name) {
            continue;
        }
        let d = after.webhook_hist(&name).delta(&before.webhook_hist(&name));
        if d.count > 0.0 {
            parts.push(format!(
                "{name} {:.2} ({:.0})",
                d.sum / d.count * 1e3,
                d.count
            ));
        }
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join("; ")
    }
}

#[derive(Clone, Copy, PartialEq)]
pub struct OrdF64(f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A cumulative histogram (bucket upper bound → count), its sum and count.
#[derive(Default)]
pub struct Hist {
    pub buckets: BTreeMap<OrdF64, f64>,
    pub sum: f64,
    pub count: f64,
}

impl Hist {
    pub fn delta(&self, before: &Hist) -> Hist {
        Hist {
            buckets: self
                .buckets
                .iter()
                .map(|(le, v)| (*le, v - before.buckets.get(le).copied().unwrap_or(0.0)))
                .collect(),
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    /// `histogram_quantile`: linear interpolation inside the bucket, in seconds.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count <= 0.0 {
            return f64::NAN;
        }
        let rank = q * self.count;
        let mut prev = (0.0, 0.0);
        for (le, cum) in &self.buckets {
            if *cum >= rank {
                if le.0.is_infinite() {
                    return prev.0;
                }
                let in_bucket = cum - prev.1;
                let frac = if in_bucket > 0.0 {
                    (rank - prev.1) / in_bucket
                } else {
                    0.0
                };
                return prev.0 + (le.0 - prev.0) * frac;
            }
            prev = (le.0, *cum);
        }
        prev.0
    }

    pub fn describe(&self) -> String {
        if self.count <= 0.0 {
            return "-".to_owned();
        }
        format!(
            "{:.1} / {:.1} / {:.1} ({:.0})",
            self.sum / self.count * 1e3,
            self.quantile(0.5) * 1e3,
            self.quantile(0.99) * 1e3,
            self.count
        )
    }
}
