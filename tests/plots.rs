//! The restart plot (README, "What to expect"; docs/testing.md, "Benchmarks and plots"):
//! `docs/restart-times.csv` holds the rows of docs/BENCHMARKS.md section 4, and
//! `docs/restart-times.svg` is what `testkit::plot::svg` makes of them, with every point where
//! its row's values and the panel's axes put it. The SVG is read here with its own small
//! parser, not with the code that wrote it.
//!
//! After a bench run (or a change of the plot code), regenerate the SVG with
//! `JRW_WRITE_PLOTS=1 cargo test --test plots`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use testkit::plot::{self, Row};

fn path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn csv_rows() -> Vec<Row> {
    plot::parse_csv(&read("docs/restart-times.csv"))
        .unwrap_or_else(|e| panic!("docs/restart-times.csv: {e}"))
}

/// The `name="value"` attributes of one element's start tag.
fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq]
            .rsplit(|c: char| c.is_whitespace())
            .next()
            .unwrap_or("")
            .to_owned();
        let after = &rest[eq + 2..];
        let end = after.find('"').unwrap_or(after.len());
        out.insert(name, after[..end].to_owned());
        rest = after.get(end + 1..).unwrap_or("");
    }
    out
}

/// Every start tag `<name ...>` in `text`, as its attributes.
fn elements(text: &str, name: &str) -> Vec<BTreeMap<String, String>> {
    let open = format!("<{name} ");
    text.match_indices(&open)
        .map(|(i, _)| {
            let tag = &text[i..];
            attributes(&tag[..tag.find('>').unwrap_or(tag.len())])
        })
        .collect()
}

fn pair(attrs: &BTreeMap<String, String>, key: &str) -> (f64, f64) {
    let v = attrs
        .get(key)
        .unwrap_or_else(|| panic!("the panel has no {key}: {attrs:?}"));
    let (a, b) = v
        .split_once(',')
        .unwrap_or_else(|| panic!("{key}={v:?} is not two numbers"));
    (
        a.parse().unwrap_or_else(|_| panic!("{key}={v:?}")),
        b.parse().unwrap_or_else(|_| panic!("{key}={v:?}")),
    )
}

fn number(attrs: &BTreeMap<String, String>, key: &str) -> f64 {
    attrs
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key} in {attrs:?}"))
}

/// One panel of the SVG: its declared axes, points and tick labels.
struct Panel {
    name: String,
    x_px: (f64, f64),
    x_range: (f64, f64),
    y_px: (f64, f64),
    y_range: (f64, f64),
    log: bool,
    points: Vec<BTreeMap<String, String>>,
    ticks: Vec<(String, BTreeMap<String, String>)>,
}

impl Panel {
    fn x(&self, v: f64) -> f64 {
        self.x_px.0
            + (v - self.x_range.0) / (self.x_range.1 - self.x_range.0) * (self.x_px.1 - self.x_px.0)
    }
    fn y(&self, v: f64) -> f64 {
        let (v, lo, hi) = if self.log {
            (v.log10(), self.y_range.0.log10(), self.y_range.1.log10())
        } else {
            (v, self.y_range.0, self.y_range.1)
        };
        self.y_px.0 + (v - lo) / (hi - lo) * (self.y_px.1 - self.y_px.0)
    }
}

fn panels(svg: &str) -> Vec<Panel> {
    svg.split("<g ")
        .skip(1)
        .map(|chunk| {
            let body = &chunk[..chunk.find("</g>").expect("a <g> without </g>")];
            let g = attributes(&body[..body.find('>').unwrap_or(0)]);
            let ticks = ["tick-x", "tick-y"]
                .iter()
                .flat_map(|class| {
                    elements(body, "text")
                        .into_iter()
                        .filter(|t| t.get("class").map(String::as_str) == Some(*class))
                        .map(|t| ((*class).to_owned(), t))
                        .collect::<Vec<_>>()
                })
                .collect();
            Panel {
                name: g.get("data-panel").cloned().unwrap_or_default(),
                x_px: pair(&g, "data-x-px"),
                x_range: pair(&g, "data-x-range"),
                y_px: pair(&g, "data-y-px"),
                y_range: pair(&g, "data-y-range"),
                log: g.get("data-y-scale").map(String::as_str) == Some("log"),
                points: elements(body, "circle"),
                ticks,
            }
        })
        .collect()
}

