//! The cluster config file (README: Cluster config): cluster-wide defaults, named presets and
//! the targets. Values use the same syntax and the same validation as the annotations, so a
//! preset means exactly what the equivalent annotations would.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::annotations::{
    Action, ExitCodes, InPlace, Operator, Settings, parse_exit_codes, parse_names, quote,
};

/// Which objects the webhook mutates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Targets {
    pub jobsets: bool,
    pub pods: bool,
}

impl Default for Targets {
    fn default() -> Self {
        Self {
            jobsets: true,
            pods: false,
        }
    }
}

impl Targets {
    pub const ALLOWED: &'static str = "jobsets, pods";

    /// Parses `jobsets`, `pods` or `jobsets,pods`.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut t = Self {
            jobsets: false,
            pods: false,
        };
        for item in items {
            match item.trim() {
                "jobsets" => t.jobsets = true,
                "pods" => t.pods = true,
                other => {
                    return Err(format!(
                        "{other:?} is not a target; allowed targets are {}",
                        Self::ALLOWED
                    ));
                }
            }
        }
        if !t.jobsets && !t.pods {
            return Err(format!(
                "no target given; allowed targets are {}",
                Self::ALLOWED
            ));
        }
        Ok(t)
    }
}

impl fmt::Display for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.jobsets, self.pods) {
            (true, true) => f.write_str("jobsets,pods"),
            (true, false) => f.write_str("jobsets"),
            (false, true) => f.write_str("pods"),
            (false, false) => f.write_str("none"),
        }
    }
}

/// A validated cluster config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub defaults: Settings,
    pub presets: BTreeMap<String, Settings>,
    pub targets: Targets,
}

/// A config file that could not be used. `Display` names the file, the field and the problem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{source_name}: {field}{sep}{problem}", sep = if field.is_empty() { "" } else { ": " })]
pub struct ConfigError {
    pub source_name: String,
    pub field: String,
    pub problem: String,
}

// The raw shapes, as written in YAML. Unknown fields are errors: a misspelt key in an admin's
// config must not silently fall back to a default.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    defaults: RawSettings,
    #[serde(default)]
    presets: BTreeMap<String, RawSettings>,
    #[serde(default)]
    targets: Option<StringOrList>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSettings {
    in_place: Option<Scalar>,
    action: Option<String>,
    on_exit_codes: Option<StringOrList>,
    except_exit_codes: Option<StringOrList>,
    containers: Option<StringOrList>,
}

/// `"42,43"`, `[42, 43]` and `["128-143", 1]` are all accepted.
#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    List(Vec<Scalar>),
    One(Scalar),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Str(String),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Self::Bool(b) => b.to_string(),
            Self::Int(i) => i.to_string(),
            Self::Str(s) => s.clone(),
        }
    }
}

impl StringOrList {
    fn joined(&self) -> String {
        match self {
            Self::One(s) => s.text(),
            Self::List(items) => items.iter().map(Scalar::text).collect::<Vec<_>>().join(","),
        }
    }
}

impl Config {
    /// Parses and validates a config file's text. `source_name` (usually the path) is used
    /// in error messages only.
    pub fn from_yaml(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let err = |field: &str, problem: String| ConfigError {
            source_name: source_name.to_owned(),
            field: field.to_owned(),
            problem,
        };
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_saphyr::from_str::<Option<RawConfig>>(text)
                .map_err(|e| err("", format!("not a valid config: {e}")))?
                .unwrap_or_default()
        };
        let defaults =
            settings(&raw.defaults).map_err(|(f, p)| err(&format!("defaults.{f}"), p))?;
        let mut presets = BTreeMap::new();
        for (name, s) in &raw.presets {
            if parse_names(name, "preset").is_err() {
                return Err(err(
                    &format!("presets.{name}"),
                    "a preset name must be lowercase letters, digits and '-'".to_owned(),
                ));
            }
            let parsed = settings(s).map_err(|(f, p)| err(&format!("presets.{name}.{f}"), p))?;
            presets.insert(name.clone(), parsed);
        }
        let targets = match &raw.targets {
            None => Targets::default(),
            Some(t) => {
                let joined = t.joined();
                Targets::parse(joined.split(',')).map_err(|p| err("targets", p))?
            }
        };
        Ok(Self {
            defaults,
            presets,
            targets,
        })
    }
}

fn settings(raw: &RawSettings) -> Result<Settings, (&'static str, String)> {
    let in_place = match &raw.in_place {
        None => None,
        Some(v) => {
            let text = v.text();
            Some(InPlace::parse(&text).ok_or_else(|| {
                (
                    "inPlace",
                    format!("{text:?}: allowed values are {}", InPlace::ALLOWED),
                )
            })?)
        }
    };
    let action = match &raw.action {
        None => None,
        Some(v) => Some(Action::parse(v).ok_or_else(|| {
            (
                "action",
                format!("{v:?}: allowed values are {}", Action::ALLOWED),
            )
        })?),
    };
    let exit_codes = match (&raw.on_exit_codes, &raw.except_exit_codes) {
        (Some(_), Some(_)) => {
            return Err((
                "onExitCodes",
                "onExitCodes and exceptExitCodes are both set; set one of them".to_owned(),
            ));
        }
        (Some(on), None) => Some(codes(Operator::In, on, "onExitCodes")?),
        (None, Some(ex)) => Some(codes(Operator::NotIn, ex, "exceptExitCodes")?),
        (None, None) => None,
    };
    let containers = match &raw.containers {
        None => None,
        Some(c) => {
            let joined = c.joined();
            Some(
                parse_names(&joined, "container")
                    .map_err(|p| ("containers", format!("{}: {p}", quote(&joined))))?,
            )
        }
    };
    Ok(Settings {
        in_place,
        action,
        exit_codes,
        containers,
    })
}

