//! Request keys shared by the limiting plugins: which parts of a request (client ip,
//! consumer, route, a header...) make the key that is counted or limited separately.

use gatehouse_plugin_api::{cookie, header_name, query_arg, FieldError, RequestCtx};
use http::{HeaderName, HeaderValue};
use regex::Regex;
use schemars::JsonSchema;
use serde::Deserialize;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;

/// A User-Agent class for `ua_class` keys.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UaClass {
    pub name: String,
    pub regex: String,
}

/// One key part, or several.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum KeySpec {
    One(String),
    Many(Vec<String>),
}

impl KeySpec {
    pub fn ip() -> Self {
        KeySpec::One("ip".into())
    }
    pub fn route() -> Self {
        KeySpec::One("route".into())
    }
}

/// A part of a key.
#[derive(Debug)]
enum KeyPart {
    Ip,
    Consumer,
    Credential,
    Route,
    Service,
    UserAgent,
    UaClass,
    Header(HeaderName),
    Query(Box<str>),
    Cookie(Box<str>),
}

fn key_part(s: &str) -> Result<KeyPart, String> {
    let (kind, arg) = match s.split_once(':') {
        Some((k, a)) => (k, Some(a)),
        None => (s, None),
    };
    let need = |what: &str| {
        arg.filter(|a| !a.is_empty())
            .ok_or_else(|| format!("\"{kind}\" needs a {what}: \"{kind}:NAME\""))
    };
    Ok(match kind {
        "ip" => KeyPart::Ip,
        "consumer" => KeyPart::Consumer,
        "credential" => KeyPart::Credential,
        "route" => KeyPart::Route,
        "service" => KeyPart::Service,
        "user_agent" => KeyPart::UserAgent,
        "ua_class" => KeyPart::UaClass,
        "header" => KeyPart::Header(header_name(need("header name")?)?),
        "query" => KeyPart::Query(need("query argument")?.into()),
        "cookie" => KeyPart::Cookie(need("cookie name")?.into()),
        other => {
            return Err(format!(
                "unknown key \"{other}\"; expected ip, consumer, credential, route, service, \
                 user_agent, ua_class, header:NAME, query:NAME or cookie:NAME"
            ))
        }
    })
}

/// One part of a request's key, as read from the request.
enum Part<'a> {
    Ip(IpAddr),
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// A compiled key: its parts and the User-Agent classes `ua_class` uses.
#[derive(Debug)]
pub struct Key {
    /// The key as configured, parts joined with `+` (the metrics' key class).
    class: Box<str>,
    parts: Vec<KeyPart>,
    ua_classes: Vec<(Box<str>, Regex)>,
}

impl Key {
    /// Who a ban for this key's strikes names: the address for an `ip` key, the consumer
    /// for a `consumer` key (when there is one), else the key's text.
    pub fn subject(&self, ctx: &RequestCtx<'_>) -> gatehouse_plugin_api::bans::Subject {
        use gatehouse_plugin_api::bans::Subject;
        match (self.parts.as_slice(), &ctx.consumer) {
            ([KeyPart::Ip], _) => Subject::ip(ctx.client_ip),
            ([KeyPart::Consumer], Some(c)) => Subject::Consumer(c.username.to_string()),
            _ => Subject::Key(self.text(ctx)),
        }
    }

