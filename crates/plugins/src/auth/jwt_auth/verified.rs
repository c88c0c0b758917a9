//! Tokens already checked: a client sends the same token on request after request, and its
//! signature (an RSA verification is most of `jwt-auth`'s cost) cannot change, so a token
//! that passed is remembered and the next time costs one hash lookup. What can change is
//! re-checked on every hit: the time claims against the clock, and that the key which
//! verified the token is still the one configured (a reload that replaces a consumer's key,
//! or a JWKS rotation, makes its tokens miss and be verified afresh).

use gatehouse_plugin_api::ConsumerIndex;
use http::HeaderMap;
use serde_json::{Map, Value};
use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

/// Where the key that verified a token came from.
pub enum Source {
    /// A consumer's credential, by its id.
    Credential(Box<str>),
    /// A JWKS key, by `kid`; with the consumer the claims named.
    Jwks {
        kid: Option<Box<str>>,
        consumer: Option<Box<str>>,
    },
}

pub struct Verified {
    pub source: Source,
    /// The key data it was verified with (kept, so identity checks cannot be fooled by a
    /// freed and reused address).
    pub key: Arc<dyn Any + Send + Sync>,
    /// The upstream headers its claims give.
    pub headers: HeaderMap,
    exp: Option<u64>,
    nbf: Option<u64>,
}

impl Verified {
    pub fn new(
        source: Source,
        key: Arc<dyn Any + Send + Sync>,
        headers: HeaderMap,
        claims: &Map<String, Value>,
    ) -> Self {
        let time = |c: &str| {
            claims
                .get(c)
                .and_then(Value::as_f64)
                .map(|t| t.max(0.0) as u64)
        };
        Self {
            source,
            key,
            headers,
            exp: time("exp"),
            nbf: time("nbf"),
        }
    }

    /// Whether `key` is the key this token was verified with.
    pub fn same_key(&self, key: &Arc<dyn Any + Send + Sync>) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.key), Arc::as_ptr(key))
    }

    /// For JWKS tokens: the consumer the claims named, looked up in today's consumers.
    pub fn consumer<'c>(
        &self,
        consumers: &'c ConsumerIndex,
    ) -> Option<Option<&'c gatehouse_plugin_api::Consumer>> {
        match &self.source {
            Source::Jwks { consumer: None, .. } => Some(None),
            Source::Jwks {
                consumer: Some(name),
                ..
            } => consumers.by_username(name).map(Some),
            Source::Credential(_) => None,
        }
    }
}

pub struct Cache {
    cache: Option<moka::sync::Cache<Box<str>, Arc<Verified>>>,
    leeway: u64,
    check_exp: bool,
    check_nbf: bool,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Cache {
    /// Up to `capacity` tokens, each kept at most `ttl`; 0 keeps none.
    pub fn new(
        capacity: u64,
        ttl: Duration,
        leeway: u64,
        check_exp: bool,
        check_nbf: bool,
    ) -> Self {
        let cache = (capacity > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build()
        });
        Self {
            cache,
            leeway,
            check_exp,
            check_nbf,
        }
    }

    /// The token's earlier verification, while its time claims still hold.
    pub fn get(&self, token: &str) -> Option<Arc<Verified>> {
        let v = self.cache.as_ref()?.get(token)?;
        let now = unix_now();
        let expired = self.check_exp && v.exp.is_some_and(|e| e + self.leeway <= now);
        let early = self.check_nbf && v.nbf.is_some_and(|n| n > now + self.leeway);
        (!expired && !early).then_some(v)
    }

    pub fn put(&self, token: &str, v: Verified) {
        if let Some(c) = &self.cache {
            c.insert(token.into(), Arc::new(v));
        }
    }
}
