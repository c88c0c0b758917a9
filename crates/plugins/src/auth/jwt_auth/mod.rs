//! `jwt-auth`: identifies the caller by a signed JSON Web Token (RFC 7519) from the
//! `Authorization: Bearer` header, a query argument or a cookie. The key is the consumer's
//! own, picked by a claim (`iss` by default), or one of a JWKS's, picked by `kid`; claims may
//! name the consumer and go upstream as headers.
//!
//! What a token says about how to check it is never trusted: its `alg` must be the one its
//! key allows (so an HS256 token cannot be checked with an RSA public key as its secret),
//! `none` is refused, and `jwk`/`jku`/`x5u` in its header are never fetched or used.

pub(crate) mod keys;
#[cfg(test)]
mod tests;
mod verified;

use super::{unauthorized, without_query_arg};
use base64::Engine;
use gatehouse_plugin_api::{
    header_name, parse_config, schema_of, BuildEnv, Consumer, ConsumerIndex, Credential,
    FieldError, Flow, Later, Plugin, RequestCtx, TypedKind,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, Validation};
use keys::{algorithm, credential_key, Jwks, JwtCredential, Key, Missing};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub const NAME: &str = "jwt-auth";
const CHALLENGE: &str = "Bearer realm=\"gatehouse\"";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The header the token is read from; `authorization` expects `Bearer <token>`. Empty:
    /// not from a header.
    #[serde(default = "authorization")]
    pub header: String,
    /// The query argument the token may come in; empty: not from the query.
    #[serde(default = "jwt")]
    pub query: String,
    /// The cookie the token may come in.
    #[serde(default)]
    pub cookie: Option<String>,
    /// The claim (or, when the payload has none, the header field `kid`) whose value picks
    /// the consumer's `jwt-auth` credential.
    #[serde(default = "iss")]
    pub key_claim: String,
    /// Check tokens against this JWKS (`http://host[:port]/path`) instead of consumers'
    /// credentials, picking the key by `kid`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// How long fetched keys are used before they are fetched again.
    #[serde(default = "five_minutes", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub jwks_ttl: Duration,
    /// The least time between two fetches made because a token named an unknown `kid`.
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub jwks_min_refresh: Duration,
    /// With `jwks_uri`: the claim whose value is the consumer's username (absent: the
    /// caller is let through without a consumer).
    #[serde(default)]
    pub consumer_claim: Option<String>,
    /// Algorithms accepted at all.
    #[serde(default = "all_algorithms")]
    pub algorithms: Vec<String>,
    /// Which time claims are checked: `exp`, `nbf`.
    #[serde(default = "exp_nbf")]
    pub claims_to_verify: Vec<String>,
    /// Claims a token must have.
    #[serde(default = "exp")]
    pub required_claims: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "five_seconds", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub leeway: Duration,
    /// Accepted issuers (`iss`); empty: any.
    #[serde(default)]
    pub issuer: Vec<String>,
    /// Accepted audiences (`aud`); empty: `aud` is not checked.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Claims sent upstream as headers: `{sub: X-User-Id}`.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// How many verified tokens are remembered, so a client's next request with the same
    /// token skips the signature check (0: none).
    #[serde(default = "ten_thousand")]
    pub verified_cache: u64,
    /// The longest a verified token is remembered.
    #[serde(default = "one_minute", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub verified_cache_ttl: Duration,
    /// The longest token looked at, in bytes.
    #[serde(default = "eight_kib")]
    pub max_token_bytes: usize,
    #[serde(default)]
    pub hide_credentials: bool,
    #[serde(default)]
    pub anonymous: Option<String>,
}

