//! Gatehouse's own HTTP/1.1 client connection to upstream targets, driven inside the task of
//! the request that uses it.
//!
//! Why by hand: hyper's client connection lives in a task of its own, so every exchange
//! crossed tasks three times (the request through an mpsc channel, the head back through a
//! oneshot, the body through a body channel), each with waker traffic, and a second task was
//! polled per request. Profiles of a plain route put that machinery and hyper's client
//! codec near a tenth of the gateway's CPU (bench/RESULTS.md). Here the request's head is
//! written straight from its `HeaderMap`, the response is parsed with httparse (hyper's own
//! parser) out of a buffer the connection keeps, and the response body reads the socket when
//! the client side polls it. A connection is owned by one exchange at a time and goes back to
//! the pool from its body's clean end.

use crate::connector::Stream;
use crate::upstream::{BoxError, ProxyBody};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response head larger than this is refused (hyper's client allowed about 400 KiB; nginx's
/// `proxy_buffer_size` is 4-8 KiB, so 64 KiB is generous).
const MAX_HEAD: usize = 64 * 1024;
/// As hyper: more header fields than this in a response head is refused.
const MAX_HEADERS: usize = 100;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Request bodies up to this size go out with the head in one write.
const INLINE_BODY: usize = 16 * 1024;

/// Why an exchange on an HTTP/1.1 connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("upstream closed the connection before responding")]
    Closed,
    #[error("upstream closed the connection in the middle of the response")]
    Truncated,
    #[error("upstream i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream sent an invalid response: {0}")]
    Invalid(&'static str),
    #[error("upstream response head is over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("request body: {0}")]
    Body(BoxError),
}

/// One open HTTP/1.1 connection to a target, idle between exchanges.
pub struct Conn {
    io: Stream,
    /// Received and not yet consumed; kept across exchanges so its allocation is reused.
    buf: BytesMut,
    /// The request head being written; kept so its allocation is reused.
    out: Vec<u8>,
    /// Counts the connection against its target's cap until dropped.
    _slot: Box<dyn Send + Sync>,
    /// Exchanges started on it.
    uses: u32,
}

/// An exchange that failed, with the request when it can still go out on another connection
/// (the connection broke before the request reached it and its body was not consumed).
pub struct Failed {
    pub error: Error,
    pub request: Option<Request<ProxyBody>>,
}

/// Writes a streamed request body while reading the response head (an upstream may answer
/// before the body is done): the head, and whether the whole body went out.
async fn send_streamed(
    io: &mut Stream,
    buf: &mut BytesMut,
    body: ProxyBody,
    framing: ReqFraming,
    head_request: bool,
) -> Result<(Head, bool), Failed> {
    let (mut rd, mut wr) = io.split();
    let writing = write_body(&mut wr, body, framing == ReqFraming::Chunked);
    let reading = read_head(&mut rd, buf, head_request);
    tokio::pin!(writing, reading);
    let mut written = false;
    let head = loop {
        tokio::select! {
            biased;
            head = &mut reading => break head,
            w = &mut writing, if !written => match w {
                Ok(()) => written = true,
                Err(error) => return Err(Failed { error, request: None }),
            },
        }
    };
    let head = head.map_err(|error| Failed {
        error,
        request: None,
    })?;
    Ok((head, written))
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    Empty,
    Length,
    Chunked,
}

impl Conn {
    pub fn new(io: Stream, slot: Box<dyn Send + Sync>) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(1024),
            _slot: slot,
            uses: 0,
        }
    }

    /// Whether the target closed the connection (or sent bytes nobody asked for) while it was
    /// idle. Costs no system call unless the socket reported readiness.
    pub fn is_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        self.io.is_closed()
    }

    /// Sends `req` and reads the response head. The returned body owns the connection.
    pub async fn send(
        mut self: Box<Self>,
        req: Request<ProxyBody>,
    ) -> Result<Response<Body>, Failed> {
        let (parts, body) = req.into_parts();
        let framing = match body.size_hint().exact() {
            _ if body.is_end_stream() => ReqFraming::Empty,
            Some(_) => ReqFraming::Length,
            None => ReqFraming::Chunked,
        };
        encode_head(&mut self.out, &parts, &body, framing);
        let head_request = parts.method == Method::HEAD;
        let inline = match &body {
            ProxyBody::Bytes(Some(b)) if b.len() <= INLINE_BODY => {
                self.out.extend_from_slice(b);
                true
            }
            _ => framing == ReqFraming::Empty,
        };
        if let Err(e) = self.io.write_all(&self.out).await {
            // Nothing of the body was read, so the request can go out elsewhere.
            return Err(Failed {
                error: e.into(),
                request: Some(Request::from_parts(parts, body)),
            });
        }
        self.uses += 1;
        let mut reusable = true;
        let head = if inline {
            match read_head(&mut self.io, &mut self.buf, head_request).await {
                Ok(h) => h,
                // A pooled connection closed by its target just as the request went out (the
                // keep-alive race): nothing was processed, so an idempotent request goes out
                // again on another connection.
                Err(Error::Closed) if self.uses > 1 && idempotent(&parts.method) => {
                    return Err(Failed {
                        error: Error::Closed,
                        request: Some(Request::from_parts(parts, body)),
                    })
                }
                Err(error) => {
                    return Err(Failed {
                        error,
                        request: None,
                    })
                }
            }
        } else {
            // Boxed: writing a streamed body while reading the head has a large state, and
            // most requests (no body, or a small one sent inline) never run it; the request's
            // future is moved at every poll, so it should not carry it.
            let streamed = send_streamed(&mut self.io, &mut self.buf, body, framing, head_request);
            let (head, written) = Box::pin(streamed).await?;
            // An answer before the whole body went out: the rest is not sent, so the
            // connection's framing is lost.
            reusable &= written;
            head
        };
        let mut resp = Response::new(Body {
            kind: head.kind,
            reusable: reusable && head.keep_alive,
            conn: Some(self),
        });
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Writes the request line and header fields, with our own framing header.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    body: &ProxyBody,
    framing: ReqFraming,
) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(pq.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in parts.headers.iter() {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ReqFraming::Empty => {
            // A body-carrying method says its body is empty, as curl and hyper do; so does
            // any request whose client declared a length.
            let says = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
                || parts.headers.contains_key(CONTENT_LENGTH);
            if says {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        ReqFraming::Length => {
            let n = body.size_hint().exact().unwrap_or(0);
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        ReqFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Streams a request body out, chunk-encoded when its length is not known.
async fn write_body<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    body: ProxyBody,
    chunked: bool,
) -> Result<(), Error> {
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut framed = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Error::Body)?;
        // Trailers are not forwarded to an HTTP/1.1 upstream (nginx does not either).
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if !chunked {
            wr.write_all(&data).await?;
            continue;
        }
        // One write per chunk when small: the socket has TCP_NODELAY, so three writes would
        // be three segments.
        let size = format!("{:x}\r\n", data.len());
        if data.len() <= INLINE_BODY {
            framed.clear();
            framed.extend_from_slice(size.as_bytes());
            framed.extend_from_slice(&data);
            framed.extend_from_slice(b"\r\n");
            wr.write_all(&framed).await?;
        } else {
            wr.write_all(size.as_bytes()).await?;
            wr.write_all(&data).await?;
            wr.write_all(b"\r\n").await?;
        }
    }
    if chunked {
        wr.write_all(b"0\r\n\r\n").await?;
    }
    wr.flush().await?;
    Ok(())
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    kind: Kind,
    keep_alive: bool,
}

/// Reads until a final response head is complete; interim (1xx) heads other than 101 are
/// skipped, as hyper does.
async fn read_head<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Head, Error> {
    let mut got_any = false;
    loop {
        if !buf.is_empty() {
            got_any = true;
            match parse_head(buf, head_request)? {
                Some(h)
                    if h.status.is_informational()
                        && h.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    continue
                }
                Some(h) => return Ok(h),
                None => {}
            }
            if buf.len() >= MAX_HEAD {
                return Err(Error::HeadTooLarge);
            }
        }
        buf.reserve(READ_CHUNK);
        if rd.read_buf(buf).await? == 0 {
            return Err(if got_any {
                Error::Truncated
            } else {
                Error::Closed
            });
        }
    }
}

/// Parses a complete head off the front of `buf` (`None`: more bytes are needed).
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, Error> {
    // Where each field sits in `buf`, so values can share the head's bytes instead of being
    // copied one by one.
    let mut spots = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
    let (len, code, minor, count) = {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut fields);
        let len = match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Invalid("too many header fields"))
            }
            Err(_) => return Err(Error::Invalid("malformed head")),
        };
        let base = buf.as_ptr() as usize;
        let count = r.headers.len();
        for (spot, h) in spots.iter_mut().zip(r.headers.iter()) {
            let n = h.name.as_ptr() as usize - base;
            let v = h.value.as_ptr() as usize - base;
            *spot = (n, n + h.name.len(), v, v + h.value.len());
        }
        (len, r.code.unwrap_or(0), r.version.unwrap_or(1), count)
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("status code"))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(count);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut close = version == Version::HTTP_10;
    for &(ns, ne, vs, ve) in &spots[..count] {
        let name = HeaderName::from_bytes(&head[ns..ne])
            .map_err(|_| Error::Invalid("header field name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| Error::Invalid("header field value"))?;
        if name == CONTENT_LENGTH {
            for part in value.as_bytes().split(|b| *b == b',') {
                let n = std::str::from_utf8(part)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or(Error::Invalid("content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Invalid("differing content-length values"));
                }
                length = Some(n);
            }
        } else if name == TRANSFER_ENCODING {
            // Only the final coding decides: chunked last means chunked framing.
            let last = value
                .as_bytes()
                .rsplit(|b| *b == b',')
                .next()
                .unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == CONNECTION {
            for token in value.as_bytes().split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                    close = false;
                }
            }
        }
        headers.append(name, value);
    }
    let kind = body_kind(status, head_request, chunked, length)?;
    if matches!(kind, Kind::Close) {
        close = true;
    }
    Ok(Some(Head {
        status,
        version,
        headers,
        kind,
        keep_alive: !close,
    }))
}

/// How a response's body is delimited, from its status and framing headers (`chunked`: a
/// `Transfer-Encoding` was there, and whether its last coding is chunked).
fn body_kind(
    status: StatusCode,
    head_request: bool,
    chunked: Option<bool>,
    length: Option<u64>,
) -> Result<Kind, Error> {
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Kind::Upgrade);
    }
    if bodiless {
        return Ok(Kind::Length(0));
    }
    Ok(match (chunked, length) {
        // Both framings at once is a smuggling (response splitting) vector: an error, as
        // nginx answers it (502), never a body read one way while a cache or client reads
        // another.
        (Some(_), Some(_)) => {
            return Err(Error::Invalid("both Content-Length and Transfer-Encoding"))
        }
        (Some(true), None) => Kind::Chunked(Chunk::Size),
        // A transfer coding without chunked last: the body runs to the close (RFC 9112 §6.3).
        (Some(false), None) => Kind::Close,
        (None, Some(n)) => Kind::Length(n),
        (None, None) => Kind::Close,
    })
}

