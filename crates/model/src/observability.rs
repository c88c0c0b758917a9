//! What the data plane tells about itself: Prometheus metrics, the access log, OpenTelemetry
//! tracing, `Server-Timing` and the debug decision trace (top-level `observability`, with
//! per-route overrides in `routes[].observability`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The node-wide observability settings; every part has working defaults, so an empty
/// section (or none) gives metrics and nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Observability {
    #[serde(default)]
    pub metrics: Metrics,
    /// One JSON line per request; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,
    /// OpenTelemetry spans exported over OTLP/HTTP; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    /// Add `Server-Timing: gateway;dur=..., upstream;dur=...` to every response (a route can
    /// turn it on alone).
    #[serde(default)]
    pub server_timing: bool,
    /// The request header that asks for a decision trace; its value must be a token issued
    /// by the admin API (`POST /debug/tokens`).
    #[serde(default = "default_debug_header")]
    pub debug_header: String,
}

fn default_debug_header() -> String {
    "x-gatehouse-debug".into()
}

impl Default for Observability {
    fn default() -> Self {
        Self {
            metrics: Metrics::default(),
            access_log: None,
            tracing: None,
            server_timing: false,
            debug_header: default_debug_header(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Count requests and time them per route (on by default; a route can opt out).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Also count requests per consumer (one series set per configured consumer, so the
    /// cardinality is bounded by the config).
    #[serde(default)]
    pub consumers: bool,
    /// Upper bounds of the latency histograms' buckets, in seconds, ascending.
    #[serde(default = "default_buckets")]
    pub buckets: Vec<f64>,
    /// Latency histograms per route (the default); off, they are per service, which bounds
    /// a scrape on a node with very many routes.
    #[serde(default = "yes")]
    pub route_histograms: bool,
    /// How many routes get series of their own in `/metrics`, in the order a scrape first
    /// sees them used; the others are summed under `route="_other"`. A route keeps what it
    /// got for as long as it exists, so no counter moves between series.
    #[serde(default = "default_max_routes")]
    pub max_routes: u32,
}

fn default_max_routes() -> u32 {
    1000
}

fn yes() -> bool {
    true
}

/// Prometheus' usual HTTP buckets, with finer steps below 10 ms where a gateway's own time
/// lives.
pub fn default_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            enabled: true,
            consumers: false,
            route_histograms: true,
            max_routes: default_max_routes(),
            buckets: default_buckets(),
        }
    }
}

/// Fields an access log line can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogField {
    Time,
    RequestId,
    ClientIp,
    Consumer,
    Route,
    Service,
    Upstream,
    Target,
    Method,
    Host,
    Path,
    Protocol,
    Status,
    BytesIn,
    BytesOut,
    Duration,
    UpstreamDuration,
    GatewayDuration,
    Retries,
    RejectedBy,
    Degraded,
    TraceId,
    UserAgent,
    /// The `grpc-status` of a gRPC call's answer (null for other requests).
    GrpcStatus,
    /// The release variant a `traffic-split` rule gave the request (null when none did).
    Variant,
}

impl LogField {
    pub const ALL: [LogField; 25] = [
        LogField::Time,
        LogField::RequestId,
        LogField::ClientIp,
        LogField::Consumer,
        LogField::Route,
        LogField::Service,
        LogField::Upstream,
        LogField::Target,
        LogField::Method,
        LogField::Host,
        LogField::Path,
        LogField::Protocol,
        LogField::Status,
        LogField::BytesIn,
        LogField::BytesOut,
        LogField::Duration,
        LogField::UpstreamDuration,
        LogField::GatewayDuration,
        LogField::Retries,
        LogField::RejectedBy,
        LogField::Degraded,
        LogField::TraceId,
        LogField::UserAgent,
        LogField::GrpcStatus,
        LogField::Variant,
    ];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// `stdout`, or a file (created if missing, appended to).
    pub path: String,
    /// Which fields each line holds, in this order. Default: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<LogField>,
    /// Share of requests logged, 0 to 1 (a route's `log_sample` overrides it).
    #[serde(default = "one")]
    pub sample: f64,
    /// Lines waiting for the writer at most; past it lines are dropped (and counted), never
    /// waited for.
    #[serde(default = "default_log_buffer")]
    pub buffer: usize,
    /// Start a new file past this size, e.g. `100MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub max_size: Option<bytesize::ByteSize>,
    /// Start a new file this often, e.g. `1h` or `1d`.
    #[serde(
        default,
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::opt_at_most::<2592000, _>",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub rotate_every: Option<Duration>,
    /// Rotated files kept (`access.log.1` is the newest); older ones are deleted.
    #[serde(default = "default_keep")]
    pub keep: u32,
    /// Query arguments whose values are logged as `***`: where clients put credentials (an
    /// API key, a token, an OpenID login's code).
    #[serde(default = "default_redact_query")]
    pub redact_query: Vec<String>,
}