fn authorization() -> String {
    "authorization".into()
}
fn jwt() -> String {
    "jwt".into()
}
fn iss() -> String {
    "iss".into()
}
fn five_minutes() -> Duration {
    Duration::from_secs(300)
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn ten_thousand() -> u64 {
    10_000
}
fn one_minute() -> Duration {
    Duration::from_secs(60)
}
fn eight_kib() -> usize {
    8192
}
fn all_algorithms() -> Vec<String> {
    [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
        "ES384", "EdDSA",
    ]
    .map(String::from)
    .to_vec()
}
fn exp_nbf() -> Vec<String> {
    vec!["exp".into(), "nbf".into()]
}
fn exp() -> Vec<String> {
    vec!["exp".into()]
}

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = NAME;
    const PRIORITY: i32 = 1450;
    const AUTHENTICATES: bool = true;
    type Config = Config;

    fn build(&self, c: Config, env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        build(c, env)
    }

    fn credential_schema(&self) -> Option<Value> {
        Some(schema_of::<JwtCredential>())
    }

    fn credential(&self, config: &Value) -> Result<Credential, Vec<FieldError>> {
        let c: JwtCredential = parse_config(config)?;
        let key = credential_key(&c).map_err(|e| vec![e])?;
        let label = c.key.clone();
        Ok(Credential::new(c.key, key).labelled(label))
    }

    fn redact_credential(&self, fields: &mut Map<String, Value>) {
        fields.remove("secret");
    }
}

/// Where a token is read from.
struct Source {
    header: Option<HeaderName>,
    bearer: bool,
    query: Option<String>,
    cookie: Option<String>,
}

pub struct JwtAuth {
    source: Source,
    key_claim: String,
    jwks: Option<Arc<Jwks>>,
    check: Arc<Checker>,
    verified: verified::Cache,
    max_bytes: usize,
    hide: bool,
    anonymous: Option<String>,
}

/// What checks a token once its key is known, and what is made of its claims; shared with a
/// check that finishes after a JWKS fetch.
struct Checker {
    /// One prepared validation per accepted algorithm.
    validations: HashMap<Algorithm, Validation>,
    required: Vec<String>,
    /// Clock skew allowed, in seconds (also for `iat`, which the library does not check).
    leeway: u64,
    consumer_claim: Option<String>,
    claims_to_headers: Vec<(String, HeaderName)>,
}

