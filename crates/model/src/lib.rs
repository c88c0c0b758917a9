//! Gatehouse's configuration model: the YAML/JSON shape of every entity, parsed and checked
//! with errors that name the field (`routes[2].service: no service named "users"`).
//!
//! This crate is pure data: no I/O, no sockets. The same structs are what the admin API will
//! accept and return, so files, API and CLI speak one model.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

mod consumers;
mod discovery;
pub mod duration;
mod grpc;
mod locate;
mod observability;
mod parse;
mod release;
mod resilience;
mod tls;
mod validate;

pub use parse::{
    in_words, parse_yaml, parse_yaml_with, place, sort_errors, ConfigError, ConfigErrors,
};

pub use consumers::{Consumer, ConsumerHeaders, CredentialSpec};
pub use grpc::{GrpcCode, GrpcTranscode, TranscodeMapping};

pub use tls::{
    is_inline_pem, Acme, AcmeCertificate, AcmeChallenge, Certificate, ClientCertificate, ListenTls,
    RouteProtocol, TlsVersion, UpstreamTls, HTTPS_REDIRECT_CODES,
};

pub use discovery::{etcd_endpoint, Discovery, DnsDiscovery, DnsRecord, EtcdDiscovery};
pub use release::{BlueGreen, RewriteRegex, Side, COLOR_LABEL, DEFAULT_COLOR_HEADER};

pub use resilience::{
    ActiveCheck, AllDown, CheckType, CircuitBreaker, Fallback, FallbackCache, Health, PassiveCheck,
    RetryEvent, RetryOn, RetryPolicy, StaticResponse, DEFAULT_SET_ASIDE, IDEMPOTENT,
};

pub use observability::{
    default_buckets, AccessLog, LogField, Metrics, Observability, RouteObservability, Tracing,
};
pub use validate::{
    check_host_port, check_path_pattern, is_valid_name, parse_service_url,
    parse_service_url_with_scheme, validate,
};

/// The whole configuration of one gateway: node settings and all entities.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Addresses the data plane listens on. Default: `0.0.0.0:8080`.
    #[serde(default)]
    pub listen: Vec<Listen>,
    /// Where the admin API listens (served from the control-plane milestone on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
    /// Settings of this gateway node.
    #[serde(default)]
    pub node: Node,
    /// The Redis that cluster-wide state (rate limits with `policy: redis`) lives in, e.g.
    /// `redis://127.0.0.1:6379/0`; `--redis` on the command line overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    #[serde(default)]
    pub consumers: Vec<Consumer>,
    #[serde(default)]
    pub plugins: Vec<PluginInstance>,
    /// Certificates the TLS listeners serve, chosen by SNI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<Certificate>,
    /// Certificates obtained automatically from an ACME directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<Acme>,
    /// Metrics, access log, tracing, `Server-Timing` and the debug decision trace.
    #[serde(default, skip_serializing_if = "is_default")]
    pub observability: Observability,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// `ip:port`, e.g. `0.0.0.0:8080` or `[::1]:8080`.
    pub address: String,
    /// Every connection starts with a PROXY protocol header (v1 or v2, as HAProxy and cloud
    /// load balancers send it); its source address is the client's. A connection without
    /// one is closed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
    /// Serve HTTPS here (certificates from `certificates[]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenTls>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub address: String,
    /// Where `/metrics` and `/ready` are also served, with no token (for Prometheus and load
    /// balancers), e.g. `0.0.0.0:9181`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,
    /// Who may call the admin API. With none, only a loopback address is allowed and
    /// anyone who can reach it may call it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<AdminToken>,
    /// Serve the admin API over HTTPS, with a certificate from `certificates[]` chosen by
    /// SNI (the default one for clients that send none). Off loopback without it, calls
    /// with tokens are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenTls>,
}

/// An admin API token, stored as the SHA-256 of its secret (`gatehouse admin-token` makes
/// one): the secret itself is never kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Who holds it: written as the author of their changes.
    pub name: String,
    pub role: AdminRole,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdminRole {
    /// Reads only.
    Viewer,
    /// Reads and writes.
    Admin,
}

