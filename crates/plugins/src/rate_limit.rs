//! `rate-limit`: admits at most `limit` requests per `window` per key (client ip, consumer,
//! header...), answering the rest with 429, `Retry-After` and the IETF `RateLimit` headers.

mod algo;

pub use algo::{Algorithm, Decision, Limit, State};

use bytes::Bytes;
use dashmap::DashMap;
use gatehouse_plugin_api::{
    cookie, header_name, json_response, parse_config, query_arg, schema_of, BuildEnv, FieldError,
    Flow, Plugin, PluginKind, RequestCtx,
};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use regex::Regex;
use schemars::JsonSchema;
use serde::Deserialize;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Rate limiting of requests per key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Requests admitted per window (per key).
    pub limit: u64,
    /// Window length, e.g. `1s`, `1m`, `1h`.
    #[serde(default = "one_second", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub window: Duration,
    /// What is limited separately: `ip`, `consumer`, `credential`, `route`, `service`,
    /// `user_agent`, `ua_class`, `header:NAME`, `query:NAME`, `cookie:NAME`; or a list of
    /// these for a composite key. `consumer` and `credential` fall back to the client ip
    /// when the caller is anonymous.
    #[serde(default)]
    pub key: KeySpec,
    /// `fixed_window`, `sliding_window` (default), `token_bucket` (GCRA) or `leaky_bucket`
    /// (delays early requests instead of rejecting them, up to `max_delay`).
    #[serde(default)]
    pub algorithm: AlgorithmName,
    /// token_bucket: how many requests may come at once (default: `limit`).
    #[serde(default)]
    pub burst: Option<u64>,
    /// leaky_bucket: the longest a request is held before it is rejected instead.
    #[serde(default = "one_second", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_delay: Duration,
    /// `local`: each gateway node counts on its own.
    #[serde(default)]
    pub policy: Policy,
    /// Status of a rejection.
    #[serde(default = "too_many")]
    pub status: u16,
    /// Send `RateLimit-Policy` and `RateLimit` headers on admitted and rejected responses.
    #[serde(default = "yes")]
    pub headers: bool,
    /// The policy's name in the `RateLimit` headers.
    #[serde(default = "default_name")]
    pub policy_name: String,
    /// For `ua_class` keys: User-Agent classes tried in order; the first whose regex matches
    /// names the class, else the class is `other` (e.g. spiders vs browsers).
    #[serde(default)]
    pub ua_classes: Vec<UaClass>,
}

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

impl Default for KeySpec {
    fn default() -> Self {
        KeySpec::One("ip".into())
    }
}

#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmName {
    FixedWindow,
    #[default]
    SlidingWindow,
    #[serde(alias = "gcra")]
    TokenBucket,
    LeakyBucket,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    #[default]
    Local,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn too_many() -> u16 {
    429
}
fn yes() -> bool {
    true
}
fn default_name() -> String {
    "default".into()
}

/// A part of the limit key.
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

pub struct Kind;

impl PluginKind for Kind {
    fn name(&self) -> &'static str {
        "rate-limit"
    }
    fn priority(&self) -> i32 {
        910
    }
    fn schema(&self) -> serde_json::Value {
        schema_of::<Config>()
    }
    fn build(
        &self,
        config: &serde_json::Value,
        _env: &BuildEnv,
    ) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        Ok(Arc::new(RateLimit::new(parse_config(config)?)?))
    }
}

