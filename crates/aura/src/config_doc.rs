//! What `aura config` prints: the effective configuration of `aura serve` with each value's origin
//! (default, the config file, or the `AURA_*` variable), and `aura config --example`, the documented
//! example file (`docs/aura.example.toml`).
//!
//! Why the example cannot drift from the code: its keys and default values are the serialized
//! `Config::default()` itself, and its text is the `///` docs of the configuration's structs, which
//! build.rs reads from the very sources they compile from (`CONFIG_DOCS`). A key without docs is listed
//! by `undocumented_keys` (a test keeps that empty), and a changed doc or default changes the example,
//! which the ecosystem test compares with the committed file. The one hand-kept list is
//! `HOST_DEPENDENT`: defaults computed from the machine, left commented out so the file is the same
//! everywhere.
//!
//! Values that could be credentials never leave in clear: a string under a key that names a hash, token,
//! secret, password, credential or key (not a file or directory setting) prints as `<redacted>`, at any
//! depth (`api.tokens[].hash`, a `jobs.env` variable called `OPENAI_API_KEY`).

use crate::config::Config;
use anyhow::Context;
use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/config_docs.rs"));

/// What a redacted value prints as.
pub const REDACTED: &str = "<redacted>";

/// Keys whose default is computed from the machine (the number of cores): the example leaves them
/// commented out, so that the committed file is the same on every machine.
const HOST_DEPENDENT: &[&str] = &["max_concurrent"];

/// Where one value of the effective configuration came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The config file.
    File(PathBuf),
    /// An environment variable, by name.
    Env(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Env(name) => f.write_str(name),
        }
    }
}

/// The configuration `aura serve` would run with, checked as it checks it, and its sources.
pub struct Effective {
    figment: figment::Figment,
    table: toml::Table,
}

impl Effective {
    /// Loads as `aura serve --config FILE` does: defaults, the file, then `AURA_*` variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Effective> {
        let figment = Config::figment(file)?;
        let config = Config::extract(figment.clone())?;
        let table =
            toml::Table::try_from(&config).context("cannot write the configuration as TOML")?;
        Ok(Effective { figment, table })
    }

    /// Where the value at the dotted `key` came from.
    pub fn source(&self, key: &str) -> Source {
        let Some(md) = self.figment.find_metadata(key) else {
            return Source::Default;
        };
        if let Some(figment::Source::File(path)) = &md.source {
            return Source::File(path.clone());
        }
        if md.name.contains("environment variable") {
            return Source::Env(env_name(key));
        }
        Source::Default
    }

    /// TOML, each value followed by `# from <source>`; unset keys as comments.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# The effective configuration of `aura serve`: defaults, then the config file, then AURA_* \
             variables.\n",
        );
        let annotate = |key: &str, value: Option<&toml::Value>, out: &mut String| {
            let name = last_segment(key);
            match value {
                Some(value) => out.push_str(&format!(
                    "{} = {}  # from {}\n",
                    toml_key(name),
                    redacted(name, value),
                    self.source(key)
                )),
                None => out.push_str(&format!("# {} is not set\n", toml_key(name))),
            }
        };
        emit(&mut out, "", &self.table, &Style::Effective(&annotate));
        out
    }

    /// Every value (tables flattened to dotted keys) with its source:
    /// `{"key": {"value": …, "source": "default" | "file" | "env", "from": path or variable}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        self.flatten("", &self.table, &mut map);
        serde_json::Value::Object(map)
    }

    fn flatten(
        &self,
        prefix: &str,
        table: &toml::Table,
        map: &mut serde_json::Map<String, serde_json::Value>,
    ) {
        for (name, value) in table {
            let key = join(prefix, name);
            if let toml::Value::Table(inner) = value {
                self.flatten(&key, inner, map);
                continue;
            }
            let value = serde_json::to_value(redacted(name, value)).unwrap_or_default();
            let mut entry = serde_json::json!({ "value": value });
            match self.source(&key) {
                Source::Default => entry["source"] = "default".into(),
                Source::File(path) => {
                    entry["source"] = "file".into();
                    entry["from"] = path.display().to_string().into();
                }
                Source::Env(var) => {
                    entry["source"] = "env".into();
                    entry["from"] = var.into();
                }
            }
            map.insert(key, entry);
        }
    }
}

