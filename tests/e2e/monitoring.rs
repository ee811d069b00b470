//! The alerts and the dashboard (docs/alerts.md) held to Prometheus' own code, built from the
//! `github.com/prometheus/prometheus` Go module (`tests/cluster/build.sh --module promtool`;
//! `promrules` is promtool's `check rules` and `test rules` code without the rest of
//! promtool, tests/cluster/README.md says why):
//!
//! - `promrules check rules` on the rule file and `promrules test rules` on
//!   tests/monitoring/alerts_test.yaml (every alert silent on healthy series and firing on
//!   failing ones; tests/monitoring.rs checks that the file has both for every alert);
//! - against a real scrape of the real webhook on a real API server: every alert expression and
//!   every dashboard expression parses and evaluates (Prometheus' PromQL engine, in
//!   `scrapecheck`), each of its metric selectors returns series, and no alert fires on the
//!   healthy webhook.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use crate::addons::module_bin;
use crate::cluster::{Cluster, ClusterOptions};
use crate::nodes::add_node;
use crate::util::{TestTimer, load_yaml, repo_root, wait_for};
use crate::webhook::{Webhook, WebhookOptions};
use crate::{WEBHOOK_NAMESPACE, create, training_jobset};

const ALERTS: &str = "charts/jobset-restart-webhook/files/alerts.yaml";
const DASHBOARD: &str = "charts/jobset-restart-webhook/files/dashboard.json";
const UNIT_TESTS: &str = "tests/monitoring/alerts_test.yaml";
/// The job name the rules select (what the chart's ServiceMonitor produces).
const JOB: &str = "jobset-restart-webhook";
/// What the dashboard's range variables become.
const RANGE: &str = "5m";
/// Time the capability probe, the caches and the node watch get to report.
const SETTLE: Duration = Duration::from_secs(60);

/// The folder with `promrules` and `scrapecheck`, from `tests/cluster/build.sh --module
/// promtool` (cached in `.cache/promtool/`; built once per test process by
/// [`module_bin`]). Panics with build.sh's output when it fails: the tests never skip.
fn tools() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = module_bin("promtool");
        for tool in ["promrules", "scrapecheck"] {
            assert!(
                dir.join(tool).is_file(),
                "build.sh printed {} but it holds no {tool}",
                dir.display()
            );
        }
        dir
    })
}

/// Runs `tool args` from the repository root.
fn run(tool: &str, args: &[&str]) -> Output {
    Command::new(tools().join(tool))
        .current_dir(repo_root())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {tool} {}: {e}", args.join(" ")))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn promtool_checks_the_rules_and_passes_their_unit_tests() {
    let _t = TestTimer::start("promtool_checks_the_rules_and_passes_their_unit_tests");
    let check = run("promrules", &["check", "rules", ALERTS]);
    assert!(
        check.status.success(),
        "promrules check rules {ALERTS}:\n{}",
        text(&check)
    );
    let tests = run("promrules", &["test", "rules", UNIT_TESTS]);
    assert!(
        tests.status.success(),
        "promrules test rules {UNIT_TESTS}:\n{}",
        text(&tests)
    );
    eprintln!("[e2e] promrules: {}", text(&check).trim());

    // The tests can fail, alert by alert: with every expression replaced by one that never
    // fires, each alert's firing test fails; by one that always fires, each alert's line of
    // the healthy group fails.
    let tmp = tempfile::tempdir().expect("tempdir");
    let names = alert_names();
    for (mutant, group_fails) in [("vector(0) > 1", None), ("vector(1)", Some("healthy"))] {
        let failed = failures_with_every_expr(tmp.path(), mutant);
        for name in &names {
            let caught = failed
                .iter()
                .any(|(g, a)| a == name && group_fails.is_none_or(|want| g == want));
            assert!(
                caught,
                "with `expr: {mutant}` for every alert, no test of {name} failed{}: the tests \
                 cannot catch that change. Failures: {failed:?}",
                group_fails
                    .map(|g| format!(" in group {g}"))
                    .unwrap_or_default()
            );
        }
    }
}

