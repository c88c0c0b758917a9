#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `hmac-auth` refusals, each with what was wrong; signatures made by an independent
//! implementation are checked through the real gateway (`gatehouse/tests/auth.rs`).

use super::*;
use crate::test_support::*;
use gatehouse_plugin_api::PluginKind;

const SECRET: &str = "alice-secret-0123456789";

fn plugin(cfg: serde_json::Value) -> Arc<dyn Plugin> {
    PluginKind::build(&Kind, &cfg, &BuildEnv::default()).unwrap()
}

fn date(offset_secs: i64) -> String {
    let t = SystemTime::now();
    let t = if offset_secs >= 0 {
        t + Duration::from_secs(offset_secs as u64)
    } else {
        t - Duration::from_secs((-offset_secs) as u64)
    };
    httpdate::fmt_http_date(t)
}

/// A request signed APISIX-style over `@request-target date` (+ `extra` headers).
fn signed(path: &str, date: &str, algorithm: &str, extra: &[(&str, &str)]) -> Req {
    let mut names = vec!["@request-target", "date"];
    names.extend(extra.iter().map(|(n, _)| *n));
    let mut text = format!("alice\nGET {path}\ndate: {date}\n");
    for (n, v) in extra {
        text.push_str(&format!("{n}: {v}\n"));
    }
    let sig = mac(algorithm, SECRET.as_bytes(), text.as_bytes()).unwrap();
    let sig = base64::engine::general_purpose::STANDARD.encode(sig);
    let auth = format!(
        r#"Signature keyId="alice",algorithm="{algorithm}",headers="{}",signature="{sig}""#,
        names.join(" ")
    );
    let mut r = get(path)
        .header("date", date)
        .header("authorization", &auth);
    for (n, v) in extra {
        r = r.header(n, v);
    }
    let i = r.gateway.consumers.push("alice");
    let cred = PluginKind::credential(
        &Kind,
        &serde_json::json!({"key_id": "alice", "secret": SECRET}),
    );
    r.gateway
        .consumers
        .add_credential(i, NAME, cred.unwrap())
        .unwrap();
    r
}

fn why(p: &dyn Plugin, mut r: Req) -> String {
    let resp = r.access_now(p).unwrap_err();
    assert_eq!(resp.status(), 401);
    let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
    v["error"].as_str().unwrap().to_string()
}

#[test]
fn a_signature_is_accepted_once_and_each_refusal_says_why() {
    let p = plugin(
        serde_json::json!({"allowed_algorithms": ["hmac-sha256", "hmac-sha512"], "clock_skew": "30s", "signed_headers": ["x-app"]}),
    );
    let d = date(0);
    let mut ok = signed("/a?x=1", &d, "hmac-sha512", &[("x-app", "shop")]);
    ok.access_now(&*p).unwrap();
    assert_eq!(ok.consumer.unwrap().username.as_ref(), "alice");
    let again = signed("/a?x=1", &d, "hmac-sha512", &[("x-app", "shop")]);
    assert_eq!(why(&*p, again), REPLAYED);
    assert_eq!(
        why(
            &*p,
            signed("/a", &date(-60), "hmac-sha256", &[("x-app", "a")])
        ),
        "the Date is 60 s from the gateway's clock (at most 30 s allowed)"
    );
    assert_eq!(
        why(&*p, signed("/a", &date(0), "hmac-sha1", &[("x-app", "a")])),
        "algorithm \"hmac-sha1\" is not allowed"
    );
    assert_eq!(
        why(&*p, signed("/a", &date(0), "hmac-sha256", &[])),
        "the signature must cover the x-app header"
    );
    let mut tampered = signed("/a", &date(0), "hmac-sha256", &[("x-app", "a")]);
    tampered.parts.uri = "/b".parse().unwrap();
    assert_eq!(why(&*p, tampered), "invalid signature");
    let mut other_key = signed("/a", &date(0), "hmac-sha256", &[("x-app", "a")]);
    let auth = other_key.parts.headers["authorization"]
        .to_str()
        .unwrap()
        .replace("keyId=\"alice\"", "keyId=\"bob\"");
    other_key
        .parts
        .headers
        .insert("authorization", auth.parse().unwrap());
    assert_eq!(why(&*p, other_key), "unknown key id");
    let mut no_date = signed("/a", &date(0), "hmac-sha256", &[("x-app", "a")]);
    no_date.parts.headers.remove("date");
    assert_eq!(why(&*p, no_date), "the request has no Date header");
    let mut bad_date = signed("/a", "yesterday", "hmac-sha256", &[("x-app", "a")]);
    bad_date
        .parts
        .headers
        .insert("date", "yesterday".parse().unwrap());
    assert!(why(&*p, bad_date).starts_with("the Date header is not an HTTP date"));
    assert_eq!(
        why(&*p, get("/a")),
        "no Authorization header with a signature"
    );
    let mut garbage = get("/a").header("authorization", "Signature keyId=");
    assert!(why(&*p, std::mem::replace(&mut garbage, get("/"))).contains("not quoted"));
}

#[test]
fn the_body_is_bound_by_its_digest() {
    let p = plugin(serde_json::json!({"validate_request_body": true}));
    assert_eq!(p.needs().request_body, Some(1 << 20));
    let body = br#"{"name":"world"}"#;
    let digest = format!(
        "SHA-256={}",
        base64::engine::general_purpose::STANDARD.encode(sha256(body))
    );
    let r = signed("/p", &date(0), "hmac-sha256", &[])
        .header("digest", &digest)
        .with_body(&body[..]);
    let mut ok = r;
    ok.access_now(&*p).unwrap();
    let r = signed("/p2", &date(0), "hmac-sha256", &[])
        .header("digest", &digest)
        .with_body(&b"{}"[..]);
    assert_eq!(why(&*p, r), "the body does not match its Digest header");
    let r = signed("/p3", &date(0), "hmac-sha256", &[]).with_body(&body[..]);
    assert_eq!(why(&*p, r), "the request has no Digest header");
}

#[test]
fn configs_and_credentials_are_checked() {
    let e = PluginKind::build(
        &Kind,
        &serde_json::json!({"allowed_algorithms": ["md5"], "replay": "redis"}),
        &BuildEnv::default(),
    )
    .err()
    .unwrap();
    let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["allowed_algorithms[0]", "replay"]);
    let e = PluginKind::credential(
        &Kind,
        &serde_json::json!({"key_id": "a", "secret": "short"}),
    )
    .err()
    .unwrap();
    assert_eq!(e[0].path, "secret");
    let mut f = serde_json::json!({"key_id": "a", "secret": SECRET})
        .as_object()
        .unwrap()
        .clone();
    PluginKind::redact_credential(&Kind, &mut f);
    assert_eq!(f.len(), 1, "the secret is write-only");
}
