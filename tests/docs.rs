//! The docs against the code, both ways (docs/testing.md, "What the tests cover"):
//!
//! - every metric in the tables of docs/operations.md ("Metrics") is exported, with the type
//!   and labels the table gives, and every exported family is in a table: the "Always
//!   exported" table against a live `/metrics` of `serve --no-cluster`, the "With a cluster
//!   connection" table against the collector `serve` registers when it has a cluster
//!   (`ClusterMetrics`), rendered over a cache and probe state in which every family shows;
//! - every `jobset_restart_webhook_*` name anywhere in the README or docs/ is a documented
//!   metric (alerts and prose cannot name a metric that does not exist);
//! - the flag table of docs/configuration.md ("serve flags") lists exactly the flags of
//!   `serve --help`, each with its environment variable and default.
//!
//! Each failure names the missing or differing item.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use jobset_restart_webhook::cluster::probe::{Capabilities, Finding};
use jobset_restart_webhook::cluster::{Cluster, ClusterMetrics};
use jobset_restart_webhook::engine::NodeInfo;
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use serde_json::Value;
use testkit::admission_reviews::{IN_PLACE, jobset, review};
use testkit::hardening::bounded;
use testkit::webhook_process::{BIN, Webhook, eventually, write_certs};

const PREFIX: &str = "jobset_restart_webhook_";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// The lines of `doc` under the heading `heading` (any level), up to the next heading of the
/// same or a higher level.
fn section<'a>(doc: &'a str, rel: &str, heading: &str) -> Vec<&'a str> {
    let mut lines = doc.lines();
    let level = loop {
        let Some(line) = lines.next() else {
            panic!("{rel} has no heading {heading:?}");
        };
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if hashes > 0 && line[hashes..].trim() == heading {
            break hashes;
        }
    };
    lines
        .take_while(|l| {
            let hashes = l.chars().take_while(|c| *c == '#').count();
            hashes == 0 || hashes > level || !l[hashes..].starts_with(' ')
        })
        .collect()
}

/// The cells of a Markdown table row (`| a | b |`), trimmed; `\|` stays inside a cell.
fn cells(row: &str) -> Vec<String> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    let mut out = Vec::new();
    let mut cell = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cell.push('|');
                chars.next();
            }
            '|' => out.push(std::mem::take(&mut cell).trim().to_owned()),
            _ => cell.push(c),
        }
    }
    out.push(cell.trim().to_owned());
    out
}

/// The `code spans` of a cell.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_owned())
        .collect()
}

// ---- metrics ---------------------------------------------------------------------------------

/// A metric as documented or as exported: its type and label names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Metric {
    kind: String,
    labels: BTreeSet<String>,
}

/// The metric table under `heading` in docs/operations.md: sample name → type and labels.
fn documented(heading: &str) -> BTreeMap<String, Metric> {
    let rel = "docs/operations.md";
    let doc = read(rel);
    let mut out = BTreeMap::new();
    for row in section(&doc, rel, heading)
        .into_iter()
        .filter(|l| l.starts_with(&format!("| `{PREFIX}")))
    {
        let c = cells(row);
        assert!(
            c.len() >= 4,
            "{rel}, {heading}: a metric row needs name | type | labels | meaning: {row}"
        );
        let name = code_spans(&c[0]).into_iter().next().unwrap_or_default();
        let labels = code_spans(&c[2]).into_iter().collect();
        let previous = out.insert(
            name.clone(),
            Metric {
                kind: c[1].clone(),
                labels,
            },
        );
        assert!(
            previous.is_none(),
            "{rel}, {heading}: {name} is listed twice"
        );
    }
    assert!(!out.is_empty(), "{rel}, {heading}: no metric rows found");
    out
}

/// Label names of one sample line's `{...}`.
fn label_names(labels: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = labels;
    while let Some((name, after)) = rest.split_once("=\"") {
        names.insert(name.trim_start_matches(',').trim().to_owned());
        // The value ends at the first `"` not escaped by a backslash.
        let mut escaped = false;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = i;
                    break;
                }
                _ => escaped = false,
            }
        }
        rest = after.get(end + 1..).unwrap_or("");
    }
    names
}

