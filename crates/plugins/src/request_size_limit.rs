//! `request-size-limit`: stops requests that are too large before they reach the upstream:
//! a body over `max_body` (413, whether declared in `Content-Length` or found while the body
//! streams), headers over `max_header_bytes` or `max_headers` (431), a URI over `max_uri`
//! (414).

use bytesize::ByteSize;
use gatehouse_plugin_api::{
    json_response, BuildEnv, FieldError, Flow, Plugin, RequestCtx, TypedKind,
};
use http::{HeaderMap, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;

/// Size limits on requests. Sizes are bytes, or text with a unit: `512KiB`, `10MB` (10^6),
/// `10MiB` (2^20).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Largest request body: 413 when `Content-Length` says more, or when a body (chunked,
    /// or longer than it declared) grows past it while streaming upstream.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub max_body: Option<ByteSize>,
    /// Largest total of header names and values (plus 4 bytes each for `: ` and CRLF): 431.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub max_header_bytes: Option<ByteSize>,
    /// Most header lines: 431.
    #[serde(default)]
    pub max_headers: Option<u32>,
    /// Longest path and query: 414.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub max_uri: Option<ByteSize>,
}

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = "request-size-limit";
    // Cheap and decisive: before authentication and limits spend anything.
    const PRIORITY: i32 = 1990;
    type Config = Config;

    fn build(&self, c: Config, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        let mut errs = Vec::new();
        for (name, v) in [
            ("max_body", c.max_body.map(|b| b.0)),
            ("max_header_bytes", c.max_header_bytes.map(|b| b.0)),
            ("max_headers", c.max_headers.map(u64::from)),
            ("max_uri", c.max_uri.map(|b| b.0)),
        ] {
            if v == Some(0) {
                errs.push(FieldError::new(name, "must be > 0"));
            }
        }
        if c.max_body.is_none()
            && c.max_header_bytes.is_none()
            && c.max_headers.is_none()
            && c.max_uri.is_none()
        {
            errs.push(FieldError::new(
                "",
                "set at least one of max_body, max_header_bytes, max_headers, max_uri",
            ));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Arc::new(SizeLimit {
            max_body: c.max_body.map(|b| b.0),
            max_header_bytes: c.max_header_bytes.map(|b| b.0),
            max_headers: c.max_headers.map(|n| n as usize),
            max_uri: c.max_uri.map(|b| b.0),
        }))
    }
}

pub struct SizeLimit {
    max_body: Option<u64>,
    max_header_bytes: Option<u64>,
    max_headers: Option<usize>,
    max_uri: Option<u64>,
}

fn reject(status: StatusCode, message: &str) -> Flow {
    Flow::Respond(json_response(status, message, HeaderMap::new()))
}

impl Plugin for SizeLimit {
    fn rewrite(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        if let Some(max) = self.max_uri {
            let len = ctx
                .parts
                .uri
                .path_and_query()
                .map_or(0, |p| p.as_str().len());
            if len as u64 > max {
                return reject(StatusCode::URI_TOO_LONG, "request URI too long");
            }
        }
        let headers = &ctx.parts.headers;
        if self.max_headers.is_some_and(|max| headers.len() > max) {
            return reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many request headers",
            );
        }
        if let Some(max) = self.max_header_bytes {
            let size: u64 = headers
                .iter()
                .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
                .sum();
            if size > max {
                return reject(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request headers too large",
                );
            }
        }
        if let Some(max) = self.max_body {
            let declared = headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max) {
                return reject(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
            }
            // Chunked bodies, and bodies longer than they said, are counted as they stream.
            ctx.limit_body(max);
        }
        Flow::Continue
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::req;
    use gatehouse_plugin_api::PluginKind;
    use serde_json::json;

    fn build(config: serde_json::Value) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        PluginKind::build(&Kind, &config, &BuildEnv::default())
    }

    fn status_of(f: Flow) -> Option<u16> {
        match f {
            Flow::Respond(r) => Some(r.status().as_u16()),
            _ => None,
        }
    }

    #[test]
    fn sizes_read_units_and_bad_ones_name_the_field() {
        assert!(build(json!({"max_body": "1MiB", "max_uri": 2048})).is_ok());
        let e = build(json!({})).err().unwrap();
        assert_eq!(e[0].path, "");
        let e = build(json!({"max_body": "lots"})).err().unwrap();
        assert!(e[0].path.starts_with("max_body"), "{:?}", e[0]);
        let e = build(json!({"max_headers": 0})).err().unwrap();
        assert_eq!(
            (e[0].path.as_str(), e[0].message.as_str()),
            ("max_headers", "must be > 0")
        );
    }

    #[test]
    fn declared_bodies_headers_and_uris_over_their_limits_are_refused() {
        let p = build(
            json!({"max_body": "1KiB", "max_headers": 3, "max_header_bytes": 100, "max_uri": 10}),
        )
        .unwrap();
        let mut r = req("10.0.0.1");
        r.parts
            .headers
            .insert("content-length", "1025".parse().unwrap());
        // The URI (/a?tenant=t1, 12 bytes) is checked first.
        assert_eq!(status_of(p.rewrite(&mut r.ctx())), Some(414));
        r.parts.uri = "/a".parse().unwrap();
        assert_eq!(status_of(p.rewrite(&mut r.ctx())), Some(413));
        r.parts
            .headers
            .insert("content-length", "1024".parse().unwrap());
        let mut ctx = r.ctx();
        assert!(matches!(p.rewrite(&mut ctx), Flow::Continue));
        assert_eq!(
            ctx.body_limit,
            Some(1024),
            "the streamed body is capped too"
        );
        drop(ctx);
        r.parts.headers.insert("x-a", "1".parse().unwrap());
        r.parts.headers.insert("x-b", "1".parse().unwrap());
        assert_eq!(
            status_of(p.rewrite(&mut r.ctx())),
            Some(431),
            "4 headers > 3"
        );
        r.parts.headers.remove("x-a");
        r.parts.headers.remove("x-b");
        r.parts
            .headers
            .insert("x-big", "y".repeat(80).parse().unwrap());
        assert_eq!(status_of(p.rewrite(&mut r.ctx())), Some(431), "> 100 bytes");
    }
}