fn default_redact_query() -> Vec<String> {
    [
        "apikey",
        "api_key",
        "key",
        "jwt",
        "token",
        "access_token",
        "code",
        "password",
        "secret",
    ]
    .map(String::from)
    .to_vec()
}

fn one() -> f64 {
    1.0
}

fn default_log_buffer() -> usize {
    16384
}

fn default_keep() -> u32 {
    5
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: String,
    /// Share of new traces recorded, 0 to 1. A request whose `traceparent` says sampled is
    /// always recorded, one that says not sampled never is.
    #[serde(default = "one")]
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Headers sent with every export (e.g. a collector's API key).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Spans waiting for export at most; past it spans are dropped (and counted).
    #[serde(default = "default_span_buffer")]
    pub buffer: usize,
    /// How often waiting spans are sent.
    #[serde(
        default = "default_flush",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<3600, _>"
    )]
    #[schemars(with = "String")]
    pub flush_every: Duration,
}

fn default_service_name() -> String {
    "gatehouse".into()
}

fn default_span_buffer() -> usize {
    8192
}

fn default_flush() -> Duration {
    Duration::from_secs(1)
}

/// A route's own observability choices; what it leaves out comes from the node's.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteObservability {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<bool>,
    /// Share of this route's requests logged, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_sample: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_timing: Option<bool>,
}

fn check_share(v: f64) -> Option<String> {
    (!(0.0..=1.0).contains(&v)).then(|| format!("must be between 0 and 1, not {v}"))
}

/// Problems in the node-wide section, as `(field under observability, message)`.
pub fn check(o: &Observability, err: &mut dyn FnMut(String, String)) {
    let b = &o.metrics.buckets;
    if b.is_empty() {
        err("metrics.buckets".into(), "needs at least one bucket".into());
    }
    for (i, w) in b.windows(2).enumerate() {
        if let [a, z] = w {
            if z <= a {
                err(
                    format!("metrics.buckets[{}]", i + 1),
                    "bounds must be ascending".into(),
                );
            }
        }
    }
    for (i, v) in b.iter().enumerate() {
        if !v.is_finite() || *v <= 0.0 {
            err(
                format!("metrics.buckets[{i}]"),
                "must be a positive number of seconds".into(),
            );
        }
    }
    if let Some(l) = &o.access_log {
        if l.path.trim().is_empty() {
            err(
                "access_log.path".into(),
                "must name a file or `stdout`".into(),
            );
        }
        if let Some(m) = check_share(l.sample) {
            err("access_log.sample".into(), m);
        }
        if l.buffer == 0 {
            err("access_log.buffer".into(), "must be at least 1".into());
        }
        if l.max_size.is_some_and(|s| s.as_u64() == 0) {
            err("access_log.max_size".into(), "must be more than 0".into());
        }
        if l.rotate_every.is_some_and(|d| d < Duration::from_secs(1)) {
            err(
                "access_log.rotate_every".into(),
                "must be at least 1s".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, f) in l.fields.iter().enumerate() {
            if !seen.insert(*f) {
                err(format!("access_log.fields[{i}]"), "listed twice".into());
            }
        }
    }
    if let Some(t) = &o.tracing {
        match http::Uri::try_from(t.endpoint.as_str()) {
            Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => {}
            Ok(_) => err(
                "tracing.endpoint".into(),
                "must be an http:// URL with a host".into(),
            ),
            Err(e) => err("tracing.endpoint".into(), format!("not a URL: {e}")),
        }
        if let Some(m) = check_share(t.sample_ratio) {
            err("tracing.sample_ratio".into(), m);
        }
        if t.buffer == 0 {
            err("tracing.buffer".into(), "must be at least 1".into());
        }
        if t.flush_every < Duration::from_millis(10) {
            err("tracing.flush_every".into(), "must be at least 10ms".into());
        }
        for (k, v) in &t.headers {
            if http::HeaderName::try_from(k.as_str()).is_err() {
                err(
                    format!("tracing.headers.{k}"),
                    "not a valid header name".into(),
                );
            } else if http::HeaderValue::try_from(v.as_str()).is_err() {
                err(
                    format!("tracing.headers.{k}"),
                    "not a valid header value".into(),
                );
            }
        }
    }
    if http::HeaderName::try_from(o.debug_header.as_str()).is_err() {
        err("debug_header".into(), "not a valid header name".into());
    }
}

/// Problems in a route's overrides, as `(field under the route's observability, message)`.
pub fn check_route(o: &RouteObservability, err: &mut dyn FnMut(String, String)) {
    if let Some(m) = o.log_sample.and_then(check_share) {
        err("log_sample".into(), m);
    }
}
