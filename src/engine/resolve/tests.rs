use super::*;
use crate::engine::annotations::{self, Operator};

fn ann(pairs: &[(&str, &str)]) -> Annotations {
    annotations::parse(pairs.iter().copied(), &Scope::JobSet).unwrap()
}

fn config(yaml: &str) -> Config {
    Config::from_yaml(yaml, "test").unwrap()
}

/// A decision borrows the container list of its inputs: these are kept for the test's life.
fn kept<T: Clone>(v: &T) -> &'static T {
    Box::leak(Box::new(v.clone()))
}

fn run(
    js: &Annotations,
    rj: Option<&Annotations>,
    ns: Option<InPlace>,
    cfg: &Config,
    facts: ClusterFacts,
) -> (Result<Decision<'static>, AnnotationError>, Vec<String>) {
    let (js, rj, cfg) = (kept(js), rj.map(kept), kept(cfg));
    let mut w = Warnings::default();
    let memo = Memo::default();
    let inputs = Inputs {
        jobset: js,
        replicated_job: rj.map(|a| ("workers", a)),
        namespace: ns,
        config: cfg,
        facts: &facts,
        node_selector: &[],
        memo: &memo,
    };
    let d = resolve(&inputs, &mut w);
    (d, w.finish())
}

fn enabled(d: Result<Decision<'_>, AnnotationError>) -> Resolved<'_> {
    match d {
        Ok(Decision::Enabled(r)) => r,
        other => panic!("expected enabled, got {other:?}"),
    }
}

const EN: (&str, &str) = ("restart.jobset.dev/in-place", "enabled");
const DIS: (&str, &str) = ("restart.jobset.dev/in-place", "disabled");

#[test]
fn default_is_disabled() {
    let (d, _) = run(
        &ann(&[]),
        None,
        None,
        &Config::default(),
        ClusterFacts::default(),
    );
    assert_eq!(d.unwrap(), Decision::Disabled);
}

#[test]
fn jobset_opt_in_uses_builtin_defaults() {
    let yes_rac = ClusterFacts {
        restart_all_containers: Some(true),
        ..Default::default()
    };
    let (d, w) = run(&ann(&[EN]), None, None, &Config::default(), yes_rac);
    let r = enabled(d);
    assert_eq!(r.action, Action::RestartAllContainers);
    assert_eq!(r.exit_codes, ExitCodes::any_failure());
    assert_eq!(r.containers, None);
    assert!(w.is_empty(), "{w:?}");
}

/// No cluster, or a probe that has not answered: nothing says the API server accepts
/// RestartAllContainers (1.35 has it off by default), so the default is Restart, with a
/// warning that says why; an action asked for explicitly (annotation or config) is kept.
#[test]
fn an_unknown_capability_defaults_to_restart_with_a_warning() {
    let cfg = Config::default();
    let (d, w) = run(&ann(&[EN]), None, None, &cfg, ClusterFacts::default());
    assert_eq!(enabled(d).action, Action::Restart);
    assert_eq!(w, [UNKNOWN_CAPABILITY]);
    assert!(
        UNKNOWN_CAPABILITY.starts_with(
            "the action defaults to Restart: whether this cluster's API server accepts \
             RestartAllContainers is not known"
        ),
        "{UNKNOWN_CAPABILITY}"
    );
    // Known nodes do not tell what the API server accepts.
    let nodes_only = ClusterFacts {
        restart_all_containers: None,
        ..node_facts(&[("a", true)])
    };
    let (d, w) = on_nodes(&[EN], &cfg, &nodes_only, &[]);
    assert_eq!(enabled(d).action, Action::Restart);
    assert_eq!(w, [UNKNOWN_CAPABILITY]);
    let rac = ann(&[EN, ("restart.jobset.dev/action", "RestartAllContainers")]);
    let (d, w) = run(&rac, None, None, &cfg, ClusterFacts::default());
    assert_eq!(enabled(d).action, Action::RestartAllContainers);
    assert!(w.is_empty(), "{w:?}");
    let cfg_rac = config("defaults: {action: RestartAllContainers}");
    let (d, w) = run(&ann(&[EN]), None, None, &cfg_rac, ClusterFacts::default());
    assert_eq!(enabled(d).action, Action::RestartAllContainers);
    assert!(w.is_empty(), "{w:?}");
}

#[test]
fn namespace_label_enables_and_jobset_disabled_wins() {
    let cfg = Config::default();
    assert!(matches!(
        run(
            &ann(&[]),
            None,
            Some(InPlace::Enabled),
            &cfg,
            ClusterFacts::default()
        )
        .0,
        Ok(Decision::Enabled(_))
    ));
    assert_eq!(
        run(
            &ann(&[DIS]),
            None,
            Some(InPlace::Enabled),
            &cfg,
            ClusterFacts::default()
        )
        .0
        .unwrap(),
        Decision::Disabled
    );
}

#[test]
fn namespace_label_beats_cluster_default() {
    let cfg = config("defaults: {inPlace: enabled}");
    assert!(matches!(
        run(&ann(&[]), None, None, &cfg, ClusterFacts::default()).0,
        Ok(Decision::Enabled(_))
    ));
    assert_eq!(
        run(
            &ann(&[]),
            None,
            Some(InPlace::Disabled),
            &cfg,
            ClusterFacts::default()
        )
        .0
        .unwrap(),
        Decision::Disabled
    );
}

#[test]
fn replicated_job_overrides_jobset() {
    let cfg = Config::default();
    let js = ann(&[
        EN,
        ("restart.jobset.dev/action", "Restart"),
        ("restart.jobset.dev/on-exit-codes", "42"),
    ]);
    let rj = ann(&[("restart.jobset.dev/on-exit-codes", "7")]);
    let r = enabled(run(&js, Some(&rj), None, &cfg, ClusterFacts::default()).0);
    assert_eq!(r.action, Action::Restart, "inherited from the JobSet");
    assert_eq!(r.exit_codes.values(), &[7], "replicated job wins");
    // and the replicated job may opt out of an enabled JobSet, or into a disabled one
    assert_eq!(
        run(&js, Some(&ann(&[DIS])), None, &cfg, ClusterFacts::default())
            .0
            .unwrap(),
        Decision::Disabled
    );
    assert!(matches!(
        run(
            &ann(&[DIS]),
            Some(&ann(&[EN])),
            None,
            &cfg,
            ClusterFacts::default()
        )
        .0,
        Ok(Decision::Enabled(_))
    ));
}

#[test]
fn jobset_keys_beat_preset_and_preset_beats_namespace_and_cluster() {
    let cfg = config(
        "defaults: {action: Restart, onExitCodes: '1', containers: [main]}\n\
         presets:\n  fast: {inPlace: enabled, action: RestartAllContainers, onExitCodes: '42,43'}\n",
    );
    let js = ann(&[("restart.jobset.dev/preset", "fast")]);
    let r = enabled(
        run(
            &js,
            None,
            Some(InPlace::Disabled),
            &cfg,
            ClusterFacts::default(),
        )
        .0,
    );
    assert_eq!(
        r.action,
        Action::RestartAllContainers,
        "preset beats cluster"
    );
    assert_eq!(r.exit_codes.values(), &[42, 43]);
    assert_eq!(
        r.containers.unwrap(),
        ["main"],
        "cluster fills what the preset leaves"
    );
    let js = ann(&[
        ("restart.jobset.dev/preset", "fast"),
        ("restart.jobset.dev/except-exit-codes", "0,1"),
    ]);
    let r = enabled(run(&js, None, None, &cfg, ClusterFacts::default()).0);
    assert_eq!(
        r.exit_codes.operator,
        Operator::NotIn,
        "explicit key beats the preset"
    );
    assert_eq!(r.exit_codes.values(), &[0, 1]);
}

#[test]
fn preset_on_replicated_job_replaces_jobset_preset() {
    let cfg =
        config("presets:\n  a: {inPlace: enabled, onExitCodes: '1'}\n  b: {onExitCodes: '2'}\n");
    let js = ann(&[("restart.jobset.dev/preset", "a")]);
    let rj = ann(&[("restart.jobset.dev/preset", "b")]);
    let (d, _) = run(
        &js,
        Some(&rj),
        Some(InPlace::Enabled),
        &cfg,
        ClusterFacts::default(),
    );
    assert_eq!(enabled(d).exit_codes.values(), &[2]);
}

#[test]
fn unknown_preset_is_an_error_listing_the_defined_ones() {
    let cfg = config("presets:\n  a: {}\n  b: {}\n");
    let (d, _) = run(
        &ann(&[("restart.jobset.dev/preset", "c")]),
        None,
        None,
        &cfg,
        ClusterFacts::default(),
    );
    assert_eq!(
        d.unwrap_err().to_string(),
        "restart.jobset.dev/preset: \"c\": no such preset; the cluster config defines: a, b"
    );
    let (d, _) = run(
        &ann(&[]),
        Some(&ann(&[("restart.jobset.dev/preset", "c")])),
        None,
        &Config::default(),
        ClusterFacts::default(),
    );
    assert_eq!(
        d.unwrap_err().to_string(),
        "replicated job \"workers\": restart.jobset.dev/preset: \"c\": no such preset; the cluster config defines no presets"
    );
}

#[test]
fn preset_named_while_disabled_warns() {
    let cfg = config("presets:\n  a: {onExitCodes: '1'}\n");
    let (d, w) = run(
        &ann(&[("restart.jobset.dev/preset", "a")]),
        None,
        None,
        &cfg,
        ClusterFacts::default(),
    );
    assert_eq!(d.unwrap(), Decision::Disabled);
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("resolves to disabled"), "{w:?}");
}

