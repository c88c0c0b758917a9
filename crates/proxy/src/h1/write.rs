//! A response written to an HTTP/1.1 client: the head straight from the `HeaderMap`, the
//! body's framing chosen from what is known of it, and small bodies in the same write as the
//! head.

use bytes::Buf;
use futures_util::FutureExt;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Body bytes up to this much are copied behind the head into one write; larger frames go
/// out on their own.
const COALESCE: usize = 32 * 1024;

/// How the body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body: HEAD, 1xx, 204, 304.
    None,
    Length(u64),
    Chunked,
    /// An HTTP/1.0 client and a body of unknown length: ended by closing.
    Close,
}

/// What the request said about the response it may get.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    pub head_only: bool,
    pub version: Version,
    pub keep_alive: bool,
    /// Each write must finish within this (a client that stops reading is let go).
    pub write_timeout: Duration,
}

/// Writes `resp`; `Ok(true)` when it went out whole and framed, so that the connection can
/// carry the next request.
pub async fn response<W, B>(
    w: &mut W,
    out: &mut Vec<u8>,
    resp: Response<B>,
    ask: Ask,
    gone: impl std::future::Future<Output = ()>,
) -> std::io::Result<bool>
where
    W: AsyncWrite + Unpin,
    B: Body,
    B::Data: Buf,
{
    let (mut parts, body) = resp.into_parts();
    let framing = framing(&mut parts.headers, parts.status, &body, ask);
    let keep_alive = ask.keep_alive && framing != Framing::Close;
    out.clear();
    // Room for a typical head up front, instead of growing it field by field.
    out.reserve(1024);
    head(out, parts.status, &parts.headers, ask.version, keep_alive);
    let whole = if framing == Framing::None {
        drop(body);
        true
    } else {
        body_of(w, out, body, framing, ask.write_timeout, gone).await?
    };
    // The body is gone before its last bytes are written: what it records at its end (the
    // metrics, the access log, a pooled upstream connection) is done when the client has
    // the response, as with hyper.
    send(w, out, ask.write_timeout).await?;
    Ok(whole && keep_alive)
}

/// Writes the body's frames, leaving the last bytes in `out`; `Ok(false)` when the body
/// broke off or did not match its `Content-Length`. A client that closes the connection
/// while the body waits for more (`gone`) ends it: the body is dropped, which frees what it
/// holds upstream.
async fn body_of<W, B>(
    w: &mut W,
    out: &mut Vec<u8>,
    body: B,
    framing: Framing,
    timeout: Duration,
    gone: impl std::future::Future<Output = ()>,
) -> std::io::Result<bool>
where
    W: AsyncWrite + Unpin,
    B: Body,
    B::Data: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut gone = std::pin::pin!(gone);
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    while !body.is_end_stream() {
        // A frame that is ready now joins what is buffered; only a wait flushes first.
        let frame = match body.frame().now_or_never() {
            Some(f) => f,
            None => {
                send(w, out, timeout).await?;
                tokio::select! {
                    biased;
                    f = body.frame() => f,
                    () = &mut gone => return Err(std::io::ErrorKind::ConnectionAborted.into()),
                }
            }
        };
        let Some(frame) = frame else { break };
        // A body that broke off: the client must see the response as cut, not complete.
        let Ok(frame) = frame else { return Ok(false) };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let (Ok(trailers), Framing::Chunked) = (frame.into_trailers(), framing) {
                    out.extend_from_slice(b"0\r\n");
                    fields(out, &trailers);
                    out.extend_from_slice(b"\r\n");
                    return Ok(true);
                }
                continue;
            }
        };
        let n = data.remaining();
        if n == 0 {
            continue;
        }
        if (n as u64) > left {
            return Ok(false); // more than its Content-Length said
        }
        if framing == Framing::Chunked {
            use std::io::Write as _;
            let _ = write!(out, "{n:x}\r\n");
        }
        if out.len() + n > COALESCE {
            send(w, out, timeout).await?;
        }
        if n > COALESCE {
            while data.has_remaining() {
                let k = within(timeout, w.write(data.chunk())).await?;
                data.advance(k);
            }
        } else {
            while data.has_remaining() {
                let c = data.chunk();
                out.extend_from_slice(c);
                let k = c.len();
                data.advance(k);
            }
        }
        match framing {
            Framing::Chunked => out.extend_from_slice(b"\r\n"),
            Framing::Length(_) => left -= n as u64,
            _ => {}
        }
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        Framing::Length(_) if left != 0 => return Ok(false), // shorter than it said
        _ => {}
    }
    Ok(true)
}

/// The body's framing, with the headers that say it.
fn framing<B: Body>(headers: &mut HeaderMap, status: StatusCode, body: &B, ask: Ask) -> Framing {
    headers.remove(TRANSFER_ENCODING);
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        if status != StatusCode::NOT_MODIFIED {
            headers.remove(CONTENT_LENGTH);
        }
        return Framing::None;
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if ask.head_only {
        return Framing::None;
    }
    if let Some(n) = declared {
        return Framing::Length(n);
    }
    if let Some(n) = body.size_hint().exact() {
        headers.insert(CONTENT_LENGTH, http::HeaderValue::from(n));
        return Framing::Length(n);
    }
    if ask.version == Version::HTTP_11 {
        headers.insert(TRANSFER_ENCODING, http::HeaderValue::from_static("chunked"));
        return Framing::Chunked;
    }
    Framing::Close
}

fn head(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap, v: Version, keep: bool) {
    out.extend_from_slice(match v {
        Version::HTTP_10 => b"HTTP/1.0 ",
        _ => b"HTTP/1.1 ",
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name != CONNECTION {
            field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if !headers.contains_key(DATE) {
        DATE_NOW.with(|d| field(out, b"date", &d.borrow_mut().now()));
    }
    if !keep {
        field(out, b"connection", b"close");
    } else if v == Version::HTTP_10 {
        field(out, b"connection", b"keep-alive");
    } else {
        // What the pipeline set (an upgrade's `Connection: upgrade`) goes as it is.
        for value in headers.get_all(CONNECTION) {
            field(out, b"connection", value.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    out: &mut Vec<u8>,
    timeout: Duration,
) -> std::io::Result<()> {
    if !out.is_empty() {
        within(timeout, w.write_all(out)).await?;
        out.clear();
    }
    Ok(())
}

async fn within<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(timeout, f).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client did not read the response in time",
        ))
    })
}

/// The `Date` header's value, formatted once a second per thread (as nginx and hyper do).
struct DateCache {
    second: u64,
    value: [u8; 29],
}

impl DateCache {
    fn now(&mut self) -> [u8; 29] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            let s = httpdate::fmt_http_date(now);
            if s.len() == 29 {
                self.value.copy_from_slice(s.as_bytes());
                self.second = second;
            }
        }
        self.value
    }
}

thread_local! {
    static DATE_NOW: RefCell<DateCache> = const {
        RefCell::new(DateCache { second: 0, value: [b' '; 29] })
    };
}

/// Writes a bare status line and headers (`100 Continue`).
pub async fn interim<W: AsyncWrite + Unpin>(w: &mut W, status: StatusCode) -> std::io::Result<()> {
    let line = format!(
        "HTTP/1.1 {} {}\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    w.write_all(line.as_bytes()).await
}
