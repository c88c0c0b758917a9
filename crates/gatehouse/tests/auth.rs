//! Authentication and access control through the real gateway: consumers with credentials,
//! auth plugins as alternatives with an anonymous consumer, who the upstream is told called
//! (and that a client cannot claim it), consumer-scoped limits, acl and the allow/deny
//! plugins, CORS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use common::*;
use redis_server::RedisServer;
use std::sync::Arc;

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {b}")
}

/// The issue's example: alice (a partner) with a key, bob (a user) with a key and a login,
/// a guest for anonymous requests on the open route.
fn config(origin: std::net::SocketAddr) -> String {
    upstream_yaml(&[origin], "")
        + "routes:
  - {name: api, paths: [\"/api/*\"], service: svc}
  - {name: open, paths: [\"/open/*\"], service: svc}
  - {name: partners, paths: [\"/partners/*\"], service: svc}
consumers:
  - username: alice
    custom_id: u-1001
    groups: [partners]
    tags: [team-a]
    credentials:
      - {type: key-auth, key: alice-key-1}
  - username: bob
    groups: [users]
    credentials:
      - {type: key-auth, key: bob-key-1, id: bobs-laptop}
      - {type: basic-auth, username: bob, password: bob-pw}
  - username: guest
plugins:
  - {name: key-auth, service: svc, config: {header: apikey, hide_credentials: true}}
  - {name: basic-auth, route: open, config: {anonymous: guest}}
  - {name: key-auth, route: open, config: {anonymous: guest}}
  - {name: acl, route: partners, config: {allow: [partners]}}
  - {name: rate-limit, route: api, config: {limit: 100, window: 1m, algorithm: fixed_window}}
  - {name: rate-limit, consumer: bob, config: {limit: 2, window: 1m, algorithm: fixed_window}}
"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_identifies_the_consumer_and_the_upstream_is_told_who_called() {
    let o = Origin::start("a").await;
    let g = gateway(&config(o.addr));
    let a = addr(&g);
    let r = get_with(
        a,
        "/api/x",
        &[("apikey", "alice-key-1"), ("x-consumer-username", "bob")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    assert_eq!(
        h["x-consumer-username"], "alice",
        "the client's claim is replaced"
    );
    assert_eq!(h["x-consumer-id"], "u-1001");
    assert_eq!(h["x-consumer-groups"], "partners");
    assert!(h["x-credential-identifier"]
        .as_str()
        .unwrap()
        .starts_with("key-"));
    assert!(h.get("apikey").is_none(), "hide_credentials");
    assert!(h.get("x-anonymous-consumer").is_none());
    // No key, a wrong key: 401 that says which, in the gateway's error shape.
    let r = get_with(a, "/api/x", &[("x-consumer-username", "alice")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "no API key in the request");
    assert_eq!(r.headers["www-authenticate"], "Key realm=\"gatehouse\"");
    let r = get_with(a, "/api/x", &[("apikey", "alice-key-2")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid API key");
    // A key too large to be one, and one that is not text: 401, never a 500.
    let huge = "k".repeat(9000);
    let r = get_with(a, "/api/x", &[("apikey", &huge)]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let resp = raw(
        a,
        b"GET /api/x HTTP/1.1\r\nHost: a\r\napikey: \xff\xfe\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_scoped_limit_applies_to_that_consumer_only() {
    let o = Origin::start("a").await;
    let g = gateway(&config(o.addr));
    let a = addr(&g);
    for _ in 0..2 {
        assert_eq!(
            get_with(a, "/api/x", &[("apikey", "bob-key-1")])
                .await
                .status,
            200
        );
    }
    let r = get_with(a, "/api/x", &[("apikey", "bob-key-1")]).await;
    assert_eq!(r.status, 429, "bob's own limit of 2");
    for _ in 0..5 {
        assert_eq!(
            get_with(a, "/api/x", &[("apikey", "alice-key-1")])
                .await
                .status,
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_auth_plugin_may_identify_the_caller_and_the_rest_go_on_as_anonymous() {
    let o = Origin::start("a").await;
    let g = gateway(&config(o.addr));
    let a = addr(&g);
    let who = |r: &Reply| r.json()["headers"]["x-consumer-username"].clone();
    let r = get_with(a, "/open/x", &[("authorization", &basic("bob", "bob-pw"))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(who(&r), "bob");
    let r = get_with(a, "/open/x", &[("apikey", "alice-key-1")]).await;
    assert_eq!(who(&r), "alice", "basic-auth failed, key-auth succeeded");
    assert_eq!(
        r.json()["headers"]["apikey"],
        "alice-key-1",
        "kept on this route"
    );
    let r = get_with(a, "/open/x", &[("authorization", &basic("bob", "wrong"))]).await;
    assert_eq!(r.status, 200);
    assert_eq!(who(&r), "guest");
    assert_eq!(r.json()["headers"]["x-anonymous-consumer"], "true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_lets_a_group_through_and_refuses_the_rest() {
    let o = Origin::start("a").await;
    let g = gateway(&config(o.addr));
    let a = addr(&g);
    let r = get_with(a, "/partners/x", &[("apikey", "alice-key-1")]).await;
    assert_eq!(r.status, 200);
    let r = get_with(a, "/partners/x", &[("apikey", "bob-key-1")]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "this consumer may not use this route");
    let r = get(a, "/partners/x").await;
    assert_eq!(r.status, 401, "key-auth refuses before acl runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_auth_config_is_refused_with_the_field_named() {
    let o = Origin::start("a").await;
    let errors = |yaml: &str| -> Vec<String> {
        let cfg = gatehouse_model::parse_yaml(yaml).unwrap();
        match gatehouse_proxy::Gateway::start(cfg, &test_options()) {
            Err(gatehouse_proxy::StartError::Config(e)) => {
                e.iter().map(|e| e.to_string()).collect()
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted"),
        }
    };
    let yaml = config(o.addr)
        .replace(
            "{anonymous: guest}}\n  - {name: key-auth",
            "{anonymous: nobody}}\n  - {name: key-auth",
        )
        .replace(
            "{type: key-auth, key: bob-key-1, id: bobs-laptop}",
            "{type: key-auth, key: alice-key-1}",
        )
        .replace("password: bob-pw", "pasword: bob-pw");
    let e = errors(&yaml);
    assert!(
        e.contains(
            &"plugins[1] (basic-auth).config.anonymous: no consumer named \"nobody\"".to_string()
        ),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.starts_with(
            "consumers[1].credentials[0]: consumer \"alice\" already has a key-auth credential"
        )),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|e| e.starts_with("consumers[1].credentials[1].pasword: unknown field")),
        "{e:?}"
    );
    let yaml = config(o.addr).replace(
        "{name: acl, route: partners,",
        "{name: key-auth, consumer: alice,",
    );
    let e = errors(&yaml);
    assert!(
        e.iter().any(|e| e.starts_with(
            "plugins[3].consumer: a key-auth instance cannot be scoped to a consumer"
        )),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_ua_and_cors_decide_before_authentication() {
    let o = Origin::start("a").await;
    let yaml = upstream_yaml(&[o.addr], "")
        + "routes:
  - {name: api, paths: [\"/api/*\"], service: svc}
consumers:
  - {username: alice, credentials: [{type: key-auth, key: k}]}
node: {trusted_proxies: [127.0.0.1]}
plugins:
  - {name: ip-restriction, config: {deny: [\"203.0.113.0/24\"]}}
  - {name: ua-restriction, config: {deny: [\"~(?i)bot\"], bypass_missing: true}}
  - {name: cors, config: {origins: [\"https://app.example.com\"], credentials: true}}
  - {name: key-auth, route: api}
";
    let g = gateway(&yaml);
    let a = addr(&g);
    let r = get_with(
        a,
        "/api/x",
        &[("x-forwarded-for", "203.0.113.9"), ("apikey", "k")],
    )
    .await;
    assert_eq!(r.status, 403, "the real client is the forwarded one");
    assert_eq!(r.json()["error"], "your IP address is not allowed");
    let r = get_with(
        a,
        "/api/x",
        &[("x-forwarded-for", "198.51.100.1"), ("apikey", "k")],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = get_with(a, "/api/x", &[("user-agent", "SomeBot/1"), ("apikey", "k")]).await;
    assert_eq!(r.status, 403);
    // A preflight carries no key and is answered by the gateway.
    let mut c = Client::connect(a).await;
    let r = c
        .request(
            "OPTIONS",
            "/api/x",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
            ],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    // A 401 to an allowed origin still carries CORS headers, so the page can read it.
    let r = get_with(a, "/api/x", &[("origin", "https://app.example.com")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    let r = get_with(
        a,
        "/api/x",
        &[("origin", "https://evil.test"), ("apikey", "k")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
}

/// A JWKS endpoint the test rotates, and tokens signed by the two keys it will serve.
mod jwks {
    use super::*;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use std::sync::Mutex;

    const KEY_1: &str = include_str!("../../plugins/src/auth/jwt_auth/testdata/rsa.key");
    const KEY_2: &str = include_str!("../../plugins/src/auth/jwt_auth/testdata/attacker.key");

    fn jwk(pem: &str, kid: &str) -> serde_json::Value {
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        let mut j = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap(),
        )
        .unwrap();
        j["kid"] = kid.into();
        j
    }

    pub fn token(pem: &str, kid: &str, sub: &str) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let claims = serde_json::json!({"sub": sub, "exp": exp, "iss": "https://idp.test"});
        encode(
            &h,
            &claims,
            &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jwks_keys_are_fetched_kept_and_rotated_against_a_real_server() {
        let served = Arc::new(Mutex::new(
            serde_json::json!({"keys": [jwk(KEY_1, "2026-11")]}),
        ));
        let doc = served.clone();
        let idp = Scripted::start(Arc::new(move |parts, _| {
            assert_eq!(parts.uri.path(), "/.well-known/jwks.json");
            http::Response::new(bytes::Bytes::from(doc.lock().unwrap().to_string()))
        }))
        .await;
        let o = Origin::start("a").await;
        let yaml = upstream_yaml(&[o.addr], "")
            + &format!(
                "routes:
  - {{name: api, paths: [\"/api/*\"], service: svc}}
consumers:
  - {{username: alice, groups: [staff]}}
plugins:
  - name: jwt-auth
    config:
      jwks_uri: http://{}/.well-known/jwks.json
      jwks_min_refresh: 300ms
      consumer_claim: sub
      issuer: [\"https://idp.test\"]
      claims_to_headers: {{iss: X-Token-Issuer}}
",
                idp.addr
            );
        let g = gateway(&yaml);
        let a = addr(&g);
        let bearer = |t: String| format!("Bearer {t}");
        let r = get_with(
            a,
            "/api/x",
            &[("authorization", &bearer(token(KEY_1, "2026-11", "alice")))],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["headers"]["x-consumer-username"], "alice");
        assert_eq!(r.json()["headers"]["x-token-issuer"], "https://idp.test");
        for _ in 0..5 {
            let r = get_with(
                a,
                "/api/x",
                &[("authorization", &bearer(token(KEY_1, "2026-11", "alice")))],
            )
            .await;
            assert_eq!(r.status, 200);
        }
        assert_eq!(idp.hits(), 1, "the set is kept");
        // The provider rotates: a token under the new key is refused until the set is
        // fetched again, which its unknown kid triggers (at most once per 300ms).
        *served.lock().unwrap() = serde_json::json!({"keys": [jwk(KEY_2, "2026-12")]});
        tokio::time::sleep(std::time::Duration::from_millis(350)).await;
        let r = get_with(
            a,
            "/api/x",
            &[("authorization", &bearer(token(KEY_2, "2026-12", "alice")))],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(idp.hits(), 2);
        let r = get_with(
            a,
            "/api/x",
            &[("authorization", &bearer(token(KEY_2, "2026-13", "alice")))],
        )
        .await;
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error"], "the token's key id is unknown");
        assert_eq!(idp.hits(), 2, "no fetch storm on unknown kids");
        let r = get_with(
            a,
            "/api/x",
            &[("authorization", &bearer(token(KEY_2, "2026-12", "mallory")))],
        )
        .await;
        assert_eq!(r.status, 401);
        assert_eq!(
            r.json()["error"],
            "the consumer the token names does not exist"
        );
    }
}

/// Headers for a request signed by `fixtures/hmac_sign.py` (Python's own hmac).
fn python_signed(
    style: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Vec<(String, String)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hmac_sign.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        script,
        style,
        "alice",
        "alice-secret-0123456789",
        "hmac-sha256",
        method,
        path,
    ]);
    cmd.args(body);
    let out = cmd.output().expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

fn hmac_config(origin: std::net::SocketAddr, redis: &str) -> String {
    upstream_yaml(&[origin], "")
        + &format!(
            "redis: {redis}
routes:
  - {{name: api, paths: [\"/api/*\"], service: svc}}
consumers:
  - username: alice
    credentials: [{{type: hmac-auth, key_id: alice, secret: alice-secret-0123456789}}]
plugins:
  - {{name: hmac-auth, config: {{replay: redis, validate_request_body: true, hide_credentials: true}}}}
"
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_signed_requests_pass_once_across_nodes_sharing_redis() {
    let redis = RedisServer::start().await;
    let o = Origin::start("a").await;
    let (g1, g2) = (
        gateway(&hmac_config(o.addr, &redis.url())),
        gateway(&hmac_config(o.addr, &redis.url())),
    );
    let (a1, a2) = (addr(&g1), addr(&g2));
    let body = r#"{"order": 42}"#;
    let send = |a, headers: Vec<(String, String)>, body: &'static str| async move {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut c = Client::connect(a).await;
        c.request("POST", "/api/orders", &h, body.as_bytes())
            .await
            .unwrap()
    };
    let signed = python_signed("apisix", "POST", "/api/orders", Some(body));
    let r = send(a1, signed.clone(), r#"{"order": 42}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-consumer-username"], "alice");
    assert!(r.json()["headers"].get("authorization").is_none(), "hidden");
    // The same request again, to the other node: a replay, refused there too.
    let r = send(a2, signed.clone(), r#"{"order": 42}"#).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.json()["error"],
        "this signature was already used (a replayed request)"
    );
    // Its signature with another body: the digest no longer matches.
    let r = send(
        a2,
        python_signed("apisix", "POST", "/api/orders", Some(body)),
        r#"{"order": 43}"#,
    )
    .await;
    assert_eq!(
        r.json()["error"],
        "the body does not match its Digest header"
    );
    // Kong's style of the same scheme.
    let r = send(
        a2,
        python_signed("kong", "POST", "/api/orders", Some(body)),
        r#"{"order": 42}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A Date outside the skew window is refused whatever the signature.
    let mut skewed = python_signed("apisix", "POST", "/api/orders", Some(body));
    for (k, v) in skewed.iter_mut() {
        if k == "Date" {
            *v = "Sun, 06 Nov 1994 08:49:37 GMT".into();
        }
    }
    let r = send(a1, skewed, r#"{"order": 42}"#).await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("the Date is "),
        "{}",
        r.text()
    );
}

/// A company SSO: a request with the session cookie is let through as its user, any other
/// is sent to the login page.
async fn sso() -> Scripted {
    Scripted::start(Arc::new(|parts, _| {
        let cookie = parts
            .headers
            .get("cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let uri = parts
            .headers
            .get("x-forwarded-uri")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mut resp = http::Response::new(bytes::Bytes::new());
        if cookie.contains("session=good") && parts.uri.path() == "/check" {
            resp.headers_mut()
                .insert("x-user", "alice".parse().unwrap());
            resp.headers_mut()
                .insert("x-internal", "not for upstream".parse().unwrap());
        } else {
            *resp.status_mut() = http::StatusCode::FOUND;
            let login = format!("https://sso.test/login?return={uri}");
            resp.headers_mut()
                .insert("location", login.parse().unwrap());
            resp.headers_mut()
                .insert("set-cookie", "state=1; HttpOnly".parse().unwrap());
        }
        resp
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_lets_the_sso_decide_and_passes_its_redirect_to_the_client() {
    let sso = sso().await;
    let o = Origin::start("a").await;
    let yaml = |auth: String, extra: &str| {
        upstream_yaml(&[o.addr], "")
            + &format!(
                "routes:
  - {{name: app, paths: [\"/app/*\"], service: svc}}
plugins:
  - {{name: forward-auth, config: {{uri: \"http://{auth}/check\", upstream_headers: [x-user]{extra}}}}}
"
            )
    };
    let g = gateway(&yaml(sso.addr.to_string(), ""));
    let a = addr(&g);
    let r = get_with(
        a,
        "/app/orders?page=2",
        &[("cookie", "session=good"), ("x-user", "root")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["headers"]["x-user"],
        "alice",
        "the SSO's word, not the client's"
    );
    assert!(r.json()["headers"].get("x-internal").is_none());
    let r = get_with(a, "/app/orders?page=2", &[("x-user", "root")]).await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.headers["location"],
        "https://sso.test/login?return=/app/orders?page=2"
    );
    assert_eq!(r.headers["set-cookie"], "state=1; HttpOnly");
    assert_eq!(sso.hits(), 2);
    // The SSO unreachable: refused by default, let through when so configured.
    let down = closed_addr().to_string();
    let g = gateway(&yaml(down.clone(), ""));
    let r = get_with(addr(&g), "/app/x", &[("cookie", "session=good")]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "the auth service is unavailable");
    let g = gateway(&yaml(down, ", on_error: allow"));
    let r = get_with(addr(&g), "/app/x", &[("x-user", "root")]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.json()["headers"].get("x-user").is_none(),
        "a client's claim never passes"
    );
}
