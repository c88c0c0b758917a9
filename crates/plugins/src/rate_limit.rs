//! `rate-limit`: admits at most `limit` requests per `window` per key (client ip, consumer,
//! header...), answering the rest with 429, `Retry-After` and the IETF `RateLimit` headers.

mod algo;
mod cluster;

pub use algo::{Algorithm, Decision, Limit, State};
use cluster::{Cluster, Quick};

use bytes::Bytes;
use dashmap::DashMap;
use gatehouse_plugin_api::{
    cookie, header_name, json_response, now_ns, parse_config, query_arg, schema_of, BuildEnv,
    FieldError, Flow, Plugin, PluginKind, RequestCtx,
};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use regex::Regex;
use schemars::JsonSchema;
use serde::Deserialize;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// `local`: each gateway node counts on its own. `redis`: one limit shared by every node
    /// using the same Redis (the node's `redis:` setting or `--redis`).
    #[serde(default)]
    pub policy: Policy,
    /// redis: the most quota a node leases in one round trip (default: 1 % of `limit`, at
    /// least 1). Larger batches mean fewer round trips; up to `nodes × redis_batch` leased
    /// quota can go unused when the window ends, so the cluster may admit that much less.
    #[serde(default)]
    pub redis_batch: Option<u64>,
    /// redis: how long a Redis call may take before Redis counts as down.
    #[serde(default = "hundred_ms", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub redis_timeout: Duration,
    /// redis: what happens while Redis is unreachable: `fail_open` (default) limits on this
    /// node alone at `limit / nodes`; `fail_closed` rejects with 503.
    #[serde(default)]
    pub on_redis_failure: OnRedisFailure,
    /// redis: how many gateway nodes share the limit, for the `fail_open` fallback (default:
    /// the node setting `node.cluster_size`).
    #[serde(default)]
    pub nodes: Option<u32>,
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
    Redis,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisFailure {
    #[default]
    FailOpen,
    FailClosed,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn hundred_ms() -> Duration {
    Duration::from_millis(100)
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
        env: &BuildEnv,
    ) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        Ok(Arc::new(RateLimit::new(parse_config(config)?, env)?))
    }
}

/// The plugin; its state is shared with requests that wait on Redis.
pub struct RateLimit(Arc<Inner>);

