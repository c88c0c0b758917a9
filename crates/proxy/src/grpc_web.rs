//! gRPC-Web: calls from browsers (`application/grpc-web`, and `-text` in base64) made gRPC
//! calls to the upstream, and the answers made gRPC-Web again: the trailers go into the
//! body as a frame flagged 0x80, as the gRPC-Web protocol (PROTOCOL-WEB.md) defines.
//!
//! Written here rather than taken from a crate: tonic-web does this inside a tower service
//! tied to tonic's body types, and what is needed is a content-type swap, base64 at the
//! edges and one trailers frame.

use crate::body::{BoxError, Convert};
use crate::grpc::Kind;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame};
use std::pin::Pin;
use std::task::{Context, Poll};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The request head made a gRPC call's: `application/grpc(+proto)`, `te: trailers`, and no
/// length (text bodies shrink when decoded).
pub fn request_head(headers: &mut HeaderMap, kind: Kind) {
    let subtype = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split_once('+').map(|(_, s)| s.to_owned()));
    let ct = match subtype {
        Some(s) => HeaderValue::from_str(&format!("application/grpc+{s}"))
            .unwrap_or(HeaderValue::from_static("application/grpc")),
        None => HeaderValue::from_static("application/grpc"),
    };
    headers.insert(CONTENT_TYPE, ct);
    headers.insert(TE, HeaderValue::from_static("trailers"));
    if kind == Kind::WebText {
        headers.remove(CONTENT_LENGTH);
    }
}

/// A gRPC-Web call made the gRPC call the upstream takes.
pub fn to_grpc(
    mut request: http::Request<gatehouse_runtime::upstream::ProxyBody>,
    kind: Kind,
) -> http::Request<gatehouse_runtime::upstream::ProxyBody> {
    use gatehouse_runtime::upstream::ProxyBody;
    request_head(request.headers_mut(), kind);
    if kind != Kind::WebText {
        return request;
    }
    request.map(|b| {
        ProxyBody::Boxed(http_body_util::combinators::BoxBody::new(DecodeText::new(
            b,
        )))
    })
}

/// The upstream's gRPC answer made the gRPC-Web answer the browser takes.
pub fn from_grpc(
    resp: http::Response<crate::body::RespBody>,
    kind: Kind,
) -> http::Response<crate::body::RespBody> {
    let (mut parts, body) = resp.into_parts();
    response_head(&mut parts.headers, kind);
    http::Response::from_parts(parts, body.converted(Box::new(Encode::new(kind))))
}

/// The answer's head made a gRPC-Web one.
pub fn response_head(headers: &mut HeaderMap, kind: Kind) {
    let ct = match kind {
        Kind::WebText => "application/grpc-web-text+proto",
        _ => "application/grpc-web+proto",
    };
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    headers.remove(CONTENT_LENGTH);
}

/// A `-text` request body decoded from base64 as it streams (4-character groups; a client
/// may send several padded segments one after another).
pub struct DecodeText<B> {
    inner: B,
    carry: BytesMut,
}

impl<B> DecodeText<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            carry: BytesMut::new(),
        }
    }
}

impl<B> Body for DecodeText<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let this = &mut *self;
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    if this.carry.is_empty() {
                        return Poll::Ready(None);
                    }
                    let rest = std::mem::take(&mut this.carry);
                    return Poll::Ready(Some(decode(&rest).map(Frame::data)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    this.carry
                        .extend(data.iter().filter(|b| !b.is_ascii_whitespace()));
                    let whole = this.carry.len() / 4 * 4;
                    if whole == 0 {
                        continue;
                    }
                    let ready = this.carry.split_to(whole);
                    return Poll::Ready(Some(decode(&ready).map(Frame::data)));
                }
            }
        }
    }
}

