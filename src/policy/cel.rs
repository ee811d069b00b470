//! The annotation contract (SPEC §3–§4, JobSet target) written in CEL, as the expressions of a
//! MutatingAdmissionPolicy and a ValidatingAdmissionPolicy.
//!
//! Every expression here mirrors one function of `engine` and says which; the differential
//! e2e test (tests/e2e/differential.rs) holds them to the same stored objects and the same
//! denial texts. Kubernetes CEL has no functions and no `let`, so repeated parts are built by
//! the Rust helpers below, and `[x].map(v, body)[0]` stands in for a binding of `v` to `x`.
//! The environment is Kubernetes 1.36's: strings v2 (`split`, `trim`, `join`, `indexOf`),
//! lists v3 (`lists.range`, `sort`, `distinct`, `flatten`), optional types (`[?0]`), and
//! homogeneous literals (hence the `dyn(...)` in mixed maps).

use crate::engine::annotations::{
    ACTION, APPLIED, CONTAINERS, EXCEPT_EXIT_CODES, IN_PLACE, MAX_EXIT_CODE_VALUES, ON_EXIT_CODES,
    PREFIX, PRESET, REPLICATED_JOBS,
};
use crate::engine::applied::{APPLIED_TAIL_BYTES, MAX_APPLIED_BYTES, MAX_CHANGED_CONTAINERS};

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

const EXIT_CODES_ALLOWED: &str = "exit codes (0-255) or ranges a-b, separated by commas";
const NOT_A_CODE: &str = " is not an exit code (0-255) or range a-b";
const OUT_OF_RANGE: &str = " is out of range: exit codes are 0-255";
const DIGITS: &str = "'^[0-9]+$'";

/// Whether the digit string `e` is at most 255 (`parse_code`'s range check; leading zeros
/// are fine and long strings are out of range without being parsed).
fn in_range(e: &str) -> String {
    format!("({e}.matches('^0*[0-9]{{1,3}}$') && int({e}) <= 255)")
}

/// `parse_exit_codes`'s problem with one trimmed item `it`, or `''`.
fn exit_code_item_problem() -> String {
    let lo = "it.substring(0, it.indexOf('-')).trim()";
    let hi = "it.substring(it.indexOf('-') + 1).trim()";
    let range = format!(
        "!{lo}.matches({DIGITS}) ? {qi} + {nac} \
         : !{lo_in} ? {qi} + ': ' + {qlo} + {oor} \
         : !{hi}.matches({DIGITS}) ? {qi} + {nac} \
         : !{hi_in} ? {qi} + ': ' + {qhi} + {oor} \
         : int({lo}) > int({hi}) ? {qi} + ': a range a-b needs a <= b, and ' + string(int({lo})) + ' > ' + string(int({hi})) \
         : ''",
        qi = quote("it"),
        nac = lit(NOT_A_CODE),
        oor = lit(OUT_OF_RANGE),
        lo_in = in_range(lo),
        hi_in = in_range(hi),
        qlo = quote(lo),
        qhi = quote(hi),
    );
    format!(
        "it == '' ? {empty} \
         : it.contains('-') ? ({range}) \
         : !it.matches({DIGITS}) ? {qi} + {nac} \
         : !{it_in} ? {qi} + {oor} \
         : ''",
        empty = lit(&format!("empty item; expected {EXIT_CODES_ALLOWED}")),
        qi = quote("it"),
        nac = lit(NOT_A_CODE),
        oor = lit(OUT_OF_RANGE),
        it_in = in_range("it"),
    )
}

/// The trimmed items of a comma list `e`.
fn items(e: &str) -> String {
    format!("{e}.split(',').map(r, r.trim())")
}

/// The `[lo, hi]` pairs of a valid exit-code spec `e`.
fn code_ranges(e: &str) -> String {
    format!(
        "{}.map(it, it.contains('-') \
         ? [int(it.substring(0, it.indexOf('-')).trim()), int(it.substring(it.indexOf('-') + 1).trim())] \
         : [int(it), int(it)])",
        items(e)
    )
}

/// `parse_exit_codes`: the sorted, de-duplicated codes of a valid spec `e`, as `list(int)`.
/// Expanding the ranges, sorting and dropping neighbours that repeat costs what the spec
/// expands to, not 256 steps per item.
pub fn expand_codes(e: &str) -> String {
    bind(
        &format!(
            "{}.map(r, lists.range(r[1] - r[0] + 1).map(k, r[0] + k)).flatten().sort()",
            code_ranges(e)
        ),
        "s",
        "lists.range(size(s)).filter(k, k == 0 || s[k] != s[k - 1]).map(k, s[k])",
    )
}

