//! What admission of ours the API server runs, and switching between them.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::cluster::Cluster;
use testkit::util;
use testkit::webhook::{SHIPPED_NAME, Webhook};

use crate::APPLIED;

/// Which admission of ours the API server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    None,
    Ours,
    Policy,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Ours => "webhook",
            Mode::Policy => "policy",
        }
    }
}

/// The generated policies (a `v1` `List`) and the mutating policy's name (the label of its
/// check metric).
pub struct Policies {
    pub list: Value,
    pub mutating: String,
}

/// `policy -o json` of the binary `serve` runs from, with the built-in defaults.
pub fn generated_policies() -> Policies {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobset-restart-webhook"))
        .args(["policy", "-o", "json"])
        .output()
        .expect("running jobset-restart-webhook policy");
    assert!(
        out.status.success(),
        "policy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("policy -o json prints JSON");
    let name_of = |kind: &str| {
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["kind"] == kind)
            .and_then(|i| i["metadata"]["name"].as_str())
            .unwrap_or_else(|| panic!("policy prints no {kind}"))
            .to_owned()
    };
    assert!(
        !name_of("ValidatingAdmissionPolicy").is_empty(),
        "policy prints a ValidatingAdmissionPolicy"
    );
    Policies {
        mutating: name_of("MutatingAdmissionPolicy"),
        list,
    }
}

/// A server-side dry run in `default`: (stored object or Null, refusal text or "").
pub fn dry_run(cluster: &Cluster, in_place: &str) -> (Value, String) {
    let probe = json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
        "metadata": {"name": "probe-restart-webhook", "annotations": {"restart.jobset.dev/in-place": in_place}},
        "spec": {"replicatedJobs": [{"name": "r", "replicas": 1, "template": {"spec": {
            "template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}}]}
    });
    cluster.dry_run_create("default", &probe)
}

/// Whether the API server mutates an opted-in dry run and denies one with an invalid
/// annotation, or neither; `Err` while it is in between.
pub fn acting(cluster: &Cluster, want: bool) -> Result<(), String> {
    let (stored, _) = dry_run(cluster, "enabled");
    if !stored["metadata"]["name"].is_string() {
        return Err(format!("the opted-in dry run was not stored: {stored}"));
    }
    let mutated = stored.pointer(APPLIED).is_some_and(Value::is_string);
    let (accepted, refusal) = dry_run(cluster, "maybe");
    let denied = !accepted["metadata"]["name"].is_string();
    if mutated == want && denied == want {
        Ok(())
    } else {
        Err(format!(
            "mutated {mutated}, invalid annotation denied {denied} ({})",
            refusal.trim()
        ))
    }
}

/// Puts the API server in `mode` (always through "none") and waits until it acts so.
pub fn set_mode(cluster: &Cluster, hook: &Webhook, policies: &Policies, mode: Mode) {
    let t = Instant::now();
    cluster.kubectl_ok(
        &[
            "delete",
            "mutatingwebhookconfiguration",
            SHIPPED_NAME,
            "--ignore-not-found",
        ],
        None,
    );
    cluster.kubectl_ok(
        &["delete", "-f", "-", "--ignore-not-found"],
        Some(&policies.list.to_string()),
    );
    util::wait_for(
        "the API server to run no admission of ours",
        Duration::from_secs(60),
        || acting(cluster, false),
    );
    match mode {
        Mode::None => {}
        Mode::Ours => hook.register(cluster, None, "default"),
        Mode::Policy => {
            cluster.kubectl_ok(&["apply", "-f", "-"], Some(&policies.list.to_string()));
        }
    }
    if mode != Mode::None {
        util::wait_for(
            "the API server to run our admission",
            Duration::from_secs(60),
            || acting(cluster, true),
        );
    }
    eprintln!(
        "apiserver: mode {} in effect after {:.1} s",
        mode.label(),
        t.elapsed().as_secs_f64()
    );
}

pub fn delete_namespace(cluster: &Cluster, ns: &str) {
    cluster.kubectl_ok(&["delete", "namespace", ns, "--wait=false"], None);
    // Bounded: the next run starts after at most 60 s even if the garbage collector is busy.
    let t = Instant::now();
    let deadline = t + Duration::from_secs(60);
    while Instant::now() < deadline {
        if !cluster
            .kubectl(&["get", "namespace", ns], None)
            .status
            .success()
        {
            eprintln!(
                "apiserver: namespace {ns} deleted in {:.1} s",
                t.elapsed().as_secs_f64()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("apiserver: namespace {ns} still terminating after 60 s; going on");
}
