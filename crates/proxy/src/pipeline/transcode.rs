//! The transcoding stage of routes with `grpc_transcode`: the HTTP/JSON request made the
//! gRPC call of its binding (after the plugins ran, so authentication sees the original
//! request), and the gRPC answer, read whole, made JSON with an HTTP status.

use super::request_body::{self, ClientBody};
use super::state::{RequestState, Routed};
use crate::body::RespBody;
use crate::errors::error_body;
use bytes::Bytes;
use gatehouse_runtime::transcode::{Binding, Transcoder};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;

/// What the answer needs of the request.
pub struct Pending<'s> {
    t: &'s Transcoder,
    binding: &'s Binding,
}

/// Makes the request its gRPC call; `Err` is the answer when it cannot be (no binding: 404;
/// a field that does not fit: 400 naming it).
pub async fn request<'s>(
    st: &mut RequestState<'_>,
    routed: &mut Routed<'s>,
    t: &'s Transcoder,
    parts: &mut http::request::Parts,
    body: ClientBody,
) -> Result<(ClientBody, Pending<'s>), Response<RespBody>> {
    let Some((binding, vars)) = t.find(&parts.method, parts.uri.path()) else {
        return Err(json(
            st,
            StatusCode::NOT_FOUND,
            "no gRPC method is mapped to this method and path",
            None,
        ));
    };
    let bytes = match body {
        ClientBody::Read(b) => b,
        ClientBody::Prefixed(..) => return Err(st.fail(crate::errors::Failure::BodyTooLarge)),
        ClientBody::Streaming(incoming) => {
            let read = routed.service.timeouts.read;
            match request_body::read(incoming, t.max_body, read).await {
                Ok(b) => b,
                Err(failure) => return Err(st.fail(failure)),
            }
        }
    };
    let frame = t
        .request(binding, &vars, parts.uri.query(), &bytes)
        .map_err(|bad| {
            json(
                st,
                StatusCode::BAD_REQUEST,
                &bad.message,
                bad.field.as_deref(),
            )
        })?;
    parts.method = http::Method::POST;
    parts.uri = http::Uri::from(binding.grpc_path.clone());
    routed.new_path = None;
    let h = &mut parts.headers;
    h.remove(CONTENT_LENGTH);
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(TE, HeaderValue::from_static("trailers"));
    Ok((ClientBody::Read(frame), Pending { t, binding }))
}

/// The client's answer for the upstream's gRPC answer (the gateway's own answers pass).
pub async fn response(p: Pending<'_>, resp: Response<RespBody>) -> Response<RespBody> {
    if resp
        .extensions()
        .get::<crate::grpc::FromUpstream>()
        .is_none()
    {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let limit = usize::try_from(p.t.max_body).unwrap_or(usize::MAX);
    let collected = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "gRPC answer not read for transcoding");
            let (status, body) = (StatusCode::BAD_GATEWAY, "upstream answer unreadable");
            return plain_json(parts, status, error_json(14, body));
        }
    };
    let trailers = collected.trailers().cloned();
    let data = collected.to_bytes();
    let from = trailers.as_ref().unwrap_or(&parts.headers);
    let code = crate::grpc::status_of(from)
        .or_else(|| crate::grpc::status_of(&parts.headers))
        .map(u32::from);
    let message = from
        .get(&crate::grpc::GRPC_MESSAGE)
        .or_else(|| parts.headers.get(&crate::grpc::GRPC_MESSAGE))
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default();
    let (status, body) = p.t.response(p.binding, code, &message, &data);
    for h in [&crate::grpc::GRPC_STATUS, &crate::grpc::GRPC_MESSAGE] {
        parts.headers.remove(h);
    }
    parts.headers.remove("grpc-accept-encoding");
    plain_json(parts, status, body)
}

fn plain_json(
    mut parts: http::response::Parts,
    status: StatusCode,
    body: Bytes,
) -> Response<RespBody> {
    parts.status = status;
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.extensions.remove::<crate::grpc::FromUpstream>();
    Response::from_parts(parts, RespBody::full(body))
}

fn error_json(code: u32, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({"code": code, "message": message}).to_string() + "\n")
}

/// The gateway's JSON refusal, with the field at fault when there is one.
fn json(
    st: &RequestState<'_>,
    status: StatusCode,
    message: &str,
    field: Option<&str>,
) -> Response<RespBody> {
    let body = match field {
        None => error_body(message, status, &st.request_id),
        Some(f) => Bytes::from(
            serde_json::json!({
                "error": message,
                "field": f,
                "status": status.as_u16(),
            })
            .to_string()
                + "\n",
        ),
    };
    let mut resp = Response::new(RespBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(crate::headers::X_REQUEST_ID.clone(), st.request_id.clone());
    resp
}

/// `grpc-message` is percent-encoded.
fn percent_decode(v: &[u8]) -> String {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let hex = (v[i] == b'%')
            .then(|| v.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(v[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