fn codes(
    op: Operator,
    raw: &StringOrList,
    field: &'static str,
) -> Result<ExitCodes, (&'static str, String)> {
    let joined = raw.joined();
    parse_exit_codes(&joined).map_err(|p| (field, format!("{joined:?}: {p}")))?;
    ExitCodes::new(op, &joined).map_err(|p| (field, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_builtin_default() {
        let c = Config::from_yaml("", "c.yaml").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(
            Config::from_yaml("# only a comment\n", "c.yaml").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn full_config_parses() {
        let text = r#"
defaults:
  inPlace: enabled
  action: Restart
  exceptExitCodes: [0, "128-130"]
  containers: trainer, agent
presets:
  fast:
    action: RestartAllContainers
    onExitCodes: "42,43"
  lenient:
    inPlace: true
targets: [jobsets, pods]
"#;
        let c = Config::from_yaml(text, "c.yaml").unwrap();
        assert_eq!(c.defaults.in_place, Some(InPlace::Enabled));
        assert_eq!(c.defaults.action, Some(Action::Restart));
        let codes = c.defaults.exit_codes.as_ref().unwrap();
        assert_eq!(codes.operator, Operator::NotIn);
        assert_eq!(codes.values(), &[0, 128, 129, 130]);
        assert_eq!(
            c.defaults.containers.as_deref().unwrap(),
            ["trainer", "agent"]
        );
        assert_eq!(
            c.presets["fast"].exit_codes.as_ref().unwrap().values(),
            &[42, 43]
        );
        assert_eq!(c.presets["lenient"].in_place, Some(InPlace::Enabled));
        assert_eq!(
            c.targets,
            Targets {
                jobsets: true,
                pods: true
            }
        );
        let c = Config::from_yaml("targets: pods\n", "c.yaml").unwrap();
        assert_eq!(
            c.targets,
            Targets {
                jobsets: false,
                pods: true
            }
        );
    }

    #[test]
    fn errors_name_file_field_and_problem() {
        let cases = [
            (
                "defaults:\n  action: Bogus\n",
                "c.yaml: defaults.action: \"Bogus\": allowed values are Restart or RestartAllContainers",
            ),
            (
                "defaults:\n  inPlace: maybe\n",
                "c.yaml: defaults.inPlace: \"maybe\": allowed values are enabled, disabled, true or false",
            ),
            (
                "presets:\n  fast:\n    onExitCodes: \"42,abc\"\n",
                "c.yaml: presets.fast.onExitCodes: \"42,abc\": \"abc\" is not an exit code (0-255) or range a-b",
            ),
            (
                "presets:\n  fast:\n    onExitCodes: \"1\"\n    exceptExitCodes: \"0\"\n",
                "c.yaml: presets.fast.onExitCodes: onExitCodes and exceptExitCodes are both set; set one of them",
            ),
            (
                "presets:\n  Fast: {}\n",
                "c.yaml: presets.Fast: a preset name must be lowercase letters, digits and '-'",
            ),
            (
                "targets: [jobsets, deployments]\n",
                "c.yaml: targets: \"deployments\" is not a target; allowed targets are jobsets, pods",
            ),
            (
                "defaults:\n  containers: \"A\"\n",
                "c.yaml: defaults.containers: \"A\": \"A\" is not a valid container name (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                Config::from_yaml(text, "c.yaml").unwrap_err().to_string(),
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn a_config_list_over_the_bounds_is_refused_at_load() {
        let list: Vec<String> = (0..65).map(|i| format!("c{i}")).collect();
        let list = list.join(",");
        let text = format!("presets:\n  wide:\n    containers: \"{list}\"\n");
        assert_eq!(
            Config::from_yaml(&text, "c.yaml").unwrap_err().to_string(),
            format!(
                "c.yaml: presets.wide.containers: {}: a list of container names may have at \
                 most 4096 bytes and 64 names; this one has 65 names",
                quote(&list)
            )
        );
        let big = "c".repeat(5000);
        let e = Config::from_yaml(&format!("defaults:\n  containers: [{big}]\n"), "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("this one has 5000 bytes"), "{e}");
        assert!(e.len() < 300, "the error quotes a cut value: {e}");
    }

    #[test]
    fn unknown_fields_and_bad_yaml_are_rejected() {
        let e = Config::from_yaml("defaults:\n  inplace: enabled\n", "c.yaml").unwrap_err();
        assert!(
            e.to_string().starts_with("c.yaml: not a valid config: "),
            "{e}"
        );
        assert!(e.to_string().contains("inplace"), "{e}");
        let e = Config::from_yaml("defaults: [\n", "c.yaml").unwrap_err();
        assert!(
            e.to_string().starts_with("c.yaml: not a valid config: "),
            "{e}"
        );
    }
}
