//! One contract, two engines: every JobSet we have (the `sigs.k8s.io/jobset` module's
//! `config/samples/` and our `tests/fixtures/jobsets/`), under each annotation combination
//! below, is created once where our webhook admits it and once where the admission policies
//! from `jobset-restart-webhook policy` do (same cluster config, same API server, namespaces
//! told apart by a label both registrations select on). The stored `spec` and `applied`
//! annotation must be identical, and where one engine refuses a JobSet the other must refuse
//! it with the same HTTP code and the same text after the API server's wrapper. Every
//! difference is listed by file, combination and JSON path.

mod engines;
mod store;

use engines::*;
use store::*;

use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::{Cluster, ClusterOptions, TestNamespace, example_manifests};
use crate::util::{TestTimer, at, load_yaml, repo_root, wait_for, yaml_documents};
use crate::webhook::{Webhook, WebhookOptions};

/// The namespace label both registrations add to their namespace selectors.
const ENGINE_LABEL: &str = "restart-e2e.jobset.dev/engine";
const APPLIED: &str = "restart.jobset.dev/applied";

type Edit = fn(&mut Value);

/// (name, edit): the annotation combinations every JobSet is created with.
const COMBINATIONS: &[(&str, Edit)] = &[
    ("as-is", |_| {}),
    ("enabled", |d| set(d, "in-place", "enabled")),
    ("true-restart", |d| {
        set(d, "in-place", " true ");
        set(d, "action", "Restart");
    }),
    ("on-codes", |d| {
        set(d, "in-place", "enabled");
        set(d, "on-exit-codes", "42, 43,128-143,7-8, 9 - 9,007");
    }),
    ("except-codes", |d| {
        set(d, "in-place", "enabled");
        set(d, "except-exit-codes", "0,1,2,3,250-255");
    }),
    ("containers", |d| {
        set(d, "in-place", "enabled");
        let names = first_containers(d);
        set(d, "containers", &names);
    }),
    ("rjobs", |d| {
        set(d, "in-place", "enabled");
        if let Some(first) = rjob_names(d).first() {
            set(d, "replicated-jobs", first);
        }
    }),
    ("overrides", |d| {
        set(d, "in-place", "enabled");
        set(d, "action", "Restart");
        let n = rjob_names(d).len();
        if n > 1 {
            set_rjob(d, 0, "in-place", "disabled");
        }
        set_rjob(d, n.saturating_sub(1), "action", "RestartAllContainers");
        set_rjob(d, n.saturating_sub(1), "on-exit-codes", "3");
    }),
    ("rjob-only", |d| {
        remove(d, "in-place");
        set_rjob(d, 0, "in-place", "enabled");
        set_rjob(d, 0, "except-exit-codes", "0,137");
    }),
    ("preset", |d| set(d, "preset", "pytorch")),
    ("preset-rjob", |d| {
        set(d, "in-place", "enabled");
        set_rjob(d, 0, "preset", "pytorch");
    }),
    ("disabled", |d| set(d, "in-place", "disabled")),
    ("bad-code", |d| {
        set(d, "in-place", "enabled");
        set(d, "on-exit-codes", "42,abc");
    }),
    ("bad-range", |d| {
        set(d, "in-place", "enabled");
        set(d, "except-exit-codes", "0, 143-128");
    }),
    ("out-of-range", |d| {
        set(d, "in-place", "enabled");
        set(d, "on-exit-codes", "1-0300");
    }),
    ("both-codes", |d| {
        set(d, "in-place", "enabled");
        set(d, "on-exit-codes", "1");
        set(d, "except-exit-codes", "0");
    }),
    ("bad-action", |d| {
        set(d, "in-place", "enabled");
        set(d, "action", "Recreate");
    }),
    ("bad-in-place", |d| set(d, "in-place", "yes")),
    ("bad-container", |d| {
        set(d, "in-place", "enabled");
        set(d, "containers", "trainer,,Main");
    }),
    ("unknown-preset", |d| set(d, "preset", "tensorflow")),
    ("unknown-rjob", |d| {
        set(d, "in-place", "enabled");
        set(d, "replicated-jobs", "nope");
    }),
    ("unknown-key", |d| set(d, "inplace", "enabled")),
    ("too-many", |d| {
        set(d, "in-place", "enabled");
        set(d, "on-exit-codes", "0-255");
    }),
    ("quoted", |d| set(d, "in-place", "say \"yes\" \\ no")),
    ("long", |d| {
        set(d, "in-place", "enabled");
        set(d, "containers", &format!("trainer,{}", "x".repeat(100)));
    }),
    ("unicode", |d| {
        set(d, "in-place", "enabled");
        set(d, "containers", "trainer, träiner");
    }),
    ("preset-off", |d| set(d, "preset", "off")),
    ("rjob-bad", |d| {
        set(d, "in-place", "enabled");
        set_rjob(d, 0, "replicated-jobs", "x");
    }),
    // The bounds on a name list: 65 names; 64 names of 63 characters with ", " (4,158 bytes).
    ("many-names", |d| {
        set(d, "in-place", "enabled");
        let names: Vec<String> = (0..65).map(|i| format!("c{i}")).collect();
        set(d, "containers", &names.join(","));
    }),
    ("list-bytes", |d| {
        set(d, "in-place", "enabled");
        let names: Vec<String> = (0..64).map(|i| format!("{i:x>63}")).collect();
        set_rjob(d, 0, "containers", &names.join(", "));
    }),
];

