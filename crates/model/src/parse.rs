//! Reading a configuration file: YAML (or JSON) parsed item by item so that one bad route
//! does not hide the others, validated, and reported as `path: message` errors with the
//! root cause first, each placed at its line and column in the file.

use crate::{validate, Config};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt;

/// One problem in a configuration, located by a field path such as `routes[0].paths[1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A list of problems, printed one `path: message` per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses YAML (JSON is YAML too) into a [`Config`] and validates it, reporting every problem
/// found. Each list item is parsed on its own so that one bad route does not hide the others.
pub fn parse_yaml(text: &str) -> Result<Config, ConfigErrors> {
    parse_yaml_with(text, &|_| Vec::new())
}

/// [`parse_yaml`] plus `checks` run on whatever parsed (also when some items did not), with
/// their paths mapped to the file's numbering: how the runtime adds its compile-time checks
/// (regexes, plugin names) so that one run reports every problem.
pub fn parse_yaml_with(
    text: &str,
    checks: &dyn Fn(&Config) -> Vec<ConfigError>,
) -> Result<Config, ConfigErrors> {
    let root: yaml_serde::Value = yaml_serde::from_str(text).map_err(|e| {
        let path = e
            .location()
            .map(|l| format!("line {} column {}", l.line(), l.column()))
            .unwrap_or_default();
        ConfigErrors(vec![ConfigError::new(path, format!("invalid YAML: {e}"))])
    })?;
    let mut errors = Vec::new();
    let mut kept = KeptIndices::new();
    let config = match root {
        yaml_serde::Value::Null => Config::default(),
        yaml_serde::Value::Mapping(map) => from_mapping(map, &mut errors, &mut kept),
        _ => {
            return Err(ConfigErrors(vec![ConfigError::new(
                "",
                "the configuration must be a mapping with keys such as listen, routes, services, upstreams",
            )]))
        }
    };
    let mut found = validate(&config);
    found.extend(checks(&config));
    errors.extend(found.into_iter().map(|mut e| {
        e.path = kept.original_path(&e.path);
        e.message = kept.original_refs(&e.message);
        e
    }));
    sort_errors(&mut errors);
    errors.dedup();
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

const TOP_KEYS: &[&str] = &[
    "listen",
    "admin",
    "node",
    "redis",
    "routes",
    "services",
    "upstreams",
    "consumers",
    "plugins",
    "observability",
];

/// For each section, the file index of every item that parsed. Items that fail to parse are
/// left out of the [`Config`], so validation sees shifted indices; this maps them back so that
/// every message names the item as the file numbers it.
struct KeptIndices(HashMap<&'static str, Vec<usize>>);

impl KeptIndices {
    fn new() -> Self {
        Self(HashMap::new())
    }

    fn original(&self, section: &str, i: usize) -> usize {
        self.0
            .get(section)
            .and_then(|v| v.get(i).copied())
            .unwrap_or(i)
    }

    fn original_path(&self, path: &str) -> String {
        let Some((section, rest)) = path.split_once('[') else {
            return path.to_owned();
        };
        let Some((n, tail)) = rest.split_once(']') else {
            return path.to_owned();
        };
        match n.parse::<usize>() {
            Ok(i) => format!("{section}[{}]{tail}", self.original(section, i)),
            Err(_) => path.to_owned(),
        }
    }

    /// Rewrites `(first at routes[N])` in a message.
    fn original_refs(&self, message: &str) -> String {
        match message.split_once("(first at ") {
            Some((head, tail)) => match tail.strip_suffix(')') {
                Some(p) => format!("{head}(first at {})", self.original_path(p)),
                None => message.to_owned(),
            },
            None => message.to_owned(),
        }
    }
}

fn from_mapping(
    map: yaml_serde::Mapping,
    errors: &mut Vec<ConfigError>,
    kept: &mut KeptIndices,
) -> Config {
    let mut sections: HashMap<String, yaml_serde::Value> = HashMap::new();
    for (k, v) in map {
        match k.as_str() {
            Some(key) if TOP_KEYS.contains(&key) => {
                sections.insert(key.to_owned(), v);
            }
            Some(key) => errors.push(ConfigError::new(
                key,
                format!("unknown key, expected one of: {}", TOP_KEYS.join(", ")),
            )),
            None => errors.push(ConfigError::new("", "top-level keys must be strings")),
        }
    }
    let mut take = |k: &str| sections.remove(k);
    let admin = take("admin").and_then(|v| one(v, "admin", errors));
    let redis = take("redis").and_then(|v| one(v, "redis", errors));
    let node = take("node")
        .and_then(|v| one(v, "node", errors))
        .unwrap_or_default();
    let observability = take("observability")
        .and_then(|v| one(v, "observability", errors))
        .unwrap_or_default();
    Config {
        observability,
        listen: list(take("listen"), "listen", errors, kept),
        admin,
        node,
        redis,
        routes: list(take("routes"), "routes", errors, kept),
        services: list(take("services"), "services", errors, kept),
        upstreams: list(take("upstreams"), "upstreams", errors, kept),
        consumers: list(take("consumers"), "consumers", errors, kept),
        plugins: list(take("plugins"), "plugins", errors, kept),
    }
}

fn one<T: DeserializeOwned>(
    v: yaml_serde::Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    if v.is_null() {
        return None;
    }
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            let full = if inner == "." || inner.is_empty() {
                path.to_owned()
            } else if inner.starts_with('[') {
                format!("{path}{inner}")
            } else {
                format!("{path}.{inner}")
            };
            errors.push(ConfigError::new(full, clean_serde_message(e.inner())));
            None
        }
    }
}

fn list<T: DeserializeOwned>(
    v: Option<yaml_serde::Value>,
    path: &'static str,
    errors: &mut Vec<ConfigError>,
    kept: &mut KeptIndices,
) -> Vec<T> {
    match v {
        None | Some(yaml_serde::Value::Null) => Vec::new(),
        Some(yaml_serde::Value::Sequence(items)) => {
            let indices = kept.0.entry(path).or_default();
            items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let t = one(item, &format!("{path}[{i}]"), errors)?;
                    indices.push(i);
                    Some(t)
                })
                .collect()
        }
        Some(_) => {
            errors.push(ConfigError::new(path, "must be a list"));
            Vec::new()
        }
    }
}

/// Orders errors by path with numbers compared as numbers, so `routes[2]` precedes
/// `routes[10]` and a parse error and a reference error of one item stay together.
pub fn sort_errors(errors: &mut [ConfigError]) {
    fn key(path: &str) -> Vec<(String, u64)> {
        path.split(['[', ']'])
            .map(|part| match part.parse::<u64>() {
                Ok(n) => (String::new(), n),
                Err(_) => (part.to_owned(), 0),
            })
            .collect()
    }
    errors.sort_by_cached_key(|e| key(&e.path));
}

/// serde's messages end with YAML positions that are meaningless once items are re-parsed one
/// by one (they refer to the item, not the file); the field path says where instead.
fn clean_serde_message(e: &yaml_serde::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}
