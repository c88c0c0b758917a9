//! Proxy header semantics: hop-by-hop removal (RFC 9110 §7.6.1, including names listed in
//! `Connection`), forwarding headers, request ids, and the framing checks that stop request
//! smuggling before anything is forwarded.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TE, TRAILER, TRANSFER_ENCODING,
    UPGRADE,
};

pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static VIA: HeaderName = http::header::VIA;
pub static VIA_VALUE: HeaderValue = HeaderValue::from_static("1.1 gatehouse");
pub static HTTP: HeaderValue = HeaderValue::from_static("http");
pub static HTTPS: HeaderValue = HeaderValue::from_static("https");
pub static TRAILERS: HeaderValue = HeaderValue::from_static("trailers");

/// Removes hop-by-hop headers. With `keep_upgrade` (a WebSocket handshake) `Upgrade` and
/// `Connection: upgrade` stay, since the upstream must see them to switch protocols.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds which hop-by-hop headers are present; most messages have
    // none or only `Connection`, and each `remove` would hash the name again.
    const CONN: u8 = 1;
    const OTHER: u8 = 2;
    let mut present = 0u8;
    for name in headers.keys() {
        if name == CONNECTION {
            present |= CONN;
        } else if name == UPGRADE
            || name == TE
            || name == TRAILER
            || name == TRANSFER_ENCODING
            || name == KEEP_ALIVE
            || name == PROXY_CONNECTION
        {
            present |= OTHER;
        }
    }
    if present == 0 {
        return;
    }
    if present & CONN != 0 {
        // Only allocate when `Connection` names headers beyond the usual tokens.
        let mut listed: Option<Vec<HeaderName>> = None;
        for v in headers.get_all(CONNECTION) {
            let Ok(s) = v.to_str() else { continue };
            for token in s.split(',') {
                let token = token.trim();
                if token.is_empty()
                    || token.eq_ignore_ascii_case("keep-alive")
                    || token.eq_ignore_ascii_case("close")
                    || token.eq_ignore_ascii_case("upgrade")
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    listed.get_or_insert_with(Vec::new).push(name);
                }
            }
        }
        for name in listed.into_iter().flatten() {
            headers.remove(name);
        }
        if keep_upgrade {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        } else {
            headers.remove(CONNECTION);
        }
    }
    if present & OTHER != 0 {
        if !keep_upgrade {
            headers.remove(UPGRADE);
        }
        headers.remove(&KEEP_ALIVE);
        headers.remove(&PROXY_CONNECTION);
        headers.remove(TRAILER);
        headers.remove(TRANSFER_ENCODING);
        // `TE: trailers` is end-to-end in practice (gRPC needs it); any other TE is
        // hop-by-hop.
        if headers
            .get(TE)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            headers.remove(TE);
        }
    }
}

/// True for a WebSocket-style upgrade request: `Connection: upgrade` plus an `Upgrade`.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Why a request's framing is refused, or `None` when it is unambiguous. A request with both
/// `Content-Length` and `Transfer-Encoding`, or with differing `Content-Length`s, could be
/// read differently by the upstream than by us (request smuggling), so it is never forwarded.
pub fn framing_problem(headers: &HeaderMap) -> Option<&'static str> {
    if !headers.contains_key(CONTENT_LENGTH) {
        return None;
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        return Some("both Content-Length and Transfer-Encoding");
    }
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let first = values.next()?;
    let first_tokens = first.to_str().ok()?.split(',').map(str::trim);
    let mut seen: Option<&str> = None;
    for v in
        first_tokens.chain(values.flat_map(|v| v.to_str().unwrap_or("x").split(',').map(str::trim)))
    {
        match seen {
            None => seen = Some(v),
            Some(s) if s != v => return Some("conflicting Content-Length values"),
            _ => {}
        }
    }
    None
}

