//! Entry points for the fuzz targets in `fuzz/` (`cargo fuzz`): each takes arbitrary bytes
//! and checks what must hold whatever they are. Not an API.

use crate::h1::{body, head, Limits};
use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::HeaderValue;
use std::sync::OnceLock;

/// The head parser: a head, more needed, or a 4xx refusal; never both framings.
pub fn head(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    match head::parse(&mut buf, &Limits::default()) {
        Ok(Some(h)) => {
            let cl = h.headers.get_all(CONTENT_LENGTH).iter().count();
            let te = h.headers.contains_key(TRANSFER_ENCODING);
            assert!(cl <= 1, "one Content-Length at most");
            assert!(!(cl == 1 && te), "never both framings");
            match h.framing {
                head::Framing::Chunked => assert!(te && cl == 0),
                head::Framing::Length(n) => assert!(cl == 1 && n > 0),
                head::Framing::None => assert!(!te),
            }
        }
        Ok(None) => assert!(buf.len() == data.len()),
        Err(head::Refusal(status, _)) => assert!(status.is_client_error(), "{status}"),
    }
}

/// The body decoder: the first byte picks chunked or a length; what it yields is never more
/// than it was given.
pub fn chunked(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let state = if pick % 2 == 0 {
        body::State::ChunkSize
    } else {
        body::State::Length(u64::from(pick) * 3)
    };
    let lent = body::Lent {
        r: rest,
        buf: BytesMut::new(),
    };
    let mut b = body::Body::new(lent, state, None, None, std::time::Duration::from_secs(1));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut out = 0usize;
    // A slice never makes a read wait: every poll is ready; bounded by the input anyway.
    for _ in 0..=rest.len() + 2 {
        match http_body::Body::poll_frame(std::pin::Pin::new(&mut b), &mut cx) {
            std::task::Poll::Ready(Some(Ok(f))) => {
                out += f.data_ref().map_or(0, |d| d.len());
                assert!(out <= rest.len(), "decoded more than was sent");
            }
            _ => return,
        }
    }
}

/// The headers going upstream: nothing hop-by-hop left, no field `Connection` named, and
/// X-Forwarded-For ending with the peer.
pub fn headers(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let Ok(Some(h)) = head::parse(&mut buf, &Limits::default()) else {
        return;
    };
    let mut headers = h.headers;
    let named: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .filter(|t| !t.is_empty())
        .collect();
    crate::headers::remove_hop_by_hop(&mut headers, false);
    for gone in [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "trailer",
    ] {
        assert!(!headers.contains_key(gone), "{gone} left");
    }
    for name in &named {
        assert!(
            !headers.contains_key(name.as_str()),
            "{name} named by Connection left"
        );
    }
    let host = headers.get(http::header::HOST).cloned();
    if let Some(h) = &host {
        let _ = crate::headers::valid_host(h.as_bytes());
    }
    let peer = HeaderValue::from_static("192.0.2.1");
    crate::headers::set_forwarded(&mut headers, &peer, &peer, host, false);
    let xff = headers
        .get(&crate::headers::X_FORWARDED_FOR)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    assert!(xff.ends_with(b"192.0.2.1"));
}

/// Routes of every kind, compiled once.
fn router() -> Option<&'static gatehouse_runtime::router::Router> {
    static ROUTER: OnceLock<Option<gatehouse_runtime::router::Router>> = OnceLock::new();
    ROUTER
        .get_or_init(|| {
            let config = gatehouse_model::parse_yaml(ROUTES).ok()?;
            gatehouse_runtime::router::Router::build(&config.routes).ok()
        })
        .as_ref()
}

const ROUTES: &str = r#"
upstreams: [{name: u, targets: [{address: "127.0.0.1:1"}]}]
services: [{name: s, upstream: u}]
routes:
  - {name: exact, paths: ["/exact"], service: s}
  - {name: prefix, paths: ["/api/*"], service: s}
  - {name: template, paths: ["/users/{id}/orders/{order}"], service: s}
  - {name: regex, paths: ["~^/r/[0-9]+/x$"], service: s}
  - {name: host, hosts: ["*.example.com"], paths: ["/*"], service: s}
  - {name: header, paths: ["/h/*"], headers: [{name: x-a, equals: "1"}], methods: [POST], service: s}
  - {name: all, paths: ["/*"], service: s}
"#;

/// Method, host, path and query from the input's lines; the path normalised as the pipeline
/// does, then matched.
pub fn route(data: &[u8]) {
    let Some(router) = router() else { return };
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(4, '\n');
    let (Some(m), Some(host), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let query = parts.next();
    let Ok(method) = http::Method::from_bytes(m.as_bytes()) else {
        return;
    };
    let slashes = gatehouse_model::EncodedSlashes::Reject;
    let Ok(path) = gatehouse_runtime::path::normalize(path, slashes) else {
        return;
    };
    let headers = http::HeaderMap::new();
    let view = gatehouse_runtime::router::RequestView {
        method: &method,
        host,
        path: &path,
        query,
        headers: &headers,
    };
    if let Some(m) = router.find(&view) {
        assert!(m.route < 7);
    }
}

#[cfg(test)]
mod tests {
    /// A table that does not build would leave the route target testing nothing.
    #[test]
    fn the_fuzz_route_table_builds_and_every_entry_point_runs() {
        assert!(super::router().is_some());
        super::route(b"GET\nwww.example.com\n/users/1/orders/2\na=b");
        super::head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        super::headers(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-a\r\nX-A: 1\r\n\r\n");
        super::chunked(b"\x005\r\nhello\r\n0\r\n\r\n");
    }
}
