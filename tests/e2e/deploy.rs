//! The shipped manifests, as users install them: the kustomize base and every overlay,
//! rendered by kubectl's built-in kustomize and applied to the real API server with
//! server-side dry-run. Every object must be accepted. cert-manager's CRDs come from the
//! cert-manager Go module, so its Issuers and Certificates are validated against the real
//! schemas. The self-managed overlay is prepared exactly as the README says.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::cluster::{Cluster, ClusterOptions};
use crate::util::{TestTimer, repo_root, wait_for, yaml_documents};

const CERT_MANAGER_MODULE: &str = "github.com/cert-manager/cert-manager@v1.19.2";
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_jobset-restart-webhook");

/// `go mod download` of a module; returns its directory (fails loudly without Go).
pub(crate) fn go_module_dir(module: &str) -> PathBuf {
    let out = Command::new("go")
        .args(["mod", "download", "-json", module])
        .env("GOFLAGS", "-mod=mod")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap_or_else(|e| panic!("running `go mod download {module}` (Go is required): {e}"));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "`go mod download -json {module}` printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    match info.get("Dir").and_then(Value::as_str) {
        Some(dir) => PathBuf::from(dir),
        None => panic!("`go mod download {module}` failed: {info}"),
    }
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()))
    {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copy {}: {e}", target.display()));
        }
    }
}

/// The README's "Install without cert-manager" steps, run in a copy of manifests/; returns
/// the CA bundle (base64) that `certs` printed.
pub(crate) fn prepare_self_managed(manifests: &Path) -> String {
    let certs = manifests.join("overlays/self-managed/certs");
    let out = Command::new(BIN)
        .args(["certs", "--out-dir"])
        .arg(&certs)
        .output()
        .expect("running `jobset-restart-webhook certs`");
    assert!(
        out.status.success(),
        "certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca_bundle = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!ca_bundle.is_empty(), "certs printed no CA bundle");
    let patch: String = (0..3)
        .map(|i| {
            format!(
                "- {{op: add, path: /webhooks/{i}/clientConfig/caBundle, value: {ca_bundle}}}\n"
            )
        })
        .collect();
    std::fs::write(certs.join("ca-bundle-patch.yaml"), patch).expect("write ca-bundle-patch.yaml");
    ca_bundle
}

/// Creates cert-manager's CRDs (from its Go module) and waits until the two the overlay
/// uses are established, so that its Issuers and Certificates meet the real schemas.
pub(crate) fn install_cert_manager_crds(c: &Cluster) {
    let crds = go_module_dir(CERT_MANAGER_MODULE).join("deploy/crds");
    c.kubectl_ok(&["create", "-f", &crds.display().to_string()], None);
    for crd in ["certificates.cert-manager.io", "issuers.cert-manager.io"] {
        wait_established(c, crd);
    }
}

/// Waits until the CRD `crd` is established.
pub(crate) fn wait_established(c: &Cluster, crd: &str) {
    wait_for(
        &format!("CRD {crd} established"),
        std::time::Duration::from_secs(30),
        || {
            let out = c.kubectl(
                &[
                    "get",
                    "crd",
                    crd,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
                ],
                None,
            );
            let status = String::from_utf8_lossy(&out.stdout).into_owned();
            if status == "True" {
                Ok(())
            } else {
                Err(format!("status {status:?}"))
            }
        },
    );
}

/// `kubectl apply --dry-run=server` of the rendered YAML stream `rendered` (`count` objects):
/// the API server must accept and acknowledge every object.
pub(crate) fn dry_run_apply_all(c: &Cluster, what: &str, rendered: &str, count: usize) {
    let out = c.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(rendered));
    assert!(
        out.status.success(),
        "{what}: the API server refused objects:\n{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let applied = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(server dry run)"))
        .count();
    assert_eq!(
        applied,
        count,
        "{what}: every object is acknowledged:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    k.sort();
    k
}

