//! `cors`: Cross-Origin Resource Sharing for browsers. A preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) from an allowed origin is answered by the gateway; an
//! actual request from one gets the `Access-Control-*` headers on whatever answers it (the
//! upstream or the gateway). A request from another origin goes on without them, so the
//! browser keeps its answer from the page.

use super::patterns::Patterns;
use gatehouse_plugin_api::{
    header_name, json_response, BuildEnv, FieldError, Flow, Plugin, RequestCtx, ResponseCtx,
    TypedKind,
};
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Origins that may call: exact (`https://app.example.com`), `~regex`, or `*` for any.
    pub origins: Vec<String>,
    /// Methods a preflight allows.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Request headers a preflight allows; empty: whatever the browser asks for.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Response headers the page's script may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Allow cookies and `Authorization` (`Access-Control-Allow-Credentials: true`); the
    /// origin is then always named, never `*`.
    #[serde(default)]
    pub credentials: bool,
    /// How long a browser may keep a preflight's answer.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub max_age: Option<Duration>,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS"]
        .map(String::from)
        .to_vec()
}

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = "cors";
    // Before authentication: a preflight carries no credentials and must be answered.
    const PRIORITY: i32 = 2000;
    type Config = Config;

    fn build(&self, c: Config, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        let mut errs = Vec::new();
        let any = c.origins.iter().any(|o| o == "*");
        let listed: Vec<String> = c.origins.iter().filter(|o| *o != "*").cloned().collect();
        let origins = Patterns::compile("origins", &listed).map_err(|e| errs.extend(e));
        if c.origins.is_empty() {
            errs.push(FieldError::new("origins", "list at least one origin, or *"));
        }
        for (i, m) in c.methods.iter().enumerate() {
            if Method::from_bytes(m.as_bytes()).is_err() {
                errs.push(FieldError::new(
                    format!("methods[{i}]"),
                    "not an HTTP method",
                ));
            }
        }
        let mut list = |field: &str, names: &[String]| -> Option<HeaderValue> {
            for (i, n) in names.iter().enumerate() {
                if let Err(e) = header_name(n) {
                    errs.push(FieldError::new(format!("{field}[{i}]"), e));
                }
            }
            (!names.is_empty())
                .then(|| HeaderValue::from_str(&names.join(", ")).ok())
                .flatten()
        };
        let headers = list("headers", &c.headers);
        let expose = list("expose_headers", &c.expose_headers);
        let methods = HeaderValue::from_str(&c.methods.join(", ")).ok();
        match (origins, methods) {
            (Ok(origins), Some(methods)) if errs.is_empty() => Ok(Arc::new(Cors {
                any,
                origins,
                methods,
                headers,
                expose,
                credentials: c.credentials,
                max_age: c.max_age.map(|d| HeaderValue::from(d.as_secs())),
            })),
            _ => Err(errs),
        }
    }
}

pub struct Cors {
    any: bool,
    origins: Patterns,
    methods: HeaderValue,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// The `Access-Control-Allow-Origin` this request's answer gets.
#[derive(Clone)]
struct Allowed(HeaderValue);

impl Cors {
    /// What to answer an origin with, or `None` when it may not call.
    fn allow(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any && !self.credentials {
            return Some(HeaderValue::from_static("*"));
        }
        let text = origin.to_str().ok()?;
        (self.any || self.origins.matches(text)).then(|| origin.clone())
    }

