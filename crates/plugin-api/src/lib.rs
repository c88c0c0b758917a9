//! The only crate a plugin depends on: the [`Plugin`] trait with its phase hooks, the
//! [`RequestCtx`] facade (plain `http` types, never hyper or proxy internals), and
//! [`PluginKind`], how a plugin is registered, configured and validated.

use bytes::Bytes;
use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

pub mod bans;
mod consumers;
mod gateway;
mod redis_store;
mod registry;
mod release;
pub mod testing;
pub use consumers::{Consumer, ConsumerIndex, Credential, Found};
pub use gateway::{Gateway, SubFuture, SubLimits, SubrequestError, UpstreamRef};
pub use redis;
pub use redis_store::RedisStore;
pub use registry::{Registry, TypedKind};
pub use release::{
    Copies, NewBody, PluginMetric, RequestFacts, ServiceChoice, ServiceRef, Variant,
};

/// What a phase hook decided.
pub enum Flow {
    /// Go on with the next plugin, then the next phase.
    Continue,
    /// Answer the client with this response; nothing further runs (but `log`).
    Respond(Response<Bytes>),
    /// Decide later, after something asynchronous (a Redis call, a bounded delay). Only for
    /// hooks that really wait: the common path stays synchronous and allocation-free.
    Wait(Deferred),
}

/// The outcome of a [`Flow::Wait`]: continue (with [`Later`]) or respond.
pub type Deferred = Pin<Box<dyn Future<Output = Result<Later, Response<Bytes>>> + Send>>;

/// What a hook that waited hands back when the request goes on.
#[derive(Default)]
pub struct Later {
    /// Headers to add to the client's response.
    pub headers: HeaderMap,
    /// Something to keep until the request ends (see [`RequestCtx::holds`]).
    pub hold: Option<Hold>,
    /// The caller, when the wait was an authentication's check (see
    /// [`RequestCtx::authenticate`]).
    pub consumer: Option<Consumer>,
    /// Headers to set on the request that goes upstream (replacing any of the same name),
    /// e.g. claims of a token checked while waiting.
    pub upstream_headers: HeaderMap,
}

impl From<HeaderMap> for Later {
    fn from(headers: HeaderMap) -> Self {
        Later {
            headers,
            hold: None,
            consumer: None,
            upstream_headers: HeaderMap::new(),
        }
    }
}

/// Sets every header of `from` on `to`, replacing what `to` had under those names (values of
/// one name in `from` are all kept).
pub fn set_all(to: &mut HeaderMap, from: HeaderMap) {
    let mut last: Option<HeaderName> = None;
    for (name, value) in from {
        match name {
            Some(n) => {
                to.insert(n.clone(), value);
                last = Some(n);
            }
            None => {
                if let Some(n) = &last {
                    to.append(n.clone(), value);
                }
            }
        }
    }
}

/// Something a plugin keeps alive until the request has ended: its response body sent (or
/// its tunnel closed), or the client gone. Dropping it is the release, e.g. of a
/// concurrency slot, so no path can leak one.
pub type Hold = Box<dyn std::any::Any + Send + Sync>;

/// The request head as the `response` phase sees it (kept only for routes whose plugins
/// declare [`Needs::request_head`]).
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: HeaderMap,
}

impl RequestHead {
    pub fn of(parts: &http::request::Parts) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        }
    }
}

