//! The `--log-format json` line format: the same lines as tracing-subscriber's
//! `.json().flatten_event(true)` with spans off (`timestamp`, `level`, then the event's
//! fields in order), plus the spans the event is in (`"spans":{"conn":{"peer":..}}`),
//! written straight into the line buffer.
//!
//! Why not tracing-subscriber's own formatter: it serializes through serde with an
//! `io::Write` adapter that re-checks UTF-8 on every chunk, and one line per review cost
//! ~3.5 µs of a small review's ~40 µs of server CPU; this costs about a third of that
//! (docs/BENCHMARKS.md §2). `tests` below holds both formatters to the same output.

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// One JSON object per event, one event per line.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writer.write_str("{\"timestamp\":\"")?;
        write_timestamp(&mut writer, SystemTime::now())?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(event.metadata().level().as_str())?;
        writer.write_char('"')?;
        // The spans the event is in, outermost first, as `"spans":{"conn":{"peer":..},
        // "review":{"uid":..}}` (their fields as `JsonFields` wrote them): what ties a
        // connection's lines and a review's lines together.
        if let Some(scope) = ctx.event_scope() {
            let mut first = true;
            for span in scope.from_root() {
                writer.write_str(if first { ",\"spans\":{" } else { "," })?;
                first = false;
                write_str_escaped(&mut writer, span.name())?;
                writer.write_str(":{")?;
                let ext = span.extensions();
                let fields = ext
                    .get::<FormattedFields<N>>()
                    .map_or("", |f| f.fields.as_str());
                writer.write_str(fields.strip_prefix(',').unwrap_or(fields))?;
                writer.write_char('}')?;
            }
            if !first {
                writer.write_char('}')?;
            }
        }
        let mut fields = Fields {
            out: &mut writer,
            state: Ok(()),
        };
        event.record(&mut fields);
        fields.state?;
        writer.write_str("}\n")
    }
}

/// A span's fields as the JSON members `,"name":value` (each with its leading comma), kept by
/// tracing-subscriber with the span and written into its lines by [`JsonLines`].
pub struct JsonFields;

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = Fields {
            out: &mut writer,
            state: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.state
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        // Appended as they are: each member carries its comma (the default adds a space).
        self.format_fields(current.as_writer(), fields)
    }
}

/// RFC 3339 in UTC with microseconds, as tracing-subscriber's `SystemTime` timer writes it.
fn write_timestamp(w: &mut impl fmt::Write, now: SystemTime) -> fmt::Result {
    let t = time::OffsetDateTime::from(now);
    write!(
        w,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

struct Fields<'w, W: fmt::Write> {
    out: &'w mut W,
    state: fmt::Result,
}

impl<W: fmt::Write> Fields<'_, W> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        self.out.write_char(',')?;
        write_str_escaped(self.out, field.name())?;
        self.out.write_char(':')
    }

    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.state.is_ok() {
            self.state = self.key(field).and_then(|()| value(self.out));
        }
    }
}

impl<W: fmt::Write> Visit for Fields<'_, W> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json writes non-finite numbers as null.
        self.entry(field, |w| match serde_json::Number::from_f64(value) {
            Some(n) => write!(w, "{n}"),
            None => w.write_str("null"),
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |w| write_str_escaped(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

fn write_str_escaped(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(&mut *w).write_str(s)?;
    w.write_char('"')
}

/// Writes what it is given with JSON string escapes, as serde_json escapes strings.
struct Escaped<'w, W: fmt::Write>(&'w mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape: &str = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            // `i` is at an ASCII byte, so both slices end on character boundaries.
            self.0.write_str(s.get(start..i).unwrap_or_default())?;
            if escape.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            start = i + 1;
        }
        self.0.write_str(s.get(start..).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing::{debug, error, info, warn};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::ErrorKind::Other)?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    impl Buf {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().unwrap().clone();
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(|l| {
                    // The timestamps differ by when each line was written; check their shape.
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    let ts = v["timestamp"].as_str().unwrap().to_owned();
                    assert_eq!(ts.len(), "2026-12-01T08:00:06.740174Z".len(), "{ts}");
                    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
                    l.replace(&ts, "TS")
                })
                .collect()
        }
    }

    fn events() {
        let err = io::Error::other("disk \"full\"\n");
        info!(
            uid = %"3b0f8a52",
            kind = %"JobSet",
            dry_run = false,
            patch_ops = 4u64,
            delta = -3i64,
            ratio = 0.25f64,
            nan = f64::NAN,
            big = 1u128 << 100,
            "review"
        );
        warn!(error = %err, path = ?"/etc/x\u{1}y", "keeping the last good config");
        error!(
            error = &err as &dyn std::error::Error,
            "unicode: é ✓ \u{7f}"
        );
        debug!("filtered out");
        info!(answer = "plain \\ str\ttab", "");
    }

    #[test]
    fn lines_match_tracing_subscribers_json_format() {
        let ours = Buf::default();
        let theirs = Buf::default();
        let ours_sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(ours.clone())
            .event_format(JsonLines)
            .finish();
        let theirs_sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(theirs.clone())
            .with_target(false)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .finish();
        tracing::subscriber::with_default(ours_sub, events);
        tracing::subscriber::with_default(theirs_sub, events);
        let (ours, theirs) = (ours.lines(), theirs.lines());
        assert_eq!(ours.len(), 4, "{ours:#?}");
        assert_eq!(ours, theirs);
    }

    /// A line inside spans names them and their fields, recorded late ones included, so
    /// a connection's and a review's lines can be found together.
    #[test]
    fn lines_carry_their_spans() {
        let out = Buf::default();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(out.clone())
            .fmt_fields(JsonFields)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let conn = tracing::info_span!("conn", peer = %"10.0.0.7:5123");
            let _c = conn.enter();
            info!("outside a review");
            let review = tracing::info_span!("review", uid = tracing::field::Empty);
            let _r = review.enter();
            review.record("uid", "a\"b");
            info!(kind = "JobSet", "review");
        });
        let lines = out.lines();
        let v: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            v[0]["spans"],
            serde_json::json!({"conn": {"peer": "10.0.0.7:5123"}})
        );
        assert_eq!(
            v[1]["spans"],
            serde_json::json!({"conn": {"peer": "10.0.0.7:5123"}, "review": {"uid": "a\"b"}})
        );
        assert_eq!(v[1]["kind"], "JobSet");
        assert_eq!(v[1]["message"], "review");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_764_576_006_740_174);
        let mut s = String::new();
        write_timestamp(&mut s, t).unwrap();
        assert_eq!(s, "2025-12-01T08:00:06.740174Z");
    }
}
