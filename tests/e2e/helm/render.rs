//! The chart renders what kustomize renders, what `policy` prints, and what its README lists.

use super::*;

pub(super) fn key(obj: &Value) -> String {
    format!(
        "{}/{}",
        at(obj, "/kind").as_str().unwrap_or("?"),
        at(obj, "/metadata/name").as_str().unwrap_or("?")
    )
}

pub(super) fn by_key(docs: Vec<Value>) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for d in docs {
        let k = key(&d);
        assert!(map.insert(k.clone(), d).is_none(), "{k} is rendered twice");
    }
    map
}

/// Drops the chart-only labels of `obj` (and its empty label map), checking that the chart
/// set them. `bare`: kustomize renders this object without labels (the overlays' Secret and
/// cert-manager objects), where the chart also names its app.
pub(super) fn strip_chart_labels(obj: &mut Value, bare: bool) {
    let what = key(obj);
    let Some(labels) = obj
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    else {
        panic!("{what} has no labels; the chart labels every object");
    };
    for l in CHART_ONLY_LABELS {
        assert!(labels.remove(*l).is_some(), "{what} lacks the label {l}");
    }
    if bare && labels.get("app.kubernetes.io/name") == Some(&json!("jobset-restart-webhook")) {
        labels.remove("app.kubernetes.io/name");
    }
    if labels.is_empty()
        && let Some(meta) = obj.pointer_mut("/metadata").and_then(Value::as_object_mut)
    {
        meta.remove("labels");
    }
}

/// The ConfigMap's `config.yaml` as parsed YAML (the chart renders it without the comments).
pub(super) fn parse_config_yaml(obj: &mut Value) {
    if obj["kind"] == "ConfigMap"
        && let Some(text) = obj.pointer("/data/config.yaml").and_then(Value::as_str)
    {
        let parsed = yaml_documents(text, "config.yaml")
            .into_iter()
            .next()
            .unwrap_or(Value::Null);
        obj["data"]["config.yaml"] = parsed;
    }
}

/// kustomize wraps a generated Secret's base64 in lines; the API server's base64 decoding
/// skips line breaks, so both decode to the same bytes. Compare the data unwrapped.
pub(super) fn unwrap_secret_data(obj: &mut Value) {
    if obj["kind"] != "Secret" {
        return;
    }
    for v in obj
        .get_mut("data")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|m| m.values_mut())
    {
        if let Some(text) = v.as_str() {
            *v = json!(text.split_whitespace().collect::<String>());
        }
    }
}

/// CEL ignores whitespace between tokens, and YAML parsers disagree on the base's folded
/// (`>-`) matchCondition: kustomize's parser keeps extra line breaks where Helm's (and
/// kubectl's) do not. Compare the expressions with whitespace runs collapsed.
pub(super) fn collapse_cel_whitespace(obj: &mut Value) {
    for w in obj
        .get_mut("webhooks")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        for mc in w
            .get_mut("matchConditions")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(e) = mc.get("expression").and_then(Value::as_str) {
                let collapsed = e.split_whitespace().collect::<Vec<_>>().join(" ");
                mc["expression"] = json!(collapsed);
            }
        }
    }
}