/// The documented example config file: every key with its doc text and default.
pub fn example() -> anyhow::Result<String> {
    let defaults = toml::Table::try_from(Config::default())
        .context("cannot write the default configuration as TOML")?;
    let mut out = String::from(
        "# Every configuration key of `aura serve`, with its default and what it does.\n\
         # Generated from the code by `aura config --example` (docs/aura.example.toml is checked against it:\n\
         # regenerate with `aura config --example > docs/aura.example.toml`).\n\
         # Keys left commented out are unset by default, or their default depends on the machine.\n\
         # A variable overrides any key: AURA_<KEY>, with `__` between section and key\n\
         # (AURA_SUPERVISOR__BACKEND=process_group). `aura config` shows what is in effect, and where from.\n",
    );
    let annotate = |key: &str, value: Option<&toml::Value>, out: &mut String| {
        let name = toml_key(last_segment(key));
        match value {
            Some(_) if HOST_DEPENDENT.contains(&key) => {
                out.push_str(&format!("# {name} = (depends on the machine)\n"));
            }
            Some(value) => out.push_str(&format!("{name} = {value}\n")),
            None => out.push_str(&format!("# {name} =\n")),
        }
    };
    emit(&mut out, "", &defaults, &Style::Example(&annotate));
    Ok(out)
}

/// Keys of the default configuration that have no doc text (should be none).
pub fn undocumented_keys() -> anyhow::Result<Vec<String>> {
    let defaults = toml::Table::try_from(Config::default())?;
    let mut missing = Vec::new();
    fn walk(prefix: &str, table: &toml::Table, missing: &mut Vec<String>) {
        for (name, value) in table {
            let key = join(prefix, name);
            if doc(&key).map_or(true, str::is_empty) {
                missing.push(key.clone());
            }
            if let toml::Value::Table(inner) = value {
                walk(&key, inner, missing);
            }
        }
    }
    walk("", &defaults, &mut missing);
    for (key, text) in CONFIG_DOCS {
        if text.is_empty() && !missing.iter().any(|m| m == key) {
            missing.push((*key).to_owned());
        }
    }
    Ok(missing)
}

/// How a key's line is written: with its source (`aura config`) or its docs (`--example`).
type Annotate<'a> = dyn Fn(&str, Option<&toml::Value>, &mut String) + 'a;

enum Style<'a> {
    Effective(&'a Annotate<'a>),
    Example(&'a Annotate<'a>),
}

impl Style<'_> {
    fn example(&self) -> bool {
        matches!(self, Style::Example(_))
    }

    fn line(&self, key: &str, value: Option<&toml::Value>, out: &mut String) {
        match self {
            Style::Effective(f) | Style::Example(f) => f(key, value, out),
        }
    }
}

