//! Logs (tracing) and metrics (prometheus-client) for `serve`.
//!
//! Metrics live in a registry the server owns (no global state); every name starts with
//! `jobset_restart_webhook_`. Label values that a client controls (the review's kind and
//! operation) are folded into a small fixed set, so nobody can grow the series without bound.

mod json_log;

use std::io::IsTerminal as _;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::admission::{Outcome, Record};

/// Metric name prefix (without the trailing `_`, which the registry adds).
pub const PREFIX: &str = "jobset_restart_webhook";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (fields flattened).
    Json,
}

/// Default filter: `info`, except rustls, whose warnings are about what clients send (an IP
/// address as SNI, say) and would let any client fill the log. Failed handshakes are counted
/// in a metric and logged at debug.
pub const DEFAULT_LOG_FILTER: &str = "info,rustls=error";

/// Installs the global tracing subscriber (stderr). The filter comes from `RUST_LOG`
/// (default [`DEFAULT_LOG_FILTER`]). Calling it twice is harmless: the second call does
/// nothing.
pub fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder
            .fmt_fields(json_log::JsonFields)
            .event_format(json_log::JsonLines)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// `kind` label: the two kinds the webhook knows, everything else is `other`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum KindLabel {
    JobSet,
    Pod,
    other,
    /// The body could not be read as a review.
    unknown,
}

impl KindLabel {
    pub fn of(kind: &str) -> Self {
        match kind {
            "JobSet" => Self::JobSet,
            "Pod" => Self::Pod,
            _ => Self::other,
        }
    }
}

/// `operation` label, folded the same way.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms, non_camel_case_types)]
pub enum OperationLabel {
    CREATE,
    UPDATE,
    DELETE,
    CONNECT,
    other,
    unknown,
}

