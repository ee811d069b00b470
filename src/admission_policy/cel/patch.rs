//! The mutating policy's JSON Patch: the planned fields on CREATE, what an UPDATE dropped
//! restored from the stored object.

use super::lit;
use crate::engine::annotations::{APPLIED, PREFIX};
use crate::engine::applied::MAX_CHANGED_CONTAINERS;

/// `update::settings`: the `restart.jobset.dev/*` annotations (`applied` aside) of the JobSet
/// and of its replicated jobs, as sorted `k=v` and `rjob|k=v` lists, compared between the
/// object and the stored one.
pub(super) fn settings_changed() -> String {
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
