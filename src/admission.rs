//! AdmissionReview v1 in and out, in three steps: [`decode`] the review (borrowed),
//! [`decide`] by kind and operation with the engine, encode the typed [`Response`] (base64
//! `patch`, warnings, audit annotations, denials). The `mutate` preview calls the same steps.
//! No HTTP and no TLS here: the server hands in bytes and sends back bytes.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::engine::{
    self, ClusterFacts, Config, Denial, DenialReason, Environment, Mutation, ParentJobSet, Patch,
};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";
/// Longest message (denial or HTTP 400 reason) sent back, in bytes. Parser errors quote what
/// they did not expect (a 1 MiB string where a list belongs), and an unknown annotation key
/// is named in full: without a cap a client could make the API server relay, and every log
/// record, a message as large as its request.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// What the request path may know about the cluster; filled by the `cluster` module's
/// caches, or empty when the webhook runs without credentials.
pub trait ClusterView: Send + Sync {
    fn namespace_labels(&self, namespace: &str) -> Option<Arc<BTreeMap<String, String>>>;
    fn parent_jobset(&self, namespace: &str, name: &str) -> Option<ParentJobSet>;
    fn facts(&self) -> ClusterFacts;
}

/// No cluster: namespace defaults are unknown, pods have no known parent.
pub struct Offline;

impl ClusterView for Offline {
    fn namespace_labels(&self, _: &str) -> Option<Arc<BTreeMap<String, String>>> {
        None
    }
    fn parent_jobset(&self, _: &str, _: &str) -> Option<ParentJobSet> {
        None
    }
    fn facts(&self) -> ClusterFacts {
        ClusterFacts::default()
    }
}

/// A body that is not an AdmissionReview. The server answers HTTP 400 with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadReview {
    #[error("the body is not valid JSON: {0}")]
    NotJson(String),
    #[error("the body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    NotAReview(String),
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed without a patch.
    Allowed,
    /// Allowed with a patch.
    Patched,
    /// Refused (invalid annotations).
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Patched => "patched",
            Self::Denied => "denied",
        }
    }
}

/// What happened, for the server's log line and metrics.
#[derive(Clone, Debug)]
pub struct Record {
    pub uid: String,
    /// `JobSet`, `Pod` or whatever kind was sent.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub operation: String,
    pub dry_run: bool,
    pub outcome: Outcome,
    pub patch_ops: usize,
    pub warnings: usize,
    /// A pod whose parent JobSet was not in the cache.
    pub parent_unknown: bool,
}

/// The encoded AdmissionReview answer plus its record.
pub struct Answer {
    pub body: Vec<u8>,
    pub record: Record,
}

// The input is borrowed, not kube's `AdmissionReview<DynamicObject>`: that type builds a full
// `Value` tree of `object`, `oldObject`, `userInfo` and `options`, while the engine reads only
// the few fields it needs from the raw `object` and skips the rest. That is why large reviews
// cost the server 1.7-3.4x less CPU than a full parse; see docs/BENCHMARKS.md.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<'a> {
    #[serde(borrow)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    request: Option<RequestIn<'a>>,
}

/// The `request` of an AdmissionReview, borrowed from the body: `object` and `oldObject`
/// stay raw JSON for the engine.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestIn<'a> {
    #[serde(borrow)]
    pub uid: Cow<'a, str>,
    pub kind: Gvk<'a>,
    #[serde(borrow)]
    pub operation: Cow<'a, str>,
    #[serde(borrow, default)]
    pub namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub old_object: Option<&'a RawValue>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// The group and kind of the reviewed object (the version does not matter here).
#[derive(Deserialize)]
pub struct Gvk<'a> {
    #[serde(borrow, default)]
    pub group: Cow<'a, str>,
    #[serde(borrow, default)]
    pub kind: Cow<'a, str>,
}

/// The API group of the JobSets the webhook mutates.
pub const JOBSET_GROUP: &str = "jobset.x-k8s.io";

impl<'a> RequestIn<'a> {
    /// A CREATE of `object` (a JobSet with [`JOBSET_GROUP`], a Pod with group `""`) in
    /// `namespace`, as if the API server had sent it.
    pub fn create(group: &'a str, kind: &'a str, namespace: &'a str, object: &'a RawValue) -> Self {
        Self {
            uid: Cow::Borrowed(""),
            kind: Gvk {
                group: Cow::Borrowed(group),
                kind: Cow::Borrowed(kind),
            },
            operation: Cow::Borrowed("CREATE"),
            namespace: Some(Cow::Borrowed(namespace)),
            name: None,
            object: Some(object),
            old_object: None,
            dry_run: None,
        }
    }
}

