//! A small echo upstream for `gatehouse demo`: answers every request with a JSON description
//! of what it received (method, path, headers, body size), so a user sees what the gateway
//! changed on the way.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::net::TcpListener;

pub async fn start(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let (parts, body) = req.into_parts();
                    let size = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(0);
                    let headers: serde_json::Map<String, serde_json::Value> = parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                        .collect();
                    let json = serde_json::json!({
                        "method": parts.method.as_str(),
                        "path": parts.uri.to_string(),
                        "headers": headers,
                        "body_bytes": size,
                    });
                    let text = serde_json::to_string_pretty(&json).unwrap_or_default() + "\n";
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(text)));
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(local)
}