/// The request as plugins see it, from the `rewrite` phase to `upstream_request`.
pub struct RequestCtx<'a> {
    /// Method, URI, version and headers of the request; `rewrite` and `upstream_request` hooks
    /// may change them (the URI's path is what goes upstream).
    pub parts: &'a mut http::request::Parts,
    pub client_ip: IpAddr,
    pub route: &'a str,
    pub service: &'a str,
    /// The route's importance under overload (its `priority_class`).
    pub priority_class: PriorityClass,
    /// Set by an authentication plugin (see [`RequestCtx::authenticate`]).
    pub consumer: Option<Consumer>,
    /// Headers to add to the response the client gets, whatever produces it (e.g. the
    /// rate-limit headers on an admitted request).
    pub response_headers: &'a mut HeaderMap,
    /// Kept until the request has ended, then dropped (see [`Hold`]).
    pub holds: &'a mut Vec<Hold>,
    /// The most request-body bytes that may go upstream; past it the exchange is aborted and
    /// the client gets 413. Set with [`RequestCtx::limit_body`].
    pub body_limit: Option<u64>,
    /// This request's typed state, shared by every hook of every phase (`access` writes,
    /// `response`, `response_body` and `log` read). Each plugin keys it by a type of its own.
    /// Costs nothing until something is inserted.
    pub state: &'a mut Extensions,
    /// The whole request body, from the `access` phase on, when a plugin of the route asked
    /// for it ([`Needs::request_body`]); it still goes upstream, and retries send it again.
    pub body: Option<&'a Bytes>,
    /// The body was longer than [`Needs::request_body`]'s cap and an instance asked for
    /// [`Needs::request_body_partial`]: `body` is `None`, and the body streams upstream
    /// uninspected.
    pub body_partial: bool,
    /// Where the request goes instead of its service's upstream (see
    /// [`RequestCtx::set_upstream`]).
    pub upstream: Option<UpstreamRef>,
    /// The release variant the request was given (see [`RequestCtx::set_variant`]).
    pub variant: Option<Variant>,
    /// Whether this request's exchange is copied for `log` (see [`RequestCtx::keep_copies`]).
    pub keep_copies: bool,
    /// The gateway: consumers and sub-requests.
    pub gateway: &'a dyn Gateway,
}

impl RequestCtx<'_> {
    /// Caps the request body at `max` bytes (the smallest cap set by any plugin wins). Checked
    /// as the body streams, so it also catches chunked bodies and lying `Content-Length`s.
    pub fn limit_body(&mut self, max: u64) {
        self.body_limit = Some(self.body_limit.map_or(max, |l| l.min(max)));
    }

    /// The caller is `consumer` (found with [`ConsumerIndex::find`]): from the next plugin on,
    /// consumer-scoped instances apply, and limits keyed by `consumer` count it.
    pub fn authenticate(&mut self, consumer: &Consumer) {
        self.consumer = Some(consumer.clone());
    }

    /// The snapshot's consumers, to look a credential up.
    pub fn consumers(&self) -> &ConsumerIndex {
        self.gateway.consumers()
    }

    /// Sends this request to `upstream` instead of its service's (the service's timeouts,
    /// retries and path handling stay). The last plugin to choose wins.
    pub fn set_upstream(&mut self, upstream: &UpstreamRef) {
        self.upstream = Some(upstream.clone());
    }

    /// Sends this request to `service` instead of the route's: its upstream, timeouts and
    /// retries (the route's path handling stays). The last plugin to choose wins.
    pub fn set_service(&mut self, service: &ServiceRef) {
        self.state.insert(ServiceChoice(service.clone()));
    }

    /// Labels the request's metrics and access log line with release variant `variant`.
    pub fn set_variant(&mut self, variant: &Variant) {
        self.variant = Some(variant.clone());
    }

    /// Replaces the request body read for this route ([`Needs::request_body`]): what goes
    /// upstream instead (its `Content-Length` follows).
    pub fn replace_body(&mut self, body: Bytes) {
        self.state.insert(NewBody(body));
    }

    /// Copies this request's exchange for `log` ([`Needs::copies`] says how much): only
    /// requests some instance asked for are copied.
    pub fn keep_copies(&mut self) {
        self.keep_copies = true;
    }

    /// The request's id and route captures, for a plugin declaring [`Needs::facts`].
    pub fn facts(&self) -> Option<&RequestFacts> {
        self.state.get::<RequestFacts>()
    }

    /// Starts a sub-request through the gateway's pools (await it in a [`Flow::Wait`]).
    pub fn subrequest(
        &self,
        to: &UpstreamRef,
        req: Request<Bytes>,
        limits: SubLimits,
    ) -> SubFuture {
        self.gateway.subrequest(to, req, limits)
    }
}

/// How important a request is when load is shed: every sheddable request goes before any
/// critical one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PriorityClass {
    #[default]
    Critical,
    Sheddable,
}

