//! Config of what keeps a route serving when upstreams misbehave: active and passive health
//! checks of targets, with their validation.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Health checking of an upstream's targets. A target is used only while it is healthy by
/// every check configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Probes sent to every target on a timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveCheck>,
    /// Outlier detection from real traffic: targets that keep failing are ejected for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveCheck>,
    /// When no target is healthy: `fail_fast` answers 503 at once, `try_anyway` ignores
    /// health and balances over all targets (the checks may be what is wrong).
    #[serde(default)]
    pub all_down: AllDown,
    /// How long a target whose connection failed (refused, unreachable, connect timeout) is
    /// left out of the balancing, as nginx's `max_fails=1 fail_timeout=10s` does. Applies
    /// without any `health` too; never sets aside an upstream's last usable target; `0s`
    /// turns it off.
    #[serde(
        default = "default_set_aside",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<3600, _>"
    )]
    #[schemars(with = "String")]
    pub set_aside_on_connect_failure: Duration,
}

/// What [`Health::set_aside_on_connect_failure`] is for an upstream without `health`.
pub const DEFAULT_SET_ASIDE: Duration = Duration::from_secs(10);

fn default_set_aside() -> Duration {
    DEFAULT_SET_ASIDE
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AllDown {
    #[default]
    FailFast,
    TryAnyway,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckType {
    /// A GET of `path`, judged by status (and body).
    #[default]
    Http,
    /// A TCP connect.
    Tcp,
    /// The standard gRPC health check, `grpc.health.v1.Health/Check` for `grpc_service`,
    /// over HTTP/2: healthy when it answers SERVING. Needs `protocol: h2` or `h2c`.
    Grpc,
}

/// An active probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveCheck {
    #[serde(default, rename = "type")]
    pub kind: CheckType,
    /// The path probed (`http`).
    #[serde(default = "default_check_path")]
    pub path: String,
    /// Host header of the probe. Default: the target's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Statuses that mean healthy. Default: any 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<u16>,
    /// `grpc`: the service asked about (`""`, the default, is the server as a whole).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub grpc_service: String,
    /// A healthy answer's body must contain this text (only the first 64 KiB are read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// Time between two probes of a target; each node adds up to ±10 % of jitter so that
    /// nodes do not probe in lock-step.
    #[serde(
        default = "default_interval",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<3600, _>"
    )]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// A probe that takes longer fails.
    #[serde(
        default = "default_check_timeout",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<300, _>"
    )]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy target healthy again.
    #[serde(default = "two")]
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy target unhealthy.
    #[serde(default = "three")]
    pub unhealthy_threshold: u32,
}

/// Passive checks (outlier detection), judged on real requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassiveCheck {
    /// Failures in a row that eject a target; 0 turns this test off.
    #[serde(default = "five")]
    pub consecutive_failures: u32,
    /// Response statuses that count as failures, besides connect errors, resets and
    /// timeouts.
    #[serde(default = "default_failure_statuses")]
    pub failure_statuses: Vec<u16>,
    /// Eject a target whose share of failed requests within `window` reaches this (0 to 1),
    /// once it has seen `min_requests` there. Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_ratio: Option<f64>,
    #[serde(
        default = "default_window",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<86400, _>"
    )]
    #[schemars(with = "String")]
    pub window: Duration,
    #[serde(default = "twenty")]
    pub min_requests: u32,
    /// How long the first ejection lasts; each ejection in a row lasts one more of these,
    /// up to `max_ejection`.
    #[serde(
        default = "default_base_ejection",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<86400, _>"
    )]
    #[schemars(with = "String")]
    pub base_ejection: Duration,
    #[serde(
        default = "default_max_ejection",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<604800, _>"
    )]
    #[schemars(with = "String")]
    pub max_ejection: Duration,
    /// At most this share of the upstream's targets (percent) is ejected at once, so that
    /// passive checks alone never take a whole upstream out.
    #[serde(default = "fifty")]
    pub max_ejection_percent: u32,
}

