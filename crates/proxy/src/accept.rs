//! The accept stage of a client connection, before HTTP: the PROXY protocol header on
//! listeners that expect one, then TLS on TLS listeners (ALPN picks HTTP/2 or HTTP/1.1), else
//! the protocol (HTTP/1.1, or h2c with prior knowledge).

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a client may take to send the first bytes a stage must see (the PROXY header, the
/// h2c preface) before it is treated as absent.
const FIRST_BYTES: Duration = Duration::from_secs(10);

/// The pause between peeks at a header that arrived in part (peek does not wait for more).
const PEEK_PAUSE: Duration = Duration::from_millis(2);

/// The largest PROXY header read: v1 is at most 107 bytes; v2 carries TLVs, and 4 KiB is far
/// more than any load balancer sends.
const MAX_PROXY_HEADER: usize = 4096;

/// Why a connection was closed at accept.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("no valid PROXY protocol header")]
    BadProxyHeader,
    #[error("PROXY protocol header not received in time")]
    ProxyHeaderTimeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY protocol header (v1 or v2) off `stream` and returns the client address it
/// names; the socket peer when it names none (`LOCAL`, `UNKNOWN`: a health check from the
/// balancer itself). Only the header is consumed; what follows is left for HTTP.
pub async fn proxy_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<SocketAddr, AcceptError> {
    let mut buf = vec![0u8; MAX_PROXY_HEADER];
    let give_up = tokio::time::Instant::now() + FIRST_BYTES;
    loop {
        let n = tokio::time::timeout_at(give_up, peek(stream, &mut buf))
            .await
            .map_err(|_| AcceptError::ProxyHeaderTimeout)??;
        if n == 0 {
            return Err(AcceptError::BadProxyHeader);
        }
        match parse_proxy_header(&buf[..n])? {
            Some((len, source)) => {
                // Consume exactly the header.
                stream.read_exact(&mut buf[..len]).await?;
                return Ok(source.unwrap_or(peer));
            }
            None if n == buf.len() || tokio::time::Instant::now() > give_up => {
                return Err(AcceptError::BadProxyHeader)
            }
            None => tokio::time::sleep(PEEK_PAUSE).await,
        }
    }
}

/// A whole header at the start of `buf`: its length and the source address it names, if any;
/// `None` while it is incomplete.
type Parsed = Option<(usize, Option<SocketAddr>)>;

fn parse_proxy_header(buf: &[u8]) -> Result<Parsed, AcceptError> {
    use ppp::{v1, v2, HeaderResult, PartialResult};
    // ppp waits for more bytes on anything that could still become a header; a first line
    // that cannot is refused at once.
    if !buf.starts_with(V2_SIGNATURE) && !V2_SIGNATURE.starts_with(&buf[..buf.len().min(12)]) {
        let prefix = &buf[..buf.len().min(6)];
        if !b"PROXY ".starts_with(prefix) {
            return Err(AcceptError::BadProxyHeader);
        }
        if buf.len() > V1_MAX || (buf.contains(&b'\n') && !buf.windows(2).any(|w| w == b"\r\n")) {
            return Err(AcceptError::BadProxyHeader);
        }
    }
    let parsed = HeaderResult::parse(buf);
    let v1_line_ended = buf.starts_with(b"PROXY ") && buf.windows(2).any(|w| w == b"\r\n");
    if parsed.is_incomplete() {
        // A v1 header ends at its first CRLF: past it, "incomplete" means malformed.
        return if v1_line_ended {
            Err(AcceptError::BadProxyHeader)
        } else {
            Ok(None)
        };
    }
    let tcp = |ip: std::net::IpAddr, port| Some(SocketAddr::new(ip, port));
    match parsed {
        HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                v1::Addresses::Tcp4(a) => tcp(a.source_address.into(), a.source_port),
                v1::Addresses::Tcp6(a) => tcp(a.source_address.into(), a.source_port),
                v1::Addresses::Unknown => None,
            };
            Ok(Some((h.header.len(), source)))
        }
        HeaderResult::V2(Ok(h)) => {
            let source = match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    tcp(a.source_address.into(), a.source_port)
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    tcp(a.source_address.into(), a.source_port)
                }
                _ => None,
            };
            Ok(Some((h.len(), source)))
        }
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => Err(AcceptError::BadProxyHeader),
    }
}