#[test]
fn action_follows_cluster_capability() {
    let no_rac = ClusterFacts {
        restart_all_containers: Some(false),
        ..Default::default()
    };
    let yes_rac = ClusterFacts {
        restart_all_containers: Some(true),
        ..Default::default()
    };
    let cfg = Config::default();
    assert_eq!(
        enabled(run(&ann(&[EN]), None, None, &cfg, no_rac.clone()).0).action,
        Action::Restart
    );
    assert_eq!(
        enabled(run(&ann(&[EN]), None, None, &cfg, yes_rac.clone()).0).action,
        Action::RestartAllContainers
    );
    // a config default that the cluster cannot honour degrades with a warning
    let cfg_rac = config("defaults: {action: RestartAllContainers}");
    let (d, w) = run(&ann(&[EN]), None, None, &cfg_rac, no_rac.clone());
    assert_eq!(enabled(d).action, Action::Restart);
    assert_eq!(w.len(), 1);
    // an explicit request that the cluster cannot honour is denied
    let js = ann(&[EN, ("restart.jobset.dev/action", "RestartAllContainers")]);
    let e = run(&js, None, None, &cfg, no_rac.clone()).0.unwrap_err();
    assert!(e.to_string().starts_with("restart.jobset.dev/action: \"RestartAllContainers\": this cluster's API server does not accept"), "{e}");
    let cfg_p = config("presets:\n  p: {action: RestartAllContainers}\n");
    let e = run(
        &ann(&[EN, ("restart.jobset.dev/preset", "p")]),
        None,
        None,
        &cfg_p,
        no_rac.clone(),
    )
    .0
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("restart.jobset.dev/preset: \"p\": this cluster"),
        "{e}"
    );
}

