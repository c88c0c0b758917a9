//! Hostile HTTP/1.1 input on raw sockets, case by case: request smuggling shapes (CL.TE,
//! TE.CL, obfuscated and duplicated Transfer-Encoding, differing Content-Lengths, signs and
//! spaces), obs-fold, bare CR, bad chunk sizes, CONNECT, Host problems, upgrades with bodies.
//! Each is refused (and nothing reaches the origin) or normalised (the origin gets one
//! unambiguous framing), never forwarded as it came. Every case runs against both HTTP/1.1
//! servers (`node.http1.server: own | hyper`). Then the limits on heads (414, 431) and slow
//! clients (a byte every so often, a stalled body), which end at `node.client_timeout`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An origin that answers 200 to whatever it reads and keeps every byte it was sent.
async fn recording_origin() -> (std::net::SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    keep.lock().unwrap().extend_from_slice(&buf[..n]);
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Gateways to `origin`, one per HTTP/1.1 server, with `node` lines added to each.
fn gateways(origin: std::net::SocketAddr, node: &str) -> Vec<(&'static str, Gateway)> {
    ["own", "hyper"]
        .into_iter()
        .map(|server| {
            let yaml = format!("node:\n  http1:\n    server: {server}\n{node}")
                + &upstream_yaml(&[origin], "")
                + ROUTE_ALL;
            (server, gateway(&yaml))
        })
        .collect()
}

/// What the origin has received once it has received nothing more for 100 ms.
async fn settled(seen: &Mutex<Vec<u8>>) -> usize {
    let mut last = seen.lock().unwrap().len();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = seen.lock().unwrap().len();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Sends `req` on a new connection; the status codes of what comes back within a second.
async fn statuses(a: std::net::SocketAddr, req: &[u8]) -> Vec<u16> {
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out)
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("HTTP/1.1 "))
        .filter_map(|l| l.get(..3)?.parse().ok())
        .collect()
}

