//! The alerts and the dashboard as files (docs/alerts.md): the chart's files are the one
//! source and the manifests' copies are current; every alert has a severity, a summary, a
//! runbook section and both kinds of promtool unit test; the dashboard's panels are
//! well-formed. That the rules and tests pass promtool, and that the expressions select series
//! of a real scrape: tests/e2e/monitoring.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

const ALERTS: &str = "charts/jobset-restart-webhook/files/alerts.yaml";
const DASHBOARD: &str = "charts/jobset-restart-webhook/files/dashboard.json";
const MANIFEST_RULE: &str = "manifests/monitoring/prometheusrule.yaml";
const MANIFEST_DASHBOARD: &str = "manifests/monitoring/dashboard.json";
const UNIT_TESTS: &str = "tests/monitoring/alerts_test.yaml";
const DOCS: &str = "docs/alerts.md";
const SYNC: &str = "tests/monitoring/sync-manifests.sh";
const SEVERITIES: &[&str] = &["critical", "warning", "info"];

fn path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
}

/// The alerting rules of the rule file, by name.
fn alerts() -> BTreeMap<String, Value> {
    let file = yaml(ALERTS);
    let mut out = BTreeMap::new();
    for group in file["groups"].as_array().expect("alerts.yaml has groups") {
        for rule in group["rules"].as_array().expect("every group has rules") {
            let name = rule["alert"]
                .as_str()
                .unwrap_or_else(|| panic!("only alerting rules belong here: {rule}"))
                .to_owned();
            assert!(
                out.insert(name.clone(), rule.clone()).is_none(),
                "alert {name} is defined twice"
            );
        }
    }
    assert!(!out.is_empty(), "{ALERTS} defines no alert");
    out
}

/// GitHub's anchor of a heading made of letters only: the lowercase name.
fn anchor(alert: &str) -> String {
    alert.to_lowercase()
}

#[test]
fn manifests_carry_the_charts_alerts_and_dashboard() {
    let rule_file = read(MANIFEST_RULE);
    let (header, spec) = rule_file
        .split_once("\nspec:\n")
        .unwrap_or_else(|| panic!("{MANIFEST_RULE} has no `spec:` line"));
    let indented: String = read(ALERTS)
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_owned()
            } else {
                format!("  {l}\n")
            }
        })
        .collect();
    assert!(
        spec == indented,
        "{MANIFEST_RULE} is not {ALERTS} under its header: run {SYNC}"
    );
    let object = yaml(MANIFEST_RULE);
    assert!(header.contains("kind: PrometheusRule"), "{header}");
    assert_eq!(object["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(object["metadata"]["name"], "jobset-restart-webhook");
    assert_eq!(object["spec"], yaml(ALERTS), "{MANIFEST_RULE} spec");
    assert!(
        read(MANIFEST_DASHBOARD) == read(DASHBOARD),
        "{MANIFEST_DASHBOARD} is not a copy of {DASHBOARD}: run {SYNC}"
    );
}

#[test]
fn every_alert_has_a_severity_a_summary_and_a_runbook_section() {
    let docs = read(DOCS);
    let headings: BTreeSet<&str> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .collect();
    let alerts = alerts();
    let mut problems = Vec::new();
    for (name, rule) in &alerts {
        if !name.starts_with("JobsetRestartWebhook")
            || !name.chars().all(|c| c.is_ascii_alphanumeric())
        {
            problems.push(format!(
                "{name}: names start with JobsetRestartWebhook and are letters and digits"
            ));
        }
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        if !SEVERITIES.contains(&severity) {
            problems.push(format!(
                "{name}: severity {severity:?} is not one of {SEVERITIES:?}"
            ));
        }
        if rule["expr"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{name}: no expr"));
        }
        if rule["annotations"]["summary"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            problems.push(format!("{name}: no summary annotation"));
        }
        let runbook = format!("Runbook: {DOCS}#{}", anchor(name));
        if !rule["annotations"]["description"]
            .as_str()
            .is_some_and(|d| d.trim_end().ends_with(&runbook))
        {
            problems.push(format!("{name}: the description must end with `{runbook}`"));
        }
        if !headings.contains(name.as_str()) {
            problems.push(format!("{name}: {DOCS} has no `### {name}` section"));
        }
    }
    let documented: BTreeSet<&str> = headings
        .iter()
        .copied()
        .filter(|h| h.starts_with("JobsetRestartWebhook"))
        .collect();
    for h in documented {
        if !alerts.contains_key(h) {
            problems.push(format!(
                "{DOCS} documents {h}, which {ALERTS} does not define"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_alert_has_a_silent_and_a_firing_promtool_test() {
    let file = yaml(UNIT_TESTS);
    assert_eq!(
        file["rule_files"],
        serde_json::json!([format!("../../{ALERTS}")]),
        "{UNIT_TESTS} tests the chart's rule file"
    );
    let groups = file["tests"]
        .as_array()
        .expect("the unit-test file has tests");
    let mut silent_when_healthy = BTreeSet::new();
    let mut fires = BTreeSet::new();
    for group in groups {
        let name = group["name"].as_str().unwrap_or_default();
        for t in group["alert_rule_test"].as_array().into_iter().flatten() {
            let alert = t["alertname"].as_str().unwrap_or_default().to_owned();
            let expected = t["exp_alerts"].as_array().map_or(0, Vec::len);
            if name == "healthy" && expected == 0 {
                silent_when_healthy.insert(alert);
            } else if expected > 0 {
                assert!(
                    name.starts_with(&alert),
                    "the group {name:?} makes {alert} fire: name it after the alert"
                );
                fires.insert(alert);
            }
        }
    }
    let mut problems = Vec::new();
    for name in alerts().keys() {
        if !silent_when_healthy.contains(name) {
            problems.push(format!(
                "{name}: the `healthy` group of {UNIT_TESTS} has no `{{eval_time: 90m, alertname: {name}, exp_alerts: []}}`"
            ));
        }
        if !fires.contains(name) {
            problems.push(format!(
                "{name}: no group of {UNIT_TESTS} expects it to fire (a group named `{name} ...` with exp_alerts)"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every `$name` / `${name}` in `text`.
fn variables(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        let braced = rest.starts_with('{');
        let body = if braced { &rest[1..] } else { rest };
        let name: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

#[test]
fn dashboard_panels_are_well_formed() {
    let dash: Value =
        serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    assert_eq!(dash["uid"], "jobset-restart-webhook");
    let defined: BTreeSet<String> = dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .chain(["__rate_interval", "__interval", "__range"].map(str::to_owned))
        .collect();
    let mut ids = BTreeSet::new();
    let mut exprs = 0;
    let mut problems = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default();
        let id = panel["id"].as_u64().expect("every panel has a numeric id");
        if !ids.insert(id) {
            problems.push(format!("{title}: id {id} is used twice"));
        }
        if panel["type"] == "row" {
            continue;
        }
        if panel["datasource"]["uid"] != "${datasource}" {
            problems.push(format!(
                "{title}: its datasource is not the ${{datasource}} variable"
            ));
        }
        let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
        if targets.is_empty() {
            problems.push(format!("{title}: no targets"));
        }
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            exprs += 1;
            if expr.is_empty() {
                problems.push(format!("{title}: a target without expr"));
            }
            for v in variables(expr) {
                if !defined.contains(&v) {
                    problems.push(format!("{title}: ${v} is not a dashboard variable"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(exprs >= 20, "only {exprs} panel expressions");
}