/// Where a response body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    /// Delimited by the connection's close.
    Close,
    /// 101: the connection now belongs to the tunnel.
    Upgrade,
    Done,
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// An upstream response body, read from the connection as the client side polls it.
pub struct Body {
    kind: Kind,
    reusable: bool,
    conn: Option<Box<Conn>>,
}

/// A connection handed over after a 101: the socket and what was read past the head.
pub struct Upgraded {
    pub io: Stream,
    pub read_ahead: Bytes,
    /// Keeps the connection counted against its target's cap while the tunnel runs.
    pub slot: Box<dyn Send + Sync>,
}

impl Body {
    /// The connection, when the body ended cleanly and it may carry another exchange.
    pub fn take_reusable(&mut self) -> Option<Box<Conn>> {
        let done = matches!(self.kind, Kind::Done | Kind::Length(0));
        if !(done && self.reusable) {
            return None;
        }
        self.conn.take().filter(|c| c.buf.is_empty())
    }

    /// After a 101: the raw connection for the tunnel.
    pub fn take_upgrade(&mut self) -> Option<Upgraded> {
        if self.kind != Kind::Upgrade {
            return None;
        }
        let conn = *self.conn.take()?;
        let Conn { io, buf, _slot, .. } = conn;
        Some(Upgraded {
            io,
            read_ahead: buf.freeze(),
            slot: _slot,
        })
    }

