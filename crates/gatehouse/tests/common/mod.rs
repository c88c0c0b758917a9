//! Test kit: real origins on 127.0.0.1:0 and an in-process gateway, plus small HTTP clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

pub use gatehouse_proxy::{Gateway, StartOptions};

mod scripted;
#[allow(unused_imports)]
pub use scripted::{Script, Scripted};

/// An origin server. Paths it understands:
/// - `/delay/MS/...`: waits MS milliseconds before answering;
/// - `/bytes/N`: answers N bytes, streamed in 64 KiB chunks;
/// - `/stall`: sends the head and one chunk, then nothing;
/// - anything else: a JSON echo (`origin`, `method`, `path`, `headers`, `body_bytes`).
pub struct Origin {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Connections open right now.
    pub open: Arc<AtomicUsize>,
    pub max_open: Arc<AtomicUsize>,
    /// The most requests it was handling at once.
    pub max_active: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    pub async fn start(name: &'static str) -> Origin {
        Self::start_with(name, false).await
    }

    pub async fn start_h2c(name: &'static str) -> Origin {
        Self::start_with(name, true).await
    }

    async fn start_with(name: &'static str, h2: bool) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let max_open = Arc::new(AtomicUsize::new(0));
        let max_active = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let (a, o, m) = (accepted.clone(), open.clone(), max_open.clone());
        let (act, max_act) = (active.clone(), max_active.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                let o = o.clone();
                let (act, max_act) = (act.clone(), max_act.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (act, max_act) = (act.clone(), max_act.clone());
                        async move {
                            let now = act.fetch_add(1, Ordering::SeqCst) + 1;
                            max_act.fetch_max(now, Ordering::SeqCst);
                            let r = answer(name, req).await;
                            act.fetch_sub(1, Ordering::SeqCst);
                            r
                        }
                    });
                    let io = TokioIo::new(stream);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Origin {
            addr,
            accepted,
            open,
            max_open,
            max_active,
            task,
        }
    }
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn answer(
    name: &'static str,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<OriginBody>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    let mut rest = path.as_str();
    if let Some(r) = rest.strip_prefix("/delay/") {
        let (ms, tail) = r.split_once('/').unwrap_or((r, ""));
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        rest = if tail.is_empty() { "/" } else { tail };
        let _ = rest;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let total: usize = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(total, move |left| {
            let chunk = chunk.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let n = left.min(chunk.len());
                Some((
                    Ok::<_, std::convert::Infallible>(Frame::data(chunk.slice(..n))),
                    left - n,
                ))
            }
        });
        return Ok(hyper::Response::new(StreamBody::new(stream).boxed()));
    }
    if path == "/stall" {
        let stream = futures_util::stream::unfold(0u8, |state| async move {
            if state == 0 {
                Some((
                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"first"))),
                    1,
                ))
            } else {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                None
            }
        });
        return Ok(hyper::Response::new(StreamBody::new(stream).boxed()));
    }
    let (parts, body) = req.into_parts();
    let mut size = 0usize;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => size += f.data_ref().map_or(0, |d| d.len()),
            Err(_) => break,
        }
    }
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let json = serde_json::json!({
        "origin": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(""),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": size,
    });
    let mut resp = hyper::Response::new(Full::new(Bytes::from(json.to_string())).boxed());
    resp.headers_mut()
        .insert("connection", http::HeaderValue::from_static("keep-alive"));
    resp.headers_mut()
        .insert("x-hop", http::HeaderValue::from_static("secret"));
    resp.headers_mut()
        .insert("keep-alive", http::HeaderValue::from_static("timeout=30"));
    Ok(resp)
}

/// How tests start gateways: on 127.0.0.1:0 with two workers and the stock plugins.
pub fn test_options() -> StartOptions {
    StartOptions {
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        workers: 2,
        node_index: 0,
        registry: gatehouse_plugins::registry(),
    }
}

/// Starts a gateway in-process from YAML, on 127.0.0.1:0 with two workers.
pub fn gateway(yaml: &str) -> Gateway {
    let config = match gatehouse_model::parse_yaml(yaml) {
        Ok(c) => c,
        Err(e) => panic!("test config invalid:\n{e}"),
    };
    match Gateway::start(config, &test_options()) {
        Ok(g) => g,
        Err(e) => panic!("gateway did not start: {e}"),
    }
}

pub fn addr(g: &Gateway) -> SocketAddr {
    g.addrs()[0]
}

/// A response, fully read.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive HTTP/1.1 client on one connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    /// Bodies left unread by [`Client::head_only`], open until the client is dropped.
    unread: Vec<Incoming>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect to gateway");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client {
            sender,
            addr,
            unread: Vec::new(),
        }
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &'static [u8],
    ) -> Result<Reply, hyper::Error> {
        let mut b = hyper::Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header("host", self.addr.to_string());
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(Bytes::from_static(body)))
            .expect("request");
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    /// A request with headers and an owned body.
    pub async fn request_owned(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Reply {
        let mut b = hyper::Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header("host", self.addr.to_string());
        }
        for (k, v) in headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b.body(Full::new(Bytes::from(body))).expect("request");
        self.sender.ready().await.expect("ready");
        let resp = self.sender.send_request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    /// A request with an owned body (e.g. JSON for the admin API).
    pub async fn send(&mut self, method: &str, path: &str, body: String) -> Reply {
        self.send_as(None, method, path, body).await
    }

    /// [`Client::send`] with an admin token.
    pub async fn send_as(
        &mut self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: String,
    ) -> Reply {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(t) = token {
            headers.push(("authorization".into(), format!("Bearer {t}")));
        }
        self.request_owned(method, path, &headers, body.into_bytes())
            .await
    }

    /// Sends a GET and returns the status once the head arrives, leaving the body unread and
    /// the exchange open until the client is dropped.
    pub async fn head_only(&mut self, path: &str) -> u16 {
        let req = hyper::Request::builder()
            .uri(path)
            .header("host", self.addr.to_string())
            .body(Full::new(Bytes::new()))
            .expect("request");
        self.sender.ready().await.expect("ready");
        let resp = self.sender.send_request(req).await.expect("response head");
        let status = resp.status().as_u16();
        self.unread.push(resp.into_body());
        status
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.request("GET", path, &[], b"")
            .await
            .expect("request failed")
    }
}