/// Asserts that the chart renders what kustomize renders, up to the documented differences.
pub(super) fn assert_same_objects(variant: &str, kustomized: Vec<Value>, charted: Vec<Value>) {
    let mut want = by_key(kustomized);
    let mut got = by_key(charted);
    // The chart cannot own its release namespace (README): the base's Namespace is the one
    // object it leaves out.
    let ns = want
        .remove(&format!("Namespace/{WEBHOOK_NAMESPACE}"))
        .unwrap_or_else(|| panic!("{variant}: kustomize renders no Namespace"));
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted",
        "{variant}: the Namespace the chart README tells users to apply first"
    );
    for (k, obj) in got.iter_mut() {
        let bare = want
            .get(k)
            .is_some_and(|w| w.pointer("/metadata/labels").is_none());
        strip_chart_labels(obj, bare);
        parse_config_yaml(obj);
        collapse_cel_whitespace(obj);
        unwrap_secret_data(obj);
    }
    for obj in want.values_mut() {
        parse_config_yaml(obj);
        collapse_cel_whitespace(obj);
        unwrap_secret_data(obj);
    }
    // The image: the chart's tag defaults to appVersion (the crate's version), the base's is
    // `latest`.
    let image = "/spec/template/spec/containers/0/image";
    if let Some(d) = got.get_mut("Deployment/jobset-restart-webhook") {
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            at(d, image),
            &json!(format!("jobset-restart-webhook:{version}")),
            "{variant}: the chart's default image"
        );
        d["spec"]["template"]["spec"]["containers"][0]["image"] =
            json!("jobset-restart-webhook:latest");
    }
    let mut problems = Vec::new();
    for k in want
        .keys()
        .chain(got.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        match (want.get(k), got.get(k)) {
            (Some(w), Some(g)) if w == g => {}
            (Some(w), Some(g)) => problems.push(format!(
                "{k} differs.\nkustomize:\n{}\nhelm (chart labels stripped):\n{}",
                serde_json::to_string_pretty(w).unwrap_or_default(),
                serde_json::to_string_pretty(g).unwrap_or_default()
            )),
            (Some(_), None) => problems.push(format!("{k}: rendered by kustomize only")),
            (None, _) => problems.push(format!("{k}: rendered by the chart only")),
        }
    }
    assert!(
        problems.is_empty(),
        "{variant}: the chart and kustomize differ:\n{}",
        problems.join("\n\n")
    );
    eprintln!(
        "[e2e] helm {variant}: {} objects equal to kustomize's",
        want.len()
    );
}