    /// Reads more bytes into the connection's buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        conn.buf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.kind = Kind::Done;
        self.reusable = false;
        self.conn = None;
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_deref_mut() else {
                return Poll::Ready(None);
            };
            match this.kind {
                Kind::Done | Kind::Length(0) | Kind::Upgrade => return Poll::Ready(None),
                Kind::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = (conn.buf.len() as u64).min(left) as usize;
                        this.kind = Kind::Length(left - n as u64);
                        return Poll::Ready(Some(Ok(Frame::data(conn.buf.split_to(n).freeze()))));
                    }
                }
                Kind::Close => {
                    if !conn.buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                    }
                }
                Kind::Chunked(Chunk::Data(left)) => {
                    if !conn.buf.is_empty() {
                        let n = (conn.buf.len() as u64).min(left) as usize;
                        let rest = left - n as u64;
                        this.kind = Kind::Chunked(if rest == 0 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(rest)
                        });
                        return Poll::Ready(Some(Ok(Frame::data(conn.buf.split_to(n).freeze()))));
                    }
                }
                Kind::Chunked(Chunk::Size) => match httparse::parse_chunk_size(&conn.buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        conn.buf.advance(used);
                        this.kind = Kind::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                        continue;
                    }
                    Ok(httparse::Status::Partial) if conn.buf.len() < 4096 => {}
                    _ => return this.fail(Error::Invalid("chunk size line")),
                },
                Kind::Chunked(Chunk::DataEnd) => {
                    if conn.buf.len() >= 2 {
                        if &conn.buf[..2] != b"\r\n" {
                            return this.fail(Error::Invalid("chunk not ended by CRLF"));
                        }
                        conn.buf.advance(2);
                        this.kind = Kind::Chunked(Chunk::Size);
                        continue;
                    }
                }
                Kind::Chunked(Chunk::Trailers) => {
                    // Trailer fields are dropped, as nginx does; skip line by line to the
                    // empty line that ends the body.
                    if let Some(at) = memchr::memmem::find(&conn.buf, b"\r\n") {
                        conn.buf.advance(at + 2);
                        if at == 0 {
                            this.kind = Kind::Done;
                            return Poll::Ready(None);
                        }
                        continue;
                    }
                    if conn.buf.len() >= MAX_HEAD {
                        return this.fail(Error::HeadTooLarge);
                    }
                }
            }
            match ready!(Self::poll_fill(conn, cx)) {
                Ok(0) if this.kind == Kind::Close => {
                    this.kind = Kind::Done;
                    this.reusable = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(Error::Truncated),
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Done | Kind::Length(0) | Kind::Upgrade) || self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.kind {
            Kind::Length(n) => SizeHint::with_exact(n),
            Kind::Done | Kind::Upgrade => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connection to a one-shot origin that answers each request with `answer` and hands
    /// back what it received.
    async fn exchange(
        req: Request<ProxyBody>,
        answer: &'static [u8],
    ) -> (
        Result<Response<Body>, Failed>,
        tokio::task::JoinHandle<Vec<u8>>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let origin = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            let mut b = [0u8; 4096];
            // Read until the head (and any body the test sends) has arrived.
            loop {
                let n = s.read(&mut b).await.unwrap();
                got.extend_from_slice(&b[..n]);
                if n == 0
                    || got.windows(4).any(|w| w == b"\r\n\r\n")
                        && !got.ends_with(b"chunked\r\n\r\n")
                {
                    break;
                }
            }
            s.write_all(answer).await.unwrap();
            let _ = s.shutdown().await;
            got
        });
        let io = tokio::net::TcpStream::connect(addr).await.unwrap();
        let conn = Box::new(Conn::new(Stream::Tcp(io), Box::new(())));
        (conn.send(req).await, origin)
    }

    fn get(path: &str) -> Request<ProxyBody> {
        let mut r = Request::new(ProxyBody::empty());
        *r.uri_mut() = path.parse().unwrap();
        r.headers_mut()
            .insert("host", HeaderValue::from_static("up"));
        r
    }

    #[tokio::test]
    async fn writes_the_head_and_reads_a_length_body_keeping_the_connection() {
        let (resp, origin) = exchange(
            get("/a?b=1"),
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\nx-a: 2\r\n\r\nhello",
        )
        .await;
        let mut resp = resp.ok().unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers().get_all("x-a").iter().count(), 2);
        let body = resp
            .body_mut()
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(&body[..], b"hello");
        assert!(resp.body().is_end_stream());
        assert!(resp.body_mut().take_reusable().is_some());
        let sent = origin.await.unwrap();
        assert_eq!(sent, b"GET /a?b=1 HTTP/1.1\r\nhost: up\r\n\r\n");
    }

    #[tokio::test]
    async fn decodes_chunked_bodies_and_skips_interim_heads_and_trailers() {
        let (resp, _) = exchange(
            get("/"),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
        )
        .await;
        let mut resp = resp.ok().unwrap();
        let body = resp.body_mut().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello world");
        assert!(resp.body_mut().take_reusable().is_some());
    }

    #[tokio::test]
    async fn a_body_to_the_close_is_read_and_the_connection_not_reused() {
        let (resp, _) = exchange(get("/"), b"HTTP/1.1 200 OK\r\n\r\nall of it").await;
        let mut resp = resp.ok().unwrap();
        let body = resp.body_mut().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"all of it");
        assert!(resp.body_mut().take_reusable().is_none());
    }

    #[tokio::test]
    async fn refuses_differing_lengths_and_truncated_bodies() {
        let (resp, _) = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        )
        .await;
        assert!(matches!(resp.err().unwrap().error, Error::Invalid(_)));
        let (resp, _) = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nshort",
        )
        .await;
        let mut resp = resp.ok().unwrap();
        assert!(resp.body_mut().collect().await.is_err());
        let (resp, _) = exchange(get("/"), b"").await;
        assert!(matches!(resp.err().unwrap().error, Error::Closed));
    }

    #[tokio::test]
    async fn head_answers_and_204_have_no_body_whatever_their_length_says() {
        let mut req = get("/");
        *req.method_mut() = Method::HEAD;
        let (resp, _) = exchange(req, b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n").await;
        let mut resp = resp.ok().unwrap();
        assert!(resp.body().is_end_stream());
        assert!(resp.body_mut().take_reusable().is_some());
    }

    #[tokio::test]
    async fn request_bodies_are_framed_by_length_or_chunked() {
        let mut req = get("/p");
        *req.method_mut() = Method::POST;
        *req.body_mut() = ProxyBody::Bytes(Some(Bytes::from_static(b"abc")));
        req.headers_mut()
            .insert("content-length", HeaderValue::from_static("99"));
        let (resp, origin) = exchange(req, b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert!(resp.is_ok());
        let sent = origin.await.unwrap();
        assert_eq!(
            sent,
            b"POST /p HTTP/1.1\r\nhost: up\r\ncontent-length: 3\r\n\r\nabc"
        );
        let mut req = get("/p");
        *req.method_mut() = Method::POST;
        let (resp, origin) = exchange(req, b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert!(resp.is_ok());
        let sent = origin.await.unwrap();
        assert!(sent.ends_with(b"content-length: 0\r\n\r\n"));
    }

    #[tokio::test]
    async fn a_101_hands_over_the_socket_with_the_bytes_read_past_the_head() {
        let (resp, _) = exchange(
            get("/ws"),
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n\x81\x02hi",
        )
        .await;
        let mut resp = resp.ok().unwrap();
        assert_eq!(resp.status(), 101);
        assert!(resp.body().is_end_stream());
        let up = resp.body_mut().take_upgrade().unwrap();
        assert_eq!(&up.read_ahead[..], b"\x81\x02hi");
        assert!(resp.body_mut().take_reusable().is_none());
    }

    #[tokio::test]
    async fn an_idle_connection_closed_by_its_target_is_seen_closed() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let io = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let mut conn = Conn::new(Stream::Tcp(io), Box::new(()));
        assert!(!conn.is_closed());
        drop(s);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(conn.is_closed());
    }
}