struct Inner {
    /// `policy: local`: the limit. `policy: redis`: the fallback while Redis is down (the
    /// limit divided by the node count).
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
    cluster: Option<Cluster>,
    fail_closed: bool,
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// One part of a request's key, as read from the request.
enum Part<'a> {
    Ip(IpAddr),
    Text(&'a str),
    Bytes(&'a [u8]),
}

impl RateLimit {
    pub fn new(c: Config, env: &BuildEnv) -> Result<Self, Vec<FieldError>> {
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
        if c.redis_batch == Some(0) {
            errs.push(FieldError::new("redis_batch", "must be > 0"));
        }
        if c.nodes == Some(0) {
            errs.push(FieldError::new("nodes", "must be > 0"));
        }
        if c.redis_timeout.is_zero() {
            errs.push(FieldError::new("redis_timeout", "must be > 0"));
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
        let limit = Limit {
            algorithm,
            limit: c.limit,
            window_ns,
        };
        let (cluster, local) = match c.policy {
            Policy::Local => (None, limit),
            Policy::Redis => {
                let nodes = u64::from(c.nodes.unwrap_or(env.nodes).max(1));
                let fallback = Limit {
                    limit: c.limit.div_ceil(nodes),
                    algorithm: match algorithm {
                        Algorithm::TokenBucket { burst } => Algorithm::TokenBucket {
                            burst: burst.div_ceil(nodes),
                        },
                        a => a,
                    },
                    ..limit
                };
                match &env.redis {
                    Some(store) => {
                        let batch = c.redis_batch.unwrap_or((c.limit / 100).max(1));
                        let cluster = Cluster::new(
                            store.clone(),
                            &env.scope,
                            &c.policy_name,
                            limit,
                            batch,
                            c.redis_timeout,
                        );
                        (Some(cluster), fallback)
                    }
                    None => {
                        errs.push(FieldError::new(
                            "policy",
                            "policy redis needs the node's Redis address: set `redis:` in the \
                             file or run with --redis URL",
                        ));
                        (None, fallback)
                    }
                }
            }
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
        Ok(RateLimit(Arc::new(Inner {
            limit: local,
            key,
            ua_classes,
            status,
            headers: c.headers,
            policy_value,
            policy_name: c.policy_name.into(),
            counters: DashMap::with_hasher(foldhash::fast::FixedState::default()),
            last_sweep: AtomicU64::new(0),
            cluster,
            fail_closed: c.on_redis_failure == OnRedisFailure::FailClosed,
        })))
    }

    /// Decides on one request for `key` at `now` (ns) with the node-local counters.
    pub fn decide(&self, key: u64, now: u64) -> Decision {
        self.0.decide(key, now)
    }
}

impl Inner {
    /// Feeds each part of this request's key to `f`.
    fn visit_key(&self, ctx: &RequestCtx<'_>, mut f: impl FnMut(Part<'_>)) {
        for part in &self.key {
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
    fn key_of(&self, ctx: &RequestCtx<'_>) -> u64 {
        let mut h = foldhash::fast::FixedState::with_seed(0x6761_7465).build_hasher();
        self.visit_key(ctx, |p| {
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
    fn key_text(&self, ctx: &RequestCtx<'_>) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        self.visit_key(ctx, |p| {
            if !s.is_empty() {
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

    fn decide(&self, key: u64, now: u64) -> Decision {
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

    /// While Redis is down: this node's share of the limit, or None when failing closed.
    fn fallback(&self, key: u64, now: u64) -> Option<Decision> {
        (!self.fail_closed).then(|| self.decide(key, now))
    }

    /// The answer while Redis is down and the limit fails closed.
    fn closed(&self) -> Response<Bytes> {
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "rate limit store unavailable",
            h,
        )
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

    /// Applies a decision made without waiting.
    fn apply(&self, d: Decision, ctx: &mut RequestCtx<'_>) -> Flow {
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

    /// Applies a decision made after waiting.
    async fn apply_later(&self, d: Decision) -> Result<HeaderMap, Response<Bytes>> {
        if !d.allowed {
            return Err(self.reject(&d));
        }
        let mut h = HeaderMap::new();
        self.add_headers(&mut h, &d);
        if d.delay_ns > 0 {
            tokio::time::sleep(Duration::from_nanos(d.delay_ns)).await;
        }
        Ok(h)
    }

    /// The rest of a request that found no leased quota: waits for the fetch, then decides
    /// as if it had just arrived. Others may win the fetched quota, so a few rounds are
    /// allowed before giving up with a rejection.
    async fn after_fetch(
        self: Arc<Self>,
        key: u64,
        text: String,
        mut fetch: cluster::Fetch,
    ) -> Result<HeaderMap, Response<Bytes>> {
        let Some(cluster) = &self.cluster else {
            return Ok(HeaderMap::new());
        };
        for _ in 0..8 {
            fetch.await;
            let now = now_ns();
            match cluster.quick(key, now, || text.clone()) {
                Quick::Decided(d) => return self.apply_later(d).await,
                Quick::Down => match self.fallback(key, now) {
                    Some(d) => return self.apply_later(d).await,
                    None => return Err(self.closed()),
                },
                Quick::Fetch(f) => fetch = f,
            }
        }
        let d = cluster.contended(key, now_ns());
        self.apply_later(d).await
    }
}

impl Plugin for RateLimit {
    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let me = &self.0;
        let now = now_ns();
        let key = me.key_of(ctx);
        let Some(cluster) = &me.cluster else {
            return me.apply(me.decide(key, now), ctx);
        };
        match cluster.quick(key, now, || me.key_text(ctx)) {
            Quick::Decided(d) => me.apply(d, ctx),
            Quick::Down => match me.fallback(key, now) {
                Some(d) => me.apply(d, ctx),
                None => Flow::Respond(me.closed()),
            },
            Quick::Fetch(fetch) => {
                let text = me.key_text(ctx);
                Flow::Wait(Box::pin(me.clone().after_fetch(key, text, fetch)))
            }
        }
    }
}

fn header<'a>(ctx: &'a RequestCtx<'_>, name: &HeaderName) -> &'a [u8] {
    ctx.parts
        .headers
        .get(name)
        .map_or(&[][..], HeaderValue::as_bytes)
}

#[cfg(test)]
mod tests;
