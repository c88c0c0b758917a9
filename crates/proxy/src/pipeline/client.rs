//! Who the client is. The connection's peer (the PROXY protocol's source on listeners that
//! take it), unless that peer is one of `node.trusted_proxies`: then the rightmost address of
//! `X-Forwarded-For` that is not a trusted proxy (or `X-Real-IP` when there is no
//! `X-Forwarded-For`). Rate-limit keys, IP hashing, the access log and `X-Real-IP` use it.

use super::state::ConnInfo;
use crate::headers::{X_FORWARDED_FOR, X_REAL_IP};
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// The request's client, as the gateway believes it.
pub struct Client {
    pub ip: IpAddr,
    /// `ip` as a header value, when it is not the peer's (see [`Client::value`]).
    own_value: Option<HeaderValue>,
    /// The connection came from a trusted proxy: its forwarding headers were believed.
    pub via_trusted_proxy: bool,
}

impl Client {
    /// `ip` as a header value: the connection's own unless a trusted proxy named another.
    pub fn value<'a>(&'a self, conn: &'a ConnInfo) -> &'a HeaderValue {
        self.own_value.as_ref().unwrap_or(&conn.client_ip)
    }
}

/// The client of a request with `headers` that came over `conn`.
pub fn resolve(conn: &ConnInfo, headers: &HeaderMap, trusted: &[IpNet]) -> Client {
    if !is_trusted(trusted, conn.ip) {
        // The common case costs nothing per request: the peer's value is the connection's.
        return Client {
            ip: conn.ip,
            own_value: None,
            via_trusted_proxy: false,
        };
    }
    let found = forwarded_for(headers, trusted).or_else(|| {
        headers
            .get(&X_REAL_IP)
            .and_then(|v| parse_addr(v.to_str().ok()?))
    });
    let ip = found.unwrap_or(conn.ip);
    Client {
        ip,
        own_value: (ip != conn.ip)
            .then(|| HeaderValue::from_str(&ip.to_string()).ok())
            .flatten(),
        via_trusted_proxy: true,
    }
}

fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// The rightmost untrusted address of `X-Forwarded-For` (all its fields, in order); the
/// leftmost when every one is trusted. An entry that is not an address ends the walk: what
/// stands left of it cannot be told from a forgery, so the last good entry is the client.
fn forwarded_for(headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let mut entries: Vec<&str> = Vec::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        let Ok(v) = v.to_str() else { return None };
        entries.extend(v.split(',').map(str::trim).filter(|e| !e.is_empty()));
    }
    let mut candidate = None;
    for entry in entries.iter().rev() {
        let Some(ip) = parse_addr(entry) else { break };
        candidate = Some(ip);
        if !is_trusted(trusted, ip) {
            break;
        }
    }
    candidate
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:5678`, IPv4-mapped IPv6 as IPv4.
fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let ip = s
        .parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))?;
    Some(ip.to_canonical())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn conn(ip: &str) -> ConnInfo {
        ConnInfo::new(format!("{ip}:1000").parse().unwrap(), false, None)
    }

    fn client(peer: &str, xff: &[&str], real: Option<&str>, trusted: &[&str]) -> (String, bool) {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        if let Some(r) = real {
            h.insert(&X_REAL_IP, HeaderValue::from_str(r).unwrap());
        }
        let nets: Vec<IpNet> = trusted
            .iter()
            .map(|t| gatehouse_model::parse_cidr(t).unwrap())
            .collect();
        let conn = conn(peer);
        let c = resolve(&conn, &h, &nets);
        assert_eq!(c.value(&conn).to_str().unwrap(), c.ip.to_string());
        (c.ip.to_string(), c.via_trusted_proxy)
    }

    #[test]
    fn forwarding_headers_are_believed_only_from_trusted_peers() {
        let lb = ["10.0.0.0/8"];
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(
            client("1.2.3.4", &["9.9.9.9"], Some("8.8.8.8"), &lb),
            ("1.2.3.4".into(), false)
        );
        assert_eq!(
            client("1.2.3.4", &["9.9.9.9"], None, &[]),
            ("1.2.3.4".into(), false)
        );
        // Through the balancer: the rightmost untrusted entry.
        assert_eq!(
            client("10.0.0.2", &["6.6.6.6, 5.5.5.5"], None, &lb),
            ("5.5.5.5".into(), true)
        );
        assert_eq!(
            client("10.0.0.2", &["6.6.6.6", "5.5.5.5, 10.1.1.1"], None, &lb),
            ("5.5.5.5".into(), true)
        );
        // A forged entry left of the real client changes nothing.
        assert_eq!(
            client("10.0.0.2", &["1.1.1.1, 5.5.5.5"], None, &lb),
            ("5.5.5.5".into(), true)
        );
        // All trusted: the leftmost.
        assert_eq!(
            client("10.0.0.2", &["10.9.9.9, 10.1.1.1"], None, &lb),
            ("10.9.9.9".into(), true)
        );
        // Garbage stops the walk at the last good entry.
        assert_eq!(
            client("10.0.0.2", &["5.5.5.5, junk, 10.1.1.1"], None, &lb),
            ("10.1.1.1".into(), true)
        );
        // Ports and brackets, IPv4-mapped IPv6.
        assert_eq!(
            client("10.0.0.2", &["[2001:db8::1]:443"], None, &lb),
            ("2001:db8::1".into(), true)
        );
        assert_eq!(
            client("10.0.0.2", &["5.5.5.5:1234"], None, &lb),
            ("5.5.5.5".into(), true)
        );
        assert_eq!(
            client("10.0.0.2", &["::ffff:5.5.5.5"], None, &lb),
            ("5.5.5.5".into(), true)
        );
        // X-Real-IP when there is no X-Forwarded-For; the peer when neither.
        assert_eq!(
            client("10.0.0.2", &[], Some("7.7.7.7"), &lb),
            ("7.7.7.7".into(), true)
        );
        assert_eq!(
            client("10.0.0.2", &[], None, &lb),
            ("10.0.0.2".into(), true)
        );
        // A single trusted address.
        assert_eq!(
            client("127.0.0.1", &["5.5.5.5"], None, &["127.0.0.1"]),
            ("5.5.5.5".into(), true)
        );
    }
}
