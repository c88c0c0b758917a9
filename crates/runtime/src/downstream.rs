//! The body of a client's request as the pipeline sees it, whichever server read its head:
//! hyper's (HTTP/2, and HTTP/1.1 with `node.http1.server: hyper`) or the gateway's own
//! HTTP/1.1 server, which hands over a body that reads the client's socket as it is polled.

use crate::upstream::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A body the gateway's own HTTP/1.1 server reads off the client connection.
pub type OwnBody = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send + Sync>>;

/// A client request's body.
pub enum RequestBody {
    /// No body at all (the own server's requests without one: nothing is allocated).
    Empty,
    Hyper(Incoming),
    Own(OwnBody),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Own(b) => b.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::Own(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::Own(b) => b.size_hint(),
        }
    }
}
