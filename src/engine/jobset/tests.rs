use serde_json::{Value, json};

use super::*;
use crate::engine::applied::{MAX_APPLIED_BYTES, MAX_REPLICATED_JOBS};
use crate::engine::config::Config;
use crate::engine::testing::{assert_idempotent, containers, enabled, env, jobset, mutate};

#[test]
fn a_container_name_found_in_no_selected_replicated_job_is_refused() {
    let mut ann = enabled();
    ann[annotations::CONTAINERS] = json!("trainr");
    let js = jobset(
        ann,
        vec![("a", containers("trainer", 1)), ("b", containers("x", 2))],
    );
    assert_eq!(
        mutate(&js).err().map(|d| (d.reason, d.message)),
        Some((
            DenialReason::Invalid,
            "restart.jobset.dev/containers: \"trainr\": no container or sidecar \"trainr\" \
             in the replicated jobs it applies to; they have: trainer0, x0, x1"
                .to_owned()
        ))
    );
}

#[test]
fn a_container_name_found_in_one_replicated_job_only_warns() {
    let mut ann = enabled();
    ann[annotations::CONTAINERS] = json!("c0");
    let js = jobset(
        ann,
        vec![("a", containers("c", 1)), ("b", containers("d", 1))],
    );
    let m = mutate(&js).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        m.summary.as_deref(),
        Some("a/c0=RestartAllContainers:NotIn(0)")
    );
    // Replicated job `b` gets no rule, so its pod template keeps its restartPolicy.
    let out = assert_idempotent(&js, &m);
    let b = &out["spec"]["replicatedJobs"][1]["template"]["spec"]["template"]["spec"];
    assert!(b.get("restartPolicy").is_none(), "{b}");
    assert!(
        m.warnings
            .iter()
            .any(|w| w.contains("replicated job \"b\": no container gets the restart rule")),
        "{:?}",
        m.warnings
    );
}

#[test]
fn a_replicated_job_level_typo_is_blamed_on_that_annotation() {
    let mut js = jobset(enabled(), vec![("a", containers("c", 2))]);
    js["spec"]["replicatedJobs"][0]["template"]["metadata"] =
        json!({ "annotations": { annotations::CONTAINERS: "c1, c9" } });
    assert_eq!(
        mutate(&js).err().map(|d| d.message),
        Some(
            "replicated job \"a\": restart.jobset.dev/containers: \"c1,c9\": no container \
             or sidecar \"c9\" in the replicated jobs it applies to; they have: c0, c1"
                .to_owned()
        )
    );
}

#[test]
fn preset_and_config_container_typos_name_their_source() {
    let config = Config::from_yaml(
        "presets:\n  p: {containers: [nope]}\ndefaults: {containers: [gone]}\n",
        "test",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut ann = enabled();
    ann[annotations::PRESET] = json!("p");
    let js = jobset(ann, vec![("a", containers("c", 1))]);
    let m = mutate_jobset(&js.to_string(), &env(&config));
    assert_eq!(
        m.err().map(|d| d.message),
        Some(
            "restart.jobset.dev/preset: \"p\": its containers \"nope\": none of these \
             containers or sidecars is in the replicated jobs it applies to; they have: c0"
                .to_owned()
        )
    );
    let js = jobset(enabled(), vec![("a", containers("c", 1))]);
    let m = mutate_jobset(&js.to_string(), &env(&config));
    assert_eq!(
        m.err().map(|d| (d.reason, d.message)),
        Some((
            DenialReason::Invalid,
            "the cluster config's defaults.containers \"gone\": none of these containers or \
             sidecars is in the replicated jobs it applies to; they have: c0"
                .to_owned()
        ))
    );
}

#[test]
fn an_admin_list_that_names_a_superset_is_fine() {
    let config = Config::from_yaml("defaults: {containers: [main, c0, worker]}\n", "test")
        .unwrap_or_else(|e| panic!("{e}"));
    let js = jobset(enabled(), vec![("a", containers("c", 2))]);
    let m = mutate_jobset(&js.to_string(), &env(&config)).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        m.summary.as_deref(),
        Some("a/c0=RestartAllContainers:NotIn(0)")
    );
}