    /// What this key tells requests apart by, e.g. `ip` or `consumer+header:x-tier`.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// Compiles `spec` (field `key`) and `classes` (field `ua_classes`), reporting problems
    /// under those paths.
    pub fn new(spec: &KeySpec, classes: &[UaClass], errs: &mut Vec<FieldError>) -> Key {
        let specs: Vec<&str> = match spec {
            KeySpec::One(s) => vec![s.as_str()],
            KeySpec::Many(v) => v.iter().map(String::as_str).collect(),
        };
        if specs.is_empty() {
            errs.push(FieldError::new("key", "must name at least one key part"));
        }
        let mut key = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let path = match spec {
                KeySpec::One(_) => "key".to_string(),
                KeySpec::Many(_) => format!("key[{i}]"),
            };
            match key_part(s) {
                Ok(k) => key.push(k),
                Err(e) => errs.push(FieldError::new(path, e)),
            }
        }
        let mut ua_classes = Vec::new();
        for (i, u) in classes.iter().enumerate() {
            match Regex::new(&u.regex) {
                Ok(r) => ua_classes.push((u.name.as_str().into(), r)),
                Err(e) => errs.push(FieldError::new(
                    format!("ua_classes[{i}].regex"),
                    format!("regex does not compile: {e}"),
                )),
            }
        }
        if key.iter().any(|k| matches!(k, KeyPart::UaClass)) && classes.is_empty() {
            errs.push(FieldError::new(
                "ua_classes",
                "a ua_class key needs at least one class",
            ));
        }
        Key {
            class: specs.join("+").into(),
            parts: key,
            ua_classes,
        }
    }

    /// Feeds each part of this request's key to `f`.
    fn visit(&self, ctx: &RequestCtx<'_>, mut f: impl FnMut(Part<'_>)) {
        for part in &self.parts {
            match part {
                KeyPart::Ip => f(Part::Ip(ctx.client_ip)),
                KeyPart::Consumer => match &ctx.consumer {
                    Some(c) => f(Part::Text(&c.username)),
                    None => f(Part::Ip(ctx.client_ip)),
                },
                KeyPart::Credential => match &ctx.consumer {
                    Some(c) => f(Part::Text(c.credential.as_deref().unwrap_or(&c.username))),
                    None => f(Part::Ip(ctx.client_ip)),
                },
                KeyPart::Route => f(Part::Text(ctx.route)),
                KeyPart::Service => f(Part::Text(ctx.service)),
                KeyPart::UserAgent => f(Part::Bytes(header(ctx, &http::header::USER_AGENT))),
                KeyPart::UaClass => {
                    let ua =
                        std::str::from_utf8(header(ctx, &http::header::USER_AGENT)).unwrap_or("");
                    let class = self
                        .ua_classes
                        .iter()
                        .find(|(_, r)| r.is_match(ua))
                        .map_or("other", |(n, _)| n);
                    f(Part::Text(class))
                }
                KeyPart::Header(name) => f(Part::Bytes(header(ctx, name))),
                KeyPart::Query(name) => {
                    f(Part::Text(
                        query_arg(ctx.parts.uri.query(), name)
                            .as_deref()
                            .unwrap_or(""),
                    ));
                }
                KeyPart::Cookie(name) => {
                    f(Part::Text(cookie(&ctx.parts.headers, name).unwrap_or("")))
                }
            }
        }
    }

    /// The key of this request: a hash of its parts.
    pub fn hash(&self, ctx: &RequestCtx<'_>) -> u64 {
        let mut h = foldhash::fast::FixedState::with_seed(0x6761_7465).build_hasher();
        self.visit(ctx, |p| {
            match p {
                Part::Ip(ip) => ip.hash(&mut h),
                Part::Text(t) => t.hash(&mut h),
                Part::Bytes(b) => b.hash(&mut h),
            }
            0xffu8.hash(&mut h); // separates parts: ("ab","c") ≠ ("a","bc")
        });
        h.finish()
    }

    /// The key as text, for naming it in Redis (only when quota is fetched): readable for
    /// operators, and the same on every node whatever its build. Long keys are hashed.
    pub fn text(&self, ctx: &RequestCtx<'_>) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let mut first = true;
        self.visit(ctx, |p| {
            if !std::mem::take(&mut first) {
                s.push('|');
            }
            match p {
                Part::Ip(ip) => drop(write!(s, "{ip}")),
                Part::Text(t) => s.push_str(t),
                Part::Bytes(b) => s.push_str(&String::from_utf8_lossy(b)),
            }
        });
        if s.len() > 200 {
            let mut h = std::hash::DefaultHasher::new();
            s.hash(&mut h);
            return format!("#{:016x}", h.finish());
        }
        s
    }
}

fn header<'a>(ctx: &'a RequestCtx<'_>, name: &HeaderName) -> &'a [u8] {
    ctx.parts
        .headers
        .get(name)
        .map_or(&[][..], HeaderValue::as_bytes)
}
