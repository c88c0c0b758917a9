//! Finds HTTP/1.1 requests that carried both `Content-Length` and `Transfer-Encoding`, so that
//! they are refused with 400 instead of forwarded.
//!
//! Written by hand because hyper (1.12) follows RFC 9112 §6.3 for such a request, decoding it
//! as chunked, dropping `Content-Length` and closing the connection afterwards, but leaves no
//! trace of it in the `Request` (the raw header record is crate-private). Those messages are
//! the signature of request-smuggling attempts, and we answer them as errors.
//!
//! The watcher sees every byte hyper reads and follows the framing: a head up to its blank
//! line, then a `Content-Length` body or a chunked body, then the next head. It fails open:
//! whatever it cannot follow (an upgrade, a malformed length hyper rejects on its own, an
//! oversized head) switches it off for the rest of the connection, so it never refuses a
//! request that hyper would have read normally.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest head the watcher follows (hyper's own limit is larger; past this, it stops).
const MAX_HEAD: usize = 64 * 1024;

/// What the watcher found, shared with the connection's request handler.
#[derive(Default)]
pub struct Findings {
    /// 1-based number of the first request head with both headers; 0 for none.
    ambiguous_at: AtomicU64,
}

impl Findings {
    /// Whether request number `n` (1-based, in arrival order) had ambiguous framing.
    pub fn is_ambiguous(&self, n: u64) -> bool {
        self.ambiguous_at.load(Ordering::Relaxed) == n
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    ChunkSize { value: u64, digits: u8, ext: bool },
    ChunkData(u64),
    ChunkDataEnd(u8),
    Trailers { line_len: usize },
    Off,
}

/// The framing state machine, separate from I/O so it can be tested on byte strings.
pub struct Tracker {
    state: State,
    head: Vec<u8>,
    heads: u64,
    findings: Arc<Findings>,
}

impl Tracker {
    pub fn new(findings: Arc<Findings>) -> Self {
        Self {
            state: State::Head,
            head: Vec::new(),
            heads: 0,
            findings,
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Head => {
                    if self.head.is_empty() {
                        // The common case: the whole head is in this read; no copy.
                        if let Some(i) = memchr::memmem::find(data, b"\r\n\r\n") {
                            let end = i + 4;
                            self.heads += 1;
                            self.state = self.after_head(&data[..end]);
                            data = &data[end..];
                            continue;
                        }
                    }
                    let before = self.head.len();
                    let from = before.saturating_sub(3);
                    self.head.extend_from_slice(data);
                    let Some(end) =
                        memchr::memmem::find(&self.head[from..], b"\r\n\r\n").map(|i| from + i + 4)
                    else {
                        if self.head.len() > MAX_HEAD {
                            self.off();
                        }
                        return;
                    };
                    data = &data[end - before..];
                    self.heads += 1;
                    let head = std::mem::take(&mut self.head);
                    self.state = self.after_head(&head[..end]);
                    self.head = head;
                    self.head.clear();
                }
                State::Fixed(n) => {
                    let k = (*n).min(data.len() as u64);
                    *n -= k;
                    data = &data[k as usize..];
                    if *n == 0 {
                        self.state = State::Head;
                    }
                }
                State::ChunkSize { value, digits, ext } => {
                    let b = data[0];
                    data = &data[1..];
                    match b {
                        b'\n' => {
                            self.state = if *digits == 0 {
                                State::Off
                            } else if *value == 0 {
                                State::Trailers { line_len: 0 }
                            } else {
                                State::ChunkData(*value)
                            }
                        }
                        _ if *ext || b == b'\r' => {}
                        b';' | b' ' | b'\t' => *ext = true,
                        _ => match (b as char).to_digit(16) {
                            Some(d) if *digits < 16 => {
                                *value = (*value << 4) | u64::from(d);
                                *digits += 1;
                            }
                            _ => self.state = State::Off,
                        },
                    }
                }
                State::ChunkData(n) => {
                    let k = (*n).min(data.len() as u64);
                    *n -= k;
                    data = &data[k as usize..];
                    if *n == 0 {
                        self.state = State::ChunkDataEnd(2);
                    }
                }
                State::ChunkDataEnd(left) => {
                    data = &data[1..];
                    *left -= 1;
                    if *left == 0 {
                        self.state = State::ChunkSize {
                            value: 0,
                            digits: 0,
                            ext: false,
                        };
                    }
                }
                State::Trailers { line_len } => {
                    let b = data[0];
                    data = &data[1..];
                    match b {
                        b'\n' if *line_len == 0 => self.state = State::Head,
                        b'\n' => *line_len = 0,
                        b'\r' => {}
                        _ => *line_len += 1,
                    }
                }
            }
        }
    }