#[test]
fn enabled_but_every_container_user_set_changes_nothing() {
    let user = json!({ "name": "m", "restartPolicy": "Never", "restartPolicyRules": [
        { "action": "Restart", "exitCodes": { "operator": "In", "values": [3] } }] });
    let js = jobset(enabled(), vec![("a", vec![user])]);
    let m = mutate(&js).unwrap_or_else(|d| panic!("{d}"));
    assert!(m.patch.is_empty(), "{:?}", m.patch);
    assert_eq!(m.summary, None);
    assert!(
        m.warnings
            .iter()
            .any(|w| w.contains("so the JobSet is left as it is")),
        "{:?}",
        m.warnings
    );
}

#[test]
fn replicated_jobs_naming_a_missing_one_lists_the_existing_or_says_none() {
    let mut ann = enabled();
    ann[annotations::REPLICATED_JOBS] = json!("nope");
    let with = jobset(
        ann.clone(),
        vec![("a", containers("c", 1)), ("b", containers("d", 1))],
    );
    assert_eq!(
        mutate(&with).err().map(|d| (d.reason, d.message)),
        Some((
            DenialReason::Invalid,
            r#"restart.jobset.dev/replicated-jobs: "nope": this JobSet has no replicated job "nope"; it has: a, b"#
                .to_owned()
        ))
    );
    let without = jobset(ann, vec![]);
    assert_eq!(
        mutate(&without).err().map(|d| d.message),
        Some(
            r#"restart.jobset.dev/replicated-jobs: "nope": this JobSet has no replicated job "nope"; it has none"#
                .to_owned()
        )
    );
}

#[test]
fn containers_up_to_the_cap_are_changed() {
    let js = jobset(
        enabled(),
        vec![
            ("a", containers("c", MAX_CHANGED_CONTAINERS - 1)),
            ("b", containers("d", 1)),
        ],
    );
    let m = mutate(&js).unwrap_or_else(|d| panic!("{d}"));
    // Two per container, the pod templates' restartPolicy, the annotation.
    assert_eq!(m.patch.len(), 2 * MAX_CHANGED_CONTAINERS + 2 + 1);
    assert_idempotent(&js, &m);
}

#[test]
fn a_jobset_over_the_cap_is_refused_with_the_count() {
    let js = jobset(
        enabled(),
        vec![("a", containers("c", 2000)), ("b", containers("d", 1000))],
    );
    let d = mutate(&js).err();
    assert_eq!(
        d,
        Some(Denial {
            reason: DenialReason::Invalid,
            message: "in-place restart would change 3000 containers of this JobSet, more \
                      than the 1024 the webhook changes in one JobSet; select the \
                      containers that need it with restart.jobset.dev/containers \
                      (container names) or the replicated jobs with \
                      restart.jobset.dev/replicated-jobs (replicated job names)"
                .to_owned(),
        })
    );
    // What the message suggests: only one replicated job, or named containers.
    let mut ann = enabled();
    ann[annotations::REPLICATED_JOBS] = json!("b");
    let m = mutate(&jobset(
        ann,
        vec![("a", containers("c", 2000)), ("b", containers("d", 1000))],
    ));
    assert!(m.is_ok_and(|m| m.patch.len() == 2 * 1000 + 2));
    let mut ann = enabled();
    ann[annotations::CONTAINERS] = json!("c0,d0");
    let m = mutate(&jobset(
        ann,
        vec![("a", containers("c", 2000)), ("b", containers("d", 1000))],
    ));
    assert!(m.is_ok_and(|m| m.patch.len() == 2 * 2 + 2 + 1));
}

