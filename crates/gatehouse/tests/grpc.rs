//! gRPC through the gateway with real peers (Python grpcio server and client): all four call
//! kinds over h2c and TLS on both sides, trailers, large messages, errors passed through,
//! the gateway's own answers in gRPC form, `grpc-timeout` as the deadline, retries on gRPC
//! statuses, gRPC health checks, and the status in metrics and the access log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/grpc_peer.rs"]
mod grpc_peer;
#[path = "common/tls_kit.rs"]
mod tls_kit;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use grpc_peer::{call, GrpcServer};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A gateway routing the Echo service to `servers` over h2c; `route_fields` go into the
/// route's mapping, `extra` after the routes.
fn h2c_gateway(servers: &[SocketAddr], route_fields: &str, extra: &str) -> Gateway {
    let targets: Vec<String> = servers
        .iter()
        .map(|a| format!("{{address: \"{a}\"}}"))
        .collect();
    gateway(&format!(
        r#"
upstreams:
  - name: grpc
    protocol: h2c
    targets: [{}]
services:
  - {{name: echo, upstream: grpc}}
  - {{name: nowhere, url: "http://{}"}}
routes:
  - {{name: echo, paths: ["/gatehouse.test.Echo/*"], service: echo{route_fields}}}
{extra}
"#,
        targets.join(", "),
        closed_addr()
    ))
}