/// What an instance asks the pipeline for beyond the phase hooks. Compiled into each route's
/// chain, so routes whose plugins ask for nothing pay nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Run [`Plugin::log`] once the request has ended.
    pub log: bool,
    /// Keep the request head for the `response` phase ([`ResponseCtx::request`]).
    pub request_head: bool,
    /// Read the request body, up to this many bytes, before the `access` phase
    /// ([`RequestCtx::body`]); a longer body gets 413.
    pub request_body: Option<u64>,
    /// With `request_body`: a longer body is not refused with 413 but goes upstream whole,
    /// unread by the plugins ([`RequestCtx::body_partial`]). Only when every instance of
    /// the route that reads the body says so.
    pub request_body_partial: bool,
    /// Run [`Plugin::response_body`] on every chunk of the response body.
    pub response_body: bool,
    /// Put [`RequestFacts`] (request id, route captures) in the request's state.
    pub facts: bool,
    /// Run [`Plugin::upstream_request`] before each attempt (routes whose plugins do not
    /// ask skip the phase).
    pub upstream_request: bool,
    /// Keep [`Copies`] of the exchange for `log` of the requests an instance asked for
    /// ([`RequestCtx::keep_copies`]), each body up to this many bytes: the
    /// request body is copied as it streams upstream, the response's (with
    /// `copy_response`) as it goes to the client, neither held back nor changed.
    pub copies: Option<u64>,
    /// With `copies`: copy the response too (its headers and body), not only the request.
    pub copy_response: bool,
}

