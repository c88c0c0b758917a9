//! `ua-restriction`: refuses requests by their `User-Agent` header (see [`super::header_restriction`]).

use super::header_restriction::{build, Config};
use gatehouse_plugin_api::{BuildEnv, FieldError, Plugin, TypedKind};
use std::sync::Arc;

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = "ua-restriction";
    const PRIORITY: i32 = 2990;
    type Config = Config;

    fn build(&self, c: Config, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        build(c, http::header::USER_AGENT, "User-Agent")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use gatehouse_plugin_api::PluginKind;

    #[test]
    fn deny_wins_allow_lists_and_a_missing_header_is_refused_unless_bypassed() {
        let cfg = serde_json::json!({"allow": ["~^Mozilla/"], "deny": ["~(?i)spider"]});
        let p = PluginKind::build(&Kind, &cfg, &BuildEnv::default()).unwrap();
        assert!(req("10.0.0.1").access_now(&*p).is_ok());
        let no = |ua: &str| {
            let mut r = get("/").header("user-agent", ua);
            r.access_now(&*p).unwrap_err()
        };
        assert_eq!(no("Mozilla/5.0 (Baiduspider)").status(), 403);
        assert_eq!(no("python-requests/2").status(), 403);
        let missing = get("/").access_now(&*p).unwrap_err();
        let body: serde_json::Value = serde_json::from_slice(missing.body()).unwrap();
        assert_eq!(body["error"], "User-Agent header required");
        let cfg = serde_json::json!({"deny": ["curl/8.0"], "bypass_missing": true, "status": 429});
        let p = PluginKind::build(&Kind, &cfg, &BuildEnv::default()).unwrap();
        assert!(get("/").access_now(&*p).is_ok());
        let mut r = get("/").header("user-agent", "curl/8.0");
        assert_eq!(r.access_now(&*p).unwrap_err().status(), 429);
        let e = PluginKind::build(
            &Kind,
            &serde_json::json!({"allow": ["~("]}),
            &BuildEnv::default(),
        )
        .err()
        .unwrap();
        assert_eq!(e[0].path, "allow[0]");
    }
}