/// The v2 header's first twelve bytes.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;

async fn peek(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    stream.readable().await?;
    stream.peek(buf).await
}

/// Not a failure: an ACME server's TLS-ALPN-01 validation, done once the handshake is.
pub const ACME_VALIDATION: &str = "acme_validation";

/// A completed TLS handshake: the stream, whether ALPN chose HTTP/2, and the connection's
/// TLS facts.
pub type Handshaken = (
    tokio_rustls::server::TlsStream<TcpStream>,
    bool,
    crate::pipeline::TlsFacts,
);

/// The TLS handshake of a client connection, within `timeout`; `Err` is the reason it
/// failed, as the failures counter labels it.
pub async fn tls(
    stream: TcpStream,
    config: std::sync::Arc<rustls::ServerConfig>,
    timeout: Duration,
    subject_header: Option<&http::HeaderName>,
) -> Result<Handshaken, &'static str> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Err(_) => return Err("timeout"),
        Ok(Err(e)) => return Err(gatehouse_runtime::tls::failure_reason(&e)),
        Ok(Ok(tls)) => tls,
    };
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() == Some(gatehouse_runtime::tls::challenges::ACME_TLS_ALPN) {
        // A CA validating TLS-ALPN-01: the handshake was the answer.
        return Err(ACME_VALIDATION);
    }
    let h2 = conn.alpn_protocol() == Some(gatehouse_runtime::tls::server::ALPN_H2);
    let client_subject = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(gatehouse_runtime::tls::subject_of)
        .and_then(|s| http::HeaderValue::from_str(&s).ok());
    let facts = crate::pipeline::TlsFacts {
        sni: conn.server_name().map(Into::into),
        client_subject,
        subject_header: subject_header.cloned(),
    };
    Ok((tls, h2, facts))
}

/// Reads ahead without consuming to tell an h2c client (prior knowledge) from HTTP/1.1.
pub async fn is_h2c(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 24];
    let give_up = tokio::time::Instant::now() + FIRST_BYTES;
    loop {
        let n = peek(stream, &mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A partial preface (rare: clients send it in one segment). Peek does not wait for
        // more data, so pause briefly rather than spin.
        if tokio::time::Instant::now() > give_up {
            return Ok(false);
        }
        tokio::time::sleep(PEEK_PAUSE).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn proxy_headers_parse_or_are_refused_at_once() {
        let v1 = b"PROXY TCP4 5.6.7.8 127.0.0.1 4321 8080\r\nGET / HTTP/1.1\r\n";
        let (len, src) = parse_proxy_header(v1).unwrap().unwrap();
        assert_eq!(len, 40);
        assert_eq!(src, Some("5.6.7.8:4321".parse().unwrap()));
        let v6 = b"PROXY TCP6 2001:db8::1 ::1 4321 8080\r\n";
        let (_, src) = parse_proxy_header(v6).unwrap().unwrap();
        assert_eq!(src, Some("[2001:db8::1]:4321".parse().unwrap()));
        let (_, src) = parse_proxy_header(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!(src, None);
        // Partial headers wait for more.
        assert!(parse_proxy_header(b"PROX").unwrap().is_none());
        assert!(parse_proxy_header(b"PROXY TCP4 5.6.7.8").unwrap().is_none());
        assert!(parse_proxy_header(&V2_SIGNATURE[..5]).unwrap().is_none());
        // What can never become a header is refused without waiting.
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"PROXY TCP4 nonsense\r\n\r\n",
            b"PROXY TCP4 5.6.7.8 127.0.0.1 4321 8080\n",
            b"\x16\x03\x01",
        ] {
            assert!(parse_proxy_header(bad).is_err(), "{bad:?}");
        }
        // v2, LOCAL: no address; the peer stands.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse_proxy_header(&local).unwrap(), Some((16, None)));
    }
}
