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
    /// `(line, column)` in the file, from 1, when the error came from reading one.
    pub location: Option<(usize, usize)>,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            location: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.location, self.path.is_empty()) {
            (None, true) => f.write_str(&self.message),
            (None, false) => write!(f, "{}: {}", self.path, self.message),
            (Some((l, c)), true) => write!(f, "line {l} column {c}: {}", self.message),
            (Some((l, c)), false) => {
                write!(f, "{} (line {l} column {c}): {}", self.path, self.message)
            }
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
    parse_yaml_with(text, &|_, _| Vec::new())
}

/// [`parse_yaml`] plus `checks` run on whatever parsed (also when some items did not), told
/// whether problems were found already, with their paths mapped to the file's numbering: how
/// the runtime adds its compile-time checks (regexes, plugin names) so that one run reports
/// every problem.
pub fn parse_yaml_with(
    text: &str,
    checks: &dyn Fn(&Config, bool) -> Vec<ConfigError>,
) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut kept = KeptIndices::new();
    // Most files are right: read them straight into the config, without the YAML tree that
    // reading item by item needs (about as large as the config again at 100 000 routes). A
    // file that does not read that way is read again item by item, for all its problems.
    let config = match yaml_serde::from_str::<Config>(text) {
        Ok(config) => config,
        Err(_) => read_item_by_item(text, &mut errors, &mut kept)?,
    };
    let found = validate(&config);
    let mut later = checks(&config, !errors.is_empty() || !found.is_empty());
    // A compile check that fails where validation already did (a router refusing a path
    // that validation found malformed) says the same thing again, worse.
    later.retain(|c| !found.iter().any(|f| f.path == c.path));
    errors.extend(found.into_iter().chain(later).map(|mut e| {
        e.path = kept.original_path(&e.path);
        e.message = kept.original_refs(&e.message);
        e
    }));
    // An item that did not parse is missing from the config, so everything that names it
    // fails too: its own error is the one to read.
    errors.retain(|e| !kept.is_cascade(&e.message));
    sort_errors(&mut errors);
    errors.dedup();
    place(text, &mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The lenient reading: the YAML tree first, then each item of each list on its own, so that
/// one bad route does not hide the others.
fn read_item_by_item(
    text: &str,
    errors: &mut Vec<ConfigError>,
    kept: &mut KeptIndices,
) -> Result<Config, ConfigErrors> {
    let root: yaml_serde::Value = yaml_serde::from_str(text).map_err(|e| {
        let mut error = ConfigError::new("", format!("invalid YAML: {}", clean_serde_message(&e)));
        error.location = e.location().map(|l| (l.line(), l.column()));
        ConfigErrors(vec![error])
    })?;
    match root {
        yaml_serde::Value::Null => Ok(Config::default()),
        yaml_serde::Value::Mapping(map) => Ok(from_mapping(map, errors, kept)),
        _ => Err(ConfigErrors(vec![ConfigError::new(
            "",
            "the configuration must be a mapping with keys such as listen, routes, services, upstreams",
        )])),
    }
}

/// Errors placed at their line and column: each costs a read of the file, and a file with
/// thousands of errors is fixed from its first ones.
const LOCATED: usize = 50;

/// The top-level keys, in the order errors are reported: what others refer to first, so
/// that a root cause comes before what it breaks.
/// Gives the first errors of `errors` that have none their line and column in `text`: for
/// what compiling a parsed config found, when the file's text is at hand.
pub fn place(text: &str, errors: &mut [ConfigError]) {
    for e in errors.iter_mut().take(LOCATED) {
        if e.location.is_none() && !e.path.is_empty() {
            e.location = crate::locate::locate(text, &e.path);
        }
    }
}

const TOP_KEYS: &[&str] = &[
    "listen",
    "admin",
    "node",
    "redis",
    "observability",
    "upstreams",
    "services",
    "consumers",
    "routes",
    "plugins",
    "certificates",
    "acme",
];

/// What the item-by-item parse left out. For each section, the file index of every item that
/// parsed: items that fail to parse are left out of the [`Config`], so validation sees shifted
/// indices; this maps them back so that every message names the item as the file numbers it.
/// And the names of the items left out, so that references to them are not reported as
/// missing entities.
struct KeptIndices {
    kept: HashMap<&'static str, Vec<usize>>,
    broken: Vec<(&'static str, String)>,
}

impl KeptIndices {
    fn new() -> Self {
        Self {
            kept: HashMap::new(),
            broken: Vec::new(),
        }
    }

    /// Whether `message` only says that an item which failed to parse does not exist.
    fn is_cascade(&self, message: &str) -> bool {
        self.broken.iter().any(|(section, name)| {
            let kind = section.trim_end_matches('s');
            message.contains(&format!("no {kind} named \"{name}\""))
        })
    }

    fn original(&self, section: &str, i: usize) -> usize {
        self.kept
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
    let acme = take("acme").and_then(|v| one(v, "acme", errors));
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
        certificates: list(take("certificates"), "certificates", errors, kept),
        acme,
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
            let mut indices = Vec::new();
            let parsed = items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let key = if path == "consumers" {
                        "username"
                    } else {
                        "name"
                    };
                    let name = item.get(key).and_then(|n| n.as_str()).map(String::from);
                    let Some(t) = one(item, &format!("{path}[{i}]"), errors) else {
                        kept.broken.extend(name.map(|n| (path, n)));
                        return None;
                    };
                    indices.push(i);
                    Some(t)
                })
                .collect();
            kept.kept.insert(path, indices);
            parsed
        }
        Some(_) => {
            errors.push(ConfigError::new(path, "must be a list"));
            Vec::new()
        }
    }
}

