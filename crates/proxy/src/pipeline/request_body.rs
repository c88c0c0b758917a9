//! The request body read whole before the `access` phase, for routes whose plugins asked for
//! it (HMAC over the body, a WAF, a body-keyed cache): capped, timed, then sent upstream (and
//! again by retries) from memory.

use crate::errors::Failure;
use bytes::Bytes;
use http_body::Body as _;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use gatehouse_runtime::downstream::RequestBody as Incoming;
use std::time::Duration;

/// What goes upstream as the request body.
pub enum ClientBody {
    /// Streamed from the client as it comes.
    Streaming(Incoming),
    /// Read whole before `access`.
    Read(Bytes),
    /// Over the cap of a route whose plugins let such bodies pass unread: what was read
    /// before the cap was found out, then the rest as it comes.
    Prefixed(Bytes, Incoming),
}

/// What [`read_or_pass`] found.
pub enum Outcome {
    Whole(Bytes),
    /// Over the cap: passed on unread.
    Over(ClientBody),
}

/// Like [`read`], but a body over `cap` is handed back to stream on instead of refused.
pub async fn read_or_pass(
    mut body: Incoming,
    cap: u64,
    read_timeout: Duration,
) -> Result<Outcome, Failure> {
    if body.size_hint().exact().is_some_and(|n| n > cap) {
        return Ok(Outcome::Over(ClientBody::Streaming(body)));
    }
    let mut got = bytes::BytesMut::new();
    let deadline = tokio::time::Instant::now() + read_timeout;
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame()).await;
        match frame {
            Err(_) => return Err(Failure::ClientBodyTimeout),
            Ok(None) => return Ok(Outcome::Whole(got.freeze())),
            Ok(Some(Err(_))) => return Err(Failure::ClientBody),
            Ok(Some(Ok(f))) => {
                if let Ok(data) = f.into_data() {
                    got.extend_from_slice(&data);
                }
                if got.len() as u64 > cap {
                    return Ok(Outcome::Over(ClientBody::Prefixed(got.freeze(), body)));
                }
            }
        }
    }
}

/// The part read, then the rest of the client's body, as one body to send upstream.
pub fn prefixed(
    head: Bytes,
    rest: Incoming,
) -> http_body_util::combinators::BoxBody<Bytes, gatehouse_runtime::upstream::BoxError> {
    use futures_util::StreamExt;
    use http_body::Frame;
    let first = futures_util::stream::once(async move { Ok(Frame::data(head)) });
    let rest = http_body_util::BodyStream::new(rest);
    BodyExt::boxed(http_body_util::StreamBody::new(first.chain(rest)))
}

/// Reads `body` whole: over `cap` bytes is 413 (before reading, when its length says so), a
/// body that breaks off is 400, one that stalls past `read_timeout` is 408.
pub async fn read(body: Incoming, cap: u64, read_timeout: Duration) -> Result<Bytes, Failure> {
    if body.size_hint().exact().is_some_and(|n| n > cap) {
        return Err(Failure::BodyTooLarge);
    }
    let limit = usize::try_from(cap).unwrap_or(usize::MAX);
    match tokio::time::timeout(read_timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(Failure::ClientBodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(Failure::BodyTooLarge),
        Ok(Err(_)) => Err(Failure::ClientBody),
    }
}