/// The alert names of the rule file, in order.
fn alert_names() -> Vec<String> {
    rule_file()["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .map(|r| r["alert"].as_str().expect("an alert name").to_owned())
        .collect()
}

fn rule_file() -> Value {
    load_yaml(&repo_root().join(ALERTS))
        .into_iter()
        .next()
        .expect("the rule file holds a document")
}

/// Runs the unit tests against a copy of the rules whose every `expr` is `mutant`; returns the
/// failed checks as (test group, alert name), read from promtool's report.
fn failures_with_every_expr(dir: &Path, mutant: &str) -> Vec<(String, String)> {
    let mut rules = rule_file();
    for g in rules["groups"].as_array_mut().expect("groups") {
        for r in g["rules"].as_array_mut().expect("rules") {
            r["expr"] = json!(mutant);
        }
    }
    let rules_path = dir.join("mutated-rules.json");
    std::fs::write(&rules_path, rules.to_string()).expect("writing the mutated rules");
    let mut tests = load_yaml(&repo_root().join(UNIT_TESTS))
        .into_iter()
        .next()
        .expect("the unit-test file holds a document");
    tests["rule_files"] = json!([rules_path]);
    let tests_path = dir.join("mutated-tests.json");
    std::fs::write(&tests_path, tests.to_string()).expect("writing the unit tests");
    let out = run(
        "promrules",
        &["test", "rules", &tests_path.display().to_string()],
    );
    assert!(
        !out.status.success(),
        "promrules test rules passed with every expr `{mutant}`:\n{}",
        text(&out)
    );
    // The report names each failed check: "name: GROUP," then "alertname: ALERT, time: ...".
    let report = text(&out);
    let mut group = String::new();
    let mut failed = Vec::new();
    for line in report.lines().map(str::trim) {
        if let Some(g) = line.strip_prefix("name: ") {
            group = g.trim_end_matches(',').to_owned();
        } else if let Some(a) = line.strip_prefix("alertname: ") {
            let alert = a.split(',').next().unwrap_or_default().to_owned();
            failed.push((group.clone(), alert));
        }
    }
    failed
}

/// Replaces the dashboard's variables by the rule of docs/alerts.md ("How they are tested"):
/// `$job`, `$namespace`, `$instance` (and `${...}`) by the scraped target's labels, the range
/// variables by [`RANGE`]. Panics on any other variable.
fn substitute(expr: &str, target: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        let braced = rest.starts_with('{');
        let body = if braced { &rest[1..] } else { rest };
        let name: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let value = match name.as_str() {
            "__rate_interval" | "__interval" | "__range" => RANGE.to_owned(),
            other => target
                .get(other)
                .cloned()
                .unwrap_or_else(|| panic!("{expr}: no substitution rule for ${other}")),
        };
        out.push_str(&value);
        rest = &body[name.len()..];
        if braced {
            rest = rest
                .strip_prefix('}')
                .unwrap_or_else(|| panic!("{expr}: unclosed ${{{name}"));
        }
    }
    out.push_str(rest);
    out
}

/// `label_values(SELECTOR, LABEL)` of a dashboard variable: (SELECTOR, LABEL).
fn label_values(query: &str) -> (String, String) {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("variable query {query:?} is not label_values(SELECTOR, LABEL)"));
    let (selector, label) = inner
        .rsplit_once(',')
        .unwrap_or_else(|| panic!("variable query {query:?} has no LABEL"));
    (selector.trim().to_owned(), label.trim().to_owned())
}