impl Needs {
    /// What a chain of instances needs together (the largest body cap).
    pub fn union(self, other: Needs) -> Needs {
        Needs {
            log: self.log || other.log,
            request_head: self.request_head || other.request_head,
            request_body: match (self.request_body, other.request_body) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            request_body_partial: (self.request_body_partial || self.request_body.is_none())
                && (other.request_body_partial || other.request_body.is_none())
                && (self.request_body.is_some() || other.request_body.is_some()),
            response_body: self.response_body || other.response_body,
            facts: self.facts || other.facts,
            upstream_request: self.upstream_request || other.upstream_request,
            copy_response: self.copy_response || other.copy_response,
            copies: match (self.copies, other.copies) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// The response head as plugins see it in the `response` phase.
pub struct ResponseCtx<'a> {
    pub status: StatusCode,
    pub headers: &'a mut HeaderMap,
    pub route: &'a str,
    pub service: &'a str,
    /// The request as it came (after `rewrite`), when a plugin of the route declared
    /// [`Needs::request_head`].
    pub request: Option<&'a RequestHead>,
    pub consumer: Option<&'a Consumer>,
    /// The request's typed state (see [`RequestCtx::state`]).
    pub state: &'a mut Extensions,
}

/// A response body chunk as [`Plugin::response_body`] sees it.
pub struct BodyCtx<'a> {
    pub status: StatusCode,
    pub route: &'a str,
    pub consumer: Option<&'a Consumer>,
    pub state: &'a mut Extensions,
}

/// One configured plugin instance. Every hook is a no-op by default; implement the ones the
/// plugin needs. Instances are shared by all workers and live across reloads while their
/// config is unchanged, so state (counters) belongs in them; state of one request belongs in
/// [`RequestCtx::state`].
pub trait Plugin: Send + Sync + 'static {
    /// What this instance asks of the pipeline beyond the hooks (read once, at compile).
    fn needs(&self) -> Needs {
        Needs::default()
    }
    /// Before anything else looks at the request: change the path, headers.
    fn rewrite(&self, _ctx: &mut RequestCtx<'_>) -> Flow {
        Flow::Continue
    }
    /// Authentication, authorisation, limits: admit or answer.
    fn access(&self, _ctx: &mut RequestCtx<'_>) -> Flow {
        Flow::Continue
    }
    /// Just before the request goes upstream (after the target is known), once per attempt;
    /// only for instances whose [`Needs::upstream_request`] is set.
    fn upstream_request(&self, _ctx: &mut RequestCtx<'_>) -> Flow {
        Flow::Continue
    }
    /// On the response head, from the upstream or made by the gateway.
    fn response(&self, _ctx: &mut ResponseCtx<'_>) {}
    /// On each chunk of the response body as it streams (when [`Needs::response_body`]);
    /// `end` is true on the last call, whose chunk may be empty. The chunk may be replaced
    /// (emptied to hold data back in `state`, then released at the end). The response's
    /// `Content-Length` is dropped, since the length may change.
    fn response_body(&self, _ctx: &mut BodyCtx<'_>, _chunk: &mut Bytes, _end: bool) {}
    /// Once the request has ended: its response body sent, or the client gone (when
    /// [`Needs::log`]), on the worker that served the request: it must not block.
    fn log(&self, _ctx: &LogCtx<'_>) {}
    /// What this instance tells requests apart by when it rejects them (a limit's key, e.g.
    /// `ip` or `header:x-user`): the `key` label of `gatehouse_plugin_rejections_total`.
    fn key_class(&self) -> &str {
        ""
    }
    /// This request's key as text (e.g. `127.0.0.1|gold`), for the decision trace only.
    fn key_of(&self, _ctx: &RequestCtx<'_>) -> Option<String> {
        None
    }
    /// For an authentication plugin: the consumer (username) a request is let through as
    /// when no authentication plugin of its route identifies it (Kong's `anonymous`).
    fn anonymous(&self) -> Option<&str> {
        None
    }
    /// The release variants this instance may give requests ([`RequestCtx::set_variant`]):
    /// each gets statistics of its own on the routes the instance runs for.
    fn variants(&self) -> Vec<Arc<str>> {
        Vec::new()
    }
    /// Counters this instance exports in `/metrics`.
    fn metrics(&self) -> Vec<PluginMetric> {
        Vec::new()
    }
    /// What this instance has to show in the admin API (`GET /plugins/{name}/report`).
    fn report(&self) -> Option<serde_json::Value> {
        None
    }
}

/// The finished request as the `log` phase sees it.
pub struct LogCtx<'a> {
    pub route: &'a str,
    pub service: &'a str,
    pub client_ip: IpAddr,
    pub consumer: Option<&'a Consumer>,
    /// The status the client was sent.
    pub status: StatusCode,
    /// From the start of the plugin phases to the end of the request.
    pub duration: std::time::Duration,
    /// The request's typed state (see [`RequestCtx::state`]).
    pub state: &'a Extensions,
    /// Copies of the exchange, when an instance of the route declared [`Needs::copies`].
    pub copies: Option<&'a Copies>,
    /// The gateway, for sub-requests sent after the request (they must be spawned: `log`
    /// must not wait).
    pub gateway: &'a dyn Gateway,
}

/// A problem in a plugin's config: `path` is relative to `config` (`limit`, `key[1]`), empty
/// for the config as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Node facts a plugin may need when it is built, and the upstreams it may name.
#[derive(Clone, Default)]
pub struct BuildEnv {
    /// How many gateway nodes share cluster-wide limits (for local fallbacks).
    pub nodes: u32,
    /// The node's Redis (`redis:` in the file, `--redis`), for cluster-wide state.
    pub redis: Option<Arc<RedisStore>>,
    /// The instance's scope, e.g. `route=api`, `consumer=a,route=api` or `global`: stable
    /// across nodes and reloads, so cluster-wide state of one instance can be named by it.
    pub scope: String,
    upstreams: Arc<std::collections::HashSet<Box<str>>>,
    services: Arc<std::collections::HashSet<Box<str>>>,
    color_header: Option<HeaderName>,
    /// The upstreams this instance named, so a reload that removes one is refused.
    named: Arc<Mutex<Vec<UpstreamRef>>>,
}

impl BuildEnv {
    pub fn new<'u>(
        nodes: u32,
        redis: Option<Arc<RedisStore>>,
        upstreams: impl IntoIterator<Item = &'u str>,
    ) -> Self {
        Self {
            nodes,
            redis,
            scope: String::new(),
            upstreams: Arc::new(upstreams.into_iter().map(Into::into).collect()),
            services: Arc::default(),
            color_header: None,
            named: Arc::default(),
        }
    }

    /// The same environment, with the config's services.
    pub fn with_services<'s>(mut self, services: impl IntoIterator<Item = &'s str>) -> Self {
        self.services = Arc::new(services.into_iter().map(Into::into).collect());
        self
    }