fn default_check_path() -> String {
    "/".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_window() -> Duration {
    Duration::from_secs(10)
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}
fn default_failure_statuses() -> Vec<u16> {
    vec![502, 503, 504]
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}
fn five() -> u32 {
    5
}
fn twenty() -> u32 {
    20
}
fn fifty() -> u32 {
    50
}

/// Problems of an upstream's `health`, as `(field under health, message)`.
pub(crate) fn check_health(h: &Health, err: &mut dyn FnMut(String, String)) {
    if let Some(a) = &h.active {
        if a.kind == CheckType::Http && !a.path.starts_with('/') {
            err("active.path".into(), "must start with /".into());
        }
        statuses("active.expected_statuses", &a.expected_statuses, err);
        positive("active.interval", a.interval, err);
        positive("active.timeout", a.timeout, err);
        if a.healthy_threshold == 0 {
            err(
                "active.healthy_threshold".into(),
                "must be at least 1".into(),
            );
        }
        if a.unhealthy_threshold == 0 {
            err(
                "active.unhealthy_threshold".into(),
                "must be at least 1".into(),
            );
        }
        if a.kind == CheckType::Tcp
            && (a.body_contains.is_some() || !a.expected_statuses.is_empty())
        {
            err(
                "active.type".into(),
                "a tcp check has no status or body; use type: http".into(),
            );
        }
    }
    if let Some(p) = &h.passive {
        statuses("passive.failure_statuses", &p.failure_statuses, err);
        if let Some(r) = p.failure_ratio {
            if !(r > 0.0 && r <= 1.0) {
                err(
                    "passive.failure_ratio".into(),
                    "must be above 0 and at most 1".into(),
                );
            }
        }
        positive("passive.window", p.window, err);
        positive("passive.base_ejection", p.base_ejection, err);
        if p.max_ejection < p.base_ejection {
            err(
                "passive.max_ejection".into(),
                "must be at least base_ejection".into(),
            );
        }
        if p.max_ejection_percent > 100 {
            err(
                "passive.max_ejection_percent".into(),
                "must be from 0 to 100".into(),
            );
        }
        if p.consecutive_failures == 0 && p.failure_ratio.is_none() {
            err(
                "passive".into(),
                "ejects nothing: set consecutive_failures above 0 or a failure_ratio".into(),
            );
        }
    }
}

pub(crate) fn statuses(path: &str, list: &[u16], err: &mut dyn FnMut(String, String)) {
    for (i, s) in list.iter().enumerate() {
        if !(100..=599).contains(s) {
            err(format!("{path}[{i}]"), format!("{s} is not an HTTP status"));
        }
    }
}

pub(crate) fn positive(path: &str, d: Duration, err: &mut dyn FnMut(String, String)) {
    if d.is_zero() {
        err(path.into(), "must be above 0".into());
    }
}

/// When and how a failed request is tried again (on a service, or a route to override it).
/// How many times is the service's (or route's) `retries`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// What is retried: `connect_failure`, `reset` (the connection broke before a response
    /// head), `timeout` (no response head in time), and response statuses such as 503.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// Methods that may be retried. Methods that are not idempotent (POST, PATCH) are only
    /// retried for failures before the request was sent (`connect_failure`), and only when
    /// listed here.
    #[serde(default = "default_retry_methods")]
    pub methods: Vec<String>,
    /// Each attempt's own limit for the response head (within the service's read and total
    /// timeouts). Default: none beyond those.
    #[serde(
        default,
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::opt_at_most::<86400, _>",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub per_try_timeout: Option<Duration>,
    /// First backoff; each retry doubles it, up to `max_backoff`, with full jitter.
    #[serde(
        default = "default_backoff",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<60, _>"
    )]
    #[schemars(with = "String")]
    pub backoff: Duration,
    #[serde(
        default = "default_max_backoff",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<300, _>"
    )]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
    /// Retries may add at most this share of the service's requests over the last 10 s...
    #[serde(default = "default_budget_ratio")]
    pub budget_ratio: f64,
    /// ...plus this many per second. Past the budget, a failure is answered at once.
    #[serde(default = "ten")]
    pub budget_min_per_second: u32,
    /// A request body is kept for a retry only up to this many bytes (declared by
    /// Content-Length); larger or chunked bodies are streamed and not retried once sent.
    #[serde(default = "default_max_body")]
    pub max_body: u64,
    /// The header that tells the upstream how many milliseconds this attempt has left (set
    /// when there is a per-try or total timeout). Empty: not sent.
    #[serde(default = "default_deadline_header")]
    pub deadline_header: String,
    /// gRPC statuses retried when an answer carries one in its head (the trailers-only
    /// answer a failing gRPC server sends), e.g. `[unavailable]`. gRPC calls are POSTs: they
    /// are retried after being sent only when `methods` lists POST (the call must be safe to
    /// repeat).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_status: Vec<crate::GrpcCode>,
}

