//! `hmac-auth`: identifies the caller by an HMAC signature over parts of the request (the
//! HTTP-signature style Kong and APISIX use, see [`signature`]): the key id finds the
//! consumer's secret, the `Date` must be within `clock_skew` of the gateway's clock, a body
//! may be bound by its `Digest`, and each signature is accepted once.

mod replay;
mod signature;
#[cfg(test)]
mod tests;

use super::{ct_eq, sha256};
use base64::Engine;
use gatehouse_plugin_api::{
    parse_config, schema_of, BuildEnv, Consumer, Credential, FieldError, Flow, Later, Needs,
    Plugin, RequestCtx, TypedKind,
};
use hmac::{KeyInit, Mac};
use http::{HeaderMap, HeaderValue, StatusCode};
use replay::{Replay, Seen};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const NAME: &str = "hmac-auth";
const CHALLENGE: &str = "Signature realm=\"gatehouse\"";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Algorithms clients may sign with.
    #[serde(default = "all_algorithms")]
    pub allowed_algorithms: Vec<String>,
    /// How far the request's `Date` (or `X-Date`) may be from the gateway's clock.
    #[serde(default = "five_minutes", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub clock_skew: Duration,
    /// Headers every signature must cover (besides `date`, always required).
    #[serde(default)]
    pub signed_headers: Vec<String>,
    /// Check the body against the `Digest: SHA-256=<base64>` header (the body is read, up
    /// to `max_body`, before the request goes on).
    #[serde(default)]
    pub validate_request_body: bool,
    #[serde(default = "one_mib")]
    pub max_body: u64,
    /// Where seen signatures are remembered: `local` (this node) or `redis` (every node
    /// sharing the node's Redis; memory while it is unreachable).
    #[serde(default)]
    pub replay: ReplayStore,
    #[serde(default)]
    pub hide_credentials: bool,
    #[serde(default)]
    pub anonymous: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReplayStore {
    #[default]
    Local,
    Redis,
}

fn all_algorithms() -> Vec<String> {
    ["hmac-sha1", "hmac-sha256", "hmac-sha512"]
        .map(String::from)
        .to_vec()
}
fn five_minutes() -> Duration {
    Duration::from_secs(300)
}
fn one_mib() -> u64 {
    1 << 20
}

/// One HMAC key of a consumer.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacCredential {
    /// What the client names in `keyId` (or Kong's `username`).
    pub key_id: String,
    /// The shared secret (write-only in the admin API).
    pub secret: String,
}

/// A credential as kept in the consumer index.
struct Secret(Box<[u8]>);

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = NAME;
    const PRIORITY: i32 = 1030;
    const AUTHENTICATES: bool = true;
    type Config = Config;

    fn build(&self, c: Config, env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        let mut errs = Vec::new();
        for (i, a) in c.allowed_algorithms.iter().enumerate() {
            if !all_algorithms().contains(a) {
                errs.push(FieldError::new(
                    format!("allowed_algorithms[{i}]"),
                    "must be hmac-sha1, hmac-sha256 or hmac-sha512",
                ));
            }
        }
        if c.clock_skew.is_zero() {
            errs.push(FieldError::new("clock_skew", "must be more than 0s"));
        }
        let redis = match (&c.replay, &env.redis) {
            (ReplayStore::Local, _) => None,
            (ReplayStore::Redis, Some(r)) => {
                Some((r.clone(), format!("gatehouse:hmac:{}", env.scope)))
            }
            (ReplayStore::Redis, None) => {
                errs.push(FieldError::new(
                    "replay",
                    "redis needs the node's Redis (redis: in the file, or --redis)",
                ));
                None
            }
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        let mut required: Vec<String> = c
            .signed_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        if !required.iter().any(|h| h == "date" || h == "x-date") {
            required.push("date".into());
        }
        Ok(Arc::new(HmacAuth(Arc::new(Inner {
            algorithms: c.allowed_algorithms,
            skew: c.clock_skew,
            required,
            body: c.validate_request_body.then_some(c.max_body),
            replay: Replay::new(c.clock_skew * 2, redis),
            hide: c.hide_credentials,
            anonymous: c.anonymous,
        }))))
    }

    fn credential_schema(&self) -> Option<serde_json::Value> {
        Some(schema_of::<HmacCredential>())
    }

    fn credential(&self, config: &serde_json::Value) -> Result<Credential, Vec<FieldError>> {
        let c: HmacCredential = parse_config(config)?;
        if c.secret.len() < 16 {
            return Err(vec![FieldError::new("secret", "must be at least 16 bytes")]);
        }
        let label = c.key_id.clone();
        Ok(Credential::new(c.key_id, Secret(c.secret.into_bytes().into())).labelled(label))
    }

    fn redact_credential(&self, fields: &mut serde_json::Map<String, serde_json::Value>) {
        fields.remove("secret");
    }
}

pub struct HmacAuth(Arc<Inner>);

struct Inner {
    algorithms: Vec<String>,
    skew: Duration,
    /// Lower-cased headers a signature must cover.
    required: Vec<String>,
    /// With `validate_request_body`: the body cap.
    body: Option<u64>,
    replay: Replay,
    hide: bool,
    anonymous: Option<String>,
}

fn refused(why: &str) -> http::Response<bytes::Bytes> {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static(CHALLENGE),
    );
    gatehouse_plugin_api::json_response(StatusCode::UNAUTHORIZED, why, h)
}