/// Per-node settings. Changing `workers` takes effect on restart; the rest on reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// This node's position among the gateway nodes (0, 1, 2, ...), used by `subset_size` so
    /// that nodes spread evenly over targets. Default: derived from the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Worker threads, each with its own event loop and upstream pools. Default: one per core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[serde(
        default = "default_drain",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<3600, _>"
    )]
    #[schemars(with = "String")]
    pub drain_timeout: Duration,
    /// How long a client has to send a complete request head, and how long a client
    /// connection may sit idle (HTTP/1.1 between requests; h2c with no bytes from the client,
    /// or no first request) before it is closed.
    #[serde(
        default = "default_client_timeout",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<3600, _>"
    )]
    #[schemars(with = "String")]
    pub client_timeout: Duration,
    /// A WebSocket (or other upgraded) tunnel in which no byte moved either way for this long
    /// is closed.
    #[serde(
        default = "default_tunnel_idle",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<604800, _>"
    )]
    #[schemars(with = "String")]
    pub tunnel_idle_timeout: Duration,
    /// Add `Via: 1.1 gatehouse` to requests and responses.
    #[serde(default)]
    pub via: bool,
    /// How many gateway nodes share cluster-wide limits: a `policy: redis` limit falls back
    /// to `limit / cluster_size` on each node while Redis is unreachable.
    #[serde(default = "one_node")]
    pub cluster_size: u32,
    /// What a request path with an encoded slash or backslash (`%2F`, `%5C`) or a raw
    /// backslash gets: `reject` (400, the default) or `keep` (routed and forwarded as it came,
    /// for APIs whose ids contain slashes; the upstream must not decode them into separators).
    #[serde(default, skip_serializing_if = "is_default")]
    pub encoded_slashes: EncodedSlashes,
    /// Peers (addresses or CIDRs, e.g. `10.0.0.0/8`) whose `X-Forwarded-For` / `X-Real-IP`
    /// are believed: the client is the rightmost address in `X-Forwarded-For` that is not
    /// one of them. From any other peer, the peer is the client. Empty: nobody is trusted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// The headers that tell the upstream who the caller is, on routes with an
    /// authentication plugin (a client's own values of them are removed there).
    #[serde(default, skip_serializing_if = "is_default")]
    pub consumer_headers: ConsumerHeaders,
    /// HTTP/1.1 client connections: which server reads them, and limits on request heads.
    #[serde(default, skip_serializing_if = "is_default")]
    pub http1: Http1,
    /// Limits on HTTP/2 client connections (h2 over TLS and h2c).
    #[serde(default, skip_serializing_if = "is_default")]
    pub http2: Http2Limits,
    /// The request header that carries a request's colour (full-link gray release): a
    /// coloured request goes to the targets labelled `color: <its colour>`, and falls back to
    /// the uncoloured targets when its upstream has none.
    #[serde(default = "default_color_header")]
    pub color_header: String,
}

fn default_color_header() -> String {
    release::DEFAULT_COLOR_HEADER.into()
}

/// Whether `name` can be an HTTP header name.
pub(crate) fn header_name_ok(name: &str) -> Result<http::HeaderName, ()> {
    http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| ())
}

/// HTTP/1.1 client connections (`node.http1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http1 {
    /// `own` (the default): the gateway's own HTTP/1.1 server. `hyper`: hyper's, kept
    /// while the own server is new.
    #[serde(default)]
    pub server: Http1Server,
    /// The longest request line (method, target, version): longer is refused with 414.
    #[serde(default = "default_h1_line")]
    #[schemars(with = "String")]
    pub max_request_line: bytesize::ByteSize,
    /// The largest header field (name and value): larger is refused with 431.
    #[serde(default = "default_h1_field")]
    #[schemars(with = "String")]
    pub max_header_size: bytesize::ByteSize,
    /// The largest request head (request line and every field): larger is refused with 431.
    /// More than 100 fields is refused with 431 too.
    #[serde(default = "default_h1_head")]
    #[schemars(with = "String")]
    pub max_head_size: bytesize::ByteSize,
}

/// See [`Http1::server`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Http1Server {
    #[default]
    Own,
    Hyper,
}

fn default_h1_line() -> bytesize::ByteSize {
    bytesize::ByteSize::kib(8)
}
fn default_h1_field() -> bytesize::ByteSize {
    bytesize::ByteSize::kib(16)
}
fn default_h1_head() -> bytesize::ByteSize {
    bytesize::ByteSize::kib(64)
}

impl Default for Http1 {
    fn default() -> Self {
        Self {
            server: Http1Server::Own,
            max_request_line: default_h1_line(),
            max_header_size: default_h1_field(),
            max_head_size: default_h1_head(),
        }
    }
}

/// HTTP/2 limits on client connections: what keeps one client from holding a worker with
/// streams, header blocks or resets (CVE-2023-44487 "rapid reset").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http2Limits {
    /// Streams a client may have open at once on one connection.
    #[serde(default = "default_h2_streams")]
    pub max_concurrent_streams: u32,
    /// The largest header block (all HEADERS and CONTINUATION frames of a request,
    /// decoded), e.g. `32KiB`. A larger one is refused and the stream reset.
    #[serde(default = "default_h2_header_list")]
    #[schemars(with = "String")]
    pub max_header_list_size: bytesize::ByteSize,
    /// Streams the client reset before the gateway took them, at once, before the
    /// connection is closed with GOAWAY (ENHANCE_YOUR_CALM): the rapid-reset defence.
    #[serde(default = "default_h2_resets")]
    pub max_pending_reset_streams: usize,
    /// Streams the gateway reset because the client broke the protocol, before the
    /// connection is closed.
    #[serde(default = "default_h2_error_resets")]
    pub max_error_reset_streams: usize,
    /// Send a PING after this long without a frame from the client...
    #[serde(
        default = "default_h2_ping",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<3600, _>"
    )]
    #[schemars(with = "String")]
    pub ping_interval: Duration,
    /// ...and close the connection when its answer takes longer than this.
    #[serde(
        default = "default_h2_ping_timeout",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<3600, _>"
    )]
    #[schemars(with = "String")]
    pub ping_timeout: Duration,
}

