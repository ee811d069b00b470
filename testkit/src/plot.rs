//! The restart bench's rows (benches/restart.rs) as CSV, and the plot of them as an SVG
//! written by hand (no plotting crate, no fonts: the viewer's `sans-serif`). The bench
//! writes both after a run; `tests/plots.rs` checks that the committed
//! `docs/restart-times.svg` is what [`svg`] makes of `docs/restart-times.csv` and that its
//! points sit where the CSV's values and the axes say.
//!
//! Two panels:
//! - **workers**: seconds until every worker runs again after the *first* failure, against
//!   the number of workers N (every row with `failure == 1`);
//! - **failures**: seconds against failures in a row of the same worker, for the smallest N
//!   (every row with that N), on a logarithmic axis, since `Restart` meets the kubelet's
//!   CrashLoopBackOff and grows from about a second to over a minute.
//!
//! Each point is a `<circle>` carrying its row in `data-*` attributes; each panel's `<g>`
//! declares its axes (`data-x-px`, `data-x-range`, `data-y-px`, `data-y-range`,
//! `data-y-scale`), and each tick label its value (`data-value`), so a reader of the file
//! can check positions against values without this code.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The CSV's column names, in order.
pub const COLUMNS: &str =
    "kubelet,mode,workers,failure,seconds,pods_created,pods_deleted,pod_writes,all_writes";

/// What the columns mean, for the CSV's comment.
pub const COLUMN_NOTES: &str = "\
kubelet: default (CrashLoopBackOff as shipped) or the crashLoopBackOff setting that differs;
mode: recreate (no webhook: JobSet recreates every pod), Restart or RestartAllContainers (in place);
seconds: from the failure until every worker runs again; the rest: API writes during the recovery.";

/// The `kubelet` value of the node with the kubelet's default CrashLoopBackOff.
pub const DEFAULT_KUBELET: &str = "default";

/// One failure's measurement: one row of the bench's table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// `default`, or the kubelet setting that differs (`maxContainerRestartPeriod=1s`).
    pub kubelet: String,
    /// `recreate` (no rules: JobSet recreates every pod), `Restart` or `RestartAllContainers`.
    pub mode: String,
    pub workers: u32,
    /// 1 for the first failure of worker 0, 2 for the second in a row, ...
    pub failure: u32,
    /// Seconds from the failure until every worker runs again.
    pub seconds: f64,
    pub pods_created: f64,
    pub pods_deleted: f64,
    pub pod_writes: f64,
    pub all_writes: f64,
}

/// The modes, in legend order, with their colour.
const MODES: [(&str, &str, &str); 3] = [
    ("recreate", "recreate (no webhook)", "#d62728"),
    ("Restart", "in place, Restart", "#1f77b4"),
    (
        "RestartAllContainers",
        "in place, RestartAllContainers",
        "#2ca02c",
    ),
];

/// `comment` (each line prefixed with `# `), the column names, then one line per row.
pub fn to_csv(comment: &str, rows: &[Row]) -> String {
    let mut out = String::new();
    for line in comment.lines() {
        let _ = writeln!(out, "# {line}");
    }
    let _ = writeln!(out, "{COLUMNS}");
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{}",
            r.kubelet,
            r.mode,
            r.workers,
            r.failure,
            r.seconds,
            r.pods_created,
            r.pods_deleted,
            r.pod_writes,
            r.all_writes
        );
    }
    out
}

