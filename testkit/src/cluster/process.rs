//! The harness's processes: each in its own process group, tracked for the watchdog.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::util::tail;

use super::{LOG_TAIL_LINES, STOP_GRACE};

/// The process groups the watchdog kills, mirrored into `<dir>/pgids`.
pub struct Tracker {
    pub(super) file: PathBuf,
    pub(super) pgids: Mutex<Vec<i32>>,
}

impl Tracker {
    pub fn track(&self, pgid: i32) {
        let mut pgids = self.pgids.lock().unwrap_or_else(|e| e.into_inner());
        pgids.push(pgid);
        self.write(&pgids);
    }

    pub fn untrack(&self, pgid: i32) {
        let mut pgids = self.pgids.lock().unwrap_or_else(|e| e.into_inner());
        pgids.retain(|p| *p != pgid);
        self.write(&pgids);
    }

    pub(super) fn write(&self, pgids: &[i32]) {
        let text: String = pgids.iter().map(|p| format!("{p}\n")).collect();
        let tmp = self.file.with_extension("tmp");
        fs::write(&tmp, text)
            .and_then(|()| fs::rename(&tmp, &self.file))
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.file.display()));
    }
}

/// A process the harness started, in its own process group.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` in a new process group with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf, tracker: &Tracker) -> Proc {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = file
            .try_clone()
            .unwrap_or_else(|e| panic!("duplicating {}: {e}", log.display()));
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        tracker.track(child.id() as i32);
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// Panics (with the log's tail) when the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, LOG_TAIL_LINES)
            );
        }
    }

    pub fn print_log_tail(&self) {
        eprintln!(
            "----- last {LOG_TAIL_LINES} lines of {} ({}) -----\n{}\n----- end of {} -----",
            self.name,
            self.log.display(),
            tail(&self.log, LOG_TAIL_LINES),
            self.name
        );
    }
}

/// Stops processes: SIGTERM to every group at once, SIGKILL to what is left after
/// [`STOP_GRACE`], then reaps them.
pub fn stop_all(procs: &mut [&mut Proc], tracker: &Tracker) {
    use rustix::process::{Pid, Signal, kill_process_group};
    let mut running = Vec::new();
    for p in procs.iter_mut() {
        if matches!(p.child.try_wait(), Ok(None)) {
            if let Some(pid) = Pid::from_raw(p.child.id() as i32) {
                let _ = kill_process_group(pid, Signal::TERM);
            }
            running.push(&mut **p);
        } else {
            tracker.untrack(p.child.id() as i32);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline
        && running
            .iter_mut()
            .any(|p| matches!(p.child.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in running {
        if matches!(p.child.try_wait(), Ok(None)) {
            eprintln!(
                "[e2e] {} did not stop within {STOP_GRACE:?} of SIGTERM; SIGKILL",
                p.name
            );
            if let Some(pid) = Pid::from_raw(p.child.id() as i32) {
                let _ = kill_process_group(pid, Signal::KILL);
            }
            let _ = p.child.wait();
        }
        tracker.untrack(p.child.id() as i32);
    }
}

/// Starts the watchdog (see the module comment) for `dir`.
pub(super) fn start_watchdog(dir: &Path) -> (Child, ChildStdin) {
    const SCRIPT: &str = r#"
trap '' INT HUP
read -r _ || true
groups=$(cat "$1/pgids" 2>/dev/null)
for p in $groups; do kill -TERM "-$p" 2>/dev/null; done
sleep 3
for p in $groups; do kill -KILL "-$p" 2>/dev/null; done
if [ ! -e "$1/keep" ] && [ "$2" != 1 ]; then rm -rf "$1"; fi
"#;
    let keep = std::env::var("E2E_KEEP").unwrap_or_default();
    spawn_watchdog(
        "watchdog",
        SCRIPT,
        &["e2e-watchdog".as_ref(), dir.as_os_str(), keep.as_ref()],
    )
}

/// Runs `sh -c script args...` in its own process group with a stdin pipe nothing writes to:
/// the script's `read` returns once the test process is gone, however it ended. `what` names
/// it in panics.
pub fn spawn_watchdog(what: &str, script: &str, args: &[&OsStr]) -> (Child, ChildStdin) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .args(args)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting the {what} shell: {e}"));
    let stdin = child
        .stdin
        .take()
        .unwrap_or_else(|| panic!("the {what}'s stdin pipe"));
    (child, stdin)
}