/// The families of an OpenMetrics text, by the name a query uses (counters `_total`, info
/// `_info`), with their type and the label names their samples carry (`le` aside).
fn exported(text: &str) -> BTreeMap<String, Metric> {
    let mut families: BTreeMap<String, Metric> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("a TYPE line without a type: {line}"));
            let name = match kind {
                "counter" => format!("{family}_total"),
                "info" => format!("{family}_info"),
                _ => family.to_owned(),
            };
            families.insert(
                name,
                Metric {
                    kind: kind.to_owned(),
                    labels: BTreeSet::new(),
                },
            );
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, labels) = match line.split_once('{') {
            Some((name, rest)) => (name, rest.rsplit_once('}').map_or("", |(l, _)| l)),
            None => (line.split(' ').next().unwrap_or(line), ""),
        };
        let family = families.keys().find(|f| {
            name == f.as_str()
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(f.as_str()))
        });
        let family = family
            .unwrap_or_else(|| panic!("sample {name} belongs to no TYPE line:\n{text}"))
            .clone();
        let mut names = label_names(labels);
        names.remove("le");
        if let Some(m) = families.get_mut(&family) {
            m.labels.extend(names);
        }
    }
    families
}

/// Both ways: documented and exported families agree on names, types and (where the export
/// has samples with labels) label names.
fn compare(
    what: &str,
    heading: &str,
    docs: &BTreeMap<String, Metric>,
    live: &BTreeMap<String, Metric>,
) {
    let mut problems = Vec::new();
    for (name, d) in docs {
        match live.get(name) {
            None => problems.push(format!(
                "{name}: in docs/operations.md ({heading}) but not exported by {what}"
            )),
            Some(l) => {
                if l.kind != d.kind {
                    problems.push(format!(
                        "{name}: documented as {}, exported as {}",
                        d.kind, l.kind
                    ));
                }
                if !l.labels.is_empty() && l.labels != d.labels {
                    problems.push(format!(
                        "{name}: documented labels {:?}, exported labels {:?}",
                        d.labels, l.labels
                    ));
                }
                if l.labels.is_empty() && !d.labels.is_empty() {
                    problems.push(format!(
                        "{name}: documented labels {:?}, exported without labels",
                        d.labels
                    ));
                }
            }
        }
    }
    for name in live.keys().filter(|n| !docs.contains_key(*n)) {
        problems.push(format!(
            "{name}: exported by {what} but not documented in docs/operations.md ({heading})"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_serve_is_documented_and_every_documented_one_is_served() {
    bounded(60, async {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("certs");
        write_certs(&dir);
        let ca = std::fs::read(dir.join("ca.crt")).expect("ca.crt");
        let cert = dir.join("tls.crt").display().to_string();
        let key = dir.join("tls.key").display().to_string();
        // A labelled family is exported from its first series on (docs/operations.md,
        // "Metrics"), so the test makes one of each: a patched review, a denied one, a refused
        // request, and a connection that never starts its TLS handshake (a timeout).
        let w = Webhook::start(&[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            // Long enough for the client's own handshake on a loaded machine.
            "--tls-handshake-timeout",
            "2s",
        ]);
        let c = w.client(&[&ca]);
        let post = |body: Vec<u8>, content_type: &'static str| {
            c.post(w.url("/mutate"))
                .header("content-type", content_type)
                .body(body)
                .send()
        };
        for (uid, annotations) in [
            ("uid-patched", vec![(IN_PLACE, "enabled")]),
            (
                "uid-denied",
                vec![
                    (IN_PLACE, "enabled"),
                    ("restart.jobset.dev/on-exit-codes", "abc"),
                ],
            ),
        ] {
            let body = serde_json::to_vec(&review(uid, "CREATE", &jobset(&annotations)))
                .expect("review JSON");
            let r = post(body, "application/json").await.expect("POST /mutate");
            assert_eq!(r.status(), 200, "{uid}");
            let answer: Value = r.json().await.expect("JSON answer");
            assert_eq!(answer["response"]["uid"], uid);
        }
        let r = post(b"{}".to_vec(), "text/plain")
            .await
            .expect("POST /mutate");
        assert_eq!(r.status(), 415);
        let silent = tokio::net::TcpStream::connect(w.tls)
            .await
            .expect("TCP connection to the webhook port");
        let timeout = "jobset_restart_webhook_connection_timeouts_total{phase=\"handshake\"}";
        eventually(Duration::from_secs(15), "a handshake timeout", || async {
            (w.metric(timeout).await >= 1.0).then_some(())
        })
        .await;
        drop(silent);

        let text = w.metrics().await;
        let live = exported(&text);
        for (name, m) in [
            ("jobset_restart_webhook_requests_total", "kind"),
            ("jobset_restart_webhook_denials_total", "kind"),
            ("jobset_restart_webhook_bad_requests_total", "code"),
            ("jobset_restart_webhook_connection_timeouts_total", "phase"),
        ] {
            assert!(
                live.get(name).is_some_and(|l| l.labels.contains(m)),
                "{name} has no sample with label {m} after the requests above:\n{text}"
            );
        }
        compare(
            "`serve --no-cluster`'s /metrics",
            "Always exported",
            &documented("Always exported"),
            &live,
        );
    })
    .await;
}

/// A cluster state in which the collector shows every family: a probe round finished and
/// the node watch listed nodes.
fn populated_cluster() -> Arc<Cluster> {
    let c = Arc::new(Cluster::new());
    let known = |v: bool| Finding {
        value: Some(v),
        detail: String::new(),
    };
    c.record_probe(Capabilities {
        server_version: Some("v1.36.2".into()),
        restart_policy_rules: known(true),
        restart_all_containers: known(true),
        jobset_crd_installed: known(true),
        jobset_crd_keeps_rules: known(true),
    });
    c.nodes().apply(watcher::Event::<()>::Init, |()| None);
    for (name, declares) in [("a", true), ("b", false)] {
        c.nodes().apply(watcher::Event::InitApply(()), |()| {
            Some((
                String::new(),
                name.to_owned(),
                Arc::new(NodeInfo {
                    declares,
                    ..NodeInfo::default()
                }),
            ))
        });
    }
    c.nodes().apply(watcher::Event::<()>::InitDone, |()| None);
    c.summarise_nodes();
    c
}

#[test]
fn every_cluster_metric_is_documented_and_every_documented_one_is_exported() {
    let mut registry = Registry::with_prefix(PREFIX.trim_end_matches('_'));
    registry.register_collector(Box::new(ClusterMetrics(populated_cluster())));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encoding");
    compare(
        "the cluster collector (`ClusterMetrics`)",
        "With a cluster connection",
        &documented("With a cluster connection"),
        &exported(&text),
    );
}

/// Every `jobset_restart_webhook_…` word in the README and docs/*.md.
fn metric_names_in(rel: &str, text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(PREFIX) {
        let after = &rest[i..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        // The bare prefix ("every name starts with `jobset_restart_webhook_`") names no metric.
        if end > PREFIX.len() {
            out.push((rel.to_owned(), after[..end].to_owned()));
        }
        rest = &after[end..];
    }
    out
}

#[test]
fn every_metric_the_docs_name_is_a_documented_metric() {
    let mut known: BTreeMap<String, Metric> = documented("Always exported");
    known.extend(documented("With a cluster connection"));
    let mut files = vec!["README.md".to_owned()];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    files.extend(
        pages
            .iter()
            .map(|p| p.strip_prefix(repo()).unwrap_or(p).display().to_string()),
    );
    let mut unknown = Vec::new();
    for rel in &files {
        for (file, name) in metric_names_in(rel, &read(rel)) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| known.get(*b).is_some_and(|m| m.kind == "histogram"))
                .unwrap_or(name.as_str());
            if !known.contains_key(base) {
                unknown.push(format!(
                    "{file}: {name} is not a metric of docs/operations.md"
                ));
            }
        }
    }
    unknown.dedup();
    assert!(unknown.is_empty(), "{}", unknown.join("\n"));
}

// ---- flags -----------------------------------------------------------------------------------

/// A flag as documented or as `--help` prints it: its environment variable and default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Flag {
    env: Option<String>,
    default: Option<String>,
}

/// `serve --help`: every long flag with its `[env: …]` and `[default: …]`.
fn help_flags() -> BTreeMap<String, Flag> {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .expect("running serve --help");
    assert!(out.status.success(), "serve --help failed");
    let help = String::from_utf8(out.stdout).expect("UTF-8 help");
    let mut flags: BTreeMap<String, Flag> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        // Option lines are indented by at most 6 spaces (`  -n, --name`, `      --name`); a
        // wrapped description that starts with a flag's name is indented further.
        let option_line = line.len() - t.len() <= 6;
        let t = match t.split_once(", ") {
            Some((short, long)) if short.len() == 2 && short.starts_with('-') => long,
            _ => t,
        };
        if let Some(rest) = t.strip_prefix("--").filter(|_| option_line) {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let name = format!("--{name}");
            flags.entry(name.clone()).or_default();
            current = Some(name);
        }
        let Some(name) = &current else { continue };
        let flag = flags.entry(name.clone()).or_default();
        if let Some(v) = bracketed(line, "[env: ") {
            flag.env = Some(v.split('=').next().unwrap_or(&v).to_owned());
        }
        if let Some(v) = bracketed(line, "[default: ") {
            flag.default = Some(v);
        }
    }
    flags.remove("--help");
    flags.remove("--version");
    assert!(!flags.is_empty(), "no flags found in serve --help:\n{help}");
    flags
}