fn node_facts(nodes: &[(&str, bool)]) -> ClusterFacts {
    use crate::engine::nodes::NodeInfo;
    let nodes = nodes
        .iter()
        .map(|(pool, declares)| {
            Arc::new(NodeInfo {
                labels: BTreeMap::from([("pool".to_owned(), (*pool).to_owned())]),
                unschedulable: false,
                declares: *declares,
            })
        })
        .collect();
    ClusterFacts {
        restart_all_containers: Some(true),
        nodes: Some(Arc::new(Nodes::new(nodes))),
        ..Default::default()
    }
}

/// `resolve` for the JobSet annotations `js`, the config `cfg`, `facts` and a pod
/// template `nodeSelector`.
fn on_nodes(
    js: &[(&str, &str)],
    cfg: &Config,
    facts: &ClusterFacts,
    selector: &[(&str, &str)],
) -> (Result<Decision<'static>, AnnotationError>, Vec<String>) {
    let (js, cfg) = (kept(&ann(js)), kept(cfg));
    let mut w = Warnings::default();
    let memo = Memo::default();
    let inputs = Inputs {
        jobset: js,
        replicated_job: None,
        namespace: None,
        config: cfg,
        facts,
        node_selector: selector,
        memo: &memo,
    };
    let d = resolve(&inputs, &mut w);
    (d, w.finish())
}