/// Base64 groups, each possibly padded (segments sent back to back).
fn decode(text: &[u8]) -> Result<Bytes, BoxError> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut start = 0;
    for (i, chunk) in text.chunks(4).enumerate() {
        if chunk.contains(&b'=') {
            let end = i * 4 + chunk.len();
            B64.decode_vec(&text[start..end], &mut out)
                .map_err(|e| format!("grpc-web-text body is not base64: {e}"))?;
            start = end;
        }
    }
    if start < text.len() {
        B64.decode_vec(&text[start..], &mut out)
            .map_err(|e| format!("grpc-web-text body is not base64: {e}"))?;
    }
    Ok(Bytes::from(out))
}

/// The answer's body made gRPC-Web: messages as they come, then the trailers as a frame;
/// in base64 for `-text` (in 3-byte groups, the remainder with the last frame).
pub struct Encode {
    text: bool,
    carry: BytesMut,
    trailers_sent: bool,
}

impl Encode {
    pub fn new(kind: Kind) -> Self {
        Self {
            text: kind == Kind::WebText,
            carry: BytesMut::new(),
            trailers_sent: false,
        }
    }

    fn out(&mut self, bytes: &[u8], last: bool) -> Option<Frame<Bytes>> {
        if !self.text {
            return (!bytes.is_empty()).then(|| Frame::data(Bytes::copy_from_slice(bytes)));
        }
        self.carry.extend_from_slice(bytes);
        let n = if last {
            self.carry.len()
        } else {
            self.carry.len() / 3 * 3
        };
        if n == 0 {
            return None;
        }
        let ready = self.carry.split_to(n);
        Some(Frame::data(Bytes::from(B64.encode(&ready))))
    }
}

/// A trailers frame: flag 0x80, the length, `name: value` lines (names lower case).
fn trailers_frame(t: &HeaderMap) -> Vec<u8> {
    let mut block = Vec::new();
    for (k, v) in t {
        block.extend_from_slice(k.as_str().as_bytes());
        block.extend_from_slice(b":");
        block.extend_from_slice(v.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    let mut out = BytesMut::with_capacity(5 + block.len());
    out.put_u8(0x80);
    out.put_u32(block.len() as u32);
    out.put_slice(&block);
    out.to_vec()
}

impl Convert for Encode {
    fn frame(&mut self, frame: Frame<Bytes>) -> Option<Frame<Bytes>> {
        match frame.into_data() {
            Ok(data) => self.out(&data, false),
            Err(frame) => {
                let trailers = frame.into_trailers().ok()?;
                self.trailers_sent = true;
                self.out(&trailers_frame(&trailers), true)
            }
        }
    }

    fn end(&mut self) -> Option<Frame<Bytes>> {
        // What base64 still holds (trailers already flushed it, or there were none).
        self.out(&[], true)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn text_segments_decode_back_to_back() {
        let a = B64.encode(b"\x00\x00\x00\x00\x01a");
        let b = B64.encode(b"xy");
        let joined = format!("{a}{b}");
        assert_eq!(
            &decode(joined.as_bytes()).unwrap()[..],
            b"\x00\x00\x00\x00\x01axy"
        );
    }

    #[test]
    fn trailers_become_a_flagged_frame_and_text_is_base64() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        let mut e = Encode::new(Kind::Web);
        let f = e.frame(Frame::trailers(t.clone())).unwrap();
        assert_eq!(
            &f.into_data().unwrap()[..],
            b"\x80\x00\x00\x00\x0fgrpc-status:0\r\n"
        );
        let mut e = Encode::new(Kind::WebText);
        let first = e.frame(Frame::data(Bytes::from_static(b"abcd"))).unwrap();
        let trailers = e.frame(Frame::trailers(t)).unwrap();
        let mut all = first.into_data().unwrap().to_vec();
        all.extend_from_slice(&trailers.into_data().unwrap());
        assert_eq!(
            decode(&all).unwrap(),
            Bytes::from_static(b"abcd\x80\x00\x00\x00\x0fgrpc-status:0\r\n")
        );
        assert!(e.end().is_none());
    }
}
