//! The two engines side by side on one cluster: the webhook and the generated admission policies,
//! each selecting the namespaces of its own label.

use super::*;

/// The stdout of `jobset-restart-webhook policy --config CONFIG -o OUTPUT`, which must succeed.
pub(super) fn generated_policy(config: &str, output: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobset-restart-webhook"))
        .args(["policy", "-o", output, "--config"])
        .arg(repo_root().join(config))
        .output()
        .expect("running jobset-restart-webhook policy");
    assert!(
        out.status.success(),
        "policy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Adds `ENGINE_LABEL=engine` to a namespace selector.
pub(super) fn select_engine(selector: &mut Value, engine: &str) {
    let requirement = json!({"key": ENGINE_LABEL, "operator": "In", "values": [engine]});
    match selector["matchExpressions"].as_array_mut() {
        Some(list) => list.push(requirement),
        None => selector["matchExpressions"] = json!([requirement]),
    }
}

/// The cluster configs both engines are given; the value of the namespace label in the
/// labelled namespaces (the namespace default matters where it differs from the config's);
/// and the overlay whose MutatingWebhookConfiguration registers the webhook for that config
/// (`None`: the base's).
pub(super) const CONFIGS: &[(&str, &str, Option<&str>)] = &[
    ("tests/fixtures/config.yaml", "enabled", None),
    (
        "tests/fixtures/config-defaults.yaml",
        "false",
        Some("manifests/overlays/cluster-default-enabled"),
    ),
];

/// One config's engines: (webhook namespace, policy namespace) pairs, plain then labelled.
pub(super) struct Engines<'c> {
    pub(super) config: &'static str,
    pub(super) plain: (TestNamespace<'c>, TestNamespace<'c>),
    pub(super) labelled: (TestNamespace<'c>, TestNamespace<'c>),
    pub(super) _webhook: Webhook,
}

/// Starts a webhook with `config` and applies the generated policies for it, each selecting
/// only its own namespaces (`ENGINE_LABEL` = `webhook-N` / `policy-N`), and waits until the
/// API server calls both.
pub(super) fn engines<'c>(
    c: &'c Cluster,
    n: usize,
    (config, label, overlay): (&'static str, &str, Option<&str>),
) -> Engines<'c> {
    let (we, pe) = (format!("webhook-{n}"), format!("policy-{n}"));
    let ns = |engine: &str, labelled: bool| {
        let mut labels = vec![(ENGINE_LABEL, engine)];
        if labelled {
            labels.push(("restart.jobset.dev/in-place", label));
        }
        c.namespace(engine, &labels)
    };
    let plain = (ns(&we, false), ns(&pe, false));
    let labelled = (ns(&we, true), ns(&pe, true));

    // The webhook, registered as shipped (renamed per config) but only for its namespaces.
    let webhook = Webhook::start(
        c,
        WebhookOptions {
            targets: None,
            config: Some(repo_root().join(config)),
        },
    );
    let mut mwc = webhook.configuration(Some(&format!("00-jobset-restart-webhook-{n}")));
    if let Some(overlay) = overlay {
        // The overlay's webhooks as kubectl's kustomize renders them, pointed at this webhook.
        let rendered = c.kubectl_ok(
            &["kustomize", &repo_root().join(overlay).to_string_lossy()],
            None,
        );
        let mut from_overlay = yaml_documents(&rendered, overlay)
            .into_iter()
            .find(|d| d["kind"] == "MutatingWebhookConfiguration")
            .unwrap_or_else(|| panic!("{overlay} renders no MutatingWebhookConfiguration"));
        webhook.point_at_me(&mut from_overlay);
        mwc["webhooks"] = from_overlay["webhooks"].clone();
    }
    for w in mwc["webhooks"].as_array_mut().into_iter().flatten() {
        select_engine(&mut w["namespaceSelector"], &we);
    }
    c.kubectl_ok(&["apply", "-f", "-"], Some(&mwc.to_string()));

    // The YAML output as a user applies it (comments and all); a server-side dry run, so that
    // the objects below, renamed and scoped, are the ones that act.
    let yaml = generated_policy(config, "yaml");
    let dry = c.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&yaml));
    assert!(
        dry.status.success(),
        "the API server refused the YAML output of policy --config {config}: {}",
        String::from_utf8_lossy(&dry.stderr)
    );

    // The generated policies, as printed (renamed per config), bound only to its namespaces.
    let mut policy: Value = serde_json::from_str(&generated_policy(config, "json"))
        .expect("policy -o json prints JSON");
    let items = policy["items"]
        .as_array_mut()
        .expect("policy prints a List");
    assert_eq!(items.len(), 4, "policy prints four objects");
    for item in items.iter_mut() {
        let name = format!(
            "{}-{n}",
            item["metadata"]["name"].as_str().unwrap_or_default()
        );
        item["metadata"]["name"] = json!(name);
        if item["kind"]
            .as_str()
            .is_some_and(|k| k.ends_with("Binding"))
        {
            item["spec"]["policyName"] = json!(name);
            select_engine(
                &mut item["spec"]["matchResources"]["namespaceSelector"],
                &pe,
            );
        }
    }
    let applied = c.kubectl(&["apply", "-f", "-"], Some(&policy.to_string()));
    assert!(
        applied.status.success(),
        "the API server refused the generated policy for {config}: {}",
        String::from_utf8_lossy(&applied.stderr)
    );

    // Both engines mutate an opted-in JobSet (container `trainer`, which both configs
    // select) and the validating policy denies an invalid one.
    let api = Api::new(c);
    let probe = crate::training_jobset("probe", &[("restart.jobset.dev/in-place", "enabled")]);
    for namespace in [&plain.0, &plain.1] {
        wait_for(
            "the engine to mutate a dry-run JobSet",
            Duration::from_secs(60),
            || match api.dry_run(namespace, &probe) {
                Outcome::Stored(stored)
                    if at(&stored, "/metadata/annotations/restart.jobset.dev~1applied")
                        .is_string() =>
                {
                    Ok(())
                }
                other => Err(format!("in {}: {other:?}", namespace.name)),
            },
        );
    }
    let mut bad = probe.clone();
    set(&mut bad, "in-place", "maybe");
    wait_for(
        "the validating policy to deny",
        Duration::from_secs(60),
        || match api.dry_run(&plain.1, &bad) {
            Outcome::Refused(..) => Ok(()),
            Outcome::Stored(_) => Err("stored".to_owned()),
        },
    );
    Engines {
        config,
        plain,
        labelled,
        _webhook: webhook,
    }
}
