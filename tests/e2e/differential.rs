//! One contract, two engines: every JobSet we have (the `sigs.k8s.io/jobset` module's
//! `config/samples/` and our `tests/fixtures/jobsets/`), under each annotation combination
//! below, is created once where our webhook admits it and once where the admission policies
//! from `jobset-restart-webhook policy` do (same cluster config, same API server, namespaces
//! told apart by a label both registrations select on). The stored `spec` and `applied`
//! annotation must be identical, and where one engine refuses a JobSet the other must refuse
//! it with the same HTTP code and the same text after the API server's wrapper. Every
//! difference is listed by file, combination and JSON path.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::cluster::{Cluster, ClusterOptions, JOBSET_V0_12_0, jobset_module_dir};
use crate::util::{TestTimer, at, load_yaml, repo_root, wait_for};
use crate::webhook::{Webhook, WebhookOptions, dry_run_probe};

/// The namespace label both registrations add to their namespace selectors.
const ENGINE_LABEL: &str = "restart-e2e.jobset.dev/engine";
const APPLIED: &str = "restart.jobset.dev/applied";
const CONFIG: &str = "tests/fixtures/config.yaml";

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
    ("rjob-bad", |d| {
        set(d, "in-place", "enabled");
        set_rjob(d, 0, "replicated-jobs", "x");
    }),
];

/// Combinations also created in namespaces labelled `restart.jobset.dev/in-place=enabled`
/// (the namespace default only matters where no annotation decides).
const IN_LABELLED_NAMESPACES: &[&str] = &["as-is", "disabled", "preset", "rjob-only"];

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

/// How one create ended: the stored object, or the API server's code and the text after
/// its wrapper ("... denied the request: " / "... denied request: ").
#[derive(Debug)]
enum Outcome {
    Stored(Value),
    Refused(u16, String),
}

struct Api {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
}

impl Api {
    fn new(cluster: &Cluster) -> Api {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let client = rt.block_on(async {
            let kc = kube::config::Kubeconfig::read_from(&cluster.kubeconfig)
                .expect("reading the cluster's kubeconfig");
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .expect("a client config from the kubeconfig");
            kube::Client::try_from(config).expect("a kube client")
        });
        Api { rt, client }
    }

    fn create(&self, namespace: &str, jobset: &Value) -> Outcome {
        let path = format!("/apis/jobset.x-k8s.io/v1alpha2/namespaces/{namespace}/jobsets");
        let request = http::Request::post(path)
            .header("content-type", "application/json")
            .body(jobset.to_string().into_bytes())
            .expect("a create request");
        match self.rt.block_on(self.client.request::<Value>(request)) {
            Ok(stored) => Outcome::Stored(stored),
            Err(kube::Error::Api(status)) => {
                let text = ["denied the request: ", "denied request: "]
                    .iter()
                    .find_map(|w| {
                        status
                            .message
                            .rfind(w)
                            .map(|i| status.message[i + w.len()..].to_owned())
                    })
                    .unwrap_or_else(|| format!("(not an admission denial) {}", status.message));
                Outcome::Refused(status.code, text)
            }
            Err(e) => panic!(
                "creating {} in {namespace}: {e}",
                jobset["metadata"]["name"]
            ),
        }
    }
}