/// Waits until the scrape has the series that only appear after the cluster has reported.
fn wait_scrape(webhook: &Webhook) -> String {
    let needed = [
        "jobset_restart_webhook_cluster_capability{capability=\"container_restart_rules\"} 1",
        "jobset_restart_webhook_cluster_capability{capability=\"jobset_crd_keeps_rules\"} 1",
        "jobset_restart_webhook_cluster_capability{capability=\"nodes_restart_all_containers\"} 1",
        "jobset_restart_webhook_cluster_nodes{state=\"declaring\"} 1",
        "jobset_restart_webhook_cluster_capability_last_probe_timestamp_seconds ",
        "jobset_restart_webhook_connection_timeouts_total{phase=\"handshake\"} ",
        "jobset_restart_webhook_denials_total{kind=\"JobSet\"} ",
        "jobset_restart_webhook_bad_requests_total{code=\"400\"} ",
    ];
    wait_for("the webhook's metrics to show the cluster", SETTLE, || {
        let scrape = webhook.metrics();
        match needed.iter().find(|n| !scrape.contains(*n)) {
            None => Ok(scrape),
            Some(n) => Err(format!("no `{n}` yet")),
        }
    })
}

/// POSTs `body` to the webhook's /mutate over TLS (trusting its CA); returns the status.
fn post_mutate(webhook: &Webhook, body: &'static str) -> u16 {
    use base64::Engine as _;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(webhook.ca_bundle.trim())
        .expect("the CA bundle is base64");
    let ca = reqwest::Certificate::from_pem(&pem).expect("the CA bundle is PEM");
    let url = format!("https://{}/mutate", webhook.addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .http1_only()
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("a reqwest client");
        client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"))
            .status()
            .as_u16()
    })
}

