//! `bans`: enforces the node's ban list (IPs and CIDRs in `rewrite`, before anything else
//! is spent; consumers and keys in `access`, once authentication has named them) with 403
//! and `Retry-After` until the ban ends. The list is fed by the WAF, rate-limit and CC
//! protection (`ban:` in their configs) and by the admin API (`/bans`).

use gatehouse_plugin_api::bans::{bans, now_ms, Ban, Subject};
use gatehouse_plugin_api::{
    header_name, json_response, BuildEnv, FieldError, Flow, Plugin, RequestCtx, TypedKind,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A request header whose value is checked against `key:` bans (an API key).
    #[serde(default)]
    pub key_header: Option<String>,
}

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = "bans";
    // `access` after the authentication plugins (1030-1450) so that consumers are known,
    // before acl and the limits; IP bans are checked in `rewrite`, ahead of every plugin.
    const PRIORITY: i32 = 1000;
    type Config = Config;

    fn build(&self, c: Config, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        let key_header = match c.key_header.as_deref().map(header_name) {
            Some(Err(e)) => return Err(vec![FieldError::new("key_header", e)]),
            Some(Ok(h)) => Some(h),
            None => None,
        };
        Ok(Arc::new(Bans { key_header }))
    }
}

pub struct Bans {
    key_header: Option<HeaderName>,
}

/// 403 with `Retry-After` until the ban ends (also what the plugins that ban answer a
/// banned client with).
pub fn refuse(b: &Ban) -> Flow {
    let secs = b.until_ms.saturating_sub(now_ms()).div_ceil(1000).max(1);
    let mut h = HeaderMap::new();
    h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    Flow::Respond(json_response(StatusCode::FORBIDDEN, "banned", h))
}

impl Plugin for Bans {
    fn rewrite(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        match bans().ip(ctx.client_ip) {
            Some(b) => refuse(&b),
            None => Flow::Continue,
        }
    }

    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        if let Some(c) = &ctx.consumer {
            if let Some(b) = bans().named(&Subject::Consumer(c.username.to_string())) {
                return refuse(&b);
            }
        }
        let key = self
            .key_header
            .as_ref()
            .and_then(|h| ctx.parts.headers.get(h))
            .and_then(|v| v.to_str().ok());
        if let Some(b) = key.and_then(|k| bans().named(&Subject::Key(k.to_owned()))) {
            return refuse(&b);
        }
        Flow::Continue
    }
}