/// Combinations also created in namespaces with the `restart.jobset.dev/in-place` label (the
/// namespace default only matters where no annotation decides).
const IN_LABELLED_NAMESPACES: &[&str] = &["as-is", "disabled", "preset", "rjob-only", "preset-off"];

fn set(doc: &mut Value, key: &str, value: &str) {
    doc["metadata"]["annotations"][format!("restart.jobset.dev/{key}")] = json!(value);
}

fn remove(doc: &mut Value, key: &str) {
    if let Some(m) = doc["metadata"]["annotations"].as_object_mut() {
        m.remove(&format!("restart.jobset.dev/{key}"));
    }
}

fn set_rjob(doc: &mut Value, i: usize, key: &str, value: &str) {
    if let Some(rj) = doc
        .pointer_mut("/spec/replicatedJobs")
        .and_then(|r| r.get_mut(i))
    {
        rj["template"]["metadata"]["annotations"][format!("restart.jobset.dev/{key}")] =
            json!(value);
    }
}

fn rjob_names(doc: &Value) -> Vec<String> {
    at(doc, "/spec/replicatedJobs")
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect()
}

/// The first replicated job's first container and its sidecars, as a `containers` value.
fn first_containers(doc: &Value) -> String {
    let spec = at(doc, "/spec/replicatedJobs/0/template/spec/template/spec");
    let mut names: Vec<&str> = Vec::new();
    if let Some(c) = spec["containers"][0]["name"].as_str() {
        names.push(c);
    }
    for ic in spec["initContainers"].as_array().into_iter().flatten() {
        if ic["restartPolicy"] == "Always" {
            names.extend(ic["name"].as_str());
        }
    }
    if names.is_empty() {
        names.push("main");
    }
    names.join(",")
}

/// The combinations the synthetic large JobSets are created with (each stored one makes a
/// child Job per replicated job).
const LARGE_COMBINATIONS: &[&str] = &["as-is", "enabled", "containers", "overrides", "bad-code"];

