//! `ip-restriction`: refuses requests by the client's address (the real client, as the
//! trusted-proxy handling found it) against allow and deny lists of IPv4/IPv6 addresses
//! and CIDR blocks. Deny wins; with an allow list, only what it lists passes.

use super::refuse;
use gatehouse_plugin_api::{
    rejection_status, BuildEnv, FieldError, Flow, Plugin, RequestCtx, TypedKind,
};
use http::StatusCode;
use ipnet::IpNet;
use schemars::JsonSchema;
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Addresses or CIDR blocks that may pass.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Addresses or CIDR blocks that are refused.
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default = "forbidden")]
    pub status: u16,
    #[serde(default = "default_message")]
    pub message: String,
}

fn forbidden() -> u16 {
    403
}

fn default_message() -> String {
    "your IP address is not allowed".into()
}

fn parse(field: &str, list: &[String], errs: &mut Vec<FieldError>) -> Vec<IpNet> {
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let s = s.trim();
            let net = s
                .parse::<IpNet>()
                .map(|n| n.trunc())
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
            net.map_err(|_| {
                errs.push(FieldError::new(
                    format!("{field}[{i}]"),
                    format!("\"{s}\" is not an IP address or CIDR block"),
                ))
            })
            .ok()
        })
        .collect()
}

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = "ip-restriction";
    // First of all: a refused address costs nothing further.
    const PRIORITY: i32 = 3000;
    type Config = Config;

    fn build(&self, c: Config, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        let mut errs = Vec::new();
        let allow = parse("allow", &c.allow, &mut errs);
        let deny = parse("deny", &c.deny, &mut errs);
        let status = rejection_status("status", c.status, &mut errs);
        if c.allow.is_empty() && c.deny.is_empty() {
            errs.push(FieldError::new("", "set allow, deny or both"));
        }
        match status {
            Some(status) if errs.is_empty() => Ok(Arc::new(IpRestriction {
                allow,
                deny,
                status,
                message: c.message,
            })),
            _ => Err(errs),
        }
    }
}

pub struct IpRestriction {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    status: StatusCode,
    message: String,
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, how a dual-stack socket reports an IPv4
/// peer) is judged as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Plugin for IpRestriction {
    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let ip = canonical(ctx.client_ip);
        let listed = |nets: &[IpNet]| nets.iter().any(|n| n.contains(&ip));
        if listed(&self.deny) || (!self.allow.is_empty() && !listed(&self.allow)) {
            return refuse(self.status, &self.message);
        }
        Flow::Continue
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use gatehouse_plugin_api::PluginKind;

    #[test]
    fn v4_v6_and_mapped_addresses_are_judged_by_the_lists() {
        let cfg = serde_json::json!({
            "allow": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"],
            "deny": ["10.9.0.0/16"],
        });
        let p = PluginKind::build(&Kind, &cfg, &BuildEnv::default()).unwrap();
        for (ip, ok) in [
            ("10.1.2.3", true),
            ("::ffff:10.1.2.3", true),
            ("2001:db8::1", true),
            ("192.0.2.7", true),
            ("10.9.1.1", false),
            ("203.0.113.5", false),
            ("2001:db9::1", false),
        ] {
            let got = req(ip).access_now(&*p);
            assert_eq!(got.is_ok(), ok, "{ip}");
            if let Err(r) = got {
                assert_eq!(r.status(), 403);
            }
        }
        let e = PluginKind::build(
            &Kind,
            &serde_json::json!({"deny": ["10.0.0.0/33", "x"]}),
            &BuildEnv::default(),
        )
        .err()
        .unwrap();
        assert_eq!(
            e.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["deny[0]", "deny[1]"]
        );
    }
}