const REFUSED: &[(&str, &str, u16)] = &[
    ("CL.TE", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX", 400),
    ("TE.CL", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", 400),
    ("TE xchunked", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    ("TE with a space before the colon", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE twice", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE chunked, identity", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    ("TE gzip, chunked", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE in HTTP/1.0", "POST /a HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("two differing Content-Lengths", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    ("Content-Length list", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    ("Content-Length with a plus", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello", 400),
    ("Content-Length with a minus", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: -5\r\n\r\nhello", 400),
    ("Content-Length with an inner space", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5 5\r\n\r\nhello", 400),
    ("Content-Length in hex", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\nhello", 400),
    ("obs-fold", "GET /a HTTP/1.1\r\nHost: h\r\nX-A: one\r\n two\r\n\r\n", 400),
    ("bare CR", "GET /a HTTP/1.1\rHost: h\r\n\r\n", 400),
    ("chunk size not hex", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size past 64 bits", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n", 400),
    ("CONNECT", "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 405),
    ("Host missing", "GET /a HTTP/1.1\r\n\r\n", 400),
    ("Host twice", "GET /a HTTP/1.1\r\nHost: h\r\nHost: g\r\n\r\n", 400),
    ("an upgrade with a body", "POST /a HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello", 400),
    ("HTTP/1.2", "GET /a HTTP/1.2\r\nHost: h\r\n\r\n", 400),
    ("NUL in a header value", "GET /a HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n", 400),
    ("space in the method", "GE T /a HTTP/1.1\r\nHost: h\r\n\r\n", 400),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_are_refused_and_nothing_reaches_the_origin() {
    let (origin, seen) = recording_origin().await;
    let mut wrong = Vec::new();
    for (server, g) in gateways(origin, "") {
        let a = addr(&g);
        for (name, req, want) in REFUSED {
            // A refused body's head may still be on its way upstream from the case before.
            let before = settled(&seen).await;
            let got = statuses(a, req.as_bytes()).await;
            let sent = seen.lock().unwrap()[before..].to_vec();
            // A body that breaks while it streams: the head has gone upstream, but the exchange
            // is cut before a byte of the bad body, on a connection then closed (not reused).
            let body_error = name.starts_with("chunk size");
            let reached = if body_error {
                sent.windows(5).any(|w| w == b"hello")
            } else {
                !sent.is_empty()
            };
            if got != [*want] || reached {
                wrong.push(format!(
                    "{server}: {name}: answered {got:?} (want [{want}]), reached origin: {reached}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Framing the gateway accepts goes upstream in one normal form: one Content-Length or
/// `transfer-encoding: chunked`, never both, never the client's own spelling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tolerated_framing_goes_upstream_normalised() {
    let (origin, seen) = recording_origin().await;
    let cases: &[(&str, &str, &[u16], &str)] = &[
        ("TE with a tab", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", &[200], "transfer-encoding: chunked\r\n"),
        ("the same Content-Length twice", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", &[200], "content-length: 5\r\n"),
        ("a chunk extension", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n", &[200], "transfer-encoding: chunked\r\n"),
        ("trailers", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", &[200], "transfer-encoding: chunked\r\n"),
        ("bare LF line ends", "GET /a HTTP/1.1\nHost: h\n\n", &[200], "GET /a HTTP/1.1\r\n"),
        ("Expect: 100-continue", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello", &[100, 200], "content-length: 5\r\n"),
        ("absolute-form: its authority is the host", "GET http://other.example/a HTTP/1.1\r\nHost: h\r\n\r\n", &[200], "x-forwarded-host: other.example\r\n"),
    ];
    let mut wrong = Vec::new();
    for (server, g) in gateways(origin, "") {
        let a = addr(&g);
        for (name, req, want, expect) in cases {
            let before = settled(&seen).await;
            let got = statuses(a, req.as_bytes()).await;
            let sent = String::from_utf8_lossy(&seen.lock().unwrap()[before..]).to_lowercase();
            let framings = sent.matches("content-length:").count()
                + sent.matches("transfer-encoding:").count();
            if got != *want
                || !sent.contains(&expect.to_lowercase())
                || framings > 1
                || sent.contains("ext=1")
            {
                wrong.push(format!(
                    "{server}: {name}: answered {got:?}, origin got {sent:?}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Heads over the limits are refused before anything goes upstream: a request line over
/// `max_request_line` with 414, a field over `max_header_size`, a head over `max_head_size`
/// or more than 100 fields with 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_over_the_limits_are_refused() {
    let (origin, seen) = recording_origin().await;
    let g = gateways(origin, "").remove(0).1;
    let a = addr(&g);
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(20_000));
    let big_field = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-A: {}\r\n\r\n",
        "b".repeat(100_000)
    );
    let many: String = (0..150).map(|i| format!("X-{i}: 1\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n");
    let total: String = (0..20)
        .map(|i| format!("X-{i}: {}\r\n", "c".repeat(4000)))
        .collect();
    let total = format!("GET / HTTP/1.1\r\nHost: h\r\n{total}\r\n");
    let mut wrong = Vec::new();
    for (name, req, want) in [
        ("a 20 KB request line", long_target, 414),
        ("a 100 KB header field", big_field, 431),
        ("150 header fields", many, 431),
        ("an 80 KB head", total, 431),
    ] {
        let before = settled(&seen).await;
        let got = statuses(a, req.as_bytes()).await;
        let reached = seen.lock().unwrap().len() > before;
        if got != [want] || reached {
            wrong.push(format!(
                "{name}: answered {got:?} (want [{want}]), reached origin: {reached}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Limits are the config's.
    let g = gateways(origin, "    max_request_line: 1KiB\n").remove(0).1;
    let line = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(2000));
    assert_eq!(statuses(addr(&g), line.as_bytes()).await, [414]);
}

/// A client that sends its head a byte at a time, or stops in the middle of a body, is cut
/// off at `client_timeout`; one that stays idle between requests is closed then too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_end_at_the_client_timeout() {
    use std::time::{Duration, Instant};
    let (origin, _) = recording_origin().await;
    let g = gateways(origin, "  client_timeout: 1s\n").remove(0).1;
    let a = addr(&g);
    // Slowloris: a byte every 300 ms never completes a head within the timeout.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    for b in b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A body that stops: the connection is cut at the timeout.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    let started = Instant::now();
    s.write_all(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nonly this")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // (This origin answers as soon as it has read something, so the answer may be its 200;
    // what matters is that the connection does not stay open waiting for the rest.)
    assert!(!answer.is_empty() || started.elapsed() >= Duration::from_millis(900));
    // Idle between requests: closed after the timeout.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0))), "{n:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// An origin that answers each path with a canned, mostly hostile, response and records
/// which connection served which path, so that reuse after a bad answer shows.
async fn hostile_origin() -> (std::net::SocketAddr, Arc<Mutex<Vec<(usize, String)>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let served = Arc::new(Mutex::new(Vec::new()));
    let keep = served.clone();
    tokio::spawn(async move {
        let mut conn = 0usize;
        while let Ok((mut s, _)) = l.accept().await {
            conn += 1;
            let (id, keep) = (conn, keep.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    keep.lock().unwrap().push((id, path.clone()));
                    let long = format!(
                        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
                        "a".repeat(100_000)
                    );
                    let answer: &[u8] = match path.as_str() {
                        "/both" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                        "/bad-length" => b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello",
                        "/two-lengths" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
                        "/bad-status" => b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
                        "/long-head" => long.as_bytes(),
                        "/second" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
                        "/bad-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n",
                        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                    };
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, served)
}

/// Responses no proxy should pass on: both framings, a broken or doubled Content-Length, a
/// bad status line, a head over 64 KiB. The client gets 502. A second response behind the
/// first, or a broken chunked body, never reaches a client, and no such connection is
/// reused: the next request goes on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_upstream_responses_are_502_and_their_connection_is_not_reused() {
    let (origin, served) = hostile_origin().await;
    let g = gateway_to(origin);
    let a = addr(&g);
    let mut wrong = Vec::new();
    for (path, want) in [
        ("/both", 502),
        ("/bad-length", 502),
        ("/two-lengths", 502),
        ("/bad-status", 502),
        ("/long-head", 502),
        ("/second", 200),
        ("/bad-chunk", 200),
    ] {
        let mut c = Client::connect(a).await;
        let got = c.request("GET", path, &[], b"").await;
        let (status, body) = match &got {
            Ok(r) => (r.status, String::from_utf8_lossy(&r.body).to_string()),
            Err(_) => (0, String::new()),
        };
        // A body broken after its head went out: the client sees the response cut.
        let ok = match path {
            "/bad-chunk" => got.is_err() || status == 200 && body != "okzz",
            _ => status == want && !body.contains("evil") && !body.contains("hello"),
        };
        if !ok {
            wrong.push(format!("{path}: {status} {body:?}"));
        }
        // The next request must not ride the connection the bad answer came on.
        let r = get(a, "/fine").await;
        assert_eq!(r.status, 200, "after {path}");
        let log = served.lock().unwrap().clone();
        let bad_conn = log.iter().rev().find(|(_, p)| p == path).map(|(c, _)| *c);
        let fine_conn = log.last().map(|(c, _)| *c);
        if bad_conn == fine_conn {
            wrong.push(format!("{path}: its connection was reused"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