/// The MAC of `data` under `key` with `algorithm` (one of [`all_algorithms`]).
fn mac(algorithm: &str, key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    fn run<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
        let mut m = <M as KeyInit>::new_from_slice(key).ok()?;
        m.update(data);
        Some(m.finalize().into_bytes().to_vec())
    }
    match algorithm {
        "hmac-sha1" => run::<hmac::Hmac<sha1::Sha1>>(key, data),
        "hmac-sha256" => run::<hmac::Hmac<sha2::Sha256>>(key, data),
        "hmac-sha512" => run::<hmac::Hmac<sha2::Sha512>>(key, data),
        _ => None,
    }
}

impl Inner {
    /// Everything but the replay check: the consumer and the signature's digest (the nonce),
    /// or why the request is refused.
    fn verify(&self, ctx: &RequestCtx<'_>) -> Result<(Consumer, [u8; 32]), String> {
        let Some(value) = ctx.parts.headers.get(http::header::AUTHORIZATION) else {
            return Err("no Authorization header with a signature".into());
        };
        if value.len() > super::MAX_CREDENTIAL {
            return Err("the Authorization header is too long".into());
        }
        let value = value
            .to_str()
            .map_err(|_| "the Authorization header is not printable ASCII".to_string())?;
        let signed = signature::parse(value)?;
        if !self.algorithms.iter().any(|a| a == signed.algorithm) {
            return Err(format!("algorithm {:?} is not allowed", signed.algorithm));
        }
        if let Some(h) = self.required.iter().find(|h| !signed.headers.contains(h)) {
            return Err(format!("the signature must cover the {h} header"));
        }
        self.check_date(&ctx.parts.headers)?;
        let found = ctx
            .consumers()
            .find(NAME, signed.key_id)
            .ok_or_else(|| "unknown key id".to_string())?;
        let Some(Secret(secret)) = found.data::<Secret>() else {
            return Err("unknown key id".into());
        };
        let text = signature::signing_string(&signed, ctx.parts)?;
        let given = base64::engine::general_purpose::STANDARD
            .decode(signed.signature)
            .map_err(|_| "the signature is not base64".to_string())?;
        let want = mac(signed.algorithm, secret, text.as_bytes()).unwrap_or_default();
        if !ct_eq(&want, &given) {
            return Err("invalid signature".into());
        }
        if self.body.is_some() {
            self.check_digest(ctx)?;
        }
        Ok((found.consumer.clone(), sha256(&given)))
    }

    fn check_date(&self, headers: &HeaderMap) -> Result<(), String> {
        let date = headers
            .get("x-date")
            .or_else(|| headers.get(http::header::DATE))
            .ok_or("the request has no Date header")?;
        let when = date
            .to_str()
            .ok()
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .ok_or("the Date header is not an HTTP date (Sun, 06 Nov 1994 08:49:37 GMT)")?;
        let now = SystemTime::now();
        let off = now
            .duration_since(when)
            .or_else(|_| when.duration_since(now))
            .unwrap_or_default();
        if off > self.skew {
            return Err(format!(
                "the Date is {} s from the gateway's clock (at most {} s allowed)",
                off.as_secs(),
                self.skew.as_secs()
            ));
        }
        Ok(())
    }

    fn check_digest(&self, ctx: &RequestCtx<'_>) -> Result<(), String> {
        let body = ctx.body.map(|b| &b[..]).unwrap_or_default();
        let header = ctx
            .parts
            .headers
            .get("digest")
            .and_then(|v| v.to_str().ok())
            .ok_or("the request has no Digest header")?;
        let ok = header.split(',').any(|d| {
            let (alg, value) = d.trim().split_once('=').unwrap_or(("", ""));
            let want = match alg.to_ascii_uppercase().as_str() {
                "SHA-256" => sha256(body).to_vec(),
                "SHA-512" => {
                    use sha2::Digest;
                    sha2::Sha512::digest(body).to_vec()
                }
                _ => return false,
            };
            base64::engine::general_purpose::STANDARD
                .decode(value)
                .is_ok_and(|given| ct_eq(&given, &want))
        });
        if !ok {
            return Err("the body does not match its Digest header".into());
        }
        Ok(())
    }
}

impl Plugin for HmacAuth {
    fn needs(&self) -> Needs {
        Needs {
            request_body: self.0.body,
            ..Needs::default()
        }
    }

    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let (consumer, nonce) = match self.0.verify(ctx) {
            Ok(v) => v,
            Err(why) => return Flow::Respond(refused(&why)),
        };
        if self.0.hide {
            ctx.parts.headers.remove(http::header::AUTHORIZATION);
        }
        if !self.0.replay.uses_redis() {
            return match self.0.replay.check_local(nonce) {
                Seen::First => {
                    ctx.authenticate(&consumer);
                    Flow::Continue
                }
                Seen::Again => Flow::Respond(refused(REPLAYED)),
            };
        }
        let me = self.0.clone();
        Flow::Wait(Box::pin(async move {
            match me.replay.check(nonce).await {
                Seen::First => Ok(Later {
                    consumer: Some(consumer),
                    ..Later::default()
                }),
                Seen::Again => Err(refused(REPLAYED)),
            }
        }))
    }

    fn anonymous(&self) -> Option<&str> {
        self.0.anonymous.as_deref()
    }
}

const REPLAYED: &str = "this signature was already used (a replayed request)";
