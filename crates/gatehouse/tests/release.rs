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
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str, &'a str);
    let cases: [Case; 9] = [
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
        format!(
            "Bearer {}",
            encode(&Header::default(), &claims, &key).unwrap()
        )
    };
    let (t3, t4) = (token("1003"), token("1004"));
    let r = get_with(gw, "/api/a", &[("authorization", &t3)]).await;
    assert_eq!(
        (r.status, r.json()["origin"].clone()),
        (200, "canary".into())
    );
    // A client's own X-User-Id is replaced by the verified claim.
    let r = get_with(gw, "/api/a", &[("authorization", &t4), ("x-user-id", "3")]).await;
    assert_eq!(r.json()["origin"], "base");
    assert_eq!(r.json()["headers"]["x-user-id"], "1004");
    assert_eq!(get(gw, "/api/a").await.status, 401, "no token, no entry");
}

/// An origin that answers `/a/...` by calling the gateway's `/b/...` with the request's
/// colour header, and says who it is and what the next hop said.
fn chained_on(
    listener: tokio::net::TcpListener,
    name: &'static str,
    gateway: SocketAddr,
) -> tokio::task::JoinHandle<()> {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let color = req
                            .headers()
                            .get("x-gatehouse-color")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let headers: Vec<(&str, &str)> = color
                            .iter()
                            .map(|c| ("x-gatehouse-color", c.as_str()))
                            .collect();
                        let next = get_with(gateway, "/b/x", &headers).await.json();
                        let body =
                            serde_json::json!({"origin": name, "color": color, "next": next});
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body.to_string())),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_colour_follows_the_request_through_two_services_and_falls_back_to_uncoloured() {
    let (b_base, b_gray) = (Origin::start("b").await, Origin::start("b-gray").await);
    let a_base_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a_gray_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a_base, a_gray) = (
        a_base_l.local_addr().unwrap(),
        a_gray_l.local_addr().unwrap(),
    );
    let yaml = |b_gray_target: &str| {
        format!(
            "upstreams:
  - name: a
    targets: [{{address: \"{a_base}\"}}, {{address: \"{a_gray}\", labels: {{color: gray}}}}]
  - name: b
    targets: [{{address: \"{}\"}}{b_gray_target}]
services:
  - {{name: a, upstream: a}}
  - {{name: b, upstream: b}}
routes:
  - {{name: a, paths: [\"/a/*\"], service: a}}
  - {{name: b, paths: [\"/b/*\"], service: b}}
plugins:
  - name: traffic-split
    route: a
    config:
      rules: [{{name: gray, when: {{headers: [{{name: x-tester, equals: \"1\"}}]}}, color: gray}}]
",
            b_base.addr
        )
    };
    let with_gray_b = format!(
        ", {{address: \"{}\", labels: {{color: gray}}}}",
        b_gray.addr
    );
    let g = gateway(&yaml(&with_gray_b));
    let gw = addr(&g);
    let _a = chained_on(a_base_l, "a", gw);
    let _ag = chained_on(a_gray_l, "a-gray", gw);

    // Uncoloured requests never reach a gray target.
    for _ in 0..10 {
        let r = get(gw, "/a/x").await.json();
        assert_eq!(
            (r["origin"].as_str(), r["next"]["origin"].as_str()),
            (Some("a"), Some("b"))
        );
    }
    // Coloured by a rule: gray at both hops.
    let r = get_with(gw, "/a/x", &[("x-tester", "1")]).await.json();
    assert_eq!(r["origin"], "a-gray");
    assert_eq!(r["color"], "gray");
    assert_eq!(r["next"]["origin"], "b-gray");
    // Arriving coloured works the same.
    let r = get_with(gw, "/a/x", &[("x-gatehouse-color", "gray")])
        .await
        .json();
    assert_eq!(
        (r["origin"].as_str(), r["next"]["origin"].as_str()),
        (Some("a-gray"), Some("b-gray"))
    );
    // A colour no target has goes to the uncoloured ones.
    let r = get_with(gw, "/a/x", &[("x-gatehouse-color", "blue")])
        .await
        .json();
    assert_eq!(
        (r["origin"].as_str(), r["next"]["origin"].as_str()),
        (Some("a"), Some("b"))
    );
    // Service b without a gray version: the gray request falls back there, still coloured.
    g.reload(gatehouse_model::parse_yaml(&yaml("")).unwrap())
        .unwrap();
    let r = get_with(gw, "/a/x", &[("x-tester", "1")]).await.json();
    assert_eq!(r["origin"], "a-gray");
    assert_eq!(r["next"]["origin"], "b");
    assert_eq!(r["next"]["headers"]["x-gatehouse-color"], "gray");
}

/// The p99 of `n` sequential GETs of `path`, in ms.
async fn p99(gw: SocketAddr, path: &str, n: usize) -> f64 {
    let mut c = Client::connect(gw).await;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        assert_eq!(c.get(path).await.status, 200);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[(n * 99 / 100).min(n - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_mirror_does_not_slow_the_primary_and_overflow_is_counted() {
    let (primary, shadow) = (
        Origin::start("primary").await,
        Origin::start("shadow").await,
    );
    let mirror = |queue: usize| {
        format!(
            "  - name: traffic-mirror
    route: api
    config: {{url: \"http://{}/delay/2000\", queue: {queue}, timeout: 5s}}
",
            shadow.addr
        )
    };
    let plain = two_sides(primary.addr, primary.addr, "  []\n");
    let g = gateway(&plain);
    let gw = addr(&g);
    p99(gw, "/api/warm", 50).await;
    let without = p99(gw, "/api/x", 200).await;
    g.reload(
        gatehouse_model::parse_yaml(&two_sides(primary.addr, primary.addr, &mirror(1000))).unwrap(),
    )
    .unwrap();
    let with = p99(gw, "/api/x", 200).await;
    assert!(
        with < without * 3.0 + 20.0,
        "primary p99 {with:.2} ms with a 2 s mirror against {without:.2} ms without"
    );
    let report = || {
        let snap = g.shared().snapshot.load();
        snap.plugins[0].2.report().unwrap()
    };
    assert!(
        report()["in_flight"].as_u64().unwrap() > 100,
        "{}",
        report()
    );
    // A queue of 5: the rest of a burst is dropped and counted.
    g.reload(
        gatehouse_model::parse_yaml(&two_sides(primary.addr, primary.addr, &mirror(5))).unwrap(),
    )
    .unwrap();
    let mut c = Client::connect(gw).await;
    for _ in 0..30 {
        assert_eq!(c.get("/api/burst").await.status, 200);
    }
    let r = report();
    assert_eq!(r["dropped_queue_full"].as_u64(), Some(25), "{r}");
    // The copies arrive, with the request's path under the URL's base path.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = report();
    assert_eq!(r["in_flight"], 0, "{r}");
    assert_eq!(r["sent"].as_u64(), Some(5), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diffing_finds_an_injected_difference_and_ignores_ignored_fields() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let n = Arc::new(AtomicU64::new(0));
    let answer = move |price: u32, n: &AtomicU64| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        let body = serde_json::json!({"id": i, "meta": {"ts": i * 7}, "price": price});
        let mut r = http::Response::new(bytes::Bytes::from(body.to_string()));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    };
    let (n1, n2) = (n.clone(), n.clone());
    let primary = Scripted::start(Arc::new(move |_, _| answer(10, &n1))).await;
    let shadow = Scripted::start(Arc::new(move |parts, body| {
        // The copy carries the primary's body.
        assert_eq!(&body[..], b"{\"q\":1}", "{parts:?}");
        let price = if parts.uri.path().ends_with("/bad") {
            11
        } else {
            10
        };
        answer(price, &n2)
    }))
    .await;
    let plugins = "  - name: traffic-mirror
    route: api
    config:
      upstream: canary
      diff: {headers: [content-type], ignore: [id, /meta/ts], samples: 5}
";
    let g = gateway(&two_sides(primary.addr, shadow.addr, plugins));
    let gw = addr(&g);
    let mut c = Client::connect(gw).await;
    for path in ["/api/a", "/api/b", "/api/bad", "/api/c"] {
        let r = c
            .request(
                "POST",
                path,
                &[("content-type", "application/json")],
                b"{\"q\":1}",
            )
            .await
            .unwrap();
        assert_eq!(
            r.json()["price"],
            10,
            "the client gets the primary's answer"
        );
    }
    let report = || g.shared().snapshot.load().plugins[0].2.report().unwrap();
    let mut r = report();
    for _ in 0..100 {
        if r["matches"].as_u64().unwrap_or(0) + r["differences"].as_u64().unwrap_or(0) == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        r = report();
    }
    assert_eq!(
        (r["matches"].as_u64(), r["differences"].as_u64()),
        (Some(3), Some(1)),
        "{r}"
    );
    let sample = &r["samples"][0];
    assert_eq!(sample["path"], "/api/bad");
    assert_eq!(sample["method"], "POST");
    assert_eq!(
        sample["differences"],
        serde_json::json!(["/price: 10 != 11"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transformers_and_a_regex_rewrite_edit_the_exchange() {
    let o = Origin::start("o").await;
    let yaml = format!(
        "upstreams: [{{name: up, targets: [{{address: \"{}\"}}]}}]
services: [{{name: svc, upstream: up}}]
routes:
  - name: users
    paths: [\"~^/users/(?P<id>[0-9]+)/.*$\"]
    service: svc
    rewrite_regex: {{regex: \"^/users/([0-9]+)/(.*)$\", replace: \"/v2/$2/of/$1\"}}
plugins:
  - name: request-transformer
    route: users
    config:
      headers: {{set: {{x-user-id: \"{{capture.id}}\", x-caller: \"{{client_ip}}\"}}, remove: [x-debug]}}
      query: {{rename: {{q: search}}, add: {{v: \"2\"}}}}
      json: {{remove: [password], set: {{via: gateway}}}}
  - name: response-transformer
    route: users
    config:
      headers: {{set: {{x-request: \"{{request_id}}\", content-type: application/json}}}}
      json: {{remove: [headers], add: {{route: \"{{route}}\"}}}}
",
        o.addr
    );
    let g = gateway(&yaml);
    let gw = addr(&g);
    let mut c = Client::connect(gw).await;
    let r = c
        .request(
            "POST",
            "/users/42/orders?q=shoes",
            &[
                ("content-type", "application/json"),
                ("x-debug", "1"),
                ("x-request-id", "rid-9"),
            ],
            b"{\"item\":\"a\",\"password\":\"p\"}",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-request"], "rid-9");
    let body = r.json();
    assert_eq!(body["route"], "users");
    assert!(
        body.get("headers").is_none(),
        "removed from the response: {body}"
    );
    assert_eq!(body["path"], "/v2/orders/of/42?search=shoes&v=2");
    let sent: serde_json::Value = serde_json::json!({"item": "a", "via": "gateway"})
        .to_string()
        .len()
        .into();
    assert_eq!(body["body_bytes"], sent, "the edited body went upstream");
    // What the upstream saw, from a second request without the response transformer's cut.
    g.reload(gatehouse_model::parse_yaml(&yaml.replace("remove: [headers], ", "")).unwrap())
        .unwrap();
    let r = c
        .request("GET", "/users/7/x", &[("x-debug", "1")], b"")
        .await
        .unwrap();
    let h = &r.json()["headers"];
    assert_eq!(h["x-user-id"], "7");
    assert_eq!(h["x-caller"], "127.0.0.1");
    assert!(h.get("x-debug").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_have_their_own_metrics_and_access_log_field() {
    let (base, canary) = (Origin::start("base").await, Origin::start("canary").await);
    let dir = std::env::temp_dir().join(format!("gh-variants-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let yaml = two_sides(base.addr, canary.addr, &split_at(50.0)).replace(
        "upstreams:",
        &format!(
            "observability: {{access_log: {{path: \"{}\", fields: [route, variant, status]}}}}\nupstreams:",
            log.display()
        ),
    );
    let g = gateway(&yaml);
    let gw = addr(&g);
    let paths: Vec<String> = (0..200).map(|i| format!("/api/x?uid={i}")).collect();
    let answers = spread(gw, paths, 2).await;
    let canary_n = answers.iter().filter(|(_, w)| w == "canary").count();
    let shared = g.shared().clone();
    let mut registry = prometheus_client::registry::Registry::with_prefix("gatehouse");
    registry.register_collector(Box::new(gatehouse_runtime::telemetry::SnapshotCollector(
        move || shared.snapshot.load_full(),
    )));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let count = |variant: &str| -> usize {
        let prefix = format!(
            "gatehouse_variant_requests_total{{route=\"api\",variant=\"{variant}\",method=\"GET\",class=\"2xx\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.parse().unwrap())
    };
    assert_eq!(count("canary"), canary_n, "{text}");
    assert_eq!(count("default"), 200 - canary_n, "{text}");
    assert!(
        text.lines().any(
            |l| l.starts_with("gatehouse_variant_request_duration_seconds_bucket{")
                && l.contains("variant=\"canary\"")
        ),
        "{text}"
    );
    drop(g);
    let mut lines = String::new();
    for _ in 0..50 {
        lines = std::fs::read_to_string(&log).unwrap_or_default();
        if lines.lines().count() >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let canary_lines = lines
        .lines()
        .filter(|l| l.contains("\"variant\":\"canary\""))
        .count();
    assert_eq!(canary_lines, canary_n, "{lines}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_chosen_requests_are_copied() {
    let (primary, shadow) = (
        Origin::start("primary").await,
        Origin::start("shadow").await,
    );
    let plugins = "  - name: traffic-mirror
    route: api
    config:
      upstream: canary
      when: {headers: [{name: x-mirror, present: true}]}
";
    let g = gateway(&two_sides(primary.addr, shadow.addr, plugins));
    let gw = addr(&g);
    let mut c = Client::connect(gw).await;
    for i in 0..6 {
        let h: &[(&str, &str)] = if i % 3 == 0 {
            &[("x-mirror", "1")]
        } else {
            &[]
        };
        assert_eq!(
            c.request("GET", "/api/x", h, b"").await.unwrap().status,
            200
        );
    }
    let report = || g.shared().snapshot.load().plugins[0].2.report().unwrap();
    for _ in 0..100 {
        if report()["sent"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = report();
    assert_eq!(
        (r["sent"].as_u64(), r["body_too_large"].as_u64()),
        (Some(2), Some(0)),
        "{r}"
    );
    assert_eq!(
        shadow.accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one pooled connection"
    );
}
