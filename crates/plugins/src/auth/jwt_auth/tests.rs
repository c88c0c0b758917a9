#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `jwt-auth` against published example tokens and a table of attacks.

use super::*;
use crate::test_support::*;
use gatehouse_plugin_api::testing::TestGateway;
use gatehouse_plugin_api::PluginKind;
use jsonwebtoken::{encode, EncodingKey, Header};
use std::sync::atomic::{AtomicUsize, Ordering};

const RSA_KEY: &str = include_str!("testdata/rsa.key");
const RSA_PUB: &str = include_str!("testdata/rsa.pub");
const ATTACKER_KEY: &str = include_str!("testdata/attacker.key");
const EC256_KEY: &str = include_str!("testdata/ec256.key");
const EC256_PUB: &str = include_str!("testdata/ec256.pub");
const EC384_KEY: &str = include_str!("testdata/ec384.key");
const EC384_PUB: &str = include_str!("testdata/ec384.pub");
const ED_KEY: &str = include_str!("testdata/ed.key");
const ED_PUB: &str = include_str!("testdata/ed.pub");
const HS_SECRET: &str = "a-shared-secret-of-32-bytes-long";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn plugin(cfg: Value) -> Arc<dyn Plugin> {
    PluginKind::build(&Kind, &cfg, &BuildEnv::default()).unwrap()
}

fn credential(v: Value) -> Credential {
    PluginKind::credential(&Kind, &v).unwrap()
}

/// A gateway whose consumers hold one credential per algorithm family.
fn consumers() -> TestGateway {
    let mut g = TestGateway::default();
    let ix = &mut g.consumers;
    for (user, cred) in [
        (
            "hs",
            serde_json::json!({"key": "hs-iss", "algorithm": "HS256", "secret": HS_SECRET}),
        ),
        (
            "rsa",
            serde_json::json!({"key": "rsa-iss", "algorithm": "RS256", "public_key": RSA_PUB}),
        ),
        (
            "pss",
            serde_json::json!({"key": "pss-iss", "algorithm": "PS384", "public_key": RSA_PUB}),
        ),
        (
            "ec",
            serde_json::json!({"key": "ec-iss", "algorithm": "ES256", "public_key": EC256_PUB}),
        ),
        (
            "ec384",
            serde_json::json!({"key": "ec384-iss", "algorithm": "ES384", "public_key": EC384_PUB}),
        ),
        (
            "ed",
            serde_json::json!({"key": "ed-iss", "algorithm": "EdDSA", "public_key": ED_PUB}),
        ),
    ] {
        let i = ix.push(user);
        ix.add_credential(i, NAME, credential(cred)).unwrap();
    }
    g
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    encode(&Header::new(alg), &claims, key).unwrap()
}

fn claims(iss: &str) -> Value {
    serde_json::json!({"iss": iss, "sub": "user-7", "exp": now() + 600, "aud": "api"})
}

/// The outcome of one request carrying `token`: the consumer's name, or the 401's message.
fn run(p: &dyn Plugin, token: &str) -> Result<String, String> {
    let mut r = get("/").header("authorization", &format!("Bearer {token}"));
    r.gateway = consumers();
    match r.access_now(p) {
        Ok(_) => Ok(r
            .consumer
            .map(|c| c.username.to_string())
            .unwrap_or_default()),
        Err(resp) => {
            assert_eq!(resp.status(), 401);
            assert_eq!(resp.headers()["www-authenticate"], CHALLENGE);
            let v: Value = serde_json::from_slice(resp.body()).unwrap();
            Err(v["error"].as_str().unwrap().to_string())
        }
    }
}

#[test]
fn every_algorithm_identifies_its_consumer() {
    let p = plugin(serde_json::json!({"audience": ["api"]}));
    let hs = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let rsa = EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap();
    let cases = [
        (Algorithm::HS256, hs, "hs"),
        (Algorithm::RS256, rsa.clone(), "rsa"),
        (Algorithm::PS384, rsa, "pss"),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(EC256_KEY.as_bytes()).unwrap(),
            "ec",
        ),
        (
            Algorithm::ES384,
            EncodingKey::from_ec_pem(EC384_KEY.as_bytes()).unwrap(),
            "ec384",
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(ED_KEY.as_bytes()).unwrap(),
            "ed",
        ),
    ];
    for (alg, key, user) in cases {
        let token = sign(alg, &key, claims(&format!("{user}-iss")));
        assert_eq!(run(&*p, &token), Ok(user.to_string()), "{alg:?}");
    }
}