/// `parse_exit_codes`'s problem with spec `e`, or `''`.
fn exit_codes_problem(e: &str) -> String {
    let first_item = first_or_empty(&format!(
        "{}.map(it, {}).filter(p, p != '')",
        items(e),
        exit_code_item_problem()
    ));
    // More than 255 codes needs the ranges to add up to 256 or more, which is rare: only
    // then is the spec expanded to count them.
    let count = bind(
        &format!(
            "{}.map(r, r[1] - r[0] + 1).sum() < 256 ? [] : {}",
            code_ranges(e),
            expand_codes(e)
        ),
        "cs",
        &format!(
            "size(cs) > {MAX_EXIT_CODE_VALUES} ? 'expands to ' + string(size(cs)) + {} : ''",
            lit(&format!(
                " exit codes, and the API allows at most {MAX_EXIT_CODE_VALUES} \
                 (use except-exit-codes for the complement)"
            ))
        ),
    );
    format!(
        "{e}.trim() == '' ? {} : {}",
        lit(&format!(
            "no exit codes given; expected {EXIT_CODES_ALLOWED}"
        )),
        bind(&first_item, "p1", &format!("p1 != '' ? p1 : {count}"))
    )
}

/// `parse_names`' problem with the comma list `e` of `what` names, or `''`.
fn names_problem(e: &str, what: &str) -> String {
    first_or_empty(&format!(
        "{}.map(n, n == '' ? {} \
         : (size(n) <= 63 && n.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')) ? '' \
         : {} + {}).filter(p, p != '')",
        items(e),
        lit(&format!(
            "empty item; expected a comma list of {what} names"
        )),
        quote("n"),
        lit(&format!(
            " is not a valid {what} name (lowercase letters, digits and '-', starting and \
             ending with a letter or digit, at most 63 characters)"
        )),
    ))
}

/// `annotations::parse`'s problem with key `k` and value `v`, without the key and value in
/// front, or `''`.
fn key_problem(replicated_job: bool) -> String {
    let rjobs = if replicated_job {
        lit("only allowed on the JobSet's own metadata.annotations, not on a replicated job")
    } else {
        names_problem("v", "replicated job")
    };
    format!(
        "k == {in_place} ? (v.trim() in ['enabled', 'disabled', 'true', 'false'] ? '' : {in_place_allowed}) \
         : k == {action} ? (v.trim() in ['Restart', 'RestartAllContainers'] ? '' : {action_allowed}) \
         : k == {on} || k == {except} ? ({codes}) \
         : k == {containers} ? ({names}) \
         : k == {rj_key} ? ({rjobs}) \
         : k == {preset} ? (v.trim() == '' ? {preset_empty} : '') \
         : {unknown}",
        in_place = lit(IN_PLACE),
        in_place_allowed = lit("allowed values are enabled, disabled, true or false"),
        action = lit(ACTION),
        action_allowed = lit("allowed values are Restart or RestartAllContainers"),
        on = lit(ON_EXIT_CODES),
        except = lit(EXCEPT_EXIT_CODES),
        codes = exit_codes_problem("v"),
        containers = lit(CONTAINERS),
        names = names_problem("v", "container"),
        rj_key = lit(REPLICATED_JOBS),
        preset = lit(PRESET),
        preset_empty = lit("empty preset name; name a preset of the cluster config"),
        unknown = lit(&format!(
            "unknown annotation; the keys under {PREFIX} are in-place, action, on-exit-codes, \
             except-exit-codes, containers, replicated-jobs, preset"
        )),
    )
}

/// Every problem of the annotation map `m` (a CEL expression), each a whole denial text
/// starting with `scope` (a CEL string expression), in `annotations::parse`'s order: keys
/// sorted, then the on/except conflict.
fn map_problems(m: &str, scope: &str, replicated_job: bool) -> String {
    let per_key = format!(
        "{m}.filter(k, k.startsWith({prefix}) && k != {applied}).sort()\
         .map(k, [{m}[k]].map(v, [{problem}].map(p, p == '' ? '' : {scope} + k + ': ' + {qv} + ': ' + p)[0])[0])\
         .filter(p, p != '')",
        prefix = lit(PREFIX),
        applied = lit(APPLIED),
        problem = key_problem(replicated_job),
        qv = quote("v"),
    );
    let conflict = format!(
        "({on} in {m} && {except} in {m}) ? [{scope} + {keys} + {qon} + ' and ' + {qex} + {why}] : []",
        on = lit(ON_EXIT_CODES),
        except = lit(EXCEPT_EXIT_CODES),
        keys = lit(&format!("{ON_EXIT_CODES} and {EXCEPT_EXIT_CODES}: ")),
        qon = quote(&format!("{m}[{}]", lit(ON_EXIT_CODES))),
        qex = quote(&format!("{m}[{}]", lit(EXCEPT_EXIT_CODES))),
        why = lit(
            ": set one of them, not both (on-exit-codes restarts only on the listed codes, \
             except-exit-codes on every code but the listed ones)"
        ),
    );
    format!("({per_key}) + ({conflict})")
}

