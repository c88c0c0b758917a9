//! Admin API tokens: `Authorization: Bearer SECRET`, checked against stored SHA-256 hashes in
//! constant time, with roles `viewer` (reads) and `admin` (reads and writes). A fast hash is
//! right here, unlike for passwords: secrets are 256 random bits, so there is nothing to
//! guess from a leaked hash.

use crate::error;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gatehouse_model::{AdminRole, AdminToken};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Who made a request: the token's name, or `admin-api` when no tokens are configured.
#[derive(Debug, Clone)]
pub struct Who(pub String);

pub struct Tokens(
    Vec<(String, AdminRole, [u8; 32])>,
    /// Tokens sent over plain HTTP to an address off loopback are refused: anyone on the
    /// path could read and replay them.
    std::sync::atomic::AtomicBool,
);

impl Tokens {
    /// Tokens from config; entries whose hash is not 64 hex digits are refused by
    /// validation before they get here, and skipped if they do.
    pub fn new(tokens: &[AdminToken]) -> Self {
        Tokens(
            tokens
                .iter()
                .filter_map(|t| Some((t.name.clone(), t.role, from_hex(&t.sha256)?)))
                .collect(),
            Default::default(),
        )
    }

    /// Whether calls arrive over plain HTTP on an address off loopback (then tokens are
    /// refused).
    pub fn set_plain_off_loopback(&self, yes: bool) {
        self.1.store(yes, std::sync::atomic::Ordering::Release);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The token whose hash matches `secret`'s. Every stored hash is compared, in constant
    /// time, so timing does not tell which (or whether one) nearly matched.
    fn find(&self, secret: &str) -> Option<(&str, AdminRole)> {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = None;
        for (name, role, hash) in &self.0 {
            if bool::from(hash.ct_eq(&digest)) {
                found = Some((name.as_str(), *role));
            }
        }
        found
    }
}

fn from_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new secret and the hex SHA-256 to store for it.
pub fn new_token() -> Result<(String, String), String> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| format!("no randomness: {e}"))?;
    let secret: String = std::iter::once("gh_".to_string())
        .chain(raw.iter().map(|b| format!("{b:02x}")))
        .collect();
    Ok((secret.clone(), hash_hex(&secret)))
}

pub fn hash_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The middleware: with tokens configured, every call needs one, and writes need `admin`.
pub async fn check(State(tokens): State<Arc<Tokens>>, mut req: Request, next: Next) -> Response {
    // Load balancers check readiness without a token; it tells nothing but up or down.
    if tokens.is_empty() || req.uri().path() == "/ready" {
        req.extensions_mut().insert(Who("admin-api".into()));
        return next.run(req).await;
    }
    if tokens.1.load(std::sync::atomic::Ordering::Acquire) {
        return error(
            StatusCode::FORBIDDEN,
            "admin tokens are refused over plain HTTP on an address off loopback: serve the \
             admin API over HTTPS (admin.tls, or --admin-tls in store mode), or on a loopback \
             address",
        );
    }
    let secret = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some((name, role)) = secret.and_then(|s| tokens.find(s.trim())) else {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "an admin token is needed: send Authorization: Bearer TOKEN (the gatehouse CLI: --token TOKEN or GATEHOUSE_TOKEN)",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    };
    let reads = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !reads && role == AdminRole::Viewer {
        return error(
            StatusCode::FORBIDDEN,
            format!("token {name:?} is a viewer: it may read, not write"),
        )
        .into_response();
    }
    req.extensions_mut().insert(Who(name.to_owned()));
    next.run(req).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_hash_only() {
        let (secret, hash) = new_token().unwrap();
        assert!(secret.starts_with("gh_") && secret.len() == 67);
        let tokens = Tokens::new(&[AdminToken {
            name: "ci".into(),
            role: AdminRole::Viewer,
            sha256: hash,
        }]);
        assert_eq!(tokens.find(&secret), Some(("ci", AdminRole::Viewer)));
        assert_eq!(tokens.find("gh_wrong"), None);
        assert_eq!(from_hex("zz"), None);
    }
}
