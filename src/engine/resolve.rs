//! Resolution (README: Opting in): for one replicated job (or one pod), decide whether in-place
//! restart applies and with which rule. Precedence, highest first: replicated-job annotations,
//! JobSet annotations, the preset named by them, the namespace label, the cluster config.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::annotations::{
    ACTION, Action, AnnotationError, Annotations, ExitCodes, IN_PLACE, InPlace, PRESET, Scope,
    Settings, quote,
};
use super::config::Config;
use super::nodes::{FEATURE, Memo, Nodes, Support};
use super::warnings::Warnings;

/// What the webhook knows about the cluster it runs in. `None` means "not probed" (offline
/// `mutate`, `serve` without credentials, or a probe that has not answered); the engine then
/// trusts the config, and without one defaults the action to `Restart`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    /// Whether the API server accepts the `RestartAllContainers` action.
    pub restart_all_containers: Option<bool>,
    /// Whether the installed JobSet CRD keeps `restartPolicyRules` (older CRDs prune them).
    pub jobset_crd_keeps_rules: Option<bool>,
    /// The nodes and which of them declare `RestartAllContainersOnContainerExits`; `None`
    /// until the node watch has listed them (or where nodes cannot be read).
    pub nodes: Option<Arc<Nodes>>,
}

/// The label on a Namespace that sets the default for JobSets in it.
pub const NAMESPACE_LABEL: &str = IN_PLACE;

/// The rule to inject into one pod spec. The container list is borrowed from the annotation,
/// preset or config that wrote it: one list that applies to many replicated jobs is never
/// copied per replicated job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved<'a> {
    pub action: Action,
    pub exit_codes: ExitCodes,
    /// `None`: every regular container. `Some`: exactly the named containers and sidecars.
    pub containers: Option<&'a [String]>,
    /// Where `containers` was written, so that a name that matches nothing can be blamed on
    /// the annotation, preset or config that wrote it.
    pub containers_from: ContainersFrom,
}

/// The source of a container list, highest precedence first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ContainersFrom {
    /// No list: every regular container.
    #[default]
    Nowhere,
    ReplicatedJob,
    JobSet,
    /// The preset `name`, named at `scope`.
    Preset {
        name: String,
        scope: Scope,
    },
    Config,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision<'a> {
    Disabled,
    Enabled(Resolved<'a>),
}

/// The inputs of one resolution: what a decision borrows (`'a`: annotations, config) and
/// what it only reads (`'n`: the node selector and the review's node answers).
pub struct Inputs<'a, 'n> {
    pub jobset: &'a Annotations,
    /// `None` for a pod whose replicated job is unknown, or has no annotations.
    pub replicated_job: Option<(&'a str, &'a Annotations)>,
    pub namespace: Option<InPlace>,
    pub config: &'a Config,
    pub facts: &'n ClusterFacts,
    /// The pod template's (or pod's) `nodeSelector`: the node pool it runs in.
    pub node_selector: &'n [(&'n str, &'n str)],
    /// The node answers of this review, per `nodeSelector`.
    pub memo: &'n Memo,
}

/// Reads the namespace default: `enabled` when the API server's namespaceSelector already
/// established it (`opted_in`, see [`crate::engine::Environment`]), else from the namespace's
/// labels. A label value that is not one of ours is the admin's mistake, not the user's: it
/// is ignored with a warning.
pub fn namespace_default(
    labels: Option<&BTreeMap<String, String>>,
    opted_in: bool,
) -> (Option<InPlace>, Option<String>) {
    if opted_in {
        return (Some(InPlace::Enabled), None);
    }
    let Some(value) = labels.and_then(|l| l.get(NAMESPACE_LABEL)) else {
        return (None, None);
    };
    match InPlace::parse(value) {
        Some(v) => (Some(v), None),
        None => (
            None,
            Some(format!(
                "namespace label {NAMESPACE_LABEL}={} is ignored: allowed values are {}",
                quote(value),
                InPlace::ALLOWED
            )),
        ),
    }
}

/// The preset that applies (named on the replicated job, else on the JobSet) and where it
/// was named, or the error for a preset the config does not define.
#[allow(clippy::type_complexity)]
fn preset<'a>(
    inputs: &Inputs<'a, '_>,
) -> Result<(Option<&'a str>, Option<Scope>, Option<&'a Settings>), AnnotationError> {
    let rjob = inputs.replicated_job.map(|(_, a)| a);
    // A preset named on the replicated job replaces one named on the JobSet.
    let (preset_name, preset_scope) = match rjob.and_then(|a| a.preset.as_deref()) {
        Some(name) => (
            Some(name),
            inputs
                .replicated_job
                .map(|(n, _)| Scope::ReplicatedJob(n.to_owned())),
        ),
        None => (inputs.jobset.preset.as_deref(), Some(Scope::JobSet)),
    };
    let preset: Option<&Settings> = match preset_name {
        None => None,
        Some(name) => match inputs.config.presets.get(name) {
            Some(p) => Some(p),
            None => {
                let defined: Vec<&str> = inputs.config.presets.keys().map(String::as_str).collect();
                let problem = if defined.is_empty() {
                    "no such preset; the cluster config defines no presets".to_owned()
                } else {
                    format!(
                        "no such preset; the cluster config defines: {}",
                        defined.join(", ")
                    )
                };
                return Err(AnnotationError::new(
                    &preset_scope.unwrap_or(Scope::JobSet),
                    PRESET,
                    name,
                    problem,
                ));
            }
        },
    };
    Ok((preset_name, preset_scope, preset))
}