/// One request on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    Client::connect(addr).await.get(path).await
}

pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    Client::connect(addr)
        .await
        .request("GET", path, headers, b"")
        .await
        .expect("request failed")
}

/// Writes raw bytes and reads until the server closes or `limit` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A WebSocket echo origin.
pub async fn ws_origin() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// One route sending everything to service `svc`.
pub const ROUTE_ALL: &str = "routes:\n  - {name: r, service: svc}\n";

/// A gateway with one route to one origin.
pub fn gateway_to(origin: SocketAddr) -> Gateway {
    gateway(&(upstream_yaml(&[origin], "") + ROUTE_ALL))
}

/// The upstream/service block most tests use: one upstream `up` over `targets`, with
/// `extra` lines in the upstream, and service `svc` on it.
pub fn upstream_yaml(targets: &[SocketAddr], extra: &str) -> String {
    upstream_yaml_with_service(targets, extra, "")
}

/// [`upstream_yaml`] with `service_extra` lines (e.g. timeouts) in the service.
pub fn upstream_yaml_with_service(
    targets: &[SocketAddr],
    extra: &str,
    service_extra: &str,
) -> String {
    let list: Vec<String> = targets
        .iter()
        .map(|a| format!("{{address: \"{a}\"}}"))
        .collect();
    format!(
        "upstreams:\n  - name: up\n    targets: [{}]\n{extra}services:\n  - name: svc\n    upstream: up\n{service_extra}",
        list.join(", ")
    )
}

/// An origin the test can steer and kill. `/health` answers 200 `ok` while `healthy`, else
/// 503; every other path answers 200 `{"origin": name, "n": N}`, except that with
/// `fail_every` = k > 0 every k-th request gets a 503. `kill` closes the listener and every
/// open connection at once, as a crashed process would.
pub struct Steered {
    pub addr: SocketAddr,
    pub healthy: Arc<std::sync::atomic::AtomicBool>,
    pub fail_every: Arc<AtomicUsize>,
    /// Non-health requests answered (any status).
    pub served: Arc<AtomicUsize>,
    /// Methods and paths of non-health requests, in order.
    pub seen: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Steered {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Steered {
    pub async fn start(name: &'static str) -> Steered {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name).await
    }

    /// Starts on `addr` (e.g. the address of one that was killed), retrying the bind briefly.
    pub async fn start_on(addr: SocketAddr, name: &'static str) -> Steered {
        let mut listener = None;
        for _ in 0..50 {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let listener = listener.expect("bind steered origin");
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let fail_every = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (h, f, s, log) = (
            healthy.clone(),
            fail_every.clone(),
            served.clone(),
            seen.clone(),
        );
        let task = tokio::spawn(async move {
            // Connection tasks live in the set, so aborting this task closes them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (h, f, s, log) = (h.clone(), f.clone(), s.clone(), log.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let (h, f, s, log) = (h.clone(), f.clone(), s.clone(), log.clone());
                        async move {
                            let resp = |status: u16, body: String| {
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::from(body)))
                                        .unwrap(),
                                )
                            };
                            if req.uri().path() == "/health" {
                                return if h.load(Ordering::SeqCst) {
                                    resp(200, "ok".into())
                                } else {
                                    resp(503, "down".into())
                                };
                            }
                            log.lock().unwrap().push(format!(
                                "{} {}",
                                req.method(),
                                req.uri().path()
                            ));
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let n = s.fetch_add(1, Ordering::SeqCst) + 1;
                            let k = f.load(Ordering::SeqCst);
                            if k > 0 && n % k == 0 {
                                return resp(503, format!("{{\"origin\":\"{name}\",\"n\":{n}}}"));
                            }
                            let len = body.map(|b| b.len()).unwrap_or(0);
                            resp(
                                200,
                                format!("{{\"origin\":\"{name}\",\"n\":{n},\"body_bytes\":{len}}}"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Steered {
            addr,
            healthy,
            fail_every,
            served,
            seen,
            task,
        }
    }

    /// Closes the listener and every connection; returns the address to restart on.
    pub async fn kill(self) -> SocketAddr {
        let addr = self.addr;
        self.task.abort();
        // Let the runtime run the abort (sockets close when the tasks drop).
        tokio::time::sleep(Duration::from_millis(20)).await;
        addr
    }
}

/// A loopback address nothing listens on (bound, then let go): connecting is refused.
pub fn closed_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr")
}

/// The data plane's metrics as `/metrics` shows them.
pub fn scrape(g: &Gateway) -> String {
    let shared = g.shared().clone();
    let mut registry = prometheus_client::registry::Registry::with_prefix("gatehouse");
    registry.register_collector(Box::new(gatehouse_runtime::telemetry::SnapshotCollector(
        move || shared.snapshot.load_full(),
    )));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
    out
}
