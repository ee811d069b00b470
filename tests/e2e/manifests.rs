//! Every JobSet manifest we have (the `sigs.k8s.io/jobset` module's `config/samples/` and our
//! `tests/fixtures/jobsets/`), opted in where it is not already, is accepted by the API server
//! after mutation, and stored with exactly the restart fields the offline `mutate` preview
//! shows. Manifests the API server refuses are listed in [`EXPECTED_REJECTIONS`] with the
//! reason; any other refusal fails the test, naming the file and the API server's error.

use std::path::Path;

use serde_json::{Value, json};

use crate::cluster::example_manifests;
use crate::util::{TestTimer, at, jobset_containers, load_yaml, mentions_rules, repo_root};
use crate::{WEBHOOK_NAMESPACE, mutate_preview, shared};

/// Manifests that kubectl's default (strict) field validation refuses because they carry
/// fields the JobSet CRD does not know: (file name, part of the API server's error). The test
/// asserts that error, then creates them with `--validate=false` (fieldValidation=Ignore: the
/// unknown fields are pruned) and checks them like the others.
const STRICT_REJECTIONS: &[(&str, &str)] = &[(
    "unknown-fields.yaml",
    r#"strict decoding error: unknown field "spec.futureField""#,
)];

/// (file name, part of the API server's error) of manifests the API server refuses even
/// without strict field validation, for reasons that have nothing to do with the mutation.
/// The test asserts each error; an entry whose file becomes acceptable fails the test, so
/// that it is removed.
const EXPECTED_REJECTIONS: &[(&str, &str)] = &[];

/// Manifests that are created as they are (not opted in), and must be stored unchanged.
const NOT_OPTED_IN: &[&str] = &["disabled.yaml"];