    fn common(&self, h: &mut HeaderMap, allowed: HeaderValue) {
        let named = allowed != "*";
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        if self.credentials {
            h.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if named {
            h.append(VARY, HeaderValue::from_static("Origin"));
        }
    }

    fn preflight(&self, ctx: &RequestCtx<'_>, allowed: HeaderValue) -> Flow {
        let mut resp = http::Response::new(bytes::Bytes::new());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        self.common(h, allowed);
        h.insert(ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
        match (
            &self.headers,
            ctx.parts.headers.get(ACCESS_CONTROL_REQUEST_HEADERS),
        ) {
            (Some(listed), _) => {
                h.insert(ACCESS_CONTROL_ALLOW_HEADERS, listed.clone());
            }
            (None, Some(asked)) => {
                h.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
                h.append(
                    VARY,
                    HeaderValue::from_static("Access-Control-Request-Headers"),
                );
            }
            (None, None) => {}
        }
        if let Some(age) = &self.max_age {
            h.insert(ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        Flow::Respond(resp)
    }
}

impl Plugin for Cors {
    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let Some(origin) = ctx.parts.headers.get(ORIGIN) else {
            return Flow::Continue;
        };
        let allowed = self.allow(origin);
        let preflight = ctx.parts.method == Method::OPTIONS
            && ctx
                .parts
                .headers
                .contains_key(ACCESS_CONTROL_REQUEST_METHOD);
        match (allowed, preflight) {
            (Some(a), true) => self.preflight(ctx, a),
            (None, true) => Flow::Respond(json_response(
                StatusCode::FORBIDDEN,
                "origin not allowed",
                HeaderMap::new(),
            )),
            (Some(a), false) => {
                ctx.state.insert(Allowed(a));
                Flow::Continue
            }
            (None, false) => Flow::Continue,
        }
    }

    fn response(&self, ctx: &mut ResponseCtx<'_>) {
        let Some(Allowed(a)) = ctx.state.get::<Allowed>().cloned() else {
            return;
        };
        // Ours replace the upstream's: one Allow-Origin, or browsers refuse the answer.
        self.common(ctx.headers, a);
        if let Some(e) = &self.expose {
            ctx.headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use gatehouse_plugin_api::PluginKind;

    fn cors(cfg: serde_json::Value) -> Arc<dyn Plugin> {
        PluginKind::build(&Kind, &cfg, &BuildEnv::default()).unwrap()
    }

    fn preflight(origin: &str) -> Req {
        let mut r = get("/api")
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "x-token, content-type");
        r.parts.method = Method::OPTIONS;
        r
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered_and_others_refused() {
        let p = cors(serde_json::json!({
            "origins": ["https://app.example.com", "~^https://[a-z]+\\.example\\.org$"],
            "credentials": true, "max_age": "10m", "methods": ["GET", "PUT"],
        }));
        let resp = preflight("https://app.example.com")
            .access_now(&*p)
            .unwrap_err();
        assert_eq!(resp.status(), 204);
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-allow-methods"], "GET, PUT");
        assert_eq!(h["access-control-allow-headers"], "x-token, content-type");
        assert_eq!(h["access-control-max-age"], "600");
        let resp = preflight("https://shop.example.org")
            .access_now(&*p)
            .unwrap_err();
        assert_eq!(resp.status(), 204);
        let resp = preflight("https://evil.example.org.test")
            .access_now(&*p)
            .unwrap_err();
        assert_eq!(resp.status(), 403);
    }

    #[test]
    fn an_actual_request_gets_the_headers_on_its_answer() {
        let p = cors(serde_json::json!({"origins": ["*"], "expose_headers": ["x-total"]}));
        let mut r = get("/api").header("origin", "https://any.test");
        r.access_now(&*p).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("https://x"),
        );
        p.response(&mut ResponseCtx {
            status: StatusCode::OK,
            headers: &mut headers,
            route: "r",
            service: "s",
            request: None,
            consumer: None,
            state: &mut r.state,
        });
        assert_eq!(headers["access-control-allow-origin"], "*");
        assert_eq!(headers["access-control-expose-headers"], "x-total");
        assert!(!headers.contains_key(VARY));
        // Without Origin it is not a CORS request: nothing is noted.
        let mut plain = get("/api");
        plain.access_now(&*p).unwrap();
        assert!(plain.state.get::<Allowed>().is_none());
    }
}
