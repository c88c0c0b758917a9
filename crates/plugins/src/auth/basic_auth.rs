//! `basic-auth`: identifies the caller by `Authorization: Basic` (RFC 7617) against the
//! consumers' `basic-auth` credentials. Passwords are stored as argon2id (bcrypt hashes from
//! an htpasswd file are accepted too); a slow hash is checked on a blocking thread, and a
//! credential remembers the digest of the password that last passed, so a caller pays the
//! slow hash once, not per request.

use super::{ct_eq, sha256, MAX_CREDENTIAL};
use base64::Engine;
use gatehouse_plugin_api::{
    parse_config, schema_of, BuildEnv, Credential, FieldError, Flow, Later, Plugin, RequestCtx,
    TypedKind,
};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::{Arc, RwLock};

pub const NAME: &str = "basic-auth";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The realm named in `WWW-Authenticate` (what a browser shows in its login box).
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Take the `Authorization` header out before the request goes upstream.
    #[serde(default)]
    pub hide_credentials: bool,
    /// The consumer (username) a request without valid credentials goes on as.
    #[serde(default)]
    pub anonymous: Option<String>,
}

fn default_realm() -> String {
    "gatehouse".into()
}

/// One login of a consumer: `password` as given (the admin API stores only its argon2
/// hash), or `password_hash` (`$argon2id$...`, or bcrypt `$2y$...` from htpasswd).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicCredential {
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_hash: Option<String>,
}

/// How a credential's password is checked.
enum Secret {
    /// From a password given in a file: its SHA-256, compared in constant time.
    Plain([u8; 32]),
    /// A slow hash; `passed` is the digest of the last password that matched it.
    Hashed {
        phc: Arc<str>,
        passed: RwLock<Option<[u8; 32]>>,
    },
}

fn check_hash(h: &str) -> Result<(), String> {
    if h.starts_with("$argon2") {
        argon2::PasswordHash::new(h)
            .map(|_| ())
            .map_err(|e| format!("not a valid argon2 hash: {e}"))
    } else if h.starts_with("$2") {
        h.parse::<bcrypt::HashParts>()
            .map(|_| ())
            .map_err(|e| format!("not a valid bcrypt hash: {e}"))
    } else {
        Err("must be an argon2 ($argon2id$...) or bcrypt ($2y$...) hash".into())
    }
}