    fn off(&mut self) {
        self.state = State::Off;
        self.head = Vec::new();
    }

    /// Reads the framing headers of one complete head and says what follows it.
    fn after_head(&mut self, head: &[u8]) -> State {
        let mut lines = head.split(|b| *b == b'\n');
        let request_line = lines.next().unwrap_or_default();
        if request_line.starts_with(b"CONNECT ") {
            return State::Off;
        }
        let (mut length, mut lengths_differ, mut te, mut chunked, mut upgrade) =
            (None::<u64>, false, false, false, false);
        // Every transfer coding named, over all Transfer-Encoding lines.
        let mut codings = 0usize;
        for line in lines {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
            if name.eq_ignore_ascii_case(b"content-length") {
                for v in value.split(|b| *b == b',').map(trim) {
                    match std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                        _ => lengths_differ = true,
                    }
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                te = true;
                codings += value
                    .split(|b| *b == b',')
                    .filter(|c| !trim(c).is_empty())
                    .count();
                chunked = value
                    .rsplit(|b| *b == b',')
                    .next()
                    .map(trim)
                    .is_some_and(|last| last.eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade = true;
            }
        }
        // Besides both lengths: a coding other than one `chunked` (`gzip, chunked` would reach
        // the upstream decoded of its chunks but not of its gzip; `chunked, chunked` is read
        // once here and perhaps twice there), and an upgrade that carries a body (which the
        // upstream might read as the new protocol's first bytes).
        let odd_te = te && (codings != 1 || !chunked);
        let upgrade_body = upgrade && (te || length.is_some_and(|n| n > 0));
        if (te && (length.is_some() || lengths_differ)) || odd_te || upgrade_body {
            if self.findings.ambiguous_at.load(Ordering::Relaxed) == 0 {
                self.findings
                    .ambiguous_at
                    .store(self.heads, Ordering::Relaxed);
            }
            // hyper closes the connection after answering this request.
            return State::Off;
        }
        if upgrade || lengths_differ || (te && !chunked) {
            // A protocol switch, or framing hyper refuses by itself.
            return State::Off;
        }
        match (chunked, length) {
            (true, _) => State::ChunkSize {
                value: 0,
                digits: 0,
                ext: false,
            },
            (false, Some(n)) if n > 0 => State::Fixed(n),
            _ => State::Head,
        }
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// A connection whose incoming bytes pass through a [`Tracker`] on their way to hyper.
pub struct Watched<T> {
    inner: T,
    tracker: Tracker,
}

impl<T> Watched<T> {
    pub fn new(inner: T, findings: Arc<Findings>) -> Self {
        Self {
            inner,
            tracker: Tracker::new(findings),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.tracker.feed(&buf.filled()[before..]);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the ambiguous request number.
    fn run(input: &[u8], step: usize) -> (u64, u64, bool) {
        let f = Arc::new(Findings::default());
        let mut t = Tracker::new(f.clone());
        for piece in input.chunks(step.max(1)) {
            t.feed(piece);
        }
        (
            f.ambiguous_at.load(Ordering::Relaxed),
            t.heads,
            t.state == State::Off,
        )
    }

    #[test]
    fn follows_framing_and_flags_the_ambiguous_request() {
        let cases: &[(&[u8], u64, u64)] = &[
            // (bytes, ambiguous request number, heads seen)
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", 0, 2),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 1, 1),
            (b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n", 1, 1),
            // A length body that looks like a head is skipped, not parsed.
            (b"POST / HTTP/1.1\r\nContent-Length: 59\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\nGET /ok HTTP/1.1\r\n\r\n", 0, 2),
            // So is a chunked body, trailers included; the third request is the bad one.
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1b;ext=1\r\nContent-Length: 1\r\n\r\nxxxxxx\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n", 3, 3),
        ];
        for (bytes, ambiguous, heads) in cases {
            for step in [1, 2, 7, 1000] {
                let (a, h, _) = run(bytes, step);
                assert_eq!(
                    (a, h),
                    (*ambiguous, *heads),
                    "step {step}: {}",
                    String::from_utf8_lossy(bytes)
                );
            }
        }
    }

    #[test]
    fn gives_up_on_what_it_cannot_follow() {
        assert!(run(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05hello", 3).2);
        assert!(run(b"CONNECT a:443 HTTP/1.1\r\n\r\n", 3).2);
        assert!(
            run(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                3
            )
            .2
        );
        assert!(!run(b"GET / HTTP/1.1\r\n\r\n", 3).2);
    }
}