/// Writes `table` (the keys under `prefix`): its plain values first, in declaration order, then its
/// sections, as TOML requires.
fn emit(out: &mut String, prefix: &str, table: &toml::Table, style: &Style) {
    // Documented keys in declaration order, then whatever else the table holds (map entries).
    let mut names: Vec<String> = children(prefix).map(str::to_owned).collect();
    for name in table.keys() {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let mut sections = Vec::new();
    for name in &names {
        let key = join(prefix, name);
        match table.get(name) {
            Some(toml::Value::Table(inner)) => sections.push((key, Some(inner))),
            // An empty list of tables (`[[api.tokens]]`) is written as a commented template.
            Some(toml::Value::Array(items))
                if style.example() && items.is_empty() && has_children(&format!("{key}[]")) =>
            {
                sections.push((key, None));
            }
            // Unset: the effective view skips undocumented ones (there are none), the example shows
            // the key commented out.
            value => {
                if style.example() {
                    // A blank line between documented keys, not right under a section header.
                    if !out.ends_with("]\n") {
                        out.push('\n');
                    }
                    comment(out, doc(&key).unwrap_or_default());
                }
                style.line(&key, value, out);
            }
        }
    }
    for (key, inner) in sections {
        out.push('\n');
        if style.example() {
            comment(out, doc(&key).unwrap_or_default());
        }
        let header = key.split('.').map(toml_key).collect::<Vec<_>>().join(".");
        let template = if has_children(&format!("{key}[]")) {
            Some((format!("[[{header}]]"), format!("{key}[]")))
        } else if has_children(&format!("{key}.*")) && inner.map_or(true, toml::Table::is_empty) {
            Some((format!("[{header}.NAME]"), format!("{key}.*")))
        } else {
            None
        };
        match (template, inner) {
            (Some((header, item)), _) if style.example() => {
                out.push_str(&format!("# {header}\n"));
                for child in children(&item) {
                    let text = doc(&join(&item, child)).unwrap_or_default();
                    for line in text.lines() {
                        out.push_str(&format!("#   {line}\n").replace("#   \n", "#\n"));
                    }
                    out.push_str(&format!("# {} =\n", toml_key(child)));
                }
            }
            (_, Some(inner)) => {
                out.push_str(&format!("[{header}]\n"));
                emit(out, &key, inner, style);
            }
            (_, None) => out.push_str(&format!("{} = []\n", toml_key(last_segment(&key)))),
        }
    }
}

/// The documented keys directly under `prefix` (`""`: the top level), in declaration order.
fn children(prefix: &str) -> impl Iterator<Item = &'static str> + '_ {
    CONFIG_DOCS.iter().filter_map(move |(key, _)| {
        let rest = if prefix.is_empty() {
            *key
        } else {
            key.strip_prefix(prefix)?.strip_prefix('.')?
        };
        (!rest.is_empty() && !rest.contains(['.', '['])).then_some(rest)
    })
}

fn has_children(prefix: &str) -> bool {
    children(prefix).next().is_some()
}

fn doc(key: &str) -> Option<&'static str> {
    CONFIG_DOCS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, text)| *text)
}