    /// The same environment, with the node's colour header (`node.color_header`).
    pub fn with_color_header(mut self, name: HeaderName) -> Self {
        self.color_header = Some(name);
        self
    }

    /// The header that carries a request's colour.
    pub fn color_header(&self) -> HeaderName {
        self.color_header
            .clone()
            .unwrap_or(HeaderName::from_static("x-gatehouse-color"))
    }

    /// The config's service called `name`, for [`RequestCtx::set_service`].
    pub fn service(&self, name: &str) -> Result<ServiceRef, String> {
        if !self.services.contains(name) {
            return Err(format!("no service named \"{name}\""));
        }
        Ok(ServiceRef(name.into()))
    }

    /// The environment of one instance (its own record of named upstreams).
    pub fn for_scope(&self, scope: String) -> Self {
        Self {
            scope,
            named: Arc::default(),
            ..self.clone()
        }
    }

    /// The config's upstream called `name`, for [`RequestCtx::set_upstream`] or sub-requests;
    /// `Err` (for a [`FieldError`]) when the config has none.
    pub fn upstream(&self, name: &str) -> Result<UpstreamRef, String> {
        if !self.upstreams.contains(name) {
            return Err(format!("no upstream named \"{name}\""));
        }
        Ok(self.note(UpstreamRef::upstream(name)))
    }

    /// A URL's origin as an upstream for sub-requests (`http://host[:port][/path]`).
    pub fn url(&self, url: &str) -> Result<UpstreamRef, String> {
        UpstreamRef::url(url).map(|r| self.note(r))
    }

    /// The upstreams and URLs this instance named while it was built.
    pub fn named(&self) -> Vec<UpstreamRef> {
        self.named.lock().map(|n| n.clone()).unwrap_or_default()
    }

    /// Whether the config has an upstream called `name`.
    pub fn has_upstream(&self, name: &str) -> bool {
        self.upstreams.contains(name)
    }

    fn note(&self, r: UpstreamRef) -> UpstreamRef {
        if let Ok(mut n) = self.named.lock() {
            n.push(r.clone());
        }
        r
    }
}

/// Nanoseconds on a process-wide monotonic clock, offset by a day so that 0 is always "long
/// ago".
pub fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    start.elapsed().as_nanos() as u64 + 86_400_000_000_000
}

/// A kind of plugin: its name, where it runs among the others, its config schema, and how an
/// instance is built from config. Most kinds implement [`TypedKind`] instead and get this.
pub trait PluginKind: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Higher runs first within a phase (Kong's convention: authentication ~1000+, limits
    /// ~900, transformations lower).
    fn priority(&self) -> i32;
    /// JSON Schema of the config.
    fn schema(&self) -> serde_json::Value;
    /// Parses and checks `config`, and builds the instance. Every problem is reported.
    fn build(
        &self,
        config: &serde_json::Value,
        env: &BuildEnv,
    ) -> Result<Arc<dyn Plugin>, Vec<FieldError>>;
    /// Whether an instance may be scoped to one consumer (an authentication plugin may not:
    /// Kong's `no_consumer`). A config that scopes one anyway is rejected.
    fn consumer_scopable(&self) -> bool {
        !self.authenticates()
    }
    /// Whether the kind identifies callers. The authentication plugins of a route are
    /// alternatives: the first that identifies the caller wins, the others are skipped, and
    /// the request is refused (with the first refusal) only when none does and no
    /// `anonymous` consumer is configured.
    fn authenticates(&self) -> bool {
        false
    }
    /// For kinds that identify callers: the JSON Schema of one credential in
    /// `consumers[].credentials.<kind>`.
    fn credential_schema(&self) -> Option<serde_json::Value> {
        None
    }
    /// Checks one credential of a consumer and makes what lookups find.
    fn credential(&self, _config: &serde_json::Value) -> Result<Credential, Vec<FieldError>> {
        Err(vec![FieldError::new(
            "",
            format!("{} takes no consumer credentials", self.name()),
        )])
    }

    /// Turns one credential, as written to the admin API, into what is stored: a secret
    /// that only needs checking is replaced by its hash. The default keeps it as given.
    fn seal_credential(
        &self,
        _fields: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Vec<FieldError>> {
        Ok(())
    }
    /// Takes out of a stored credential what must never be read back (a secret the gateway
    /// uses, such as an HMAC key): the admin API and `config export` show it without.
    fn redact_credential(&self, _fields: &mut serde_json::Map<String, serde_json::Value>) {}
}

/// The status of a rejection, from config field `field`: an error status (400-599), or a
/// [`FieldError`] saying so.
pub fn rejection_status(field: &str, code: u16, errs: &mut Vec<FieldError>) -> Option<StatusCode> {
    match StatusCode::from_u16(code) {
        Ok(s) if (400..600).contains(&code) => Some(s),
        _ => {
            errs.push(FieldError::new(
                field,
                "must be an HTTP status from 400 to 599",
            ));
            None
        }
    }
}

/// Deserializes a plugin's typed config, naming the field that is wrong. A `null` config (the
/// key left out) is read as `{}` so that defaults apply.
pub fn parse_config<C: DeserializeOwned>(value: &serde_json::Value) -> Result<C, Vec<FieldError>> {
    let empty = serde_json::Value::Object(serde_json::Map::new());
    let value = if value.is_null() { &empty } else { value };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![FieldError::new(path, e.inner().to_string())]
    })
}

