//! The chart on the API server: every value set in a server-side dry run, then install,
//! upgrade and uninstall.

use super::*;

/// The value sets the server-side dry run checks, as (name, helm flags); files are written
/// to `dir`. `certs`: the self-managed CA bundle, certificate and key files.
pub(super) fn value_sets(
    dir: &Path,
    ca_bundle: &str,
    certs: &Path,
) -> Vec<(&'static str, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>();
    let custom_config = "defaults:\n  inPlace: disabled\n  action: Restart\n  exceptExitCodes: [0, \"2-3\"]\n  containers: [trainer]\n\
                         presets:\n  pytorch: {inPlace: enabled, action: RestartAllContainers, onExitCodes: \"1,42,128-143\"}\n\
                         targets: [jobsets, pods]\n";
    let config_file = write(dir, "custom-config.yaml", custom_config);
    let indented: String = custom_config.lines().map(|l| format!("  {l}\n")).collect();
    let custom = write(
        dir,
        "custom.yaml",
        &format!(
            "config:\n{indented}\
             replicas: 3\n\
             image: {{repository: registry.example/jrw, digest: \"sha256:{}\", pullPolicy: Always}}\n\
             imagePullSecrets: [regcred]\n\
             nodeSelector: {{kubernetes.io/os: linux}}\n\
             tolerations: [{{key: dedicated, operator: Equal, value: infra, effect: NoSchedule}}]\n\
             affinity: {{nodeAffinity: {{requiredDuringSchedulingIgnoredDuringExecution: {{nodeSelectorTerms: [{{matchExpressions: [{{key: kubernetes.io/arch, operator: In, values: [amd64, arm64]}}]}}]}}}}}}\n\
             topologySpreadConstraints: []\n\
             priorityClassName: system-cluster-critical\n\
             podLabels: {{team: ml-platform}}\n\
             podAnnotations: {{example.com/owner: ml-platform}}\n\
             logFormat: text\nlogLevel: debug\n\
             serve: {{maxConnections: 512, maxBodyMemory: 64Mi, idleTimeout: 60s, headerReadTimeout: 3s, extraArgs: [--tls-min-version=1.2]}}\n\
             webhook:\n  failurePolicy: Ignore\n  timeoutSeconds: 10\n  namespaceLabelOptIn: false\n\
             \x20 excludedNamespaces: [kube-system, kube-public]\n\
             \x20 namespaceSelector: {{matchLabels: {{env: prod}}, matchExpressions: [{{key: tier, operator: NotIn, values: [system]}}]}}\n\
             \x20 objectSelector: {{matchExpressions: [{{key: restart.example/skip, operator: DoesNotExist}}]}}\n\
             \x20 pods: {{failurePolicy: Ignore, timeoutSeconds: 1}}\n\
             networkPolicy: {{enabled: false}}\npodDisruptionBudget: {{enabled: false}}\n",
            "0".repeat(64)
        ),
    );
    let generated = write(
        dir,
        "custom-policy.yaml",
        &run_bin(&["policy", "--config", &path_str(&config_file)]),
    );
    let cluster_default = write(dir, "cluster-default.yaml", CLUSTER_DEFAULT_VALUES);
    let cert_files = format!(
        "tls.cert={},tls.key={}",
        path_str(&certs.join("tls.crt")),
        path_str(&certs.join("tls.key"))
    );
    vec![
        ("default values", vec![]),
        (
            "cert-manager, ServiceMonitor",
            s(&[
                "--set",
                "certManager.enabled=true,serviceMonitor.enabled=true,serviceMonitor.labels.release=prometheus",
            ]),
        ),
        (
            "alerts and dashboard, dashboard in another namespace",
            s(&[
                "--set",
                "prometheusRule.enabled=true,prometheusRule.labels.release=prometheus,\
                 grafanaDashboard.enabled=true,grafanaDashboard.namespace=default,\
                 grafanaDashboard.annotations.grafana_folder=Kubernetes",
            ]),
        ),
        (
            "self-managed",
            vec![
                "--set".into(),
                format!("tls.caBundle={ca_bundle}"),
                "--set-file".into(),
                cert_files.clone(),
            ],
        ),
        (
            "existing Secret, other name",
            vec![
                "--set".into(),
                format!("tls.caBundle={ca_bundle},tls.secretName=my-serving-cert"),
            ],
        ),
        ("cluster default", s(&["-f", &path_str(&cluster_default)])),
        (
            "pod target, one replica, NetworkPolicy restricted to given peers and ports",
            s(&[
                "--set",
                "config.targets={jobsets,pods},replicas=1,networkPolicy.apiServerPorts={16443}",
                "--set-json",
                r#"networkPolicy.webhookFrom=[{"ipBlock":{"cidr":"10.0.0.2/32"}}]"#,
                "--set-json",
                r#"networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"prometheus"}}}]"#,
            ]),
        ),
        (
            "custom config, selectors, scheduling, limits, optional objects off",
            s(&[
                "-f",
                &path_str(&custom),
                "--set",
                "certManager.enabled=true",
            ]),
        ),
        ("policy mode, default config", s(&["--set", "mode=policy"])),
        (
            "policy mode, custom config",
            s(&[
                "-f",
                &path_str(&custom),
                "--set",
                "mode=policy",
                "--set-file",
                &format!("policy.generated={}", path_str(&generated)),
            ]),
        ),
    ]
}

