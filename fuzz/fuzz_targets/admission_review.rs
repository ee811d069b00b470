//! Bytes → `admission::review` (decode, dispatch, mutation, encode) under three configs, with
//! the offline cluster view. Properties, beyond "no panic":
//! - every answer is a JSON AdmissionReview; messages stay under the cap;
//! - a patch is base64 of a JSON Patch that applies to the request's object;
//! - reviewing the patched object again yields no patch (what `reinvocationPolicy:
//!   IfNeeded` relies on).
#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use jobset_restart_webhook::admission::{self, MAX_MESSAGE_BYTES, Offline};
use jobset_restart_webhook::engine::Config;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

static CONFIGS: LazyLock<Vec<Config>> = LazyLock::new(|| {
    let texts = [
        // Built-in defaults, both targets.
        "targets: jobsets,pods\n".to_owned(),
        // Enabled by default: every JobSet and pod is mutated unless it opts out.
        "targets: jobsets,pods\ndefaults:\n  inPlace: enabled\n".to_owned(),
        // The golden tests' config (presets), both targets.
        format!(
            "{}\ntargets: jobsets,pods\n",
            include_str!("../../tests/fixtures/config.yaml")
        ),
    ];
    texts
        .iter()
        .map(|t| Config::from_yaml(t, "fuzz").expect("fuzz configs are valid"))
        .collect()
});

/// The cap plus the "... (message cut, N bytes)" suffix.
const MAX_MESSAGE: usize = MAX_MESSAGE_BYTES + 64;

fuzz_target!(|data: &[u8]| {
    for config in CONFIGS.iter() {
        check(data, config);
    }
});

fn check(data: &[u8], config: &Config) {
    let answer = match admission::review(data, config, &Offline) {
        Ok(a) => a,
        Err(bad) => {
            let text = bad.to_string();
            assert!(
                text.len() < MAX_MESSAGE + 128,
                "400 reason of {} bytes",
                text.len()
            );
            return;
        }
    };
    let out: Value = serde_json::from_slice(&answer.body).expect("the answer is JSON");
    assert_eq!(out["apiVersion"], admission::API_VERSION);
    assert_eq!(out["kind"], admission::KIND);
    let response = &out["response"];
    assert!(response["uid"].is_string(), "{out}");
    if response["allowed"] == false {
        let code = response["status"]["code"]
            .as_u64()
            .expect("a denial has a code");
        assert!(code == 400 || code == 422, "denial code {code}");
        let msg = response["status"]["message"].as_str().expect("a message");
        assert!(
            msg.len() <= MAX_MESSAGE,
            "denial message of {} bytes",
            msg.len()
        );
        assert!(
            response.get("patch").is_none(),
            "a denial with a patch: {out}"
        );
        return;
    }
    assert_eq!(response["allowed"], true, "{out}");
    let Some(b64) = response.get("patch") else {
        return;
    };
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().expect("patch is a string"))
        .expect("patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch is a JSON Patch");
    assert!(!patch.0.is_empty(), "an empty patch is sent as no patch");

    // The object as a JSON document. Objects nested deeper than serde_json's recursion limit
    // (128) in fields the engine skips can be reviewed but not loaded as a `Value`.
    let Ok(mut review) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let mut object = review["request"]["object"].take();
    json_patch::patch(&mut object, &patch)
        .unwrap_or_else(|e| panic!("the patch does not apply: {e}\npatch: {patch:?}"));

    // Reinvocation: the patched object needs nothing more.
    review["request"]["object"] = object;
    let again = serde_json::to_vec(&review).expect("serialize");
    let answer = admission::review(&again, config, &Offline).expect("the patched review is valid");
    let out: Value = serde_json::from_slice(&answer.body).expect("the answer is JSON");
    assert_eq!(
        out["response"]["allowed"], true,
        "the patched object is denied: {out}"
    );
    assert!(
        out["response"].get("patch").is_none(),
        "a second review patches again: {out}"
    );
}
