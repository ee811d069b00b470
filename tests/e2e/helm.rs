//! The Helm chart (charts/jobset-restart-webhook), held to the kustomize manifests and to the
//! real API server with the Helm CLI built from the `helm.sh/helm/v3` Go module
//! (`tests/cluster/build.sh --module helm`):
//!
//! - `helm lint --strict`, and `helm template` renders the objects `kubectl kustomize` renders
//!   for the base and each overlay (the differences allowed are listed in the chart README);
//! - policy mode renders what `jobset-restart-webhook policy --config` prints;
//! - the README lists every value with its default; bad values fail with the schema's text;
//! - value sets pass a server-side dry run; `helm install` / `upgrade` / `uninstall` on a
//!   real API server, with the chart's own webhook configuration pointed at a test webhook.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Cluster, ClusterOptions, control_plane_bin};
use crate::deploy::{
    BIN, copy_dir, dry_run_apply_all, go_module_dir, install_cert_manager_crds,
    prepare_self_managed, wait_established,
};
use crate::util::{TestTimer, at, load_yaml, repo_root, report_time, wait_for, yaml_documents};
use crate::webhook::{SHIPPED_NAME, Webhook, WebhookOptions, dry_run_probe};
use crate::{WEBHOOK_NAMESPACE, create_ok, training_jobset};

const CHART: &str = "charts/jobset-restart-webhook";
/// The ServiceMonitor CRD (`serviceMonitor.enabled`) comes from this module.
const PROMETHEUS_OPERATOR_MODULE: &str =
    "github.com/prometheus-operator/prometheus-operator@v0.85.0";
const RELEASE: &str = "jobset-restart-webhook";
/// `helm template` has no cluster to ask; the chart's kubeVersion needs one >= 1.34, and
/// this is the version of the e2e control plane.
const KUBE_VERSION: &str = "v1.36.2";
/// Labels the chart adds to every object's `metadata.labels` that the kustomize manifests
/// do not have (the chart README's allow-list).
const CHART_ONLY_LABELS: &[&str] = &[
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];
/// How to regenerate the chart's copy of the policies (also in the chart README).
const REGENERATE: &str = "cargo run --release -- policy --config charts/jobset-restart-webhook/files/policy-config.yaml > charts/jobset-restart-webhook/files/policy.yaml";

/// The folder with the `helm` binary, from `tests/cluster/build.sh --module helm` (cached in
/// `.cache/helm/`). Panics with build.sh's output when it fails: the tests never skip.
pub fn helm_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let start = Instant::now();
        let script = repo_root().join("tests/cluster/build.sh");
        let out = Command::new(&script)
            .args(["--module", "helm"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !stdout.trim().is_empty(),
            "the Helm tests need the Helm CLI: `tests/cluster/build.sh --module helm` failed \
             ({}). It needs Go >= 1.26 and the Go module proxy. Its output:\n{}{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let helm = PathBuf::from(stdout.trim()).join("helm");
        assert!(
            helm.is_file(),
            "build.sh printed {} but it holds no helm",
            stdout.trim()
        );
        report_time("helm binary (build.sh --module helm)", start.elapsed());
        helm
    })
}

/// Runs helm from the repository root with its own cache/config/data folders (under
/// target/, so nothing of the user's Helm setup is read or written), against `cluster`'s
/// kubeconfig when given.
fn helm(args: &[&str], cluster: Option<&Cluster>) -> Output {
    let home = repo_root().join("target/helm-home");
    let mut cmd = Command::new(helm_bin());
    cmd.current_dir(repo_root())
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null());
    if let Some(c) = cluster {
        cmd.arg("--kubeconfig").arg(&c.kubeconfig);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("running helm {}: {e}", args.join(" ")))
}