#[test]
pub(super) fn helm_value_sets_apply_to_the_api_server_with_server_side_dry_run() {
    let _t = TestTimer::start("helm_value_sets_apply_to_the_api_server_with_server_side_dry_run");
    helm_bin();
    let c = Cluster::start(ClusterOptions {
        name: "helm-dry-run",
        controller_manager: false,
        jobset_controller: false,
        ..ClusterOptions::default()
    });
    install_cert_manager_crds(&c);
    let service_monitors = go_module_dir(PROMETHEUS_OPERATOR_MODULE)
        .join("example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml");
    c.kubectl_ok(&["create", "-f", &path_str(&service_monitors)], None);
    wait_established(&c, "servicemonitors.monitoring.coreos.com");
    let prometheus_rules = go_module_dir(PROMETHEUS_OPERATOR_MODULE)
        .join("example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml");
    c.kubectl_ok(&["create", "-f", &path_str(&prometheus_rules)], None);
    wait_established(&c, "prometheusrules.monitoring.coreos.com");
    c.kubectl_ok(
        &[
            "apply",
            "-f",
            &path_str(&repo_root().join("manifests/base/namespace.yaml")),
        ],
        None,
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = tmp.path().join("certs");
    let ca_bundle = run_bin(&["certs", "--out-dir", &path_str(&certs)])
        .trim()
        .to_owned();
    let sets = value_sets(tmp.path(), &ca_bundle, &certs);
    for (name, flags) in &sets {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (rendered, docs) = template(&flags);
        assert!(
            docs.len() >= 4,
            "{name}: only {} objects rendered",
            docs.len()
        );
        dry_run_apply_all(
            &c,
            &format!("helm template ({name})"),
            &rendered,
            docs.len(),
        );
        eprintln!(
            "[e2e] helm dry run ({name}): {} objects accepted",
            docs.len()
        );
    }
}

/// Each object of `release`'s manifest as the API server stores it, without what changes
/// on its own (resourceVersion, managedFields, status).
pub(super) fn stored_objects(c: &Cluster, manifest: &[Value]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for obj in manifest {
        let kind = obj["kind"].as_str().expect("a kind");
        let name = obj["metadata"]["name"].as_str().expect("a name");
        let mut args = vec![kind, name];
        if let Some(ns) = obj["metadata"]["namespace"].as_str() {
            args.extend_from_slice(&["-n", ns]);
        }
        let mut stored = c.get_json(&args);
        if let Some(meta) = stored["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
            meta.remove("managedFields");
        }
        if let Some(map) = stored.as_object_mut() {
            map.remove("status");
        }
        out.insert(key(obj), stored);
    }
    out
}

pub(super) fn release_manifest(c: &Cluster) -> Vec<Value> {
    let text = helm_ok(
        &["get", "manifest", RELEASE, "--namespace", WEBHOOK_NAMESPACE],
        Some(c),
    );
    yaml_documents(&text, "helm get manifest")
}

/// Names of the cluster's objects of `kind` that carry our app label or one of `names`.
pub(super) fn ours(c: &Cluster, kind: &str, names: &[&str]) -> Vec<String> {
    let list = c.get_json(&[kind]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| {
            o["metadata"]["labels"]["app.kubernetes.io/name"] == "jobset-restart-webhook"
                || names.iter().any(|n| o["metadata"]["name"] == *n)
        })
        .map(key)
        .collect()
}

pub(super) fn applied(jobset: &Value) -> &str {
    at(jobset, "/metadata/annotations/restart.jobset.dev~1applied")
        .as_str()
        .unwrap_or("")
}

#[test]
pub(super) fn helm_install_upgrade_and_uninstall_on_the_api_server() {
    let _t = TestTimer::start("helm_install_upgrade_and_uninstall_on_the_api_server");
    helm_bin();
    let c = Cluster::start(ClusterOptions {
        name: "helm-install",
        ..ClusterOptions::default()
    });
    // The chart README's first step.
    c.kubectl_ok(
        &[
            "apply",
            "-f",
            &path_str(&repo_root().join("manifests/base/namespace.yaml")),
        ],
        None,
    );
    let ns_flag = ["--namespace", WEBHOOK_NAMESPACE];

    // Bad values fail with the schema's message and install nothing.
    for (set, message) in [
        (
            "mode=wat",
            "at '/mode': value must be one of 'webhook', 'policy'",
        ),
        ("replicas=-1", "at '/replicas': minimum: got -1, want 1"),
        ("replicas=0", "at '/replicas': minimum: got 0, want 1"),
    ] {
        let out = helm(
            &[
                "install", RELEASE, CHART, ns_flag[0], ns_flag[1], "--set", set,
            ],
            Some(&c),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(message),
            "helm install --set {set}: expected the schema's message {message:?}; success={}, \
             stderr: {stderr}",
            out.status.success()
        );
    }
    let releases = helm_ok(&["list", "--all", "-q", ns_flag[0], ns_flag[1]], Some(&c));
    assert!(
        releases.trim().is_empty(),
        "bad values left releases: {releases}"
    );

    // Install: self-managed certificates, a config with a preset.
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = tmp.path().join("certs");
    let ca_bundle = run_bin(&["certs", "--out-dir", &path_str(&certs)])
        .trim()
        .to_owned();
    let config_v1 = "config:\n  defaults: {inPlace: disabled}\n  presets:\n    pytorch: {inPlace: enabled, action: RestartAllContainers, onExitCodes: \"1,42,128-143\"}\n  targets: [jobsets]\n";
    let config_v2 = config_v1.replace(
        "{inPlace: disabled}",
        "{inPlace: disabled, action: Restart}",
    );
    let v1 = write(tmp.path(), "v1.yaml", config_v1);
    let v2 = write(tmp.path(), "v2.yaml", &config_v2);
    let tls = [
        "--set".to_owned(),
        format!("tls.caBundle={ca_bundle}"),
        "--set-file".to_owned(),
        format!(
            "tls.cert={},tls.key={}",
            path_str(&certs.join("tls.crt")),
            path_str(&certs.join("tls.key"))
        ),
    ];
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let start = Instant::now();
    let mut install = vec!["install", RELEASE, CHART, ns_flag[0], ns_flag[1], "-f"];
    let v1_path = path_str(&v1);
    install.push(&v1_path);
    install.extend_from_slice(&tls);
    helm_ok(&install, Some(&c));
    report_time("helm install", start.elapsed());

    let manifest = release_manifest(&c);
    let kinds: Vec<String> = manifest.iter().map(key).collect();
    for k in [
        "Deployment/jobset-restart-webhook",
        "ConfigMap/jobset-restart-webhook-config",
        "Secret/jobset-restart-webhook-tls",
        "MutatingWebhookConfiguration/00-jobset-restart-webhook",
    ] {
        assert!(
            kinds.iter().any(|x| x == k),
            "the release lacks {k}: {kinds:?}"
        );
    }
    // The Deployment controller writes to the Deployment after creation (its revision
    // annotation): let it settle before comparing.
    wait_for(
        "the Deployment to be observed",
        Duration::from_secs(60),
        || {
            let d = c.get_json(&[
                "deployment",
                "jobset-restart-webhook",
                ns_flag[0],
                ns_flag[1],
            ]);
            let rev = at(
                &d,
                "/metadata/annotations/deployment.kubernetes.io~1revision",
            );
            if at(&d, "/status/observedGeneration") == at(&d, "/metadata/generation")
                && rev.is_string()
            {
                Ok(())
            } else {
                Err(format!("status {}", at(&d, "/status")))
            }
        },
    );
    let before = stored_objects(&c, &manifest);
    for (k, obj) in &before {
        assert_eq!(
            obj["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm",
            "{k} as stored"
        );
    }
    let mwc = &before["MutatingWebhookConfiguration/00-jobset-restart-webhook"];
    for w in mwc["webhooks"].as_array().expect("webhooks") {
        assert_eq!(
            w["clientConfig"]["caBundle"],
            ca_bundle.as_str(),
            "caBundle of {}",
            w["name"]
        );
    }

    // Upgrade with a changed config: the ConfigMap changes, nothing else.
    let start = Instant::now();
    let mut upgrade = vec!["upgrade", RELEASE, CHART, ns_flag[0], ns_flag[1], "-f"];
    let v2_path = path_str(&v2);
    upgrade.push(&v2_path);
    upgrade.extend_from_slice(&tls);
    helm_ok(&upgrade, Some(&c));
    report_time("helm upgrade", start.elapsed());
    let after = stored_objects(&c, &release_manifest(&c));
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "the upgrade keeps the same objects"
    );
    let cm_key = "ConfigMap/jobset-restart-webhook-config";
    let stored_config = |objs: &BTreeMap<String, Value>| {
        let text = objs[cm_key]["data"]["config.yaml"]
            .as_str()
            .expect("config.yaml in the ConfigMap")
            .to_owned();
        (yaml_documents(&text, "config.yaml")[0].clone(), text)
    };
    // Helm merges the user's maps into the defaults: the chart's `any-failure` preset stays.
    let mut want_v2 = yaml_documents(&config_v2, "v2")[0]["config"].clone();
    want_v2["presets"]["any-failure"] = json!({"inPlace": "enabled", "exceptExitCodes": "0"});
    let (config_after, config_text) = stored_config(&after);
    assert_eq!(
        config_after, want_v2,
        "the upgraded ConfigMap holds the new config"
    );
    assert_ne!(stored_config(&before).0, want_v2, "the config did change");
    for (k, obj) in &after {
        if k != cm_key {
            assert!(
                obj == &before[k],
                "helm upgrade of the config changed {k}:\nbefore: {}\nafter: {}",
                before[k],
                obj
            );
        }
    }

    // The chart's own webhook configuration, pointed at a test instance of the webhook that
    // runs with the config the chart stored.
    let config_file = write(tmp.path(), "stored-config.yaml", &config_text);
    let webhook = Webhook::start(
        &c,
        WebhookOptions {
            targets: None,
            config: Some(config_file),
        },
    );
    let patch: Vec<Value> = after["MutatingWebhookConfiguration/00-jobset-restart-webhook"]
        ["webhooks"]
        .as_array()
        .expect("webhooks")
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let path = w["clientConfig"]["service"]["path"]
                .as_str()
                .expect("a service path");
            json!({"op": "replace", "path": format!("/webhooks/{i}/clientConfig"),
                   "value": {"url": format!("https://{}{path}", webhook.addr), "caBundle": webhook.ca_bundle}})
        })
        .collect();
    c.kubectl_ok(
        &[
            "patch",
            "mutatingwebhookconfiguration",
            SHIPPED_NAME,
            "--type=json",
            "-p",
            &Value::Array(patch).to_string(),
        ],
        None,
    );
    let ns = c.namespace("helm", &[]);
    wait_for(
        "the chart's webhook configuration to call the webhook",
        Duration::from_secs(30),
        || {
            let stored = dry_run_probe(&c, &ns);
            if applied(&stored).is_empty() {
                Err(format!("not mutated yet: {stored}"))
            } else {
                Ok(())
            }
        },
    );
    create_ok(
        &c,
        &ns,
        &training_jobset("by-default", &[("restart.jobset.dev/in-place", "enabled")]),
    );
    create_ok(
        &c,
        &ns,
        &training_jobset("by-preset", &[("restart.jobset.dev/preset", "pytorch")]),
    );
    create_ok(&c, &ns, &training_jobset("not-opted-in", &[]));
    // The upgraded default action and the installed preset both come from the chart's config.
    assert_eq!(
        applied(&c.jobset(&ns, "by-default")),
        "workers/trainer=Restart:NotIn(0)"
    );
    assert_eq!(
        applied(&c.jobset(&ns, "by-preset")),
        "workers/trainer=RestartAllContainers:In(1,42,128-143)"
    );
    let stored = c.jobset(&ns, "by-default");
    let container = at(
        &stored,
        "/spec/replicatedJobs/0/template/spec/template/spec/containers/0",
    );
    assert_eq!(container["restartPolicy"], "Never");
    assert_eq!(
        container["restartPolicyRules"],
        json!([{"action": "Restart", "exitCodes": {"operator": "NotIn", "values": [0]}}])
    );
    assert_eq!(
        applied(&c.jobset(&ns, "not-opted-in")),
        "",
        "not opted in: left alone"
    );

    // Uninstall: no webhook configuration (nor any other object of ours) is left.
    helm_ok(
        &["uninstall", RELEASE, ns_flag[0], ns_flag[1], "--wait"],
        Some(&c),
    );
    let left = ours(&c, "mutatingwebhookconfigurations", &[SHIPPED_NAME]);
    assert!(left.is_empty(), "helm uninstall left {left:?}");
    for k in after.keys() {
        let (kind, name) = k.split_once('/').expect("kind/name");
        let out = c.kubectl(&["get", kind, name, ns_flag[0], ns_flag[1]], None);
        assert!(!out.status.success(), "helm uninstall left {k}");
    }
    drop(webhook);

    // Policy mode: installed for real, the policies mutate an opted-in JobSet; uninstalled,
    // none is left.
    helm_ok(
        &[
            "install",
            RELEASE,
            CHART,
            ns_flag[0],
            ns_flag[1],
            "--set",
            "mode=policy",
        ],
        Some(&c),
    );
    wait_for(
        "the chart's admission policies to mutate",
        Duration::from_secs(30),
        || {
            let stored = dry_run_probe(&c, &ns);
            if applied(&stored).is_empty() {
                Err(format!("not mutated yet: {stored}"))
            } else {
                Ok(())
            }
        },
    );
    create_ok(
        &c,
        &ns,
        &training_jobset("by-policy", &[("restart.jobset.dev/in-place", "enabled")]),
    );
    assert_eq!(
        applied(&c.jobset(&ns, "by-policy")),
        "workers/trainer=RestartAllContainers:NotIn(0)"
    );
    helm_ok(
        &["uninstall", RELEASE, ns_flag[0], ns_flag[1], "--wait"],
        Some(&c),
    );
    for kind in [
        "mutatingadmissionpolicies",
        "mutatingadmissionpolicybindings",
        "validatingadmissionpolicies",
        "validatingadmissionpolicybindings",
        "mutatingwebhookconfigurations",
    ] {
        let left = ours(&c, kind, &[]);
        assert!(
            left.is_empty(),
            "helm uninstall (policy mode) left {left:?}"
        );
    }
}
