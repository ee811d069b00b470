//! The `mutate` subcommand as a user runs it: the real binary, files and stdin, exit codes,
//! stdout and stderr.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_jobset-restart-webhook");

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn mutate(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .arg("mutate")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("the binary finishes")
}

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

#[test]
fn prints_the_mutated_jobset_as_yaml() {
    let out = mutate(&["-f", &fixture("jobsets/single.yaml")], None);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_saphyr::from_slice(&out.stdout).expect("stdout is YAML");
    let c =
        &doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["restartPolicy"], json!("Never"));
    // Offline, nothing says the API server accepts RestartAllContainers: the default action
    // is Restart, which every supported version accepts, and the one warning says why.
    assert_eq!(
        c["restartPolicyRules"],
        json!([{"action": "Restart", "exitCodes": {"operator": "NotIn", "values": [0]}}])
    );
    assert_eq!(
        doc["metadata"]["annotations"]["restart.jobset.dev/applied"],
        json!("workers/trainer=Restart:NotIn(0)")
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one warning expected: {stderr}");
    assert!(
        stderr.contains(
            "the action defaults to Restart: whether this cluster's API server accepts \
             RestartAllContainers is not known"
        ),
        "{stderr}"
    );
}

#[test]
fn invalid_annotation_exits_non_zero_with_the_webhook_message() {
    let input = std::fs::read_to_string(fixture("jobsets/single.yaml"))
        .expect("fixture")
        .replace(
            "restart.jobset.dev/in-place: enabled",
            "restart.jobset.dev/on-exit-codes: \"42,abc\"",
        );
    let out = mutate(&["-f", "-"], Some(&input));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "error: JobSet single: restart.jobset.dev/on-exit-codes: \"42,abc\": \"abc\" is not an exit code (0-255) or range a-b"
    );
}

#[test]
fn several_documents_print_a_list_and_warnings_go_to_stderr() {
    let a = std::fs::read_to_string(fixture("jobsets/onfailure.yaml")).expect("fixture");
    let b = std::fs::read_to_string(fixture("jobsets/disabled.yaml")).expect("fixture");
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\ndata: {k: v}\n";
    let out = mutate(
        &["-f", "-", "-o", "json"],
        Some(&format!("{a}\n---\n{b}\n---\n{cm}")),
    );
    let list = stdout_json(&out);
    assert_eq!(list["kind"], json!("List"));
    assert_eq!(list["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        list["items"][2],
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}, "data": {"k": "v"}}),
        "other kinds pass through"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() == 2, "{stderr}");
    assert!(
        lines[0].starts_with("Warning: JobSet onfailure: the action defaults to Restart: "),
        "{stderr}"
    );
    assert!(lines[1].starts_with("Warning: JobSet onfailure: replicated job \"workers\": the pod template sets restartPolicy: OnFailure"), "{stderr}");
}

#[test]
fn patch_output_and_namespace_labels() {
    let out = mutate(
        &["-f", &fixture("jobsets/disabled.yaml"), "-o", "patch"],
        None,
    );
    assert_eq!(stdout_json(&out), json!([]), "not opted in: empty patch");
    let out = mutate(
        &[
            "-f",
            &fixture("jobsets/disabled.yaml"),
            "-o",
            "patch",
            "--namespace-labels",
            "restart.jobset.dev/in-place=enabled",
        ],
        None,
    );
    let patch = stdout_json(&out);
    assert_eq!(patch.as_array().map(Vec::len), Some(4), "{patch}");
    assert_eq!(
        patch[0]["path"],
        json!("/spec/replicatedJobs/0/template/spec/template/spec/containers/0/restartPolicy")
    );
}

#[test]
fn config_file_presets_apply_and_bad_config_is_reported() {
    let out = mutate(
        &[
            "-f",
            &fixture("jobsets/preset.yaml"),
            "-o",
            "json",
            "--config",
            &fixture("config.yaml"),
        ],
        None,
    );
    let doc = stdout_json(&out);
    assert_eq!(
        doc["metadata"]["annotations"]["restart.jobset.dev/applied"],
        json!("workers/trainer=RestartAllContainers:NotIn(0,2)")
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "defaults:\n  action: Sometimes\n").expect("write");
    let out = mutate(
        &[
            "-f",
            &fixture("jobsets/preset.yaml"),
            "--config",
            &bad.display().to_string(),
        ],
        None,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml: defaults.action: \"Sometimes\": allowed values are Restart or RestartAllContainers"), "{stderr}");
}

#[test]
fn admission_review_input_goes_through_the_webhook_path() {
    let text = std::fs::read_to_string(fixture("jobsets/single.yaml")).expect("fixture");
    let object: Value = serde_saphyr::from_str(&text).expect("yaml");
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u-1", "kind": {"group": "jobset.x-k8s.io", "version": "v1alpha2", "kind": "JobSet"},
                    "resource": {"group": "jobset.x-k8s.io", "version": "v1alpha2", "resource": "jobsets"},
                    "operation": "CREATE", "namespace": "ml", "name": "single", "object": object},
    });
    let out = mutate(&["-f", "-", "-o", "patch"], Some(&review.to_string()));
    let patch = stdout_json(&out);
    assert_eq!(patch.as_array().map(Vec::len), Some(4), "{patch}");
    let mut bad = review.clone();
    bad["request"]["object"]["metadata"]["annotations"]["restart.jobset.dev/action"] =
        json!("Reboot");
    let out = mutate(&["-f", "-"], Some(&bad.to_string()));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "restart.jobset.dev/action: \"Reboot\": allowed values are Restart or RestartAllContainers"
    ));
}

#[test]
fn unreadable_input_is_a_clear_error() {
    let out = mutate(&["-f", "-"], Some("{not json"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("error: parsing -:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mutate(&["-f", "/nonexistent/x.yaml"], None);
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: reading /nonexistent/x.yaml"));
}
