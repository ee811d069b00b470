//! `mutate`: the offline preview. Reads JobSets, Pods, Lists of them or AdmissionReviews
//! (YAML or JSON, several documents) and prints what the webhook would store, or the patch.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::admission::{self, ClusterView};
use crate::engine::{ClusterFacts, Config, Mutation, ParentJobSet, Targets};

#[derive(clap::Args, Debug)]
pub struct MutateArgs {
    /// File to read, or `-` for standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: String,
    /// What to print: the mutated objects (yaml, json) or the JSON Patch (patch).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Yaml)]
    pub output: Output,
    /// Cluster config file standing in for the one `serve --config` would read.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Labels of the objects' namespace, e.g. `restart.jobset.dev/in-place=enabled`.
    #[arg(long = "namespace-labels", value_parser = parse_labels)]
    pub namespace_labels: Option<Labels>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Yaml,
    Json,
    Patch,
}

pub type Labels = BTreeMap<String, String>;

fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut out = Labels::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not key=value; expected k=v[,k=v...]"))?;
        out.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(out)
}

pub fn run(args: MutateArgs) -> anyhow::Result<ExitCode> {
    let text = if args.file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file))?
    };
    let mut config = match &args.config {
        Some(p) => {
            let t =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Config::from_yaml(&t, &p.display().to_string())?
        }
        None => Config::default(),
    };
    // A preview shows both targets whatever the config enables for `serve`.
    config.targets = Targets {
        jobsets: true,
        pods: true,
    };

    let docs = parse_documents(&text).with_context(|| format!("parsing {}", args.file))?;
    let preview = Preview::new(&docs, &config, args.namespace_labels.unwrap_or_default());
    let mut results = Vec::with_capacity(docs.len());
    let mut failed = false;
    for doc in &docs {
        let label = describe(doc);
        match preview.one(doc) {
            Ok(p) => {
                for w in &p.warnings {
                    eprintln!("Warning: {label}: {w}");
                }
                results.push(p);
            }
            Err(message) => {
                eprintln!("error: {label}: {message}");
                failed = true;
            }
        }
    }
    if failed {
        return Ok(ExitCode::FAILURE);
    }
    let items: Vec<Value> = results
        .into_iter()
        .map(|p| match args.output {
            Output::Patch => p.patch,
            _ => p.object,
        })
        .collect();
    let out = match <[Value; 1]>::try_from(items) {
        Ok([one]) => one,
        Err(items) => json!({ "apiVersion": "v1", "kind": "List", "items": items }),
    };
    match args.output {
        Output::Yaml => print!("{}", serde_saphyr::to_string(&out).context("writing YAML")?),
        Output::Json | Output::Patch => println!("{}", serde_json::to_string_pretty(&out)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// Splits the input into objects: a JSON stream or YAML documents; `List`s are flattened.
pub fn parse_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let trimmed = text.trim_start();
    let raw: Vec<Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()?
    } else {
        serde_saphyr::from_multiple::<Value>(text)?
    };
    let mut out = Vec::new();
    for doc in raw {
        match doc {
            Value::Null => {}
            Value::Object(ref o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                if let Some(Value::Array(items)) = o.get("items") {
                    out.extend(items.iter().cloned());
                }
            }
            Value::Array(items) => out.extend(items),
            other => out.push(other),
        }
    }
    if out.is_empty() {
        bail!("no objects in the input");
    }
    Ok(out)
}

fn describe(doc: &Value) -> String {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("object");
    let name = doc
        .pointer("/metadata/name")
        .or_else(|| doc.pointer("/request/name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind} {name}")
    }
}

/// One previewed document: the object as the API server would store it, the warnings, and
/// the RFC 6902 patch that turned the input into it.
struct Previewed {
    object: Value,
    warnings: Vec<String>,
    patch: Value,
}

impl Previewed {
    /// `object` with the patch of `answer` applied; a denial's message is the error.
    fn from_answer(mut object: Value, answer: admission::Response<'_>) -> Result<Self, String> {
        if let Some(status) = answer.status {
            return Err(status.message);
        }
        answer.patch.apply(&mut object).map_err(internal)?;
        let patch = serde_json::to_value(&answer.patch).map_err(internal)?;
        Ok(Self {
            object,
            warnings: answer.warnings,
            patch,
        })
    }

