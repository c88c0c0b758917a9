//! Service discovery config: where an upstream's targets come from besides its static
//! `targets` (DNS, etcd), and how an answer is trusted.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `upstreams[].discovery`: `dns`, `etcd`, both, or neither (`discovery: {}`: the targets
/// come from self-registration alone). What they find is added to the upstream's static
/// `targets` (which may then be empty). Any upstream also takes self-registrations
/// (`PUT /upstreams/{name}/targets/{address}` with a `ttl`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsDiscovery>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdDiscovery>,
    /// Apply an answer with no targets. Off by default: an emptied registry or a zone that
    /// lost its records keeps the last known targets serving (and says so in `/status`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_empty: bool,
}

/// Targets from DNS: the A/AAAA records of `name` (each address a target on `port`), or
/// its SRV records (ports, priorities and weights from the records).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsDiscovery {
    /// The name to resolve: `orders.svc.local`, or for SRV `_http._tcp.orders.svc.local`.
    pub name: String,
    /// `a` (A and AAAA, default) or `srv`.
    #[serde(default)]
    pub record: DnsRecord,
    /// For `a`: the targets' port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// For `a`: each address's weight (default 1). SRV records carry their own.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: u32,
    /// Name servers as `ip:port` (default: `/etc/resolv.conf`'s).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolvers: Vec<String>,
    /// Re-resolve no sooner than this after an answer, whatever its TTL (default 1s).
    #[serde(
        default = "default_min_ttl",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<3600, _>"
    )]
    #[schemars(with = "String")]
    pub min_ttl: Duration,
    /// Re-resolve no later than this after an answer, whatever its TTL (default 5m).
    #[serde(
        default = "default_max_ttl",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<86400, _>"
    )]
    #[schemars(with = "String")]
    pub max_ttl: Duration,
}

/// Which DNS records name the targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DnsRecord {
    #[default]
    A,
    Srv,
}

/// Targets from etcd v3: every key under `prefix` is one target, its value JSON
/// `{"address": "host:port", "weight": 1, "labels": {..}, "metadata": {..}}` (or a bare
/// `host:port`). Changes arrive by watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EtcdDiscovery {
    /// Client URLs, tried in turn: `http://127.0.0.1:2379`, or `https://` (see `tls`).
    pub endpoints: Vec<String>,
    /// The key prefix, e.g. `/services/orders/`.
    pub prefix: String,
    /// etcd's authentication: a user with read access to the prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Its password. Write-only: the admin API never shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// For `https://` endpoints: the CA to verify etcd with (default: the system's roots),
    /// `sni`, `verify`, and a client certificate (`client_cert`, `client_key`) when etcd
    /// asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::UpstreamTls>,
}

fn one() -> u32 {
    1
}

fn is_one(w: &u32) -> bool {
    *w == 1
}

fn default_min_ttl() -> Duration {
    Duration::from_secs(1)
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(300)
}

/// Checks `upstreams[].discovery` and the targets rule it relaxes.
pub(crate) fn validate(config: &crate::Config, err: &mut impl FnMut(String, String)) {
    for (i, u) in config.upstreams.iter().enumerate() {
        let p = format!("upstreams[{i}]");
        let Some(d) = &u.discovery else {
            if u.targets.is_empty() {
                err(
                    format!("{p}.targets"),
                    "needs at least one target (or a discovery)".into(),
                );
            }
            continue;
        };
        let p = format!("{p}.discovery");
        if let Some(dns) = &d.dns {
            check_dns(dns, &format!("{p}.dns"), err);
        }
        if let Some(etcd) = &d.etcd {
            check_etcd(etcd, &format!("{p}.etcd"), err);
        }
    }
}

fn check_dns(dns: &DnsDiscovery, p: &str, err: &mut impl FnMut(String, String)) {
    let name = dns.name.trim_end_matches('.');
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        err(
            format!("{p}.name"),
            format!("\"{}\" is not a DNS name", dns.name),
        );
    }
    match (dns.record, dns.port) {
        (DnsRecord::A, None) => err(
            format!("{p}.port"),
            "A/AAAA records carry no port: give the targets' port".into(),
        ),
        (DnsRecord::A, Some(0)) => err(format!("{p}.port"), "must be 1-65535".into()),
        (DnsRecord::Srv, Some(_)) => err(
            format!("{p}.port"),
            "SRV records carry their own ports: leave port out".into(),
        ),
        _ => {}
    }
    if dns.weight == 0 || dns.weight > 65535 {
        err(format!("{p}.weight"), "must be between 1 and 65535".into());
    }
    for (k, r) in dns.resolvers.iter().enumerate() {
        if r.parse::<std::net::SocketAddr>().is_err() {
            err(
                format!("{p}.resolvers[{k}]"),
                format!("\"{r}\" is not an ip:port"),
            );
        }
    }
    if dns.min_ttl > dns.max_ttl {
        err(
            format!("{p}.min_ttl"),
            "must not be more than max_ttl".into(),
        );
    }
}

fn check_etcd(etcd: &EtcdDiscovery, p: &str, err: &mut impl FnMut(String, String)) {
    if etcd.endpoints.is_empty() {
        err(
            format!("{p}.endpoints"),
            "needs at least one client URL".into(),
        );
    }
    for (k, e) in etcd.endpoints.iter().enumerate() {
        let ok = etcd_endpoint(e).is_some_and(|(_, hp)| crate::check_host_port(hp).is_ok());
        if !ok {
            err(
                format!("{p}.endpoints[{k}]"),
                format!("\"{e}\" is not an http:// or https://host:port URL"),
            );
        }
    }
    if etcd.username.is_some() != etcd.password.is_some() {
        err(
            format!("{p}.password"),
            "username and password go together".into(),
        );
    }
    let https = etcd.endpoints.iter().any(|e| e.starts_with("https://"));
    if etcd.tls.is_some() && !https {
        err(
            format!("{p}.tls"),
            "applies to https:// endpoints only".into(),
        );
    }
    if etcd.prefix.is_empty() {
        err(
            format!("{p}.prefix"),
            "must not be empty (it would watch the whole keyspace)".into(),
        );
    }
}

/// An etcd endpoint URL as (is it https, `host:port`); `None` when it is neither
/// `http://host:port` nor `https://host:port`.
pub fn etcd_endpoint(url: &str) -> Option<(bool, &str)> {
    let (https, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (false, r),
        (_, Some(r)) => (true, r),
        _ => return None,
    };
    Some((https, rest.trim_end_matches('/')))
}
