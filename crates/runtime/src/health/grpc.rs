//! The standard gRPC health check (`grpc.health.v1.Health/Check`) as an active probe: one
//! unary call over HTTP/2 (h2c, or h2 over the target's TLS connector), healthy when the
//! answer is SERVING with `grpc-status: 0`.

use crate::upstream::TargetState;
use bytes::{BufMut, Bytes, BytesMut};
use gatehouse_model::ActiveCheck;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`; status 1 is SERVING.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

const SERVING: i32 = 1;

/// The largest answer read: a health answer is a few bytes.
const MAX_ANSWER: usize = 4096;

pub(super) async fn probe(target: &TargetState, check: &ActiveCheck) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + super::PROBE_DIAL_LIMIT;
    let stream = target
        .dial(deadline)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let msg = HealthCheckRequest {
        service: check.grpc_service.clone(),
    }
    .encode_to_vec();
    // The gRPC frame: not compressed, the length, the message.
    let mut body = BytesMut::with_capacity(5 + msg.len());
    body.put_u8(0);
    body.put_u32(msg.len() as u32);
    body.put_slice(&msg);
    let scheme = match target.connector {
        crate::connector::Connector::Tcp => "http",
        crate::connector::Connector::Tls(_) => "https",
    };
    let host = check.host.as_deref().unwrap_or(&target.address);
    let req = http::Request::post(format!("{scheme}://{host}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "gatehouse-health-check")
        .body(Full::new(body.freeze()))
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("status {}", resp.status().as_u16()));
    }
    let head_status = grpc_status(resp.headers());
    let mut body = resp.into_body();
    let mut data = BytesMut::new();
    let mut trailer_status = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        match frame.into_data() {
            Ok(d) => {
                data.extend_from_slice(&d);
                if data.len() > MAX_ANSWER {
                    return Err("answer too large for a health check".into());
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailer_status = grpc_status(&t);
                }
            }
        }
    }
    match trailer_status.or(head_status) {
        Some(0) => {}
        Some(code) => return Err(format!("grpc-status {code}")),
        None => return Err("no grpc-status".into()),
    }
    let data: Bytes = data.freeze();
    let msg = data.get(5..).ok_or_else(|| "empty answer".to_string())?;
    let answer =
        HealthCheckResponse::decode(msg).map_err(|e| format!("undecodable answer: {e}"))?;
    if answer.status == SERVING {
        Ok(())
    } else {
        Err(format!("health status {} (not SERVING)", answer.status))
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}