/// The explicit `in-place` (replicated job, JobSet, preset, highest first), and the value
/// after the namespace label and the cluster config.
fn in_place_of(inputs: &Inputs<'_, '_>, preset: Option<&Settings>) -> (Option<InPlace>, InPlace) {
    let explicit = [
        inputs.replicated_job.map(|(_, a)| &a.settings),
        Some(&inputs.jobset.settings),
        preset,
    ];
    let explicit_in_place = explicit.iter().flatten().find_map(|s| s.in_place);
    let in_place = explicit_in_place
        .or(inputs.namespace)
        .or(inputs.config.defaults.in_place)
        .unwrap_or(InPlace::Disabled);
    (explicit_in_place, in_place)
}

/// Whether in-place restart applies to this replicated job: [`resolve`]'s first step alone,
/// with no node lookup and no warning, so that a JobSet can be measured against its bounds
/// before any replicated job is planned. The error is [`resolve`]'s for the same inputs.
pub fn enabled(inputs: &Inputs<'_, '_>) -> Result<bool, AnnotationError> {
    let (_, _, preset) = preset(inputs)?;
    Ok(in_place_of(inputs, preset).1 == InPlace::Enabled)
}

/// Resolves the decision for one replicated job. Warnings are appended to `warnings`.
pub fn resolve<'a>(
    inputs: &Inputs<'a, '_>,
    warnings: &mut Warnings,
) -> Result<Decision<'a>, AnnotationError> {
    let rjob = inputs.replicated_job.map(|(_, a)| a);
    let (preset_name, preset_scope, preset) = preset(inputs)?;

    // The explicit layers, in precedence order; `None` entries are skipped.
    let explicit: [Option<&Settings>; 3] = [
        rjob.map(|a| &a.settings),
        Some(&inputs.jobset.settings),
        preset,
    ];
    let pick = |f: &dyn Fn(&Settings) -> bool| explicit.iter().flatten().copied().find(|s| f(s));

    let (explicit_in_place, in_place) = in_place_of(inputs, preset);
    if in_place == InPlace::Disabled {
        // Naming a preset while a default disables in-place restart is likely a surprise;
        // an explicit `disabled` is not.
        if let (Some(name), None) = (preset_name, explicit_in_place) {
            warnings.push(format!(
                "preset {} is named, but in-place restart resolves to disabled here (namespace \
                 or cluster default); set {IN_PLACE}: enabled to opt in",
                quote(name)
            ));
        }
        return Ok(Decision::Disabled);
    }

    let explicit_action = pick(&|s| s.action.is_some()).and_then(|s| s.action);
    // Which annotation asked for the action, for a denial's message.
    let asked_by = || {
        if rjob.and_then(|a| a.settings.action).is_some() || inputs.jobset.settings.action.is_some()
        {
            let scope = match rjob.and_then(|a| a.settings.action) {
                Some(_) => inputs
                    .replicated_job
                    .map(|(n, _)| Scope::ReplicatedJob(n.to_owned())),
                None => Some(Scope::JobSet),
            };
            (
                scope.unwrap_or(Scope::JobSet),
                ACTION,
                Action::RestartAllContainers.as_str(),
            )
        } else {
            (
                preset_scope.clone().unwrap_or(Scope::JobSet),
                PRESET,
                preset_name.unwrap_or_default(),
            )
        }
    };
    let api = inputs.facts.restart_all_containers;
    // No nodes (a fresh cluster, every pool scaled to zero) or nodes not known: the nodes
    // that will run the pods are unknown, and the API server's answer decides alone.
    let nodes = inputs
        .facts
        .nodes
        .as_ref()
        .map(|n| inputs.memo.support(n, inputs.node_selector))
        .filter(|s| s.nodes > 0);
    let action = match (explicit_action, api, nodes) {
        (Some(Action::RestartAllContainers), Some(false), _) => {
            let (scope, key, value) = asked_by();
            return Err(AnnotationError::new(
                &scope,
                key,
                value,
                "this cluster's API server does not accept the RestartAllContainers action (it \
                 needs Kubernetes 1.35+ with the RestartAllContainersOnContainerExits feature \
                 gate, on by default from 1.36), so every child Job would be rejected; use \
                 Restart",
            ));
        }
        (Some(Action::RestartAllContainers), _, Some(s)) if s.declaring == 0 => {
            let (scope, key, value) = asked_by();
            return Err(AnnotationError::new(
                &scope,
                key,
                value,
                format!(
                    "{}: none of {} declares the {FEATURE} feature (their kubelets are older \
                     than 1.35 or run with that feature gate off), so the scheduler would \
                     leave every pod Pending; use Restart, or upgrade the kubelets or enable \
                     the gate on them",
                    NODES_NEED,
                    nodes_phrase(&s)
                ),
            ));
        }
        (Some(a), _, _) => {
            if a == Action::RestartAllContainers {
                warn_partial(nodes, warnings);
            }
            a
        }
        (None, api, nodes) => match (inputs.config.defaults.action, api, nodes) {
            (Some(Action::RestartAllContainers), Some(false), _) => {
                warnings.push(
                    "the cluster default action RestartAllContainers is not supported by this \
                     API server; using Restart"
                        .to_owned(),
                );
                Action::Restart
            }
            (Some(Action::RestartAllContainers), _, Some(s)) if s.declaring == 0 => {
                warnings.push_once(format!(
                    "the cluster default action RestartAllContainers cannot run here: {} \
                         declare the {FEATURE} feature; using Restart",
                    s.describe()
                ));
                Action::Restart
            }
            (Some(a), _, _) => {
                if a == Action::RestartAllContainers {
                    warn_partial(nodes, warnings);
                }
                a
            }
            (None, Some(false), _) => Action::Restart,
            (None, _, Some(s)) if !s.all() => {
                warnings.push_once(format!(
                    "the action defaults to Restart, not RestartAllContainers: {} declare{} \
                         the {FEATURE} feature, which RestartAllContainers needs; set {ACTION} \
                         to choose",
                    s.describe(),
                    if s.declaring == 1 { "s" } else { "" }
                ));
                Action::Restart
            }
            // Nothing says whether the API server accepts RestartAllContainers (no cluster,
            // or its probe has not answered): Restart, which every supported version accepts
            // (RestartAllContainers is off by default on 1.35), said once.
            (None, None, _) => {
                warnings.push_once(UNKNOWN_CAPABILITY.to_owned());
                Action::Restart
            }
            (None, Some(true), _) => Action::RestartAllContainers,
        },
    };

    let exit_codes = pick(&|s| s.exit_codes.is_some())
        .and_then(|s| s.exit_codes.clone())
        .or_else(|| inputs.config.defaults.exit_codes.clone())
        .unwrap_or_else(ExitCodes::any_failure);
    let layer = explicit
        .iter()
        .position(|s| s.is_some_and(|s| s.containers.is_some()));
    let (containers, containers_from) = match layer {
        Some(i) => (
            explicit
                .get(i)
                .copied()
                .flatten()
                .and_then(|s| s.containers.as_deref()),
            match i {
                0 => ContainersFrom::ReplicatedJob,
                1 => ContainersFrom::JobSet,
                _ => ContainersFrom::Preset {
                    name: preset_name.unwrap_or_default().to_owned(),
                    scope: preset_scope.unwrap_or(Scope::JobSet),
                },
            },
        ),
        None => match inputs.config.defaults.containers.as_deref() {
            Some(c) => (Some(c), ContainersFrom::Config),
            None => (None, ContainersFrom::Nowhere),
        },
    };

    Ok(Decision::Enabled(Resolved {
        action,
        exit_codes,
        containers,
        containers_from,
    }))
}