/// [`helm`] that must succeed; returns stdout.
fn helm_ok(args: &[&str], cluster: Option<&Cluster>) -> String {
    let out = helm(args, cluster);
    assert!(
        out.status.success(),
        "helm {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template` of the chart into the webhook's namespace with `values` flags: the YAML
/// stream and its objects.
fn template(values: &[&str]) -> (String, Vec<Value>) {
    let mut args = vec![
        "template",
        RELEASE,
        CHART,
        "--namespace",
        WEBHOOK_NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
    ];
    args.extend_from_slice(values);
    let text = helm_ok(&args, None);
    let docs = yaml_documents(&text, &format!("helm {}", args.join(" ")));
    (text, docs)
}

/// `kubectl kustomize DIR` with the e2e control plane's kubectl (no cluster needed).
fn kustomize(dir: &Path) -> Vec<Value> {
    let out = Command::new(control_plane_bin().join("kubectl"))
        .arg("kustomize")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_documents(
        &String::from_utf8_lossy(&out.stdout),
        &dir.display().to_string(),
    )
}

/// Runs our binary; must succeed; returns stdout.
fn run_bin(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running jobset-restart-webhook {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "jobset-restart-webhook {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn key(obj: &Value) -> String {
    format!(
        "{}/{}",
        at(obj, "/kind").as_str().unwrap_or("?"),
        at(obj, "/metadata/name").as_str().unwrap_or("?")
    )
}

fn by_key(docs: Vec<Value>) -> BTreeMap<String, Value> {
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
fn strip_chart_labels(obj: &mut Value, bare: bool) {
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
fn parse_config_yaml(obj: &mut Value) {
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
fn unwrap_secret_data(obj: &mut Value) {
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
fn collapse_cel_whitespace(obj: &mut Value) {
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
fn assert_same_objects(variant: &str, kustomized: Vec<Value>, charted: Vec<Value>) {
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

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Values of the cluster-default variant: as overlays/cluster-default-enabled (on
/// cert-manager), whose config has no presets.
const CLUSTER_DEFAULT_VALUES: &str = "certManager: {enabled: true}\n\
config:\n  defaults: {inPlace: enabled}\n  presets: null\n  targets: [jobsets]\n";

#[test]
fn helm_chart_lints_and_renders_what_kustomize_renders() {
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
}

/// The policy objects of `docs` with the chart labels stripped, by kind/name.
fn policies(docs: Vec<Value>, chart: bool) -> BTreeMap<String, Value> {
    let mut map = by_key(docs);
    if chart {
        for obj in map.values_mut() {
            strip_chart_labels(obj, false);
        }
    }
    map
}

#[test]
fn helm_policy_mode_renders_what_the_policy_subcommand_prints() {
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
/// keys are the user's (`resources`, `config.presets`) as one row each.
fn value_leaves(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    const OPAQUE: &[&str] = &["resources", "config.presets"];
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
fn helm_chart_readme_lists_every_value_with_its_default() {
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

/// The value sets the server-side dry run checks, as (name, helm flags); files are written
/// to `dir`. `certs`: the self-managed CA bundle, certificate and key files.
fn value_sets(dir: &Path, ca_bundle: &str, certs: &Path) -> Vec<(&'static str, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>();
    let custom_config = "defaults:\n  inPlace: disabled\n  action: Restart\n  exceptExitCodes: [0, \"2-3\"]\n  containers: [trainer]\n\
                         presets:\n  pytorch: {inPlace: enabled, action: RestartAllContainers, onExitCodes: \"1,42,128-143\"}\n\
                         targets: [jobsets, pods]\n";
    let config_file = write(dir, "custom-config.yaml", custom_config);
    let indented: String = custom_config.lines().map(|l| format!("  {l}\n")).collect();
    let custom = write(
        dir,
        "custom.yaml",
        &format!(
            "config:\n{indented}\
             replicas: 3\n\
             image: {{repository: registry.example/jrw, digest: \"sha256:{}\", pullPolicy: Always}}\n\
             imagePullSecrets: [regcred]\n\
             nodeSelector: {{kubernetes.io/os: linux}}\n\
             tolerations: [{{key: dedicated, operator: Equal, value: infra, effect: NoSchedule}}]\n\
             affinity: {{nodeAffinity: {{requiredDuringSchedulingIgnoredDuringExecution: {{nodeSelectorTerms: [{{matchExpressions: [{{key: kubernetes.io/arch, operator: In, values: [amd64, arm64]}}]}}]}}}}}}\n\
             topologySpreadConstraints: []\n\
             priorityClassName: system-cluster-critical\n\
             podLabels: {{team: ml-platform}}\n\
             podAnnotations: {{example.com/owner: ml-platform}}\n\
             logFormat: text\nlogLevel: debug\n\
             serve: {{maxConnections: 512, maxBodyMemory: 64Mi, idleTimeout: 60s, headerReadTimeout: 3s, extraArgs: [--http2]}}\n\
             webhook:\n  failurePolicy: Ignore\n  timeoutSeconds: 10\n  namespaceLabelOptIn: false\n\
             \x20 excludedNamespaces: [kube-system, kube-public]\n\
             \x20 namespaceSelector: {{matchLabels: {{env: prod}}, matchExpressions: [{{key: tier, operator: NotIn, values: [system]}}]}}\n\
             \x20 objectSelector: {{matchExpressions: [{{key: restart.example/skip, operator: DoesNotExist}}]}}\n\
             \x20 pods: {{enabled: false}}\n\
             networkPolicy: {{enabled: false}}\npodDisruptionBudget: {{enabled: false}}\n",
            "0".repeat(64)
        ),
    );
    let generated = write(
        dir,
        "custom-policy.yaml",
        &run_bin(&["policy", "--config", &path_str(&config_file)]),
    );
    let cluster_default = write(dir, "cluster-default.yaml", CLUSTER_DEFAULT_VALUES);
    let cert_files = format!(
        "tls.cert={},tls.key={}",
        path_str(&certs.join("tls.crt")),
        path_str(&certs.join("tls.key"))
    );
    vec![
        ("default values", vec![]),
        (
            "cert-manager, ServiceMonitor",
            s(&[
                "--set",
                "certManager.enabled=true,serviceMonitor.enabled=true,serviceMonitor.labels.release=prometheus",
            ]),
        ),
        (
            "self-managed",
            vec![
                "--set".into(),
                format!("tls.caBundle={ca_bundle}"),
                "--set-file".into(),
                cert_files.clone(),
            ],
        ),
        (
            "existing Secret, other name",
            vec![
                "--set".into(),
                format!("tls.caBundle={ca_bundle},tls.secretName=my-serving-cert"),
            ],
        ),
        ("cluster default", s(&["-f", &path_str(&cluster_default)])),
        (
            "custom config, selectors, scheduling, limits, optional objects off",
            s(&[
                "-f",
                &path_str(&custom),
                "--set",
                "certManager.enabled=true",
            ]),
        ),
        ("policy mode, default config", s(&["--set", "mode=policy"])),
        (
            "policy mode, custom config",
            s(&[
                "-f",
                &path_str(&custom),
                "--set",
                "mode=policy",
                "--set-file",
                &format!("policy.generated={}", path_str(&generated)),
            ]),
        ),
    ]
}

#[test]
fn helm_value_sets_apply_to_the_api_server_with_server_side_dry_run() {
    let _t = TestTimer::start("helm_value_sets_apply_to_the_api_server_with_server_side_dry_run");
    helm_bin();
    let c = Cluster::start(ClusterOptions {
        name: "helm-dry-run",
        controller_manager: false,
        jobset_controller: false,
        ..ClusterOptions::default()
    });
    install_cert_manager_crds(&c);
    let service_monitors = go_module_dir(PROMETHEUS_OPERATOR_MODULE)
        .join("example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml");
    c.kubectl_ok(&["create", "-f", &path_str(&service_monitors)], None);
    wait_established(&c, "servicemonitors.monitoring.coreos.com");
    c.kubectl_ok(
        &[
            "apply",
            "-f",
            &path_str(&repo_root().join("manifests/base/namespace.yaml")),
        ],
        None,
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = tmp.path().join("certs");
    let ca_bundle = run_bin(&["certs", "--out-dir", &path_str(&certs)])
        .trim()
        .to_owned();
    let sets = value_sets(tmp.path(), &ca_bundle, &certs);
    for (name, flags) in &sets {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (rendered, docs) = template(&flags);
        assert!(
            docs.len() >= 4,
            "{name}: only {} objects rendered",
            docs.len()
        );
        dry_run_apply_all(
            &c,
            &format!("helm template ({name})"),
            &rendered,
            docs.len(),
        );
        eprintln!(
            "[e2e] helm dry run ({name}): {} objects accepted",
            docs.len()
        );
    }
}

/// Each object of `release`'s manifest as the API server stores it, without what changes
/// on its own (resourceVersion, managedFields, status).
fn stored_objects(c: &Cluster, manifest: &[Value]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for obj in manifest {
        let kind = obj["kind"].as_str().expect("a kind");
        let name = obj["metadata"]["name"].as_str().expect("a name");
        let mut args = vec![kind, name];
        if let Some(ns) = obj["metadata"]["namespace"].as_str() {
            args.extend_from_slice(&["-n", ns]);
        }
        let mut stored = c.get_json(&args);
        if let Some(meta) = stored["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
            meta.remove("managedFields");
        }
        if let Some(map) = stored.as_object_mut() {
            map.remove("status");
        }
        out.insert(key(obj), stored);
    }
    out
}

fn release_manifest(c: &Cluster) -> Vec<Value> {
    let text = helm_ok(
        &["get", "manifest", RELEASE, "--namespace", WEBHOOK_NAMESPACE],
        Some(c),
    );
    yaml_documents(&text, "helm get manifest")
}

/// Names of the cluster's objects of `kind` that carry our app label or one of `names`.
fn ours(c: &Cluster, kind: &str, names: &[&str]) -> Vec<String> {
    let list = c.get_json(&[kind]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| {
            o["metadata"]["labels"]["app.kubernetes.io/name"] == "jobset-restart-webhook"
                || names.iter().any(|n| o["metadata"]["name"] == *n)
        })
        .map(key)
        .collect()
}

fn applied(jobset: &Value) -> &str {
    at(jobset, "/metadata/annotations/restart.jobset.dev~1applied")
        .as_str()
        .unwrap_or("")
}

#[test]
fn helm_install_upgrade_and_uninstall_on_the_api_server() {
    let _t = TestTimer::start("helm_install_upgrade_and_uninstall_on_the_api_server");
    helm_bin();
    let c = Cluster::start(ClusterOptions {
        name: "helm-install",
        ..ClusterOptions::default()
    });
    // The chart README's first step.
    c.kubectl_ok(
        &[
            "apply",
            "-f",
            &path_str(&repo_root().join("manifests/base/namespace.yaml")),
        ],
        None,
    );
    let ns_flag = ["--namespace", WEBHOOK_NAMESPACE];

    // Bad values fail with the schema's message and install nothing.
    for (set, message) in [
        (
            "mode=wat",
            "at '/mode': value must be one of 'webhook', 'policy'",
        ),
        ("replicas=-1", "at '/replicas': minimum: got -1, want 0"),
    ] {
        let out = helm(
            &[
                "install", RELEASE, CHART, ns_flag[0], ns_flag[1], "--set", set,
            ],
            Some(&c),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(message),
            "helm install --set {set}: expected the schema's message {message:?}; success={}, \
             stderr: {stderr}",
            out.status.success()
        );
    }
    let releases = helm_ok(&["list", "--all", "-q", ns_flag[0], ns_flag[1]], Some(&c));
    assert!(
        releases.trim().is_empty(),
        "bad values left releases: {releases}"
    );

    // Install: self-managed certificates, a config with a preset.
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = tmp.path().join("certs");
    let ca_bundle = run_bin(&["certs", "--out-dir", &path_str(&certs)])
        .trim()
        .to_owned();
    let config_v1 = "config:\n  defaults: {inPlace: disabled}\n  presets:\n    pytorch: {inPlace: enabled, action: RestartAllContainers, onExitCodes: \"1,42,128-143\"}\n  targets: [jobsets]\n";
    let config_v2 = config_v1.replace(
        "{inPlace: disabled}",
        "{inPlace: disabled, action: Restart}",
    );
    let v1 = write(tmp.path(), "v1.yaml", config_v1);
    let v2 = write(tmp.path(), "v2.yaml", &config_v2);
    let tls = [
        "--set".to_owned(),
        format!("tls.caBundle={ca_bundle}"),
        "--set-file".to_owned(),
        format!(
            "tls.cert={},tls.key={}",
            path_str(&certs.join("tls.crt")),
            path_str(&certs.join("tls.key"))
        ),
    ];
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let start = Instant::now();
    let mut install = vec!["install", RELEASE, CHART, ns_flag[0], ns_flag[1], "-f"];
    let v1_path = path_str(&v1);
    install.push(&v1_path);
    install.extend_from_slice(&tls);
    helm_ok(&install, Some(&c));
    report_time("helm install", start.elapsed());

    let manifest = release_manifest(&c);
    let kinds: Vec<String> = manifest.iter().map(key).collect();
    for k in [
        "Deployment/jobset-restart-webhook",
        "ConfigMap/jobset-restart-webhook-config",
        "Secret/jobset-restart-webhook-tls",
        "MutatingWebhookConfiguration/00-jobset-restart-webhook",
    ] {
        assert!(
            kinds.iter().any(|x| x == k),
            "the release lacks {k}: {kinds:?}"
        );
    }
    // The Deployment controller writes to the Deployment after creation (its revision
    // annotation): let it settle before comparing.
    wait_for(
        "the Deployment to be observed",
        Duration::from_secs(60),
        || {
            let d = c.get_json(&[
                "deployment",
                "jobset-restart-webhook",
                ns_flag[0],
                ns_flag[1],
            ]);
            let rev = at(
                &d,
                "/metadata/annotations/deployment.kubernetes.io~1revision",
            );
            if at(&d, "/status/observedGeneration") == at(&d, "/metadata/generation")
                && rev.is_string()
            {
                Ok(())
            } else {
                Err(format!("status {}", at(&d, "/status")))
            }
        },
    );
    let before = stored_objects(&c, &manifest);
    for (k, obj) in &before {
        assert_eq!(
            obj["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm",
            "{k} as stored"
        );
    }
    let mwc = &before["MutatingWebhookConfiguration/00-jobset-restart-webhook"];
    for w in mwc["webhooks"].as_array().expect("webhooks") {
        assert_eq!(
            w["clientConfig"]["caBundle"],
            ca_bundle.as_str(),
            "caBundle of {}",
            w["name"]
        );
    }

    // Upgrade with a changed config: the ConfigMap changes, nothing else.
    let start = Instant::now();
    let mut upgrade = vec!["upgrade", RELEASE, CHART, ns_flag[0], ns_flag[1], "-f"];
    let v2_path = path_str(&v2);
    upgrade.push(&v2_path);
    upgrade.extend_from_slice(&tls);
    helm_ok(&upgrade, Some(&c));
    report_time("helm upgrade", start.elapsed());
    let after = stored_objects(&c, &release_manifest(&c));
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "the upgrade keeps the same objects"
    );
    let cm_key = "ConfigMap/jobset-restart-webhook-config";
    let stored_config = |objs: &BTreeMap<String, Value>| {
        let text = objs[cm_key]["data"]["config.yaml"]
            .as_str()
            .expect("config.yaml in the ConfigMap")
            .to_owned();
        (yaml_documents(&text, "config.yaml")[0].clone(), text)
    };
    // Helm merges the user's maps into the defaults: the chart's `any-failure` preset stays.
    let mut want_v2 = yaml_documents(&config_v2, "v2")[0]["config"].clone();
    want_v2["presets"]["any-failure"] = json!({"inPlace": "enabled", "exceptExitCodes": "0"});
    let (config_after, config_text) = stored_config(&after);
    assert_eq!(
        config_after, want_v2,
        "the upgraded ConfigMap holds the new config"
    );
    assert_ne!(stored_config(&before).0, want_v2, "the config did change");
    for (k, obj) in &after {
        if k != cm_key {
            assert!(
                obj == &before[k],
                "helm upgrade of the config changed {k}:\nbefore: {}\nafter: {}",
                before[k],
                obj
            );
        }
    }

    // The chart's own webhook configuration, pointed at a test instance of the webhook that
    // runs with the config the chart stored.
    let config_file = write(tmp.path(), "stored-config.yaml", &config_text);
    let webhook = Webhook::start(
        &c,
        WebhookOptions {
            targets: None,
            config: Some(config_file),
        },
    );
    let patch: Vec<Value> = after["MutatingWebhookConfiguration/00-jobset-restart-webhook"]
        ["webhooks"]
        .as_array()
        .expect("webhooks")
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let path = w["clientConfig"]["service"]["path"]
                .as_str()
                .expect("a service path");
            json!({"op": "replace", "path": format!("/webhooks/{i}/clientConfig"),
                   "value": {"url": format!("https://{}{path}", webhook.addr), "caBundle": webhook.ca_bundle}})
        })
        .collect();
    c.kubectl_ok(
        &[
            "patch",
            "mutatingwebhookconfiguration",
            SHIPPED_NAME,
            "--type=json",
            "-p",
            &Value::Array(patch).to_string(),
        ],
        None,
    );
    let ns = c.namespace("helm", &[]);
    wait_for(
        "the chart's webhook configuration to call the webhook",
        Duration::from_secs(30),
        || {
            let stored = dry_run_probe(&c, &ns);
            if applied(&stored).is_empty() {
                Err(format!("not mutated yet: {stored}"))
            } else {
                Ok(())
            }
        },
    );
    create_ok(
        &c,
        &ns,
        &training_jobset("by-default", &[("restart.jobset.dev/in-place", "enabled")]),
    );
    create_ok(
        &c,
        &ns,
        &training_jobset("by-preset", &[("restart.jobset.dev/preset", "pytorch")]),
    );
    create_ok(&c, &ns, &training_jobset("not-opted-in", &[]));
    // The upgraded default action and the installed preset both come from the chart's config.
    assert_eq!(
        applied(&c.jobset(&ns, "by-default")),
        "workers/trainer=Restart:NotIn(0)"
    );
    assert_eq!(
        applied(&c.jobset(&ns, "by-preset")),
        "workers/trainer=RestartAllContainers:In(1,42,128-143)"
    );
    let stored = c.jobset(&ns, "by-default");
    let container = at(
        &stored,
        "/spec/replicatedJobs/0/template/spec/template/spec/containers/0",
    );
    assert_eq!(container["restartPolicy"], "Never");
    assert_eq!(
        container["restartPolicyRules"],
        json!([{"action": "Restart", "exitCodes": {"operator": "NotIn", "values": [0]}}])
    );
    assert_eq!(
        applied(&c.jobset(&ns, "not-opted-in")),
        "",
        "not opted in: left alone"
    );

    // Uninstall: no webhook configuration (nor any other object of ours) is left.
    helm_ok(
        &["uninstall", RELEASE, ns_flag[0], ns_flag[1], "--wait"],
        Some(&c),
    );
    let left = ours(&c, "mutatingwebhookconfigurations", &[SHIPPED_NAME]);
    assert!(left.is_empty(), "helm uninstall left {left:?}");
    for k in after.keys() {
        let (kind, name) = k.split_once('/').expect("kind/name");
        let out = c.kubectl(&["get", kind, name, ns_flag[0], ns_flag[1]], None);
        assert!(!out.status.success(), "helm uninstall left {k}");
    }
    drop(webhook);

    // Policy mode: installed for real, the policies mutate an opted-in JobSet; uninstalled,
    // none is left.
    helm_ok(
        &[
            "install",
            RELEASE,
            CHART,
            ns_flag[0],
            ns_flag[1],
            "--set",
            "mode=policy",
        ],
        Some(&c),
    );
    wait_for(
        "the chart's admission policies to mutate",
        Duration::from_secs(30),
        || {
            let stored = dry_run_probe(&c, &ns);
            if applied(&stored).is_empty() {
                Err(format!("not mutated yet: {stored}"))
            } else {
                Ok(())
            }
        },
    );
    create_ok(
        &c,
        &ns,
        &training_jobset("by-policy", &[("restart.jobset.dev/in-place", "enabled")]),
    );
    assert_eq!(
        applied(&c.jobset(&ns, "by-policy")),
        "workers/trainer=RestartAllContainers:NotIn(0)"
    );
    helm_ok(
        &["uninstall", RELEASE, ns_flag[0], ns_flag[1], "--wait"],
        Some(&c),
    );
    for kind in [
        "mutatingadmissionpolicies",
        "mutatingadmissionpolicybindings",
        "validatingadmissionpolicies",
        "validatingadmissionpolicybindings",
        "mutatingwebhookconfigurations",
    ] {
        let left = ours(&c, kind, &[]);
        assert!(
            left.is_empty(),
            "helm uninstall (policy mode) left {left:?}"
        );
    }
}