#[test]
fn the_rfc_7515_example_tokens_are_accepted_with_their_published_keys() {
    let vectors: Value = serde_json::from_str(include_str!("testdata/rfc7515.json")).unwrap();
    // Their `exp` is in 2011: these settings check signatures and keys, not time.
    let p = plugin(serde_json::json!({"claims_to_verify": [], "required_claims": []}));
    for name in ["A1", "A2", "A3"] {
        let v = &vectors[name];
        let mut r = get("/").header(
            "authorization",
            &format!("Bearer {}", v["token"].as_str().unwrap()),
        );
        let i = r.gateway.consumers.push("joe");
        let cred =
            credential(serde_json::json!({"key": "joe", "algorithm": v["alg"], "jwk": v["jwk"]}));
        r.gateway.consumers.add_credential(i, NAME, cred).unwrap();
        r.access_now(&*p)
            .unwrap_or_else(|e| panic!("{name}: {:?}", e.body()));
        assert_eq!(r.consumer.unwrap().username.as_ref(), "joe", "{name}");
        // One changed byte of the signature, and it is refused.
        let mut bad = v["token"].as_str().unwrap().to_string();
        let last = bad.pop().unwrap();
        bad.push(if last == 'A' { 'B' } else { 'A' });
        let mut r = get("/").header("authorization", &format!("Bearer {bad}"));
        let i = r.gateway.consumers.push("joe");
        let cred =
            credential(serde_json::json!({"key": "joe", "algorithm": v["alg"], "jwk": v["jwk"]}));
        r.gateway.consumers.add_credential(i, NAME, cred).unwrap();
        assert!(r.access_now(&*p).is_err(), "{name} tampered");
    }
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// A token with this header and payload and an HMAC-SHA256 signature under `secret`.
fn hs256_raw(header: &Value, payload: &Value, secret: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

#[test]
fn attack_tokens_are_all_refused_with_what_was_wrong() {
    let p = plugin(serde_json::json!({"audience": ["api"], "leeway": "5s"}));
    let rsa = EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap();
    let attacker = EncodingKey::from_rsa_pem(ATTACKER_KEY.as_bytes()).unwrap();
    let good = sign(Algorithm::RS256, &rsa, claims("rsa-iss"));
    let parts: Vec<&str> = good.split('.').collect();
    let tampered_payload = {
        let mut c = claims("rsa-iss");
        c["sub"] = "admin".into();
        format!(
            "{}.{}.{}",
            parts[0],
            b64(c.to_string().as_bytes()),
            parts[2]
        )
    };
    let tampered_header = format!(
        "{}.{}.{}",
        b64(br#"{"alg":"RS256","typ":"JWT","kid":"x"}"#),
        parts[1],
        parts[2]
    );
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims("rsa-iss").to_string().as_bytes())
    );
    // Algorithm confusion: HS256 "signed" with the RSA public key as the secret.
    let confused = hs256_raw(
        &serde_json::json!({"alg": "HS256"}),
        &claims("rsa-iss"),
        RSA_PUB.as_bytes(),
    );
    // The attacker's own key, offered in the header (jwk) and by URL (jku, x5u).
    let mut with_jwk = Header::new(Algorithm::RS256);
    with_jwk.jwk =
        Some(jsonwebtoken::jwk::Jwk::from_encoding_key(&attacker, Algorithm::RS256).unwrap());
    with_jwk.jku = Some("http://127.0.0.1:1/keys".into());
    with_jwk.x5u = Some("http://127.0.0.1:1/cert".into());
    let self_signed = encode(&with_jwk, &claims("rsa-iss"), &attacker).unwrap();
    let at = |exp: i64, nbf: i64| {
        let mut c = claims("rsa-iss");
        c["exp"] = (now() as i64 + exp).into();
        c["nbf"] = (now() as i64 + nbf).into();
        sign(Algorithm::RS256, &rsa, c)
    };
    let mut wrong_aud = claims("rsa-iss");
    wrong_aud["aud"] = "other".into();
    let mut future_iat = claims("rsa-iss");
    future_iat["iat"] = (now() + 600).into();
    let mut no_exp = claims("rsa-iss");
    no_exp.as_object_mut().unwrap().remove("exp");
    let table: Vec<(&str, String, &str)> = vec![
        ("alg none", none, "the token's algorithm is not accepted"),
        (
            "HS256 with the RSA public key",
            confused,
            "the token's algorithm does not match its key",
        ),
        ("tampered payload", tampered_payload, "invalid signature"),
        ("tampered header", tampered_header, "invalid signature"),
        (
            "someone else's key",
            sign(Algorithm::RS256, &attacker, claims("rsa-iss")),
            "invalid signature",
        ),
        (
            "key offered in jwk/jku/x5u",
            self_signed,
            "invalid signature",
        ),
        ("expired", at(-60, -120), "the token has expired"),
        ("not yet valid", at(600, 60), "the token is not valid yet"),
        (
            "wrong audience",
            sign(Algorithm::RS256, &rsa, wrong_aud),
            "the token is not for this audience",
        ),
        (
            "no exp",
            sign(Algorithm::RS256, &rsa, no_exp),
            "the token lacks a required claim",
        ),
        (
            "issued in the future",
            sign(Algorithm::RS256, &rsa, future_iat),
            "the token was issued in the future",
        ),
        (
            "unknown issuer",
            sign(Algorithm::RS256, &rsa, claims("nobody")),
            "no credential for this token's key",
        ),
        (
            "oversized",
            format!("{good}{}", "A".repeat(9000)),
            "the token is too large",
        ),
        ("not a token", "abc.def".into(), "the token is malformed"),
        ("garbage", "...".into(), "the token is malformed"),
    ];
    for (what, token, why) in table {
        assert_eq!(run(&*p, &token), Err(why.to_string()), "{what}");
    }
    // Within the skew an expired token still passes.
    assert_eq!(run(&*p, &at(-2, -60)), Ok("rsa".into()));
    assert_eq!(run(&*p, &good), Ok("rsa".into()));
}

#[test]
fn malformed_authorization_headers_get_a_clear_401() {
    let p = plugin(serde_json::json!({}));
    for (value, why) in [
        (
            "Basic dXNlcjpwdw==",
            "the Authorization header is not a Bearer token",
        ),
        ("Bearer", "the token is empty"),
        ("Bearer    ", "the token is empty"),
    ] {
        let mut r = get("/").header("authorization", value);
        let resp = r.access_now(&*p).unwrap_err();
        let v: Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(v["error"], why, "{value:?}");
    }
    let resp = get("/").access_now(&*p).unwrap_err();
    assert_eq!(resp.status(), 401);
}

#[test]
fn bad_credentials_and_configs_are_named() {
    for (cred, path) in [
        (
            serde_json::json!({"key": "k", "algorithm": "HS256"}),
            "secret",
        ),
        (
            serde_json::json!({"key": "k", "algorithm": "HS256", "secret": "short"}),
            "secret",
        ),
        (
            serde_json::json!({"key": "k", "algorithm": "RS256", "secret": HS_SECRET}),
            "public_key",
        ),
        (
            serde_json::json!({"key": "k", "algorithm": "RS256", "public_key": "nope"}),
            "public_key",
        ),
        (
            serde_json::json!({"key": "k", "algorithm": "ES256", "public_key": RSA_PUB}),
            "public_key",
        ),
        (
            serde_json::json!({"key": "k", "algorithm": "none", "secret": HS_SECRET}),
            "algorithm",
        ),
    ] {
        let e = PluginKind::credential(&Kind, &cred)
            .err()
            .unwrap_or_else(|| panic!("{cred}"));
        assert_eq!(e[0].path, path, "{cred}: {e:?}");
    }
    let e = PluginKind::build(
        &Kind,
        &serde_json::json!({"algorithms": ["none"], "claims_to_verify": ["iat"]}),
        &BuildEnv::default(),
    )
    .err()
    .unwrap();
    let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["algorithms[0]", "claims_to_verify[0]"]);
    let mut fields = serde_json::json!({"key": "k", "secret": HS_SECRET})
        .as_object()
        .unwrap()
        .clone();
    PluginKind::redact_credential(&Kind, &mut fields);
    assert!(!fields.contains_key("secret"), "write-only");
}