const RAC: (&str, &str) = ("restart.jobset.dev/action", "RestartAllContainers");

#[test]
fn default_action_needs_every_schedulable_node_to_declare_the_feature() {
    let cfg = Config::default();
    let all = node_facts(&[("gpu", true), ("gpu", true)]);
    let (d, w) = on_nodes(&[EN], &cfg, &all, &[]);
    assert_eq!(enabled(d).action, Action::RestartAllContainers);
    assert!(w.is_empty(), "{w:?}");

    let one_lacks = node_facts(&[("gpu", true), ("gpu", true), ("cpu", false)]);
    let (d, w) = on_nodes(&[EN], &cfg, &one_lacks, &[]);
    assert_eq!(enabled(d).action, Action::Restart);
    assert_eq!(
        w,
        [
            "the action defaults to Restart, not RestartAllContainers: 2 of 3 schedulable \
          nodes declare the RestartAllContainersOnContainerExits feature, which \
          RestartAllContainers needs; set restart.jobset.dev/action to choose"
        ]
    );
    // an explicit ask runs on the nodes that have it
    let (d, w) = on_nodes(&[EN, RAC], &cfg, &one_lacks, &[]);
    assert_eq!(enabled(d).action, Action::RestartAllContainers);
    assert_eq!(w.len(), 1);
    assert!(
        w[0].starts_with("RestartAllContainers: only 2 of 3 schedulable nodes declare"),
        "{w:?}"
    );
    // an explicit Restart needs nothing from the nodes
    let (d, w) = on_nodes(
        &[EN, ("restart.jobset.dev/action", "Restart")],
        &cfg,
        &one_lacks,
        &[],
    );
    assert_eq!(enabled(d).action, Action::Restart);
    assert!(w.is_empty(), "{w:?}");
}

#[test]
fn a_node_pool_is_judged_by_its_own_nodes() {
    let cfg = Config::default();
    let facts = node_facts(&[("gpu", true), ("gpu", true), ("cpu", false)]);
    let (d, w) = on_nodes(&[EN], &cfg, &facts, &[("pool", "gpu")]);
    assert_eq!(enabled(d).action, Action::RestartAllContainers);
    assert!(w.is_empty(), "{w:?}");
    let (d, _) = on_nodes(&[EN], &cfg, &facts, &[("pool", "cpu")]);
    assert_eq!(enabled(d).action, Action::Restart);
    let e = on_nodes(&[EN, RAC], &cfg, &facts, &[("pool", "cpu")])
        .0
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "restart.jobset.dev/action: \"RestartAllContainers\": RestartAllContainers pods \
         need nodes that declare support for it: none of the 1 schedulable node matching \
         the pod template's nodeSelector declares the \
         RestartAllContainersOnContainerExits feature (their kubelets are older than 1.35 \
         or run with that feature gate off), so the scheduler would leave every pod \
         Pending; use Restart, or upgrade the kubelets or enable the gate on them"
    );
    // a pool without nodes: the cluster stands in (2 of 3)
    let (d, w) = on_nodes(&[EN], &cfg, &facts, &[("pool", "tpu")]);
    assert_eq!(enabled(d).action, Action::Restart);
    assert!(w[0].contains("2 of 3 schedulable nodes declare"), "{w:?}");
}

