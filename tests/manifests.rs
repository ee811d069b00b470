//! Guards on the shipped manifests and the Dockerfile, so that a later edit cannot weaken
//! the webhook's safety settings or the pods' lock-down unnoticed. (That the manifests are
//! accepted by a real API server is tests/e2e/deploy.rs.)

use serde_json::{Value, json};

fn load(file: &str) -> Vec<Value> {
    let path = format!("{}/manifests/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn one(file: &str) -> Value {
    let mut docs = load(file);
    assert_eq!(docs.len(), 1, "{file} has one object");
    docs.remove(0)
}

/// The CEL of the updates webhook's matchCondition: only JobSets whose stored object carries
/// our record, and not while they are being deleted (docs/operations.md "While the webhook is down").
const UPDATE_CONDITION: &str = "((has(oldObject.metadata.annotations) && \
     'restart.jobset.dev/applied' in oldObject.metadata.annotations) || \
     (has(object.metadata.annotations) && \
     object.metadata.annotations.exists(k, k.startsWith('restart.jobset.dev/'))) || \
     (has(object.spec) && has(object.spec.replicatedJobs) && \
     object.spec.replicatedJobs.exists(rj, has(rj.template) && has(rj.template.metadata) && \
     has(rj.template.metadata.annotations) && \
     rj.template.metadata.annotations.exists(k, k.startsWith('restart.jobset.dev/'))))) && \
     !has(object.metadata.deletionTimestamp)";

fn collapse(cel: &Value) -> String {
    cel.as_str()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks one webhook of the shipped configuration (or of the pod-target component).
fn check_webhook(w: &Value) {
    let n = w["name"].as_str().unwrap_or_default();
    assert_eq!(w["admissionReviewVersions"], json!(["v1"]), "{n}");
    assert_eq!(w["sideEffects"], json!("None"), "{n}: dry-run must be safe");
    assert_eq!(w["reinvocationPolicy"], json!("IfNeeded"), "{n}");
    let timeout = w["timeoutSeconds"].as_u64().expect("timeoutSeconds is set");
    assert!(
        (1..=5).contains(&timeout),
        "{n}: timeoutSeconds {timeout} must be small"
    );
    let excluded = w["namespaceSelector"]["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["key"] == "kubernetes.io/metadata.name")
        .unwrap_or_else(|| panic!("{n}: namespaceSelector on kubernetes.io/metadata.name"));
    assert_eq!(excluded["operator"], json!("NotIn"), "{n}");
    for ns in ["kube-system", "jobset-restart-webhook"] {
        assert!(
            excluded["values"]
                .as_array()
                .is_some_and(|v| v.contains(&json!(ns))),
            "{n}: {ns} excluded"
        );
    }
    // CREATE of JobSets (two webhooks: annotation filter, namespace label) fails closed;
    // UPDATE has its own webhook that fails open; pods are CREATE only (their containers
    // cannot change) and fail open. DELETE and CONNECT are never sent.
    let (resource, operations, policy, path) = match n {
        "jobsets.restart.jobset.dev" => ("jobsets", json!(["CREATE"]), "Fail", "/mutate"),
        "namespace-default.jobsets.restart.jobset.dev" => (
            "jobsets",
            json!(["CREATE"]),
            "Fail",
            "/mutate/namespace-default",
        ),
        "updates.jobsets.restart.jobset.dev" => ("jobsets", json!(["UPDATE"]), "Ignore", "/mutate"),
        "pods.restart.jobset.dev" => ("pods", json!(["CREATE"]), "Ignore", "/mutate"),
        other => panic!("unexpected webhook {other}"),
    };
    let rules = w["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 1, "{n}");
    assert_eq!(rules[0]["resources"], json!([resource]), "{n}");
    assert_eq!(rules[0]["operations"], operations, "{n}");
    assert_eq!(w["failurePolicy"], json!(policy), "{n}");
    assert_eq!(w["clientConfig"]["service"]["path"], json!(path), "{n}");
}

#[test]
fn webhook_configuration_is_safe() {
    let cfg = one("base/mutatingwebhookconfiguration.yaml");
    let name = cfg["metadata"]["name"].as_str().expect("name");
    // The API server calls configurations in name order; ours must come before JobSet's
    // defaulting (tests/e2e/ordering.rs shows what happens otherwise).
    assert!(
        name < "jobset-mutating-webhook-configuration",
        "{name} must sort before JobSet's configuration"
    );
    let hooks = cfg["webhooks"].as_array().expect("webhooks");
    let names: Vec<&str> = hooks.iter().filter_map(|w| w["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "jobsets.restart.jobset.dev",
            "namespace-default.jobsets.restart.jobset.dev",
            "updates.jobsets.restart.jobset.dev",
        ],
        "the pod webhook is registered only with the pod target (components/pod-target)"
    );
    for w in hooks {
        check_webhook(w);
    }
    assert!(
        hooks[0]["matchConditions"]
            .as_array()
            .is_some_and(|m| !m.is_empty()),
        "only annotated JobSets are sent"
    );
    let update = &hooks[2]["matchConditions"];
    assert_eq!(update.as_array().map(Vec::len), Some(1), "{update}");
    assert_eq!(collapse(&update[0]["expression"]), UPDATE_CONDITION);
}

/// What only the pod target needs comes with the pod-target component: the pod webhook, the
/// JobSet watch's RBAC, the config's target and the pods' targets annotation.
#[test]
fn pod_target_component_carries_everything_the_pod_target_needs() {
    let patch = load("components/pod-target/pod-webhook.yaml");
    let ops = patch[0].as_array().expect("a JSON patch");
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0]["op"], json!("add"));
    assert_eq!(ops[0]["path"], json!("/webhooks/-"));
    let pods = &ops[0]["value"];
    assert_eq!(pods["name"], json!("pods.restart.jobset.dev"));
    check_webhook(pods);
    assert!(
        pods["timeoutSeconds"].as_u64().is_some_and(|t| t <= 2),
        "pod creation is the Job controller's hot path"
    );
    assert_eq!(
        pods["objectSelector"]["matchExpressions"],
        json!([{"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}])
    );
    let component = one("components/pod-target/kustomization.yaml");
    assert_eq!(component["kind"], json!("Component"));
    let patches = component["patches"].as_array().expect("patches");
    let by_kind = |kind: &str| -> String {
        patches
            .iter()
            .find(|p| p["target"]["kind"] == kind)
            .and_then(|p| p["patch"].as_str().or(p["path"].as_str()))
            .unwrap_or_else(|| panic!("no patch for the {kind}"))
            .to_owned()
    };
    let role = by_kind("ClusterRole");
    assert!(
        role.contains("resources: [jobsets]") && role.contains("verbs: [list, watch]"),
        "{role}"
    );
    assert!(by_kind("ConfigMap").contains("targets: [jobsets, pods]"));
    assert!(by_kind("Deployment").contains("value: jobsets,pods"));
    let overlay = one("overlays/pod-target/kustomization.yaml");
    assert_eq!(
        overlay["components"],
        json!(["../../components/pod-target"])
    );
}

/// The capability probe's `pods/create` is for dry runs only: a policy shipped with the
/// install refuses the webhook's ServiceAccount any other pod create.
#[test]
fn probe_pod_creates_are_restricted_to_dry_runs() {
    let docs = load("base/probe-dry-run-only.yaml");
    assert_eq!(docs.len(), 2);
    let policy = &docs[0];
    assert_eq!(policy["kind"], json!("ValidatingAdmissionPolicy"));
    assert_eq!(policy["spec"]["failurePolicy"], json!("Fail"));
    let condition = collapse(&policy["spec"]["matchConditions"][0]["expression"]);
    assert_eq!(
        condition,
        "request.userInfo.username == \
         'system:serviceaccount:jobset-restart-webhook:jobset-restart-webhook'"
    );
    assert_eq!(
        policy["spec"]["validations"][0]["expression"],
        json!("has(request.dryRun) && request.dryRun == true")
    );
    let binding = &docs[1];
    assert_eq!(binding["kind"], json!("ValidatingAdmissionPolicyBinding"));
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    let kustomization = one("base/kustomization.yaml");
    assert!(
        kustomization["resources"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("probe-dry-run-only.yaml"))),
        "the base ships it"
    );
}

#[test]
fn deployment_is_locked_down_and_highly_available() {
    let d = one("base/deployment.yaml");
    let spec = &d["spec"]["template"]["spec"];
    assert!(
        d["spec"]["replicas"].as_u64().is_some_and(|r| r >= 2),
        "at least 2 replicas"
    );
    let hostname = spec["topologySpreadConstraints"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["topologyKey"] == "kubernetes.io/hostname")
        .expect("replicas spread over nodes");
    assert_eq!(
        hostname["whenUnsatisfiable"],
        json!("DoNotSchedule"),
        "never two replicas on one node"
    );
    assert_eq!(
        hostname["nodeTaintsPolicy"],
        json!("Honor"),
        "nodes the pod cannot use are no empty domains"
    );
    assert_eq!(spec["priorityClassName"], json!("system-cluster-critical"));
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["restart.jobset.dev/targets"],
        json!("jobsets"),
        "a change of the targets rolls the pods"
    );
    assert_eq!(spec["securityContext"]["runAsNonRoot"], json!(true));
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        json!("RuntimeDefault")
    );
    let containers = spec["containers"].as_array().expect("containers");
    for c in containers {
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], json!(true));
        assert_eq!(sc["allowPrivilegeEscalation"], json!(false));
        assert_eq!(sc["runAsNonRoot"], json!(true));
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert!(
            sc["capabilities"].get("add").is_none(),
            "no capability added"
        );
        for kind in ["requests", "limits"] {
            for res in ["cpu", "memory"] {
                assert!(c["resources"][kind][res].is_string(), "{kind}.{res} is set");
            }
        }
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], json!("/readyz"));
        assert!(
            c["readinessProbe"]["timeoutSeconds"]
                .as_u64()
                .is_some_and(|t| t >= 3),
            "the readiness probe waits for the TLS self-check (2 s)"
        );
        assert_eq!(
            c["resources"]["requests"]["memory"], c["resources"]["limits"]["memory"],
            "memory request = limit"
        );
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], json!("/healthz"));
        let args: Vec<&str> = c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(args.first(), Some(&"serve"));
        let seconds = |flag: &str| -> u64 {
            args.iter()
                .find_map(|a| a.strip_prefix(flag))
                .and_then(|v| v.strip_suffix('s'))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag}<seconds>s in {args:?}"))
        };
        let drain = seconds("--drain-delay=");
        assert!(
            (10..=15).contains(&drain),
            "drain {drain}s: endpoint changes take seconds to reach every API server"
        );
        let shutdown = seconds("--shutdown-grace-period=");
        // The default of 1024 connections can hold more than the 128Mi limit (see the
        // comment in deployment.yaml).
        assert!(
            args.contains(&"--max-connections=256"),
            "connections capped for the memory limit: {args:?}"
        );
        assert_eq!(c["resources"]["limits"]["memory"], json!("128Mi"));
        let grace = spec["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds");
        assert!(
            grace >= drain + shutdown,
            "grace {grace}s must cover --drain-delay ({drain}s) + --shutdown-grace-period \
             ({shutdown}s)"
        );
    }
    let pdb = one("base/poddisruptionbudget.yaml");
    assert_eq!(pdb["spec"]["minAvailable"], json!(1));
}