#[test]
fn sidecars_count_towards_the_cap() {
    // 17 replicated jobs of 61 containers and 2 sidecars, all named by one list of 63.
    let names: Vec<String> = (0..61)
        .map(|i| format!("c{i}"))
        .chain(["s0".to_owned(), "s1".to_owned()])
        .collect();
    let sidecars: Vec<Value> = (0..2)
        .map(|i| json!({ "name": format!("s{i}"), "restartPolicy": "Always" }))
        .collect();
    let rjobs: Vec<String> = (0..17).map(|i| format!("r{i}")).collect();
    let mut js = jobset(
        json!({ annotations::IN_PLACE: "enabled", annotations::CONTAINERS: "c0,s0,s1" }),
        rjobs
            .iter()
            .map(|r| (r.as_str(), containers("c", 61)))
            .collect(),
    );
    for i in 0..17 {
        js["spec"]["replicatedJobs"][i]["template"]["spec"]["template"]["spec"]["initContainers"] =
            json!(sidecars);
    }
    // c0 and both sidecars in each: 51, and each pod template's restartPolicy.
    assert!(mutate(&js).is_ok_and(|m| m.patch.len() == 17 * (2 + 1 + 1) + 17 + 1));
    // Every regular container and both sidecars: 17 x 63 = 1071.
    js["metadata"]["annotations"][annotations::CONTAINERS] = json!(names.join(","));
    let d = mutate(&js).err();
    assert!(
        d.as_ref().is_some_and(|d| d.reason == DenialReason::Invalid
            && d.message.starts_with(
                "in-place restart would change 1071 containers of this JobSet, more than \
                 the 1024 "
            )),
        "{d:?}"
    );
}

/// `n` replicated jobs `r0`, `r1`, ... of one container each.
fn many_rjobs(ann: Value, n: usize) -> Value {
    let names: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    jobset(
        ann,
        names
            .iter()
            .map(|r| (r.as_str(), containers("c", 1)))
            .collect(),
    )
}

#[test]
fn replicated_jobs_over_the_bound_are_refused_before_any_is_planned() {
    let at = mutate(&many_rjobs(enabled(), MAX_REPLICATED_JOBS));
    assert!(at.is_ok_and(|m| m.patch.len() == 3 * MAX_REPLICATED_JOBS + 1));
    let d = mutate(&many_rjobs(enabled(), 400)).err();
    assert_eq!(
        d,
        Some(Denial {
            reason: DenialReason::Invalid,
            message: "in-place restart would apply to more than 128 of this JobSet's 400 \
                      replicated jobs, more than the webhook reviews in one JobSet; select the \
                      replicated jobs that need it with restart.jobset.dev/replicated-jobs \
                      (replicated job names) or their own restart.jobset.dev/in-place"
                .to_owned()
        })
    );
    assert_eq!(d.map(|d| d.message), Some(too_many_replicated_jobs(400)));
    // Only the replicated jobs that get in-place restart count: a JobSet of 400 where 10 opt
    // in is reviewed.
    let mut js = many_rjobs(json!({}), 400);
    for i in 0..10 {
        js["spec"]["replicatedJobs"][i]["template"]["metadata"] =
            json!({ "annotations": { annotations::IN_PLACE: "enabled" } });
    }
    assert!(mutate(&js).is_ok_and(|m| m.patch.len() == 3 * 10 + 1));
    assert!(mutate(&many_rjobs(json!({}), 10_000)).is_ok_and(|m| m.patch.is_empty()));
}

#[test]
fn containers_over_the_bound_are_refused_before_any_is_read() {
    let d = mutate(&jobset(
        enabled(),
        vec![("a", containers("c", 4000)), ("b", containers("d", 97))],
    ))
    .err();
    assert_eq!(
        d,
        Some(Denial {
            reason: DenialReason::Invalid,
            message: "in-place restart would apply to replicated jobs with 4097 containers and \
                      init containers in all, more than the 4096 the webhook reads in one \
                      JobSet; select the replicated jobs that need it with \
                      restart.jobset.dev/replicated-jobs (replicated job names)"
                .to_owned()
        })
    );
    // At the bound the usual limit answers; unselected replicated jobs do not count.
    let d = mutate(&jobset(
        enabled(),
        vec![("a", containers("c", 4000)), ("b", containers("d", 96))],
    ))
    .err();
    assert!(d.is_some_and(|d| d.message.starts_with("in-place restart would change 4096 ")));
    let mut ann = enabled();
    ann[annotations::REPLICATED_JOBS] = json!("b");
    let m = mutate(&jobset(
        ann,
        vec![("a", containers("c", 90_000)), ("b", containers("d", 1))],
    ));
    assert!(m.is_ok_and(|m| m.patch.len() == 2 + 1 + 1));
}