/// `rjobs` replicated jobs of `containers` containers each (one of them a named sidecar init
/// container), every replicated job with its own exit codes.
fn large_jobset(rjobs: usize, containers: usize) -> Value {
    let replicated: Vec<Value> = (0..rjobs)
        .map(|r| {
            let regular: Vec<Value> = (0..containers)
                .map(|i| {
                    let name = if i == 0 { "trainer".to_owned() } else { format!("c{i}") };
                    json!({"name": name, "image": "busybox:1.36"})
                })
                .collect();
            json!({
                "name": format!("r{r}"),
                "replicas": 1,
                "template": {
                    "metadata": {"annotations": {
                        "restart.jobset.dev/on-exit-codes": format!("{},100-120,{}", r % 50, 200 + r % 50)
                    }},
                    "spec": {"template": {"spec": {
                        "containers": regular,
                        "initContainers": [{"name": "sidecar", "image": "busybox:1.36", "restartPolicy": "Always"}]
                    }}}
                }
            })
        })
        .collect();
    json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": "large"},
        "spec": {"replicatedJobs": replicated}
    })
}

/// `check` counts the shipped admission policies (manifests/policy) as what does the JobSet
/// target when the webhook is not registered, and calls a partial install a problem.
fn check_sees_the_policies(c: &Cluster) {
    let check = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobset-restart-webhook"))
            .args(["check", "-o", "json"])
            .env("KUBECONFIG", &c.kubeconfig)
            .output()
            .expect("running jobset-restart-webhook check");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "check -o json printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), report)
    };
    let dir = repo_root().join("manifests/policy");
    c.kubectl_ok(&["apply", "-k", &dir.to_string_lossy()], None);
    let (code, report) = check();
    assert_eq!(
        (code, &report["admissionPolicy"]["installed"]["value"]),
        (Some(0), &json!(true)),
        "check with the policies and no webhook registered: {report:#}"
    );
    c.kubectl_ok(
        &[
            "delete",
            "validatingadmissionpolicybinding",
            "jobset-restart-annotations",
        ],
        None,
    );
    let (code, report) = check();
    assert_eq!(code, Some(1), "a partial install is a problem: {report:#}");
    assert!(
        report["problems"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p.as_str().is_some_and(|p| p.contains("partly installed"))),
        "{report:#}"
    );
}

