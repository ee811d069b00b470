//! The `restart.jobset.dev/*` annotation contract (README: Opting in): parsing, validation
//! and the exact error texts users see in a denial.

use std::fmt;

pub const PREFIX: &str = "restart.jobset.dev/";
pub const IN_PLACE: &str = "restart.jobset.dev/in-place";
pub const ACTION: &str = "restart.jobset.dev/action";
pub const ON_EXIT_CODES: &str = "restart.jobset.dev/on-exit-codes";
pub const EXCEPT_EXIT_CODES: &str = "restart.jobset.dev/except-exit-codes";
pub const CONTAINERS: &str = "restart.jobset.dev/containers";
pub const REPLICATED_JOBS: &str = "restart.jobset.dev/replicated-jobs";
pub const PRESET: &str = "restart.jobset.dev/preset";
/// Written by the webhook, never read as input.
pub const APPLIED: &str = "restart.jobset.dev/applied";

const KNOWN_KEYS: &str =
    "in-place, action, on-exit-codes, except-exit-codes, containers, replicated-jobs, preset";

/// The API server allows at most this many values in one `exitCodes` list.
pub const MAX_EXIT_CODE_VALUES: usize = 255;

/// Error messages quote the offending value; a hostile 1 MiB annotation must not turn into a
/// 1 MiB response, so quotes are cut to this many characters.
const MAX_QUOTED_CHARS: usize = 80;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InPlace {
    Enabled,
    Disabled,
}

impl InPlace {
    pub const ALLOWED: &'static str = "enabled, disabled, true or false";

    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "enabled" | "true" => Some(Self::Enabled),
            "disabled" | "false" => Some(Self::Disabled),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Restart,
    RestartAllContainers,
}

impl Action {
    pub const ALLOWED: &'static str = "Restart or RestartAllContainers";

    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "Restart" => Some(Self::Restart),
            "RestartAllContainers" => Some(Self::RestartAllContainers),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restart => "Restart",
            Self::RestartAllContainers => "RestartAllContainers",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operator {
    In,
    NotIn,
}

impl Operator {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "In",
            Self::NotIn => "NotIn",
        }
    }
}

/// An `exitCodes` condition: the operator and a sorted, de-duplicated set of 1 to 255 codes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExitCodes {
    pub operator: Operator,
    values: Vec<u8>,
}

impl ExitCodes {
    /// "Restart on any failure": the default when no exit codes are configured anywhere.
    pub fn any_failure() -> Self {
        Self {
            operator: Operator::NotIn,
            values: vec![0],
        }
    }

    pub fn new(operator: Operator, spec: &str) -> Result<Self, String> {
        Ok(Self {
            operator,
            values: parse_exit_codes(spec)?,
        })
    }

    pub fn values(&self) -> &[u8] {
        &self.values
    }

    /// Compact, stable rendering used in the `applied` summary: runs of three or more
    /// consecutive codes become `a-b`.
    pub fn compact_values(&self) -> String {
        let mut out = String::new();
        let mut i = 0;
        while i < self.values.len() {
            let start = self.values[i];
            let mut end_idx = i;
            while end_idx + 1 < self.values.len()
                && u16::from(self.values[end_idx + 1]) == u16::from(self.values[end_idx]) + 1
            {
                end_idx += 1;
            }
            if !out.is_empty() {
                out.push(',');
            }
            let end = self.values[end_idx];
            if end_idx >= i + 2 {
                out.push_str(&format!("{start}-{end}"));
                i = end_idx + 1;
            } else {
                out.push_str(&start.to_string());
                i += 1;
            }
        }
        out
    }
}

const EXIT_CODES_ALLOWED: &str = "exit codes (0-255) or ranges a-b, separated by commas";