fn default_h2_streams() -> u32 {
    128
}
fn default_h2_header_list() -> bytesize::ByteSize {
    bytesize::ByteSize::kib(32)
}
fn default_h2_resets() -> usize {
    20
}
fn default_h2_error_resets() -> usize {
    256
}
fn default_h2_ping() -> Duration {
    Duration::from_secs(30)
}
fn default_h2_ping_timeout() -> Duration {
    Duration::from_secs(20)
}

impl Default for Http2Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: default_h2_streams(),
            max_header_list_size: default_h2_header_list(),
            max_pending_reset_streams: default_h2_resets(),
            max_error_reset_streams: default_h2_error_resets(),
            ping_interval: default_h2_ping(),
            ping_timeout: default_h2_ping_timeout(),
        }
    }
}

/// An address or a CIDR block (`10.0.0.0/8`, `::1`), as `trusted_proxies` lists them.
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("\"{s}\" is not an IP address or CIDR block"))
}

/// See [`Node::encoded_slashes`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EncodedSlashes {
    #[default]
    Reject,
    Keep,
}

fn one_node() -> u32 {
    1
}

fn default_client_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_tunnel_idle() -> Duration {
    Duration::from_secs(3600)
}

fn default_drain() -> Duration {
    Duration::from_secs(30)
}

impl Default for Node {
    fn default() -> Self {
        Self {
            index: None,
            workers: None,
            drain_timeout: default_drain(),
            client_timeout: default_client_timeout(),
            tunnel_idle_timeout: default_tunnel_idle(),
            via: false,
            cluster_size: one_node(),
            encoded_slashes: EncodedSlashes::Reject,
            trusted_proxies: Vec::new(),
            consumer_headers: ConsumerHeaders::default(),
            http1: Http1::default(),
            http2: Http2Limits::default(),
            color_header: default_color_header(),
        }
    }
}

/// A route: which requests (hosts, paths, methods, header/query/cookie predicates) go to which
/// service, and how the path is rewritten on the way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[schemars(regex(pattern = r"^[A-Za-z0-9._~-]{1,128}$"))]
    pub name: String,
    /// Exact (`api.example.com`) or wildcard (`*.example.com`). Empty: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Exact `/a/b`, prefix `/a/*`, RESTful `/users/{id}`, regex `~^/a/[a-z]+$`. Empty: `/*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// HTTP methods, upper case. Empty: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Predicate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<Predicate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cookies: Vec<Predicate>,
    #[schemars(regex(pattern = r"^[A-Za-z0-9._~-]{1,128}$"))]
    pub service: String,
    /// Breaks ties between routes whose paths match equally well; higher wins.
    #[serde(default)]
    pub priority: i32,
    /// Remove the matched path prefix before proxying.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Upstream path template; `{name}` inserts a captured parameter, `{*}` the rest of the
    /// path after a prefix match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// Rewrites the upstream path by regex with capture groups, after `rewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_regex: Option<RewriteRegex>,
    /// Send the client's Host header upstream instead of the target's address.
    #[serde(default)]
    pub preserve_host: bool,
    /// How important this route's requests are when the gateway sheds load (`adaptive-shed`):
    /// `sheddable` requests are shed before any `critical` one.
    #[serde(default)]
    pub priority_class: PriorityClass,
    /// Overrides the service's `retries` for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Overrides the service's `retry` policy for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Box<RetryPolicy>>,
    /// Stops calling the upstream for a while when this route's calls keep failing; while
    /// open, requests get the route's fallback or 503 with Retry-After.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<Box<CircuitBreaker>>,
    /// What to answer when the upstream fails: the last good response, or a static one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Box<Fallback>>,
    /// This route's own metrics, access log, tracing and `Server-Timing` choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability: Option<RouteObservability>,
    /// The protocols the route takes requests over: `http`, `https`. Empty (the default):
    /// both. A request over a protocol not listed gets `https_redirect_status_code`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<RouteProtocol>,
    /// What a plain-HTTP request to an HTTPS-only route gets: 426 (the default, as in
    /// Kong), 403, or a redirect to its `https://` URL (301, 302, 307, 308).
    #[serde(default = "default_https_redirect")]
    pub https_redirect_status_code: u16,
    /// Serve the route's gRPC upstream to HTTP/JSON clients (see `GrpcTranscode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_transcode: Option<Box<GrpcTranscode>>,
}