/// Whether `password` matches the slow hash `phc` (CPU-heavy: call off the runtime).
fn verify_slow(phc: &str, password: &[u8]) -> bool {
    if phc.starts_with("$2") {
        return bcrypt::verify(password, phc).unwrap_or(false);
    }
    use argon2::PasswordVerifier;
    argon2::PasswordHash::new(phc)
        .map(|h| {
            argon2::Argon2::default()
                .verify_password(password, &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// An argon2id hash of `password` with a random salt, in PHC form.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&raw).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = NAME;
    const PRIORITY: i32 = 1100;
    const AUTHENTICATES: bool = true;
    type Config = Config;

    fn build(&self, c: Config, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        let challenge = format!(
            "Basic realm=\"{}\", charset=\"UTF-8\"",
            c.realm.replace('"', "")
        );
        let challenge = http::HeaderValue::from_str(&challenge)
            .map_err(|_| vec![FieldError::new("realm", "must be printable text")])?;
        Ok(Arc::new(BasicAuth {
            challenge,
            hide: c.hide_credentials,
            anonymous: c.anonymous,
        }))
    }

    fn credential_schema(&self) -> Option<serde_json::Value> {
        Some(schema_of::<BasicCredential>())
    }

    fn credential(&self, config: &serde_json::Value) -> Result<Credential, Vec<FieldError>> {
        let c: BasicCredential = parse_config(config)?;
        if c.username.is_empty() || c.username.contains(':') {
            return Err(vec![FieldError::new(
                "username",
                "must be non-empty and without ':'",
            )]);
        }
        let secret = match (c.password, c.password_hash) {
            (Some(p), None) => Secret::Plain(sha256(p.as_bytes())),
            (None, Some(h)) => {
                check_hash(&h).map_err(|e| vec![FieldError::new("password_hash", e)])?;
                Secret::Hashed {
                    phc: h.into(),
                    passed: RwLock::new(None),
                }
            }
            (Some(_), Some(_)) => {
                return Err(vec![FieldError::new(
                    "",
                    "give password or password_hash, not both",
                )])
            }
            (None, None) => return Err(vec![FieldError::new("", "missing field `password`")]),
        };
        let label = c.username.clone();
        Ok(Credential::new(c.username, secret).labelled(label))
    }

    fn seal_credential(
        &self,
        fields: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Vec<FieldError>> {
        if let Some(serde_json::Value::String(p)) = fields.get("password") {
            let hash = hash_password(p).map_err(|e| vec![FieldError::new("password", e)])?;
            fields.remove("password");
            fields.insert("password_hash".into(), hash.into());
        }
        Ok(())
    }
}

pub struct BasicAuth {
    challenge: http::HeaderValue,
    hide: bool,
    anonymous: Option<String>,
}

/// What the `Authorization` header says: user and password, or why it says nothing usable.
fn parse_basic(ctx: &RequestCtx<'_>) -> Result<(String, Vec<u8>), &'static str> {
    let Some(value) = ctx.parts.headers.get(http::header::AUTHORIZATION) else {
        return Err("no Authorization header with Basic credentials");
    };
    if value.len() > MAX_CREDENTIAL {
        return Err("the Authorization header is too long");
    }
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not printable ASCII")?;
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err("the Authorization header is not Basic credentials");
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| "the Basic credentials are not valid base64")?;
    let colon = decoded
        .iter()
        .position(|b| *b == b':')
        .ok_or("the Basic credentials have no ':' between username and password")?;
    let user = String::from_utf8(decoded[..colon].to_vec())
        .map_err(|_| "the Basic username is not UTF-8")?;
    Ok((user, decoded[colon + 1..].to_vec()))
}

const BAD_LOGIN: &str = "invalid username or password";

impl BasicAuth {
    fn refuse(&self, why: &str) -> Flow {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::WWW_AUTHENTICATE, self.challenge.clone());
        Flow::Respond(gatehouse_plugin_api::json_response(
            http::StatusCode::UNAUTHORIZED,
            why,
            h,
        ))
    }

    fn admit(&self, ctx: &mut RequestCtx<'_>, consumer: &gatehouse_plugin_api::Consumer) -> Flow {
        ctx.authenticate(consumer);
        if self.hide {
            ctx.parts.headers.remove(http::header::AUTHORIZATION);
        }
        Flow::Continue
    }
}

impl Plugin for BasicAuth {
    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let (user, password) = match parse_basic(ctx) {
            Ok(up) => up,
            Err(why) => return self.refuse(why),
        };
        let Some(found) = ctx.consumers().find(NAME, &user) else {
            return self.refuse(BAD_LOGIN);
        };
        let consumer = found.consumer.clone();
        let digest = sha256(&password);
        match found.data::<Secret>() {
            Some(Secret::Plain(want)) if ct_eq(want, &digest) => self.admit(ctx, &consumer),
            Some(Secret::Hashed { passed, .. })
                if passed
                    .read()
                    .ok()
                    .and_then(|p| *p)
                    .is_some_and(|p| ct_eq(&p, &digest)) =>
            {
                self.admit(ctx, &consumer)
            }
            Some(Secret::Hashed { phc, .. }) => {
                // The slow hash, off the worker; the verdict comes back as a Flow::Wait.
                let phc = phc.clone();
                let data = found.data_arc();
                let hide = self.hide;
                let refusal = match self.refuse(BAD_LOGIN) {
                    Flow::Respond(r) => r,
                    _ => return Flow::Continue,
                };
                if hide {
                    ctx.parts.headers.remove(http::header::AUTHORIZATION);
                }
                Flow::Wait(Box::pin(async move {
                    let ok = tokio::task::spawn_blocking(move || verify_slow(&phc, &password))
                        .await
                        .unwrap_or(false);
                    if !ok {
                        return Err(refusal);
                    }
                    if let Some(Secret::Hashed { passed, .. }) = data.downcast_ref::<Secret>() {
                        if let Ok(mut p) = passed.write() {
                            *p = Some(digest);
                        }
                    }
                    Ok(Later {
                        consumer: Some(consumer),
                        ..Later::default()
                    })
                }))
            }
            _ => self.refuse(BAD_LOGIN),
        }
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

    fn basic(user: &str, pass: &str) -> String {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        format!("Basic {b}")
    }

    fn with_users(mut r: Req) -> Req {
        let a = r.gateway.consumers.push("alice");
        let b = r.gateway.consumers.push("bob");
        let c = r.gateway.consumers.push("carol");
        let cred = |v| PluginKind::credential(&Kind, &v).unwrap();
        let ix = &mut r.gateway.consumers;
        ix.add_credential(
            a,
            NAME,
            cred(serde_json::json!({"username": "alice", "password": "pw-a"})),
        )
        .unwrap();
        let argon = hash_password("pw-b").unwrap();
        ix.add_credential(
            b,
            NAME,
            cred(serde_json::json!({"username": "bob", "password_hash": argon})),
        )
        .unwrap();
        // htpasswd -nbB carol pw-c
        let bc = bcrypt::hash("pw-c", 4).unwrap();
        ix.add_credential(
            c,
            NAME,
            cred(serde_json::json!({"username": "carol", "password_hash": bc})),
        )
        .unwrap();
        r
    }

    fn plugin() -> Arc<dyn Plugin> {
        PluginKind::build(
            &Kind,
            &serde_json::json!({"hide_credentials": true}),
            &BuildEnv::default(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn plain_argon2_and_bcrypt_passwords_all_admit_their_consumer() {
        let p = plugin();
        for (user, pass) in [
            ("alice", "pw-a"),
            ("bob", "pw-b"),
            ("carol", "pw-c"),
            ("bob", "pw-b"),
        ] {
            let mut r = with_users(req("10.0.0.1").header("authorization", &basic(user, pass)));
            r.access(&*p).await.unwrap();
            assert_eq!(r.consumer.as_ref().map(|c| &*c.username), Some(user));
            assert!(!r.parts.headers.contains_key("authorization"), "hidden");
        }
    }

    #[tokio::test]
    async fn each_failure_is_a_401_that_says_why() {
        let p = plugin();
        for (auth, why) in [
            (None, "no Authorization header with Basic credentials"),
            (
                Some("Bearer x".to_string()),
                "the Authorization header is not Basic credentials",
            ),
            (
                Some("Basic !!!".to_string()),
                "the Basic credentials are not valid base64",
            ),
            (
                Some("Basic dXNlcg==".to_string()),
                "the Basic credentials have no ':' between username and password",
            ),
            (Some(basic("alice", "wrong")), BAD_LOGIN),
            (Some(basic("bob", "wrong")), BAD_LOGIN),
            (Some(basic("carol", "wrong")), BAD_LOGIN),
            (Some(basic("nobody", "pw-a")), BAD_LOGIN),
        ] {
            let mut r = req("10.0.0.1");
            if let Some(a) = auth {
                r = r.header("authorization", &a);
            }
            let resp = with_users(r).access(&*p).await.unwrap_err();
            assert_eq!(resp.status(), 401);
            let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
            assert_eq!(body["error"], why);
            assert_eq!(
                resp.headers()["www-authenticate"],
                "Basic realm=\"gatehouse\", charset=\"UTF-8\""
            );
        }
    }

    #[test]
    fn sealed_passwords_are_argon2_and_bad_hashes_are_named() {
        let mut f = serde_json::json!({"username": "u", "password": "p"});
        PluginKind::seal_credential(&Kind, f.as_object_mut().unwrap()).unwrap();
        assert!(f.get("password").is_none());
        assert!(f["password_hash"]
            .as_str()
            .unwrap()
            .starts_with("$argon2id$"));
        let e = PluginKind::credential(
            &Kind,
            &serde_json::json!({"username": "u", "password_hash": "md5"}),
        )
        .err()
        .unwrap();
        assert_eq!(e[0].path, "password_hash");
    }
}
