//! `referer-restriction`: refuses requests by their `Referer` header (see [`super::header_restriction`]).

use super::header_restriction::{build, Config};
use gatehouse_plugin_api::{BuildEnv, FieldError, Plugin, TypedKind};
use std::sync::Arc;

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = "referer-restriction";
    const PRIORITY: i32 = 2980;
    type Config = Config;

    fn build(&self, c: Config, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        build(c, http::header::REFERER, "Referer")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use gatehouse_plugin_api::PluginKind;

    #[test]
    fn only_listed_referers_pass() {
        let cfg = serde_json::json!({"allow": ["~^https://([a-z]+\\.)?example\\.com/"], "bypass_missing": true});
        let p = PluginKind::build(&Kind, &cfg, &BuildEnv::default()).unwrap();
        let mut ok = get("/").header("referer", "https://shop.example.com/cart");
        assert!(ok.access_now(&*p).is_ok());
        assert!(get("/").access_now(&*p).is_ok(), "bypassed when missing");
        let mut bad = get("/").header("referer", "https://evil.test/?https://example.com/");
        let resp = bad.access_now(&*p).unwrap_err();
        assert_eq!(resp.status(), 403);
        let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(body["error"], "Referer not allowed");
    }
}
