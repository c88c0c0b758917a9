//! `waf`: the OWASP Core Rule Set (built in) and any SecLang files of the user's, run on
//! each request's head and body in the `access` phase and, when asked, on the response body:
//! 403 (in `block` mode) or a log line only (`detect`), a deny log naming the rules, and
//! counters by route, decision and rule group.

use super::data::Request;
use super::deny_log::{DenyLog, Entry};
use super::engine;
use super::eval::Policy;
use super::ruleset::Ruleset;
use super::vars::Targets;
use bytes::{Bytes, BytesMut};
use bytesize::ByteSize;
use dashmap::DashMap;
use gatehouse_plugin_api::{
    json_response, BodyCtx, BuildEnv, FieldError, Flow, Needs, Plugin, PluginMetric, RequestCtx,
    ResponseCtx, TypedKind,
};
use http::{HeaderMap, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

#[derive(Debug, Deserialize, JsonSchema, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Reject what the rules deny with 403.
    #[default]
    Block,
    /// Only log what would have been rejected.
    Detect,
}

#[derive(Debug, Deserialize, JsonSchema, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnBody {
    /// Reject the request (413 over the cap, 400 for a body that does not parse).
    #[default]
    Block,
    /// Let it through with its head inspected (and, for a bad body, its raw bytes).
    Pass,
}

/// Which rules leave which part of the request alone: with `targets`, the rules named by
/// `ids`/`tags` no longer look at them (e.g. `ARGS:password`); without, those rules are off.
#[derive(Debug, Deserialize, JsonSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct Exclusion {
    /// Rule ids, or ranges as text: `942100`, `"942200-942299"`.
    #[serde(default)]
    pub ids: Vec<serde_json::Value>,
    /// Rule tags: `attack-sqli`, `paranoia-level/2`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Variables: `ARGS:password`, `REQUEST_COOKIES:/^session/`, `REQUEST_HEADERS:referer`.
    #[serde(default)]
    pub targets: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    /// Inspect response bodies (text, JSON, XML, HTML, or without a Content-Type) for data
    /// leaks: stack traces, SQL errors, directory listings.
    #[serde(default)]
    pub enabled: bool,
    /// Largest response body inspected; a longer one goes on uninspected past this.
    #[serde(default = "response_limit")]
    #[schemars(with = "String")]
    pub body_limit: ByteSize,
}

fn response_limit() -> ByteSize {
    ByteSize::kib(512)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub mode: Mode,
    /// The CRS paranoia level, 1 (few false positives) to 4 (most detection).
    #[serde(default = "one")]
    pub paranoia_level: u8,
    /// Anomaly score at which a request is denied (a critical rule scores 5).
    #[serde(default = "five")]
    pub inbound_threshold: u32,
    /// Anomaly score at which a response is denied (with `response.enabled`).
    #[serde(default = "four")]
    pub outbound_threshold: u32,
    /// Run the built-in OWASP Core Rule Set 3.3.4.
    #[serde(default = "yes")]
    pub crs: bool,
    /// SecLang files loaded after the CRS (exclusions, your own rules), in order.
    #[serde(default)]
    pub rule_files: Vec<PathBuf>,
    /// Where `@pmFromFile` finds files the CRS does not ship.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub exclusions: Vec<Exclusion>,
    /// CRS settings (`tx.` variables of crs-setup.conf), e.g. `allowed_methods`.
    #[serde(default)]
    pub crs_settings: BTreeMap<String, String>,
    /// Largest request body inspected.
    #[serde(default = "body_limit")]
    #[schemars(with = "String")]
    pub body_limit: ByteSize,
    /// A body over `body_limit`: `block` (413) or `pass` (uninspected).
    #[serde(default)]
    pub body_over_limit: OnBody,
    /// A body that does not parse as its type says (malformed JSON, multipart, XML, or
    /// nested deeper than 128): `block` (400) or `pass` (rules see it raw).
    #[serde(default)]
    pub body_error: OnBody,
    #[serde(default)]
    pub response: Option<ResponseConfig>,
    /// Ban clients whose requests it blocks this often: `{after: 5, within: 1m, for: 10m}`
    /// (enforced by the `bans` plugin).
    #[serde(default)]
    pub ban: Option<crate::strikes::BanAfter>,
    /// A file the deny log goes to, one JSON line per decision; without it, the lines go
    /// to the gateway's log (target `gatehouse::waf`).
    #[serde(default)]
    pub deny_log: Option<PathBuf>,
}

