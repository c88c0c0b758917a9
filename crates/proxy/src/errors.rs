//! The gateway's own responses (404, 502, 504, ...): a small JSON body naming the problem and
//! the request id. Details (addresses, OS errors) go to the log only, never to the client.

use crate::body::RespBody;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

static JSON: HeaderValue = HeaderValue::from_static("application/json");

/// What went wrong, as the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    NoRoute,
    BadFraming,
    /// The path is refused by the normalisation policy (`gatehouse_runtime::path`).
    BadPath,
    /// A request-target of no form RFC 9112 §3.2 allows for its method (`GET x`).
    BadTarget,
    /// CONNECT: the gateway is not a forward proxy.
    ConnectRefused,
    /// No Host on an HTTP/1.1 request, more than one, or one that is not a valid host.
    BadHost,
    NoTarget,
    /// Health checks found every target down and the upstream fails fast.
    AllTargetsDown,
    /// The route's circuit breaker is open.
    BreakerOpen,
    ConnectFailed,
    ConnectTimeout,
    UpstreamTimeout,
    UpstreamError,
    ConnectionLimit,
    BodyTooLarge,
    /// The client's body broke off while the gateway read it (to keep it for a retry).
    ClientBody,
    ClientBodyTimeout,
    /// A plain-HTTP request to an HTTPS-only route: the route's `https_redirect_status_code`
    /// (426, 403, or a redirect, which `pipeline::https_required` answers with a Location).
    HttpsRequired(u16),
}

impl Failure {
    pub fn status(self) -> StatusCode {
        match self {
            Failure::NoRoute => StatusCode::NOT_FOUND,
            Failure::ConnectRefused => StatusCode::METHOD_NOT_ALLOWED,
            Failure::BadFraming | Failure::BadPath | Failure::BadTarget | Failure::BadHost => {
                StatusCode::BAD_REQUEST
            }
            Failure::NoTarget
            | Failure::AllTargetsDown
            | Failure::BreakerOpen
            | Failure::ConnectionLimit => StatusCode::SERVICE_UNAVAILABLE,
            Failure::ConnectFailed | Failure::UpstreamError => StatusCode::BAD_GATEWAY,
            Failure::ConnectTimeout | Failure::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Failure::ClientBody => StatusCode::BAD_REQUEST,
            Failure::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Failure::HttpsRequired(code) => {
                StatusCode::from_u16(code).unwrap_or(StatusCode::UPGRADE_REQUIRED)
            }
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Failure::NoRoute => "no route",
            Failure::BadFraming => "ambiguous request framing",
            Failure::BadPath => "invalid request path",
            Failure::BadTarget => {
                "invalid request target: expected /path, an absolute URL, or * for OPTIONS"
            }
            Failure::BadHost => "missing or invalid Host header",
            Failure::ConnectRefused => {
                "CONNECT is not supported: this gateway is not a forward proxy"
            }
            Failure::NoTarget => "no upstream target available",
            Failure::AllTargetsDown => "no healthy upstream target",
            Failure::BreakerOpen => "circuit breaker open",
            Failure::ConnectFailed => "upstream connection failed",
            Failure::ConnectTimeout => "upstream connect timed out",
            Failure::UpstreamTimeout => "upstream timed out",
            Failure::UpstreamError => "upstream error",
            Failure::ConnectionLimit => "upstream connection limit reached",
            Failure::BodyTooLarge => "request body too large",
            Failure::ClientBody => "request body could not be read",
            Failure::ClientBodyTimeout => "request body not received in time",
            Failure::HttpsRequired(_) => "HTTPS required",
        }
    }
}

pub fn respond(failure: Failure, request_id: &HeaderValue) -> Response<RespBody> {
    let status = failure.status();
    let body = error_body(failure.message(), status, request_id);
    let mut resp = Response::new(RespBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, JSON.clone());
    resp.headers_mut()
        .insert(crate::headers::X_REQUEST_ID.clone(), request_id.clone());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        // Every 503 the gateway makes is a passing state (no healthy target, a cap reached):
        // a well-behaved client waits a moment before it tries again. An open breaker sets
        // its own, longer value over this one.
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// The gateway's error body: `{"error":..,"status":..,"request_id":..}` and a newline.
pub fn error_body(message: &str, status: StatusCode, request_id: &HeaderValue) -> Bytes {
    // The id is ours (a UUID) or the client's header value; a client value is only echoed if
    // it is plain, so the body stays valid JSON without an escaping pass.
    let id = request_id
        .to_str()
        .ok()
        .filter(|s| {
            s.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        })
        .unwrap_or("-");
    let message = serde_json::to_string(message).unwrap_or_else(|_| "\"error\"".into());
    Bytes::from(format!(
        "{{\"error\":{message},\"status\":{},\"request_id\":\"{id}\"}}\n",
        status.as_u16(),
    ))
}