#[test]
pub(super) fn helm_chart_lints_and_renders_what_kustomize_renders() {
    let _t = TestTimer::start("helm_chart_lints_and_renders_what_kustomize_renders");
    let lint = helm_ok(&["lint", "--strict", CHART], None);
    assert!(lint.contains("0 chart(s) failed"), "helm lint: {lint}");

    let chart = &load_yaml(&repo_root().join(CHART).join("Chart.yaml"))[0];
    assert_eq!(chart["apiVersion"], "v2");
    for field in ["version", "appVersion"] {
        assert_eq!(
            chart[field],
            env!("CARGO_PKG_VERSION"),
            "Chart.yaml {field} follows Cargo.toml's version"
        );
    }

    let manifests = repo_root().join("manifests");
    let (_, charted) = template(&[]);
    assert_same_objects(
        "base (default values)",
        kustomize(&manifests.join("base")),
        charted,
    );

    let (_, charted) = template(&["--set", "certManager.enabled=true"]);
    assert_same_objects(
        "overlays/cert-manager",
        kustomize(&manifests.join("overlays/cert-manager")),
        charted,
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    let copy = tmp.path().join("manifests");
    copy_dir(&manifests, &copy);
    let ca_bundle = prepare_self_managed(&copy);
    let certs = copy.join("overlays/self-managed/certs");
    let (_, charted) = template(&[
        "--set",
        &format!("tls.caBundle={ca_bundle}"),
        "--set-file",
        &format!(
            "tls.cert={},tls.key={}",
            path_str(&certs.join("tls.crt")),
            path_str(&certs.join("tls.key"))
        ),
    ]);
    assert_same_objects(
        "overlays/self-managed",
        kustomize(&copy.join("overlays/self-managed")),
        charted,
    );

    let values = write(tmp.path(), "cluster-default.yaml", CLUSTER_DEFAULT_VALUES);
    let (_, charted) = template(&["-f", &path_str(&values)]);
    assert_same_objects(
        "overlays/cluster-default-enabled",
        kustomize(&manifests.join("overlays/cluster-default-enabled")),
        charted,
    );

    // The pod target: the pod webhook, list/watch of JobSets and the targets annotation come
    // with it (components/pod-target), and only with it (the cases above have none).
    let (_, charted) = template(&[
        "--set",
        "certManager.enabled=true",
        "--set",
        "config.targets={jobsets,pods}",
    ]);
    assert_same_objects(
        "overlays/pod-target",
        kustomize(&manifests.join("overlays/pod-target")),
        charted,
    );

    // One replica: no PodDisruptionBudget (it would block every node drain).
    let (_, charted) = template(&["--set", "replicas=1"]);
    let kinds: Vec<String> = charted.iter().map(key).collect();
    assert!(
        !kinds.iter().any(|k| k.starts_with("PodDisruptionBudget/")),
        "replicas=1 renders a PodDisruptionBudget: {kinds:?}"
    );
    assert!(kinds.contains(&"Deployment/jobset-restart-webhook".to_owned()));

    // The alerts and the dashboard (off by default, which the base comparison above shows):
    // manifests/monitoring renders the chart's two objects.
    let (_, charted) = template(&[
        "--set",
        "prometheusRule.enabled=true,grafanaDashboard.enabled=true",
    ]);
    let mut got = by_key(
        charted
            .into_iter()
            .filter(|o| {
                o["kind"] == "PrometheusRule"
                    || o["metadata"]["name"] == "jobset-restart-webhook-dashboard"
            })
            .collect(),
    );
    for obj in got.values_mut() {
        strip_chart_labels(obj, false);
    }
    let want = by_key(kustomize(&manifests.join("monitoring")));
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        [
            "ConfigMap/jobset-restart-webhook-dashboard",
            "PrometheusRule/jobset-restart-webhook"
        ],
        "manifests/monitoring renders the PrometheusRule and the dashboard ConfigMap"
    );
    for (k, w) in &want {
        assert!(
            got.get(k) == Some(w),
            "{k}: the chart (prometheusRule.enabled, grafanaDashboard.enabled) and \
             manifests/monitoring differ.\nkustomize:\n{}\nhelm (chart labels stripped):\n{}",
            serde_json::to_string_pretty(w).unwrap_or_default(),
            serde_json::to_string_pretty(&got.get(k)).unwrap_or_default()
        );
    }
    assert_eq!(
        got.len(),
        want.len(),
        "the chart renders no other monitoring object"
    );
    eprintln!("[e2e] helm monitoring: the PrometheusRule and the dashboard equal kustomize's");
}

/// The policy objects of `docs` with the chart labels stripped, by kind/name.
pub(super) fn policies(docs: Vec<Value>, chart: bool) -> BTreeMap<String, Value> {
    let mut map = by_key(docs);
    if chart {
        for obj in map.values_mut() {
            strip_chart_labels(obj, false);
        }
    }
    map
}