fn one() -> u8 {
    1
}
fn five() -> u32 {
    5
}
fn four() -> u32 {
    4
}
fn yes() -> bool {
    true
}
fn body_limit() -> ByteSize {
    ByteSize::kib(128)
}

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = "waf";
    // After request-size-limit (1990), before authentication: an attack is refused before
    // anything is spent on it.
    const PRIORITY: i32 = 1985;
    type Config = Config;

    fn build(&self, c: Config, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        let mut errs = Vec::new();
        if !(1..=4).contains(&c.paranoia_level) {
            errs.push(FieldError::new("paranoia_level", "must be 1, 2, 3 or 4"));
        }
        if c.inbound_threshold == 0 {
            errs.push(FieldError::new("inbound_threshold", "must be > 0"));
        }
        if c.body_limit.0 == 0 {
            errs.push(FieldError::new("body_limit", "must be > 0"));
        }
        let mut files = Vec::new();
        for (i, f) in c.rule_files.iter().enumerate() {
            match std::fs::read_to_string(f) {
                Ok(t) => files.push((f.display().to_string(), t)),
                Err(e) => errs.push(FieldError::new(
                    format!("rule_files[{i}]"),
                    format!("{}: {e}", f.display()),
                )),
            }
        }
        let strikes = crate::strikes::Strikes::of(&c.ban, "waf", &mut errs);
        if !c.crs && files.is_empty() {
            errs.push(FieldError::new(
                "rule_files",
                "with crs: false, name a rule file",
            ));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let rs = engine::load(c.crs, &files, c.data_dir.as_deref()).map_err(|e| {
            vec![FieldError::new(
                "rule_files",
                format!("{e} (the previous rule set keeps serving)"),
            )]
        })?;
        let policy = policy(&rs, &c)?;
        rs.warm(c.paranoia_level);
        let deny_log =
            match &c.deny_log {
                Some(p) => Some(DenyLog::open(p).map_err(|e| {
                    vec![FieldError::new("deny_log", format!("{}: {e}", p.display()))]
                })?),
                None => None,
            };
        Ok(Arc::new(Waf {
            rs,
            policy,
            mode: c.mode,
            body_limit: c.body_limit.0,
            body_over_limit: c.body_over_limit,
            body_error: c.body_error,
            response: c
                .response
                .filter(|r| r.enabled)
                .map(|r| r.body_limit.0 as usize),
            deny_log,
            counts: DashMap::new(),
            strikes,
        }))
    }
}

/// The instance's settings over the shared rule set: paranoia, thresholds, exclusions.
fn policy(rs: &Ruleset, c: &Config) -> Result<Policy, Vec<FieldError>> {
    let mut pol = Policy {
        paranoia: c.paranoia_level,
        off: vec![false; rs.rules.len()],
        skips: HashMap::new(),
        init: Vec::new(),
    };
    let pl = c.paranoia_level.to_string();
    let mut tx: BTreeMap<String, String> = BTreeMap::from([
        ("crs_setup_version".into(), "334".into()),
        ("paranoia_level".into(), pl.clone()),
        ("executing_paranoia_level".into(), pl),
        (
            "inbound_anomaly_score_threshold".into(),
            c.inbound_threshold.to_string(),
        ),
        (
            "outbound_anomaly_score_threshold".into(),
            c.outbound_threshold.to_string(),
        ),
    ]);
    for (k, v) in &c.crs_settings {
        tx.insert(k.to_ascii_lowercase(), v.clone());
    }
    pol.init = tx
        .into_iter()
        .map(|(k, v)| (k.into_bytes().into(), v.into_bytes().into()))
        .collect();
    let mut errs = Vec::new();
    for (i, ex) in c.exclusions.iter().enumerate() {
        let at = |f: &str| format!("exclusions[{i}].{f}");
        let mut chosen = Vec::new();
        for (j, id) in ex.ids.iter().enumerate() {
            match id_range(id) {
                Some(r) => chosen.extend(rs.select(Some(r), None)),
                None => errs.push(FieldError::new(
                    format!("{}[{j}]", at("ids")),
                    format!("{id} is not a rule id or a range like \"942200-942299\""),
                )),
            }
        }
        for t in &ex.tags {
            chosen.extend(rs.select(None, Some(t)));
        }
        if ex.ids.is_empty() && ex.tags.is_empty() {
            errs.push(FieldError::new(at("ids"), "name rules by ids or tags"));
        }
        let mut targets = Vec::new();
        for (j, t) in ex.targets.iter().enumerate() {
            match Targets::exclusion(t) {
                Ok(x) => targets.push(x),
                Err(e) => errs.push(FieldError::new(format!("{}[{j}]", at("targets")), e)),
            }
        }
        for r in chosen {
            if targets.is_empty() {
                pol.off[r as usize] = true;
            } else {
                pol.skips
                    .entry(r)
                    .or_default()
                    .extend(targets.iter().cloned());
            }
        }
    }
    if errs.is_empty() {
        Ok(pol)
    } else {
        Err(errs)
    }
}