#[test]
fn rbac_is_least_privilege() {
    for doc in load("base/rbac.yaml") {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if !kind.ends_with("Role") {
            continue;
        }
        for rule in doc["rules"].as_array().expect("rules") {
            let text = rule.to_string();
            assert!(!text.contains('*'), "{kind}: no wildcards: {text}");
            assert!(
                !text.contains("secrets"),
                "{kind}: no access to secrets: {text}"
            );
            assert!(
                !rule["resources"]
                    .as_array()
                    .is_some_and(|r| r.contains(&json!("jobsets"))),
                "{kind}: JobSets are watched only with the pod target (components/pod-target)"
            );
            for verb in rule["verbs"].as_array().into_iter().flatten() {
                let verb = verb.as_str().unwrap_or_default();
                let allowed = ["get", "list", "watch"].contains(&verb)
                    || (verb == "create" && kind == "Role" && rule["resources"] == json!(["pods"]));
                assert!(allowed, "{kind}: verb {verb} on {}", rule["resources"]);
            }
        }
    }
}

#[test]
fn dockerfile_is_multi_stage_pinned_static_and_non_root() {
    let path = format!("{}/Dockerfile", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    // The builder image is an ARG (a harness or a user may pin a digest) whose default is
    // pinned to a full version.
    let builder = froms[0];
    assert_eq!(builder, "FROM ${RUST_IMAGE} AS build", "builder stage");
    let default = text
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_IMAGE="))
        .unwrap_or_default();
    let tag = default.split_once(':').map(|(_, t)| t).unwrap_or_default();
    assert!(
        tag.split('-')
            .next()
            .is_some_and(|v| v.split('.').count() == 3),
        "builder pinned to a full version: ARG RUST_IMAGE={default}"
    );
    let runtime = froms[froms.len() - 1];
    assert!(
        runtime == "FROM scratch" || runtime.contains("distroless"),
        "small runtime image: {runtime}"
    );
    // Static glibc (docs/BENCHMARKS.md, "The image: static glibc or musl"): crt-static with
    // an explicit target, so build scripts stay dynamic and only the binary is static.
    assert!(
        text.contains("+crt-static") && text.contains("--target x86_64-unknown-linux-gnu"),
        "a static binary"
    );
    let user = text
        .lines()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("USER");
    assert!(
        !user.contains("root") && !user.trim_end().ends_with(" 0"),
        "non-root: {user}"
    );
    assert!(text.contains(r#"ENTRYPOINT ["/usr/local/bin/jobset-restart-webhook"]"#));
    // serve reads the certificate from where the Deployment mounts the Secret
    let deployment = one("base/deployment.yaml");
    let mount = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == "tls")
        .and_then(|m| m["mountPath"].as_str())
        .expect("tls mount");
    assert!(
        text.contains(&format!("--tls-cert={mount}/tls.crt")),
        "CMD reads the mounted certificate"
    );
}

/// The chart's `serve` durations use the binary's grammar and ranges: their schema pattern is
/// `args::DURATION_PATTERN` (or empty, for serve's default), it accepts exactly what the
/// flags' parser reads (over a corpus of near misses: Go's `us`/`ns`, signs, exponents,
/// spaces, a trailing bare number), and each property's examples and stated range are the
/// flag's own. Before, the schema took `1h30m`-style Go durations with `us` and `ns` that
/// `serve` refused, so a valid values file crash-looped the pod.
#[test]
fn chart_duration_values_use_the_binarys_grammar() {
    use jobset_restart_webhook::args::{DELAY, DURATION_PATTERN, DurationRange, TIMEOUT};
    let path = format!(
        "{}/charts/jobset-restart-webhook/values.schema.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let serve = &schema["properties"]["serve"]["properties"];
    let flags: [(&str, DurationRange); 6] = [
        ("drainDelay", DELAY),
        ("shutdownGracePeriod", DELAY),
        ("tlsHandshakeTimeout", TIMEOUT),
        ("headerReadTimeout", TIMEOUT),
        ("bodyReadTimeout", TIMEOUT),
        ("idleTimeout", TIMEOUT),
    ];
    // Every duration-like property of `serve` is one of these (a new one joins the list).
    let durations: Vec<&String> = serve
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, p)| p["pattern"].as_str().is_some_and(|p| p.contains("ms|")))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(durations.len(), flags.len(), "{durations:?}");

    let want = format!("^$|{DURATION_PATTERN}");
    let mut corpus: Vec<String> = [
        "", "0", "5", "1.5", "0s", "5s", "500ms", "1m30s", "1h30m", "2h", "1.5s", "10m", "1h0m0s",
        "0.5ms", "250us", "250µs", "100ns", "1d", "-1s", "+1s", " 5s", "5s ", "5 s", ".5s", "1.s",
        "1e3s", "1h30", "s", "ms", "5S", "5Ms", "5sm", "1m1", "1..5s", "١s", "5s5s", "01s",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for a in ["0", "7", "1.25", "12"] {
        for u in ["", "ms", "s", "m", "h", "us", "x"] {
            for b in ["", "1s", "30", "5ms", ".5m"] {
                corpus.push(format!("{a}{u}{b}"));
            }
        }
    }
    for (name, range) in flags {
        let p = &serve[name];
        let pattern = p["pattern"].as_str().unwrap_or_default();
        assert_eq!(pattern, want, "{name}'s pattern");
        let re = regex::Regex::new(pattern).unwrap();
        for c in &corpus {
            let parsed = jobset_restart_webhook::args::parse_duration(c);
            assert_eq!(
                re.is_match(c),
                c.is_empty() || parsed.is_ok(),
                "{name}: {c:?}: the schema and serve disagree ({parsed:?})"
            );
        }
        let examples = p["examples"].as_array().expect("examples");
        assert!(!examples.is_empty(), "{name}");
        for e in examples {
            let e = e.as_str().unwrap();
            assert!(re.is_match(e), "{name}: example {e:?}");
            range
                .parse(e)
                .unwrap_or_else(|err| panic!("{name}: example {e:?}: {err}"));
        }
        let description = p["description"].as_str().unwrap_or_default();
        assert!(
            description.contains(&format!("from {range}")),
            "{name}: the description states the flag's range ({range}): {description}"
        );
    }
}