/// A retry condition: an event, or a response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RetryOn {
    Status(u16),
    Event(RetryEvent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetryEvent {
    ConnectFailure,
    Reset,
    Timeout,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            on: default_retry_on(),
            methods: default_retry_methods(),
            per_try_timeout: None,
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            budget_ratio: default_budget_ratio(),
            budget_min_per_second: ten(),
            max_body: default_max_body(),
            deadline_header: default_deadline_header(),
            grpc_status: Vec::new(),
        }
    }
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::Event(RetryEvent::ConnectFailure)]
}
/// RFC 9110 §9.2.2's idempotent methods.
pub const IDEMPOTENT: [&str; 6] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"];
fn default_retry_methods() -> Vec<String> {
    IDEMPOTENT.iter().map(|m| (*m).to_owned()).collect()
}
fn default_backoff() -> Duration {
    Duration::from_millis(25)
}
fn default_max_backoff() -> Duration {
    Duration::from_millis(250)
}
fn default_budget_ratio() -> f64 {
    0.2
}
fn ten() -> u32 {
    10
}
fn default_max_body() -> u64 {
    64 * 1024
}
fn default_deadline_header() -> String {
    "x-gatehouse-deadline-ms".into()
}

/// Problems of a `retry` policy, as `(field under retry, message)`.
pub(crate) fn check_retry(r: &RetryPolicy, err: &mut dyn FnMut(String, String)) {
    for (i, on) in r.on.iter().enumerate() {
        if let RetryOn::Status(s) = on {
            if !(100..=599).contains(s) {
                err(format!("on[{i}]"), format!("{s} is not an HTTP status"));
            }
        }
    }
    for (i, m) in r.methods.iter().enumerate() {
        if http_method(m).is_none() {
            err(
                format!("methods[{i}]"),
                format!("unknown method {m:?}, expected one of GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE"),
            );
        }
    }
    if let Some(t) = r.per_try_timeout {
        positive("per_try_timeout", t, err);
    }
    if r.max_backoff < r.backoff {
        err("max_backoff".into(), "must be at least backoff".into());
    }
    if !(0.0..=10.0).contains(&r.budget_ratio) {
        err("budget_ratio".into(), "must be from 0 to 10".into());
    }
    if !r.deadline_header.is_empty()
        && !r
            .deadline_header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        err(
            "deadline_header".into(),
            "must be a header name (letters, digits, - and _)".into(),
        );
    }
}

fn http_method(m: &str) -> Option<&str> {
    [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
    ]
    .into_iter()
    .find(|k| *k == m)
}

/// A circuit breaker: closed → open when too many calls in `window` failed or were slow →
/// half-open after `open_for`, letting `half_open_probes` calls through → closed when they
/// all succeed, open again when one fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    #[serde(
        default = "default_window",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<86400, _>"
    )]
    #[schemars(with = "String")]
    pub window: Duration,
    /// Calls in the window before the ratios are judged.
    #[serde(default = "twenty")]
    pub min_calls: u32,
    /// Opens when this share (0-1] of the window's calls failed: a connect error, reset,
    /// timeout, or a status in `failure_statuses`.
    #[serde(default = "half")]
    pub failure_ratio: f64,
    #[serde(default = "default_breaker_statuses")]
    pub failure_statuses: Vec<u16>,
    /// A call whose response head takes longer than this is slow. Default: none is.
    #[serde(
        default,
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::opt_at_most::<86400, _>",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub slow_call_duration: Option<Duration>,
    /// Opens when this share (0-1] of the window's calls were slow.
    #[serde(default = "one")]
    pub slow_call_ratio: f64,
    /// How long it stays open before letting probes through.
    #[serde(
        default = "default_open_for",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<86400, _>"
    )]
    #[schemars(with = "String")]
    pub open_for: Duration,
    #[serde(default = "three")]
    pub half_open_probes: u32,
}

fn half() -> f64 {
    0.5
}
fn one() -> f64 {
    1.0
}
fn default_open_for() -> Duration {
    Duration::from_secs(30)
}
fn default_breaker_statuses() -> Vec<u16> {
    vec![500, 502, 503, 504]
}