fn id_range(v: &serde_json::Value) -> Option<(u64, u64)> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(|n| (n, n)),
        serde_json::Value::String(s) => {
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            (a <= b).then_some((a, b))
        }
        _ => None,
    }
}

pub struct Waf {
    rs: Arc<Ruleset>,
    policy: Policy,
    mode: Mode,
    body_limit: u64,
    body_over_limit: OnBody,
    body_error: OnBody,
    /// The response body cap, when responses are inspected.
    response: Option<usize>,
    deny_log: Option<DenyLog>,
    /// (route, decision, rule group) → count.
    counts: DashMap<(Box<str>, &'static str, &'static str), AtomicU64>,
    strikes: Option<crate::strikes::Strikes>,
}

/// The request's TX collection, kept for the response phases.
#[derive(Clone)]
struct Kept(Arc<HashMap<Box<[u8]>, Vec<u8>>>);

/// A response body held back for inspection.
#[derive(Clone)]
struct Holding {
    body: BytesMut,
    status: StatusCode,
    headers: HeaderMap,
    given_up: bool,
}

impl Plugin for Waf {
    fn needs(&self) -> Needs {
        Needs {
            request_body: Some(self.body_limit),
            request_body_partial: self.body_over_limit == OnBody::Pass,
            facts: true,
            response_body: self.response.is_some(),
            ..Needs::default()
        }
    }

    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        if self.strikes.is_some() {
            // What this instance bans it refuses itself, before spending the rules on it.
            if let Some(b) = gatehouse_plugin_api::bans::bans().ip(ctx.client_ip) {
                return crate::access::bans::refuse(&b);
            }
        }
        let id = ctx
            .facts()
            .and_then(|f| f.request_id.as_ref())
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let req = Request {
            method: ctx.parts.method.as_str(),
            uri: &ctx.parts.uri,
            version: ctx.parts.version,
            headers: &ctx.parts.headers,
            remote_addr: ctx.client_ip,
            request_id: &id,
        };
        let body = ctx.body.map(|b| &b[..]);
        let v = engine::request(&self.rs, &self.policy, &req, body);
        let (status, decided) = if v.denied.is_some() {
            (StatusCode::FORBIDDEN, "request denied")
        } else if ctx.body_partial && self.body_over_limit == OnBody::Block {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large to inspect",
            )
        } else if v.body_error.is_some() && self.body_error == OnBody::Block {
            (
                StatusCode::BAD_REQUEST,
                "request body does not parse as its type",
            )
        } else {
            if self.response.is_some() {
                ctx.state.insert(Kept(Arc::new(v.tx)));
            }
            return Flow::Continue;
        };
        let blocked = self.mode == Mode::Block;
        self.record(ctx.route, &v.hits, blocked, v.denied.is_some());
        self.log(Entry {
            request_id: &id,
            route: ctx.route,
            client: ctx.client_ip,
            method: ctx.parts.method.as_str(),
            uri: ctx.parts.uri.path(),
            phase: "request",
            action: if blocked { "blocked" } else { "detected" },
            status: status.as_u16(),
            score: v.score,
            rules: &v.hits,
            body_error: v.body_error.as_deref(),
        });
        if !blocked {
            return Flow::Continue;
        }
        if let Some(s) = &self.strikes {
            let who = gatehouse_plugin_api::bans::Subject::ip(ctx.client_ip);
            s.strike(who, "requests blocked by the WAF");
        }
        Flow::Respond(json_response(status, decided, HeaderMap::new()))
    }

    fn response(&self, ctx: &mut ResponseCtx<'_>) {
        if self.response.is_none() || ctx.state.get::<Kept>().is_none() {
            return;
        }
        let texty = ctx
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or(""))
            // An origin that does not say what it sends can leak as much as one that does.
            .is_none_or(|t| {
                let t = t.to_ascii_lowercase();
                t.starts_with("text/") || t.contains("json") || t.contains("xml")
            });
        if texty {
            ctx.state.insert(Holding {
                body: BytesMut::new(),
                status: ctx.status,
                headers: ctx.headers.clone(),
                given_up: false,
            });
        }
    }

    fn response_body(&self, ctx: &mut BodyCtx<'_>, chunk: &mut Bytes, end: bool) {
        let (Some(limit), Some(h)) = (self.response, ctx.state.get_mut::<Holding>()) else {
            return;
        };
        if h.given_up {
            return;
        }
        if h.body.len() + chunk.len() > limit {
            h.given_up = true;
            let mut out = std::mem::take(&mut h.body);
            out.extend_from_slice(chunk);
            *chunk = out.freeze();
            return;
        }
        h.body.extend_from_slice(chunk);
        *chunk = Bytes::new();
        if !end {
            return;
        }
        let whole = std::mem::take(&mut h.body).freeze();
        let (status, headers) = (h.status, std::mem::take(&mut h.headers));
        let tx = ctx
            .state
            .get::<Kept>()
            .map(|k| (*k.0).clone())
            .unwrap_or_default();
        let v = engine::response(
            &self.rs,
            &self.policy,
            tx,
            status.as_u16(),
            &headers,
            &whole,
        );
        if v.denied.is_none() {
            *chunk = whole;
            return;
        }
        let blocked = self.mode == Mode::Block;
        self.record(ctx.route, &v.hits, blocked, true);
        self.log(Entry {
            request_id: "",
            route: ctx.route,
            client: std::net::Ipv4Addr::UNSPECIFIED.into(),
            method: "",
            uri: "",
            phase: "response",
            action: if blocked { "blocked" } else { "detected" },
            status: status.as_u16(),
            score: v.score,
            rules: &v.hits,
            body_error: None,
        });
        // The head is gone already: what can still be kept from the client is the body.
        *chunk = if blocked { Bytes::new() } else { whole };
    }

    fn metrics(&self) -> Vec<PluginMetric> {
        let mut out: Vec<PluginMetric> = self
            .counts
            .iter()
            .map(|e| {
                let (route, decision, group) = e.key();
                PluginMetric {
                    name: "waf_decisions",
                    help: "Requests the WAF blocked or, in detect mode, would have, by route and rule group",
                    labels: vec![
                        ("route", route.to_string()),
                        ("decision", (*decision).to_owned()),
                        ("group", (*group).to_owned()),
                    ],
                    value: e.value().load(Relaxed),
                }
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        if let Some(d) = &self.deny_log {
            out.push(PluginMetric {
                name: "waf_deny_log_dropped",
                help: "Deny log lines dropped because the writer fell behind",
                labels: Vec::new(),
                value: d.dropped(),
            });
        }
        out
    }
}

impl Waf {
    fn record(&self, route: &str, hits: &[super::eval::Hit], blocked: bool, by_rules: bool) {
        let decision = if blocked { "blocked" } else { "detected" };
        let mut groups: Vec<&'static str> = hits.iter().map(|h| group(h.id)).collect();
        groups.retain(|g| *g != "blocking-evaluation");
        groups.sort_unstable();
        groups.dedup();
        if groups.is_empty() {
            groups.push(if by_rules { "other" } else { "body" });
        }
        for g in groups {
            let key = (Box::<str>::from(route), decision, g);
            if let Some(c) = self.counts.get(&key) {
                c.fetch_add(1, Relaxed);
                continue;
            }
            self.counts.entry(key).or_default().fetch_add(1, Relaxed);
        }
    }

    fn log(&self, e: Entry<'_>) {
        match &self.deny_log {
            Some(d) => d.write(&e),
            None => tracing::warn!(target: "gatehouse::waf", "{}", e.json()),
        }
    }
}

/// The CRS's file (and so attack class) a rule id belongs to.
fn group(id: u64) -> &'static str {
    match id / 1000 {
        911 => "method-enforcement",
        913 => "scanner-detection",
        920 => "protocol-enforcement",
        921 => "protocol-attack",
        922 => "multipart-attack",
        930 => "lfi",
        931 => "rfi",
        932 => "rce",
        933 => "php",
        934 => "nodejs",
        941 => "xss",
        942 => "sqli",
        943 => "session-fixation",
        944 => "java",
        949 | 959 => "blocking-evaluation",
        950..=954 => "data-leakage",
        _ => "custom",
    }
}
