//! Integration tests of safe releases through a real gateway and real origins: traffic split
//! rules and their statistics, request colouring across chained services, mirroring with
//! response diffing, and the transformers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Two origins `base` and `canary` behind upstreams of those names, one route `/api/*`.
fn two_sides(base: SocketAddr, canary: SocketAddr, plugins: &str) -> String {
    format!(
        "upstreams:
  - {{name: base, targets: [{{address: \"{base}\"}}]}}
  - {{name: canary, targets: [{{address: \"{canary}\"}}]}}
services:
  - {{name: svc, upstream: base}}
routes:
  - {{name: api, paths: [\"/api/*\"], service: svc}}
plugins:
{plugins}"
    )
}

fn split_at(share: f64) -> String {
    format!(
        "  - name: traffic-split
    route: api
    config:
      user_id: query:uid
      variant_header: X-Variant
      rules:
        - {{name: canary, when: {{percent: {share}}}, upstream: canary}}
"
    )
}

/// Sends `paths` over `conns` keep-alive connections; the origin (or status) of each answer.
async fn spread(gw: SocketAddr, paths: Vec<String>, conns: usize) -> Vec<(String, String)> {
    let chunks: Vec<Vec<String>> = paths
        .chunks(paths.len().div_ceil(conns))
        .map(|c| c.to_vec())
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(gw).await;
            let mut out = Vec::new();
            for p in chunk {
                let r = c.get(&p).await;
                let who = match r.status {
                    200 => r.json()["origin"].as_str().unwrap_or("?").to_owned(),
                    s => s.to_string(),
                };
                out.push((p, who));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_percent_split_is_sticky_and_keeps_its_users_when_the_share_grows() {
    let (base, canary) = (Origin::start("base").await, Origin::start("canary").await);
    let g = gateway(&two_sides(base.addr, canary.addr, &split_at(10.0)));
    let gw = addr(&g);
    let paths: Vec<String> = (0..20_000).map(|i| format!("/api/x?uid=u{i}")).collect();
    let answers = spread(gw, paths, 8).await;
    let in_canary: Vec<&String> = answers
        .iter()
        .filter(|(_, who)| who == "canary")
        .map(|(p, _)| p)
        .collect();
    let others = answers.iter().filter(|(_, w)| w == "base").count();
    assert_eq!(in_canary.len() + others, 20_000, "every request answered");
    let share = in_canary.len() as f64 / 200.0;
    assert!((9.0..=11.0).contains(&share), "10 % split gave {share} %");

    // A hundred requests each from 20 canary users and 20 others: nobody changes sides.
    let users: Vec<(String, &str)> = in_canary
        .iter()
        .take(20)
        .map(|p| (p.to_string(), "canary"))
        .chain(
            answers
                .iter()
                .filter(|(_, w)| w == "base")
                .take(20)
                .map(|(p, _)| (p.clone(), "base")),
        )
        .collect();
    let repeated: Vec<String> = users
        .iter()
        .flat_map(|(p, _)| std::iter::repeat_n(p.clone(), 100))
        .collect();
    for (p, who) in spread(gw, repeated, 4).await {
        let want = users.iter().find(|(u, _)| *u == p).unwrap().1;
        assert_eq!(who, want, "{p} changed sides");
    }

    // The share is raised to 20 % by a reload: the first 10 % stay, and twice as many go.
    g.reload(
        gatehouse_model::parse_yaml(&two_sides(base.addr, canary.addr, &split_at(20.0))).unwrap(),
    )
    .unwrap();
    let again: Vec<String> = in_canary.iter().map(|p| p.to_string()).collect();
    for (p, who) in spread(gw, again, 4).await {
        assert_eq!(who, "canary", "{p} left the canary when its share grew");
    }
    let paths: Vec<String> = (0..4_000).map(|i| format!("/api/x?uid=u{i}")).collect();
    let n = spread(gw, paths, 4)
        .await
        .iter()
        .filter(|(_, w)| w == "canary")
        .count();
    assert!((680..=920).contains(&n), "20 % of 4000 gave {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_route_by_tail_digit_list_ip_cookie_and_header_and_rewrite_or_redirect() {
    let (base, canary) = (Origin::start("base").await, Origin::start("canary").await);
    let plugins = "  - name: traffic-split
    route: api
    config:
      user_id: header:x-uid
      variant_header: X-Variant
      rules:
        - {name: listed, when: {user_ids: [\"42\", \"1001\"]}, upstream: canary}
        - {name: tail, when: {user_id_tail: [\"7\"]}, upstream: canary}
        - {name: office, when: {ip: [\"127.0.0.0/8\"], headers: [{name: x-office, present: true}]}, upstream: canary}
        - {name: cookie, when: {cookies: [{name: beta, equals: \"1\"}]}, upstream: canary}
        - {name: header, when: {headers: [{name: x-group, regex: \"^gray-\"}]}, upstream: canary}
        - {name: ab1, when: {query: [{name: ab, in: [\"1\", \"one\"]}]}, rewrite: /api/ab1}
        - {name: moved, when: {query: [{name: ab, equals: \"gone\"}]}, redirect: {url: \"https://new.example.com/api\", status: 301}}
      default: {name: baseline}
";
    let g = gateway(&two_sides(base.addr, canary.addr, plugins));
    let gw = addr(&g);
    let cases: [(&[(&str, &str)], &str, &str, &str); 9] = [
        (&[("x-uid", "1001")], "/api/a", "listed", "canary"),
        (&[("x-uid", "5557")], "/api/a", "tail", "canary"),
        (&[("x-uid", "5558")], "/api/a", "baseline", "base"),
        (&[("x-office", "1")], "/api/a", "office", "canary"),
        (&[("cookie", "x=1; beta=1")], "/api/a", "cookie", "canary"),
        (&[("cookie", "beta=0")], "/api/a", "baseline", "base"),
        (&[("x-group", "gray-7")], "/api/a", "header", "canary"),
        (&[("x-group", "blue")], "/api/a", "baseline", "base"),
        (&[], "/api/source?ab=one", "ab1", "base"),
    ];
    for (headers, path, variant, origin) in cases {
        let r = get_with(gw, path, headers).await;
        assert_eq!(r.status, 200, "{headers:?}");
        assert_eq!(r.headers["x-variant"], variant, "{headers:?}");
        assert_eq!(r.json()["origin"], origin, "{headers:?}");
    }
    let r = get(gw, "/api/source?ab=1").await;
    assert_eq!(r.json()["path"], "/api/ab1?ab=1", "rewritten, query kept");
    let r = get(gw, "/api/old?ab=gone").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.headers["location"], "https://new.example.com/api?ab=gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_claim_of_the_authenticated_consumer_is_the_user_id() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let (base, canary) = (Origin::start("base").await, Origin::start("canary").await);
    let plugins = "  - name: jwt-auth
    route: api
    config: {claims_to_headers: {uid: X-User-Id}}
  - name: traffic-split
    route: api
    config:
      user_id: header:x-user-id
      rules: [{name: tail, when: {user_id_tail: [\"3\"]}, upstream: canary}]
consumers:
  - username: app
    credentials: [{type: jwt-auth, key: app-iss, algorithm: HS256, secret: \"a-secret-of-at-least-16\"}]
";
    let g = gateway(&two_sides(base.addr, canary.addr, plugins));
    let gw = addr(&g);
    let token = |uid: &str| {
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let claims = serde_json::json!({"iss": "app-iss", "uid": uid, "exp": exp});
        let key = EncodingKey::from_secret(b"a-secret-of-at-least-16");
        format!("Bearer {}", encode(&Header::default(), &claims, &key).unwrap())
    };
    let (t3, t4) = (token("1003"), token("1004"));
    let r = get_with(gw, "/api/a", &[("authorization", &t3)]).await;
    assert_eq!((r.status, r.json()["origin"].clone()), (200, "canary".into()));
    // A client's own X-User-Id is replaced by the verified claim.
    let r = get_with(gw, "/api/a", &[("authorization", &t4), ("x-user-id", "3")]).await;
    assert_eq!(r.json()["origin"], "base");
    assert_eq!(r.json()["headers"]["x-user-id"], "1004");
    assert_eq!(get(gw, "/api/a").await.status, 401, "no token, no entry");
}