/// Reads what [`to_csv`] writes: `#` lines are comments, the first other line must be
/// [`COLUMNS`]. Errors name the line and the field.
pub fn parse_csv(text: &str) -> Result<Vec<Row>, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty());
    match lines.next() {
        Some((_, header)) if header.trim() == COLUMNS => {}
        Some((i, header)) => {
            return Err(format!(
                "line {}: the header is {header:?}, expected {COLUMNS:?}",
                i + 1
            ));
        }
        None => return Err(format!("no header line {COLUMNS:?}")),
    }
    let mut rows = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != 9 {
            return Err(format!(
                "line {n}: {} fields, expected 9 ({COLUMNS})",
                f.len()
            ));
        }
        let int = |k: usize, name: &str| {
            f[k].parse::<u32>()
                .map_err(|_| format!("line {n}: {name} {:?} is not a whole number", f[k]))
        };
        let num = |k: usize, name: &str| {
            f[k].parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("line {n}: {name} {:?} is not a number >= 0", f[k]))
        };
        if !MODES.iter().any(|(m, _, _)| *m == f[1]) {
            return Err(format!(
                "line {n}: mode {:?} is not one of recreate, Restart, RestartAllContainers",
                f[1]
            ));
        }
        if f[0].is_empty() {
            return Err(format!("line {n}: kubelet is empty"));
        }
        let row = Row {
            kubelet: f[0].to_owned(),
            mode: f[1].to_owned(),
            workers: int(2, "workers")?,
            failure: int(3, "failure")?,
            seconds: num(4, "seconds")?,
            pods_created: num(5, "pods_created")?,
            pods_deleted: num(6, "pods_deleted")?,
            pod_writes: num(7, "pod_writes")?,
            all_writes: num(8, "all_writes")?,
        };
        if row.workers == 0 || row.failure == 0 {
            return Err(format!("line {n}: workers and failure start at 1"));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Which rows a panel plots: the workers panel those of the first failure, the failures
/// panel those of the smallest N.
pub fn in_panel(panel: &str, row: &Row, rows: &[Row]) -> bool {
    match panel {
        "workers" => row.failure == 1,
        "failures" => Some(row.workers) == rows.iter().map(|r| r.workers).min(),
        _ => false,
    }
}

/// A panel's axes: pixels and the value range they show.
struct Axes {
    x_px: (f64, f64),
    x_range: (f64, f64),
    y_px: (f64, f64),
    y_range: (f64, f64),
    log: bool,
}

impl Axes {
    fn x(&self, v: f64) -> f64 {
        let t = (v - self.x_range.0) / (self.x_range.1 - self.x_range.0);
        self.x_px.0 + t * (self.x_px.1 - self.x_px.0)
    }
    fn y(&self, v: f64) -> f64 {
        let t = if self.log {
            (v.log10() - self.y_range.0.log10()) / (self.y_range.1.log10() - self.y_range.0.log10())
        } else {
            (v - self.y_range.0) / (self.y_range.1 - self.y_range.0)
        };
        self.y_px.0 + t * (self.y_px.1 - self.y_px.0)
    }
}

/// A number as the SVG writes coordinates and values: at most 2 decimals, no trailing zeros.
fn num(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// Linear ticks from 0: a step of 1, 2 or 5 × 10^k giving at most 8 intervals up to `max`.
fn linear_ticks(max: f64) -> Vec<f64> {
    let max = max.max(1.0);
    let mut step = 10f64.powf(max.log10().floor() - 1.0);
    'find: loop {
        for m in [1.0, 2.0, 5.0] {
            if (max / (step * m)).ceil() <= 8.0 {
                step *= m;
                break 'find;
            }
        }
        step *= 10.0;
    }
    let top = (max / step).ceil() as u32;
    (0..=top).map(|i| f64::from(i) * step).collect()
}

/// Logarithmic ticks 1, 2, 5 × 10^k covering `[min, max]`.
fn log_ticks(min: f64, max: f64) -> Vec<f64> {
    let mut lo = 10f64.powf(min.max(1e-3).log10().floor());
    for m in [5.0, 2.0] {
        if lo * m <= min {
            lo *= m;
            break;
        }
    }
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    loop {
        for m in [1.0, 2.0, 5.0] {
            let t = decade * m;
            if t >= lo * 0.999 && ticks.last().is_none_or(|last| *last < max) {
                ticks.push(t);
            }
        }
        if ticks.last().is_some_and(|t| *t >= max) {
            return ticks;
        }
        decade *= 10.0;
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 440.0;

/// The plot of `rows` (see the module comment).
pub fn svg(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">",
        w = WIDTH,
        h = HEIGHT
    );
    let _ = writeln!(
        out,
        "<title>Restart time on one real node: in place against recreate</title>\n<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>"
    );
    let small_n = rows.iter().map(|r| r.workers).min().unwrap_or(0);
    panel(
        &mut out,
        rows,
        "workers",
        "After the first failure, against workers N",
        "workers N (one pod each, one node)",
        70.0,
    );
    panel(
        &mut out,
        rows,
        "failures",
        &format!("N = {small_n}, against failures in a row (log scale)"),
        "failures in a row of the same worker",
        560.0,
    );
    legend(&mut out, rows);
    out.push_str("</svg>\n");
    out
}

/// The series of the rows, in legend order: (kubelet, mode) with the default kubelet first.
fn series(rows: &[Row]) -> Vec<(String, String)> {
    let mut kubelets: Vec<&str> = Vec::new();
    for r in rows {
        if !kubelets.contains(&r.kubelet.as_str()) {
            kubelets.push(&r.kubelet);
        }
    }
    kubelets.sort_by_key(|k| (*k != DEFAULT_KUBELET, *k));
    let mut out = Vec::new();
    for k in kubelets {
        for (mode, _, _) in MODES {
            if rows.iter().any(|r| r.kubelet == k && r.mode == mode) {
                out.push((k.to_owned(), mode.to_owned()));
            }
        }
    }
    out
}

fn style(kubelet: &str, mode: &str) -> (&'static str, &'static str, &'static str) {
    let colour = MODES
        .iter()
        .find(|(m, _, _)| *m == mode)
        .map_or("#000000", |(_, _, c)| *c);
    if kubelet == DEFAULT_KUBELET {
        (colour, "", colour)
    } else {
        (colour, " stroke-dasharray=\"6,4\"", "#ffffff")
    }
}

fn label(kubelet: &str, mode: &str) -> String {
    let m = MODES
        .iter()
        .find(|(m, _, _)| *m == mode)
        .map_or(mode, |(_, l, _)| *l);
    match kubelet.strip_prefix("maxContainerRestartPeriod=") {
        _ if kubelet == DEFAULT_KUBELET => m.to_owned(),
        Some(max) => format!("{m} (back-off max {max})"),
        None => format!("{m} (kubelet {kubelet})"),
    }
}

fn panel(out: &mut String, rows: &[Row], name: &str, title: &str, x_title: &str, left: f64) {
    let points: Vec<&Row> = rows.iter().filter(|r| in_panel(name, r, rows)).collect();
    let (top, bottom, width) = (50.0, 340.0, 350.0);
    let x_of = |r: &Row| {
        if name == "workers" {
            f64::from(r.workers)
        } else {
            f64::from(r.failure)
        }
    };
    let max_x = points.iter().map(|r| x_of(r)).fold(1.0, f64::max);
    let max_y = points.iter().map(|r| r.seconds).fold(0.0, f64::max);
    let min_y = points
        .iter()
        .map(|r| r.seconds)
        .fold(f64::INFINITY, f64::min);
    let (x_range, x_ticks): ((f64, f64), Vec<f64>) = if name == "workers" {
        let mut ns: Vec<f64> = points.iter().map(|r| x_of(r)).collect();
        ns.sort_by(f64::total_cmp);
        ns.dedup();
        ((0.0, max_x * 1.1), ns)
    } else {
        (
            (0.5, max_x + 0.5),
            (1..=max_x as u32).map(f64::from).collect(),
        )
    };
    let (y_range, y_ticks, log) = if name == "workers" {
        let ticks = linear_ticks(max_y);
        ((0.0, *ticks.last().unwrap_or(&1.0)), ticks, false)
    } else {
        let ticks = log_ticks(if min_y.is_finite() { min_y } else { 1.0 }, max_y.max(1.0));
        ((ticks[0], *ticks.last().unwrap_or(&10.0)), ticks, true)
    };
    let a = Axes {
        x_px: (left, left + width),
        x_range,
        y_px: (bottom, top),
        y_range,
        log,
    };
    let _ = writeln!(
        out,
        "<g data-panel=\"{name}\" data-x-px=\"{},{}\" data-x-range=\"{},{}\" data-y-px=\"{},{}\" data-y-range=\"{},{}\" data-y-scale=\"{}\">",
        num(a.x_px.0),
        num(a.x_px.1),
        num(a.x_range.0),
        num(a.x_range.1),
        num(a.y_px.0),
        num(a.y_px.1),
        num(a.y_range.0),
        num(a.y_range.1),
        if log { "log" } else { "linear" }
    );
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" font-size=\"14\" font-weight=\"bold\">{}</text>",
        num(left),
        num(top - 20.0),
        escape(title)
    );
    for t in &y_ticks {
        let y = a.y(*t);
        let _ = writeln!(
            out,
            "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#dddddd\"/>\n<text class=\"tick-y\" data-value=\"{}\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            num(a.x_px.0),
            num(a.x_px.1),
            num(*t),
            num(left - 6.0),
            num(y + 4.0),
            num(*t),
            y = num(y)
        );
    }
    for t in &x_ticks {
        let x = a.x(*t);
        let _ = writeln!(
            out,
            "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"#999999\"/>\n<text class=\"tick-x\" data-value=\"{}\" x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            num(bottom),
            num(bottom + 5.0),
            num(*t),
            num(bottom + 18.0),
            num(*t),
            x = num(x)
        );
    }
    let _ = writeln!(
        out,
        "<path d=\"M{l},{t} V{b} H{r}\" fill=\"none\" stroke=\"#333333\"/>",
        l = num(a.x_px.0),
        t = num(top),
        b = num(bottom),
        r = num(a.x_px.1)
    );
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        num(left + width / 2.0),
        num(bottom + 36.0),
        escape(x_title)
    );
    let _ = writeln!(
        out,
        "<text transform=\"translate({},{}) rotate(-90)\" text-anchor=\"middle\">seconds until every worker runs again</text>",
        num(left - 44.0),
        num((top + bottom) / 2.0)
    );
    let mut by_series: BTreeMap<(String, String), Vec<&Row>> = BTreeMap::new();
    for r in &points {
        by_series
            .entry((r.kubelet.clone(), r.mode.clone()))
            .or_default()
            .push(r);
    }
    for (kubelet, mode) in series(rows) {
        let Some(rs) = by_series.get_mut(&(kubelet.clone(), mode.clone())) else {
            continue;
        };
        rs.sort_by(|p, q| x_of(p).total_cmp(&x_of(q)));
        let (stroke, dash, fill) = style(&kubelet, &mode);
        if rs.len() > 1 {
            let pts: Vec<String> = rs
                .iter()
                .map(|r| format!("{},{}", num(a.x(x_of(r))), num(a.y(r.seconds))))
                .collect();
            let _ = writeln!(
                out,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"2\"{dash}/>",
                pts.join(" ")
            );
        }
        for r in rs.iter() {
            let _ = writeln!(
                out,
                "<circle cx=\"{}\" cy=\"{}\" r=\"4\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"2\" data-kubelet=\"{}\" data-mode=\"{}\" data-workers=\"{}\" data-failure=\"{}\" data-seconds=\"{}\"><title>{}: N = {}, failure {}: {} s</title></circle>",
                num(a.x(x_of(r))),
                num(a.y(r.seconds)),
                escape(&r.kubelet),
                escape(&r.mode),
                r.workers,
                r.failure,
                r.seconds,
                escape(&label(&r.kubelet, &r.mode)),
                r.workers,
                r.failure,
                r.seconds
            );
        }
    }
    out.push_str("</g>\n");
}

fn legend(out: &mut String, rows: &[Row]) {
    let all = series(rows);
    let (mut x, mut y) = (70.0, 400.0);
    for (i, (kubelet, mode)) in all.iter().enumerate() {
        if i == 3 {
            x = 70.0;
            y += 20.0;
        }
        let (stroke, dash, fill) = style(kubelet, mode);
        let _ = writeln!(
            out,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{stroke}\" stroke-width=\"2\"{dash}/><circle cx=\"{}\" cy=\"{}\" r=\"4\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{}</text>",
            num(x),
            num(y),
            num(x + 28.0),
            num(y),
            num(x + 14.0),
            num(y),
            num(x + 36.0),
            num(y + 4.0),
            escape(&label(kubelet, mode))
        );
        x += 320.0;
    }
}