#[test]
fn no_node_declares_the_feature() {
    let cfg = Config::default();
    let none = node_facts(&[("a", false), ("b", false)]);
    let (d, w) = on_nodes(&[EN], &cfg, &none, &[]);
    assert_eq!(enabled(d).action, Action::Restart);
    assert!(w[0].contains("0 of 2 schedulable nodes declare"), "{w:?}");
    let e = on_nodes(&[EN, RAC], &cfg, &none, &[]).0.unwrap_err();
    assert!(
        e.to_string().starts_with(
            "restart.jobset.dev/action: \"RestartAllContainers\": RestartAllContainers \
             pods need nodes that declare support for it: none of the 2 schedulable nodes \
             declares"
        ),
        "{e}"
    );
    assert!(e.to_string().contains("use Restart"), "{e}");
    // via a preset: the preset is named
    let cfg_p = config("presets:\n  p: {action: RestartAllContainers}\n");
    let e = on_nodes(
        &[EN, ("restart.jobset.dev/preset", "p")],
        &cfg_p,
        &none,
        &[],
    )
    .0
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("restart.jobset.dev/preset: \"p\": RestartAllContainers pods"),
        "{e}"
    );
    // a cluster default degrades with a warning
    let cfg_rac = config("defaults: {action: RestartAllContainers}");
    let (d, w) = on_nodes(&[EN], &cfg_rac, &none, &[]);
    assert_eq!(enabled(d).action, Action::Restart);
    assert!(
        w[0].starts_with("the cluster default action RestartAllContainers cannot run here: 0 of 2"),
        "{w:?}"
    );
}

#[test]
fn without_nodes_the_api_server_decides() {
    let cfg = Config::default();
    let empty = node_facts(&[]);
    let (d, w) = on_nodes(&[EN], &cfg, &empty, &[]);
    assert_eq!(enabled(d).action, Action::RestartAllContainers);
    assert!(w.is_empty(), "{w:?}");
    let (d, _) = on_nodes(&[EN, RAC], &cfg, &empty, &[]);
    assert_eq!(enabled(d).action, Action::RestartAllContainers);
    // nodes not known at all (watch not synced): the same
    let unknown = ClusterFacts {
        restart_all_containers: Some(true),
        ..Default::default()
    };
    let (d, _) = on_nodes(&[EN], &cfg, &unknown, &[]);
    assert_eq!(enabled(d).action, Action::RestartAllContainers);
    // and the API server's "no" still wins over nodes that declare it
    let api_no = ClusterFacts {
        restart_all_containers: Some(false),
        ..node_facts(&[("a", true)])
    };
    let (d, w) = on_nodes(&[EN], &cfg, &api_no, &[]);
    assert_eq!(enabled(d).action, Action::Restart);
    assert!(w.is_empty(), "{w:?}");
}

#[test]
fn namespace_label_values() {
    let mut labels = BTreeMap::new();
    assert_eq!(namespace_default(None), (None, None));
    assert_eq!(namespace_default(Some(&labels)), (None, None));
    labels.insert(NAMESPACE_LABEL.to_owned(), "enabled".to_owned());
    assert_eq!(namespace_default(Some(&labels)).0, Some(InPlace::Enabled));
    labels.insert(NAMESPACE_LABEL.to_owned(), "on".to_owned());
    let (v, w) = namespace_default(Some(&labels));
    assert_eq!(v, None);
    assert!(w.unwrap().contains("is ignored"));
}