#[test]
fn every_sample_and_fixture_is_accepted_after_mutation() {
    let _t = TestTimer::start("every_sample_and_fixture_is_accepted_after_mutation");
    let s = shared();
    let c = &s.cluster;
    let ns = c.namespace("manifests", &[]);

    let files = example_manifests();

    let mut problems = Vec::new();
    let mut accepted = Vec::new();
    for file in &files {
        let file_name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for mut doc in load_yaml(file) {
            if doc["kind"] != "JobSet" {
                continue;
            }
            let opt_in = !NOT_OPTED_IN.contains(&file_name.as_str());
            if opt_in && !has_our_annotation(&doc) {
                doc["metadata"]["annotations"]["restart.jobset.dev/in-place"] = json!("enabled");
            }
            let name = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let mut create = vec!["create", "-n", &ns, "-f", "-"];
            if let Some((_, error)) = STRICT_REJECTIONS.iter().find(|(f, _)| *f == file_name) {
                let out = c.kubectl(&create, Some(&doc.to_string()));
                let stderr = String::from_utf8_lossy(&out.stderr);
                if out.status.success() || !stderr.contains(error) {
                    problems.push(format!(
                        "{}: expected strict field validation to refuse it with {error:?}; \
                         success={}, stderr: {}",
                        file.display(),
                        out.status.success(),
                        stderr.trim()
                    ));
                    continue;
                }
                create.push("--validate=false");
            }
            let out = c.kubectl(&create, Some(&doc.to_string()));
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let expected = EXPECTED_REJECTIONS
                .iter()
                .find(|(f, _)| *f == file_name)
                .map(|(_, e)| *e);
            match (out.status.success(), expected) {
                (true, None) => accepted.push((file.clone(), file_name.clone(), doc, name)),
                (false, Some(e)) if stderr.contains(e) => {}
                (true, Some(e)) => problems.push(format!(
                    "{}: accepted, but expected the API server to refuse it with {e:?}",
                    file.display()
                )),
                (false, _) => problems.push(format!(
                    "{}: refused by the API server: {}",
                    file.display(),
                    stderr.trim()
                )),
            }
        }
    }

    for (file, file_name, input, name) in &accepted {
        let stored = c.jobset(&ns, name);
        if NOT_OPTED_IN.contains(&file_name.as_str()) {
            check_unchanged(c, file, input, &stored, &mut problems);
        } else {
            check_matches_preview(file, input, &stored, &mut problems);
        }
    }
    eprintln!(
        "[e2e] manifests accepted: {}",
        accepted
            .iter()
            .map(|(_, f, _, _)| f.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(
        accepted.len() >= 9,
        "expected the fixtures and samples; accepted only {}",
        accepted.len()
    );
}

fn has_our_annotation(doc: &Value) -> bool {
    let ours = |annotations: &Value| {
        annotations
            .as_object()
            .is_some_and(|m| m.keys().any(|k| k.starts_with("restart.jobset.dev/")))
    };
    ours(at(doc, "/metadata/annotations"))
        || at(doc, "/spec/replicatedJobs")
            .as_array()
            .into_iter()
            .flatten()
            .any(|rj| ours(at(rj, "/template/metadata/annotations")))
}

/// The restart fields of the stored JobSet equal those of the offline preview: per container
/// `restartPolicy` and `restartPolicyRules`, per pod template `restartPolicy` (or JobSet's
/// default `OnFailure` where the preview leaves it empty), and the applied annotation.
fn check_matches_preview(file: &Path, input: &Value, stored: &Value, problems: &mut Vec<String>) {
    let preview = preview(input);
    let fields = |c: &Value| {
        (
            c["name"].clone(),
            c["restartPolicy"].clone(),
            c["restartPolicyRules"].clone(),
        )
    };
    let want: Vec<_> = jobset_containers(&preview)
        .iter()
        .map(|(r, c)| (r.clone(), fields(c)))
        .collect();
    let got: Vec<_> = jobset_containers(stored)
        .iter()
        .map(|(r, c)| (r.clone(), fields(c)))
        .collect();
    if want != got {
        problems.push(format!(
            "{}: stored containers differ from the preview:\n  preview {want:?}\n  stored  {got:?}",
            file.display()
        ));
    }
    for (i, rjob) in at(&preview, "/spec/replicatedJobs")
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let pointer = format!("/spec/replicatedJobs/{i}/template/spec/template/spec/restartPolicy");
        let want = match at(rjob, "/template/spec/template/spec/restartPolicy") {
            Value::Null => json!("OnFailure"),
            v => v.clone(),
        };
        let got = at(stored, &pointer);
        if *got != want {
            problems.push(format!(
                "{}: {pointer} is {got}, preview says {want}",
                file.display()
            ));
        }
    }
    let key = "/metadata/annotations/restart.jobset.dev~1applied";
    if at(&preview, key) != at(stored, key) {
        problems.push(format!(
            "{}: applied annotation {} stored, {} previewed",
            file.display(),
            at(stored, key),
            at(&preview, key)
        ));
    }
}

/// Not opted in: no rules anywhere, no applied annotation, and the same spec the cluster
/// stores without our webhook (created in our own, excluded, namespace).
fn check_unchanged(
    c: &crate::cluster::Cluster,
    file: &Path,
    input: &Value,
    stored: &Value,
    problems: &mut Vec<String>,
) {
    if mentions_rules(stored)
        || at(stored, "/metadata/annotations/restart.jobset.dev~1applied") != &Value::Null
    {
        problems.push(format!(
            "{}: changed by the webhook: {stored:#}",
            file.display()
        ));
    }
    let mut baseline = input.clone();
    let name = format!(
        "{}-baseline",
        input["metadata"]["name"].as_str().unwrap_or_default()
    );
    baseline["metadata"]["name"] = json!(name);
    c.kubectl_ok(
        &["create", "-n", WEBHOOK_NAMESPACE, "-f", "-"],
        Some(&baseline.to_string()),
    );
    let baseline = c.jobset(WEBHOOK_NAMESPACE, &name);
    if baseline["spec"] != stored["spec"] {
        problems.push(format!(
            "{}: stored spec differs from the webhook-less baseline:\n  stored   {}\n  baseline {}",
            file.display(),
            stored["spec"],
            baseline["spec"]
        ));
    }
}

/// The offline preview with the config the shared webhook runs with, plus what the shared
/// webhook learns from its cluster: the API server accepts `RestartAllContainers` and no node
/// says otherwise, so the default action is `RestartAllContainers` there (offline, where that
/// is unknown, the preview would default to `Restart`: docs/configuration.md).
fn preview(input: &Value) -> Value {
    let fixture = repo_root().join("tests/fixtures/config.yaml");
    let text = std::fs::read_to_string(&fixture).expect("reading tests/fixtures/config.yaml");
    let text = text.replacen(
        "defaults:\n",
        "defaults:\n  action: RestartAllContainers\n",
        1,
    );
    assert!(text.contains("  action: RestartAllContainers"), "{text}");
    let config = tempfile::NamedTempFile::new().expect("a temporary preview config");
    std::fs::write(config.path(), text).expect("writing the preview config");
    mutate_preview(
        input,
        &[
            "-o",
            "json",
            "--config",
            &config.path().display().to_string(),
        ],
    )
}