/// The JSON Schema of a config type, as JSON.
pub fn schema_of<C: schemars::JsonSchema>() -> serde_json::Value {
    schemars::schema_for!(C).to_value()
}

/// A small JSON error response, the shape every gateway-made error has. The gateway adds the
/// request's id to it (`{"error":..,"status":..,"request_id":..}`) before it goes out; the
/// [`ErrorMessage`] extension tells it which message to render.
pub fn json_response(status: StatusCode, error: &str, headers: HeaderMap) -> Response<Bytes> {
    let body = serde_json::json!({ "error": error, "status": status.as_u16() }).to_string();
    let mut resp = Response::new(Bytes::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    *h = headers;
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.extensions_mut()
        .insert(ErrorMessage(error.to_owned().into_boxed_str()));
    resp
}

/// Marks a response made by [`json_response`]: its error message, so the gateway can render
/// it in its own error shape with the request id.
#[derive(Debug, Clone)]
pub struct ErrorMessage(pub Box<str>);

/// A header name from config, lower-cased, or a message saying why it is not one.
pub fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("\"{name}\" is not a valid header name"))
}

// Request helpers shared by the router and plugins.

/// The value of query argument `name`, percent-decoded (`+` as space), or `None`.
pub fn query_arg<'a>(query: Option<&'a str>, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` and `+`; borrows when there is nothing to decode (the common case). Written
/// by hand because the alternatives (url, form_urlencoded) allocate for every pair.
fn percent_decode(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.bytes().any(|b| b == b'%' || b == b'+') {
        return std::borrow::Cow::Borrowed(v);
    }
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The value of cookie `name` from the request's Cookie headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct C {
        limit: u64,
        #[serde(default)]
        key: Vec<String>,
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = parse_config::<C>(&serde_json::json!({"limit": "x"})).unwrap_err();
        assert_eq!(e[0].path, "limit");
        assert!(
            e[0].message.starts_with("invalid type: string \"x\""),
            "{e:?}"
        );
        let e = parse_config::<C>(&serde_json::json!({"limit": 1, "key": [1]})).unwrap_err();
        assert_eq!(e[0].path, "key[0]");
        let e = parse_config::<C>(&serde_json::json!({"limit": 1, "nope": 1})).unwrap_err();
        assert_eq!(e[0].path, "nope");
        assert!(e[0].message.starts_with("unknown field `nope`"), "{e:?}");
        let e = parse_config::<C>(&serde_json::Value::Null).unwrap_err();
        assert_eq!(e[0].path, "");
        assert_eq!(e[0].message, "missing field `limit`");
    }
}