/// Whether `v` is a valid Host value (RFC 9110 §7.2, RFC 3986 §3.2.2): a registered name,
/// an IPv4 address or a bracketed IP literal, with an optional port of at most 65535. An
/// empty value is valid (a request whose target has no authority).
pub fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if v.first() == Some(&b'[') {
        match v.iter().position(|&c| c == b']') {
            Some(end) => {
                let literal = &v[1..end];
                let ok = !literal.is_empty()
                    && literal
                        .iter()
                        .all(|c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.'));
                if !ok {
                    return false;
                }
                match &v[end + 1..] {
                    [] => (&v[..0], None),
                    [b':', port @ ..] => (&v[..0], Some(port)),
                    _ => return false,
                }
            }
            None => return false,
        }
    } else {
        match v.iter().rposition(|&c| c == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        }
    };
    // reg-name: unreserved, pct-encoded and sub-delims.
    let name_ok = host.iter().all(|&c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    let port_ok = port.is_none_or(|p| {
        p.len() <= 5
            && p.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(p)
                .ok()
                .and_then(|s| {
                    if s.is_empty() {
                        Some(0)
                    } else {
                        s.parse::<u32>().ok()
                    }
                })
                .is_some_and(|n| n <= 65_535)
    });
    name_ok && port_ok
}

/// Appends the peer's address (who connected to us) to `X-Forwarded-For` and sets
/// `X-Real-IP` to the client (the peer, or who a trusted proxy says it is),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` to what this gateway saw (overwriting what the
/// client sent, which it could forge).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    client: &HeaderValue,
    host: Option<HeaderValue>,
    https: bool,
) {
    let xff = match headers.get(&X_FORWARDED_FOR) {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + peer.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| peer.clone())
        }
        None => peer.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    headers.insert(X_REAL_IP.clone(), client.clone());
    let proto = if https { &HTTPS } else { &HTTP };
    headers.insert(X_FORWARDED_PROTO.clone(), proto.clone());
    match host {
        Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// A random (v4) UUID, from a thread-local generator: no syscall per request.
pub fn new_request_id() -> HeaderValue {
    let bytes: [u8; 16] = fastrand::u128(..).to_le_bytes();
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = id.hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                m.append(k, v);
            }
        }
        m
    }

    #[test]
    fn hop_by_hop_and_connection_listed_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("trailer", "x"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "1"),
        ]);
        remove_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
        let mut h = map(&[("te", "trailers")]);
        remove_hop_by_hop(&mut h, false);
        assert!(h.contains_key("te"));
    }

    #[test]
    fn framing() {
        assert_eq!(framing_problem(&map(&[("content-length", "5")])), None);
        assert_eq!(
            framing_problem(&map(&[("content-length", "5"), ("content-length", "5")])),
            None
        );
        assert_eq!(
            framing_problem(&map(&[
                ("content-length", "5"),
                ("transfer-encoding", "chunked")
            ])),
            Some("both Content-Length and Transfer-Encoding")
        );
        assert_eq!(
            framing_problem(&map(&[("content-length", "5"), ("content-length", "6")])),
            Some("conflicting Content-Length values")
        );
        assert_eq!(
            framing_problem(&map(&[("content-length", "5, 6")])),
            Some("conflicting Content-Length values")
        );
    }

    #[test]
    fn host_values() {
        for ok in [
            "a.com",
            "a.com:80",
            "A-b.c_d~",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:443",
            "",
            "x:",
            "xn--caf-dma.example",
            "a.com:65535",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok:?} should pass");
        }
        for bad in [
            "a b.com",
            "a.com:80x",
            "a.com:99999",
            "a.com:123456",
            "[::1",
            "[zz]",
            "[::1]x",
            "a/b",
            "a@b",
            "a.com:-1",
            "a\"b",
            "a.com:8:8",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?} should fail");
        }
    }

    #[test]
    fn forwarded_headers() {
        let mut h = map(&[("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "6.6.6.6")]);
        set_forwarded(
            &mut h,
            &HeaderValue::from_static("127.0.0.1"),
            &HeaderValue::from_static("127.0.0.1"),
            Some(HeaderValue::from_static("a.com")),
            false,
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 127.0.0.1");
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.com");
        let a = new_request_id();
        assert_eq!(a.len(), 36);
        assert_ne!(a, new_request_id());
    }
}
