//! The keys `jwt-auth` checks signatures with: a consumer's own (a secret, a PEM public key
//! or a JWK, with its one algorithm), or a JWKS fetched through a sub-request and kept,
//! refreshed when it is old and, at most once per `jwks_min_refresh`, when a token names a
//! key id it does not have.

use arc_swap::ArcSwap;
use gatehouse_plugin_api::{now_ns, FieldError, SubLimits, SubrequestError, UpstreamRef};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A key with the algorithm it may be used with: exactly one for a consumer's key (the
/// defence against algorithm confusion), or, for a JWKS key without `alg`, any of its family.
pub struct Key {
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl Key {
    pub fn allows(&self, alg: Algorithm) -> bool {
        match self.alg {
            Some(a) => a == alg,
            None => self.key.family() == alg.family(),
        }
    }
}

/// One JWT credential of a consumer.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtCredential {
    /// The value of the token's `key_claim` (default `iss`) that picks this credential.
    pub key: String,
    /// The one algorithm tokens for this key may use.
    #[serde(default = "hs256")]
    pub algorithm: String,
    /// For HS256/384/512: the shared secret (write-only in the admin API).
    #[serde(default)]
    pub secret: Option<String>,
    /// `secret` is base64.
    #[serde(default)]
    pub secret_base64: bool,
    /// For RS*, PS*, ES*, EdDSA: the public key in PEM.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Or the public key as a JWK.
    #[serde(default)]
    pub jwk: Option<serde_json::Value>,
}

fn hs256() -> String {
    "HS256".into()
}

pub fn algorithm(name: &str) -> Result<Algorithm, String> {
    Algorithm::from_str(name).map_err(|_| {
        format!(
            "\"{name}\" is not a supported algorithm (HS256/384/512, RS256/384/512, \
             PS256/384/512, ES256/384, EdDSA)"
        )
    })
}

/// The key a credential describes; errors name the field.
pub fn credential_key(c: &JwtCredential) -> Result<Key, FieldError> {
    let alg = algorithm(&c.algorithm).map_err(|e| FieldError::new("algorithm", e))?;
    let hmac = alg.family() == jsonwebtoken::AlgorithmFamily::Hmac;
    let key = match (hmac, &c.secret, &c.public_key, &c.jwk) {
        (_, None, None, Some(jwk)) => serde_json::from_value::<Jwk>(jwk.clone())
            .map_err(|e| e.to_string())
            .and_then(|j| DecodingKey::from_jwk(&j).map_err(|e| e.to_string()))
            .map_err(|e| FieldError::new("jwk", format!("not a usable key: {e}")))?,
        (true, Some(s), None, None) if c.secret_base64 => DecodingKey::from_base64_secret(s)
            .map_err(|_| FieldError::new("secret", "is not valid base64"))?,
        (true, Some(s), None, None) if s.len() < 16 => {
            return Err(FieldError::new("secret", "must be at least 16 bytes"))
        }
        (true, Some(s), None, None) => DecodingKey::from_secret(s.as_bytes()),
        (true, _, _, _) => {
            return Err(FieldError::new(
                "secret",
                format!(
                    "{} needs a secret or a jwk (and no public key)",
                    c.algorithm
                ),
            ))
        }
        (false, None, Some(pem), None) => pem_key(alg, pem.as_bytes())
            .map_err(|e| FieldError::new("public_key", format!("not a usable key: {e}")))?,
        (false, _, _, _) => {
            return Err(FieldError::new(
                "public_key",
                format!(
                    "{} needs one of public_key or jwk (and no secret)",
                    c.algorithm
                ),
            ))
        }
    };
    if key.family() != alg.family() {
        return Err(FieldError::new(
            "algorithm",
            format!("{} does not fit this key's type", c.algorithm),
        ));
    }
    Ok(Key {
        alg: Some(alg),
        key,
    })
}

fn pem_key(alg: Algorithm, pem: &[u8]) -> jsonwebtoken::errors::Result<DecodingKey> {
    use jsonwebtoken::AlgorithmFamily as F;
    match alg.family() {
        F::Rsa => DecodingKey::from_rsa_pem(pem),
        F::Ec => DecodingKey::from_ec_pem(pem),
        F::Ed => DecodingKey::from_ed_pem(pem),
        F::Hmac => Ok(DecodingKey::from_secret(pem)),
    }
}

/// Keys by key id from one fetch of a JWKS, with when they were fetched.
#[derive(Default)]
pub struct KeySet {
    pub keys: HashMap<String, Arc<Key>>,
    pub fetched_at: u64,
}