/// Coordinates are written with two decimals.
const PX: f64 = 0.011;

#[test]
fn the_svg_is_what_the_plot_code_makes_of_the_csv() {
    let want = plot::svg(&csv_rows());
    let rel = "docs/restart-times.svg";
    if std::env::var_os("JRW_WRITE_PLOTS").is_some() {
        std::fs::write(path(rel), &want).unwrap_or_else(|e| panic!("writing {rel}: {e}"));
    }
    let have = read(rel);
    assert!(
        have == want,
        "{rel} is not what testkit::plot::svg makes of docs/restart-times.csv; regenerate it \
         with `JRW_WRITE_PLOTS=1 cargo test --test plots`"
    );
}

#[test]
fn every_point_of_the_svg_is_a_row_of_the_csv_where_its_values_put_it() {
    let rows = csv_rows();
    let svg = read("docs/restart-times.svg");
    let panels = panels(&svg);
    assert_eq!(
        panels.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["workers", "failures"],
        "the panels of docs/restart-times.svg"
    );
    let mut plotted = vec![0; rows.len()];
    for p in &panels {
        // Tick labels sit where the axes put their values, so a reader compares points to them.
        assert!(p.ticks.len() >= 4, "panel {}: too few ticks", p.name);
        for (class, t) in &p.ticks {
            let v = number(t, "data-value");
            if class == "tick-x" {
                let x = number(t, "x");
                assert!(
                    (x - p.x(v)).abs() < PX,
                    "panel {}: x tick {v} at {x}",
                    p.name
                );
            } else {
                // The label's baseline is 4 px below the tick line.
                let y = number(t, "y") - 4.0;
                assert!(
                    (y - p.y(v)).abs() < PX,
                    "panel {}: y tick {v} at {y}",
                    p.name
                );
            }
        }
        let mut expected: Vec<usize> = (0..rows.len())
            .filter(|i| plot::in_panel(&p.name, &rows[*i], &rows))
            .collect();
        for c in &p.points {
            let key = (
                c["data-kubelet"].as_str(),
                c["data-mode"].as_str(),
                number(c, "data-workers") as u32,
                number(c, "data-failure") as u32,
            );
            let i = expected
                .iter()
                .position(|i| {
                    let r = &rows[*i];
                    (r.kubelet.as_str(), r.mode.as_str(), r.workers, r.failure) == key
                })
                .unwrap_or_else(|| {
                    panic!(
                        "panel {}: point {key:?} is no row of the CSV (or twice)",
                        p.name
                    )
                });
            let row = &rows[expected.remove(i)];
            plotted[rows.iter().position(|r| r == row).unwrap_or(0)] += 1;
            let seconds = number(c, "data-seconds");
            assert!(
                (seconds - row.seconds).abs() < 1e-9,
                "panel {}: {key:?} says {seconds} s, the CSV {} s",
                p.name,
                row.seconds
            );
            let x_value = if p.name == "workers" {
                row.workers
            } else {
                row.failure
            };
            let (cx, cy) = (number(c, "cx"), number(c, "cy"));
            assert!(
                (cx - p.x(f64::from(x_value))).abs() < PX,
                "panel {}: {key:?} at x {cx}, its value {x_value} belongs at {}",
                p.name,
                p.x(f64::from(x_value))
            );
            assert!(
                (cy - p.y(row.seconds)).abs() < PX,
                "panel {}: {key:?} at y {cy}, {} s belongs at {}",
                p.name,
                row.seconds,
                p.y(row.seconds)
            );
            assert!(
                p.y_px.1.min(p.y_px.0) - PX <= cy && cy <= p.y_px.1.max(p.y_px.0) + PX,
                "panel {}: {key:?} at y {cy} is outside the plot",
                p.name
            );
        }
        assert!(
            expected.is_empty(),
            "panel {}: rows of the CSV without a point: {:?}",
            p.name,
            expected.iter().map(|i| &rows[*i]).collect::<Vec<_>>()
        );
    }
    for (row, n) in rows.iter().zip(plotted) {
        assert!(n > 0, "row {row:?} is in neither panel");
    }
}

