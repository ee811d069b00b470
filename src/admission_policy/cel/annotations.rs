//! The annotations' validation in CEL: `annotations::parse` and `parse_exit_codes` as
//! expressions, and the variables that collect every denial text.

use super::{Constants, Variable, bind, first_or_empty, lit, quote, var};
use crate::engine::annotations::{
    ACTION, APPLIED, CONTAINERS, EXCEPT_EXIT_CODES, IN_PLACE, MAX_EXIT_CODE_VALUES, MAX_LIST_BYTES,
    MAX_LIST_NAMES, ON_EXIT_CODES, PREFIX, PRESET, REPLICATED_JOBS,
};
use crate::engine::applied::{MAX_CONTAINERS, MAX_REPLICATED_JOBS};

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
pub(super) fn items(e: &str) -> String {
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
pub(super) fn expand_codes(e: &str) -> String {
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

/// `parse_names`' problem with the comma list `e` of `what` names, or `''`: the bounds on
/// bytes and names first, so that a list over them is never split name by name.
fn names_problem(e: &str, what: &str) -> String {
    let bounds = lit(&format!(
        "a list of {what} names may have at most {MAX_LIST_BYTES} bytes and {MAX_LIST_NAMES} \
         names; this one has "
    ));
    let names = first_or_empty(&format!(
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
    ));
    format!(
        "size(bytes({e})) > {MAX_LIST_BYTES} ? {bounds} + string(size(bytes({e}))) + ' bytes' \
         : size({e}.split(',')) > {MAX_LIST_NAMES} ? {bounds} + string(size({e}.split(','))) + ' names' \
         : {names}"
    )
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

/// A number no denial contains, to find where a count goes in the webhook's text.
const SENTINEL: usize = 987_654_321;

/// The webhook's `text` (made with [`SENTINEL`] for its count) as a CEL string expression
/// with the CEL string expression `count` in its place.
fn with_count(text: &str, count: &str) -> String {
    let (before, after) = text.split_once(&SENTINEL.to_string()).unwrap_or((text, ""));
    format!("{} + {count} + {}", lit(before), lit(after))
}

/// The object's annotations, per replicated job its name, annotations, preset and whether it
/// is considered at all, and the list of problems (`mutate_jobset`'s denials, in its order).
pub(super) fn variables(c: &Constants) -> (Vec<Variable>, Variable) {
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
    // `check_bounds`: the (MAX+1)-th replicated job that gets in-place restart, unless a
    // considered replicated job with an unknown preset comes first (the webhook refuses that
    // one); else the containers of all that get it.
    let first_bad_preset = "lists.range(size(variables.rjobs)).filter(i, variables.considered[i] && \
         variables.presetNames[i] != '' && !(variables.presetNames[i] in variables.presets))\
         [?0].orValue(size(variables.rjobs))";
    let pod_containers = "[variables.rjobs[i]].map(rj, has(rj.template) && has(rj.template.spec) && \
         has(rj.template.spec.template) && has(rj.template.spec.template.spec) ? \
         (has(rj.template.spec.template.spec.containers) ? size(rj.template.spec.template.spec.containers) : 0) + \
         (has(rj.template.spec.template.spec.initContainers) ? size(rj.template.spec.template.spec.initContainers) : 0) \
         : 0)[0]";
    let bounds = bind(
        "lists.range(size(variables.rjobs)).filter(i, variables.enabled[i])",
        "en",
        &bind(
            first_bad_preset,
            "bad",
            &format!(
                "(size(en) > {MAX_REPLICATED_JOBS} ? en[{MAX_REPLICATED_JOBS}] : size(variables.rjobs)) < bad \
                 ? [{rjobs_msg}] \
                 : bad < size(variables.rjobs) ? ({preset}) \
                 : [en.map(i, {pod_containers}).sum()].map(n, n > {MAX_CONTAINERS} ? [{containers_msg}] : [])[0]",
                rjobs_msg = with_count(
                    &crate::engine::too_many_replicated_jobs(SENTINEL),
                    "string(size(variables.rjobs))"
                ),
                containers_msg =
                    with_count(&crate::engine::too_many_containers(SENTINEL), "string(n)"),
            ),
        ),
    );
    let problems = {
        // `mutate_jobset`'s denials in its order; only the first one is ever sent, so each
        // step is worked out only when the ones before it found nothing (a list over its
        // bounds is then never split).
        var(
            "problems",
            bind(
                &js,
                "p1",
                &format!(
                    "size(p1) > 0 ? p1 : {}",
                    bind(
                        &rj,
                        "p2",
                        &format!(
                            "size(p2) > 0 ? p2 : {}",
                            bind(&missing, "p3", &format!("size(p3) > 0 ? p3 : {bounds}"))
                        )
                    )
                ),
            ),
        )
    };
    let vars = vec![
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
    ];
    (vars, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_goes_where_the_webhook_writes_it() {
        let text = crate::engine::too_many_replicated_jobs(SENTINEL);
        let cel = with_count(&text, "string(n)");
        let want = crate::engine::too_many_replicated_jobs(400);
        let (before, after) = want.split_once("400").unwrap_or_default();
        assert_eq!(cel, format!("{} + string(n) + {}", lit(before), lit(after)));
        let text = crate::engine::too_many_containers(SENTINEL);
        assert!(
            with_count(&text, "c").contains("' + c + '"),
            "{}",
            with_count(&text, "c")
        );
    }
}