#[tokio::test]
async fn claims_go_upstream_and_a_jwks_key_is_fetched_once_and_never_from_the_token() {
    let rsa = EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap();
    let mut jwk = serde_json::to_value(
        jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap(),
    )
    .unwrap();
    jwk["kid"] = "k1".into();
    let set = serde_json::json!({"keys": [jwk]}).to_string();
    let fetches = Arc::new(AtomicUsize::new(0));
    let env = gatehouse_plugin_api::testing::env_with_upstreams(&[]);
    let p = PluginKind::build(
        &Kind,
        &serde_json::json!({
            "jwks_uri": "http://127.0.0.1:9/keys", "consumer_claim": "sub", "jwks_min_refresh": "200ms",
            "claims_to_headers": {"sub": "x-user", "scope": "x-scope"},
        }),
        &env,
    )
    .unwrap();
    let request = |kid: &str| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        let mut c = claims("anyone");
        c["sub"] = "alice".into();
        c["scope"] = serde_json::json!(["read"]);
        let token = encode(&h, &c, &rsa).unwrap();
        let mut r = get("/")
            .header("authorization", &format!("Bearer {token}"))
            .header("x-user", "forged");
        r.gateway.consumers.push("alice");
        let (set, fetches) = (set.clone(), fetches.clone());
        r.gateway.answer = Some(Arc::new(move |to, req| {
            assert_eq!(to.name(), "url:127.0.0.1:9");
            assert_eq!(req.uri().path(), "/keys");
            fetches.fetch_add(1, Ordering::SeqCst);
            Ok(http::Response::new(bytes::Bytes::from(set.clone())))
        }));
        r
    };
    let mut r = request("k1");
    r.access(&*p).await.unwrap();
    assert_eq!(r.consumer.as_ref().unwrap().username.as_ref(), "alice");
    assert_eq!(r.parts.headers["x-user"], "alice");
    assert_eq!(r.parts.headers["x-scope"], "[\"read\"]");
    let mut r = request("k1");
    r.access(&*p).await.unwrap();
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "kept, not fetched per request"
    );
    // An unknown kid right after a fetch: refused without another (the refresh limit).
    let _ = request("k7").access(&*p).await.unwrap_err();
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    // Later: one more fetch, then none until jwks_min_refresh has passed again.
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    let resp = request("k9").access(&*p).await.unwrap_err();
    let v: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(v["error"], "the token's key id is unknown");
    let _ = request("k8").access(&*p).await.unwrap_err();
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}

#[test]
fn a_verified_token_is_remembered_but_not_past_its_key_or_its_expiry() {
    let p = plugin(serde_json::json!({"leeway": "0s"}));
    let rsa = EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap();
    let mut c = claims("rsa-iss");
    c["exp"] = (now() + 1).into();
    let token = sign(Algorithm::RS256, &rsa, c);
    assert_eq!(run(&*p, &token), Ok("rsa".into()));
    assert_eq!(run(&*p, &token), Ok("rsa".into()), "from memory");
    // The consumer's key replaced (a reload): the remembered verification no longer counts.
    let mut r = get("/").header("authorization", &format!("Bearer {token}"));
    let i = r.gateway.consumers.push("rsa");
    let other = include_str!("testdata/attacker.pub");
    let cred = credential(
        serde_json::json!({"key": "rsa-iss", "algorithm": "RS256", "public_key": other}),
    );
    r.gateway.consumers.add_credential(i, NAME, cred).unwrap();
    let resp = r.access_now(&*p).unwrap_err();
    let v: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(v["error"], "invalid signature");
    // Its expiry passes while it is remembered: refused all the same.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(run(&*p, &token), Err("the token has expired".into()));
}
