//! `key-auth`: identifies the caller by an API key in a header or query argument, looked up
//! among the consumers' `key-auth` credentials by the key's SHA-256 (one hash probe).
//!
//! Keys are kept as SHA-256, not argon2: a lookup by key must be one probe, which a salted
//! slow hash cannot give, and an API key is a long random secret, not a guessable password
//! (the same choice GitHub and Stripe made for their tokens). `basic-auth` passwords, which
//! people choose, are argon2.

use super::{sha256_hex, unauthorized, without_query_arg, MAX_CREDENTIAL};
use gatehouse_plugin_api::{
    header_name, parse_config, schema_of, BuildEnv, Credential, FieldError, Flow, Plugin,
    RequestCtx, TypedKind,
};
use http::HeaderName;
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;

pub const NAME: &str = "key-auth";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The header the key is read from; empty: not from a header.
    #[serde(default = "default_name")]
    pub header: String,
    /// The query argument the key is read from (when the header is absent); empty: not from
    /// the query.
    #[serde(default = "default_name")]
    pub query: String,
    /// Take the key out of the request before it goes upstream.
    #[serde(default)]
    pub hide_credentials: bool,
    /// The consumer (username) a request without a valid key goes on as.
    #[serde(default)]
    pub anonymous: Option<String>,
}

fn default_name() -> String {
    "apikey".into()
}

/// One API key of a consumer: `key` as given (the admin API stores only its hash), or
/// `key_hash` (`sha256:` and 64 hex digits).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCredential {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub key_hash: Option<String>,
    /// What logs and `X-Credential-Identifier` call this key (never the key itself).
    /// Default: `key-` and the first 8 hex digits of its hash.
    #[serde(default)]
    pub id: Option<String>,
}

/// The key's hash in hex, from either form; errors name the field.
fn hash_of(c: &KeyCredential) -> Result<String, FieldError> {
    match (&c.key, &c.key_hash) {
        (Some(k), None) if k.is_empty() => Err(FieldError::new("key", "must not be empty")),
        (Some(k), None) if k.len() > MAX_CREDENTIAL => Err(FieldError::new(
            "key",
            format!("longer than {MAX_CREDENTIAL} bytes"),
        )),
        (Some(k), None) => Ok(sha256_hex(k.as_bytes())),
        (None, Some(h)) => match h.strip_prefix("sha256:") {
            Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(hex.to_ascii_lowercase())
            }
            _ => Err(FieldError::new(
                "key_hash",
                "must be sha256: followed by 64 hex digits",
            )),
        },
        (Some(_), Some(_)) => Err(FieldError::new("", "give key or key_hash, not both")),
        (None, None) => Err(FieldError::new("", "missing field `key`")),
    }
}

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = NAME;
    const PRIORITY: i32 = 1250;
    const AUTHENTICATES: bool = true;
    type Config = Config;

    fn build(&self, c: Config, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        let mut errs = Vec::new();
        let header = match c.header.as_str() {
            "" => None,
            h => header_name(h)
                .map_err(|e| errs.push(FieldError::new("header", e)))
                .ok(),
        };
        if c.header.is_empty() && c.query.is_empty() {
            errs.push(FieldError::new("", "header and query are both empty"));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Arc::new(KeyAuth {
            header,
            query: (!c.query.is_empty()).then_some(c.query),
            hide: c.hide_credentials,
            anonymous: c.anonymous,
        }))
    }

    fn credential_schema(&self) -> Option<serde_json::Value> {
        Some(schema_of::<KeyCredential>())
    }

    fn credential(&self, config: &serde_json::Value) -> Result<Credential, Vec<FieldError>> {
        let c: KeyCredential = parse_config(config)?;
        let hash = hash_of(&c).map_err(|e| vec![e])?;
        let label = c.id.unwrap_or_else(|| format!("key-{}", &hash[..8]));
        Ok(Credential::new(hash, ()).labelled(label))
    }

    fn seal_credential(
        &self,
        fields: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Vec<FieldError>> {
        if let Some(serde_json::Value::String(key)) = fields.get("key") {
            let c = KeyCredential {
                key: Some(key.clone()),
                key_hash: None,
                id: None,
            };
            let hash = hash_of(&c).map_err(|e| vec![e])?;
            fields.remove("key");
            fields.insert("key_hash".into(), format!("sha256:{hash}").into());
        }
        Ok(())
    }
}

/// SHA-256 of `bytes` in lower-case hex, on the stack (a lookup allocates nothing).
fn hex_digest(bytes: &[u8]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, b) in super::sha256(bytes).iter().enumerate() {
        out[2 * i] = DIGITS[(b >> 4) as usize];
        out[2 * i + 1] = DIGITS[(b & 15) as usize];
    }
    out
}

pub struct KeyAuth {
    header: Option<HeaderName>,
    query: Option<String>,
    hide: bool,
    anonymous: Option<String>,
}

const CHALLENGE: &str = "Key realm=\"gatehouse\"";

impl KeyAuth {
    fn refuse(&self, why: &str) -> Flow {
        unauthorized(why, CHALLENGE)
    }
}

