//! Bytes → `engine::Config::from_yaml`: the cluster config file (a ConfigMap an admin
//! edits; re-read while serving). No panic, no runaway time or memory (libFuzzer's -timeout
//! and -rss_limit_mb catch those), and errors name the source.
#![no_main]

use jobset_restart_webhook::engine::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::from_yaml(text, "fuzz.yaml") {
        assert!(e.to_string().starts_with("fuzz.yaml"), "{e}");
    }
});