/// Problems of a `circuit_breaker`, as `(field under it, message)`.
pub(crate) fn check_breaker(b: &CircuitBreaker, err: &mut dyn FnMut(String, String)) {
    positive("window", b.window, err);
    positive("open_for", b.open_for, err);
    if b.min_calls == 0 {
        err("min_calls".into(), "must be at least 1".into());
    }
    for (name, r) in [
        ("failure_ratio", b.failure_ratio),
        ("slow_call_ratio", b.slow_call_ratio),
    ] {
        if !(r > 0.0 && r <= 1.0) {
            err(name.into(), "must be above 0 and at most 1".into());
        }
    }
    statuses("failure_statuses", &b.failure_statuses, err);
    if let Some(d) = b.slow_call_duration {
        positive("slow_call_duration", d, err);
    }
    if b.half_open_probes == 0 {
        err("half_open_probes".into(), "must be at least 1".into());
    }
}

/// What a route answers when its upstream fails ("bottom data"): the last good response for
/// the same request, else a static response. Such answers carry the `header`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// Upstream answers replaced by the fallback. The gateway's own failures (502 connect
    /// failed, 503 breaker open or no healthy target, 504 timeout) are among the defaults.
    #[serde(default = "default_breaker_statuses")]
    pub statuses: Vec<u16>,
    /// Keep the last successful response of each GET/HEAD request to serve it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<FallbackCache>,
    /// The response when nothing better is kept.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_response: Option<StaticResponse>,
    /// An upstream asked instead when nothing is kept and there is no static response
    /// (a GET/HEAD, or a request whose small body was kept for a retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Marks a fallback answer; its value says what it is (`cache`, `static` or `upstream`).
    #[serde(default = "default_degraded_header")]
    pub header: String,
}

/// The bounded store of last good responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FallbackCache {
    /// Responses kept (by method class, host, path and query), least recently used first out.
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// A kept response older than this is not served.
    #[serde(
        default = "default_max_age",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<2592000, _>"
    )]
    #[schemars(with = "String")]
    pub max_age: Duration,
    /// Larger bodies are not kept (bytes).
    #[serde(default = "default_fallback_body")]
    pub max_body: u64,
    /// Also keep answers to requests that carry `Authorization` or `Cookie`, one entry per
    /// credential (keyed on those headers), so one caller's answer never reaches another.
    /// Off: such requests are neither kept nor answered from the cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_credentials: bool,
}

/// A fixed response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticResponse {
    #[serde(default = "default_static_status")]
    pub status: u16,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
    /// The body; or `body_file`, read when the config is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_file: Option<String>,
}

fn default_degraded_header() -> String {
    "x-gatehouse-degraded".into()
}
fn default_max_entries() -> u64 {
    10_000
}
fn default_max_age() -> Duration {
    Duration::from_secs(300)
}
fn default_fallback_body() -> u64 {
    256 * 1024
}
fn default_static_status() -> u16 {
    200
}

/// Problems of a `fallback`, as `(field under it, message)`.
pub(crate) fn check_fallback(f: &Fallback, err: &mut dyn FnMut(String, String)) {
    statuses("statuses", &f.statuses, err);
    if f.cache.is_none() && f.static_response.is_none() && f.upstream.is_none() {
        err(
            "".into(),
            "serves nothing: give a cache, a static response or an upstream".into(),
        );
    }
    if let Some(c) = &f.cache {
        if c.max_entries == 0 {
            err("cache.max_entries".into(), "must be at least 1".into());
        }
        positive("cache.max_age", c.max_age, err);
    }
    if let Some(s) = &f.static_response {
        statuses("static.status", std::slice::from_ref(&s.status), err);
        if s.body.is_some() && s.body_file.is_some() {
            err(
                "static.body_file".into(),
                "give either body or body_file, not both".into(),
            );
        }
        for (name, value) in &s.headers {
            let ok_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
            if !ok_name {
                err(format!("static.headers.{name}"), "not a header name".into());
            } else if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                err(
                    format!("static.headers.{name}"),
                    "a header value cannot hold control characters".into(),
                );
            }
        }
    }
    if f.header.is_empty()
        || !f
            .header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        err(
            "header".into(),
            "must be a header name (letters, digits, - and _)".into(),
        );
    }
}