fn build(c: Config, env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
    let mut errs = Vec::new();
    let header = match c.header.as_str() {
        "" => None,
        h => header_name(h)
            .map_err(|e| errs.push(FieldError::new("header", e)))
            .ok(),
    };
    let mut validations = HashMap::new();
    for (i, name) in c.algorithms.iter().enumerate() {
        match algorithm(name) {
            Ok(alg) => {
                let mut v = Validation::new(alg);
                v.leeway = c.leeway.as_secs();
                v.validate_exp = c.claims_to_verify.iter().any(|x| x == "exp");
                v.validate_nbf = c.claims_to_verify.iter().any(|x| x == "nbf");
                v.set_required_spec_claims(&c.required_claims);
                if !c.issuer.is_empty() {
                    v.set_issuer(&c.issuer);
                }
                match c.audience.is_empty() {
                    true => v.validate_aud = false,
                    false => v.set_audience(&c.audience),
                }
                validations.insert(alg, v);
            }
            Err(e) => errs.push(FieldError::new(format!("algorithms[{i}]"), e)),
        }
    }
    for (i, claim) in c.claims_to_verify.iter().enumerate() {
        if claim != "exp" && claim != "nbf" {
            errs.push(FieldError::new(
                format!("claims_to_verify[{i}]"),
                "must be exp or nbf",
            ));
        }
    }
    let claims_to_headers = c
        .claims_to_headers
        .iter()
        .filter_map(|(claim, h)| match header_name(h) {
            Ok(n) => Some((claim.clone(), n)),
            Err(e) => {
                errs.push(FieldError::new(format!("claims_to_headers.{claim}"), e));
                None
            }
        })
        .collect();
    let jwks = c.jwks_uri.as_deref().and_then(|u| {
        env.url(u)
            .map(|r| Arc::new(Jwks::new(r, c.jwks_ttl, c.jwks_min_refresh)))
            .map_err(|e| errs.push(FieldError::new("jwks_uri", e)))
            .ok()
    });
    if c.consumer_claim.is_some() && jwks.is_none() && errs.is_empty() {
        errs.push(FieldError::new(
            "consumer_claim",
            "only with jwks_uri (consumers' own keys already name the consumer)",
        ));
    }
    if header.is_none() && c.query.is_empty() && c.cookie.is_none() {
        errs.push(FieldError::new(
            "",
            "header, query and cookie are all empty",
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Arc::new(JwtAuth {
        source: Source {
            bearer: header.as_ref() == Some(&http::header::AUTHORIZATION),
            header,
            query: (!c.query.is_empty()).then_some(c.query),
            cookie: c.cookie,
        },
        key_claim: c.key_claim,
        jwks,
        check: Arc::new(Checker {
            validations,
            required: c.required_claims,
            leeway: c.leeway.as_secs(),
            consumer_claim: c.consumer_claim,
            claims_to_headers,
        }),
        verified: verified::Cache::new(
            c.verified_cache,
            c.verified_cache_ttl,
            c.leeway.as_secs(),
            c.claims_to_verify.iter().any(|x| x == "exp"),
            c.claims_to_verify.iter().any(|x| x == "nbf"),
        ),
        max_bytes: c.max_token_bytes,
        hide: c.hide_credentials,
        anonymous: c.anonymous,
    }))
}

/// Why a token was refused: what the 401 says.
type Refusal = &'static str;

impl JwtAuth {
    /// The token, or why there is none.
    fn token<'r>(&self, ctx: &'r RequestCtx<'_>) -> Result<std::borrow::Cow<'r, str>, Refusal> {
        if let Some(v) = self
            .source
            .header
            .as_ref()
            .and_then(|h| ctx.parts.headers.get(h))
        {
            let v = v
                .to_str()
                .map_err(|_| "the token header is not printable ASCII")?;
            if !self.source.bearer {
                return Ok(v.trim().into());
            }
            let v = v.trim();
            let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err("the Authorization header is not a Bearer token");
            }
            return Ok(rest.trim().into());
        }
        if let Some(q) = self.source.query.as_deref() {
            if let Some(t) = gatehouse_plugin_api::query_arg(ctx.parts.uri.query(), q) {
                return Ok(t);
            }
        }
        if let Some(c) = self.source.cookie.as_deref() {
            if let Some(t) = gatehouse_plugin_api::cookie(&ctx.parts.headers, c) {
                return Ok(t.into());
            }
        }
        Err("no token in the request")
    }

    fn hide_token(&self, ctx: &mut RequestCtx<'_>) {
        if let Some(h) = &self.source.header {
            ctx.parts.headers.remove(h);
        }
        if let Some(q) = &self.source.query {
            if let Some(uri) = without_query_arg(&ctx.parts.uri, q) {
                ctx.parts.uri = uri;
            }
        }
    }
}

impl Checker {
    /// Checks `token` (whose header said `alg`) with `key`: its claims, or why not.
    fn verify(
        &self,
        token: &str,
        alg: Algorithm,
        key: &Key,
    ) -> Result<Map<String, Value>, Refusal> {
        if !key.allows(alg) {
            return Err("the token's algorithm does not match its key");
        }
        let validation = self
            .validations
            .get(&alg)
            .ok_or("the token's algorithm is not accepted")?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
            .map_err(|e| refusal(e.kind()))?;
        if self.required.iter().any(|c| !data.claims.contains_key(c)) {
            return Err("the token lacks a required claim");
        }
        let now = jsonwebtoken::get_current_timestamp();
        match data.claims.get("iat") {
            Some(iat) if iat.as_f64().is_none() => return Err("the token's iat is not a time"),
            Some(iat) if iat.as_f64().is_some_and(|t| t > (now + self.leeway) as f64) => {
                return Err("the token was issued in the future")
            }
            _ => {}
        }
        Ok(data.claims)
    }

    /// The upstream headers the claims fill.
    fn claim_headers(&self, claims: &Map<String, Value>) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (claim, name) in &self.claims_to_headers {
            let text = match claims.get(claim) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => continue,
                Some(other) => other.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&text) {
                h.insert(name.clone(), v);
            }
        }
        h
    }

    /// With a JWKS: the consumer a token's claims name (`Ok(None)` without `consumer_claim`).
    fn consumer_of(
        &self,
        consumers: &ConsumerIndex,
        claims: &Map<String, Value>,
    ) -> Result<Option<Consumer>, Refusal> {
        let Some(claim) = &self.consumer_claim else {
            return Ok(None);
        };
        let name = claims
            .get(claim)
            .and_then(Value::as_str)
            .ok_or("the token does not name a consumer")?;
        consumers
            .by_username(name)
            .cloned()
            .map(Some)
            .ok_or("the consumer the token names does not exist")
    }
}

