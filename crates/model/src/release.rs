//! Release-time config: blue-green services, request colouring, and path rewrites by regex.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The request header that carries a request's colour (full-link gray release), unless
/// `node.color_header` names another.
pub const DEFAULT_COLOR_HEADER: &str = "x-gatehouse-color";

/// The target label a coloured request is matched against.
pub const COLOR_LABEL: &str = "color";

/// A service with two upstreams, one of them serving: switching is one atomic change of
/// `active` (`gatehouse release switch SERVICE`, or `POST /services/{name}/switch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlueGreen {
    /// The blue upstream's name.
    pub blue: String,
    /// The green upstream's name.
    pub green: String,
    /// Which one takes the service's requests.
    #[serde(default)]
    pub active: Side,
}

impl BlueGreen {
    /// The name of the upstream serving now.
    pub fn active_upstream(&self) -> &str {
        match self.active {
            Side::Blue => &self.blue,
            Side::Green => &self.green,
        }
    }
}

/// One side of a blue-green pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    #[default]
    Blue,
    Green,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Blue => Side::Green,
            Side::Green => Side::Blue,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Blue => "blue",
            Side::Green => "green",
        }
    }
}

/// A path rewrite by regular expression (as APISIX's `regex_uri`): the first match of
/// `regex` in the path is replaced by `replace`, in which `$1`, `${name}` insert groups.
/// Applied after `rewrite`/`strip_prefix`, to the path only (the query stays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewriteRegex {
    pub regex: String,
    pub replace: String,
}

/// Checks the release fields of services and targets that need no compiling.
pub(crate) fn validate(
    config: &crate::Config,
    upstreams: &std::collections::HashMap<&str, usize>,
    err: &mut impl FnMut(String, String),
) {
    if crate::header_name_ok(&config.node.color_header).is_err() {
        err(
            "node.color_header".into(),
            format!(
                "\"{}\" is not a valid header name",
                config.node.color_header
            ),
        );
    }
    for (i, s) in config.services.iter().enumerate() {
        let Some(bg) = &s.blue_green else { continue };
        let p = format!("services[{i}]");
        if s.upstream.is_some() || s.url.is_some() {
            err(
                format!("{p}.blue_green"),
                "give either blue_green, upstream or url, not more than one".into(),
            );
        }
        for (side, name) in [("blue", &bg.blue), ("green", &bg.green)] {
            if !upstreams.contains_key(name.as_str()) {
                err(
                    format!("{p}.blue_green.{side}"),
                    format!("no upstream named \"{name}\""),
                );
            }
        }
        if bg.blue == bg.green {
            err(
                format!("{p}.blue_green.green"),
                "must name another upstream than blue".into(),
            );
        }
    }
    for (i, u) in config.upstreams.iter().enumerate() {
        let colored = |t: &crate::Target| t.labels.contains_key(COLOR_LABEL);
        if !u.targets.is_empty() && u.targets.iter().all(colored) {
            err(
                format!("upstreams[{i}].targets"),
                "needs a target without a color label, for requests that are not coloured".into(),
            );
        }
        for (j, t) in u.targets.iter().enumerate() {
            for (k, v) in &t.labels {
                let bad_key = k.is_empty() || k.len() > 64;
                let bad_value =
                    v.is_empty() || v.len() > 128 || http::HeaderValue::from_str(v).is_err();
                if bad_key || bad_value {
                    err(
                        format!("upstreams[{i}].targets[{j}].labels.{k}"),
                        "labels are non-empty text of at most 64 (key) and 128 (value) visible characters".into(),
                    );
                }
            }
        }
    }
}
