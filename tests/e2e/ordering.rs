//! Mutating webhook order. The API server sorts MutatingWebhookConfigurations by NAME and
//! calls them in that order (each configuration's webhooks in list order), then reinvokes
//! `reinvocationPolicy: IfNeeded` webhooks once if a later webhook changed the object.
//! JobSet's defaulting webhook (`jobset-mutating-webhook-configuration`, `mjobset.kb.io`)
//! sets the pod template's `restartPolicy: OnFailure` when it is empty. Our webhook sets it to
//! `Never` when it is empty, and keeps (with a warning) an `OnFailure` it finds, since it
//! cannot tell JobSet's default from a user's choice. So the name decides the outcome:
//!
//! - `00-jobset-restart-webhook` (shipped; sorts first): ours runs first and sets `Never`;
//!   JobSet's leaves it; ours is reinvoked (JobSet changed other fields) with an empty patch.
//! - `zz-jobset-restart-webhook` (sorts after JobSet's): JobSet's runs first and sets
//!   `OnFailure`; ours then keeps it, still injects the container rules, and warns. Every
//!   in-place restart would count against the Job's backoffLimit.
//!
//! Both are shown on one cluster: first the `zz-` copy, then the shipped one.

use std::time::Duration;

use crate::cluster::{Cluster, ClusterOptions};
use crate::util::{TestTimer, at, wait_for};
use crate::webhook::{SHIPPED_NAME, Webhook, WebhookOptions, dry_run_probe};
use crate::{any_failure_rules, create_ok, training_jobset};

const POD_RESTART_POLICY: &str = "/spec/replicatedJobs/0/template/spec/template/spec/restartPolicy";
const ONFAILURE_WARNING: &str = "the pod template sets restartPolicy: OnFailure, so every in-place restart counts against the Job's backoffLimit";

#[test]
fn configuration_name_decides_whether_jobset_defaulting_runs_before_us() {
    let _t =
        TestTimer::start("configuration_name_decides_whether_jobset_defaulting_runs_before_us");
    let c = Cluster::start(ClusterOptions {
        name: "ordering",
        controller_manager: false,
        ..ClusterOptions::default()
    });
    let webhook = Webhook::start(&c, WebhookOptions::default());
    let ns = c.namespace("ordering", &[]);
    let opted_in = [("restart.jobset.dev/in-place", "enabled")];

    // 1. After JobSet's configuration.
    let late = "zz-jobset-restart-webhook";
    assert!(late > crate::cluster::JOBSET_MUTATING_CONFIG);
    webhook.register(&c, Some(late), &ns);
    let warnings = create_ok(&c, &ns, &training_jobset("late", &opted_in));
    let stored = c.jobset(&ns, "late");
    assert_eq!(
        at(&stored, POD_RESTART_POLICY),
        "OnFailure",
        "JobSet's default ran first and we kept it: {stored:#}"
    );
    assert!(
        warnings.contains(ONFAILURE_WARNING),
        "kubectl shows our warning about OnFailure; stderr:\n{warnings}"
    );
    let container = at(
        &stored,
        "/spec/replicatedJobs/0/template/spec/template/spec/containers/0",
    );
    assert_eq!(
        container["restartPolicyRules"],
        any_failure_rules("RestartAllContainers")
    );
    assert_eq!(
        at(&stored, "/metadata/annotations/restart.jobset.dev~1applied"),
        "workers/trainer=RestartAllContainers:NotIn(0)"
    );
    // Called once: nothing ran after us, so there was no reinvocation.
    let calls = webhook.reviews(&ns, "late");
    assert_eq!(calls.len(), 1, "{calls:#?}");

    // 2. The shipped name, before JobSet's configuration.
    c.kubectl_ok(&["delete", "mutatingwebhookconfiguration", late], None);
    wait_for(
        "the API server to stop calling the zz- configuration",
        Duration::from_secs(30),
        || {
            let probe = dry_run_probe(&c, &ns);
            match at(&probe, "/metadata/annotations/restart.jobset.dev~1applied") {
                serde_json::Value::Null if probe.is_object() => Ok(()),
                other => Err(format!("applied annotation still set: {other}")),
            }
        },
    );
    assert!(SHIPPED_NAME < crate::cluster::JOBSET_MUTATING_CONFIG);
    webhook.register(&c, None, &ns);
    let warnings = create_ok(&c, &ns, &training_jobset("early", &opted_in));
    let stored = c.jobset(&ns, "early");
    assert_eq!(
        at(&stored, POD_RESTART_POLICY),
        "Never",
        "we ran first and set Never; JobSet's default left it: {stored:#}"
    );
    assert!(
        !warnings.contains("OnFailure"),
        "no OnFailure warning when we run first; stderr:\n{warnings}"
    );
    // JobSet's defaulting still ran (after us) ...
    assert_eq!(at(&stored, "/spec/successPolicy/operator"), "All");
    // ... and changed the object, so we were reinvoked and answered an empty patch.
    let calls = webhook.reviews(&ns, "early");
    let ops: Vec<i64> = calls
        .iter()
        .map(|r| r["patch_ops"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(ops.len(), 2, "{calls:#?}");
    assert!(ops[0] > 0 && ops[1] == 0, "{ops:?}");
}
