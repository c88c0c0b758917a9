//! `request-transformer` and `response-transformer`: headers, query arguments and JSON body
//! fields removed, renamed, set, added and appended on the way to the upstream or back, with
//! values from variables (route captures, consumer, client IP, request id).

mod edits;
mod vars;

use bytes::{Bytes, BytesMut};
use bytesize::ByteSize;
use edits::{compile, header, plain, Edits, Section};
use gatehouse_plugin_api::{
    BodyCtx, BuildEnv, FieldError, Flow, Needs, Plugin, RequestCtx, ResponseCtx, TypedKind,
};
use http::uri::PathAndQuery;
use http::{HeaderName, Uri};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;
use vars::Vars;

fn default_max_body() -> ByteSize {
    ByteSize::mib(1)
}

/// Edits to the request on its way upstream.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    #[serde(default)]
    pub headers: Section,
    #[serde(default)]
    pub query: Section,
    /// Top-level fields of a JSON object body (the body is read first, up to `max_body`:
    /// a longer one is refused with 413, as by any plugin that reads the body).
    #[serde(default)]
    pub json: Section,
    #[serde(default = "default_max_body")]
    #[schemars(with = "String")]
    pub max_body: ByteSize,
}

/// Edits to the response on its way to the client.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    #[serde(default)]
    pub headers: Section,
    /// Top-level fields of a JSON object body (`Content-Type: application/json` or
    /// `+json`) up to `max_body`; a longer or non-JSON body goes as it is.
    #[serde(default)]
    pub json: Section,
    #[serde(default = "default_max_body")]
    #[schemars(with = "String")]
    pub max_body: ByteSize,
}

pub struct RequestKind;

impl TypedKind for RequestKind {
    const NAME: &'static str = "request-transformer";
    // Kong's place: after authentication and limits, before release rules read headers.
    const PRIORITY: i32 = 801;
    type Config = RequestConfig;

    fn build(&self, c: RequestConfig, _: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        let mut errs = Vec::new();
        let headers = compile("headers", &c.headers, false, header, &mut errs);
        let query = compile("query", &c.query, false, plain, &mut errs);
        let json = compile("json", &c.json, true, plain, &mut errs);
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Arc::new(RequestTransformer {
            uses: headers.uses.or(query.uses).or(json.uses),
            headers,
            query,
            json,
            max_body: c.max_body.0,
        }))
    }
}

pub struct RequestTransformer {
    headers: Edits<HeaderName>,
    query: Edits<Box<str>>,
    json: Edits<Box<str>>,
    max_body: u64,
    uses: vars::Uses,
}

impl Plugin for RequestTransformer {
    fn needs(&self) -> Needs {
        Needs {
            facts: self.uses.facts,
            request_body: (!self.json.is_empty()).then_some(self.max_body),
            ..Needs::default()
        }
    }

    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let vars = Vars::of(ctx, self.uses);
        if !self.query.is_empty() {
            let mut q: Vec<(String, String)> = ctx
                .parts
                .uri
                .query()
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default();
            self.query.apply_query(&mut q, &vars);
            set_query(&mut ctx.parts.uri, &q);
        }
        if !self.json.is_empty() && is_json(&ctx.parts.headers) {
            let parsed = ctx.body.and_then(|b| serde_json::from_slice(b).ok());
            if let Some(mut body) = parsed {
                if self.json.apply_json(&mut body, &vars) {
                    ctx.replace_body(Bytes::from(body.to_string()));
                }
            }
        }
        self.headers.apply(&mut ctx.parts.headers, &vars);
        Flow::Continue
    }
}

fn is_json(h: &http::HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|t| t == "application/json" || t.ends_with("+json"))
}

fn set_query(uri: &mut Uri, q: &[(String, String)]) {
    let path = uri.path().to_owned();
    let pq = match q.is_empty() {
        true => path,
        false => {
            let mut s = form_urlencoded::Serializer::new(String::new());
            for (k, v) in q {
                s.append_pair(k, v);
            }
            format!("{path}?{}", s.finish())
        }
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = PathAndQuery::try_from(pq).ok();
    if let Ok(u) = Uri::from_parts(parts) {
        *uri = u;
    }
}

pub struct ResponseKind;

impl TypedKind for ResponseKind {
    const NAME: &'static str = "response-transformer";
    const PRIORITY: i32 = 800;
    type Config = ResponseConfig;

    fn build(&self, c: ResponseConfig, _: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        let mut errs = Vec::new();
        let headers = compile("headers", &c.headers, false, header, &mut errs);
        let json = compile("json", &c.json, true, plain, &mut errs);
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Arc::new(ResponseTransformer {
            uses: headers.uses.or(json.uses),
            headers,
            json,
            max_body: usize::try_from(c.max_body.0).unwrap_or(usize::MAX),
        }))
    }
}

pub struct ResponseTransformer {
    headers: Edits<HeaderName>,
    json: Edits<Box<str>>,
    max_body: usize,
    uses: vars::Uses,
}

/// The request's variables, kept for the response (in the request's state).
#[derive(Clone)]
struct Kept(Vars);

/// A JSON response body being gathered for editing.
#[derive(Clone)]
struct Gathering {
    body: BytesMut,
    /// Over the cap: what was gathered went out as it was, the rest streams.
    given_up: bool,
}

impl Plugin for ResponseTransformer {
    fn needs(&self) -> Needs {
        Needs {
            facts: self.uses.facts,
            response_body: !self.json.is_empty(),
            ..Needs::default()
        }
    }

    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let vars = Vars::of(ctx, self.uses);
        ctx.state.insert(Kept(vars));
        Flow::Continue
    }

    fn response(&self, ctx: &mut ResponseCtx<'_>) {
        let empty = Vars::default();
        let vars = ctx.state.get::<Kept>().map_or(&empty, |k| &k.0);
        self.headers.apply(ctx.headers, vars);
        if !self.json.is_empty() && is_json(ctx.headers) {
            ctx.state.insert(Gathering {
                body: BytesMut::new(),
                given_up: false,
            });
        }
    }

    fn response_body(&self, ctx: &mut BodyCtx<'_>, chunk: &mut Bytes, end: bool) {
        let Some(g) = ctx.state.get_mut::<Gathering>() else {
            return;
        };
        if g.given_up {
            return;
        }
        if g.body.len() + chunk.len() > self.max_body {
            // Too long to edit: what was held back goes now, ahead of this chunk.
            g.given_up = true;
            let mut out = std::mem::take(&mut g.body);
            out.extend_from_slice(chunk);
            *chunk = out.freeze();
            return;
        }
        g.body.extend_from_slice(chunk);
        *chunk = Bytes::new();
        if !end {
            return;
        }
        let whole = std::mem::take(&mut g.body).freeze();
        let empty = Vars::default();
        let vars = ctx.state.get::<Kept>().map_or(&empty, |k| &k.0);
        *chunk = match serde_json::from_slice::<serde_json::Value>(&whole) {
            Ok(mut v) => match self.json.apply_json(&mut v, vars) {
                true => Bytes::from(v.to_string()),
                false => whole,
            },
            Err(_) => whole,
        };
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
