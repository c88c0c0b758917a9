//! The only crate a plugin depends on: the [`Plugin`] trait with its phase hooks, the
//! [`RequestCtx`] facade (plain `http` types, never hyper or proxy internals), and
//! [`PluginKind`], how a plugin is registered, configured and validated.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

mod redis_store;
pub use redis;
pub use redis_store::RedisStore;

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
}

impl From<HeaderMap> for Later {
    fn from(headers: HeaderMap) -> Self {
        Later {
            headers,
            hold: None,
        }
    }
}

/// Something a plugin keeps alive until the request has ended: its response body sent (or
/// its tunnel closed), or the client gone. Dropping it is the release, e.g. of a
/// concurrency slot, so no path can leak one.
pub type Hold = Box<dyn std::any::Any + Send + Sync>;

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
    /// Set by an authentication plugin once it identified the caller.
    pub consumer: Option<Consumer>,
    /// Headers to add to the response the client gets, whatever produces it (e.g. the
    /// rate-limit headers on an admitted request).
    pub response_headers: &'a mut HeaderMap,
    /// Kept until the request has ended, then dropped (see [`Hold`]).
    pub holds: &'a mut Vec<Hold>,
    /// The most request-body bytes that may go upstream; past it the exchange is aborted and
    /// the client gets 413. Set with [`RequestCtx::limit_body`].
    pub body_limit: Option<u64>,
}

impl RequestCtx<'_> {
    /// Caps the request body at `max` bytes (the smallest cap set by any plugin wins). Checked
    /// as the body streams, so it also catches chunked bodies and lying `Content-Length`s.
    pub fn limit_body(&mut self, max: u64) {
        self.body_limit = Some(self.body_limit.map_or(max, |l| l.min(max)));
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

/// A caller identified by an authentication plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// Index in the snapshot's consumer list: how consumer-scoped plugins are found.
    pub index: usize,
    pub username: Arc<str>,
    /// The credential that identified the caller (an API key's id, a JWT `sub`...), when it
    /// differs from the username; limits can be keyed by it.
    pub credential: Option<Arc<str>>,
}

/// The response head as plugins see it in the `response` phase.
pub struct ResponseCtx<'a> {
    pub status: StatusCode,
    pub headers: &'a mut HeaderMap,
    pub route: &'a str,
}

/// One configured plugin instance. Every hook is a no-op by default; implement the ones the
/// plugin needs. Instances are shared by all workers and live across reloads while their
/// config is unchanged, so state (counters) belongs in them.
pub trait Plugin: Send + Sync + 'static {
    /// Before anything else looks at the request: change the path, headers.
    fn rewrite(&self, _ctx: &mut RequestCtx<'_>) -> Flow {
        Flow::Continue
    }
    /// Authentication, authorisation, limits: admit or answer.
    fn access(&self, _ctx: &mut RequestCtx<'_>) -> Flow {
        Flow::Continue
    }
    /// Just before the request goes upstream (after the target is known).
    fn upstream_request(&self, _ctx: &mut RequestCtx<'_>) -> Flow {
        Flow::Continue
    }
    /// On the response head, from the upstream or made by the gateway.
    fn response(&self, _ctx: &mut ResponseCtx<'_>) {}
    /// Once the request has ended: its response body sent, or the client gone. Runs only if
    /// [`Plugin::wants_log`] says so (most plugins do not, and then the request carries
    /// nothing for this phase), on the worker that served the request: it must not block.
    fn log(&self, _ctx: &LogCtx<'_>) {}
    /// Whether [`Plugin::log`] should run.
    fn wants_log(&self) -> bool {
        false
    }
    /// What this instance tells requests apart by when it rejects them (a limit's key, e.g.
    /// `ip` or `header:x-user`): the `key` label of `gatehouse_plugin_rejections_total`.
    fn key_class(&self) -> &str {
        ""
    }
    /// This request's key as text (e.g. `127.0.0.1|gold`), for the decision trace only.
    fn key_of(&self, _ctx: &RequestCtx<'_>) -> Option<String> {
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

/// Node facts a plugin may need when it is built.
#[derive(Debug, Clone, Default)]
pub struct BuildEnv {
    /// How many gateway nodes share cluster-wide limits (for local fallbacks).
    pub nodes: u32,
    /// The node's Redis (`redis:` in the file, `--redis`), for cluster-wide state.
    pub redis: Option<Arc<RedisStore>>,
    /// The instance's scope, e.g. `route=api`, `consumer=a,route=api` or `global`: stable
    /// across nodes and reloads, so cluster-wide state of one instance can be named by it.
    pub scope: String,
}

/// Nanoseconds on a process-wide monotonic clock, offset by a day so that 0 is always "long
/// ago".
pub fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    start.elapsed().as_nanos() as u64 + 86_400_000_000_000
}

/// A kind of plugin: its name, where it runs among the others, its config schema, and how an
/// instance is built from config. Registered once in the plugins crate's list.
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