fn default_https_redirect() -> u16 {
    426
}

/// A route's importance under overload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriorityClass {
    #[default]
    Critical,
    Sheddable,
}

/// A condition on a header, query argument or cookie: exactly one of `equals`, `regex`,
/// `present`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Predicate {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// A service: where matched requests go (an upstream or a URL) and how patiently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    #[schemars(regex(pattern = r"^[A-Za-z0-9._~-]{1,128}$"))]
    pub name: String,
    /// Name of an upstream. Exactly one of `upstream` and `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// `http://host:port/base/path`: one target, and a path prefix put before every request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Two upstreams, one serving (instead of `upstream`): switched atomically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreen>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Extra attempts, on another target when there is one, when connecting fails: for
    /// idempotent methods, and for others only when the retry policy lists them (a request
    /// that never reached its target is safe to resend, but the retry policy decides).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// What is retried and how (conditions, methods, backoff, budget). Default: connect
    /// failures of idempotent methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

fn default_retries() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// TCP connect to a target.
    #[serde(
        default = "default_connect",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<300, _>"
    )]
    #[schemars(with = "String")]
    pub connect: Duration,
    /// Longest wait for the response head and between two reads of the response body.
    #[serde(
        default = "default_read",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<86400, _>"
    )]
    #[schemars(with = "String")]
    pub read: Duration,
    /// Whole exchange, from sending the request to the end of the response body. Default: none.
    #[serde(
        default,
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::opt_at_most::<86400, _>",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub total: Option<Duration>,
}

fn default_connect() -> Duration {
    Duration::from_secs(5)
}
fn default_read() -> Duration {
    Duration::from_secs(60)
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: default_connect(),
            read: default_read(),
            total: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    #[schemars(regex(pattern = r"^[A-Za-z0-9._~-]{1,128}$"))]
    pub name: String,
    #[serde(default)]
    pub balance: Balance,
    /// For `consistent_hash`: what the hash is taken of. Default `ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// For `hash_on: header|cookie|query`: the header, cookie or query argument name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<String>,
    /// The static targets; may be empty when `discovery` finds them.
    #[serde(default)]
    pub targets: Vec<Target>,
    /// Targets found in DNS or etcd, added to `targets` as they change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Discovery>,
    /// Use at most this many targets on this node, chosen so that nodes spread evenly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset_size: Option<usize>,
    /// `http` (default) or `https`: how the targets are reached.
    #[serde(default, skip_serializing_if = "is_default")]
    pub scheme: Scheme,
    /// With `scheme: https`: server name, verification, client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default)]
    pub keepalive: Keepalive,
    /// Active and passive health checks of the targets. Default: none, every target is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// One breaker per target: a target whose breaker is open takes no requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    Random,
    LeastConn,
    Ewma,
    ConsistentHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    Ip,
    Header,
    Cookie,
    Query,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge.
    H2c,
    /// HTTP/2: over TLS (negotiated by ALPN) with `scheme: https`, else as `h2c`.
    H2,
}

impl UpstreamProtocol {
    pub fn is_h2(self) -> bool {
        !matches!(self, UpstreamProtocol::Http1)
    }
}

/// How an upstream's targets are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `host:port`.
    pub address: String,
    /// Relative share of requests; 0 drains the target.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Free-form labels. `color: gray` makes the target serve only requests coloured
    /// `gray` (see `node.color_header`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    1
}

/// Connection pool limits per target (defaults as in Bilibili's gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {
    /// Open connections to one target, busy and idle together.
    #[serde(default = "default_max_conns")]
    pub max_connections: usize,
    /// Idle connections kept for reuse per target.
    #[serde(default = "default_max_conns")]
    pub max_idle: usize,
    /// An idle connection unused this long is closed.
    #[serde(
        default = "default_idle_timeout",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<86400, _>"
    )]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
}

fn default_max_conns() -> usize {
    1000
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            max_connections: default_max_conns(),
            max_idle: default_max_conns(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

/// A plugin instance, scoped globally or to a route, service or consumer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginInstance {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    #[serde(default)]
    pub config: serde_json::Value,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_true() -> bool {
    true
}

impl PluginInstance {
    /// The instance's scope as text, e.g. `route=api`, `consumer=a,route=api` or `global`:
    /// with the kind it names the instance (one instance of a kind per scope).
    pub fn scope(&self) -> String {
        let parts: Vec<String> = [
            ("consumer", &self.consumer),
            ("route", &self.route),
            ("service", &self.service),
        ]
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
        if parts.is_empty() {
            "global".into()
        } else {
            parts.join(",")
        }
    }
}

#[cfg(test)]
mod tests;