/// Which webhook registration sent a request, told by the path the API server called: each
/// registration's selectors establish facts the review can rely on (the registrations are in
/// manifests/base/mutatingwebhookconfiguration.yaml).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Via {
    /// `/mutate`: nothing beyond the request itself.
    #[default]
    Mutate,
    /// `/mutate/namespace-default`: the registration's namespaceSelector matched
    /// `restart.jobset.dev/in-place In (enabled, true)` when the API server admitted the
    /// request, so the namespace opted in whatever the webhook's namespace cache shows.
    NamespaceDefault,
}

/// Answers one review body: [`decode`], [`decide`], encode.
pub fn review(
    body: &[u8],
    config: &Config,
    cluster: &dyn ClusterView,
) -> Result<Answer, ReviewFailed> {
    review_via(body, config, cluster, Via::Mutate)
}

/// [`review`] of a request that came through the registration `via`.
pub fn review_via(
    body: &[u8],
    config: &Config,
    cluster: &dyn ClusterView,
    via: Via,
) -> Result<Answer, ReviewFailed> {
    let req = decode(body)?;
    // The server's `review{uid}` span (a no-op outside one).
    tracing::Span::current().record("uid", &*req.uid);
    let decision = decide_via(&req, config, cluster, via);
    encode(req, decision).map_err(|e| ReviewFailed::Encode(e.to_string()))
}

/// Why [`review`] has no answer to send.
#[derive(Debug, thiserror::Error)]
pub enum ReviewFailed {
    /// The caller sent something that is not a review (answered 400).
    #[error(transparent)]
    Bad(#[from] BadReview),
    /// Our answer could not be serialized (answered 500 and counted). Not reachable with
    /// the types in [`ReviewOut`] (strings, numbers, a patch of `Value`s); typed so that a
    /// future field that can fail is not answered as an empty 200.
    #[error("encoding the answer failed: {0}")]
    Encode(String),
}

/// The `request` of a review body, or why the body is not a review.
pub fn decode(body: &[u8]) -> Result<RequestIn<'_>, BadReview> {
    let text =
        std::str::from_utf8(body).map_err(|e| BadReview::NotJson(format!("not UTF-8: {e}")))?;
    let review: ReviewIn<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            BadReview::NotAReview(clip(e.to_string()))
        } else {
            BadReview::NotJson(clip(e.to_string()))
        }
    })?;
    let api_version = review.api_version.as_deref().unwrap_or_default();
    let kind = review.kind.as_deref().unwrap_or_default();
    if api_version != API_VERSION || kind != KIND {
        return Err(BadReview::NotAReview(clip(format!(
            "apiVersion {api_version:?} and kind {kind:?}; expected {API_VERSION:?} and {KIND:?}"
        ))));
    }
    review.request.ok_or(BadReview::NoRequest)
}

/// What the engine makes of a request: which kinds and operations it sees, with the cluster's
/// namespace labels, facts and (for pods) parent JobSets. Anything else is allowed unchanged.
pub fn decide(
    req: &RequestIn<'_>,
    config: &Config,
    cluster: &dyn ClusterView,
) -> Result<Mutation, Denial> {
    decide_via(req, config, cluster, Via::Mutate)
}

/// [`decide`] for a request that came through the registration `via`.
pub fn decide_via(
    req: &RequestIn<'_>,
    config: &Config,
    cluster: &dyn ClusterView,
    via: Via,
) -> Result<Mutation, Denial> {
    let Some(object) = req.object else {
        return Ok(Mutation::default());
    };
    let namespace = req.namespace.as_deref().unwrap_or_default();
    let is_jobset = req.kind.group == JOBSET_GROUP && req.kind.kind == "JobSet";
    let is_pod = req.kind.group.is_empty() && req.kind.kind == "Pod";
    if !(is_jobset && config.targets.jobsets || is_pod && config.targets.pods) {
        return Ok(Mutation::default());
    }
    // Only a JobSet UPDATE can drop what CREATE added; a pod's containers are immutable.
    let old_object = match (req.operation.as_ref(), req.old_object) {
        ("CREATE", _) => None,
        ("UPDATE", Some(old)) if is_jobset => Some(old),
        _ => return Ok(Mutation::default()),
    };
    // The namespace cache is asked only where no registration has decided: a namespace
    // label `disabled` under a cluster-wide default, and pods.
    let namespace_opted_in = via == Via::NamespaceDefault;
    let labels = if namespace_opted_in {
        None
    } else {
        cluster.namespace_labels(namespace)
    };
    let ctx = Environment {
        config,
        namespace_labels: labels.as_deref(),
        namespace_opted_in,
        facts: cluster.facts(),
    };
    if let Some(old) = old_object {
        engine::update_jobset(object.get(), old.get(), &ctx)
    } else if is_jobset {
        engine::mutate_jobset(object.get(), &ctx)
    } else {
        Ok(engine::mutate_pod(object.get(), &ctx, &|name| {
            cluster.parent_jobset(namespace, name)
        }))
    }
}

