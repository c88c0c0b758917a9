//! `forward-auth`: asks an external auth service (a company SSO) whether a request may go
//! on, with the request's selected headers and where it was going (`X-Forwarded-Method`,
//! `-Uri`, `-Host`, `-For`). A 2xx lets it through, with selected headers of that answer set
//! on the upstream request; any other answer goes back to the client as it is, so a
//! redirect to a login page reaches the browser. The call is a sub-request through the
//! gateway's pools, with its own timeout.

use gatehouse_plugin_api::{
    header_name, json_response, rejection_status, BuildEnv, FieldError, Flow, Later, Plugin,
    RequestCtx, SubLimits, TypedKind, UpstreamRef,
};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The auth service's check endpoint, `http://host[:port]/path`.
    #[serde(default)]
    pub uri: Option<String>,
    /// Or one of the config's upstreams (with `path`).
    #[serde(default)]
    pub upstream: Option<String>,
    /// The path asked on `upstream`.
    #[serde(default = "slash")]
    pub path: String,
    /// Client request headers sent to the auth service.
    #[serde(default = "default_request_headers")]
    pub request_headers: Vec<String>,
    /// Headers of the auth service's 2xx answer set on the upstream request (e.g. the user
    /// it found).
    #[serde(default)]
    pub upstream_headers: Vec<String>,
    /// How long the auth service may take.
    #[serde(default = "three_seconds", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// What happens when the auth service cannot be asked (down, timed out): `deny` (the
    /// client gets `status_on_error`) or `allow` (the request goes on unchecked).
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default = "unavailable")]
    pub status_on_error: u16,
}

#[derive(Debug, Default, Deserialize, JsonSchema, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Deny,
    Allow,
}

fn slash() -> String {
    "/".into()
}
fn default_request_headers() -> Vec<String> {
    vec!["authorization".into(), "cookie".into()]
}
fn three_seconds() -> Duration {
    Duration::from_secs(3)
}
fn unavailable() -> u16 {
    503
}

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = "forward-auth";
    // Before the gateway's own authentication, as an SSO in front of everything.
    const PRIORITY: i32 = 2002;
    type Config = Config;

    fn build(&self, c: Config, env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        let mut errs = Vec::new();
        let to = match (&c.uri, &c.upstream) {
            (Some(u), None) => env
                .url(u)
                .map_err(|e| errs.push(FieldError::new("uri", e)))
                .ok(),
            (None, Some(u)) => env
                .upstream(u)
                .map_err(|e| errs.push(FieldError::new("upstream", e)))
                .ok(),
            _ => {
                errs.push(FieldError::new("", "set one of uri or upstream"));
                None
            }
        };
        let mut names = |field: &str, list: &[String]| -> Vec<HeaderName> {
            list.iter()
                .enumerate()
                .filter_map(|(i, n)| {
                    header_name(n)
                        .map_err(|e| errs.push(FieldError::new(format!("{field}[{i}]"), e)))
                        .ok()
                })
                .collect()
        };
        let request_headers = names("request_headers", &c.request_headers);
        let upstream_headers = names("upstream_headers", &c.upstream_headers);
        let status = rejection_status("status_on_error", c.status_on_error, &mut errs);
        let path = match (&c.uri, to.as_ref()) {
            (Some(_), Some(to)) => to.path().to_string(),
            _ => c.path.clone(),
        };
        if !path.starts_with('/') {
            errs.push(FieldError::new("path", "must start with /"));
        }
        match (to, status) {
            (Some(to), Some(status)) if errs.is_empty() => Ok(Arc::new(ForwardAuth {
                to,
                path,
                request_headers,
                upstream_headers,
                limits: SubLimits {
                    timeout: c.timeout,
                    max_body: 64 * 1024,
                },
                on_error: c.on_error,
                status_on_error: status,
            })),
            _ => Err(errs),
        }
    }
}

pub struct ForwardAuth {
    to: UpstreamRef,
    path: String,
    request_headers: Vec<HeaderName>,
    upstream_headers: Vec<HeaderName>,
    limits: SubLimits,
    on_error: OnError,
    status_on_error: StatusCode,
}

/// Headers that describe one connection, not the answer: never passed on.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

impl ForwardAuth {
    /// The question to the auth service.
    fn ask(&self, ctx: &RequestCtx<'_>) -> Request<bytes::Bytes> {
        let mut req = Request::new(bytes::Bytes::new());
        if let Ok(uri) = self.path.parse() {
            *req.uri_mut() = uri;
        }
        let h = req.headers_mut();
        for name in &self.request_headers {
            for v in ctx.parts.headers.get_all(name) {
                h.append(name.clone(), v.clone());
            }
        }
        let facts = [
            ("x-forwarded-method", ctx.parts.method.as_str().to_string()),
            (
                "x-forwarded-uri",
                ctx.parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string(),
            ),
            ("x-forwarded-for", ctx.client_ip.to_string()),
        ];
        for (name, value) in facts {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        let host = ctx.parts.headers.get(http::header::HOST).cloned();
        if let Some(host) = host.or_else(|| ctx.parts.uri.host().and_then(|h| h.parse().ok())) {
            h.insert("x-forwarded-host", host);
        }
        req
    }
}

impl Plugin for ForwardAuth {
    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        // Only the auth service may say these: a client's own values never go upstream.
        for name in &self.upstream_headers {
            ctx.parts.headers.remove(name);
        }
        let call = ctx.subrequest(&self.to, self.ask(ctx), self.limits);
        let wanted = self.upstream_headers.clone();
        let (on_error, status) = (self.on_error, self.status_on_error);
        let target = self.to.name().to_string();
        Flow::Wait(Box::pin(async move {
            let resp = match call.await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(auth = %target, error = %e, "forward-auth: the auth service could not be asked");
                    return match on_error {
                        OnError::Allow => Ok(Later::default()),
                        OnError::Deny => Err(json_response(
                            status,
                            "the auth service is unavailable",
                            HeaderMap::new(),
                        )),
                    };
                }
            };
            if resp.status().is_success() {
                let mut upstream_headers = HeaderMap::new();
                for name in &wanted {
                    for v in resp.headers().get_all(name) {
                        upstream_headers.append(name.clone(), v.clone());
                    }
                }
                return Ok(Later {
                    upstream_headers,
                    ..Later::default()
                });
            }
            // Its answer, as it is, to the client (a 302 to the login page, a 401, a 403).
            let mut resp = resp;
            for h in HOP_BY_HOP {
                resp.headers_mut().remove(h);
            }
            Err(resp)
        }))
    }
}