/// The 401 a check that waited refuses with.
fn refused(why: &str) -> http::Response<bytes::Bytes> {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static(CHALLENGE),
    );
    gatehouse_plugin_api::json_response(http::StatusCode::UNAUTHORIZED, why, h)
}

/// What a library error means to the caller.
fn refusal(kind: &jsonwebtoken::errors::ErrorKind) -> Refusal {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature => "invalid signature",
        K::ExpiredSignature => "the token has expired",
        K::ImmatureSignature => "the token is not valid yet",
        K::InvalidAudience => "the token is not for this audience",
        K::InvalidIssuer => "the token's issuer is not accepted",
        K::MissingRequiredClaim(_) => "the token lacks a required claim",
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
            "the token's algorithm is not accepted"
        }
        _ => "the token is malformed",
    }
}

/// The token's header `alg` and `kid`; an algorithm we do not know (such as `none`) gets
/// its own message.
fn header_of(token: &str) -> Result<(Algorithm, Option<String>), Refusal> {
    match jsonwebtoken::decode_header(token) {
        Ok(h) => Ok((h.alg, h.kid)),
        Err(_) => {
            let head = token.split('.').next().unwrap_or("");
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(head)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            match raw.as_ref().and_then(|v| v.get("alg")) {
                Some(_) => Err("the token's algorithm is not accepted"),
                None => Err("the token is malformed"),
            }
        }
    }
}

impl Plugin for JwtAuth {
    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        for (_, name) in &self.check.claims_to_headers {
            ctx.parts.headers.remove(name);
        }
        let token = match self.token(ctx) {
            Ok(t) if t.is_empty() => return unauthorized("the token is empty", CHALLENGE),
            Ok(t) if t.len() > self.max_bytes => {
                return unauthorized("the token is too large", CHALLENGE)
            }
            Ok(t) => t,
            Err(why) => return unauthorized(why, CHALLENGE),
        };
        let seen = self.verified.get(&token);
        let token = token.into_owned();
        if let Some(flow) = seen.and_then(|v| self.as_before(ctx, &v)) {
            if self.hide {
                self.hide_token(ctx);
            }
            return flow;
        }
        let (alg, kid) = match header_of(&token) {
            Ok(h) => h,
            Err(why) => return unauthorized(why, CHALLENGE),
        };
        if !self.check.validations.contains_key(&alg) {
            return unauthorized("the token's algorithm is not accepted", CHALLENGE);
        }
        if self.hide {
            self.hide_token(ctx);
        }
        match &self.jwks {
            None => self.with_consumer_key(ctx, &token, alg, kid.as_deref()),
            Some(jwks) => self.with_jwks(ctx, jwks.clone(), token, alg, kid),
        }
    }

    fn anonymous(&self) -> Option<&str> {
        self.anonymous.as_deref()
    }
}

impl JwtAuth {
    /// A token verified before: admitted as it was then, if the key that verified it is
    /// still the configured one (`None`: verify it afresh).
    fn as_before(&self, ctx: &mut RequestCtx<'_>, v: &verified::Verified) -> Option<Flow> {
        match &v.source {
            verified::Source::Credential(id) => {
                let found = ctx.consumers().find(NAME, id)?;
                if !v.same_key(&found.data_arc()) {
                    return None;
                }
                let consumer = found.consumer.clone();
                ctx.authenticate(&consumer);
            }
            verified::Source::Jwks { kid, .. } => {
                let key: Arc<dyn std::any::Any + Send + Sync> =
                    self.jwks.as_ref()?.keys.load().find(kid.as_deref())?;
                if !v.same_key(&key) {
                    return None;
                }
                if let Some(c) = v.consumer(ctx.consumers())?.cloned() {
                    ctx.authenticate(&c);
                }
            }
        }
        gatehouse_plugin_api::set_all(&mut ctx.parts.headers, v.headers.clone());
        Some(Flow::Continue)
    }