/// The webhook's bound on the `applied` summary, without the room it keeps for the tail.
const SUMMARY_BYTES: usize = MAX_APPLIED_BYTES - APPLIED_TAIL_BYTES;
/// Enough halvings for 4095 entries, past the CEL cost limit's reach (about 2,000).
const SEARCH_STEPS: usize = 12;

/// The webhook's denial of a JobSet that would change more than [`MAX_CHANGED_CONTAINERS`].
/// The API server evaluates a validation's message even when the validation passes, so the
/// count of changed containers is only worked out when the templates hold more containers
/// than the limit at all (otherwise it doubles the validating policy's cost).
pub fn too_many_containers_message() -> String {
    format!(
        "variables.containerCount <= {MAX_CHANGED_CONTAINERS} ? '' : \
         'in-place restart would change ' + string(variables.changed) + {}",
        lit(&format!(
            " containers of this JobSet, more than the {MAX_CHANGED_CONTAINERS} the webhook \
             changes in one JobSet; select the containers that need it with {CONTAINERS} \
             (container names) or the replicated jobs with {REPLICATED_JOBS} (replicated job \
             names)"
        ))
    )
}

/// Whether the JobSet stays within [`MAX_CHANGED_CONTAINERS`]; the entries are only worked
/// out when its templates have more containers than that at all.
pub fn within_container_limit() -> String {
    format!(
        "variables.containerCount <= {MAX_CHANGED_CONTAINERS} || \
         variables.changed <= {MAX_CHANGED_CONTAINERS}"
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
    let mut vars = annotation_variables(c);
    vars.extend(rule_variables(c));
    vars
}

/// The object's annotations, per replicated job its name, annotations, preset and whether it
/// is considered at all, and the list of problems (`mutate_jobset`'s denials, in its order).
fn annotation_variables(c: &Constants) -> Vec<Variable> {
    let rjob_scope = format!(
        "'replicated job ' + {} + ': '",
        quote("variables.rjNames[i]")
    );
    let listed = format!(
        "!({rj} in variables.anns) || {}.exists(n, n == variables.rjNames[i])",
        items(&format!("variables.anns[{}]", lit(REPLICATED_JOBS))),
        rj = lit(REPLICATED_JOBS),
    );
    let js = map_problems("variables.anns", "''", false);
    let rj = format!(
        "lists.range(size(variables.rjobs)).map(i, {}).flatten()",
        map_problems("variables.rjAnns[i]", &rjob_scope, true)
    );
    let missing = format!(
        "{key} in variables.anns ? [{names}.distinct()].map(names, \
         names.filter(n, !(n in variables.rjNames)).map(n, {key} + ': ' + {qnames} + \
         ': this JobSet has no replicated job ' + {qn} + \
         [variables.rjobs.filter(r, has(r.name)).map(r, r.name)].map(e, size(e) == 0 ? '; it has none' \
         : '; it has: ' + e.join(', '))[0]))[0] : []",
        key = lit(REPLICATED_JOBS),
        names = items(&format!("variables.anns[{}]", lit(REPLICATED_JOBS))),
        qnames = quote("names.join(',')"),
        qn = quote("n"),
    );
    let preset = format!(
        "lists.range(size(variables.rjobs)).filter(i, variables.considered[i] && \
         variables.presetNames[i] != '' && !(variables.presetNames[i] in variables.presets))\
         .map(i, ({p} in variables.rjAnns[i] ? {rjob_scope} : '') + {pk} + {qp} + {msg})",
        p = lit(PRESET),
        pk = lit(&format!("{PRESET}: ")),
        qp = quote("variables.presetNames[i]"),
        msg = lit(&format!(": {}", c.no_such_preset)),
    );
    vec![
        var(
            "anns",
            "has(object.metadata.annotations) ? object.metadata.annotations : {}".to_owned(),
        ),
        var(
            "rjobs",
            "has(object.spec) && has(object.spec.replicatedJobs) ? object.spec.replicatedJobs : []"
                .to_owned(),
        ),
        var(
            "rjNames",
            "variables.rjobs.map(rj, has(rj.name) ? rj.name : '')".to_owned(),
        ),
        var(
            "rjAnns",
            "variables.rjobs.map(rj, has(rj.template) && has(rj.template.metadata) && \
             has(rj.template.metadata.annotations) ? rj.template.metadata.annotations : {})"
                .to_owned(),
        ),
        var("presets", c.presets.clone()),
        // A replicated job is considered when `replicated-jobs` lists it (or is absent), or
        // when its own annotations say `in-place` (mutate_jobset's `listed` test).
        var(
            "considered",
            format!(
                "lists.range(size(variables.rjobs)).map(i, ({listed}) || {ip} in variables.rjAnns[i])",
                ip = lit(IN_PLACE)
            ),
        ),
        // A preset named on the replicated job replaces one named on the JobSet.
        var(
            "presetNames",
            format!(
                "lists.range(size(variables.rjobs)).map(i, {p} in variables.rjAnns[i] ? variables.rjAnns[i][{p}].trim() \
                 : {p} in variables.anns ? variables.anns[{p}].trim() : '')",
                p = lit(PRESET)
            ),
        ),
        var(
            "problems",
            format!("({js}) + ({rj}) + ({missing}) + ({preset})"),
        ),
    ]
}

/// `plan_pod_spec`'s loop over one list of replicated job `i`'s pod spec `ps`: an entry for
/// each container `c` (named `name`) for which `carries` holds once this review is applied,
/// with the fields `set` says to add (`both`, `rules` or `none`) and its summary text.
fn container_entries(list: &str, guard: &str, carries: &str, set: &str) -> String {
    format!(
        "{guard}has(ps.{list}) ? lists.range(size(ps.{list})).map(j, [ps.{list}[j]].map(c, \
           [has(c.name) ? c.name : ''].map(name, {carries} \
             ? [{{'i': string(i), \
                 'path': '/spec/replicatedJobs/' + string(i) + '/template/spec/template/spec/{list}/' + string(j), \
                 'set': {set}, \
                 'text': variables.rjNames[i] + '/' + name + '=' + variables.actions[i] + ':' + \
                   variables.ops[i] + '(' + variables.compacts[i] + ')'}}] \
             : [])[0])[0]).flatten() : []"
    )
}

/// The resolved rule per replicated job (`engine::resolve::resolve`) and the planned changes
/// (`plan_pod_spec`).
fn rule_variables(c: &Constants) -> Vec<Variable> {
    let n = "lists.range(size(variables.rjobs))";
    // The explicit layers then the cluster defaults, highest first.
    let with_defaults = "(variables.layers[i] + [dyn(variables.defaults)])";
    let pick = |key: &str| {
        format!(
            "{with_defaults}.filter(l, {k} in l).map(l, l[{k}].trim())",
            k = lit(key)
        )
    };
    let same_rules = "[c.restartPolicyRules].map(r, size(r) == 1 && has(r[0].action) && \
         r[0].action == variables.actions[i] && has(r[0].exitCodes) && \
         has(r[0].exitCodes.operator) && r[0].exitCodes.operator == variables.ops[i] && \
         has(r[0].exitCodes.values) && r[0].exitCodes.values == variables.codes[i])[0]";
    let containers = container_entries(
        "containers",
        "",
        &format!(
            "(!variables.hasNames[i] || name in variables.names[i]) && \
             ((!has(c.restartPolicy) && !has(c.restartPolicyRules)) || \
              (has(c.restartPolicy) && c.restartPolicy == 'Never' && has(c.restartPolicyRules) && \
               {same_rules}))"
        ),
        "!has(c.restartPolicy) ? 'both' : 'none'",
    );
    let sidecars = container_entries(
        "initContainers",
        "variables.hasNames[i] && ",
        &format!(
            "name in variables.names[i] && has(c.restartPolicy) && c.restartPolicy == 'Always' && \
             (!has(c.restartPolicyRules) || {same_rules})"
        ),
        "!has(c.restartPolicyRules) ? 'rules' : 'none'",
    );
    vec![
        var("defaults", c.defaults.clone()),
        var("defaultInPlace", lit(c.default_in_place)),
        // The namespace label (SPEC §5), read from the namespace object at admission time;
        // a value that is not one of ours is ignored, as the webhook does.
        var(
            "namespaceInPlace",
            format!(
                "has(namespaceObject.metadata.labels) && {k} in namespaceObject.metadata.labels ? \
                 [namespaceObject.metadata.labels[{k}].trim()].map(v, v in ['enabled', 'true'] ? 'enabled' \
                 : v in ['disabled', 'false'] ? 'disabled' : '')[0] : ''",
                k = lit(IN_PLACE)
            ),
        ),
        var(
            "layers",
            format!(
                "{n}.map(i, [dyn(variables.rjAnns[i]), dyn(variables.anns), \
                 dyn(variables.presetNames[i] != '' && variables.presetNames[i] in variables.presets \
                 ? variables.presets[variables.presetNames[i]] : {{}})])"
            ),
        ),
        // Explicit `in-place` wins; then the namespace label; then the cluster default.
        var(
            "enabled",
            format!(
                "{n}.map(i, variables.considered[i] && [variables.layers[i].filter(l, {k} in l).map(l, l[{k}].trim())]\
                 .map(e, size(e) > 0 ? e[0] in ['enabled', 'true'] \
                 : variables.namespaceInPlace != '' ? variables.namespaceInPlace == 'enabled' \
                 : variables.defaultInPlace == 'enabled')[0])",
                k = lit(IN_PLACE)
            ),
        ),
        var("actions", format!("{n}.map(i, {}[0])", pick(ACTION))),
        var(
            "ops",
            format!(
                "{n}.map(i, {with_defaults}.filter(l, {on} in l || {ex} in l).map(l, {on} in l ? 'In' : 'NotIn')[0])",
                on = lit(ON_EXIT_CODES),
                ex = lit(EXCEPT_EXIT_CODES)
            ),
        ),
        var(
            "codes",
            format!(
                "{n}.map(i, {with_defaults}.filter(l, {on} in l || {ex} in l).map(l, {on} in l ? l[{on}] : l[{ex}])[0])\
                 .map(s, {expand})",
                on = lit(ON_EXIT_CODES),
                ex = lit(EXCEPT_EXIT_CODES),
                expand = expand_codes("s"),
            ),
        ),
        // `ExitCodes::compact_values`: runs of three or more codes become `a-b`.
        var(
            "compacts",
            "variables.codes.map(v, [[lists.range(size(v)).filter(k, k == 0 || v[k - 1] != v[k] - 1), \
                 lists.range(size(v)).filter(k, k == size(v) - 1 || v[k + 1] != v[k] + 1)]].map(se, \
                 lists.range(size(se[0])).map(r, se[1][r] - se[0][r] >= 2 \
                 ? [string(v[se[0][r]]) + '-' + string(v[se[1][r]])] \
                 : se[1][r] == se[0][r] ? [string(v[se[0][r]])] \
                 : [string(v[se[0][r]]), string(v[se[1][r]])]).flatten().join(','))[0])"
                .to_owned(),
        ),
        var(
            "hasNames",
            format!(
                "{n}.map(i, {with_defaults}.exists(l, {k} in l))",
                k = lit(CONTAINERS)
            ),
        ),
        var(
            "names",
            format!(
                "{n}.map(i, {with_defaults}.filter(l, {k} in l).map(l, {items})[?0].orValue([]))",
                k = lit(CONTAINERS),
                items = items(&format!("l[{}]", lit(CONTAINERS))),
            ),
        ),
        var(
            "rules",
            format!(
                "{n}.map(i, [{{'action': dyn(variables.actions[i]), 'exitCodes': \
                 dyn({{'operator': dyn(variables.ops[i]), 'values': dyn(variables.codes[i])}})}}])"
            ),
        ),
        // Replicated jobs that get the rule and have a pod template to put it in.
        var(
            "work",
            format!(
                "{n}.filter(i, variables.enabled[i] && has(variables.rjobs[i].template) && \
                 has(variables.rjobs[i].template.spec) && has(variables.rjobs[i].template.spec.template) && \
                 has(variables.rjobs[i].template.spec.template.spec))"
            ),
        ),
        // One entry per container that carries the rule after this mutation: `set` says
        // which fields to add (`both`, `rules` for a sidecar, `none` when it already has
        // exactly this rule), `text` is its part of the `applied` summary.
        var(
            "entries",
            format!(
                "variables.work.map(i, [variables.rjobs[i].template.spec.template.spec].map(ps, \
                 ({containers}) + ({sidecars}))[0]).flatten()"
            ),
        ),
        // Containers and init containers in all pod templates: a cheap bound on `changed`.
        var(
            "containerCount",
            "variables.rjobs.map(rj, has(rj.template) && has(rj.template.spec) && \
             has(rj.template.spec.template) && has(rj.template.spec.template.spec) ? \
             (has(rj.template.spec.template.spec.containers) ? size(rj.template.spec.template.spec.containers) : 0) + \
             (has(rj.template.spec.template.spec.initContainers) ? size(rj.template.spec.template.spec.initContainers) : 0) \
             : 0).sum()"
                .to_owned(),
        ),
        // Containers this review gives the rule to (the others already carry it).
        var(
            "changed",
            "size(variables.entries.filter(e, e.set != 'none'))".to_owned(),
        ),
        var("summary", summary()),
        // Container and init container names per replicated job (`plan_pod_spec`'s `present`).
        var(
            "present",
                            "variables.rjobs.map(rj, has(rj.template) && has(rj.template.spec) && \
                 has(rj.template.spec.template) && has(rj.template.spec.template.spec) ? \
                 [rj.template.spec.template.spec].map(ps, \
                 (has(ps.containers) ? ps.containers.map(c, has(c.name) ? c.name : '') : []) + \
                 (has(ps.initContainers) ? ps.initContainers.map(c, has(c.name) ? c.name : '') : []))[0] \
                 : [])"
                .to_owned(),
        ),
        var("typos", typos()),
        var("settingsChanged", settings_changed()),
        var(
            "record",
            format!(
                "has(oldObject.metadata.annotations) && {a} in oldObject.metadata.annotations ? \
                 oldObject.metadata.annotations[{a}] : ''",
                a = lit(APPLIED)
            ),
        ),
        // `rjob/container` of each entry of the record, and whether it was cut.
        var(
            "recordKeys",
            "variables.record.split(', ').filter(e, e.contains('=')).map(e, e.split('=')[0])"
                .to_owned(),
        ),
        var(
            "recordCut",
            "variables.record.split(', ').exists(e, e.startsWith('... and '))".to_owned(),
        ),
        // Every denial, in `mutate_jobset`'s order.
        var(
            "denials",
            "variables.problems + variables.typos".to_owned(),
        ),
    ]
}

/// `update::settings`: the `restart.jobset.dev/*` annotations (`applied` aside) of the JobSet
/// and of its replicated jobs, as sorted `k=v` and `rjob|k=v` lists, compared between the
/// object and the stored one.
fn settings_changed() -> String {
    let ours = |o: &str| {
        format!(
            "(has({o}.metadata.annotations) ? {o}.metadata.annotations.filter(k, k.startsWith({p}) && k != {a}) \
               .map(k, k + '=' + {o}.metadata.annotations[k]).sort() : []) + \
             (has({o}.spec) && has({o}.spec.replicatedJobs) ? {o}.spec.replicatedJobs.filter(rj, \
               has(rj.template) && has(rj.template.metadata) && has(rj.template.metadata.annotations)) \
               .map(rj, rj.template.metadata.annotations.filter(k, k.startsWith({p}) && k != {a}) \
                 .map(k, (has(rj.name) ? rj.name : '') + '|' + k + '=' + rj.template.metadata.annotations[k])) \
               .flatten().sort() : [])",
            p = lit(PREFIX),
            a = lit(APPLIED),
        )
    };
    format!("{} != {}", ours("object"), ours("oldObject"))
}

/// `update::restore` (part of the mutation: `JSONPatch` values exist only there): for each
/// replicated job the record names (all when it was cut), the
/// stored values of recorded containers that lost their rules (and `restartPolicy`, or kept
/// it as stored), of recorded sidecars that lost
/// their rules, and of the pod template's lost `restartPolicy`; then the lost record.
fn restore() -> String {
    let stored = |list: &str| {
        format!(
            "(has(ops.{list}) ? ops.{list}.filter(o, (has(o.name) ? o.name : '') == name) : [])"
        )
    };
    let recorded =
        "(variables.recordCut || (variables.rjNames[i] + '/' + name) in variables.recordKeys)";
    let path = "'/spec/replicatedJobs/' + string(i) + '/template/spec/template/spec'";
    let containers = format!(
        "(has(ps.containers) ? lists.range(size(ps.containers)).map(j, [ps.containers[j]].map(c, \
           [has(c.name) ? c.name : ''].map(name, \
             !has(c.restartPolicyRules) && {recorded} \
             ? [{was}].map(w, size(w) == 0 || \
                 (has(c.restartPolicy) && !(has(w[0].restartPolicy) && w[0].restartPolicy == c.restartPolicy)) ? [] : \
                 (!has(c.restartPolicy) && has(w[0].restartPolicy) ? [JSONPatch{{op: 'add', path: {path} + '/containers/' + string(j) + '/restartPolicy', value: w[0].restartPolicy}}] : []) + \
                 (has(w[0].restartPolicyRules) ? [JSONPatch{{op: 'add', path: {path} + '/containers/' + string(j) + '/restartPolicyRules', value: w[0].restartPolicyRules}}] : []))[0] \
             : [])[0])[0]).flatten() : [])",
        was = stored("containers"),
    );
    let sidecars = format!(
        "(has(ps.initContainers) ? lists.range(size(ps.initContainers)).map(j, [ps.initContainers[j]].map(c, \
           [has(c.name) ? c.name : ''].map(name, \
             !has(c.restartPolicyRules) && {recorded} \
             ? [{was}].map(w, size(w) > 0 && has(w[0].restartPolicyRules) \
                 ? [JSONPatch{{op: 'add', path: {path} + '/initContainers/' + string(j) + '/restartPolicyRules', value: w[0].restartPolicyRules}}] : [])[0] \
             : [])[0])[0]).flatten() : [])",
        was = stored("initContainers"),
    );
    let policy = format!(
        "(!has(ps.restartPolicy) && has(ops.restartPolicy) \
           ? [JSONPatch{{op: 'add', path: {path} + '/restartPolicy', value: ops.restartPolicy}}] : [])"
    );
    let has_spec = |r: &str| {
        format!(
            "has({r}.template) && has({r}.template.spec) && has({r}.template.spec.template) && \
             has({r}.template.spec.template.spec)"
        )
    };
    let old_rjobs = "(has(oldObject.spec) && has(oldObject.spec.replicatedJobs) ? oldObject.spec.replicatedJobs : [])";
    let applied_path = format!(
        "'/metadata/annotations/' + jsonpatch.escapeKey({})",
        lit(APPLIED)
    );
    format!(
        "lists.range(size(variables.rjobs)).filter(i, \
           (variables.recordCut || variables.recordKeys.exists(k, k.startsWith(variables.rjNames[i] + '/'))) && \
           {new_spec}) \
         .map(i, [{old_rjobs}.filter(o, has(o.name) && o.name == variables.rjNames[i])].map(os, \
           size(os) == 0 || !({old_spec}) ? [] : \
           [variables.rjobs[i].template.spec.template.spec].map(ps, [os[0].template.spec.template.spec].map(ops, \
             {containers} + {sidecars} + {policy})[0])[0])[0]).flatten() \
         + (has(object.metadata.annotations) && {a} in object.metadata.annotations ? [] \
           : has(object.metadata.annotations) \
             ? [JSONPatch{{op: 'add', path: {applied_path}, value: variables.record}}] \
             : [JSONPatch{{op: 'add', path: '/metadata/annotations', value: {{{a}: variables.record}}}}])",
        new_spec = has_spec("variables.rjobs[i]"),
        old_spec = has_spec("os[0]"),
        a = lit(APPLIED),
    )
}

/// `check_container_names`: a name written on the JobSet that is found in none of the
/// replicated jobs its list applies to, or an admin list (preset, config) none of whose names
/// is there; blamed on the annotation, preset or config that named it.
fn typos() -> String {
    let with_defaults = "(variables.layers[i] + [dyn(variables.defaults)])";
    let head = format!(
        "[lists.range(4).filter(k, {c} in {with_defaults}[k])[0]].map(k, \
         k == 0 ? {rjob_scope} + {ck} \
         : k == 1 ? {ck} \
         : k == 2 ? ({p} in variables.rjAnns[i] ? {rjob_scope} : '') + {pk} + {qp} + ': its containers ' \
         : {config})[0]",
        c = lit(CONTAINERS),
        rjob_scope = format!(
            "'replicated job ' + {} + ': '",
            quote("variables.rjNames[i]")
        ),
        ck = lit(&format!("{CONTAINERS}: ")),
        p = lit(PRESET),
        pk = lit(&format!("{PRESET}: ")),
        qp = quote("variables.presetNames[i]"),
        config = lit("the cluster config's defaults.containers "),
    );
    let they_have = |users: &str| {
        format!(
            "[{users}.map(j, variables.present[j]).flatten().distinct()] \
             .map(e, size(e) == 0 ? 'they have none' : 'they have: ' + e.join(', '))[0]"
        )
    };
    let admin = format!(
        "lists.range(4).filter(k, {c} in {with_defaults}[k])[0] >= 2",
        c = lit(CONTAINERS),
    );
    format!(
        "!variables.hasNames.exists(h, h) ? [] : \
         [variables.work.filter(i, variables.hasNames[i])].map(w, w.map(i, {admin} \
           ? (w.filter(j, variables.names[j] == variables.names[i]) \
                .exists(j, variables.names[j].exists(n, n in variables.present[j])) ? [] \
              : [{head} + {qv} + ': none of these containers or sidecars is in the replicated jobs it applies to; ' + \
                 {admin_have}]) \
           : variables.names[i].filter(n, !w.exists(j, n in variables.names[j] && n in variables.present[j])) \
             .map(n, {head} + {qv} + ': no container or sidecar ' + {qn} + \
               ' in the replicated jobs it applies to; ' + {name_have})).flatten())[0]",
        qv = quote("variables.names[i].join(',')"),
        qn = quote("n"),
        admin_have = they_have("w.filter(j, variables.names[j] == variables.names[i])"),
        name_have = they_have("w.filter(j, n in variables.names[j])"),
    )
}

/// The webhook's `Applied::finish`: the entries joined with `, ` as long as they fit in
/// [`SUMMARY_BYTES`], then `, ... and N more`. The longest prefix that fits is found by a
/// binary search unrolled [`SEARCH_STEPS`] times over the entries' byte lengths (a prefix
/// sum per entry would cost n² steps of CEL).
fn summary() -> String {
    let fits = format!("lens.slice(0, m).sum() - 2 <= {SUMMARY_BYTES}");
    let mut search = "[0, size(t)]".to_owned();
    for _ in 0..SEARCH_STEPS {
        search = bind(
            &search,
            "b",
            &format!(
                "[(b[0] + b[1] + 1) / 2].map(m, b[0] == b[1] ? b : {fits} ? [m, b[1]] : [b[0], m - 1])[0]"
            ),
        );
    }
    bind(
        "variables.entries.map(e, e.text)",
        "t",
        &bind(
            "t.map(x, size(bytes(x)) + 2)",
            "lens",
            &format!(
                "lens.sum() - 2 <= {SUMMARY_BYTES} ? t.join(', ') : {}",
                bind(
                    &format!("{search}[0]"),
                    "k",
                    "(k == 0 ? '' : t.slice(0, k).join(', ') + ', ') + '... and ' + string(size(t) - k) + ' more'"
                )
            ),
        ),
    )
}

/// The JSON Patch of the mutating policy: `[]` when the annotations are invalid (the
/// validating policy denies those), else the container fields, the pod templates'
/// `restartPolicy` and the `applied` annotation.
pub fn mutation_patch() -> String {
    let applied_path = format!(
        "'/metadata/annotations/' + jsonpatch.escapeKey({})",
        lit(APPLIED)
    );
    format!(
        "request.operation == 'UPDATE' ? (variables.settingsChanged || variables.record == '' ? [] : {restore}) : \
         size(variables.denials) > 0 || variables.changed > {MAX_CHANGED_CONTAINERS} ? [] : \
         variables.entries.filter(e, e.set != 'none').map(e, e.set == 'both' \
           ? [JSONPatch{{op: 'add', path: e.path + '/restartPolicy', value: 'Never'}}, \
              JSONPatch{{op: 'add', path: e.path + '/restartPolicyRules', value: variables.rules[int(e.i)]}}] \
           : [JSONPatch{{op: 'add', path: e.path + '/restartPolicyRules', value: variables.rules[int(e.i)]}}]).flatten() \
         + variables.work.filter(i, !has(variables.rjobs[i].template.spec.template.spec.restartPolicy) && \
             variables.entries.exists(e, e.i == string(i))) \
           .map(i, JSONPatch{{op: 'add', path: '/spec/replicatedJobs/' + string(i) + '/template/spec/template/spec/restartPolicy', value: 'Never'}}) \
         + (variables.summary == '' || ({applied} in variables.anns && variables.anns[{applied}] == variables.summary) ? [] \
           : has(object.metadata.annotations) \
             ? [JSONPatch{{op: 'add', path: {applied_path}, value: variables.summary}}] \
             : [JSONPatch{{op: 'add', path: '/metadata/annotations', value: {{{applied}: variables.summary}}}}])",
        applied = lit(APPLIED),
        restore = restore(),
    )
}

/// Lays a generated expression out on lines of about [`LINE_WIDTH`] characters, breaking
/// before `?`, `:`, `&&`, `||`, `+` and after `,` once a line is long, and indenting by
/// bracket depth, so that the printed YAML (a block scalar per expression) can be read.
/// Only whitespace outside string literals changes, which CEL ignores.
pub fn layout(expr: &str) -> String {
    const LINE_WIDTH: usize = 96;
    let mut out = String::with_capacity(expr.len() + expr.len() / 8);
    let mut line = 0usize;
    let mut depth = 0usize;
    let (mut in_str, mut escaped) = (false, false);
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        i += 1;
        if in_str {
            out.push(c);
            line += 1;
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '\'') => in_str = false,
                _ => {}
            }
            continue;
        }
        let rest = chars.get(i..).unwrap_or_default();
        let breaks_before = |ops: &[&str]| {
            ops.iter().any(|op| {
                let op: Vec<char> = op.chars().collect();
                rest.starts_with(&op)
            })
        };
        match c {
            '\'' => in_str = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        let newline = |out: &mut String, line: &mut usize, depth: usize| {
            out.push('\n');
            for _ in 0..depth {
                out.push_str("  ");
            }
            *line = depth * 2;
        };
        if c == ' ' && line > LINE_WIDTH && breaks_before(&["? ", ": ", "&& ", "|| ", "+ "]) {
            newline(&mut out, &mut line, depth);
            continue;
        }
        out.push(c);
        line += 1;
        if c == ',' && rest.first() == Some(&' ') && line > LINE_WIDTH {
            i += 1;
            newline(&mut out, &mut line, depth);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(lit("it's"), r"'it\'s'");
        assert_eq!(lit(r"a\b"), r"'a\\b'");
        assert_eq!(lit("a\nb"), r"'a\nb'");
    }

    #[test]
    fn parentheses_balance_in_every_expression() {
        let c = Constants {
            presets: "{}".to_owned(),
            defaults: "{}".to_owned(),
            default_in_place: "disabled",
            no_such_preset: "x".to_owned(),
        };
        let all: Vec<String> = variables(&c)
            .into_iter()
            .map(|v| v.expression)
            .chain([mutation_patch()])
            .collect();
        for e in all {
            let mut depth: i64 = 0;
            let mut in_str = false;
            let mut escaped = false;
            for ch in e.chars() {
                if in_str {
                    match (escaped, ch) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '\'') => in_str = false,
                        _ => {}
                    }
                    continue;
                }
                match ch {
                    '\'' => in_str = true,
                    '(' | '[' | '{' => depth += 1,
                    ')' | ']' | '}' => depth -= 1,
                    _ => {}
                }
                assert!(depth >= 0, "unbalanced: {e}");
            }
            assert_eq!(depth, 0, "unbalanced: {e}");
            assert!(!in_str, "unterminated string: {e}");
        }
    }

    #[test]
    fn only_whitespace_outside_strings_changes() {
        let long = format!(
            "a ? '{}, x ? y : z' : [{}]",
            "s".repeat(120),
            (0..60)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let laid = layout(&long);
        assert!(laid.lines().count() > 1, "{laid}");
        let squash = |s: &str| s.split_whitespace().collect::<String>();
        assert_eq!(squash(&laid), squash(&long));
        assert!(laid.contains(&format!("'{}, x ? y : z'", "s".repeat(120))));
        assert_eq!(layout("a ? b : c"), "a ? b : c");
    }
}