#[test]
pub(super) fn helm_policy_mode_renders_what_the_policy_subcommand_prints() {
    let _t = TestTimer::start("helm_policy_mode_renders_what_the_policy_subcommand_prints");
    let chart = repo_root().join(CHART);
    let values = &load_yaml(&chart.join("values.yaml"))[0];
    let bundled_config = chart.join("files/policy-config.yaml");
    assert_eq!(
        load_yaml(&bundled_config)[0],
        values["config"],
        "files/policy-config.yaml must be the default `config` of values.yaml: copy it, then \
         regenerate the policies with `{REGENERATE}`"
    );
    let generated = run_bin(&["policy", "--config", &path_str(&bundled_config)]);
    let bundled = std::fs::read_to_string(chart.join("files/policy.yaml"))
        .expect("reading the chart's files/policy.yaml");
    assert!(
        bundled == generated,
        "the chart's files/policy.yaml is not what `policy` generates now; regenerate it with \
         `{REGENERATE}`"
    );
    let (_, charted) = template(&["--set", "mode=policy"]);
    assert_eq!(
        policies(charted, true),
        policies(yaml_documents(&generated, "policy output"), false),
        "policy mode with the default config"
    );

    // A custom config: the user passes `policy --config`'s output for it.
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = "defaults:\n  inPlace: enabled\n  action: Restart\n  onExitCodes: \"42,128-143\"\n\
                  presets:\n  pytorch: {inPlace: enabled, onExitCodes: [1, \"137\"]}\n\
                  targets: [jobsets]\n";
    let config_file = write(tmp.path(), "config.yaml", config);
    let values_file = write(
        tmp.path(),
        "values.yaml",
        &format!(
            "mode: policy\nconfig:\n{}",
            config
                .lines()
                .map(|l| format!("  {l}\n"))
                .collect::<String>()
        ),
    );
    let custom = run_bin(&["policy", "--config", &path_str(&config_file)]);
    let custom_file = write(tmp.path(), "policy.yaml", &custom);
    let (_, charted) = template(&[
        "-f",
        &path_str(&values_file),
        "--set-file",
        &format!("policy.generated={}", path_str(&custom_file)),
    ]);
    assert_eq!(
        policies(charted, true),
        policies(yaml_documents(&custom, "policy --config output"), false),
        "policy mode with a custom config and its generated policies"
    );
    assert_ne!(custom, generated, "the custom config changes the policies");

    // Without them, the chart refuses rather than install policies for another config.
    let out = helm(
        &[
            "template",
            RELEASE,
            CHART,
            "--kube-version",
            KUBE_VERSION,
            "-f",
            &path_str(&values_file),
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("mode=policy with a config other than the chart's default needs the policies generated from it"),
        "policy mode with a custom config and no policy.generated must fail with the chart's \
         message; success={}, stderr: {stderr}",
        out.status.success()
    );
}

/// Leaves of values.yaml as README rows: scalars, lists and empty maps, plus maps whose
/// keys are the user's (`resources`, `config.presets`, `grafanaDashboard.labels`) as one row
/// each.
pub(super) fn value_leaves(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    const OPAQUE: &[&str] = &["resources", "config.presets", "grafanaDashboard.labels"];
    match value.as_object() {
        Some(map) if !map.is_empty() && !OPAQUE.contains(&prefix) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                value_leaves(&path, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned(), value.clone());
        }
    }
}

#[test]
pub(super) fn helm_chart_readme_lists_every_value_with_its_default() {
    let _t = TestTimer::start("helm_chart_readme_lists_every_value_with_its_default");
    let chart = repo_root().join(CHART);
    let mut want = BTreeMap::new();
    value_leaves("", &load_yaml(&chart.join("values.yaml"))[0], &mut want);
    let readme =
        std::fs::read_to_string(chart.join("README.md")).expect("reading the chart README");
    let table = readme
        .split_once("<!-- values:begin")
        .and_then(|(_, rest)| rest.split_once("<!-- values:end -->"))
        .map(|(table, _)| table)
        .expect(
            "the chart README has a values table between <!-- values:begin and <!-- values:end -->",
        );
    let mut got = BTreeMap::new();
    let mut problems = Vec::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let (Some(k), Some(d)) = (cells.first(), cells.get(1)) else {
            problems.push(format!("not a `key` | `default` | description row: {line}"));
            continue;
        };
        let k = k.trim_start_matches("| ").trim_matches('`');
        match serde_json::from_str::<Value>(d.trim_matches('`')) {
            Ok(v) => {
                got.insert(k.to_owned(), v);
            }
            Err(e) => problems.push(format!("{k}: the default {d} is not JSON ({e})")),
        }
    }
    for (k, v) in &want {
        match got.get(k) {
            None => problems.push(format!("missing row: | `{k}` | `{v}` | ... |")),
            Some(d) if d != v => {
                problems.push(format!("{k}: README says `{d}`, values.yaml `{v}`"))
            }
            Some(_) => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        problems.push(format!("{k}: in the README, not in values.yaml"));
    }
    assert!(
        problems.is_empty(),
        "the chart README's values table and values.yaml disagree:\n{}",
        problems.join("\n")
    );
    eprintln!("[e2e] helm README: {} values listed", want.len());
}