async fn all_four_kinds(target: SocketAddr, flags: &[&str]) {
    let r = call(target, "unary", json!([{"message": "hi"}]), flags).await;
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(r["replies"][0]["message"], "echo:hi");
    assert_eq!(
        r["trailers"]["x-trailer"], "unary",
        "trailers pass through: {r}"
    );
    assert!(
        r["replies"][0]["metadata"]["x-forwarded-for"].is_string(),
        "{r}"
    );

    let r = call(
        target,
        "client_stream",
        json!([{"message": "a", "payload_size": 10}, {"message": "b", "payload_size": 20}, {"message": "c"}]),
        flags,
    )
    .await;
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(r["replies"][0]["message"], "echo:a,b,c");
    assert_eq!(r["replies"][0]["received"], 30);
    assert_eq!(r["trailers"]["x-trailer"], "client-stream");

    let r = call(
        target,
        "server_stream",
        json!([{"message": "s", "count": 5}]),
        flags,
    )
    .await;
    assert_eq!(r["code"], "OK", "{r}");
    let indices: Vec<i64> = r["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["index"].as_i64().unwrap())
        .collect();
    assert_eq!(indices, vec![0, 1, 2, 3, 4]);
    assert_eq!(r["trailers"]["x-trailer"], "server-stream");

    let r = call(
        target,
        "bidi",
        json!([{"message": "x"}, {"message": "y"}, {"message": "z"}]),
        flags,
    )
    .await;
    assert_eq!(r["code"], "OK", "{r}");
    let messages: Vec<&str> = r["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, vec!["echo:x", "echo:y", "echo:z"]);
    assert_eq!(r["trailers"]["x-trailer"], "bidi");

    // Large messages both ways: 5 MiB up, 5 MiB down.
    let five = 5 * 1024 * 1024;
    let r = call(
        target,
        "unary",
        json!([{"message": "big", "payload_size": five, "size": five}]),
        flags,
    )
    .await;
    assert_eq!(r["code"], "OK", "{}", r["details"]);
    assert_eq!(r["replies"][0]["received"], five);
    assert_eq!(r["replies"][0]["payload_len"], five);

    // The server's own errors pass through with their message.
    let r = call(
        target,
        "unary",
        json!([{"message": "no", "fail_code": 5}]),
        flags,
    )
    .await;
    assert_eq!(r["code"], "NOT_FOUND", "{r}");
    assert_eq!(r["details"], "failed as asked (5)");
}

#[tokio::test]
async fn every_call_kind_is_proxied_over_h2c() {
    let server = GrpcServer::start(&[]).await;
    let g = h2c_gateway(&[server.addr], "", "");
    all_four_kinds(addr(&g), &[]).await;
}

#[tokio::test]
async fn every_call_kind_is_proxied_over_tls_on_both_sides() {
    let ca = tls_kit::Ca::new("gRPC CA");
    let edge = ca.server(&["grpc.test"]);
    let origin = ca.server(&["origin.test"]);
    let dir = std::env::temp_dir().join(format!("gatehouse-grpc-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key, ca_file) = (dir.join("o.crt"), dir.join("o.key"), dir.join("ca.pem"));
    std::fs::write(&cert, &origin.cert).unwrap();
    std::fs::write(&key, &origin.key).unwrap();
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let server = GrpcServer::start(&["--tls", cert.to_str().unwrap(), key.to_str().unwrap()]).await;
    let yaml = format!(
        r#"
listen:
  - address: "127.0.0.1:0"
    tls: {{}}
certificates:
  - name: edge
    cert: {}    key: {}
upstreams:
  - name: grpc
    scheme: https
    protocol: h2
    tls: {{sni: origin.test, ca: "{}"}}
    targets: [{{address: "{}"}}]
services:
  - {{name: echo, upstream: grpc}}
routes:
  - {{name: echo, paths: ["/gatehouse.test.Echo/*"], service: echo}}
"#,
        tls_kit::yaml_block(&edge.cert, 6),
        tls_kit::yaml_block(&edge.key, 6),
        ca_file.display(),
        server.addr,
    );
    let config = gatehouse_model::parse_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let options = StartOptions {
        listen: vec![],
        ..test_options()
    };
    let g = Gateway::start(config, &options).unwrap();
    let flags = [
        "--tls",
        ca_file.to_str().unwrap(),
        "--authority",
        "grpc.test",
    ];
    all_four_kinds(g.addrs()[0], &flags).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// One gRPC call made by hand over h2c: the answer's status, head and trailers, and how
/// long it took.
async fn raw_call(
    gateway: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    message: &[u8],
) -> (u16, http::HeaderMap, Option<http::HeaderMap>, Duration) {
    let tcp = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut body = BytesMut::new();
    body.put_u8(0);
    body.put_u32(message.len() as u32);
    body.put_slice(message);
    let mut req = http::Request::post(format!("http://gw{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let started = Instant::now();
    let resp = send
        .send_request(req.body(Full::new(body.freeze())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (
        parts.status.as_u16(),
        parts.headers,
        trailers,
        started.elapsed(),
    )
}

/// EchoRequest{sleep_ms: ms}: field 4, varint.
fn sleep_request(ms: u32) -> Vec<u8> {
    let mut out = vec![0x20];
    let mut v = ms;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out
}

#[tokio::test]
async fn the_gateways_own_answers_to_grpc_calls_are_grpc_answers() {
    let server = GrpcServer::start(&[]).await;
    let extra = r#"
consumers:
  - username: app
    credentials: [{type: key-auth, key: "app-key"}]
plugins:
  - {name: rate-limit, route: limited, config: {limit: 1, window: 60s}}
  - {name: key-auth, route: private}
"#;
    let yaml_routes = format!(
        r#"  - {{name: limited, paths: ["/limited.Svc/*"], service: echo}}
  - {{name: private, paths: ["/private.Svc/*"], service: echo}}
  - {{name: down, paths: ["/down.Svc/*"], service: nowhere}}
{extra}"#
    );
    let g = h2c_gateway(&[server.addr], "", &yaml_routes);
    let gw = addr(&g);
    let expect =
        |(status, head, trailers, _): (u16, http::HeaderMap, Option<http::HeaderMap>, Duration),
         code: &str| {
            assert_eq!(status, 200, "{head:?}");
            assert_eq!(head["content-type"], "application/grpc");
            assert_eq!(head["grpc-status"], code, "{head:?}");
            assert!(head.contains_key("grpc-message"));
            assert!(trailers.is_none(), "trailers-only");
        };
    // No route: UNIMPLEMENTED.
    expect(raw_call(gw, "/unknown.Svc/Call", &[], b"").await, "12");
    // Rate limited: RESOURCE_EXHAUSTED (the first call passes to the server, which answers
    // UNIMPLEMENTED itself for the unknown method).
    let first = raw_call(gw, "/limited.Svc/Call", &[], b"").await;
    assert_eq!(first.0, 200);
    expect(raw_call(gw, "/limited.Svc/Call", &[], b"").await, "8");
    // No key: UNAUTHENTICATED.
    expect(raw_call(gw, "/private.Svc/Call", &[], b"").await, "16");
    // The upstream cannot be reached: UNAVAILABLE.
    expect(raw_call(gw, "/down.Svc/Call", &[], b"").await, "14");
    // The call's deadline is the gateway's: DEADLINE_EXCEEDED at 200 ms, not the server's 3 s.
    let answer = raw_call(
        gw,
        "/gatehouse.test.Echo/Unary",
        &[("grpc-timeout", "200m")],
        &sleep_request(3000),
    )
    .await;
    let took = answer.3;
    expect(answer, "4");
    assert!(took < Duration::from_millis(2000), "{took:?}");
    // A plain HTTP client still gets JSON.
    let r = get(gw, "/unknown").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.headers["content-type"], "application/json");
}

#[tokio::test]
async fn calls_are_retried_on_the_grpc_statuses_the_policy_names() {
    let failing = GrpcServer::start(&["--name", "failing", "--fail-all", "14"]).await;
    let good = GrpcServer::start(&["--name", "good"]).await;
    let retrying = h2c_gateway(
        &[failing.addr, good.addr],
        ", retries: 1, retry: {on: [connect_failure], grpc_status: [unavailable], methods: [POST]}",
        "",
    );
    for _ in 0..6 {
        let r = call(addr(&retrying), "unary", json!([{"message": "m"}]), &[]).await;
        assert_eq!(r["code"], "OK", "{r}");
        assert_eq!(r["replies"][0]["message"], "good:m");
    }
    // Without the policy half the calls fail.
    let plain = h2c_gateway(&[failing.addr, good.addr], "", "");
    let mut failed = 0;
    for _ in 0..6 {
        let r = call(addr(&plain), "unary", json!([{"message": "m"}]), &[]).await;
        if r["code"] == "UNAVAILABLE" {
            failed += 1;
        }
    }
    assert!(failed >= 2, "{failed} of 6 failed");
}

#[tokio::test]
async fn grpc_health_checks_take_a_not_serving_target_out() {
    let a = GrpcServer::start(&["--name", "a"]).await;
    let b = GrpcServer::start(&["--name", "b"]).await;
    let g = gateway(&format!(
        r#"
upstreams:
  - name: grpc
    protocol: h2c
    health:
      active: {{type: grpc, interval: 100ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1}}
    targets: [{{address: "{}"}}, {{address: "{}"}}]
services:
  - {{name: echo, upstream: grpc}}
routes:
  - {{name: echo, paths: ["/gatehouse.test.Echo/*"], service: echo}}
"#,
        a.addr, b.addr
    ));
    // a says it is not serving (asked directly, not through the gateway).
    let r = call(
        a.addr,
        "unary",
        json!([{"message": "set-not-serving"}]),
        &[],
    )
    .await;
    assert_eq!(r["code"], "OK");
    let healthy = |g: &Gateway| {
        g.shared()
            .health_of("grpc")
            .unwrap()
            .iter()
            .filter(|(_, h)| h.state == "healthy")
            .map(|(a, _)| a.to_string())
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while healthy(&g) != vec![b.addr.to_string()] {
        assert!(
            Instant::now() < deadline,
            "a was never taken out: {:?}",
            healthy(&g)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..4 {
        let r = call(addr(&g), "unary", json!([{"message": "m"}]), &[]).await;
        assert_eq!(r["replies"][0]["message"], "b:m", "{r}");
    }
    call(a.addr, "unary", json!([{"message": "set-serving"}]), &[]).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while healthy(&g).len() != 2 {
        assert!(Instant::now() < deadline, "a never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn grpc_statuses_are_counted_and_logged() {
    let server = GrpcServer::start(&[]).await;
    let log = std::env::temp_dir().join(format!("gatehouse-grpc-log-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let g = h2c_gateway(
        &[server.addr],
        "",
        &format!(
            "observability:\n  access_log: {{path: \"{}\", fields: [route, status, grpc_status]}}\n",
            log.display()
        ),
    );
    let gw = addr(&g);
    assert_eq!(
        call(gw, "unary", json!([{"message": "ok"}]), &[]).await["code"],
        "OK"
    );
    let r = call(gw, "unary", json!([{"message": "no", "fail_code": 9}]), &[]).await;
    assert_eq!(r["code"], "FAILED_PRECONDITION");
    // Trailers-only answers carry the status in the head; others in the trailers.
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 2 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lines: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["grpc_status"], 0, "{lines:?}");
    assert_eq!(lines[1]["grpc_status"], 9, "{lines:?}");
    assert_eq!(lines[1]["status"], 200);
    let shared = g.shared().clone();
    let mut registry = prometheus_client::registry::Registry::with_prefix("gatehouse");
    registry.register_collector(Box::new(gatehouse_runtime::telemetry::SnapshotCollector(
        move || shared.snapshot.load_full(),
    )));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for code in ["0", "9"] {
        let series = format!(
            "gatehouse_grpc_responses_total{{route=\"echo\",service=\"echo\",grpc_status=\"{code}\"}} 1"
        );
        assert!(text.lines().any(|l| l == series), "{series} in\n{text}");
    }
    let _ = std::fs::remove_file(&log);
    let _ = Bytes::new();
}

/// A gRPC message frame of `message`.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8];
    f.extend_from_slice(&(message.len() as u32).to_be_bytes());
    f.extend_from_slice(message);
    f
}

/// EchoRequest{message, count}: fields 1 (string) and 2 (varint).
fn echo_request(message: &str, count: u8) -> Vec<u8> {
    let mut m = vec![0x0a, message.len() as u8];
    m.extend_from_slice(message.as_bytes());
    if count > 0 {
        m.extend_from_slice(&[0x10, count]);
    }
    m
}

/// The frames of a gRPC-Web body: (flag, payload).
fn web_frames(body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = body;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        out.push((rest[0], rest[5..5 + len].to_vec()));
        rest = &rest[5 + len..];
    }
    assert!(rest.is_empty(), "trailing bytes");
    out
}

/// EchoReply.message (field 1) of a reply message.
fn reply_message(m: &[u8]) -> String {
    assert_eq!(m[0], 0x0a);
    String::from_utf8(m[2..2 + m[1] as usize].to_vec()).unwrap()
}

#[tokio::test]
async fn grpc_web_calls_from_browsers_are_translated_both_ways() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let server = GrpcServer::start(&[]).await;
    let g = h2c_gateway(
        &[server.addr],
        "",
        r#"plugins:
  - name: cors
    route: echo
    config:
      origins: ["https://app.example"]
      methods: [POST]
      headers: [content-type, x-grpc-web, x-user-agent]
      expose_headers: [grpc-status, grpc-message]
"#,
    );
    let mut c = Client::connect(addr(&g)).await;
    let h = |ct: &str| {
        vec![
            ("content-type".to_string(), ct.to_string()),
            ("x-grpc-web".to_string(), "1".to_string()),
            ("origin".to_string(), "https://app.example".to_string()),
        ]
    };
    // The browser's preflight, answered by the route's CORS.
    let pre = c
        .request_owned(
            "OPTIONS",
            "/gatehouse.test.Echo/Unary",
            &[
                ("origin".into(), "https://app.example".into()),
                ("access-control-request-method".into(), "POST".into()),
                (
                    "access-control-request-headers".into(),
                    "content-type,x-grpc-web".into(),
                ),
            ],
            vec![],
        )
        .await;
    assert!(pre.status == 204 || pre.status == 200, "{}", pre.status);
    assert_eq!(
        pre.headers["access-control-allow-origin"],
        "https://app.example"
    );

    // Binary: one message, then the trailers frame.
    let r = c
        .request_owned(
            "POST",
            "/gatehouse.test.Echo/Unary",
            &h("application/grpc-web+proto"),
            grpc_frame(&echo_request("web", 0)),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["content-type"], "application/grpc-web+proto",
        "{:?} {:?}",
        r.headers, r.body
    );
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let frames = web_frames(&r.body);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].0, 0);
    assert_eq!(reply_message(&frames[0].1), "echo:web");
    assert_eq!(frames[1].0, 0x80);
    let trailers = String::from_utf8(frames[1].1.clone()).unwrap();
    assert!(trailers.contains("grpc-status:0\r\n"), "{trailers}");
    assert!(trailers.contains("x-trailer:unary\r\n"), "{trailers}");

    // Text (base64 both ways), a server stream of three.
    let body = b64.encode(grpc_frame(&echo_request("txt", 3)));
    let r = c
        .request_owned(
            "POST",
            "/gatehouse.test.Echo/ServerStream",
            &h("application/grpc-web-text"),
            body.into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/grpc-web-text+proto");
    let decoded = b64.decode(&r.body).unwrap();
    let frames = web_frames(&decoded);
    assert_eq!(frames.len(), 4, "{frames:?}");
    for f in &frames[..3] {
        assert_eq!(reply_message(&f.1), "echo:txt");
    }
    assert!(String::from_utf8_lossy(&frames[3].1).contains("grpc-status:0"));

    // An error of the server (trailers-only): its status is in the head.
    let mut failing = echo_request("x", 0);
    failing.extend_from_slice(&[0x28, 7]); // fail_code = 7
    let r = c
        .request_owned(
            "POST",
            "/gatehouse.test.Echo/Unary",
            &h("application/grpc-web+proto"),
            grpc_frame(&failing),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["grpc-status"], "7");
    // And the gateway's own answers are gRPC-Web too.
    let r = c
        .request_owned(
            "POST",
            "/nothing.Here/Call",
            &h("application/grpc-web+proto"),
            grpc_frame(b""),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["grpc-status"], "12");
    assert_eq!(
        r.headers["content-type"], "application/grpc-web+proto",
        "{:?}",
        r.headers
    );
}

fn library_gateway(server: SocketAddr) -> Gateway {
    let descriptor = grpc_peer::stubs().join("library.pb");
    gateway(&format!(
        r#"
upstreams:
  - name: lib
    protocol: h2c
    targets: [{{address: "{server}"}}]
services:
  - {{name: lib, upstream: lib}}
routes:
  - name: library
    paths: ["/v1/*"]
    service: lib
    grpc_transcode:
      descriptor: "{}"
      mappings:
        - {{method: gatehouse.library.Library/Search, post: "/v1/search", body: "*"}}
"#,
        descriptor.display()
    ))
}

#[tokio::test]
async fn http_json_is_transcoded_to_grpc_and_back() {
    let server = GrpcServer::start(&[]).await;
    let g = library_gateway(server.addr);
    let mut c = Client::connect(addr(&g)).await;
    let json_h = [("content-type".to_string(), "application/json".to_string())];

    // A path template with a nested field; nested messages, an enum, repeated fields back.
    let r = c.get("/v1/shelves/main/books/1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(
        r.json(),
        json!({"id": "1", "title": "Dune", "genre": "FICTION", "tags": ["sand", "spice"],
               "author": {"name": "Frank Herbert", "born": 1920}})
    );
    // gRPC errors map to HTTP statuses.
    let r = c.get("/v1/shelves/main/books/999").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"code": 5, "message": "no book 999 on shelf main"})
    );
    // A body field, with the path filling the rest.
    let book = json!({"title": "Contact", "genre": "SCIENCE", "tags": ["radio"],
                      "author": {"name": "Carl Sagan", "born": 1934}});
    let r = c
        .request_owned(
            "POST",
            "/v1/shelves/main/books",
            &json_h,
            book.to_string().into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "102");
    assert_eq!(r.json()["tags"], json!(["radio"]));
    // Query arguments: a repeated enum and a scalar.
    let r = c
        .get("/v1/shelves/main/books?genres=SCIENCE&page_size=5")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = r.json();
    let titles: Vec<&str> = listed["books"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, vec!["Cosmos", "Contact"]);
    // A method mapped in the config, the body as the whole message.
    let r = c
        .request_owned(
            "POST",
            "/v1/search",
            &json_h,
            br#"{"query": "dun"}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["books"][0]["title"], "Dune");
    // The server's INVALID_ARGUMENT is a 400.
    let r = c
        .request_owned(
            "POST",
            "/v1/shelves/main/books",
            &json_h,
            br#"{"title": ""}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], 3);

    // What cannot be made a message: 400 naming the field.
    let r = c
        .request_owned(
            "POST",
            "/v1/shelves/main/books",
            &json_h,
            br#"{"titel": "x"}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error"].as_str().unwrap().contains("titel"),
        "{}",
        r.text()
    );
    let r = c
        .request_owned(
            "POST",
            "/v1/search",
            &json_h,
            br#"{"author": {"born": "old"}}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["field"], "author.born", "{}", r.text());
    let r = c
        .request_owned("POST", "/v1/search", &json_h, b"{".to_vec())
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = c.get("/v1/shelves/main/books/abc").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["field"], "book.id", "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("int64"));
    let r = c.get("/v1/shelves/main/books?genres=POETRY").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["field"], "genres");
    // No method for this HTTP method and path.
    let r = c
        .request_owned("DELETE", "/v1/shelves/main", &[], vec![])
        .await;
    assert_eq!(r.status, 404);
}

#[test]
fn a_transcoding_route_without_a_usable_descriptor_is_refused() {
    let yaml = format!(
        r#"
upstreams:
  - {{name: lib, protocol: h2c, targets: [{{address: "127.0.0.1:1"}}]}}
  - {{name: plain, targets: [{{address: "127.0.0.1:1"}}]}}
services:
  - {{name: lib, upstream: lib}}
  - {{name: plain, upstream: plain}}
routes:
  - {{name: a, paths: ["/a/*"], service: lib, grpc_transcode: {{descriptor: /nonexistent.pb}}}}
  - {{name: b, paths: ["/b/*"], service: plain, grpc_transcode: {{descriptor: "{}"}}}}
  - name: c
    paths: ["/c/*"]
    service: lib
    grpc_transcode:
      descriptor: "{}"
      mappings: [{{method: gatehouse.library.Library/Nope, get: /c}}]
"#,
        grpc_peer::stubs().join("library.pb").display(),
        grpc_peer::stubs().join("library.pb").display(),
    );
    let config = gatehouse_model::parse_yaml(&yaml).unwrap();
    let err = match Gateway::start(config, &test_options()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started"),
    };
    assert!(
        err.contains("routes[0].grpc_transcode.descriptor: cannot read \"/nonexistent.pb\""),
        "{err}"
    );
    assert!(
        err.contains("routes[1].grpc_transcode: the service's upstream must speak gRPC"),
        "{err}"
    );
    assert!(
        err.contains(
            "routes[2].grpc_transcode.mappings[0]: no method \"gatehouse.library.Library/Nope\""
        ),
        "{err}"
    );
}
