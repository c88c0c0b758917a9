//! A request body read off the client's connection as the pipeline polls it. The connection
//! lends the body its read half and buffer, and gets them back when the body ends (or is
//! dropped) to read the next request.

use bytes::{Buf, Bytes, BytesMut};
use gatehouse_runtime::upstream::BoxError;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::AsyncRead;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// Bytes asked of the socket per read.
pub const READ_CHUNK: usize = 8 * 1024;
/// The longest chunk-size line (extensions included), and the most trailer bytes.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 8 * 1024;

/// The connection's read side while a body has it.
pub struct Lent<R> {
    pub r: R,
    pub buf: BytesMut,
}

/// Where a body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers(usize),
    Done,
    /// Malformed, cut off or stalled: the connection cannot carry another request.
    Broken,
}

/// The read side handed back, and where the body stood.
pub struct Returned<R> {
    pub lent: Lent<R>,
    pub state: State,
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("request body: {0}")]
    Invalid(&'static str),
    #[error("client closed the connection in the middle of the request body")]
    Truncated,
    #[error("no request body bytes for {0:?}")]
    Stalled(Duration),
    #[error("request body: {0}")]
    Io(#[from] std::io::Error),
}

/// What polling a body for a frame gives.
type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

pub struct Body<R> {
    lent: Option<Lent<R>>,
    state: State,
    back: Option<oneshot::Sender<Returned<R>>>,
    /// Told on the first poll: the connection then sends `100 Continue`.
    on_first_poll: Option<oneshot::Sender<()>>,
    /// The longest wait for a byte of the body.
    stall: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<R: AsyncRead + Unpin> Body<R> {
    pub fn new(
        lent: Lent<R>,
        state: State,
        back: Option<oneshot::Sender<Returned<R>>>,
        on_first_poll: Option<oneshot::Sender<()>>,
        stall: Duration,
    ) -> Self {
        let mut body = Self {
            lent: Some(lent),
            state,
            back,
            on_first_poll,
            stall,
            timer: None,
            armed: false,
        };
        body.hand_back_if_done();
        body
    }

    fn hand_back_if_done(&mut self) {
        if matches!(self.state, State::Done | State::Length(0)) {
            self.state = State::Done;
            self.hand_back();
        }
    }

    fn hand_back(&mut self) {
        if let (Some(lent), Some(back)) = (self.lent.take(), self.back.take()) {
            let _ = back.send(Returned {
                lent,
                state: self.state,
            });
        }
    }

    fn fail(&mut self, e: Error) -> Polled {
        self.state = State::Broken;
        self.hand_back();
        Poll::Ready(Some(Err(Box::new(e))))
    }

    /// One decoding step over what is buffered: `Some` when it has an answer, `None` when it
    /// needs more bytes.
    fn step(&mut self) -> Option<Polled> {
        let buf = &mut self.lent.as_mut()?.buf;
        match self.state {
            State::Done | State::Broken => Some(Poll::Ready(None)),
            State::Length(left) if !buf.is_empty() => {
                let n = (buf.len() as u64).min(left) as usize;
                self.state = State::Length(left - n as u64);
                let data = buf.split_to(n).freeze();
                self.hand_back_if_done();
                Some(Poll::Ready(Some(Ok(Frame::data(data)))))
            }
            State::ChunkData(left) if !buf.is_empty() => {
                let n = (buf.len() as u64).min(left) as usize;
                let rest = left - n as u64;
                self.state = if rest == 0 {
                    State::ChunkEnd
                } else {
                    State::ChunkData(rest)
                };
                Some(Poll::Ready(Some(Ok(Frame::data(buf.split_to(n).freeze())))))
            }
            State::ChunkSize => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    buf.advance(used);
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::ChunkData(size)
                    };
                    self.step()
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => None,
                _ => Some(self.fail(Error::Invalid("invalid chunk size line"))),
            },
            State::ChunkEnd if buf.len() >= 2 => {
                if &buf[..2] != b"\r\n" {
                    return Some(self.fail(Error::Invalid("chunk data not followed by CRLF")));
                }
                buf.advance(2);
                self.state = State::ChunkSize;
                self.step()
            }
            State::Trailers(seen) => {
                // Trailer fields are dropped, as nginx does: line by line to the empty line.
                let Some(at) = memchr::memmem::find(buf, b"\r\n") else {
                    if seen + buf.len() > MAX_TRAILERS {
                        return Some(self.fail(Error::Invalid("trailers too large")));
                    }
                    return None;
                };
                buf.advance(at + 2);
                if at == 0 {
                    self.state = State::Done;
                    self.hand_back();
                    return Some(Poll::Ready(None));
                }
                self.state = State::Trailers(seen + at + 2);
                self.step()
            }
            _ => None,
        }
    }

    /// Reads more of the body; a wait longer than `stall` for a byte fails it.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let Some(lent) = self.lent.as_mut() else {
            return Poll::Ready(Err(Error::Truncated));
        };
        if lent.buf.capacity() - lent.buf.len() < 1024 {
            lent.buf.reserve(READ_CHUNK);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut lent.r), cx, &mut lent.buf) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(Error::Truncated)),
            Poll::Ready(Ok(_)) => {
                self.armed = false;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => {
                let deadline = Instant::now() + self.stall;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !self.armed {
                    timer.as_mut().reset(deadline);
                    self.armed = true;
                }
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Err(Error::Stalled(self.stall)))
            }
        }
    }
}

use std::future::Future as _;

impl<R: AsyncRead + Unpin> http_body::Body for Body<R> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(tell) = this.on_first_poll.take() {
            let _ = tell.send(());
        }
        loop {
            if let Some(answer) = this.step() {
                return answer;
            }
            if this.lent.is_none() {
                return Poll::Ready(None);
            }
            if let Err(e) = ready!(this.poll_fill(cx)) {
                return this.fail(e);
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl<R> Drop for Body<R> {
    fn drop(&mut self) {
        if let (Some(lent), Some(back)) = (self.lent.take(), self.back.take()) {
            let _ = back.send(Returned {
                lent,
                state: self.state,
            });
        }
    }
}

/// Reads and discards what is left of a body the pipeline did not read (a request refused
/// before its body was needed), so that the connection can carry the next request: at most
/// `cap` bytes, within `within`. `None` when the connection must close instead.
pub async fn discard<R: AsyncRead + Unpin>(
    returned: Returned<R>,
    cap: u64,
    within: Duration,
) -> Option<Lent<R>> {
    use http_body_util::BodyExt;
    let (tx, mut rx) = oneshot::channel();
    let mut body = Body::new(returned.lent, returned.state, Some(tx), None, within);
    let mut seen = 0u64;
    let drained = tokio::time::timeout(within, async {
        while let Some(frame) = body.frame().await {
            seen += frame.ok()?.data_ref().map_or(0, |d| d.len() as u64);
            if seen > cap {
                return None;
            }
        }
        Some(())
    })
    .await;
    drop(body);
    match (drained, rx.try_recv()) {
        (
            Ok(Some(())),
            Ok(Returned {
                lent,
                state: State::Done,
            }),
        ) => Some(lent),
        _ => None,
    }
}
