//! Response bodies: the upstream's body streamed through (with read and total timeouts, and
//! the connection handed back to the pool at a clean end), or a body the gateway made.

use bytes::Bytes;
use gatehouse_plugin_api::Hold;
use gatehouse_runtime::upstream::{Sender, TargetState, UpBody};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("upstream response body: no data for {0:?}")]
pub struct ReadTimeout(pub Duration);

#[derive(Debug, thiserror::Error)]
#[error("upstream exchange exceeded its total timeout")]
pub struct TotalTimeout;

/// Counts a request in flight on a target (least_conn, ewma) until dropped.
pub struct InFlight(pub Arc<TargetState>);

impl InFlight {
    pub fn new(target: Arc<TargetState>) -> Self {
        target.active.fetch_add(1, Ordering::Relaxed);
        Self(target)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// The upstream's response body on its way to the client.
    pub struct UpstreamBody {
        #[pin]
        inner: UpBody,
        // The connection (h2c), returned to the pool once the body ended cleanly; an HTTP/1.1
        // connection comes back out of `inner` instead.
        sender: Option<Sender>,
        in_flight: Option<InFlight>,
        // What plugins keep until the response ends (concurrency slots): dropped with the
        // body, i.e. once hyper has sent it or the client has gone.
        pub(crate) holds: Vec<Hold>,
        read_timeout: Duration,
        deadline: Option<Instant>,
        #[pin]
        timer: Sleep,
        // A copy for the fallback cache, when the response may be kept.
        tee: Option<Box<Tee>>,
    }
}

/// Copies a body as it streams, up to a limit; at its clean end hands the copy to `done`.
/// Over the limit, or on an error, the copy is dropped and nothing is kept.
pub struct Tee {
    parts: Vec<Bytes>,
    len: u64,
    limit: u64,
    done: Option<Box<dyn FnOnce(Bytes) + Send>>,
}

impl Tee {
    pub fn new(limit: u64, done: impl FnOnce(Bytes) + Send + 'static) -> Self {
        Self {
            parts: Vec::new(),
            len: 0,
            limit,
            done: Some(Box::new(done)),
        }
    }

    /// False once over the limit.
    fn push(&mut self, data: &Bytes) -> bool {
        self.len += data.len() as u64;
        if self.len > self.limit {
            return false;
        }
        self.parts.push(data.clone());
        true
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let body = match self.parts.len() {
                1 => self.parts.pop().unwrap_or_default(),
                _ => Bytes::from(self.parts.concat()),
            };
            done(body);
        }
    }
}

