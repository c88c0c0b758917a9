//! Integration tests of the data plane: a real gateway on 127.0.0.1:0 in front of real hyper
//! origins, driven by real HTTP/1.1, h2c and WebSocket clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_params_strip_and_rewrite() {
    let o = Origin::start("a").await;
    let yaml = upstream_yaml(&[o.addr], "")
        + r#"
routes:
  - {name: users, paths: ["/users/{id}"], rewrite: "/v2/accounts/{id}", service: svc}
  - {name: posts, paths: ["/u/{uid}/posts/{pid}"], rewrite: "/p/{pid}?by={uid}", service: svc}
  - {name: files, paths: ["/files/*"], strip_prefix: true, service: svc}
  - {name: rest, paths: ["/api/*"], rewrite: "/internal/{*}", service: svc}
  - {name: exact, paths: ["/health"], service: svc}
  - {name: re, paths: ["~^/re/(?P<slug>[a-z]+)$"], rewrite: "/slug/{slug}", service: svc}
  - {name: host, hosts: ["*.example.com"], paths: ["/*"], preserve_host: true, service: svc}
"#;
    let g = gateway(&yaml);
    let a = addr(&g);
    let cases = [
        ("/users/42", "/v2/accounts/42"),
        ("/u/7/posts/9", "/p/9?by=7"),
        ("/files/a/b.txt?x=1", "/a/b.txt?x=1"),
        ("/files", "/"),
        ("/api/v1/things", "/internal/v1/things"),
        ("/health", "/health"),
        ("/re/abc", "/slug/abc"),
    ];
    for (from, to) in cases {
        let r = get(a, from).await;
        assert_eq!(r.status, 200, "{from}: {}", r.text());
        assert_eq!(r.json()["path"], to, "{from}");
    }
    let r = get_with(a, "/x", &[("host", "shop.example.com")]).await;
    assert_eq!(r.json()["headers"]["host"], "shop.example.com");
    let r = get(a, "/health").await;
    assert_eq!(r.json()["headers"]["host"], o.addr.to_string());
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_a_json_404() {
    let o = Origin::start("a").await;
    let g = gateway(
        &(upstream_yaml(&[o.addr], "")
            + "routes:\n  - {name: r, paths: [\"/only\"], service: svc}\n"),
    );
    let r = get(addr(&g), "/other").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.headers["content-type"], "application/json");
    let j = r.json();
    assert_eq!(j["error"], "no route");
    assert_eq!(j["request_id"], r.headers["x-request-id"].to_str().unwrap());
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_are_set_and_hop_by_hop_removed() {
    let o = Origin::start("a").await;
    let g = gateway(
        &(upstream_yaml(&[o.addr], "")
            + "node: {via: true}\nroutes:\n  - {name: r, service: svc}\n"),
    );
    let a = addr(&g);
    let r = get_with(
        a,
        "/x",
        &[
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("x-forwarded-for", "10.1.1.1"),
            ("x-request-id", "given-id"),
            ("x-kept", "yes"),
        ],
    )
    .await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "10.1.1.1, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], a.to_string());
    assert_eq!(h["x-request-id"], "given-id");
    assert_eq!(h["via"], "1.1 gatehouse");
    assert_eq!(h["x-kept"], "yes");
    assert!(h.get("x-drop-me").is_none(), "{h}");
    assert!(h.get("keep-alive").is_none(), "{h}");
    // Response side: the origin's Keep-Alive is hop-by-hop; the request id comes back.
    assert!(r.headers.get("keep-alive").is_none());
    assert_eq!(r.headers["x-request-id"], "given-id");
    assert_eq!(r.headers["via"], "1.1 gatehouse");
    // Without a client id, one is generated and passed on.
    let r = get(a, "/y").await;
    let id = r.json()["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 36);
    assert_eq!(r.headers["x-request-id"], id.as_str());
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_rejected() {
    let o = Origin::start("a").await;
    let g = gateway_to(o.addr);
    let a = addr(&g);
    let both = raw(
        a,
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(both.starts_with("HTTP/1.1 400"), "{both}");
    assert!(both.contains("ambiguous request framing"), "{both}");
    // The same after a good request on a keep-alive connection: the first passes, the
    // smuggling-shaped second is refused.
    let pair = raw(
        a,
        b"POST /ok HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbodyPOST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(pair.starts_with("HTTP/1.1 200"), "{pair}");
    assert!(pair.contains("HTTP/1.1 400"), "{pair}");
    assert_eq!(o.accepted.load(Ordering::SeqCst), 1);
    let twice = raw(
        a,
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    )
    .await;
    assert!(twice.starts_with("HTTP/1.1 400"), "{twice}");
    assert_eq!(
        o.accepted.load(Ordering::SeqCst),
        1,
        "an ambiguous request reached the origin"
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled() {
    let o = Origin::start("a").await;
    let g = gateway_to(o.addr);
    let a = addr(&g);
    for _ in 0..4 {
        let mut c = Client::connect(a).await;
        for _ in 0..25 {
            assert_eq!(c.get("/x").await.status, 200);
        }
    }
    // 100 requests over 4 client connections; the gateway has 2 workers with a pool each.
    let n = o.accepted.load(Ordering::SeqCst);
    assert!(
        n <= 2,
        "{n} upstream connections for 100 sequential requests"
    );
    g.shutdown().await;
}

/// The keep-alive race: an origin that closes each connection right after its answer, as
/// one whose idle timeout fires does. Pooled connections it closed must be seen closed, or a
/// GET that met one must go out again on a fresh connection: no client sees a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_origin_closes_after_answering_fail_no_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut b = [0u8; 2048];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&b[..n]),
                    }
                }
                // No `connection: close`: the gateway learns of the close from the socket.
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let g = gateway_to(origin);
    let mut c = Client::connect(addr(&g)).await;
    for i in 0..40 {
        let r = c.get("/x").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert!(accepted.load(Ordering::SeqCst) >= 40);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_limits_open_upstream_connections() {
    let o = Origin::start("a").await;
    let yaml = upstream_yaml_with_service(
        &[o.addr],
        "    keepalive: {max_connections: 2, max_idle: 2}\n",
        "    timeouts: {connect: 5s}\n",
    ) + ROUTE_ALL;
    let g = gateway(&yaml);
    let a = addr(&g);
    let mut tasks = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..8 {
        tasks.push(tokio::spawn(
            async move { get(a, "/delay/100").await.status },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // At most one request per HTTP/1.1 connection: 2 connections, 2 at a time, 4 rounds.
    let most = o.max_active.load(Ordering::SeqCst);
    assert_eq!(most, 2, "requests in flight at the origin: {most}");
    assert!(
        started.elapsed() >= Duration::from_millis(380),
        "{:?}",
        started.elapsed()
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_at_the_connection_cap_ends_in_503() {
    let o = Origin::start("a").await;
    let yaml = upstream_yaml_with_service(
        &[o.addr],
        "    keepalive: {max_connections: 1, max_idle: 1}\n",
        "    timeouts: {connect: 150ms}\n",
    ) + ROUTE_ALL;
    let g = gateway(&yaml);
    let a = addr(&g);
    let busy = tokio::spawn(async move { get(a, "/delay/800").await.status });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let r = get(a, "/").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream connection limit reached");
    // A gateway-made 503 tells the client when to come back.
    assert_eq!(r.headers["retry-after"], "1");
    assert!(
        started.elapsed() >= Duration::from_millis(140),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(busy.await.unwrap(), 200);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_502_and_timeouts_are_504() {
    // A port with nothing listening: bind, note, close.
    let dead = closed_addr();
    let o = Origin::start("a").await;
    let yaml = format!(
        r#"
upstreams:
  - {{name: dead, targets: [{{address: "{dead}"}}]}}
  - {{name: slow, targets: [{{address: "{o}"}}]}}
services:
  - {{name: dead, upstream: dead}}
  - {{name: slow, upstream: slow, timeouts: {{read: 200ms}}}}
  - {{name: total, upstream: slow, timeouts: {{read: 5s, total: 300ms}}}}
routes:
  - {{name: dead, paths: ["/dead"], service: dead}}
  - {{name: slow, paths: ["/delay/*", "/stall"], service: slow}}
  - {{name: total, paths: ["/t/*"], strip_prefix: true, service: total}}
"#,
        o = o.addr
    );
    let g = gateway(&yaml);
    let a = addr(&g);
    let r = get(a, "/dead").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream connection failed");
    assert!(
        !r.text().contains(&dead.to_string()),
        "details leaked: {}",
        r.text()
    );
    let r = get(a, "/delay/1000").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream timed out");
    let r = get(a, "/t/delay/1000").await;
    assert_eq!(r.status, 504);
    // A body that stalls after the head: the client sees the stream cut, not a hang.
    let mut c = Client::connect(a).await;
    let started = std::time::Instant::now();
    let res = c.request("GET", "/stall", &[], b"").await;
    assert!(res.is_err(), "a stalled body should end in an error");
    assert!(started.elapsed() < Duration::from_secs(3));
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_go_to_another_target_when_connect_fails() {
    let dead = closed_addr();
    let o = Origin::start("alive").await;
    let g = gateway(&(upstream_yaml(&[dead, o.addr], "") + ROUTE_ALL));
    let a = addr(&g);
    for _ in 0..10 {
        let r = get(a, "/x").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_across_origins() {
    let (x, y) = (Origin::start("x").await, Origin::start("y").await);
    let yaml = format!(
        "upstreams:\n  - name: up\n    targets: [{{address: \"{}\", weight: 3}}, {{address: \"{}\", weight: 1}}]\nservices:\n  - {{name: svc, upstream: up}}\nroutes:\n  - {{name: r, service: svc}}\nnode: {{workers: 1}}\n",
        x.addr, y.addr
    );
    let config = gatehouse_model::parse_yaml(&yaml).unwrap();
    let g = Gateway::start(
        config,
        &StartOptions {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            workers: 1,
            node_index: 0,
            registry: gatehouse_plugins::registry(),
        },
    )
    .unwrap();
    let mut c = Client::connect(addr(&g)).await;
    let mut xs = 0;
    for _ in 0..400 {
        if c.get("/").await.json()["origin"] == "x" {
            xs += 1;
        }
    }
    assert_eq!(
        xs, 300,
        "smooth weighted round robin with one worker is exact"
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_header_is_sticky() {
    let (x, y, z) = (
        Origin::start("x").await,
        Origin::start("y").await,
        Origin::start("z").await,
    );
    let yaml = upstream_yaml(
        &[x.addr, y.addr, z.addr],
        "    balance: consistent_hash\n    hash_on: header\n    hash_key: X-User\n",
    ) + ROUTE_ALL;
    let g = gateway(&yaml);
    let a = addr(&g);
    let mut seen = std::collections::HashSet::new();
    for user in 0..30 {
        let u = format!("user-{user}");
        let first = get_with(a, "/", &[("x-user", &u)]).await.json()["origin"].clone();
        for _ in 0..3 {
            assert_eq!(
                get_with(a, "/", &[("x-user", &u)]).await.json()["origin"],
                first
            );
        }
        seen.insert(first.to_string());
    }
    assert_eq!(
        seen.len(),
        3,
        "30 users should spread over all 3 targets: {seen:?}"
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_is_proxied_end_to_end() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ws = ws_origin().await;
    let g = gateway(
        &(upstream_yaml(&[ws], "") + "routes:\n  - {name: ws, paths: [\"/ws\"], service: svc}\n"),
    );
    let url = format!("ws://{}/ws", addr(&g));
    let (mut socket, resp) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("ws handshake through gateway");
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        let text = format!("hello {i}");
        socket.send(Message::text(text.clone())).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), text);
    }
    socket.close(None).await.unwrap();
    g.shutdown().await;
}

async fn h2c_get(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<bytes::Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_downstream_and_upstream() {
    let h1 = Origin::start("h1").await;
    let h2 = Origin::start_h2c("h2").await;
    let yaml = format!(
        r#"
upstreams:
  - {{name: one, targets: [{{address: "{}"}}]}}
  - {{name: two, protocol: h2c, targets: [{{address: "{}"}}]}}
services:
  - {{name: one, upstream: one}}
  - {{name: two, upstream: two}}
routes:
  - {{name: one, paths: ["/one/*"], strip_prefix: true, service: one}}
  - {{name: two, paths: ["/two/*"], strip_prefix: true, service: two}}
"#,
        h1.addr, h2.addr
    );
    let g = gateway(&yaml);
    let a = addr(&g);
    // h2c client → HTTP/1.1 upstream
    let (status, j) = h2c_get(a, "/one/x?q=1").await;
    assert_eq!(status, 200);
    assert_eq!(j["origin"], "h1");
    assert_eq!(j["path"], "/x?q=1");
    assert_eq!(j["version"], "HTTP/1.1");
    // h2c client → h2c upstream
    let (status, j) = h2c_get(a, "/two/y").await;
    assert_eq!(status, 200);
    assert_eq!(j["version"], "HTTP/2.0");
    assert_eq!(j["path"], "/y");
    // HTTP/1.1 client → h2c upstream, several requests multiplexed on one upstream connection
    let mut c = Client::connect(a).await;
    for _ in 0..10 {
        assert_eq!(c.get("/two/z").await.json()["origin"], "h2");
    }
    assert!(
        h2.accepted.load(Ordering::SeqCst) <= 2,
        "h2 connections: {}",
        h2.accepted.load(Ordering::SeqCst)
    );
    g.shutdown().await;
}

/// Resident set size of this test process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_flat_memory() {
    use http_body_util::{BodyExt, StreamBody};
    let o = Origin::start("a").await;
    let g = gateway_to(o.addr);
    let a = addr(&g);
    const SIZE: usize = 100 * 1024 * 1024;
    let before = rss();

    // Download 100 MB through the gateway, counting as it arrives.
    let stream = tokio::net::TcpStream::connect(a).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, StreamBody<_>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let empty = futures_util::stream::empty::<
        Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >();
    let req = hyper::Request::builder()
        .uri(format!("/bytes/{SIZE}"))
        .header("host", "h")
        .body(StreamBody::new(empty))
        .unwrap();
    let mut body = sender.send_request(req).await.unwrap().into_body();
    let mut got = 0;
    while let Some(f) = body.frame().await {
        got += f.unwrap().data_ref().map_or(0, |d| d.len());
    }
    assert_eq!(got, SIZE);

    // Upload 100 MB, chunked, through the gateway.
    let stream = tokio::net::TcpStream::connect(a).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let chunk = bytes::Bytes::from(vec![b'y'; 64 * 1024]);
    let frames =
        futures_util::stream::iter((0..SIZE / chunk.len()).map(move |_| {
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk.clone()))
        }));
    let req = hyper::Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "h")
        .body(StreamBody::new(frames))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["body_bytes"], SIZE);

    let grown = rss().saturating_sub(before);
    assert!(
        grown < 40 * 1024 * 1024,
        "memory grew by {} MiB moving 200 MiB",
        grown >> 20
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_nothing_and_bad_reload_is_rejected() {
    let (x, y) = (Origin::start("x").await, Origin::start("y").await);
    let cfg = |targets: &[std::net::SocketAddr]| {
        gatehouse_model::parse_yaml(
            &(upstream_yaml(targets, "")
                + "routes:\n  - {name: r, paths: [\"/*\"], service: svc}\n"),
        )
        .unwrap()
    };
    let g = std::sync::Arc::new(gateway(
        &(upstream_yaml(&[x.addr], "") + "routes:\n  - {name: r, paths: [\"/*\"], service: svc}\n"),
    ));
    let a = addr(&g);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            let mut c = Client::connect(a).await;
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                match c.request("GET", "/x", &[], b"").await {
                    Ok(r) if r.status == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let xy = [x.addr, y.addr];
    for i in 0..20 {
        let targets: &[std::net::SocketAddr] = match i % 3 {
            0 => &xy,
            1 => &xy[1..],
            _ => &xy[..1],
        };
        g.reload(cfg(targets)).expect("valid reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A config that does not compile is refused and the current one keeps serving.
    let mut bad = cfg(&xy);
    bad.routes[0].paths = vec!["~^/(unclosed".into()];
    let errs = g.reload(bad).expect_err("bad config must be rejected");
    assert!(
        errs[0]
            .to_string()
            .starts_with("routes[0].paths[0]: regex does not compile"),
        "{}",
        errs[0]
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed += f;
    }
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during reloads",
        ok + failed
    );
    assert!(ok > 100, "too few requests to mean anything: {ok}");
    assert_eq!(get(a, "/after").await.status, 200);
    let g = std::sync::Arc::try_unwrap(g).ok().unwrap();
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_pools_of_targets_that_stay() {
    let (x, y) = (Origin::start("x").await, Origin::start("y").await);
    let cfg = |targets: &[std::net::SocketAddr]| {
        gatehouse_model::parse_yaml(
            &(upstream_yaml(targets, "    balance: least_conn\n")
                + "routes:\n  - {name: r, service: svc}\nnode: {workers: 1}\n"),
        )
        .unwrap()
    };
    let config = cfg(&[x.addr]);
    let g = Gateway::start(
        config,
        &StartOptions {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            workers: 1,
            node_index: 0,
            registry: gatehouse_plugins::registry(),
        },
    )
    .unwrap();
    let mut c = Client::connect(addr(&g)).await;
    for _ in 0..10 {
        c.get("/").await;
    }
    assert_eq!(x.accepted.load(Ordering::SeqCst), 1);
    g.reload(cfg(&[x.addr, y.addr])).unwrap();
    let mut origins = std::collections::HashSet::new();
    for _ in 0..20 {
        origins.insert(c.get("/").await.json()["origin"].to_string());
    }
    assert_eq!(origins.len(), 2, "the new target gets traffic");
    assert_eq!(
        x.accepted.load(Ordering::SeqCst),
        1,
        "the staying target's pooled connection was dropped"
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_close_after_idle_timeout() {
    let o = Origin::start("a").await;
    let g =
        gateway(&(upstream_yaml(&[o.addr], "    keepalive: {idle_timeout: 300ms}\n") + ROUTE_ALL));
    assert_eq!(get(addr(&g), "/").await.status, 200);
    assert_eq!(o.open.load(Ordering::SeqCst), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while o.open.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        o.open.load(Ordering::SeqCst),
        0,
        "idle connection was not closed"
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let o = Origin::start("a").await;
    let g = gateway_to(o.addr);
    let a = addr(&g);
    let in_flight = tokio::spawn(async move { get(a, "/delay/500").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    g.shutdown().await;
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "an in-flight request was cut by shutdown");
    assert!(
        tokio::net::TcpStream::connect(a).await.is_err(),
        "still accepting after shutdown"
    );
}