/// Parses `42,43,128-143` into a sorted, de-duplicated list of at most 255 codes.
/// The `Err` is the problem alone; callers add the key and value around it.
pub fn parse_exit_codes(spec: &str) -> Result<Vec<u8>, String> {
    if spec.trim().is_empty() {
        return Err(format!(
            "no exit codes given; expected {EXIT_CODES_ALLOWED}"
        ));
    }
    let mut seen = [false; 256];
    for raw_item in spec.split(',') {
        let item = raw_item.trim();
        if item.is_empty() {
            return Err(format!("empty item; expected {EXIT_CODES_ALLOWED}"));
        }
        let (lo, hi) = match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.trim(), b.trim());
                let lo = parse_code(a).map_err(|p| range_problem(item, a, p))?;
                let hi = parse_code(b).map_err(|p| range_problem(item, b, p))?;
                if lo > hi {
                    return Err(format!(
                        "{}: a range a-b needs a <= b, and {lo} > {hi}",
                        quote(item)
                    ));
                }
                (lo, hi)
            }
            None => {
                let code = parse_code(item).map_err(|p| match p {
                    CodeProblem::NotANumber => {
                        format!("{} is not an exit code (0-255) or range a-b", quote(item))
                    }
                    CodeProblem::OutOfRange => {
                        format!("{} is out of range: exit codes are 0-255", quote(item))
                    }
                })?;
                (code, code)
            }
        };
        for code in lo..=hi {
            seen[usize::from(code)] = true;
        }
    }
    let values: Vec<u8> = (0..=255u8).filter(|c| seen[usize::from(*c)]).collect();
    if values.len() > MAX_EXIT_CODE_VALUES {
        return Err(format!(
            "expands to {} exit codes, and the API allows at most {MAX_EXIT_CODE_VALUES} \
             (use except-exit-codes for the complement)",
            values.len()
        ));
    }
    Ok(values)
}

enum CodeProblem {
    NotANumber,
    OutOfRange,
}

fn parse_code(s: &str) -> Result<u8, CodeProblem> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CodeProblem::NotANumber);
    }
    // Leading zeros are fine; only the value counts. Long digit strings are out of range
    // without being parsed into a wider type.
    let digits = s.trim_start_matches('0');
    if digits.len() > 3 {
        return Err(CodeProblem::OutOfRange);
    }
    let n: u16 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| CodeProblem::NotANumber)?
    };
    u8::try_from(n).map_err(|_| CodeProblem::OutOfRange)
}

fn range_problem(item: &str, part: &str, problem: CodeProblem) -> String {
    match problem {
        CodeProblem::NotANumber => {
            format!("{} is not an exit code (0-255) or range a-b", quote(item))
        }
        CodeProblem::OutOfRange => format!(
            "{}: {} is out of range: exit codes are 0-255",
            quote(item),
            quote(part)
        ),
    }
}

/// At most this many names in one `containers` or `replicated-jobs` list (annotation, preset
/// or cluster config). A pod runs a handful of containers and a JobSet a handful of
/// replicated jobs; 64 is far above both, and it bounds what one list costs every replicated
/// job it applies to (a missing name is a warning per replicated job, and the typo check
/// looks each name up). Before the bound, one list of 2,000 missing names over 400
/// replicated jobs peaked at 205 MB in one review (README: Opting in, "Bounds").
pub const MAX_LIST_NAMES: usize = 64;

/// At most this many bytes in one name list, checked before the list is split: 64 names of
/// up to 63 characters and their commas fit (4,095 bytes). The API server checks the size
/// of annotations only after mutating admission, so without this a 3 MiB body could carry a
/// 3 MiB list into the review.
pub const MAX_LIST_BYTES: usize = 4096;

