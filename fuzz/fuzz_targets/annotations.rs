//! Annotation maps → `engine::annotations::parse` (both scopes), and each value →
//! `parse_exit_codes` and `parse_names`. The input is text, one `key=value` per line, so that
//! seeds are readable. Properties, beyond "no panic":
//! - parsed exit codes are 1 to 255 values, strictly increasing; their compact rendering
//!   parses back to the same set;
//! - error messages for a value are bounded (values are quoted to 80 characters).
#![no_main]

use jobset_restart_webhook::engine::annotations::{self, ExitCodes, Operator, Scope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let pairs: Vec<(&str, &str)> = text
        .split('\n')
        .map(|line| line.split_once('=').unwrap_or((line, "")))
        .collect();
    for scope in [Scope::JobSet, Scope::ReplicatedJob("workers".to_owned())] {
        let _ = annotations::parse(pairs.iter().copied(), &scope);
    }
    for (_, value) in &pairs {
        match annotations::parse_exit_codes(value) {
            Ok(codes) => {
                assert!(
                    !codes.is_empty() && codes.len() <= 255,
                    "{} codes",
                    codes.len()
                );
                assert!(
                    codes.windows(2).all(|w| w[0] < w[1]),
                    "not sorted/unique: {codes:?}"
                );
                let compact = ExitCodes::new(Operator::In, value)
                    .expect("same spec")
                    .compact_values();
                assert_eq!(
                    annotations::parse_exit_codes(&compact).as_deref(),
                    Ok(&codes[..]),
                    "compact form {compact:?} of {value:?}"
                );
            }
            Err(e) => assert!(e.len() < 1024, "exit-code error of {} bytes", e.len()),
        }
        match annotations::parse_names(value, "container") {
            Ok(names) => {
                assert!(!names.is_empty());
                assert!(
                    names.iter().all(|n| !n.is_empty() && n.len() <= 63),
                    "{names:?}"
                );
            }
            Err(e) => assert!(e.len() < 1024, "name error of {} bytes", e.len()),
        }
    }
});
