//! Edge safety through the real gateway: request paths normalised before routing, Host
//! validated (RFC 9112 §3.2), and what a client may not forge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

/// The status of a raw HTTP/1.1 request for `target`, and the path the origin saw.
async fn send_path(a: std::net::SocketAddr, target: &str) -> (u16, Option<String>) {
    let req = format!("GET {target} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
    parse(&raw(a, req.as_bytes()).await)
}

fn parse(resp: &str) -> (u16, Option<String>) {
    let status = resp
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {resp:?}"));
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let path = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|j| j["path"].as_str().map(str::to_owned));
    (status, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_route_and_go_upstream_in_normal_form_or_are_refused() {
    let o = Origin::start("a").await;
    let yaml = format!(
        r#"{}  - name: based
    url: "http://{}/base"
routes:
  - {{name: public, paths: ["/public/*"], rewrite: "/pub/{{*}}", service: svc}}
  - {{name: admin, paths: ["/admin", "/admin/*"], service: svc}}
  - {{name: b, paths: ["/b/*"], strip_prefix: true, service: based}}
"#,
        upstream_yaml(&[o.addr], ""),
        o.addr
    );
    let g = gateway(&yaml);
    let a = addr(&g);
    let cases: &[(&str, u16, Option<&str>)] = &[
        // Dot segments, plain and percent-encoded, cannot skip the admin route.
        ("/public/../admin", 200, Some("/admin")),
        ("/public/%2e%2e/admin", 200, Some("/admin")),
        ("/public/%2E%2E/admin", 200, Some("/admin")),
        ("/public/.%2e/admin", 200, Some("/admin")),
        ("/public/%2e./admin", 200, Some("/admin")),
        ("/public/x/../../admin/y", 200, Some("/admin/y")),
        ("/public/./x", 200, Some("/pub/x")),
        ("/public/a/..", 200, Some("/pub/")),
        ("/%61dmin", 200, Some("/admin")),
        // Empty segments are merged.
        ("//admin", 200, Some("/admin")),
        ("/public//x", 200, Some("/pub/x")),
        ("/public//../admin", 200, Some("/admin")),
        // The query is not a path.
        ("/admin/../public/x?q=../a", 200, Some("/pub/x?q=../a")),
        // Encoded slashes and backslashes, NUL and broken escapes are refused.
        ("/public/..%2fadmin", 400, None),
        ("/public/..%2Fadmin", 400, None),
        ("/public/..%5cadmin", 400, None),
        ("/public/..%5Cadmin", 400, None),
        ("/public/../admin%2Fx", 400, None),
        ("/public/%00", 400, None),
        ("/public/%zz", 400, None),
        ("/public/%2", 400, None),
        // A service URL's base path cannot be climbed out of.
        ("/b/../../etc/passwd", 404, None),
        ("/b/%2e%2e/%2e%2e/etc/passwd", 404, None),
        ("/b/x/../../../base/secret", 404, None),
        ("/b/ok/../fine", 200, Some("/base/fine")),
        ("/b/ok/%2e%2e/%2e%2e/b/z", 200, Some("/base/z")),
        ("/public/%2e%2e", 404, None),
    ];
    for (target, status, path) in cases {
        let (got, seen) = send_path(a, target).await;
        assert_eq!(got, *status, "{target}");
        if let Some(p) = path {
            assert_eq!(seen.as_deref(), Some(*p), "{target}");
        }
    }
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_targets_of_no_allowed_form_are_refused_not_forwarded_as_slash() {
    let o = Origin::start("a").await;
    let yaml =
        upstream_yaml(&[o.addr], "") + "routes:\n  - {name: r, paths: [\"/*\"], service: svc}\n";
    let g = gateway(&yaml);
    let a = addr(&g);
    let send = |line: &'static str| async move {
        let req = format!("{line} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
        parse(&raw(a, req.as_bytes()).await)
    };
    // Before: `GET x` went upstream as `/`.
    assert_eq!(send("GET x").await.0, 400);
    assert_eq!(send("GET *").await.0, 400, "* is for OPTIONS only");
    assert_eq!(
        send("GET gw.test:80").await.0,
        400,
        "authority-form is for CONNECT only"
    );
    assert_eq!(send("GET /x").await, (200, Some("/x".into())));
    assert_eq!(
        send("GET http://gw.test/y?q=1").await,
        (200, Some("/y?q=1".into()))
    );
    assert_ne!(send("OPTIONS *").await.0, 400);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_client_that_asks_for_keep_alive_gets_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let o = Origin::start("a").await;
    let yaml =
        upstream_yaml(&[o.addr], "") + "routes:\n  - {name: r, paths: [\"/*\"], service: svc}\n";
    let g = gateway(&yaml);
    let mut s = tokio::net::TcpStream::connect(addr(&g)).await.unwrap();
    let ask = b"GET /x HTTP/1.0\r\nHost: gw.test\r\nConnection: keep-alive\r\n\r\n";
    for round in 0..2 {
        s.write_all(ask).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Until the whole body (its Content-Length) is in.
        let complete = |got: &[u8]| {
            let text = String::from_utf8_lossy(got);
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                return false;
            };
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse::<usize>().ok());
            len.is_some_and(|n| body.len() >= n)
        };
        while !complete(&got) {
            let n = tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("round {round}: no complete answer in {got:?}"))
                .unwrap();
            assert!(
                n > 0,
                "round {round}: closed after {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.0 200"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: keep-alive"),
            "{text}"
        );
    }
    // A body of no known length cannot be chunked for HTTP/1.0: it ends with the connection.
    let req = b"GET /bytes/100 HTTP/1.0\r\nHost: gw.test\r\nConnection: keep-alive\r\n\r\n";
    s.write_all(req).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_end(&mut all))
        .await
        .expect("the connection ends with the body")
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "{text}"
    );
    assert!(text.ends_with(&"x".repeat(100)), "{text}");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_can_be_kept_by_policy() {
    let o = Origin::start("a").await;
    let yaml = upstream_yaml(&[o.addr], "")
        + "node: {encoded_slashes: keep}\nroutes:\n  - {name: r, paths: [\"/repos/*\"], service: svc}\n";
    let g = gateway(&yaml);
    let a = addr(&g);
    assert_eq!(
        send_path(a, "/repos/group%2fproject/x").await,
        (200, Some("/repos/group%2Fproject/x".into()))
    );
    // Kept encoded, `..%2F` is one segment, not a climb.
    assert_eq!(
        send_path(a, "/repos/..%2Fsecret").await,
        (200, Some("/repos/..%2Fsecret".into()))
    );
    assert_eq!(send_path(a, "/repos/%00").await.0, 400);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_required_unique_and_valid() {
    let o = Origin::start("a").await;
    let g = gateway_to(o.addr);
    let a = addr(&g);
    let status = |resp: String| parse(&resp).0;
    let send = |head: &'static str| async move {
        let req = format!("{head}Connection: close\r\n\r\n");
        raw(a, req.as_bytes()).await
    };
    for head in [
        "GET / HTTP/1.1\r\n",
        "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n",
        "GET / HTTP/1.1\r\nHost: a b.test\r\n",
        "GET / HTTP/1.1\r\nHost: a.test:99999\r\n",
        "GET / HTTP/1.1\r\nHost: a.test:80x\r\n",
        "GET / HTTP/1.1\r\nHost: a.test/evil\r\n",
        "GET / HTTP/1.1\r\nHost: a@b.test\r\n",
        "GET / HTTP/1.1\r\nHost: [::1\r\n",
    ] {
        let resp = send(head).await;
        assert_eq!(status(resp.clone()), 400, "{head:?}: {resp}");
        assert!(resp.contains("missing or invalid Host header"), "{resp}");
    }
    // HTTP/1.0 may leave Host out.
    assert_eq!(status(send("GET / HTTP/1.0\r\n").await), 200);
    // A valid Host reaches the upstream as X-Forwarded-Host.
    let resp = send("GET / HTTP/1.1\r\nHost: shop.example.com:8080\r\n").await;
    assert_eq!(status(resp.clone()), 200);
    assert!(
        resp.contains(r#""x-forwarded-host":"shop.example.com:8080""#),
        "{resp}"
    );
    // In absolute form the target's authority is the host (RFC 9112 §3.2.2).
    let resp = send("GET http://abs.example.com/x HTTP/1.1\r\nHost: other.example.com\r\n").await;
    assert_eq!(status(resp.clone()), 200);
    assert!(
        resp.contains(r#""x-forwarded-host":"abs.example.com""#),
        "{resp}"
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_the_clients_fault_and_the_connection_is_not_reused() {
    let o = Origin::start("a").await;
    let config = gatehouse_model::parse_yaml(&(upstream_yaml(&[o.addr], "") + ROUTE_ALL)).unwrap();
    // One worker, so every request meets the same upstream pool.
    let opts = StartOptions {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 1,
        node_index: 0,
        registry: gatehouse_plugins::registry(),
    };
    let g = Gateway::start(config, &opts).unwrap();
    let a = addr(&g);
    let head = "POST /x HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let good = format!("{head}5\r\nhello\r\n0\r\n\r\n");
    let (status, _) = parse(&raw(a, good.as_bytes()).await);
    assert_eq!(status, 200);
    assert_eq!(o.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    for body in [
        "5\r\nhello\r\nzz\r\nxx\r\n0\r\n\r\n", // a chunk size that is not hex
        "3\r\nhello\r\n0\r\n\r\n",             // data longer than its size
        "5\nhello\n0\n\n",                     // bare LF line endings
    ] {
        let resp = raw(a, format!("{head}{body}").as_bytes()).await;
        let (status, _) = parse(&resp);
        assert_eq!(status, 400, "{body:?}: {resp}");
        assert!(resp.contains("request body could not be read"), "{resp}");
    }
    // The connections those broken bodies used were not handed back to the pool.
    let (status, _) = parse(&raw(a, good.as_bytes()).await);
    assert_eq!(status, 200);
    assert_eq!(
        o.accepted.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "the first broken body took the pooled connection; each later request needed a new one"
    );
    g.shutdown().await;
}

/// An origin that answers `{"lang":..,"auth":..}` from the request, with
/// `Vary: accept-language`, or 500 while `down` is set.
async fn varying_origin(
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::net::SocketAddr {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let down = down.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let down = down.load(std::sync::atomic::Ordering::SeqCst);
                    async move {
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .map_or("", |v| v.to_str().unwrap_or(""))
                                .to_owned()
                        };
                        let body = serde_json::json!({"lang": h("accept-language"), "auth": h("authorization")});
                        let resp = hyper::Response::builder()
                            .status(if down { 500 } else { 200 })
                            .header("vary", "accept-language")
                            .header("content-type", "application/json")
                            .body(http_body_util::Full::new(bytes::Bytes::from(
                                body.to_string(),
                            )))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_cache_honours_vary_and_never_shares_credentialed_answers() {
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let o = varying_origin(down.clone()).await;
    let yaml = upstream_yaml_with_service(&[o], "", "    retries: 0\n")
        + r#"routes:
  - name: shared
    paths: ["/shared/*"]
    service: svc
    fallback:
      cache: {max_entries: 100, max_age: 1m}
      static: {status: 200, body: 'static'}
  - name: mine
    paths: ["/mine/*"]
    service: svc
    fallback:
      cache: {max_entries: 100, max_age: 1m, by_credentials: true}
      static: {status: 200, body: 'static'}
"#;
    let g = gateway(&yaml);
    let a = addr(&g);
    let ask = |path: &'static str, headers: &'static [(&'static str, &'static str)]| async move {
        let r = get_with(a, path, headers).await;
        (r.status, r.text())
    };
    let en: &[(&str, &str)] = &[("accept-language", "en")];
    let de: &[(&str, &str)] = &[("accept-language", "de")];
    let alice: &[(&str, &str)] = &[("authorization", "Bearer alice")];
    let bob: &[(&str, &str)] = &[("authorization", "Bearer bob")];
    let cookie: &[(&str, &str)] = &[("cookie", "session=alice")];
    // Good answers: kept, except those to requests with credentials on the shared route.
    assert!(ask("/shared/v", en).await.1.contains(r#""lang":"en""#));
    assert!(ask("/shared/v", alice).await.1.contains("alice"));
    assert!(ask("/shared/v", cookie).await.1.contains(r#""auth":"""#));
    assert!(ask("/mine/v", alice).await.1.contains("alice"));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    down.store(true, std::sync::atomic::Ordering::SeqCst);
    // Vary: only a request with the same Accept-Language gets the kept answer.
    let (status, body) = ask("/shared/v", en).await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""lang":"en""#), "{body}");
    assert_eq!(ask("/shared/v", de).await.1, "static");
    // Credentials: never answered from the shared cache, in either direction.
    assert_eq!(ask("/shared/v", alice).await.1, "static");
    assert_eq!(ask("/shared/v", bob).await.1, "static");
    assert_eq!(ask("/shared/v", cookie).await.1, "static");
    // Opted in: keyed on the credential, so alice gets hers and bob nothing of hers.
    assert!(ask("/mine/v", alice).await.1.contains("alice"));
    assert_eq!(ask("/mine/v", bob).await.1, "static");
    g.shutdown().await;
}

/// A gateway trusting (or not) 127.0.0.1 as a proxy, with a per-IP limit of one request.
fn behind(origin: std::net::SocketAddr, trusted: bool) -> Gateway {
    let node = if trusted {
        "node: {trusted_proxies: [\"127.0.0.0/8\"]}\n"
    } else {
        ""
    };
    gateway(
        &(upstream_yaml(&[origin], "")
            + node
            + "routes:
  - {name: open, paths: [\"/open/*\"], service: svc}
  - {name: limited, paths: [\"/limited/*\"], service: svc}
plugins:
  - {name: rate-limit, route: limited, config: {limit: 1, window: 1m, key: [ip]}}
"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let o = Origin::start("a").await;
    // Trusted: the rightmost untrusted X-Forwarded-For entry is the client.
    let g = behind(o.addr, true);
    let a = addr(&g);
    let r = get_with(a, "/open/x", &[("x-forwarded-for", "6.6.6.6, 5.5.5.5")]).await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-real-ip"], "5.5.5.5");
    assert_eq!(h["x-forwarded-for"], "6.6.6.6, 5.5.5.5, 127.0.0.1");
    // The limit counts per real client: two clients behind one proxy are two keys...
    let from = |ip: &'static str| async move {
        get_with(a, "/limited/x", &[("x-forwarded-for", ip)])
            .await
            .status
    };
    assert_eq!(from("5.5.5.5").await, 200);
    assert_eq!(from("4.4.4.4").await, 200);
    // ...and one client is one key, whatever it puts left of itself.
    assert_eq!(from("1.1.1.1, 5.5.5.5").await, 429);
    // A trusted proxy's deadline goes through.
    let r = get_with(a, "/open/x", &[("x-gatehouse-deadline-ms", "250")]).await;
    assert_eq!(r.json()["headers"]["x-gatehouse-deadline-ms"], "250");
    g.shutdown().await;

    // Untrusted (the default): the peer is the client, whatever the headers claim.
    let g = behind(o.addr, false);
    let a = addr(&g);
    let r = get_with(
        a,
        "/open/x",
        &[("x-forwarded-for", "5.5.5.5"), ("x-real-ip", "5.5.5.5")],
    )
    .await;
    assert_eq!(r.json()["headers"]["x-real-ip"], "127.0.0.1");
    assert_eq!(
        get_with(a, "/limited/x", &[("x-forwarded-for", "5.5.5.5")])
            .await
            .status,
        200
    );
    assert_eq!(
        get_with(a, "/limited/x", &[("x-forwarded-for", "4.4.4.4")])
            .await
            .status,
        429
    );
    // A client's deadline is not the upstream's business.
    let r = get_with(a, "/open/x", &[("x-gatehouse-deadline-ms", "1")]).await;
    assert!(
        r.json()["headers"].get("x-gatehouse-deadline-ms").is_none(),
        "{}",
        r.text()
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2c_connections_and_websocket_tunnels_are_closed() {
    use futures_util::{SinkExt, StreamExt};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    let o = Origin::start("a").await;
    let ws = ws_origin().await;
    let yaml = format!(
        "upstreams:
  - {{name: up, targets: [{{address: \"{}\"}}]}}
  - {{name: wsup, targets: [{{address: \"{ws}\"}}]}}
services:
  - {{name: svc, upstream: up}}
  - {{name: ws, upstream: wsup}}
node: {{client_timeout: 300ms, tunnel_idle_timeout: 300ms}}
routes:
  - {{name: ws, paths: [\"/ws\"], service: ws}}
  - {{name: r, paths: [\"/*\"], service: svc}}
",
        o.addr
    );
    let g = gateway(&yaml);
    let a = addr(&g);

    // An h2c connection that sends the preface and then nothing is closed.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let began = Instant::now();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the silent h2c connection stayed open");
    assert!(
        began.elapsed() >= Duration::from_millis(250),
        "{:?}",
        began.elapsed()
    );

    // An h2c connection that made a request and then went quiet is closed too.
    let stream = tokio::net::TcpStream::connect(a).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri(format!("http://{a}/x"))
        .body(http_body_util::Empty::new())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the idle h2c connection stayed open");

    // A WebSocket tunnel works while used, and is closed once idle.
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{a}/ws"))
        .await
        .unwrap();
    for i in 0..3 {
        socket.send(Message::text(format!("m{i}"))).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .unwrap();
        assert!(back.unwrap().is_ok());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let end = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
    match end {
        Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {}
        other => panic!("the idle tunnel stayed open: {other:?}"),
    }
    g.shutdown().await;
}
