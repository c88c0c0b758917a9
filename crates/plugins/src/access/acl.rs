//! `acl`: lets an identified consumer through, or refuses it (403), by its groups. Runs after
//! the authentication plugins; a request none of them identified gets 401.

use super::refuse;
use gatehouse_plugin_api::{BuildEnv, FieldError, Flow, Plugin, RequestCtx, TypedKind};
use http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Groups whose members may pass (a consumer in none of them is refused).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Groups whose members are refused (wins over `allow`).
    #[serde(default)]
    pub deny: Vec<String>,
}

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = "acl";
    // After every authentication plugin (basic-auth 1100, hmac-auth 1030), before limits.
    const PRIORITY: i32 = 950;
    type Config = Config;

    fn build(&self, c: Config, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        if c.allow.is_empty() && c.deny.is_empty() {
            return Err(vec![FieldError::new("", "set allow, deny or both")]);
        }
        Ok(Arc::new(Acl {
            allow: c.allow.into_iter().map(Into::into).collect(),
            deny: c.deny.into_iter().map(Into::into).collect(),
        }))
    }
}

pub struct Acl {
    allow: Box<[Box<str>]>,
    deny: Box<[Box<str>]>,
}

impl Plugin for Acl {
    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let Some(c) = &ctx.consumer else {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "no consumer identified: this route needs authentication",
            );
        };
        let member = |groups: &[Box<str>]| groups.iter().any(|g| c.in_group(g));
        if member(&self.deny) || (!self.allow.is_empty() && !member(&self.allow)) {
            return refuse(
                StatusCode::FORBIDDEN,
                "this consumer may not use this route",
            );
        }
        Flow::Continue
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use gatehouse_plugin_api::{Consumer, PluginKind};

    fn as_member(groups: &[&str]) -> Req {
        let mut r = get("/");
        let mut c = Consumer::named(0, "alice");
        c.groups = groups.iter().map(|g| Arc::from(*g)).collect();
        r.consumer = Some(c);
        r
    }

    #[test]
    fn groups_decide_and_a_caller_nobody_identified_gets_401() {
        let cfg = serde_json::json!({"allow": ["partners", "ops"], "deny": ["banned"]});
        let p = PluginKind::build(&Kind, &cfg, &BuildEnv::default()).unwrap();
        assert!(as_member(&["partners"]).access_now(&*p).is_ok());
        assert!(as_member(&["x", "ops"]).access_now(&*p).is_ok());
        assert_eq!(
            as_member(&["users"]).access_now(&*p).unwrap_err().status(),
            403
        );
        assert_eq!(as_member(&[]).access_now(&*p).unwrap_err().status(), 403);
        assert_eq!(
            as_member(&["partners", "banned"])
                .access_now(&*p)
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(get("/").access_now(&*p).unwrap_err().status(), 401);
        assert!(PluginKind::build(&Kind, &serde_json::json!({}), &BuildEnv::default()).is_err());
    }
}
