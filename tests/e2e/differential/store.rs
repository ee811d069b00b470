//! What the API server stored for each engine, read back and compared: the client, the fields
//! only our admission writes, the tally of differences.

use super::*;

/// How one create ended: the stored object, or the API server's code and the text after
/// its wrapper ("... denied the request: " / "... denied request: ").
#[derive(Debug)]
pub(super) enum Outcome {
    Stored(Value),
    Refused(u16, String),
}

pub(super) struct Api {
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) client: kube::Client,
}

impl Api {
    pub(super) fn new(cluster: &Cluster) -> Api {
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

    pub(super) fn create(&self, namespace: &str, jobset: &Value) -> Outcome {
        self.post(namespace, jobset, "")
    }

    /// A server-side dry run: admission runs, nothing is stored.
    pub(super) fn dry_run(&self, namespace: &str, jobset: &Value) -> Outcome {
        self.post(namespace, jobset, "?dryRun=All")
    }

    pub(super) fn post(&self, namespace: &str, jobset: &Value, query: &str) -> Outcome {
        let path = format!("/apis/jobset.x-k8s.io/v1alpha2/namespaces/{namespace}/jobsets{query}");
        self.send(http::Request::post(path), namespace, jobset)
    }

    /// An update of the current object with `edit(current)`, at its resourceVersion (custom
    /// resources refuse unconditional updates), retried while JobSet's controller races it.
    pub(super) fn replace_current(
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

    pub(super) fn send(
        &self,
        request: http::request::Builder,
        namespace: &str,
        jobset: &Value,
    ) -> Outcome {
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
pub(super) fn without_our_fields(stored: &Value, original: &Value) -> Value {
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
pub(super) struct Tally {
    pub(super) problems: Vec<String>,
    /// Creates stored alike, refused alike.
    pub(super) same_stored: usize,
    pub(super) same_refused: usize,
    /// Of the creates stored alike: with an applied annotation, cut, refused for their size.
    pub(super) with_applied: usize,
    pub(super) cut: usize,
    pub(super) over_limit: usize,
    /// JobSets updated (twice each), updates that ended alike, replaces that got a record back.
    pub(super) updates: usize,
    pub(super) updates_same: usize,
    pub(super) restored: usize,
}

impl Tally {
    pub(super) fn compare(&mut self, what: &str, step: &str, outcomes: (Outcome, Outcome)) {
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
pub(super) fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
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
