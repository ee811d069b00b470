//! `/readyz`: ready when the webhook port's accept loop runs, a real TLS handshake with the
//! same TLS configuration completes (on a private loopback listener, so the webhook port's
//! connection cap cannot fail it: see `server::serve_prepared`), the certificate it serves is
//! valid now (not expired, not before its start, matching its key, and covering
//! `--tls-server-name` when given), the config is loaded, every extra check passes (the
//! cluster module adds "caches synced" and capability facts)
//! and the server is not draining. The body lists every check, Kubernetes `?verbose` style.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::config_store::ConfigStore;
use super::tls::{CertResolver, SelfCheck};

/// The certificate being served, checked on every probe (a few comparisons).
pub(crate) struct CertCheck {
    pub resolver: Arc<CertResolver>,
    pub server_name: Option<String>,
}

/// An extra readiness condition. `check` must be cheap (read a flag or a cached fact): it
/// runs on every probe.
pub trait ReadinessCheck: Send + Sync {
    /// Short name shown in the `/readyz` body, e.g. `caches`.
    fn name(&self) -> &str;
    /// `Ok(detail)` when ready (the detail is shown, may be empty); `Err(reason)` otherwise
    /// (its text is shown), in the error type of the module that implements the check.
    fn check(&self) -> Result<String, Box<dyn std::error::Error + Send + Sync>>;
}

/// The webhook port's accept loop: `accepting` turns `false` when it ends.
pub(crate) struct Listening {
    pub addr: std::net::SocketAddr,
    pub accepting: Arc<AtomicBool>,
}

pub(crate) struct Readiness {
    draining: AtomicBool,
    listening: Listening,
    tls: SelfCheck,
    cert: CertCheck,
    config: Arc<ConfigStore>,
    extra: Vec<Arc<dyn ReadinessCheck>>,
}

impl Readiness {
    pub(crate) fn new(
        tls: SelfCheck,
        listening: Listening,
        cert: CertCheck,
        config: Arc<ConfigStore>,
        extra: Vec<Arc<dyn ReadinessCheck>>,
    ) -> Self {
        Self {
            draining: AtomicBool::new(false),
            listening,
            tls,
            cert,
            config,
            extra,
        }
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// (ready, body).
    pub(crate) async fn report(&self) -> (bool, String) {
        let mut body = String::new();
        let mut ready = true;
        let mut line = |ok: bool, name: &str, detail: &str| {
            ready &= ok;
            let (mark, word) = if ok { ('+', "ok") } else { ('-', "failed") };
            let sep = if detail.is_empty() { "" } else { ": " };
            let _ = writeln!(body, "[{mark}]{name} {word}{sep}{detail}");
        };
        if self.draining() {
            line(false, "shutdown", "draining: the server is shutting down");
        } else {
            line(true, "shutdown", "serving");
            let addr = self.listening.addr;
            if self.listening.accepting.load(Ordering::SeqCst) {
                line(true, "listener", &format!("accepting on {addr}"));
            } else {
                line(
                    false,
                    "listener",
                    &format!("the accept loop of {addr} ended"),
                );
            }
            match self.tls.check().await {
                Ok(detail) => line(true, "tls", &detail),
                Err(e) => line(false, "tls", &e.to_string()),
            }
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        match self
            .cert
            .resolver
            .check(now, self.cert.server_name.as_deref())
        {
            Ok(detail) => line(true, "certificate", &detail),
            Err(e) => line(false, "certificate", &e.to_string()),
        }
        let cfg = self.config.load_current();
        let source = match self.config.path() {
            Some(p) => p.display().to_string(),
            None => "built-in defaults (no --config)".to_owned(),
        };
        line(
            true,
            "config",
            &format!("{source}, targets {}", cfg.targets),
        );
        for check in &self.extra {
            match check.check() {
                Ok(detail) => line(true, check.name(), &detail),
                Err(reason) => line(false, check.name(), &reason.to_string()),
            }
        }
        body.push_str(if ready {
            "readyz check passed\n"
        } else {
            "readyz check failed\n"
        });
        (ready, body)
    }
}
