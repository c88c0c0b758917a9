//! gRPC at the gateway: telling gRPC calls apart, their deadline (`grpc-timeout`), their
//! status (`grpc-status`), and the gateway's own answers to them in gRPC's form: HTTP 200
//! with `grpc-status` and `grpc-message` in the head and no body, never a JSON error.

use crate::body::RespBody;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use std::time::Duration;

pub static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Which gRPC framing a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `application/grpc`, `application/grpc+proto`...
    Grpc,
    /// `application/grpc-web` (binary frames).
    Web,
    /// `application/grpc-web-text` (base64 frames).
    WebText,
}

impl Kind {
    /// The content type the gateway's own answers carry.
    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Kind::Grpc => "application/grpc",
            Kind::Web => "application/grpc-web+proto",
            Kind::WebText => "application/grpc-web-text+proto",
        })
    }
}

/// The gRPC kind of a request, from its content type; `None` for anything else.
pub fn kind(headers: &HeaderMap) -> Option<Kind> {
    let ct = headers.get(CONTENT_TYPE)?.as_bytes();
    let rest = ct.strip_prefix(b"application/grpc")?;
    if rest.is_empty() || rest.starts_with(b"+") || rest.starts_with(b";") {
        Some(Kind::Grpc)
    } else if let Some(web) = rest.strip_prefix(b"-web") {
        if web.starts_with(b"-text") {
            Some(Kind::WebText)
        } else {
            Some(Kind::Web)
        }
    } else {
        None
    }
}

/// The call's deadline from `grpc-timeout` (1 to 8 digits and a unit: H, M, S, m, u, n);
/// `None` when absent or malformed (a malformed one is ignored, as gRPC servers do).
pub fn deadline(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(&GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n.checked_mul(3600)?),
        b'M' => Duration::from_secs(n.checked_mul(60)?),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-status` in `headers` (a head or trailers).
pub fn status_of(headers: &HeaderMap) -> Option<u8> {
    let v = headers.get(&GRPC_STATUS)?;
    std::str::from_utf8(v.as_bytes()).ok()?.parse().ok()
}

/// The gRPC status the gateway answers a call with in place of HTTP `status`: the gRPC
/// spec's HTTP mapping, except that the gateway's own limits and deadlines say what they
/// are (a rate limit is RESOURCE_EXHAUSTED, a timeout DEADLINE_EXCEEDED).
pub fn code_for(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,      // INTERNAL
        401 => 16,      // UNAUTHENTICATED
        403 => 7,       // PERMISSION_DENIED
        404 => 12,      // UNIMPLEMENTED
        408 | 504 => 4, // DEADLINE_EXCEEDED
        413 | 429 => 8, // RESOURCE_EXHAUSTED
        426 => 14,
        500 => 13,
        502 | 503 => 14, // UNAVAILABLE
        _ => 2,          // UNKNOWN
    }
}

/// The gateway's own answer `resp` (an error or a plugin's refusal) to a gRPC call, made a
/// gRPC answer: 200, the status and message in the head, no body. Headers the gateway set
/// (request id, Retry-After, CORS, WWW-Authenticate) stay.
pub fn answer(resp: Response<RespBody>, kind: Kind) -> (Response<RespBody>, u8) {
    let (mut parts, _) = resp.into_parts();
    let code = code_for(parts.status);
    let message = parts.status.canonical_reason().unwrap_or("error");
    parts.status = StatusCode::OK;
    let h = &mut parts.headers;
    h.remove(CONTENT_LENGTH);
    h.insert(CONTENT_TYPE, kind.content_type());
    h.insert(GRPC_STATUS.clone(), HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        h.insert(GRPC_MESSAGE.clone(), v);
    }
    (Response::from_parts(parts, RespBody::empty()), code)
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Marks a response that came from an upstream (so it is passed on as it is).
#[derive(Debug, Clone, Copy)]
pub struct FromUpstream;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn calls_are_told_by_their_content_type() {
        for (ct, k) in [
            ("application/grpc", Some(Kind::Grpc)),
            ("application/grpc+proto", Some(Kind::Grpc)),
            ("application/grpc-web", Some(Kind::Web)),
            ("application/grpc-web+proto", Some(Kind::Web)),
            ("application/grpc-web-text", Some(Kind::WebText)),
            ("application/grpcx", None),
            ("application/json", None),
        ] {
            assert_eq!(kind(&headers(&[("content-type", ct)])), k, "{ct}");
        }
    }

    #[test]
    fn grpc_timeouts_parse_by_unit() {
        let d = |v: &'static str| deadline(&headers(&[("grpc-timeout", v)]));
        assert_eq!(d("100m"), Some(Duration::from_millis(100)));
        assert_eq!(d("2S"), Some(Duration::from_secs(2)));
        assert_eq!(d("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(d("5000u"), Some(Duration::from_millis(5)));
        assert_eq!(d("123456789m"), None, "nine digits");
        assert_eq!(d("10x"), None);
        assert_eq!(d("m"), None);
    }

    #[test]
    fn gateway_answers_become_trailers_only_grpc_answers() {
        let mut resp = crate::errors::respond(
            crate::errors::Failure::NoRoute,
            &HeaderValue::from_static("rid"),
        );
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
        let (resp, code) = answer(resp, Kind::Grpc);
        assert_eq!(code, 12);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "12");
        assert_eq!(resp.headers()["grpc-message"], "Not Found");
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(resp.headers()["x-request-id"], "rid");
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(percent_encode("50% é"), "50%25 %C3%A9");
        for (status, code) in [(429, 8), (504, 4), (503, 14), (401, 16), (403, 7)] {
            assert_eq!(code_for(StatusCode::from_u16(status).unwrap()), code);
        }
    }
}
