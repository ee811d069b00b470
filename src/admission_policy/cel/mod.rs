//! The annotation contract (the README's annotation reference, JobSet target) written in CEL, as the expressions of a
//! MutatingAdmissionPolicy and a ValidatingAdmissionPolicy.
//!
//! Every expression here mirrors one function of `engine` and says which; the differential
//! e2e test (tests/e2e/differential/) holds them to the same stored objects and the same
//! denial texts. Kubernetes CEL has no functions and no `let`, so repeated parts are built by
//! the Rust helpers below, and `[x].map(v, body)[0]` stands in for a binding of `v` to `x`.
//! The environment is Kubernetes 1.36's: strings v2 (`split`, `trim`, `join`, `indexOf`),
//! lists v3 (`lists.range`, `sort`, `distinct`, `flatten`), optional types (`[?0]`), and
//! homogeneous literals (hence the `dyn(...)` in mixed maps).
//!
//! By purpose: [`annotations`] validates the annotations (the denials), [`rules`] resolves
//! the rule per replicated job and plans the changed containers, [`patch`] builds the
//! mutating policy's JSON Patch (CREATE and UPDATE), [`layout`] makes the output readable.

mod annotations;
mod layout;
mod patch;
mod rules;
#[cfg(test)]
mod tests;

pub use layout::layout;
pub use patch::mutation_patch;
pub use rules::{too_many_containers_message, within_container_limit};

/// A CEL string literal (single-quoted, escaped).
pub fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `[value].map(var, body)[0]`: evaluates `value` once and names it `var` in `body`.
fn bind(value: &str, var: &str, body: &str) -> String {
    format!("[{value}].map({var}, {body})[0]")
}

/// The first element of a list of strings, or `''`.
fn first_or_empty(list: &str) -> String {
    format!("{list}[?0].orValue('')")
}

/// `annotations::quote`: the value in double quotes with `\`, `"` and the common control
/// characters escaped, cut to 80 characters with the byte count after. (Rust's `{:?}` also
/// escapes other control and non-printable characters; values with those quote differently.)
fn quote(e: &str) -> String {
    let esc = |x: &str| {
        format!(
            r#"{x}.replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n').replace('\r', '\\r').replace('\t', '\\t')"#
        )
    };
    bind(
        e,
        "q",
        &format!(
            r#"size(q) <= 80 ? '"' + {} + '"' : '"' + {} + '"... (' + string(size(bytes(q))) + ' bytes)'"#,
            esc("q"),
            esc("q.substring(0, 80)")
        ),
    )
}

/// A named CEL variable of a policy.
pub struct Variable {
    pub name: &'static str,
    pub expression: String,
}

fn var(name: &'static str, expression: String) -> Variable {
    Variable { name, expression }
}

/// What the generator knows of the cluster config, already in annotation syntax.
pub struct Constants {
    /// CEL map literal: preset name → its values under annotation keys.
    pub presets: String,
    /// CEL map literal: the defaults for action, exit codes and (maybe) containers, under
    /// annotation keys. Always has the action and one exit-code key.
    pub defaults: String,
    /// `enabled` or `disabled`.
    pub default_in_place: &'static str,
    /// The `no such preset` text (it lists the config's presets).
    pub no_such_preset: String,
}

/// Every variable of both policies, in dependency order. Both need all of them: the
/// validating policy works out the containers the mutating one would change, to refuse a
/// JobSet over the webhook's limit (the mutating policy leaves those unchanged, and cannot
/// deny). The API server evaluates a variable only when an expression uses it.
pub fn variables(c: &Constants) -> Vec<Variable> {
    let (mut vars, problems) = annotations::variables(c);
    // The problems read `enabled` (the bounds count the replicated jobs that get the rule),
    // and a variable may only use those before it: they go right before the denials.
    let mut rules = rules::variables(c);
    let at = rules
        .iter()
        .position(|v| v.name == "denials")
        .unwrap_or(rules.len());
    rules.insert(at, problems);
    vars.extend(rules);
    vars
}