/// Orders errors by section, what others refer to first (upstreams before services before
/// routes), then by path with numbers compared as numbers, so `routes[2]` precedes
/// `routes[10]` and a parse error and a reference error of one item stay together.
pub fn sort_errors(errors: &mut [ConfigError]) {
    fn key(path: &str) -> (usize, Vec<(String, u64)>) {
        let section = path.split(['[', '.', ' ']).next().unwrap_or(path);
        let rank = TOP_KEYS
            .iter()
            .position(|k| *k == section)
            .unwrap_or(TOP_KEYS.len());
        let parts = path
            .split(['[', ']'])
            .map(|part| match part.parse::<u64>() {
                Ok(n) => (String::new(), n),
                Err(_) => (part.to_owned(), 0),
            })
            .collect();
        (rank, parts)
    }
    errors.sort_by_cached_key(|e| key(&e.path));
}

/// serde's messages, said for a config's author: without the YAML positions that are
/// meaningless once items are re-parsed one by one (the error's own location says where),
/// with Rust's type names in words and an example where the value has a known form.
fn clean_serde_message(e: &yaml_serde::Error) -> String {
    in_words(&e.to_string())
}

/// A serde error message (from YAML or JSON) said for a config's author; what
/// [`clean_serde_message`] does, for messages that come from elsewhere (plugin configs).
pub fn in_words(s: &str) -> String {
    let s = match s.find(" at line ") {
        Some(i) => &s[..i],
        None => s,
    };
    let Some((head, expected)) = s.rsplit_once(", expected ") else {
        return s.to_owned();
    };
    let number = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => Some("a whole number, 0 or more"),
        "i8" | "i16" | "i32" | "i64" | "isize" => Some("a whole number"),
        "f32" | "f64" => Some("a number"),
        _ => None,
    };
    if let Some(words) = number {
        // `limit: "10"`: a number in quotes is text to YAML.
        let quoted = head
            .strip_prefix("invalid type: string \"")
            .and_then(|v| v.strip_suffix('"'))
            .filter(|v| v.parse::<f64>().is_ok());
        return match quoted {
            Some(v) => format!("{head}, expected {words}: write it without quotes, as {v}"),
            None => format!("{head}, expected {words}"),
        };
    }
    if let Some(name) = expected.strip_prefix("struct ") {
        let example = match name {
            "Listen" => "{address: \"0.0.0.0:8080\"}",
            "Target" => "{address: \"10.0.0.1:80\", weight: 100}",
            "Route" => "{name: users, paths: [\"/users/*\"], service: users}",
            "Service" => "{name: users, upstream: users}",
            "Upstream" => "{name: users, targets: [{address: \"10.0.0.1:80\"}]}",
            "Consumer" => "{username: alice}",
            "PluginInstance" => {
                "{name: rate-limit, route: users, config: {limit: 100, window: 1m}}"
            }
            _ => return format!("{head}, expected a mapping of keys and values"),
        };
        return format!("{head}, expected a mapping such as {example}");
    }
    s.to_owned()
}
