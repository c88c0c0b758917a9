//! `rate-limit`: admits at most `limit` requests per `window` per key (client ip, consumer,
//! header...), answering the rest with 429, `Retry-After` and the IETF `RateLimit` headers.

mod algo;
mod cluster;

pub use algo::{Algorithm, Decision, Limit, State};
use cluster::{Cluster, Quick};

use crate::key::{Key, KeySpec, UaClass};
use bytes::Bytes;
use dashmap::DashMap;
use gatehouse_plugin_api::{
    json_response, now_ns, rejection_status, BuildEnv, FieldError, Flow, Later, Plugin, RequestCtx,
    TypedKind,
};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
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
    #[serde(default = "KeySpec::ip")]
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
    /// Ban keys rejected this often: `{after: 20, within: 1m, for: 10m}` (an `ip` key bans
    /// the address, a `consumer` key the consumer, any other the key; enforced by the `bans`
    /// plugin).
    #[serde(default)]
    pub ban: Option<crate::strikes::BanAfter>,
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

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = "rate-limit";
    const PRIORITY: i32 = 910;
    type Config = Config;

    fn build(&self, config: Config, env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        Ok(Arc::new(RateLimit::new(config, env)?))
    }
}

/// The plugin; its state is shared with requests that wait on Redis.
pub struct RateLimit(Arc<Inner>);

struct Inner {
    /// `policy: local`: the limit. `policy: redis`: the fallback while Redis is down (the
    /// limit divided by the node count).
    limit: Limit,
    key: Key,
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
    strikes: Option<crate::strikes::Strikes>,
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

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
        let status = rejection_status("status", c.status, &mut errs);
        let key = Key::new(&c.key, &c.ua_classes, &mut errs);
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
        let strikes = crate::strikes::Strikes::of(&c.ban, "rate-limit", &mut errs);
        let (Some(status), Ok(policy_value), true) = (status, policy_value, errs.is_empty()) else {
            return Err(errs);
        };
        Ok(RateLimit(Arc::new(Inner {
            limit: local,
            key,
            status,
            headers: c.headers,
            policy_value,
            policy_name: c.policy_name.into(),
            counters: DashMap::with_hasher(foldhash::fast::FixedState::default()),
            last_sweep: AtomicU64::new(0),
            cluster,
            fail_closed: c.on_redis_failure == OnRedisFailure::FailClosed,
            strikes,
        })))
    }

    /// Decides on one request for `key` at `now` (ns) with the node-local counters.
    pub fn decide(&self, key: u64, now: u64) -> Decision {
        self.0.decide(key, now)
    }
}

impl Inner {
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
            if let Some(s) = &self.strikes {
                s.strike(self.key.subject(ctx), "requests rejected by rate-limit");
            }
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
            Ok(h.into())
        }))
    }

    /// Applies a decision made after waiting.
    async fn apply_later(
        &self,
        d: Decision,
        who: &Option<gatehouse_plugin_api::bans::Subject>,
    ) -> Result<Later, Response<Bytes>> {
        if !d.allowed {
            if let (Some(s), Some(w)) = (&self.strikes, who) {
                s.strike(w.clone(), "requests rejected by rate-limit");
            }
            return Err(self.reject(&d));
        }
        let mut h = HeaderMap::new();
        self.add_headers(&mut h, &d);
        if d.delay_ns > 0 {
            tokio::time::sleep(Duration::from_nanos(d.delay_ns)).await;
        }
        Ok(h.into())
    }

    /// The rest of a request that found no leased quota: waits for the fetch, then decides
    /// as if it had just arrived. Others may win the fetched quota, so a few rounds are
    /// allowed; a request still without an answer then is decided by the local fallback, as
    /// if Redis were too slow, rather than rejected while quota may remain (failing closed,
    /// it is rejected with a one-second `Retry-After`).
    async fn after_fetch(
        self: Arc<Self>,
        key: u64,
        text: String,
        who: Option<gatehouse_plugin_api::bans::Subject>,
        mut fetch: cluster::Fetch,
    ) -> Result<Later, Response<Bytes>> {
        let Some(cluster) = &self.cluster else {
            return Ok(Later::default());
        };
        let mut down = false;
        for _ in 0..8 {
            fetch.await;
            match cluster.quick(key, now_ns(), || text.clone()) {
                Quick::Decided(d) => return self.apply_later(d, &who).await,
                Quick::Down => {
                    down = true;
                    break;
                }
                Quick::Fetch(f) => fetch = f,
            }
        }
        match self.fallback(key, now_ns()) {
            Some(d) => self.apply_later(d, &who).await,
            None if down => Err(self.closed()),
            None => self.apply_later(cluster.contended(), &who).await,
        }
    }
}

impl Plugin for RateLimit {
    fn key_class(&self) -> &str {
        self.0.key.class()
    }

    fn key_of(&self, ctx: &RequestCtx<'_>) -> Option<String> {
        Some(self.0.key.text(ctx))
    }

    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let me = &self.0;
        let now = now_ns();
        let key = me.key.hash(ctx);
        let Some(cluster) = &me.cluster else {
            return me.apply(me.decide(key, now), ctx);
        };
        match cluster.quick(key, now, || me.key.text(ctx)) {
            Quick::Decided(d) => me.apply(d, ctx),
            Quick::Down => match me.fallback(key, now) {
                Some(d) => me.apply(d, ctx),
                None => Flow::Respond(me.closed()),
            },
            Quick::Fetch(fetch) => {
                let text = me.key.text(ctx);
                let who = me.strikes.as_ref().map(|_| me.key.subject(ctx));
                Flow::Wait(Box::pin(me.clone().after_fetch(key, text, who, fetch)))
            }
        }
    }
}

#[cfg(test)]
mod tests;
