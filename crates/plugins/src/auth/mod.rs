//! The authentication plugins and what they share: the 401 answer with its challenge,
//! constant-time comparison, hashing of stored secrets, and taking a credential out of the
//! request before it goes upstream.

pub mod basic_auth;
pub mod forward_auth;
pub mod hmac_auth;
pub mod jwt_auth;
pub mod key_auth;
pub mod openid_connect;

use gatehouse_plugin_api::{json_response, Flow};
use http::{HeaderMap, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

/// The longest credential (header value, query argument, token) looked at; longer ones are
/// refused before any hashing or parsing, so a client cannot make the gateway work on
/// megabytes.
pub const MAX_CREDENTIAL: usize = 8 * 1024;

/// 401 with a message that says what was wrong (never a secret) and the scheme to use.
pub fn unauthorized(message: &str, challenge: &'static str) -> Flow {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    Flow::Respond(json_response(StatusCode::UNAUTHORIZED, message, h))
}

/// SHA-256 of `bytes` as 64 lower-case hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Equal, in time that does not depend on where they differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// `uri` without query argument `name` (every occurrence), for `hide_credentials`.
pub fn without_query_arg(uri: &http::Uri, name: &str) -> Option<http::Uri> {
    let query = uri.query()?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect();
    let path = uri.path();
    let pq = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    http::Uri::from_parts(parts).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_query_argument_is_taken_out_and_the_rest_kept() {
        let u: http::Uri = "/a?apikey=s&x=1&apikey=t".parse().unwrap();
        assert_eq!(without_query_arg(&u, "apikey").unwrap(), "/a?x=1");
        let u: http::Uri = "/a?apikey=s".parse().unwrap();
        assert_eq!(without_query_arg(&u, "apikey").unwrap(), "/a");
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"ab", b"abc"));
        assert_eq!(sha256_hex(b"").len(), 64);
    }
}
