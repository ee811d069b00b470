//! AdmissionReview v1 in and out: decode the review, dispatch by kind and operation to the
//! engine, encode the answer (base64 `patch`, warnings, audit annotations, denials).
//! No HTTP and no TLS here: the server hands in bytes and sends back bytes.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::engine::{
    self, ClusterFacts, Config, Denial, DenialReason, Environment, Mutation, ParentJobSet,
};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";
/// Warnings beyond this are folded into one line: the API server and kubectl show them all,
/// and a JobSet with hundreds of user-set containers should not produce a wall of text.
const MAX_WARNINGS: usize = 16;
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a> {
    #[serde(borrow)]
    uid: Cow<'a, str>,
    kind: Gvk<'a>,
    #[serde(borrow)]
    operation: Cow<'a, str>,
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    old_object: Option<&'a RawValue>,
    #[serde(default)]
    dry_run: Option<bool>,
}

#[derive(Deserialize)]
struct Gvk<'a> {
    #[serde(borrow, default)]
    group: Cow<'a, str>,
    #[serde(borrow, default)]
    kind: Cow<'a, str>,
}

/// Answers one review body.
pub fn review(
    body: &[u8],
    config: &Config,
    cluster: &dyn ClusterView,
) -> Result<Answer, BadReview> {
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
    let req = review.request.ok_or(BadReview::NoRequest)?;
    let namespace = req.namespace.as_deref().unwrap_or_default();

    let result = dispatch(&req, namespace, config, cluster);
    let (response, outcome, patch_ops, warnings, parent_unknown) = match result {
        Ok(m) => {
            let ops = m.patch.len();
            let n_warn = m.warnings.len();
            let unknown = m.parent_unknown;
            let outcome = if ops > 0 {
                Outcome::Patched
            } else {
                Outcome::Allowed
            };
            (allowed(&req.uid, m), outcome, ops, n_warn, unknown)
        }
        Err(d) => (denied(&req.uid, &d), Outcome::Denied, 0, 0, false),
    };
    let answer = json!({ "apiVersion": API_VERSION, "kind": KIND, "response": response });
    Ok(Answer {
        // Serializing a `Value` of strings, numbers and maps cannot fail.
        body: serde_json::to_vec(&answer).unwrap_or_default(),
        record: Record {
            uid: req.uid.into_owned(),
            kind: req.kind.kind.into_owned(),
            namespace: namespace.to_owned(),
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

fn dispatch(
    req: &RequestIn<'_>,
    namespace: &str,
    config: &Config,
    cluster: &dyn ClusterView,
) -> Result<Mutation, Denial> {
    let Some(object) = req.object else {
        return Ok(Mutation::default());
    };
    let is_jobset = req.kind.group == "jobset.x-k8s.io" && req.kind.kind == "JobSet";
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
    let labels = cluster.namespace_labels(namespace);
    let ctx = Environment {
        config,
        namespace_labels: labels.as_deref(),
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

fn allowed(uid: &str, m: Mutation) -> Value {
    let mut r = Map::new();
    r.insert("uid".into(), json!(uid));
    r.insert("allowed".into(), json!(true));
    if !m.patch.is_empty() {
        // The API documents `patch` as base64 of the JSON Patch; kube-core 5 writes a number
        // array instead, which is why the response is built here.
        let bytes = serde_json::to_vec(&m.patch).unwrap_or_default();
        r.insert("patchType".into(), json!("JSONPatch"));
        r.insert(
            "patch".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
        );
    }
    if !m.warnings.is_empty() {
        r.insert("warnings".into(), json!(fold_warnings(m.warnings)));
    }
    if let Some(summary) = m.summary {
        r.insert("auditAnnotations".into(), json!({ "applied": summary }));
    }
    Value::Object(r)
}

fn denied(uid: &str, d: &Denial) -> Value {
    let (code, reason) = status(d);
    json!({
        "uid": uid,
        "allowed": false,
        "status": { "status": "Failure", "code": code, "reason": reason, "message": clip(d.message.clone()) },
    })
}

/// The HTTP status code and reason of a denial, as the API server reports them.
fn status(d: &Denial) -> (u16, &'static str) {
    match d.reason {
        DenialReason::Invalid => (422, "Invalid"),
        DenialReason::BadRequest => (400, "BadRequest"),
    }
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

fn fold_warnings(mut w: Vec<String>) -> Vec<String> {
    if w.len() > MAX_WARNINGS {
        let more = w.len() - (MAX_WARNINGS - 1);
        w.truncate(MAX_WARNINGS - 1);
        w.push(format!("... and {more} more warnings"));
    }
    w
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}/{} {}: {} ({} ops, {} warnings)",
            self.uid,
            self.kind,
            self.namespace,
            self.name,
            self.operation,
            self.outcome.as_str(),
            self.patch_ops,
            self.warnings
        )
    }
}
