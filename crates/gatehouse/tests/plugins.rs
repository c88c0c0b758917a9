//! Integration tests of the plugin framework through the real gateway: plugin phases on a
//! route, gateway-made rejections, and plugin state across reloads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn limited(origin: std::net::SocketAddr, limit: u32, extra_route: &str) -> String {
    upstream_yaml(&[origin], "")
        + &format!(
            "routes:
  - {{name: limited, paths: [\"/limited/*\"], service: svc}}
  - {{name: free, paths: [\"/free/*\"], service: svc}}
{extra_route}plugins:
  - name: rate-limit
    route: limited
    config: {{limit: {limit}, window: 1m, algorithm: fixed_window, policy_name: per-ip}}
"
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_rejects_past_the_limit_with_headers() {
    let o = Origin::start("a").await;
    let g = gateway(&limited(o.addr, 3, ""));
    let a = addr(&g);
    let mut c = Client::connect(a).await;
    for remaining in [2, 1, 0] {
        let r = c.get("/limited/x").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.headers["ratelimit-policy"], "\"per-ip\";q=3;w=60");
        let state = r.headers["ratelimit"].to_str().unwrap().to_string();
        assert!(
            state.starts_with(&format!("\"per-ip\";r={remaining};t=")),
            "{state}"
        );
    }
    let r = c.get("/limited/x").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate limit exceeded");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // The gateway's error shape, request id included, as for its own errors.
    let id = r.headers["x-request-id"].to_str().unwrap();
    assert_eq!(r.json()["request_id"], id, "{}", r.text());
    assert_eq!(r.json()["status"], 429);
    assert!(
        r.json().get("origin").is_none(),
        "answered by the gateway, not the origin"
    );
    // Other routes are not limited, and carry no rate-limit headers.
    let r = c.get("/free/x").await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("ratelimit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_survive_unrelated_reloads_and_bad_plugin_configs_are_rejected() {
    let o = Origin::start("a").await;
    let g = gateway(&limited(o.addr, 2, ""));
    let a = addr(&g);
    let mut c = Client::connect(a).await;
    assert_eq!(c.get("/limited/1").await.status, 200);
    assert_eq!(c.get("/limited/2").await.status, 200);
    assert_eq!(c.get("/limited/3").await.status, 429);

    // An unrelated edit (a new route) keeps the instance and its counts.
    let edited = limited(
        o.addr,
        2,
        "  - {name: extra, paths: [\"/extra/*\"], service: svc}\n",
    );
    g.reload(gatehouse_model::parse_yaml(&edited).unwrap())
        .unwrap();
    assert_eq!(c.get("/extra/1").await.status, 200);
    assert_eq!(c.get("/limited/4").await.status, 429);

    // A bad plugin config is refused with its path; the running config keeps serving.
    let bad = limited(o.addr, 0, "");
    let errs = g
        .reload(gatehouse_model::parse_yaml(&bad).unwrap())
        .unwrap_err();
    let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(errs, ["plugins[0] (rate-limit).config.limit: must be > 0"]);
    assert_eq!(c.get("/extra/2").await.status, 200);
    assert_eq!(c.get("/limited/5").await.status, 429);

    // Changing the plugin's own config builds a new instance with fresh counts.
    g.reload(gatehouse_model::parse_yaml(&limited(o.addr, 5, "")).unwrap())
        .unwrap();
    assert_eq!(c.get("/limited/6").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_holds_a_slot_until_the_response_ends() {
    use std::time::{Duration, Instant};
    let o = Origin::start("a").await;
    let yaml = upstream_yaml(&[o.addr], "")
        + "routes:
  - {name: one, paths: [\"/stall\"], service: svc}
  - {name: queued, paths: [\"/delay/*\"], service: svc}
plugins:
  - name: concurrency-limit
    route: one
    config: {max: 1}
  - name: concurrency-limit
    route: queued
    config: {max: 1, queue: 1, queue_timeout: 2s}
";
    let g = gateway(&yaml);
    let a = addr(&g);

    // A response whose body never ends holds the only slot while it streams...
    let mut streaming = Client::connect(a).await;
    let head = tokio::time::timeout(Duration::from_secs(5), streaming.head_only("/stall"))
        .await
        .expect("head arrives");
    assert_eq!(head, 200);
    let r = get(a, "/stall").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "too many requests in flight");
    assert_eq!(r.headers["retry-after"], "1");
    // ...and the client going away frees it.
    drop(streaming);
    let t = Instant::now();
    let status = loop {
        let s = tokio::time::timeout(Duration::from_millis(300), async {
            Client::connect(a).await.head_only("/stall").await
        })
        .await
        .unwrap_or(0);
        if s == 200 || t.elapsed() > Duration::from_secs(2) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 200, "the slot came back");

    // A short queue: the second request waits for the first instead of being rejected; a
    // third finds the queue full.
    let first = tokio::spawn(async move { get(a, "/delay/400/a").await.status });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let second = tokio::spawn(async move { get(a, "/delay/0/b").await.status });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(a, "/delay/0/c").await.status, 503);
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(second.await.unwrap(), 200);
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_size_limit_refuses_large_bodies_declared_or_streamed() {
    let o = Origin::start("a").await;
    let yaml = upstream_yaml(&[o.addr], "")
        + "routes:
  - {name: up, service: svc}
plugins:
  - name: request-size-limit
    route: up
    config: {max_body: 1KiB, max_header_bytes: 2KiB}
";
    let g = gateway(&yaml);
    let a = addr(&g);
    let chunked = |sizes: &[usize]| {
        let mut req =
            b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        for n in sizes {
            req.extend(format!("{n:x}\r\n").as_bytes());
            req.extend(std::iter::repeat_n(b'z', *n));
            req.extend(b"\r\n");
        }
        req.extend(b"0\r\n\r\n");
        req
    };

    // Declared too large: refused before anything goes upstream.
    let head = format!(
        "POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        1025
    );
    let mut req = head.into_bytes();
    req.extend(std::iter::repeat_n(b'z', 1025));
    let out = raw(a, &req).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("request body too large"), "{out}");
    assert!(!out.contains("\"origin\""), "{out}");

    // Chunked, so nothing declared: counted while it streams, refused once past 1 KiB.
    let out = raw(a, &chunked(&[600, 600])).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("request body too large"), "{out}");

    // Within the limit, chunked or not, it passes whole.
    let out = raw(a, &chunked(&[600, 424])).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"body_bytes\":1024"), "{out}");

    // Headers over 2 KiB in total: 431.
    let big = "v".repeat(2100);
    let r = get_with(a, "/up", &[("x-big", big.as_str())]).await;
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"], "request headers too large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_violations_escalate_into_a_ban_of_the_consumer() {
    let o = Origin::start("a").await;
    let yaml = upstream_yaml(&[o.addr], "")
        + "consumers:
  - username: alice
    credentials:
      - {type: key-auth, key: alice-key}
routes:
  - {name: up, service: svc}
plugins:
  - {name: key-auth, route: up, config: {header: apikey}}
  - name: bans
  - name: rate-limit
    route: up
    config: {limit: 1, window: 1m, key: consumer, ban: {after: 2, within: 1m, for: 30s}}
";
    let g = gateway(&yaml);
    let a = addr(&g);
    let alice = [("apikey", "alice-key")];
    assert_eq!(get_with(a, "/up", &alice).await.status, 200);
    assert_eq!(get_with(a, "/up", &alice).await.status, 429);
    assert_eq!(get_with(a, "/up", &alice).await.status, 429);
    let r = get_with(a, "/up", &alice).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "banned");
    let ban = gatehouse_plugin_api::bans::bans().list();
    assert_eq!(ban[0].subject, "consumer:alice");
    assert_eq!(ban[0].source, "rate-limit");
}