fn bracketed(line: &str, open: &str) -> Option<String> {
    let start = line.find(open)? + open.len();
    let end = line[start..].find(']')?;
    Some(line[start..start + end].to_owned())
}

/// The table under "serve flags" in docs/configuration.md.
fn documented_flags() -> BTreeMap<String, (Flag, String)> {
    let rel = "docs/configuration.md";
    let doc = read(rel);
    let mut out = BTreeMap::new();
    for row in section(&doc, rel, "serve flags")
        .into_iter()
        .filter(|l| l.starts_with("| `--"))
    {
        let c = cells(row);
        assert!(
            c.len() >= 4,
            "{rel}, serve flags: a row needs flag | environment | default | what it does: {row}"
        );
        let name = code_spans(&c[0]).into_iter().next().unwrap_or_default();
        let env = code_spans(&c[1]).into_iter().next();
        let spans = code_spans(&c[2]);
        // A default given as one code span is compared; prose ("the config's, else …") not.
        let default =
            (spans.len() == 1 && c[2] == format!("`{}`", spans[0])).then(|| spans[0].clone());
        let previous = out.insert(name.clone(), (Flag { env, default }, c[2].clone()));
        assert!(previous.is_none(), "{rel}: {name} is listed twice");
    }
    assert!(!out.is_empty(), "{rel}: no rows under \"serve flags\"");
    out
}