#[test]
fn the_csv_holds_the_rows_published_in_benchmarks_md() {
    let doc = read("docs/BENCHMARKS.md");
    let start = doc
        .find("## 4. Restart times on a real node")
        .expect("docs/BENCHMARKS.md section 4");
    let section = &doc[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut table = Vec::new();
    for line in section.lines() {
        let c: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let kubelet = match c.first() {
            Some(&"default back-off") => "default",
            Some(&"maxContainerRestartPeriod 1s") => "maxContainerRestartPeriod=1s",
            _ => continue,
        };
        let mode = match c.get(1) {
            Some(&"recreate (no webhook)") => "recreate",
            Some(&"in place, Restart") => "Restart",
            Some(&"in place, RestartAllContainers") => "RestartAllContainers",
            other => panic!("docs/BENCHMARKS.md section 4: unknown mode {other:?} in {line}"),
        };
        let (post, delete) = c[5].split_once('/').expect("POST / DELETE");
        table.push(format!(
            "{kubelet},{mode},{},{},{},{},{},{},{}",
            c[2],
            c[3],
            c[4],
            post.trim(),
            delete.trim(),
            c[6],
            c[7]
        ));
    }
    let csv: Vec<String> = plot::to_csv("", &csv_rows())
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect();
    let parsed: Vec<String> = table
        .iter()
        .map(|l| {
            plot::to_csv(
                "",
                &plot::parse_csv(&format!("{}\n{l}\n", plot::COLUMNS)).expect(l),
            )
            .lines()
            .nth(1)
            .unwrap_or("")
            .to_owned()
        })
        .collect();
    assert_eq!(
        csv, parsed,
        "docs/restart-times.csv and the table of docs/BENCHMARKS.md section 4 differ"
    );
}

#[test]
fn the_csv_reader_names_what_is_wrong() {
    let h = plot::COLUMNS;
    for (text, says) in [
        ("a,b\n", "line 1: the header"),
        (
            &*format!("{h}\ndefault,recreate,4,1,5.4,4,13,46\n"),
            "line 2: 8 fields",
        ),
        (
            &*format!("{h}\ndefault,Recreate,4,1,5.4,4,13,46,1\n"),
            "mode \"Recreate\"",
        ),
        (
            &*format!("{h}\ndefault,recreate,four,1,5.4,4,13,46,1\n"),
            "workers \"four\"",
        ),
        (
            &*format!("{h}\ndefault,recreate,4,1,-1,4,13,46,1\n"),
            "seconds \"-1\"",
        ),
        (
            &*format!("# c\n{h}\ndefault,recreate,4,0,1,4,13,46,1\n"),
            "line 3: workers and failure",
        ),
        ("# only a comment\n", "no header"),
    ] {
        let err = plot::parse_csv(text).expect_err(text);
        assert!(err.contains(says), "{text:?}: {err}");
    }
    let row = Row {
        kubelet: "default".into(),
        mode: "Restart".into(),
        workers: 4,
        failure: 2,
        seconds: 11.7,
        pods_created: 0.0,
        pods_deleted: 0.0,
        pod_writes: 3.0,
        all_writes: 19.0,
    };
    let text = plot::to_csv("a comment\nover two lines", std::slice::from_ref(&row));
    assert!(text.starts_with("# a comment\n# over two lines\n"));
    assert_eq!(plot::parse_csv(&text), Ok(vec![row]));
}