#[test]
fn base_and_overlays_apply_to_the_api_server_with_server_side_dry_run() {
    let _t = TestTimer::start("base_and_overlays_apply_to_the_api_server_with_server_side_dry_run");
    let c = Cluster::start(ClusterOptions {
        name: "deploy",
        controller_manager: false,
        jobset_controller: false,
        ..ClusterOptions::default()
    });
    install_cert_manager_crds(&c);
    // Namespaced objects are validated in their namespace, which a dry-run create of the
    // Namespace does not persist: create it first (the objects themselves stay dry-run).
    c.kubectl_ok(&["create", "namespace", "jobset-restart-webhook"], None);

    let tmp = tempfile::tempdir().expect("tempdir");
    let manifests = tmp.path().join("manifests");
    copy_dir(&repo_root().join("manifests"), &manifests);
    prepare_self_managed(&manifests);

    let base_objects = [
        "ClusterRole/jobset-restart-webhook",
        "ClusterRoleBinding/jobset-restart-webhook",
        "ConfigMap/jobset-restart-webhook-config",
        "Deployment/jobset-restart-webhook",
        "MutatingWebhookConfiguration/00-jobset-restart-webhook",
        "Namespace/jobset-restart-webhook",
        "NetworkPolicy/jobset-restart-webhook",
        "PodDisruptionBudget/jobset-restart-webhook",
        "Role/jobset-restart-webhook-probe",
        "RoleBinding/jobset-restart-webhook-probe",
        "Service/jobset-restart-webhook",
        "ServiceAccount/jobset-restart-webhook",
        "ValidatingAdmissionPolicy/jobset-restart-webhook-probe-dry-run-only",
        "ValidatingAdmissionPolicyBinding/jobset-restart-webhook-probe-dry-run-only",
    ];
    let cert_manager_objects = [
        "Certificate/jobset-restart-webhook-ca",
        "Certificate/jobset-restart-webhook-serving",
        "Issuer/jobset-restart-webhook-ca",
        "Issuer/jobset-restart-webhook-selfsigned",
    ];
    let policy_objects = [
        "MutatingAdmissionPolicy/jobset-restart-in-place",
        "MutatingAdmissionPolicyBinding/jobset-restart-in-place",
        "ValidatingAdmissionPolicy/jobset-restart-annotations",
        "ValidatingAdmissionPolicyBinding/jobset-restart-annotations",
    ];
    let cases: [(&str, Vec<&str>); 6] = [
        ("base", base_objects.to_vec()),
        (
            "overlays/cert-manager",
            [&base_objects[..], &cert_manager_objects[..]].concat(),
        ),
        (
            "overlays/self-managed",
            [
                &base_objects[..],
                &["Secret/jobset-restart-webhook-tls"][..],
            ]
            .concat(),
        ),
        (
            "overlays/cluster-default-enabled",
            [&base_objects[..], &cert_manager_objects[..]].concat(),
        ),
        (
            "overlays/pod-target",
            [&base_objects[..], &cert_manager_objects[..]].concat(),
        ),
        // The alternative to all of the above (what it does: tests/e2e/differential/).
        ("policy", policy_objects.to_vec()),
    ];
    for (dir, expected) in cases {
        let path = manifests.join(dir).display().to_string();
        let rendered = c.kubectl_ok(&["kustomize", &path], None);
        let docs = yaml_documents(&rendered, dir);
        let mut want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        assert_eq!(kinds(&docs), want, "{dir}: rendered objects");
        dry_run_apply_all(&c, dir, &rendered, docs.len());
        if dir == "policy" {
            continue;
        }

        let webhook = docs
            .iter()
            .find(|d| d["kind"] == "MutatingWebhookConfiguration")
            .expect("webhook configuration");
        match dir {
            "overlays/cert-manager"
            | "overlays/cluster-default-enabled"
            | "overlays/pod-target" => assert_eq!(
                webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
                "jobset-restart-webhook/jobset-restart-webhook-ca",
                "{dir}: cainjector annotation"
            ),
            "overlays/self-managed" => {
                for w in webhook["webhooks"].as_array().into_iter().flatten() {
                    assert!(
                        w["clientConfig"]["caBundle"]
                            .as_str()
                            .is_some_and(|b| b.len() > 100),
                        "{dir}: caBundle of {}",
                        w["name"]
                    );
                }
            }
            _ => {}
        }
        let has_condition = webhook["webhooks"][0].get("matchConditions").is_some();
        assert_eq!(
            has_condition,
            dir != "overlays/cluster-default-enabled",
            "{dir}: matchConditions of the JobSet webhook"
        );
        let names: Vec<&str> = webhook["webhooks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w["name"].as_str())
            .collect();
        assert_eq!(
            names.contains(&"pods.restart.jobset.dev"),
            dir == "overlays/pod-target",
            "{dir}: the pod webhook only with the pod target: {names:?}"
        );
    }
}
