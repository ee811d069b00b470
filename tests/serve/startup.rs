//! Startup errors: `serve` exits with a message naming the file and the problem.

use super::*;

/// Runs the binary to its exit (bounded) and returns (success, stderr).
fn run_to_exit(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} did not exit within 20s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn startup_errors_name_the_file_and_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::new(tmp.path());
    let listen = ["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
    let missing = tmp.path().join("missing.crt");
    let (ok, err) = run_to_exit(
        &[
            &[
                "serve",
                "--tls-cert",
                missing.to_str().unwrap(),
                "--tls-key",
                &certs.key(),
            ],
            &listen[..],
        ]
        .concat(),
    );
    assert!(!ok && err.contains("missing.crt"), "{err}");

    let garbage = tmp.path().join("garbage.crt");
    std::fs::write(&garbage, "hello").unwrap();
    let (ok, err) = run_to_exit(
        &[
            &[
                "serve",
                "--tls-cert",
                garbage.to_str().unwrap(),
                "--tls-key",
                &certs.key(),
            ],
            &listen[..],
        ]
        .concat(),
    );
    assert!(
        !ok && err.contains("garbage.crt: no CERTIFICATE block found"),
        "{err}"
    );

    let other = Certs::new(&tmp.path().join("other"));
    let (ok, err) = run_to_exit(
        &[
            &[
                "serve",
                "--tls-cert",
                &certs.cert(),
                "--tls-key",
                &other.key(),
            ],
            &listen[..],
        ]
        .concat(),
    );
    assert!(
        !ok && err.contains("is not the private key of the certificate"),
        "{err}"
    );

    let cfg = tmp.path().join("bad.yaml");
    std::fs::write(&cfg, "defaults:\n  inPlace: maybe\n").unwrap();
    let (ok, err) =
        run_to_exit(&[&["serve", "--config", cfg.to_str().unwrap()], &listen[..]].concat());
    assert!(
        !ok && err.contains("bad.yaml") && err.contains("defaults.inPlace"),
        "{err}"
    );

    let (ok, err) = run_to_exit(&[&["serve", "--tls-cert", &certs.cert()], &listen[..]].concat());
    assert!(!ok && err.contains("--tls-key"), "{err}");
}

/// A zero `--reload-interval` is refused at start, naming the flag and what it takes; it
/// used to pass, and the file reloaders (tokio intervals) then panicked, so rotated
/// certificates were never picked up while the server kept serving.
#[test]
fn zero_reload_interval_is_a_startup_error() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::new(tmp.path());
    let listen = ["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
    for zero in ["0s", "0", "0ms"] {
        let (ok, err) = run_to_exit(
            &[
                &[
                    "serve",
                    "--no-cluster",
                    "--tls-cert",
                    &certs.cert(),
                    "--tls-key",
                    &certs.key(),
                    "--reload-interval",
                    zero,
                ],
                &listen[..],
            ]
            .concat(),
        );
        assert!(!ok, "{zero}: {err}");
        assert!(
            err.contains("--reload-interval") && err.contains("100ms to 24h"),
            "{zero}: {err}"
        );
        assert!(!err.contains("panic"), "{zero}: {err}");
    }
}

#[test]
fn zero_capability_interval_is_a_startup_error() {
    // A zero period would send dry-run probes to the API server without pause.
    let (ok, err) = run_to_exit(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--capability-interval",
        "0s",
    ]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("--capability-interval") && err.contains("100ms to 24h"),
        "{err}"
    );
}

/// Runs `serve` with `args` for at most `within`: `Ok(stderr)` when it exited with an error,
/// `Err(stderr)` when it succeeded or was still running (killed).
fn refused(args: &[&str], within: Duration) -> Result<String, String> {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    let mut running = false;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            running = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if running || out.status.success() {
        Err(err)
    } else {
        Ok(err)
    }
}

/// Every timeout flag refuses 0 (which would mean "expired at once", not Go's "no
/// timeout"), values under 100 ms or over 10 minutes, and values past the clock's range
/// (which panicked on `Instant + Duration` in each connection), naming the flag, the value
/// and the allowed range; the two shutdown waits allow 0 but not more than 10 minutes.
#[test]
fn duration_flags_are_bounded_at_start() {
    let base = [
        "serve",
        "--no-cluster",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let mut cases = Vec::new();
    for flag in [
        "--tls-handshake-timeout",
        "--header-read-timeout",
        "--body-read-timeout",
        "--idle-timeout",
    ] {
        for value in ["0s", "50ms", "11m", "9999999999999999999s"] {
            cases.push((flag, value, "100ms to 10m"));
        }
    }
    for flag in ["--drain-delay", "--shutdown-grace-period"] {
        cases.push((flag, "11m", "0s to 10m"));
    }
    let mut accepted = Vec::new();
    for (flag, value, range) in &cases {
        match refused(
            &[&base[..], &[flag, value]].concat(),
            Duration::from_secs(3),
        ) {
            Ok(err) => {
                assert!(
                    err.contains(flag) && err.contains(value) && err.contains(range),
                    "{flag} {value}: {err}"
                );
                assert!(!err.contains("panic"), "{flag} {value}: {err}");
            }
            Err(_) => accepted.push(format!("{flag} {value}")),
        }
    }
    assert!(
        accepted.is_empty(),
        "{} of {} out-of-range values were accepted: {accepted:?}",
        accepted.len(),
        cases.len()
    );
}