/// The encoded answer and its record.
fn encode(
    req: RequestIn<'_>,
    decision: Result<Mutation, Denial>,
) -> Result<Answer, serde_json::Error> {
    let (outcome, patch_ops, warnings, parent_unknown) = match &decision {
        Ok(m) if m.patch.is_empty() => (Outcome::Allowed, 0, m.warnings.len(), m.parent_unknown),
        Ok(m) => (
            Outcome::Patched,
            m.patch.len(),
            m.warnings.len(),
            m.parent_unknown,
        ),
        Err(_) => (Outcome::Denied, 0, 0, false),
    };
    let out = ReviewOut {
        api_version: API_VERSION,
        kind: KIND,
        response: Response::new(&req.uid, decision),
    };
    let body = serde_json::to_vec(&out)?;
    Ok(Answer {
        body,
        record: Record {
            uid: req.uid.into_owned(),
            kind: req.kind.kind.into_owned(),
            namespace: req.namespace.map(Cow::into_owned).unwrap_or_default(),
            name: req.name.map(Cow::into_owned).unwrap_or_default(),
            operation: req.operation.into_owned(),
            dry_run: req.dry_run.unwrap_or(false),
            outcome,
            patch_ops,
            warnings,
            parent_unknown,
        },
    })
}

/// The AdmissionReview sent back (`admission.k8s.io/v1`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Response<'a>,
}

/// The `response` of an AdmissionReview (`admission.k8s.io/v1` `AdmissionResponse`), in the
/// order its fields are written; empty ones are left out.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Response<'a> {
    pub uid: &'a str,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// `JSONPatch` exactly when there is a patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// Written as base64 of the RFC 6902 document, as the API documents it (kube-core 5 would
    /// write a number array).
    #[serde(
        skip_serializing_if = "Patch::is_empty",
        serialize_with = "base64_json"
    )]
    pub patch: Patch,
    /// As the engine folded them: at most [`engine::warnings::MAX_WARNINGS`], the last one
    /// counting the rest.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_annotations: Option<AuditAnnotations>,
}

/// The `status` of a denial (a `metav1.Status`).
#[derive(Debug, Serialize)]
pub struct Status {
    pub status: &'static str,
    pub code: u16,
    pub reason: &'static str,
    /// At most [`MAX_MESSAGE_BYTES`], see [`clip`].
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct AuditAnnotations {
    /// The engine's summary of what it set.
    pub applied: String,
}

impl<'a> Response<'a> {
    /// The answer to request `uid` for the engine's `decision`.
    pub fn new(uid: &'a str, decision: Result<Mutation, Denial>) -> Self {
        match decision {
            Ok(m) => Self {
                uid,
                allowed: true,
                status: None,
                patch_type: (!m.patch.is_empty()).then_some("JSONPatch"),
                patch: m.patch,
                warnings: m.warnings,
                audit_annotations: m.summary.map(|applied| AuditAnnotations { applied }),
            },
            Err(d) => {
                let (code, reason) = status(&d);
                Self {
                    uid,
                    allowed: false,
                    status: Some(Status {
                        status: "Failure",
                        code,
                        reason,
                        message: clip(d.message),
                    }),
                    patch_type: None,
                    patch: Patch::default(),
                    warnings: Vec::new(),
                    audit_annotations: None,
                }
            }
        }
    }
}

/// The HTTP code and `metav1.StatusReason` a denial is reported with.
fn status(d: &Denial) -> (u16, &'static str) {
    match d.reason {
        DenialReason::Invalid => (422, "Invalid"),
        DenialReason::BadRequest => (400, "BadRequest"),
    }
}

fn base64_json<S: Serializer>(patch: &Patch, serializer: S) -> Result<S::Ok, S::Error> {
    let json = serde_json::to_vec(patch).map_err(serde::ser::Error::custom)?;
    let mut token = String::with_capacity(json.len().div_ceil(3) * 4 + 2);
    token.push('"');
    base64::engine::general_purpose::STANDARD.encode_string(&json, &mut token);
    token.push('"');
    // Base64 never needs a JSON escape: handing serde_json the finished string token skips
    // its per-byte escape pass, the largest single cost of encoding a small answer
    // (docs/BENCHMARKS.md §2).
    RawValue::from_string(token)
        .map_err(serde::ser::Error::custom)?
        .serialize(serializer)
}

/// Cuts `message` to [`MAX_MESSAGE_BYTES`] (at a character boundary), saying how long it was.
pub fn clip(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let total = message.len();
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(&format!("... (message cut, {total} bytes)"));
    message
}
