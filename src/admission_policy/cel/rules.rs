//! The rule per replicated job (`resolve`) and the planned changes (`plan_pod_spec`) in CEL,
//! with the container limit, the container-name typos and the `applied` summary.

use super::annotations::{expand_codes, items};
use super::patch::settings_changed;
use super::{Constants, Variable, bind, lit, quote, var};
use crate::engine::annotations::{
    ACTION, APPLIED, CONTAINERS, EXCEPT_EXIT_CODES, IN_PLACE, ON_EXIT_CODES, PRESET,
    REPLICATED_JOBS,
};
use crate::engine::applied::{APPLIED_TAIL_BYTES, MAX_APPLIED_BYTES, MAX_CHANGED_CONTAINERS};

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
pub(super) fn variables(c: &Constants) -> Vec<Variable> {
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
        // The namespace label (README, "Opting in"), read from the namespace object at admission time;
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
        // Every denial, in `mutate_jobset`'s order: only the first is sent, so the typos are
        // worked out only when nothing comes before them.
        var(
            "denials",
            "size(variables.problems) > 0 ? variables.problems : variables.typos".to_owned(),
        ),
    ]
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