#[test]
fn the_flag_table_lists_exactly_the_flags_of_serve_help() {
    let help = help_flags();
    let docs = documented_flags();
    let mut problems = Vec::new();
    for (name, (d, column)) in &docs {
        let Some(h) = help.get(name) else {
            problems.push(format!(
                "{name}: in docs/configuration.md (serve flags) but not in `serve --help`"
            ));
            continue;
        };
        if d.env != h.env {
            problems.push(format!(
                "{name}: environment variable documented as {:?}, `serve --help` says {:?}",
                d.env, h.env
            ));
        }
        if let Some(default) = &h.default
            && d.default.as_ref() != Some(default)
        {
            problems.push(format!(
                "{name}: default documented as {column:?}, `serve --help` says `{default}`"
            ));
        }
    }
    for name in help.keys().filter(|n| !docs.contains_key(*n)) {
        problems.push(format!(
            "{name}: in `serve --help` but not documented in docs/configuration.md (serve flags)"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The parsers above, on inputs whose answer is known, so that a parser that finds nothing
/// cannot make the comparisons pass.
#[test]
fn the_parsers_find_what_is_there() {
    let text = "# HELP x_requests Requests.\n# TYPE x_requests counter\n\
                x_requests_total{kind=\"JobSet\",code=\"200\"} 1\n\
                # TYPE x_duration histogram\nx_duration_bucket{le=\"0.1\"} 1\nx_duration_sum 0.1\n\
                x_duration_count 1\n# TYPE x_build info\nx_build_info{version=\"0\"} 1\n# EOF\n";
    let m = exported(text);
    assert_eq!(
        m.keys().map(String::as_str).collect::<Vec<_>>(),
        ["x_build_info", "x_duration", "x_requests_total"]
    );
    assert_eq!(
        m["x_requests_total"].labels,
        BTreeSet::from(["code", "kind"].map(String::from))
    );
    assert!(m["x_duration"].labels.is_empty());
    assert_eq!(cells("| `a` | b \\| c | d |"), ["`a`", "b | c", "d"]);
    assert_eq!(
        label_names("a=\"x\\\"y,z\",b=\"\""),
        BTreeSet::from(["a", "b"].map(String::from))
    );
    let doc = "# T\n## A\nx\n### A1\ny\n## B\nz\n";
    assert_eq!(section(doc, "t", "A"), ["x", "### A1", "y"]);
    assert!(help_flags().contains_key("--listen"));
    assert!(repo().join("docs/operations.md").is_file());
}

// ---- the README's shape ----------------------------------------------------------------------

/// The README is for someone deciding to install (docs/testing.md): the two set-up commands
/// stay on its first screen, and it stays short; the rest lives in docs/.
#[test]
fn the_readme_keeps_the_set_up_commands_on_its_first_screen_and_stays_short() {
    let readme = read("README.md");
    let first_screen: Vec<&str> = readme.lines().take(30).collect();
    for command in ["cargo run --release -- serve", "tests/run-all.sh"] {
        assert!(
            first_screen.iter().any(|l| l.starts_with(command)),
            "README.md: `{command}` is not on the first screen (the first 30 lines)"
        );
    }
    let lines = readme.lines().count();
    assert!(
        lines <= 220,
        "README.md has {lines} lines; it is the page to decide from (about 200 at most): move \
         details into docs/ and link them"
    );
}