    /// `object` with `m` applied, warnings as the engine wrote them.
    fn from_mutation(mut object: Value, m: Mutation) -> Result<Self, String> {
        m.patch.apply(&mut object).map_err(internal)?;
        let patch = serde_json::to_value(&m.patch).map_err(internal)?;
        Ok(Self {
            object,
            warnings: m.warnings,
            patch,
        })
    }
}

fn internal(e: impl std::fmt::Display) -> String {
    format!("internal error: the computed patch does not apply: {e}")
}

/// The documents' context: JobSets in the input serve as the parents of Pods in it.
struct Preview<'a> {
    config: &'a Config,
    labels: Arc<Labels>,
    parents: BTreeMap<(String, String), ParentJobSet>,
}

impl ClusterView for Preview<'_> {
    fn namespace_labels(&self, _: &str) -> Option<Arc<Labels>> {
        Some(self.labels.clone())
    }
    fn parent_jobset(&self, namespace: &str, name: &str) -> Option<ParentJobSet> {
        self.parents
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }
    fn facts(&self) -> ClusterFacts {
        ClusterFacts::default()
    }
}

/// Offline, a pod without its JobSet in the input can only use the defaults.
struct DefaultParents<'p, 'a>(&'p Preview<'a>);

impl ClusterView for DefaultParents<'_, '_> {
    fn namespace_labels(&self, namespace: &str) -> Option<Arc<Labels>> {
        self.0.namespace_labels(namespace)
    }
    fn parent_jobset(&self, namespace: &str, name: &str) -> Option<ParentJobSet> {
        Some(self.0.parent_jobset(namespace, name).unwrap_or_default())
    }
    fn facts(&self) -> ClusterFacts {
        self.0.facts()
    }
}

impl<'a> Preview<'a> {
    fn new(docs: &[Value], config: &'a Config, labels: Labels) -> Self {
        let mut parents = BTreeMap::new();
        for d in docs.iter().filter(|d| kind_of(d) == Some("JobSet")) {
            let ns = d
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default");
            let name = d
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if let Ok(p) = ParentJobSet::from_jobset_json(&d.to_string()) {
                parents.insert((ns.to_owned(), name.to_owned()), p);
            }
        }
        Self {
            config,
            labels: Arc::new(labels),
            parents,
        }
    }

    /// A JobSet or Pod is previewed as the CREATE the webhook would see (whatever its
    /// apiVersion); an AdmissionReview as the webhook answers it.
    fn one(&self, doc: &Value) -> Result<Previewed, String> {
        let (group, kind) = match kind_of(doc) {
            Some("JobSet") => (admission::JOBSET_GROUP, "JobSet"),
            Some("Pod") => ("", "Pod"),
            Some("AdmissionReview") => return self.review(doc),
            _ => return Previewed::from_mutation(doc.clone(), Mutation::default()),
        };
        let raw = RawValue::from_string(doc.to_string()).map_err(|e| e.to_string())?;
        let namespace = doc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let req = admission::RequestIn::create(group, kind, namespace, &raw);
        match admission::decide(&req, self.config, &DefaultParents(self)) {
            Ok(m) => Previewed::from_mutation(doc.clone(), m),
            Err(d) => Err(d.message),
        }
    }

    /// An AdmissionReview goes through the same steps as in the webhook; the printed object
    /// is `request.object` with the answer's patch applied.
    fn review(&self, doc: &Value) -> Result<Previewed, String> {
        let body = doc.to_string();
        let req = admission::decode(body.as_bytes()).map_err(|e| e.to_string())?;
        let answer = admission::Response::new("", admission::decide(&req, self.config, self));
        let object = doc
            .pointer("/request/object")
            .cloned()
            .unwrap_or(Value::Null);
        Previewed::from_answer(object, answer)
    }
}

fn kind_of(doc: &Value) -> Option<&str> {
    doc.get("kind").and_then(Value::as_str)
}
