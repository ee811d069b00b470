//! Small helpers shared by the harness and the tests: polling, free ports, a plain-HTTP GET,
//! log tails and YAML/JSON loading.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository root (where the main crate's Cargo.toml is; this crate is `testkit/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ lies in the repository root")
        .to_owned()
}

/// A free TCP port on 127.0.0.1 (bound, read back, closed). Another process may take it
/// before it is used; the OS does not hand the same ephemeral port out again at once.
pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("reading the address of a bound socket")
        .port()
}

/// Calls `probe` until it returns `Ok`, backing off from 50 ms to 500 ms between calls.
/// Panics after `timeout`, naming `what` and quoting the last `Err` the probe returned.
/// A probe that sees a condition which can never recover (a process exited) panics itself.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) => {
                if start.elapsed() >= timeout {
                    panic!(
                        "timed out after {timeout:?} waiting for {what}; last observation: {last}"
                    );
                }
            }
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// `GET path` over plain HTTP/1.0: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| format!("setting timeouts on {addr}: {e}"))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP response from {addr}{path}: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}

/// The last `n` lines of a file ("(no such file)" when it is missing).
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Every non-empty YAML document of `text` as JSON.
pub fn yaml_documents(text: &str, source: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("{source} is not valid YAML: {e}"))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Reads `path` and returns its YAML documents as JSON.
pub fn load_yaml(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    yaml_documents(&text, &path.display().to_string())
}

/// `value` at a JSON pointer, or `Value::Null` when absent (for terse assertions).
pub fn at<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value.pointer(pointer).unwrap_or(&Value::Null)
}

/// Every container (init and regular) of every replicated job's pod template:
/// (replicated job name, container JSON).
pub fn jobset_containers(jobset: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for rjob in at(jobset, "/spec/replicatedJobs")
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = at(rjob, "/name").as_str().unwrap_or_default().to_owned();
        for list in ["initContainers", "containers"] {
            for c in at(rjob, &format!("/template/spec/template/spec/{list}"))
                .as_array()
                .into_iter()
                .flatten()
            {
                out.push((name.clone(), c.clone()));
            }
        }
    }
    out
}

/// Whether `restartPolicyRules` occurs anywhere in `value`.
pub fn mentions_rules(value: &Value) -> bool {
    value.to_string().contains("\"restartPolicyRules\"")
}

/// The text of a caught panic (`String` or `&str` payloads; "(no message)" otherwise), for a
/// shared cluster that failed to start and must say why to every test that asks for it.
pub fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Prints a timing line (shown with `--nocapture`, and in the output of failed tests).
pub fn report_time(what: &str, elapsed: Duration) {
    eprintln!("[e2e] {what}: {:.1} s", elapsed.as_secs_f64());
}

/// Prints how long the test it lives in took when dropped (also when the test fails).
pub struct TestTimer {
    name: &'static str,
    start: Instant,
}

impl TestTimer {
    pub fn start(name: &'static str) -> Self {
        Self {
            name,
            start: Instant::now(),
        }
    }
}

impl Drop for TestTimer {
    fn drop(&mut self) {
        let outcome = if std::thread::panicking() {
            "FAILED"
        } else {
            "ok"
        };
        report_time(
            &format!("test {} ({outcome})", self.name),
            self.start.elapsed(),
        );
    }
}