#[test]
fn the_first_unknown_preset_is_reported_before_the_bounds() {
    let mut js = many_rjobs(enabled(), 300);
    js["spec"]["replicatedJobs"][3]["template"]["metadata"] =
        json!({ "annotations": { annotations::PRESET: "nope" } });
    assert!(
        mutate(&js)
            .err()
            .is_some_and(|d| d.message.contains("no such preset")),
    );
    js["spec"]["replicatedJobs"][3]["template"]["metadata"] = json!({});
    js["spec"]["replicatedJobs"][299]["template"]["metadata"] =
        json!({ "annotations": { annotations::PRESET: "nope" } });
    assert_eq!(
        mutate(&js).err().map(|d| d.message),
        Some(too_many_replicated_jobs(300))
    );
}

#[test]
fn containers_that_already_carry_the_rule_do_not_count() {
    let js = jobset(
        enabled(),
        vec![("a", containers("c", MAX_CHANGED_CONTAINERS))],
    );
    let m = mutate(&js).unwrap_or_else(|d| panic!("{d}"));
    let mut out = assert_idempotent(&js, &m);
    // One more plain container beside 1024 that already carry the rule: one change.
    let ctrs =
        &mut out["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"];
    if let Some(list) = ctrs.as_array_mut() {
        list.push(json!({ "name": "late", "image": "x:1" }));
    }
    let m = mutate(&out).unwrap_or_else(|d| panic!("{d}"));
    // The container's two fields and the annotation, whose summary changed.
    assert_eq!(m.patch.len(), 3);
}

#[test]
fn the_applied_summary_is_bounded_and_stable() {
    // 1000 containers with 60-character names: about 95 KB of summary unbounded.
    let long = "x".repeat(56);
    let js = jobset(enabled(), vec![("workers", containers(&long, 1000))]);
    let m = mutate(&js).unwrap_or_else(|d| panic!("{d}"));
    let summary = m.summary.clone().unwrap_or_default();
    assert!(summary.len() <= MAX_APPLIED_BYTES, "{}", summary.len());
    assert!(summary.len() > MAX_APPLIED_BYTES - 200, "{}", summary.len());
    let entry = |i: usize| format!("workers/{long}{i}=RestartAllContainers:NotIn(0)");
    let listed = summary
        .split(", ")
        .filter(|e| !e.starts_with("..."))
        .count();
    assert!(summary.starts_with(&format!("{}, {}, ", entry(0), entry(1))));
    assert!(
        summary.ends_with(&format!(
            "{}, ... and {} more",
            entry(listed - 1),
            1000 - listed
        )),
        "{summary}"
    );
    // The annotation carries the same text, and a second review changes nothing.
    let out = assert_idempotent(&js, &m);
    assert_eq!(out["metadata"]["annotations"][APPLIED], json!(summary));
}

#[test]
fn an_unreadable_container_is_named() {
    let mut cs = containers("c", 2);
    cs.push(json!({ "name": 5 }));
    let d = mutate(&jobset(
        enabled(),
        vec![("a", containers("d", 1)), ("b", cs)],
    ))
    .err();
    assert_eq!(
        d,
        Some(Denial {
            reason: DenialReason::BadRequest,
            message: "/spec/replicatedJobs/1/template/spec/template/spec/containers/2: not a \
                      container the webhook can read: invalid type: integer `5`, expected a \
                      string at line 1 column 9"
                .to_owned(),
        })
    );
}