/// The JSON paths where `a` and `b` differ (at most a few per object).
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
                differences(&x[k.as_str()], &y[k.as_str()], &p, out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                differences(u, v, &format!("{path}/{i}"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: webhook {a}, policy {b}")),
        _ => {}
    }
}

fn generated_policy() -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobset-restart-webhook"))
        .args(["policy", "-o", "json", "--config"])
        .arg(repo_root().join(CONFIG))
        .output()
        .expect("running jobset-restart-webhook policy");
    assert!(
        out.status.success(),
        "policy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("policy -o json prints JSON")
}

/// Adds `ENGINE_LABEL=engine` to a namespace selector.
fn select_engine(selector: &mut Value, engine: &str) {
    let requirement = json!({"key": ENGINE_LABEL, "operator": "In", "values": [engine]});
    match selector["matchExpressions"].as_array_mut() {
        Some(list) => list.push(requirement),
        None => selector["matchExpressions"] = json!([requirement]),
    }
}

#[test]
fn policy_and_webhook_store_the_same_jobsets() {
    let _t = TestTimer::start("policy_and_webhook_store_the_same_jobsets");
    // No controllers: nothing but admission acts on the JobSets, and thousands of child
    // Jobs are not made.
    let cluster = Cluster::start(ClusterOptions {
        name: "differential",
        controller_manager: false,
        jobset_controller: false,
        ..ClusterOptions::default()
    });
    let c = &cluster;
    let ns = |prefix: &str, engine: &str, labelled: bool| {
        let mut labels = vec![(ENGINE_LABEL, engine)];
        if labelled {
            labels.push(("restart.jobset.dev/in-place", "enabled"));
        }
        c.namespace(prefix, &labels)
    };
    let (wh, wh_labelled) = (
        ns("webhook", "webhook", false),
        ns("webhook-ns", "webhook", true),
    );
    let (po, po_labelled) = (
        ns("policy", "policy", false),
        ns("policy-ns", "policy", true),
    );

    // The webhook, registered as shipped but only for the webhook's namespaces.
    let webhook = Webhook::start(
        c,
        WebhookOptions {
            targets: None,
            config: Some(repo_root().join(CONFIG)),
        },
    );
    let mut mwc = webhook.configuration(None);
    for w in mwc["webhooks"].as_array_mut().into_iter().flatten() {
        select_engine(&mut w["namespaceSelector"], "webhook");
    }
    c.kubectl_ok(&["apply", "-f", "-"], Some(&mwc.to_string()));

    // The generated policies, as printed, bound only to the policy's namespaces.
    let mut policy = generated_policy();
    let items = policy["items"]
        .as_array_mut()
        .expect("policy prints a List");
    assert_eq!(items.len(), 4, "policy prints four objects");
    for item in items.iter_mut() {
        if item["kind"]
            .as_str()
            .is_some_and(|k| k.ends_with("Binding"))
        {
            select_engine(
                &mut item["spec"]["matchResources"]["namespaceSelector"],
                "policy",
            );
        }
    }
    let applied = c.kubectl(&["apply", "-f", "-"], Some(&policy.to_string()));
    assert!(
        applied.status.success(),
        "the API server refused the generated policy: {}",
        String::from_utf8_lossy(&applied.stderr)
    );

    for namespace in [&*wh, &*po] {
        wait_for(
            "the engine to mutate a dry-run JobSet",
            std::time::Duration::from_secs(60),
            || {
                let stored = dry_run_probe(c, namespace);
                match at(&stored, "/metadata/annotations/restart.jobset.dev~1applied") {
                    Value::String(_) => Ok(()),
                    _ => Err(format!("in {namespace}: {stored}")),
                }
            },
        );
    }
    let api = Api::new(c);
    wait_for(
        "the validating policy to deny",
        std::time::Duration::from_secs(60),
        || {
            let mut probe = crate::training_jobset("probe-denied", &[]);
            set(&mut probe, "in-place", "maybe");
            match api.create(&po, &probe) {
                Outcome::Refused(..) => Ok(()),
                Outcome::Stored(_) => {
                    let _ = c.kubectl(&["delete", "jobset", "-n", &po, "probe-denied"], None);
                    Err("stored".to_owned())
                }
            }
        },
    );

    let mut files: Vec<PathBuf> = Vec::new();
    for dir in [
        jobset_module_dir(JOBSET_V0_12_0).join("config/samples"),
        repo_root().join("tests/fixtures/jobsets"),
    ] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        found.sort();
        files.extend(found);
    }

    let mut problems: Vec<String> = Vec::new();
    let (mut same_stored, mut same_refused, mut with_applied, mut jobsets) = (0, 0, 0, 0);
    for file in &files {
        let file_name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (d, original) in load_yaml(file).into_iter().enumerate() {
            if original["kind"] != "JobSet" {
                continue;
            }
            jobsets += 1;
            for (combo, edit) in COMBINATIONS {
                let namespaces: &[(&str, &str)] = if IN_LABELLED_NAMESPACES.contains(combo) {
                    &[(&wh, &po), (&wh_labelled, &po_labelled)]
                } else {
                    &[(&wh, &po)]
                };
                for (w_ns, p_ns) in namespaces {
                    let mut doc = original.clone();
                    edit(&mut doc);
                    let stem = file_name.trim_end_matches(".yaml").replace('_', "-");
                    let name = format!("{stem}-{d}-{combo}");
                    doc["metadata"]["name"] = json!(name);
                    if let Some(m) = doc["metadata"].as_object_mut() {
                        m.remove("namespace");
                    }
                    let what = format!("{file_name} #{d} {combo} (in {w_ns} / {p_ns})");
                    match (api.create(w_ns, &doc), api.create(p_ns, &doc)) {
                        (Outcome::Stored(a), Outcome::Stored(b)) => {
                            let mut diffs = Vec::new();
                            differences(&a["spec"], &b["spec"], "/spec", &mut diffs);
                            let (x, y) = (
                                &a["metadata"]["annotations"][APPLIED],
                                &b["metadata"]["annotations"][APPLIED],
                            );
                            if x != y {
                                diffs.push(format!("applied: webhook {x}, policy {y}"));
                            }
                            if diffs.is_empty() {
                                same_stored += 1;
                                if x.is_string() {
                                    with_applied += 1;
                                }
                            } else {
                                problems.push(format!("{what}: {}", diffs.join("; ")));
                            }
                        }
                        (Outcome::Refused(x, m), Outcome::Refused(y, n)) => {
                            if x == y && m == n {
                                same_refused += 1;
                            } else {
                                problems.push(format!(
                                    "{what}: both refused, webhook {x} {m:?}, policy {y} {n:?}"
                                ));
                            }
                        }
                        (Outcome::Stored(_), Outcome::Refused(y, n)) => problems.push(format!(
                            "{what}: the webhook stored it, the policy refused it ({y}): {n}"
                        )),
                        (Outcome::Refused(x, m), Outcome::Stored(_)) => problems.push(format!(
                            "{what}: the policy stored it, the webhook refused it ({x}): {m}"
                        )),
                    }
                }
            }
        }
    }
    eprintln!(
        "[e2e] differential: {jobsets} JobSets x {} combinations: {same_stored} stored \
         identically ({with_applied} with an applied annotation), {same_refused} refused \
         identically, {} differences",
        COMBINATIONS.len(),
        problems.len()
    );
    assert!(
        problems.is_empty(),
        "{} difference(s) between the webhook and the policy:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(
        jobsets >= 10,
        "expected the samples and fixtures; found {jobsets} JobSets"
    );
    assert!(
        with_applied >= jobsets * 8 && same_refused >= jobsets * 8,
        "too few mutated ({with_applied}) or refused ({same_refused}) JobSets for {jobsets} \
         JobSets: the combinations did not take effect"
    );
}
