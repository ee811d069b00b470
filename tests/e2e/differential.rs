//! One contract, two engines: every JobSet we have (the `sigs.k8s.io/jobset` module's
//! `config/samples/` and our `tests/fixtures/jobsets/`), under each annotation combination
//! below, is created once where our webhook admits it and once where the admission policies
//! from `jobset-restart-webhook policy` do (same cluster config, same API server, namespaces
//! told apart by a label both registrations select on). The stored `spec` and `applied`
//! annotation must be identical, and where one engine refuses a JobSet the other must refuse
//! it with the same HTTP code and the same text after the API server's wrapper. Every
//! difference is listed by file, combination and JSON path.

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
        self.post(namespace, jobset, "")
    }

    /// A server-side dry run: admission runs, nothing is stored.
    fn dry_run(&self, namespace: &str, jobset: &Value) -> Outcome {
        self.post(namespace, jobset, "?dryRun=All")
    }

    fn post(&self, namespace: &str, jobset: &Value, query: &str) -> Outcome {
        let path = format!("/apis/jobset.x-k8s.io/v1alpha2/namespaces/{namespace}/jobsets{query}");
        self.send(http::Request::post(path), namespace, jobset)
    }

    /// An update of the current object with `edit(current)`, at its resourceVersion (custom
    /// resources refuse unconditional updates), retried while JobSet's controller races it.
    fn replace_current(
        &self,
        namespace: &str,
        name: &str,
        edit: &dyn Fn(&Value) -> Value,
    ) -> Outcome {
        let path = format!("/apis/jobset.x-k8s.io/v1alpha2/namespaces/{namespace}/jobsets/{name}");
        let mut last = None;
        for _ in 0..10 {
            let get = http::Request::get(&path)
                .body(Vec::new())
                .expect("a get request");
            let current: Value = self
                .rt
                .block_on(self.client.request::<Value>(get))
                .unwrap_or_else(|e| panic!("reading {namespace}/{name}: {e}"));
            let mut update = edit(&current);
            update["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
            match self.send(http::Request::put(&path), namespace, &update) {
                Outcome::Refused(409, m) => last = Some(Outcome::Refused(409, m)),
                outcome => return outcome,
            }
        }
        last.unwrap_or(Outcome::Refused(409, "conflict".to_owned()))
    }

    fn send(&self, request: http::request::Builder, namespace: &str, jobset: &Value) -> Outcome {
        let request = request
            .header("content-type", "application/json")
            .body(jobset.to_string().into_bytes())
            .expect("a request");
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

/// What a client that writes the JobSet back without our fields sends: the stored object
/// (JobSet's defaults included) without what the engine added to `original`, and without the
/// server's metadata (an unconditional update).
fn without_our_fields(stored: &Value, original: &Value) -> Value {
    let mut out = stored.clone();
    if let Some(o) = out.as_object_mut() {
        o.remove("status");
    }
    let meta = &stored["metadata"];
    let mut annotations = meta["annotations"].clone();
    if original["metadata"]["annotations"].get(APPLIED).is_none()
        && let Some(a) = annotations.as_object_mut()
    {
        a.remove(APPLIED);
    }
    out["metadata"] =
        json!({"name": meta["name"], "labels": meta["labels"], "annotations": annotations});
    let rjobs = out["spec"]["replicatedJobs"]
        .as_array_mut()
        .into_iter()
        .flatten();
    for (i, rj) in rjobs.enumerate() {
        let pointer = format!("/spec/replicatedJobs/{i}/template/spec/template/spec");
        let was = original.pointer(&pointer).cloned().unwrap_or_default();
        let Some(pod) = rj["template"]["spec"]["template"]["spec"].as_object_mut() else {
            continue;
        };
        if was.get("restartPolicy").is_none() && pod.get("restartPolicy") == Some(&json!("Never")) {
            pod.remove("restartPolicy");
        }
        for list in ["containers", "initContainers"] {
            for (j, c) in pod
                .get_mut(list)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let before = &was[list][j];
                if let Some(c) = c.as_object_mut() {
                    for field in ["restartPolicy", "restartPolicyRules"] {
                        if before.get(field).is_none() {
                            c.remove(field);
                        }
                    }
                }
            }
        }
    }
    out
}

/// What the two engines did with the same requests, and where they differed.
#[derive(Default)]
struct Tally {
    problems: Vec<String>,
    /// Creates stored alike, refused alike.
    same_stored: usize,
    same_refused: usize,
    /// Of the creates stored alike: with an applied annotation, cut, refused for their size.
    with_applied: usize,
    cut: usize,
    over_limit: usize,
    /// JobSets updated (twice each), updates that ended alike, replaces that got a record back.
    updates: usize,
    updates_same: usize,
    restored: usize,
}

impl Tally {
    fn compare(&mut self, what: &str, step: &str, outcomes: (Outcome, Outcome)) {
        let create = step == "create";
        let same = match outcomes {
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
                if !diffs.is_empty() {
                    self.problems
                        .push(format!("{what}, {step}: {}", diffs.join("; ")));
                    return;
                }
                if create {
                    self.same_stored += 1;
                    self.with_applied += usize::from(x.is_string());
                    self.cut += usize::from(x.as_str().is_some_and(|t| t.contains(", ... and ")));
                } else if step == "replace" && x.is_string() {
                    self.restored += 1;
                }
                true
            }
            (Outcome::Refused(x, m), Outcome::Refused(y, n)) => {
                if x != y || m != n {
                    self.problems.push(format!(
                        "{what}, {step}: both refused, webhook {x} {m:?}, policy {y} {n:?}"
                    ));
                    return;
                }
                if create {
                    self.same_refused += 1;
                    self.over_limit +=
                        usize::from(m.contains("containers of this JobSet, more than the"));
                }
                true
            }
            (Outcome::Stored(_), Outcome::Refused(y, n)) => {
                self.problems.push(format!(
                    "{what}, {step}: the webhook stored it, the policy refused it ({y}): {n}"
                ));
                false
            }
            (Outcome::Refused(x, m), Outcome::Stored(_)) => {
                self.problems.push(format!(
                    "{what}, {step}: the policy stored it, the webhook refused it ({x}): {m}"
                ));
                false
            }
        };
        if same && !create {
            self.updates_same += 1;
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
                let null = Value::Null;
                differences(
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    &p,
                    out,
                );
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

/// The stdout of `jobset-restart-webhook policy --config CONFIG -o OUTPUT`, which must succeed.
fn generated_policy(config: &str, output: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobset-restart-webhook"))
        .args(["policy", "-o", output, "--config"])
        .arg(repo_root().join(config))
        .output()
        .expect("running jobset-restart-webhook policy");
    assert!(
        out.status.success(),
        "policy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Adds `ENGINE_LABEL=engine` to a namespace selector.
fn select_engine(selector: &mut Value, engine: &str) {
    let requirement = json!({"key": ENGINE_LABEL, "operator": "In", "values": [engine]});
    match selector["matchExpressions"].as_array_mut() {
        Some(list) => list.push(requirement),
        None => selector["matchExpressions"] = json!([requirement]),
    }
}

/// The cluster configs both engines are given; the value of the namespace label in the
/// labelled namespaces (the namespace default matters where it differs from the config's);
/// and the overlay whose MutatingWebhookConfiguration registers the webhook for that config
/// (`None`: the base's).
const CONFIGS: &[(&str, &str, Option<&str>)] = &[
    ("tests/fixtures/config.yaml", "enabled", None),
    (
        "tests/fixtures/config-defaults.yaml",
        "false",
        Some("manifests/overlays/cluster-default-enabled"),
    ),
];

/// One config's engines: (webhook namespace, policy namespace) pairs, plain then labelled.
struct Engines<'c> {
    config: &'static str,
    plain: (TestNamespace<'c>, TestNamespace<'c>),
    labelled: (TestNamespace<'c>, TestNamespace<'c>),
    _webhook: Webhook,
}

/// Starts a webhook with `config` and applies the generated policies for it, each selecting
/// only its own namespaces (`ENGINE_LABEL` = `webhook-N` / `policy-N`), and waits until the
/// API server calls both.
fn engines<'c>(
    c: &'c Cluster,
    n: usize,
    (config, label, overlay): (&'static str, &str, Option<&str>),
) -> Engines<'c> {
    let (we, pe) = (format!("webhook-{n}"), format!("policy-{n}"));
    let ns = |engine: &str, labelled: bool| {
        let mut labels = vec![(ENGINE_LABEL, engine)];
        if labelled {
            labels.push(("restart.jobset.dev/in-place", label));
        }
        c.namespace(engine, &labels)
    };
    let plain = (ns(&we, false), ns(&pe, false));
    let labelled = (ns(&we, true), ns(&pe, true));

    // The webhook, registered as shipped (renamed per config) but only for its namespaces.
    let webhook = Webhook::start(
        c,
        WebhookOptions {
            targets: None,
            config: Some(repo_root().join(config)),
        },
    );
    let mut mwc = webhook.configuration(Some(&format!("00-jobset-restart-webhook-{n}")));
    if let Some(overlay) = overlay {
        // The overlay's webhooks as kubectl's kustomize renders them, pointed at this webhook.
        let rendered = c.kubectl_ok(
            &["kustomize", &repo_root().join(overlay).to_string_lossy()],
            None,
        );
        let from_overlay = yaml_documents(&rendered, overlay)
            .into_iter()
            .find(|d| d["kind"] == "MutatingWebhookConfiguration")
            .unwrap_or_else(|| panic!("{overlay} renders no MutatingWebhookConfiguration"));
        let mut hooks = from_overlay["webhooks"].clone();
        for (h, shipped) in hooks
            .as_array_mut()
            .into_iter()
            .flatten()
            .zip(mwc["webhooks"].as_array().into_iter().flatten())
        {
            h["clientConfig"] = shipped["clientConfig"].clone();
        }
        mwc["webhooks"] = hooks;
    }
    for w in mwc["webhooks"].as_array_mut().into_iter().flatten() {
        select_engine(&mut w["namespaceSelector"], &we);
    }
    c.kubectl_ok(&["apply", "-f", "-"], Some(&mwc.to_string()));

    // The YAML output as a user applies it (comments and all); a server-side dry run, so that
    // the objects below, renamed and scoped, are the ones that act.
    let yaml = generated_policy(config, "yaml");
    let dry = c.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&yaml));
    assert!(
        dry.status.success(),
        "the API server refused the YAML output of policy --config {config}: {}",
        String::from_utf8_lossy(&dry.stderr)
    );

    // The generated policies, as printed (renamed per config), bound only to its namespaces.
    let mut policy: Value = serde_json::from_str(&generated_policy(config, "json"))
        .expect("policy -o json prints JSON");
    let items = policy["items"]
        .as_array_mut()
        .expect("policy prints a List");
    assert_eq!(items.len(), 4, "policy prints four objects");
    for item in items.iter_mut() {
        let name = format!(
            "{}-{n}",
            item["metadata"]["name"].as_str().unwrap_or_default()
        );
        item["metadata"]["name"] = json!(name);
        if item["kind"]
            .as_str()
            .is_some_and(|k| k.ends_with("Binding"))
        {
            item["spec"]["policyName"] = json!(name);
            select_engine(
                &mut item["spec"]["matchResources"]["namespaceSelector"],
                &pe,
            );
        }
    }
    let applied = c.kubectl(&["apply", "-f", "-"], Some(&policy.to_string()));
    assert!(
        applied.status.success(),
        "the API server refused the generated policy for {config}: {}",
        String::from_utf8_lossy(&applied.stderr)
    );

    // Both engines mutate an opted-in JobSet (container `trainer`, which both configs
    // select) and the validating policy denies an invalid one.
    let api = Api::new(c);
    let probe = crate::training_jobset("probe", &[("restart.jobset.dev/in-place", "enabled")]);
    for namespace in [&plain.0, &plain.1] {
        wait_for(
            "the engine to mutate a dry-run JobSet",
            Duration::from_secs(60),
            || match api.dry_run(namespace, &probe) {
                Outcome::Stored(stored)
                    if at(&stored, "/metadata/annotations/restart.jobset.dev~1applied")
                        .is_string() =>
                {
                    Ok(())
                }
                other => Err(format!("in {}: {other:?}", namespace.name)),
            },
        );
    }
    let mut bad = probe.clone();
    set(&mut bad, "in-place", "maybe");
    wait_for(
        "the validating policy to deny",
        Duration::from_secs(60),
        || match api.dry_run(&plain.1, &bad) {
            Outcome::Refused(..) => Ok(()),
            Outcome::Stored(_) => Err("stored".to_owned()),
        },
    );
    Engines {
        config,
        plain,
        labelled,
        _webhook: webhook,
    }
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
        with_applied >= jobsets * 16 && same_refused >= jobsets * 20,
        "too few mutated ({with_applied}) or refused ({same_refused}) JobSets for {jobsets} \
         JobSets: the combinations did not take effect"
    );
}