pub struct RateLimit {
    limit: Limit,
    key: Vec<KeyPart>,
    ua_classes: Vec<(Box<str>, Regex)>,
    status: StatusCode,
    headers: bool,
    /// `"name";q=100;w=60`, made once.
    policy_value: HeaderValue,
    policy_name: Box<str>,
    /// Keys are hashes of the key parts: no allocation per request, and a collision of two
    /// 64-bit hashes (sharing one budget) is vanishingly rare.
    counters: DashMap<u64, State, foldhash::fast::FixedState>,
    last_sweep: AtomicU64,
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

impl RateLimit {
    pub fn new(c: Config) -> Result<Self, Vec<FieldError>> {
        let mut errs = Vec::new();
        if c.limit == 0 {
            errs.push(FieldError::new("limit", "must be > 0"));
        }
        if c.window.is_zero() {
            errs.push(FieldError::new("window", "must be > 0"));
        }
        if c.burst == Some(0) {
            errs.push(FieldError::new("burst", "must be > 0"));
        }
        let status = match StatusCode::from_u16(c.status) {
            Ok(s) if (400..600).contains(&c.status) => Some(s),
            _ => {
                errs.push(FieldError::new(
                    "status",
                    "must be an HTTP status from 400 to 599",
                ));
                None
            }
        };
        let specs: Vec<&str> = match &c.key {
            KeySpec::One(s) => vec![s.as_str()],
            KeySpec::Many(v) => v.iter().map(String::as_str).collect(),
        };
        if specs.is_empty() {
            errs.push(FieldError::new("key", "must name at least one key part"));
        }
        let mut key = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let path = match c.key {
                KeySpec::One(_) => "key".to_string(),
                KeySpec::Many(_) => format!("key[{i}]"),
            };
            match key_part(s) {
                Ok(k) => key.push(k),
                Err(e) => errs.push(FieldError::new(path, e)),
            }
        }
        let mut ua_classes = Vec::new();
        for (i, u) in c.ua_classes.iter().enumerate() {
            match Regex::new(&u.regex) {
                Ok(r) => ua_classes.push((u.name.as_str().into(), r)),
                Err(e) => errs.push(FieldError::new(
                    format!("ua_classes[{i}].regex"),
                    format!("regex does not compile: {e}"),
                )),
            }
        }
        if key.iter().any(|k| matches!(k, KeyPart::UaClass)) && c.ua_classes.is_empty() {
            errs.push(FieldError::new(
                "ua_classes",
                "a ua_class key needs at least one class",
            ));
        }
        let name_ok = !c.policy_name.is_empty()
            && c.policy_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            errs.push(FieldError::new(
                "policy_name",
                "must be non-empty and use only letters, digits, '-', '_' and '.'",
            ));
        }
        let window_ns = c.window.as_nanos().min(u64::MAX as u128 / 4) as u64;
        let algorithm = match c.algorithm {
            AlgorithmName::FixedWindow => Algorithm::FixedWindow,
            AlgorithmName::SlidingWindow => Algorithm::SlidingWindow,
            AlgorithmName::TokenBucket => Algorithm::TokenBucket {
                burst: c.burst.unwrap_or(c.limit),
            },
            AlgorithmName::LeakyBucket => Algorithm::LeakyBucket {
                max_delay_ns: c.max_delay.as_nanos().min(u64::MAX as u128 / 4) as u64,
            },
        };
        let policy_value = HeaderValue::from_str(&format!(
            "\"{}\";q={};w={}",
            c.policy_name,
            c.limit,
            c.window.as_secs().max(1)
        ));
        let (Some(status), Ok(policy_value), true) = (status, policy_value, errs.is_empty()) else {
            return Err(errs);
        };
        Ok(RateLimit {
            limit: Limit {
                algorithm,
                limit: c.limit,
                window_ns,
            },
            key,
            ua_classes,
            status,
            headers: c.headers,
            policy_value,
            policy_name: c.policy_name.into(),
            counters: DashMap::with_hasher(foldhash::fast::FixedState::default()),
            last_sweep: AtomicU64::new(0),
        })
    }

    /// The key of this request: a hash of its parts.
    fn key_of(&self, ctx: &RequestCtx<'_>) -> u64 {
        let mut h = foldhash::fast::FixedState::with_seed(0x6761_7465).build_hasher();
        for part in &self.key {
            match part {
                KeyPart::Ip => ctx.client_ip.hash(&mut h),
                KeyPart::Consumer => match &ctx.consumer {
                    Some(c) => c.username.hash(&mut h),
                    None => ctx.client_ip.hash(&mut h),
                },
                KeyPart::Credential => match &ctx.consumer {
                    Some(c) => c.credential.as_deref().unwrap_or(&c.username).hash(&mut h),
                    None => ctx.client_ip.hash(&mut h),
                },
                KeyPart::Route => ctx.route.hash(&mut h),
                KeyPart::Service => ctx.service.hash(&mut h),
                KeyPart::UserAgent => header(ctx, &http::header::USER_AGENT).hash(&mut h),
                KeyPart::UaClass => {
                    let ua =
                        std::str::from_utf8(header(ctx, &http::header::USER_AGENT)).unwrap_or("");
                    let class = self
                        .ua_classes
                        .iter()
                        .find(|(_, r)| r.is_match(ua))
                        .map_or("other", |(n, _)| n);
                    class.hash(&mut h)
                }
                KeyPart::Header(name) => header(ctx, name).hash(&mut h),
                KeyPart::Query(name) => query_arg(ctx.parts.uri.query(), name)
                    .as_deref()
                    .unwrap_or("")
                    .hash(&mut h),
                KeyPart::Cookie(name) => {
                    cookie(&ctx.parts.headers, name).unwrap_or("").hash(&mut h)
                }
            }
            0xffu8.hash(&mut h); // separates parts: ("ab","c") ≠ ("a","bc")
        }
        h.finish()
    }

    /// Decides on one request for `key` at `now` (ns).
    pub fn decide(&self, key: u64, now: u64) -> Decision {
        self.maybe_sweep(now);
        let mut state = self.counters.entry(key).or_default();
        self.limit.check(&mut state, now)
    }

    /// Forgets keys whose state is as good as new, at most once per two windows (and per 10
    /// s): one request pays for a pass over the map now and then instead of a background
    /// task per instance.
    fn maybe_sweep(&self, now: u64) {
        let every = (2 * self.limit.window_ns).max(10_000_000_000);
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) < every {
            return;
        }
        if self
            .last_sweep
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.counters.retain(|_, s| !self.limit.is_idle(s, now));
        }
    }

    /// The `RateLimit` header for a decision.
    fn state_value(&self, d: &Decision) -> Option<HeaderValue> {
        let t = d.reset_ns.div_ceil(1_000_000_000);
        HeaderValue::from_str(&format!(
            "\"{}\";r={};t={}",
            self.policy_name, d.remaining, t
        ))
        .ok()
    }

    fn add_headers(&self, h: &mut HeaderMap, d: &Decision) {
        if !self.headers {
            return;
        }
        h.append(RATELIMIT_POLICY.clone(), self.policy_value.clone());
        if let Some(v) = self.state_value(d) {
            h.append(RATELIMIT.clone(), v);
        }
    }

    fn reject(&self, d: &Decision) -> Response<Bytes> {
        let mut h = HeaderMap::new();
        let secs = d.retry_after_ns.div_ceil(1_000_000_000).max(1);
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        self.add_headers(&mut h, d);
        json_response(self.status, "rate limit exceeded", h)
    }
}

impl Plugin for RateLimit {
    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let d = self.decide(self.key_of(ctx), now_ns());
        if !d.allowed {
            return Flow::Respond(self.reject(&d));
        }
        if d.delay_ns == 0 {
            self.add_headers(ctx.response_headers, &d);
            return Flow::Continue;
        }
        let mut h = HeaderMap::new();
        self.add_headers(&mut h, &d);
        let delay = Duration::from_nanos(d.delay_ns);
        Flow::Wait(Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(h)
        }))
    }
}

fn header<'a>(ctx: &'a RequestCtx<'_>, name: &HeaderName) -> &'a [u8] {
    ctx.parts
        .headers
        .get(name)
        .map_or(&[][..], HeaderValue::as_bytes)
}

/// Nanoseconds on a process-wide monotonic clock.
fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    // Offset by a day so that "never" (0) is always in the past.
    start.elapsed().as_nanos() as u64 + 86_400_000_000_000
}

#[cfg(test)]
mod tests;