impl OperationLabel {
    pub fn of(op: &str) -> Self {
        match op {
            "CREATE" => Self::CREATE,
            "UPDATE" => Self::UPDATE,
            "DELETE" => Self::DELETE,
            "CONNECT" => Self::CONNECT,
            _ => Self::other,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub kind: KindLabel,
    pub operation: OperationLabel,
    /// `allowed`, `patched`, `denied` or `error` (the request got no review answer).
    pub outcome: &'static str,
    /// HTTP status code.
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: KindLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `handshake`, `header` (request head not received in time), `idle` or `body`.
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Latency buckets (seconds): a review costs microseconds, the API server's budget is seconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5,
];

/// Every metric `serve` exports.
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Histogram,
    pub patch_operations: Family<KindLabels, Counter>,
    pub denials: Family<KindLabels, Counter>,
    pub bad_requests: Family<CodeLabels, Counter>,
    pub panics: Counter,
    pub in_flight: Gauge,
    pub connections_open: Gauge,
    pub connections_rejected: Counter,
    pub connections_evicted: Counter,
    pub tls_handshake_errors: Counter,
    pub reviews_shed: Family<ReasonLabels, Counter>,
    pub timeouts: Family<PhaseLabels, Counter>,
    pub cert_reloads: Family<ResultLabels, Counter>,
    pub cert_not_after: Gauge,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub config_last_reload_successful: Gauge,
    pub config_last_reload_success_time: Gauge<f64, AtomicU64>,
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let m = Self {
            requests: Family::default(),
            request_duration: Histogram::new(LATENCY_BUCKETS),
            patch_operations: Family::default(),
            denials: Family::default(),
            bad_requests: Family::default(),
            panics: Counter::default(),
            in_flight: Gauge::default(),
            connections_open: Gauge::default(),
            connections_rejected: Counter::default(),
            connections_evicted: Counter::default(),
            tls_handshake_errors: Counter::default(),
            reviews_shed: Family::default(),
            timeouts: Family::default(),
            cert_reloads: Family::default(),
            cert_not_after: Gauge::default(),
            config_reloads: Family::default(),
            config_last_reload_successful: Gauge::default(),
            config_last_reload_success_time: Gauge::default(),
            registry: Registry::default(),
        };
        // Series that alerts look for exist from the start, at zero.
        for reason in ["in_flight_limit", "queue_timeout"] {
            let _ = m.reviews_shed.get_or_create(&ReasonLabels { reason });
        }
        for result in ["success", "error"] {
            let _ = m.cert_reloads.get_or_create(&ResultLabels { result });
            let _ = m.config_reloads.get_or_create(&ResultLabels { result });
        }
        registry.register(
            "requests",
            "Admission requests on /mutate by kind, operation, outcome and HTTP code",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a /mutate request's head to its answer, body read included",
            m.request_duration.clone(),
        );
        registry.register(
            "patch_operations",
            "JSON Patch operations sent, by kind",
            m.patch_operations.clone(),
        );
        registry.register(
            "denials",
            "Reviews denied (invalid annotations), by kind",
            m.denials.clone(),
        );
        registry.register(
            "bad_requests",
            "Requests rejected before review (400, 404, 405, 408, 413, 415, 431), by HTTP code",
            m.bad_requests.clone(),
        );
        registry.register(
            "panics",
            "Panics caught while handling a request (answered 500)",
            m.panics.clone(),
        );
        registry.register(
            "requests_in_flight",
            "/mutate requests being handled",
            m.in_flight.clone(),
        );
        registry.register(
            "connections_open",
            "Open connections on the webhook port",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_rejected",
            "New connections closed at once: --max-connections (or --max-connections-per-peer \
             from their address) were open and none of them was idle",
            m.connections_rejected.clone(),
        );
        registry.register(
            "connections_evicted",
            "Idle connections closed to make room for a new one at --max-connections or \
             --max-connections-per-peer",
            m.connections_evicted.clone(),
        );
        registry.register(
            "reviews_shed",
            "/mutate requests answered 429 with Retry-After before review, by reason \
             (in_flight_limit: --max-reviews-in-flight were in flight; queue_timeout: no worker \
             was free within the API server's timeout)",
            m.reviews_shed.clone(),
        );
        registry.register(
            "tls_handshake_errors",
            "TLS handshakes that failed",
            m.tls_handshake_errors.clone(),
        );
        registry.register(
            "connection_timeouts",
            "Connections closed by a timeout, by phase (handshake, header, idle, body)",
            m.timeouts.clone(),
        );
        registry.register(
            "tls_cert_reloads",
            "Serving certificate reloads after the files changed, by result",
            m.cert_reloads.clone(),
        );
        registry.register(
            "tls_cert_not_after_seconds",
            "Expiry (notAfter, Unix seconds) of the serving certificate in use",
            m.cert_not_after.clone(),
        );
        registry.register(
            "config_reloads",
            "Cluster config reloads after the file changed, by result",
            m.config_reloads.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "1 when the last attempt to load the cluster config succeeded, else 0",
            m.config_last_reload_successful.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful cluster config load",
            m.config_last_reload_success_time.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Self { registry, ..m }
    }

    /// Adds metrics another module computes at scrape time (they get the same prefix).
    pub fn register_collector(&mut self, c: Box<dyn prometheus_client::collector::Collector>) {
        self.registry.register_collector(c);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Counts one answered review.
    pub fn observe_review(&self, r: &Record, seconds: f64) {
        let kind = KindLabel::of(&r.kind);
        self.requests
            .get_or_create(&RequestLabels {
                kind,
                operation: OperationLabel::of(&r.operation),
                outcome: r.outcome.as_str(),
                code: 200,
            })
            .inc();
        if r.patch_ops > 0 {
            self.patch_operations
                .get_or_create(&KindLabels { kind })
                .inc_by(r.patch_ops as u64);
        }
        if r.outcome == Outcome::Denied {
            self.denials.get_or_create(&KindLabels { kind }).inc();
        }
        self.request_duration.observe(seconds);
    }

    /// Counts one /mutate request that got no review answer.
    pub fn observe_rejected(&self, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                kind: KindLabel::unknown,
                operation: OperationLabel::unknown,
                outcome: "error",
                code,
            })
            .inc();
        // 429 is load shedding (counted in `reviews_shed`), not a bad request.
        if code < 500 && code != 429 {
            self.bad_requests.get_or_create(&CodeLabels { code }).inc();
        }
        self.request_duration.observe(seconds);
    }

    pub fn timeout(&self, phase: &'static str) {
        self.timeouts.get_or_create(&PhaseLabels { phase }).inc();
    }
}
