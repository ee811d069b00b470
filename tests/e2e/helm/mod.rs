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

mod install;
mod render;

use render::*;

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
pub(crate) fn template(values: &[&str]) -> (String, Vec<Value>) {
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