fn comment(out: &mut String, text: &str) {
    for line in text.lines() {
        if line.is_empty() {
            out.push_str("#\n");
        } else {
            out.push_str(&format!("# {line}\n"));
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

fn last_segment(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

/// A bare key where TOML allows one, else a quoted one.
fn toml_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_owned()
    } else {
        toml::Value::String(name.to_owned()).to_string()
    }
}

/// The variable that sets `key`: `AURA_` and its segments in capitals, joined by `__`. A value inside
/// one variable's table or list (`AURA_ADMISSION__LIMITS='{…}'`) names the variable that is set.
fn env_name(key: &str) -> String {
    let segments: Vec<String> = key.split('.').map(str::to_ascii_uppercase).collect();
    let set: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .map(|k| k.to_ascii_uppercase())
        .collect();
    for n in (1..=segments.len()).rev() {
        let name = format!("AURA_{}", segments[..n].join("__"));
        if set.contains(&name) {
            return name;
        }
    }
    format!("AURA_{}", segments.join("__"))
}

/// Whether a string under this key could be a credential.
fn sensitive(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let settings = ["_file", "_dir", "_path", "_roots"];
    if settings.iter().any(|s| name.ends_with(s)) {
        return false;
    }
    let words = ["token", "secret", "password", "passwd", "credential"];
    words.iter().any(|w| name.contains(w))
        || name == "hash"
        || name == "key"
        || name.ends_with("_hash")
        || name.ends_with("_key")
}

/// `value` with every string under a sensitive key (`name` itself, or one nested inside) replaced.
fn redacted(name: &str, value: &toml::Value) -> toml::Value {
    match value {
        toml::Value::String(_) if sensitive(name) => toml::Value::String(REDACTED.into()),
        toml::Value::Array(items) => {
            toml::Value::Array(items.iter().map(|v| redacted(name, v)).collect())
        }
        toml::Value::Table(table) => toml::Value::Table(
            table
                .iter()
                .map(|(k, v)| (k.clone(), redacted(k, v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
// figment's Jail API returns its own (large) error type; that is the test harness, not our code.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_documented() {
        let missing = undocumented_keys().unwrap();
        assert!(missing.is_empty(), "keys without `///` docs: {missing:?}");
        // The table reaches into other crates' structs.
        assert!(doc("guards.throttle.cpu_share").is_some_and(|d| d.contains("share")));
        assert!(doc("api.tokens[].hash").is_some());
        assert!(doc("admission.limits.*.per_minute").is_some());
    }

    #[test]
    fn the_example_loads_and_is_all_defaults() {
        let text = example().unwrap();
        let from_example = Config::from_toml(&text).unwrap();
        let defaults = Config::default();
        assert_eq!(
            toml::to_string(&from_example).unwrap(),
            toml::to_string(&defaults).unwrap()
        );
        assert!(text.contains("# max_concurrent = (depends on the machine)"));
        assert!(text.contains("# [[api.tokens]]"));
        assert!(text.contains("[guards.throttle]"));
    }

    #[test]
    fn sources_and_redaction() {
        figment::Jail::expect_with(|jail| {
            let hash = format!("sha256:{}", "ab".repeat(32));
            jail.create_file(
                "aura.toml",
                &format!(
                    "max_concurrent = 3\n[[api.tokens]]\nname = \"ci\"\nhash = \"{hash}\"\nscopes = [\"read\"]\n\
                     [jobs.env]\nOPENAI_API_KEY = \"sk-1\"\nHTTP_PROXY = \"http://proxy:3128\"\n"
                ),
            )?;
            jail.set_env("AURA_SUPERVISOR__BACKEND", "process_group");
            let eff = Effective::load(Some(Path::new("aura.toml"))).map_err(|e| e.to_string())?;
            // Figment names the file by its absolute path.
            assert!(
                matches!(eff.source("max_concurrent"), Source::File(p) if p.ends_with("aura.toml"))
            );
            assert_eq!(
                eff.source("supervisor.backend"),
                Source::Env("AURA_SUPERVISOR__BACKEND".into())
            );
            assert_eq!(eff.source("listen"), Source::Default);
            let text = eff.to_toml();
            assert!(!text.contains(&hash) && !text.contains("sk-1"), "{text}");
            assert!(text.contains("name = \"ci\""), "{text}");
            assert!(
                text.contains("HTTP_PROXY = \"http://proxy:3128\"  # from"),
                "{text}"
            );
            assert!(
                text.contains("backend = \"process_group\"  # from AURA_SUPERVISOR__BACKEND"),
                "{text}"
            );
            assert!(text.contains("# user is not set"), "{text}");
            // What it prints is a config file that loads to the same configuration.
            let reloaded = Config::from_toml(&text.replace(REDACTED, &hash).replace(
                "OPENAI_API_KEY = \"<redacted>\"",
                "OPENAI_API_KEY = \"sk-1\"",
            ))
            .map_err(|e| e.to_string())?;
            assert_eq!(reloaded.max_concurrent, 3);
            let json = eff.to_json();
            assert_eq!(json["max_concurrent"]["source"], "file");
            assert_eq!(json["max_concurrent"]["value"], 3);
            assert_eq!(
                json["supervisor.backend"]["from"],
                "AURA_SUPERVISOR__BACKEND"
            );
            assert_eq!(json["api.tokens"]["value"][0]["hash"], REDACTED);
            assert_eq!(json["jobs.env.OPENAI_API_KEY"]["value"], REDACTED);
            assert_eq!(json["listen"]["source"], "default");
            Ok(())
        });
    }

    #[test]
    fn what_is_redacted() {
        for name in [
            "hash",
            "token",
            "session_secret",
            "api_key",
            "OPENAI_API_KEY",
            "password",
        ] {
            assert!(sensitive(name), "{name}");
        }
        for name in [
            "secrets_file",
            "local_token_dir",
            "name",
            "HTTP_PROXY",
            "keyframes",
            "cwd_roots",
        ] {
            assert!(!sensitive(name), "{name}");
        }
    }
}