    fn with_consumer_key(
        &self,
        ctx: &mut RequestCtx<'_>,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Flow {
        // Unverified: only to pick the key, which then checks everything.
        let claims =
            jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token).ok();
        let id = claims
            .as_ref()
            .and_then(|c| c.get(&self.key_claim))
            .and_then(Value::as_str)
            .or(kid);
        let Some(id) = id else {
            return unauthorized("the token has no claim naming its key", CHALLENGE);
        };
        let Some(found) = ctx.consumers().find(NAME, id) else {
            return unauthorized("no credential for this token's key", CHALLENGE);
        };
        let Some(key) = found.data::<Key>() else {
            return unauthorized("no credential for this token's key", CHALLENGE);
        };
        match self.check.verify(token, alg, key) {
            Ok(claims) => {
                let consumer = found.consumer.clone();
                let headers = self.check.claim_headers(&claims);
                let source = verified::Source::Credential(id.into());
                let seen =
                    verified::Verified::new(source, found.data_arc(), headers.clone(), &claims);
                self.verified.put(token, seen);
                ctx.authenticate(&consumer);
                gatehouse_plugin_api::set_all(&mut ctx.parts.headers, headers);
                Flow::Continue
            }
            Err(why) => unauthorized(why, CHALLENGE),
        }
    }

    fn with_jwks(
        &self,
        ctx: &mut RequestCtx<'_>,
        jwks: Arc<Jwks>,
        token: String,
        alg: Algorithm,
        kid: Option<String>,
    ) -> Flow {
        let fetch = || {
            let mut req = http::Request::new(bytes::Bytes::new());
            if let Ok(uri) = jwks.from.path().parse() {
                *req.uri_mut() = uri;
            }
            req.headers_mut().insert(
                http::header::ACCEPT,
                HeaderValue::from_static("application/json"),
            );
            ctx.subrequest(&jwks.from, req, Jwks::limits())
        };
        if let Some(key) = jwks.keys.load().find(kid.as_deref()) {
            jwks.refresh_if_stale(fetch);
            let checked = self
                .check
                .verify(&token, alg, &key)
                .and_then(|claims| Ok((self.check.consumer_of(ctx.consumers(), &claims)?, claims)));
            return match checked {
                Ok((consumer, claims)) => {
                    let headers = self.check.claim_headers(&claims);
                    let source = verified::Source::Jwks {
                        kid: kid.as_deref().map(Into::into),
                        consumer: consumer.as_ref().map(|c| (*c.username).into()),
                    };
                    let seen =
                        verified::Verified::new(source, key.clone(), headers.clone(), &claims);
                    self.verified.put(&token, seen);
                    if let Some(c) = consumer {
                        ctx.authenticate(&c);
                    }
                    gatehouse_plugin_api::set_all(&mut ctx.parts.headers, headers);
                    Flow::Continue
                }
                Err(why) => unauthorized(why, CHALLENGE),
            };
        }
        // Not among the keys we have: fetch the set again (rate-limited), then check.
        // Made only when a fetch may start: a refused refresh costs nothing.
        let sub = jwks.may_fetch().then(fetch);
        let check = self.check.clone();
        let consumers = ctx.gateway.shared_consumers();
        Flow::Wait(Box::pin(async move {
            let key = jwks
                .key_for(kid.as_deref(), sub)
                .await
                .map_err(|m| match m {
                    Missing::Unknown => refused("the token's key id is unknown"),
                    Missing::Unavailable(e) => {
                        tracing::warn!(error = %e, "JWKS unavailable");
                        refused("the keys to check the token with are unavailable")
                    }
                })?;
            let claims = check.verify(&token, alg, &key).map_err(refused)?;
            let consumer = check.consumer_of(&consumers, &claims).map_err(refused)?;
            Ok(Later {
                consumer,
                upstream_headers: check.claim_headers(&claims),
                ..Later::default()
            })
        }))
    }
}