/// Parses a comma list of Kubernetes names (container or replicated job names): at most
/// [`MAX_LIST_BYTES`] bytes and [`MAX_LIST_NAMES`] names, checked before any name is read;
/// repeated names are kept once, in the order first written.
pub fn parse_names(spec: &str, what: &str) -> Result<Vec<String>, String> {
    if spec.len() > MAX_LIST_BYTES {
        return Err(format!(
            "a list of {what} names may have at most {MAX_LIST_BYTES} bytes and \
             {MAX_LIST_NAMES} names; this one has {} bytes",
            spec.len()
        ));
    }
    let count = spec.split(',').count();
    if count > MAX_LIST_NAMES {
        return Err(format!(
            "a list of {what} names may have at most {MAX_LIST_BYTES} bytes and \
             {MAX_LIST_NAMES} names; this one has {count} names"
        ));
    }
    let mut names: Vec<String> = Vec::with_capacity(count);
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::with_capacity(count);
    for raw in spec.split(',') {
        let name = raw.trim();
        if name.is_empty() {
            return Err(format!("empty item; expected a comma list of {what} names"));
        }
        if !is_dns_label(name) {
            return Err(format!(
                "{} is not a valid {what} name (lowercase letters, digits and '-', \
                 starting and ending with a letter or digit, at most 63 characters)",
                quote(name)
            ));
        }
        if seen.insert(name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Quotes a user value for an error message, Go-style, cut to a bounded length.
pub fn quote(value: &str) -> String {
    if value.chars().count() <= MAX_QUOTED_CHARS {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX_QUOTED_CHARS).collect();
        format!("{:?}... ({} bytes)", head, value.len())
    }
}

/// An invalid annotation. `Display` is the exact text of the denial.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{scope}{key}: {quoted}: {problem}")]
pub struct AnnotationError {
    /// Empty for the JobSet's own annotations, `replicated job "x": ` for an override.
    pub scope: String,
    pub key: String,
    quoted: String,
    pub problem: String,
}

impl AnnotationError {
    pub fn new(scope: &Scope, key: &str, value: &str, problem: impl Into<String>) -> Self {
        Self {
            scope: scope.prefix(),
            key: key.to_owned(),
            quoted: quote(value),
            problem: problem.into(),
        }
    }
}

/// Where an annotation was read, for error messages and for the keys allowed there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    JobSet,
    ReplicatedJob(String),
}

impl Scope {
    fn prefix(&self) -> String {
        match self {
            Self::JobSet => String::new(),
            Self::ReplicatedJob(name) => format!("replicated job {}: ", quote(name)),
        }
    }
}

/// Which exit codes trigger the rule, as written by one source (annotations, preset, config).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub in_place: Option<InPlace>,
    pub action: Option<Action>,
    pub exit_codes: Option<ExitCodes>,
    pub containers: Option<Vec<String>>,
}

/// What one annotation map says: the settings plus the keys that only annotations carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Annotations {
    pub settings: Settings,
    pub replicated_jobs: Option<Vec<String>>,
    pub preset: Option<String>,
}

impl Annotations {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Reads the `restart.jobset.dev/*` keys out of an annotation map. Keys of other prefixes are
/// ignored; an unknown key of ours is an error, because a typo would otherwise silently do
/// nothing.
pub fn parse<'a, I>(annotations: I, scope: &Scope) -> Result<Annotations, AnnotationError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut out = Annotations::default();
    let mut on: Option<&str> = None;
    let mut except: Option<&str> = None;
    for (key, value) in annotations {
        if !key.starts_with(PREFIX) {
            continue;
        }
        let err = |problem: String| AnnotationError::new(scope, key, value, problem);
        match key {
            IN_PLACE => {
                let v = InPlace::parse(value)
                    .ok_or_else(|| err(format!("allowed values are {}", InPlace::ALLOWED)))?;
                out.settings.in_place = Some(v);
            }
            ACTION => {
                let v = Action::parse(value)
                    .ok_or_else(|| err(format!("allowed values are {}", Action::ALLOWED)))?;
                out.settings.action = Some(v);
            }
            ON_EXIT_CODES => {
                on = Some(value);
                out.settings.exit_codes = Some(ExitCodes::new(Operator::In, value).map_err(err)?);
            }
            EXCEPT_EXIT_CODES => {
                except = Some(value);
                out.settings.exit_codes =
                    Some(ExitCodes::new(Operator::NotIn, value).map_err(err)?);
            }
            CONTAINERS => {
                out.settings.containers = Some(parse_names(value, "container").map_err(err)?);
            }
            REPLICATED_JOBS => {
                if let Scope::ReplicatedJob(_) = scope {
                    return Err(err(
                        "only allowed on the JobSet's own metadata.annotations, not on a \
                         replicated job"
                            .to_owned(),
                    ));
                }
                out.replicated_jobs = Some(parse_names(value, "replicated job").map_err(err)?);
            }
            PRESET => {
                let name = value.trim();
                if name.is_empty() {
                    return Err(err(
                        "empty preset name; name a preset of the cluster config".into(),
                    ));
                }
                out.preset = Some(name.to_owned());
            }
            APPLIED => {}
            _ => {
                return Err(err(format!(
                    "unknown annotation; the keys under {PREFIX} are {KNOWN_KEYS}"
                )));
            }
        }
    }
    if let (Some(on), Some(except)) = (on, except) {
        return Err(AnnotationError {
            scope: scope.prefix(),
            key: format!("{ON_EXIT_CODES} and {EXCEPT_EXIT_CODES}"),
            quoted: format!("{} and {}", quote(on), quote(except)),
            problem: "set one of them, not both (on-exit-codes restarts only on the listed \
                      codes, except-exit-codes on every code but the listed ones)"
                .to_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