#[test]
fn alerts_and_dashboard_select_series_of_a_real_scrape() {
    let _t = TestTimer::start("alerts_and_dashboard_select_series_of_a_real_scrape");
    tools();
    // Own cluster: the Node object is cluster-wide. No kube-controller-manager (its node
    // lifecycle controller would taint the kubelet-less node), so the capability probe's
    // dry-run Pods need a `default` ServiceAccount made by hand.
    let c = Cluster::start(ClusterOptions {
        name: "monitoring",
        controller_manager: false,
        ..ClusterOptions::default()
    });
    c.ensure_namespace(WEBHOOK_NAMESPACE);
    add_node(&c, "node-1", "gpu", true, false);
    let webhook = Webhook::start_with_args(
        &c,
        WebhookOptions::targets("jobsets,pods"),
        &["--tls-handshake-timeout".to_owned(), "1s".to_owned()],
    );
    // Registering makes the API server send a patched review (its dry-run probe).
    webhook.register(&c, None, "default");

    // A denial: an action that does not exist.
    let ns = c.namespace("monitoring", &[]);
    let (ok, stderr) = create(
        &c,
        &ns,
        &training_jobset(
            "denied",
            &[
                ("restart.jobset.dev/in-place", "enabled"),
                ("restart.jobset.dev/action", "Reboot"),
            ],
        ),
    );
    assert!(!ok, "a JobSet with action Reboot must be denied: {stderr}");
    // A request that is not a review: answered 400 without a review.
    assert_eq!(post_mutate(&webhook, "not a review"), 400);
    // A connection that never starts its TLS handshake: closed at --tls-handshake-timeout.
    let mut idle = TcpStream::connect(webhook.addr).expect("connecting to the webhook port");
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("setting a read timeout");
    let mut buf = [0u8; 16];
    let closed = idle.read(&mut buf);
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "the server sent bytes to a client that never said hello: {closed:?}"
    );
    let _ = idle.write_all(b"late");

    let scrape = wait_scrape(&webhook);
    let tmp = tempfile::tempdir().expect("tempdir");
    let scrape_file = tmp.path().join("metrics.txt");
    std::fs::write(&scrape_file, &scrape).expect("writing the scrape");

    // The target labels a ServiceMonitor scrape adds.
    let target: BTreeMap<&str, String> = [
        ("job", JOB.to_owned()),
        ("namespace", WEBHOOK_NAMESPACE.to_owned()),
        ("instance", webhook.admin.to_string()),
    ]
    .into_iter()
    .collect();

    // Every expression, with what it must yield: (name, expr, labels its selectors must carry).
    let mut exprs: Vec<(String, String, Option<String>)> = Vec::new();
    let mut alerts = 0;
    for group in rule_file()["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name");
            let expr = rule["expr"].as_str().expect("expr").to_owned();
            alerts += 1;
            exprs.push((format!("alert {name}"), expr, None));
        }
    }
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join(DASHBOARD)).expect("reading the dashboard"),
    )
    .expect("the dashboard is JSON");
    for v in dash["templating"]["list"].as_array().expect("variables") {
        if v["type"] != "query" {
            continue;
        }
        let query = v["query"]["query"].as_str().expect("variable query");
        let (selector, label) = label_values(query);
        exprs.push((
            format!("variable ${}", v["name"].as_str().unwrap_or_default()),
            substitute(&selector, &target),
            Some(label),
        ));
    }
    let mut panels = 0;
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            panels += 1;
            exprs.push((
                format!(
                    "panel {:?} {}",
                    p["title"].as_str().unwrap_or_default(),
                    t["refId"].as_str().unwrap_or_default()
                ),
                substitute(t["expr"].as_str().expect("expr"), &target),
                None,
            ));
        }
    }
    let input: Vec<Value> = exprs
        .iter()
        .map(|(name, expr, _)| json!({"name": name, "expr": expr}))
        .collect();
    let exprs_file = tmp.path().join("exprs.json");
    std::fs::write(&exprs_file, Value::from(input).to_string()).expect("writing exprs.json");

    let mut args = vec![
        "-scrape".to_owned(),
        scrape_file.display().to_string(),
        "-exprs".to_owned(),
        exprs_file.display().to_string(),
    ];
    for (k, v) in &target {
        args.push("-label".to_owned());
        args.push(format!("{k}={v}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("scrapecheck", &args);
    assert!(out.status.success(), "scrapecheck failed:\n{}", text(&out));
    let results: Vec<Value> =
        serde_json::from_slice(&out.stdout).expect("scrapecheck prints a JSON array");
    assert_eq!(results.len(), exprs.len(), "one answer per expression");

    let mut problems = Vec::new();
    let mut selectors = 0;
    for ((name, expr, label), r) in exprs.iter().zip(&results) {
        for field in ["parse_error", "eval_error"] {
            if let Some(e) = r[field].as_str() {
                problems.push(format!("{name}: {field} {e}\n    {expr}"));
            }
        }
        let sels = r["selectors"].as_array().map_or(&[][..], Vec::as_slice);
        if sels.is_empty() && r["parse_error"].is_null() {
            problems.push(format!("{name}: no metric selector in {expr}"));
        }
        for s in sels {
            selectors += 1;
            let sel = s["selector"].as_str().unwrap_or_default();
            if s["series"].as_u64().unwrap_or(0) == 0 {
                problems.push(format!("{name}: {sel} selects no series of the scrape"));
            }
            if let Some(label) = label
                && !s["labels"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|x| x == label.as_str()))
            {
                problems.push(format!("{name}: the series of {sel} have no label {label}"));
            }
        }
        // The webhook is healthy: no alert fires on its scrape.
        if name.starts_with("alert ") && r["series"].as_u64() != Some(0) {
            problems.push(format!(
                "{name} fires on a healthy webhook ({} series)",
                r["series"]
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the alerts and the dashboard against a real scrape:\n{}\nscrape:\n{scrape}",
        problems.join("\n")
    );
    eprintln!(
        "[e2e] monitoring: {alerts} alerts, {panels} panel expressions and the dashboard variables \
         parse and evaluate; their {selectors} selectors select series of a real scrape"
    );
}