impl KeySet {
    /// The key for `kid`; a token without one may use the only key of a one-key set.
    pub fn find(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        match kid {
            Some(k) => self.keys.get(k).cloned(),
            None if self.keys.len() == 1 => self.keys.values().next().cloned(),
            None => None,
        }
    }
}

/// A JWKS endpoint and what was last fetched from it.
pub struct Jwks {
    pub from: UpstreamRef,
    pub keys: ArcSwap<KeySet>,
    /// When a fetch was last started (`now_ns`), for the refresh limit.
    last_attempt: AtomicU64,
    fetching: tokio::sync::Mutex<()>,
    pub ttl: Duration,
    pub min_refresh: Duration,
}

/// Why no key was found for a token.
pub enum Missing {
    /// The set was fetched and has no such key.
    Unknown,
    /// The JWKS endpoint could not be read.
    Unavailable(String),
}

impl Jwks {
    pub fn new(from: UpstreamRef, ttl: Duration, min_refresh: Duration) -> Self {
        Self {
            from,
            keys: ArcSwap::from_pointee(KeySet::default()),
            last_attempt: AtomicU64::new(0),
            fetching: tokio::sync::Mutex::new(()),
            ttl,
            min_refresh,
        }
    }

    pub fn is_stale(&self) -> bool {
        let set = self.keys.load();
        now_ns().saturating_sub(set.fetched_at) > self.ttl.as_nanos() as u64
    }

    /// Whether a fetch may start now (rate limit on refreshes).
    pub fn may_fetch(&self) -> bool {
        let last = self.last_attempt.load(Ordering::Relaxed);
        now_ns().saturating_sub(last) >= self.min_refresh.as_nanos() as u64
    }

    /// The key for `kid`, fetching the set again with `fetch` first when it does not have it
    /// (at most once per `min_refresh`, one fetch at a time).
    pub async fn key_for(
        &self,
        kid: Option<&str>,
        fetch: Option<gatehouse_plugin_api::SubFuture>,
    ) -> Result<Arc<Key>, Missing> {
        let _one = self.fetching.lock().await;
        // Someone else's fetch may have brought it while this one waited.
        if let Some(k) = self.keys.load().find(kid) {
            return Ok(k);
        }
        let Some(fetch) = fetch.filter(|_| self.may_fetch()) else {
            return Err(Missing::Unknown);
        };
        self.refresh(fetch).await.map_err(Missing::Unavailable)?;
        self.keys.load().find(kid).ok_or(Missing::Unknown)
    }

    /// Fetches the set in the background when it is old (one fetch at a time).
    pub fn refresh_if_stale(
        self: &Arc<Self>,
        fetch: impl FnOnce() -> gatehouse_plugin_api::SubFuture,
    ) {
        if !self.is_stale() || !self.may_fetch() {
            return;
        }
        let fetch = fetch();
        let me = self.clone();
        tokio::spawn(async move {
            if let Ok(_one) = me.fetching.try_lock() {
                if let Err(e) = me.refresh(fetch).await {
                    tracing::warn!(jwks = me.from.name(), error = %e, "JWKS refresh failed; the old keys stay");
                }
            }
        });
    }

    async fn refresh(&self, fetch: gatehouse_plugin_api::SubFuture) -> Result<(), String> {
        self.last_attempt.store(now_ns(), Ordering::Relaxed);
        let resp = fetch.await.map_err(|e: SubrequestError| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("the JWKS endpoint answered {}", resp.status()));
        }
        let set = parse_set(resp.body()).map_err(|e| format!("the JWKS is not usable: {e}"))?;
        tracing::debug!(
            jwks = self.from.name(),
            keys = set.keys.len(),
            "JWKS fetched"
        );
        self.keys.store(Arc::new(set));
        Ok(())
    }

    pub fn limits() -> SubLimits {
        SubLimits {
            timeout: Duration::from_secs(5),
            max_body: 256 * 1024,
        }
    }
}

/// A JWKS document's signing keys by id; keys for encryption or of types we cannot use are
/// left out, not fatal (providers publish those too).
pub fn parse_set(body: &[u8]) -> Result<KeySet, String> {
    #[derive(Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut keys = HashMap::new();
    for raw in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            continue;
        };
        if matches!(
            jwk.common.public_key_use,
            Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
        ) {
            continue;
        }
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| serde_json::to_value(a).ok())
            .and_then(|v| v.as_str().and_then(|s| Algorithm::from_str(s).ok()));
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        keys.insert(kid, Arc::new(Key { alg, key }));
    }
    Ok(KeySet {
        keys,
        fetched_at: now_ns(),
    })
}
