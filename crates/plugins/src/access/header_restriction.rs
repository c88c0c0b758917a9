//! What `ua-restriction` and `referer-restriction` share: a request passes, or is refused
//! (403), by one header against allow and deny lists of exact values and `~regex`es. Deny
//! wins; with an allow list, only what it lists passes.

use super::patterns::{AllowDeny, Verdict};
use super::refuse;
use gatehouse_plugin_api::{rejection_status, FieldError, Flow, Plugin, RequestCtx};
use http::{HeaderName, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Values that may pass: exact, or `~regex`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Values that are refused: exact, or `~regex`.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Let a request without the header through (otherwise it is refused).
    #[serde(default)]
    pub bypass_missing: bool,
    /// The status a refused request gets.
    #[serde(default = "forbidden")]
    pub status: u16,
    /// The message a refused request gets. Default: `<Header> not allowed`.
    #[serde(default)]
    pub message: Option<String>,
}

fn forbidden() -> u16 {
    403
}

/// An instance that judges header `header` (named `what` in messages).
pub fn build(
    c: Config,
    header: HeaderName,
    what: &'static str,
) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
    let mut errs = Vec::new();
    let status = rejection_status("status", c.status, &mut errs);
    let lists = AllowDeny::compile(&c.allow, &c.deny).map_err(|e| errs.extend(e));
    match (status, lists) {
        (Some(status), Ok(lists)) if errs.is_empty() => Ok(Arc::new(Restriction {
            header,
            what,
            lists,
            bypass_missing: c.bypass_missing,
            status,
            message: c.message.unwrap_or_else(|| format!("{what} not allowed")),
        })),
        _ => Err(errs),
    }
}

pub struct Restriction {
    header: HeaderName,
    what: &'static str,
    lists: AllowDeny,
    bypass_missing: bool,
    status: StatusCode,
    message: String,
}

impl Plugin for Restriction {
    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let Some(value) = ctx.parts.headers.get(&self.header) else {
            return match self.bypass_missing {
                true => Flow::Continue,
                false => refuse(self.status, &format!("{} header required", self.what)),
            };
        };
        // A value that is not text matches nothing, so it fails an allow list.
        let text = String::from_utf8_lossy(value.as_bytes());
        match self.lists.judge(&text) {
            Verdict::Pass => Flow::Continue,
            Verdict::Denied | Verdict::NotAllowed => refuse(self.status, &self.message),
        }
    }
}