impl Plugin for KeyAuth {
    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let from_header = self.header.as_ref().and_then(|h| ctx.parts.headers.get(h));
        let key: std::borrow::Cow<'_, str> = match from_header {
            Some(v) => match v.to_str() {
                Ok(s) => s.trim().into(),
                Err(_) => return self.refuse("the API key header is not printable ASCII"),
            },
            None => match self
                .query
                .as_deref()
                .and_then(|q| gatehouse_plugin_api::query_arg(ctx.parts.uri.query(), q))
            {
                Some(k) => k,
                None => return self.refuse("no API key in the request"),
            },
        };
        if key.is_empty() {
            return self.refuse("the API key is empty");
        }
        if key.len() > MAX_CREDENTIAL {
            return self.refuse("the API key is too long");
        }
        let hash = hex_digest(key.as_bytes());
        let Ok(hash) = std::str::from_utf8(&hash) else {
            return self.refuse("invalid API key");
        };
        // Through the gateway reference, so the lookup does not borrow the context.
        let gateway = ctx.gateway;
        let Some(found) = gateway.consumers().find(NAME, hash) else {
            return self.refuse("invalid API key");
        };
        ctx.authenticate(&found.consumer);
        if self.hide {
            if let Some(h) = &self.header {
                ctx.parts.headers.remove(h);
            }
            if let Some(q) = &self.query {
                if let Some(uri) = without_query_arg(&ctx.parts.uri, q) {
                    ctx.parts.uri = uri;
                }
            }
        }
        Flow::Continue
    }

    fn anonymous(&self) -> Option<&str> {
        self.anonymous.as_deref()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use gatehouse_plugin_api::PluginKind;

    fn plugin(config: serde_json::Value) -> Arc<dyn Plugin> {
        PluginKind::build(&Kind, &config, &BuildEnv::default()).unwrap()
    }

    pub fn with_alice(mut r: Req) -> Req {
        let a = r
            .gateway
            .consumers
            .push_with("alice", None, &["partners".into()]);
        let cred = PluginKind::credential(&Kind, &serde_json::json!({"key": "alice-key-1"}));
        r.gateway
            .consumers
            .add_credential(a, NAME, cred.unwrap())
            .unwrap();
        r
    }

    fn message(r: &http::Response<bytes::Bytes>) -> String {
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        v["error"].as_str().unwrap().to_string()
    }

    #[test]
    fn a_key_in_the_header_or_query_identifies_its_consumer() {
        let p = plugin(serde_json::json!({}));
        let mut r = with_alice(req("10.0.0.1").header("apikey", "alice-key-1"));
        assert!(r.access_now(&*p).is_ok());
        let c = r.consumer.as_ref().unwrap();
        assert_eq!(&*c.username, "alice");
        assert!(c.credential.as_deref().unwrap().starts_with("key-"));
        let mut r = with_alice(get("/a?x=1&apikey=alice-key-1"));
        assert!(r.access_now(&*p).is_ok());
        assert_eq!(
            r.parts.uri, "/a?x=1&apikey=alice-key-1",
            "kept unless hidden"
        );
    }

    #[test]
    fn each_failure_says_what_was_wrong() {
        let p = plugin(serde_json::json!({"header": "x-key"}));
        for (r, why) in [
            (req("10.0.0.1"), "no API key in the request"),
            (req("10.0.0.1").header("x-key", "nope"), "invalid API key"),
            (req("10.0.0.1").header("x-key", ""), "the API key is empty"),
            (
                req("10.0.0.1").header("x-key", &"k".repeat(MAX_CREDENTIAL + 1)),
                "the API key is too long",
            ),
        ] {
            let resp = with_alice(r).access_now(&*p).unwrap_err();
            assert_eq!(resp.status(), 401);
            assert_eq!(message(&resp), why);
            assert!(resp.headers().contains_key("www-authenticate"));
        }
        let mut r = with_alice(req("10.0.0.1"));
        r.parts
            .headers
            .insert("x-key", http::HeaderValue::from_bytes(b"\xffkey").unwrap());
        let resp = r.access_now(&*p).unwrap_err();
        assert_eq!(message(&resp), "the API key header is not printable ASCII");
    }

    #[test]
    fn hidden_credentials_do_not_go_upstream() {
        let p = plugin(serde_json::json!({"hide_credentials": true}));
        let mut r = with_alice(req("10.0.0.1").header("apikey", "alice-key-1"));
        r.access_now(&*p).unwrap();
        assert!(!r.parts.headers.contains_key("apikey"));
        let mut r = with_alice(get("/a?apikey=alice-key-1&x=1"));
        r.access_now(&*p).unwrap();
        assert_eq!(r.parts.uri, "/a?x=1");
    }

    #[test]
    fn credentials_are_checked_and_sealed_to_a_hash() {
        let e = PluginKind::credential(&Kind, &serde_json::json!({}))
            .err()
            .unwrap();
        assert_eq!(e[0].message, "missing field `key`");
        let e = PluginKind::credential(&Kind, &serde_json::json!({"key_hash": "md5:x"}))
            .err()
            .unwrap();
        assert_eq!(e[0].path, "key_hash");
        let mut fields = serde_json::json!({"key": "alice-key-1", "id": "k1"});
        let map = fields.as_object_mut().unwrap();
        PluginKind::seal_credential(&Kind, map).unwrap();
        assert!(map.get("key").is_none());
        let sealed = serde_json::Value::Object(map.clone());
        let from_hash = PluginKind::credential(&Kind, &sealed).unwrap();
        let from_key =
            PluginKind::credential(&Kind, &serde_json::json!({"key": "alice-key-1"})).unwrap();
        assert_eq!(from_hash.id, from_key.id, "the same lookup either way");
        assert_eq!(from_hash.label.as_deref(), Some("k1"));
    }
}