impl UpstreamBody {
    /// `first` is when the first frame is due (now + read timeout; passed in because the
    /// caller has just read the clock).
    pub fn new(
        inner: UpBody,
        sender: Option<Sender>,
        in_flight: InFlight,
        holds: Vec<Hold>,
        first: Instant,
        read_timeout: Duration,
        deadline: Option<Instant>,
    ) -> Self {
        let at = deadline.map_or(first, |d| d.min(first));
        Self {
            inner,
            sender,
            in_flight: Some(in_flight),
            holds,
            read_timeout,
            deadline,
            timer: tokio::time::sleep_until(at),
            tee: None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(tee), Some(data)) = (this.tee.as_mut(), frame.data_ref()) {
                    if !tee.push(data) {
                        *this.tee = None;
                    }
                }
                if this.inner.is_end_stream() {
                    if let Some(mut tee) = this.tee.take() {
                        tee.finish();
                    }
                    finish(this.inner.get_mut(), this.sender, this.in_flight);
                } else {
                    let next = Instant::now() + *this.read_timeout;
                    let at = this.deadline.map_or(next, |d| d.min(next));
                    this.timer.as_mut().reset(at);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.sender.take();
                this.in_flight.take();
                this.tee.take();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if let Some(mut tee) = this.tee.take() {
                    tee.finish();
                }
                finish(this.inner.get_mut(), this.sender, this.in_flight);
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.poll(cx) {
                Poll::Ready(()) => {
                    // The connection is mid-response: it cannot be reused, drop it.
                    this.sender.take();
                    this.in_flight.take();
                    let err: BoxError = match this.deadline {
                        Some(d) if Instant::now() >= *d => Box::new(TotalTimeout),
                        _ => Box::new(ReadTimeout(*this.read_timeout)),
                    };
                    Poll::Ready(Some(Err(err)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn finish(inner: &mut UpBody, sender: &mut Option<Sender>, in_flight: &mut Option<InFlight>) {
    if let Some(flight) = in_flight.take() {
        if let Some(s) = inner.take_reusable().or_else(|| sender.take()) {
            flight.0.put_idle(s);
        }
    }
}

/// Turns a response body's frames into others as they stream: protocol conversion
/// (gRPC-Web puts trailers into the body).
pub trait Convert: Send {
    /// One frame in; what goes out for it, if anything yet.
    fn frame(&mut self, frame: Frame<Bytes>) -> Option<Frame<Bytes>>;
    /// The body ended: what is left to send.
    fn end(&mut self) -> Option<Frame<Bytes>>;
}

/// Sees (and may change) each chunk of a response body as it streams; `end` on the last call.
/// Dropped with the body.
pub trait Filter: Send {
    fn chunk(&mut self, data: &mut Bytes, end: bool);
}

pin_project_lite::pin_project! {
    /// What the gateway sends back to the client.
    #[project = RespBodyProj]
    pub enum RespBody {
        Upstream { #[pin] body: UpstreamBody },
        // `holds` live as long as the body (see `with_hold`).
        Full { bytes: Option<Bytes>, holds: Vec<Hold> },
        // A body whose chunks go through a filter; `done` once it saw the end.
        Filtered { inner: Pin<Box<RespBody>>, filter: Box<dyn Filter>, done: bool, holds: Vec<Hold> },
        // A body whose frames are converted into others; `done` once it saw the end.
        Converted { inner: Pin<Box<RespBody>>, conv: Box<dyn Convert>, done: bool, holds: Vec<Hold> },
    }
}

impl RespBody {
    pub fn full(b: Bytes) -> Self {
        RespBody::Full {
            bytes: Some(b),
            holds: Vec::new(),
        }
    }
    pub fn empty() -> Self {
        RespBody::Full {
            bytes: None,
            holds: Vec::new(),
        }
    }
    /// Keeps `h` until this body is dropped: sent in full, or abandoned by the client.
    pub fn with_hold(mut self, h: Hold) -> Self {
        match &mut self {
            RespBody::Upstream { body } => body.holds.push(h),
            RespBody::Full { holds, .. } => holds.push(h),
            RespBody::Filtered { holds, .. } => holds.push(h),
            RespBody::Converted { holds, .. } => holds.push(h),
        }
        self
    }

    /// This body with each chunk passed through `filter`.
    pub fn filtered(self, filter: Box<dyn Filter>) -> Self {
        RespBody::Filtered {
            inner: Box::pin(self),
            filter,
            done: false,
            holds: Vec::new(),
        }
    }
    /// This body with its frames converted by `conv`.
    pub fn converted(self, conv: Box<dyn Convert>) -> Self {
        RespBody::Converted {
            inner: Box::pin(self),
            conv,
            done: false,
            holds: Vec::new(),
        }
    }
    pub fn upstream(body: UpstreamBody) -> Self {
        RespBody::Upstream { body }
    }
    /// Copies an upstream body into `tee` as it streams (a body the gateway made is left).
    pub fn with_tee(mut self, tee: Tee) -> Self {
        if let RespBody::Upstream { body } = &mut self {
            body.tee = Some(Box::new(tee));
        }
        self
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            RespBodyProj::Upstream { body } => body.poll_frame(cx),
            RespBodyProj::Full { bytes, .. } => {
                Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b))))
            }
            RespBodyProj::Filtered {
                inner,
                filter,
                done,
                ..
            } => poll_filtered(inner.as_mut(), filter.as_mut(), done, cx),
            RespBodyProj::Converted {
                inner, conv, done, ..
            } => loop {
                if *done {
                    return Poll::Ready(None);
                }
                match inner.as_mut().poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Err(e))) => {
                        *done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Ready(None) => {
                        *done = true;
                        return Poll::Ready(conv.end().map(Ok));
                    }
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(out) = conv.frame(f) {
                            return Poll::Ready(Some(Ok(out)));
                        }
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Upstream { body } => body.is_end_stream(),
            RespBody::Full { bytes, .. } => bytes.is_none(),
            // Not before the filter saw the end: it may still add to the body.
            RespBody::Filtered { done, .. } | RespBody::Converted { done, .. } => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Upstream { body } => body.size_hint(),
            RespBody::Filtered { .. } | RespBody::Converted { .. } => SizeHint::default(),
            RespBody::Full { bytes, .. } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// The next frame of a filtered body. A chunk the filter empties is not sent (an empty chunk
/// would end an HTTP/1.1 chunked body early); the filter hears of the end exactly once.
fn poll_filtered(
    mut inner: Pin<&mut RespBody>,
    filter: &mut dyn Filter,
    done: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    loop {
        if *done {
            return Poll::Ready(None);
        }
        let frame = match inner.as_mut().poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Err(e))) => {
                *done = true;
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(None) => {
                *done = true;
                let mut last = Bytes::new();
                filter.chunk(&mut last, true);
                return Poll::Ready((!last.is_empty()).then(|| Ok(Frame::data(last))));
            }
        };
        let mut data = match frame.into_data() {
            Ok(d) => d,
            // Trailers go through as they are.
            Err(frame) => return Poll::Ready(Some(Ok(frame))),
        };
        let end = inner.is_end_stream();
        filter.chunk(&mut data, end);
        *done = end;
        if !data.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }
}