#[test]
fn policy_and_webhook_store_the_same_jobsets() {
    let _t = TestTimer::start("policy_and_webhook_store_the_same_jobsets");
    // JobSet's controller runs with its own mutating and validating webhooks, so both engines
    // meet JobSet's defaulting (and the reinvocation it triggers) as in a real cluster. No
    // controller manager: the child Jobs make no pods.
    let cluster = Cluster::start(ClusterOptions {
        name: "differential",
        controller_manager: false,
        ..ClusterOptions::default()
    });
    let c = &cluster;
    // The harness gives a cluster without a controller manager the `default` ServiceAccount
    // (testkit `Cluster::start`), so the webhook's probe answers and its default action is
    // RestartAllContainers, like the policy's, which cannot probe.
    let all: Vec<Engines<'_>> = CONFIGS
        .iter()
        .enumerate()
        .map(|(n, config)| engines(c, n, *config))
        .collect();
    let api = Api::new(c);

    let files = example_manifests();

    let mut tally = Tally::default();
    let mut jobsets = 0;
    let mut documents: Vec<(String, usize, Value)> = Vec::new();
    for file in &files {
        let file_name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (d, doc) in load_yaml(file).into_iter().enumerate() {
            if doc["kind"] == "JobSet" {
                documents.push((file_name.clone(), d, doc));
            }
        }
    }
    // A large JobSet, so that the policy's CEL runs near a realistic worst case of its cost.
    // Synthetic JobSets: a large one (the CEL's cost near a realistic worst case), a wider one
    // whose `applied` summary is cut at the webhook's bound, and one that would change more
    // containers than the webhook changes in one JobSet.
    documents.push(("large.yaml".to_owned(), 0, large_jobset(32, 8)));
    documents.push(("large-cut.yaml".to_owned(), 0, large_jobset(64, 8)));
    documents.push(("large-over.yaml".to_owned(), 0, large_jobset(136, 8)));
    // Over the bounds of one review: 257 replicated jobs; 8 x 513 containers (4,104).
    documents.push(("large-rjobs.yaml".to_owned(), 0, large_jobset(257, 1)));
    documents.push(("large-containers.yaml".to_owned(), 0, large_jobset(8, 512)));
    for (file_name, d, original) in &documents {
        {
            jobsets += 1;
            for engines in &all {
                for (combo, edit) in COMBINATIONS {
                    if file_name.starts_with("large") && !LARGE_COMBINATIONS.contains(combo) {
                        continue;
                    }
                    let mut pairs = vec![&engines.plain];
                    if IN_LABELLED_NAMESPACES.contains(combo) {
                        pairs.push(&engines.labelled);
                    }
                    for (w_ns, p_ns) in pairs {
                        let mut doc = original.clone();
                        edit(&mut doc);
                        let stem = file_name.trim_end_matches(".yaml").replace('_', "-");
                        doc["metadata"]["name"] = json!(format!("{stem}-{d}-{combo}"));
                        if let Some(m) = doc["metadata"].as_object_mut() {
                            m.remove("namespace");
                        }
                        let what = format!(
                            "{file_name} #{d} {combo} with {} (in {} / {})",
                            engines.config, w_ns.name, p_ns.name
                        );
                        let created = (api.create(w_ns, &doc), api.create(p_ns, &doc));
                        let both_stored =
                            matches!(created, (Outcome::Stored(_), Outcome::Stored(_)));
                        tally.compare(&what, "create", created);
                        if !both_stored {
                            continue;
                        }
                        // UPDATE 1: the stored JobSet written back without anything either
                        // engine added (`kubectl replace` or a client-side apply of a manifest
                        // that spells out JobSet's defaults, a controller's full update).
                        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
                        let bare = |current: &Value| without_our_fields(current, &doc);
                        let replaced = (
                            api.replace_current(w_ns, name, &bare),
                            api.replace_current(p_ns, name, &bare),
                        );
                        tally.updates += 1;
                        tally.compare(&what, "replace", replaced);
                        // UPDATE 2: a changed setting that is invalid: refused alike.
                        let changed = |current: &Value| {
                            let mut out = without_our_fields(current, &doc);
                            set(&mut out, "on-exit-codes", "300");
                            remove(&mut out, "except-exit-codes");
                            out
                        };
                        tally.compare(
                            &what,
                            "changed setting",
                            (
                                api.replace_current(w_ns, name, &changed),
                                api.replace_current(p_ns, name, &changed),
                            ),
                        );
                    }
                }
            }
        }
    }
    let Tally {
        problems,
        same_stored,
        same_refused,
        with_applied,
        cut,
        over_limit,
        updates,
        updates_same,
        restored,
    } = tally;
    eprintln!(
        "[e2e] differential: {jobsets} JobSets x {} combinations x {} configs: {same_stored} \
         stored identically ({with_applied} with an applied annotation, {cut} of them cut), \
         {same_refused} refused identically ({over_limit} for their size); {updates} of the \
         stored ones updated twice (replaced by their manifest, then with a changed setting): \
         {updates_same} updates ended identically ({restored} restored an applied record); {} \
         differences",
        COMBINATIONS.len(),
        CONFIGS.len(),
        problems.len()
    );
    assert!(
        problems.is_empty(),
        "{} difference(s) between the webhook and the policy:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(
        updates_same == 2 * updates && restored * 2 >= updates,
        "updates: {updates_same} of {} ended alike, {restored} restored a record",
        2 * updates
    );
    check_sees_the_policies(c);
    assert!(
        cut > 0 && over_limit > 0,
        "the synthetic JobSets did not reach the summary bound ({cut}) or the container limit \
         ({over_limit})"
    );
    assert!(
        jobsets >= 13,
        "expected the samples and fixtures; found {jobsets} JobSets"
    );
    assert!(
        // 15 and not 16 per JobSet: the two synthetic large JobSets are refused by the size
        // bounds (replicated jobs, containers) in most combinations.
        with_applied >= jobsets * 15 && same_refused >= jobsets * 20,
        "too few mutated ({with_applied}) or refused ({same_refused}) JobSets for {jobsets} \
         JobSets: the combinations did not take effect"
    );
}