/// The warning of a default action chosen without knowing the API server's capability.
pub const UNKNOWN_CAPABILITY: &str = "the action defaults to Restart: whether this cluster's \
     API server accepts RestartAllContainers is not known (no cluster connection, or its \
     capability probe has not answered), and Restart is accepted by every supported version; \
     set restart.jobset.dev/action to choose";

/// The start of a denial for lack of nodes.
const NODES_NEED: &str = "RestartAllContainers pods need nodes that declare support for it";

/// `the 3 schedulable nodes` / `the 2 schedulable nodes matching the pod template's
/// nodeSelector`.
fn nodes_phrase(s: &Support) -> String {
    format!(
        "the {} schedulable node{}{}",
        s.nodes,
        if s.nodes == 1 { "" } else { "s" },
        if s.pool {
            " matching the pod template's nodeSelector"
        } else {
            ""
        }
    )
}

/// RestartAllContainers where only some of the nodes can run it: allowed (the scheduler
/// places the pods on those), said once.
fn warn_partial(nodes: Option<Support>, warnings: &mut Warnings) {
    if let Some(s) = nodes.filter(|s| !s.all()) {
        warnings.push_once(format!(
            "RestartAllContainers: only {} declare{} the {FEATURE} feature; the scheduler \
                 places these pods on those nodes only",
            s.describe(),
            if s.declaring == 1 { "s" } else { "" }
        ));
    }
}

#[cfg(test)]
mod tests;
