//! The request body read whole before the `access` phase, for routes whose plugins asked for
//! it (HMAC over the body, a WAF, a body-keyed cache): capped, timed, then sent upstream (and
//! again by retries) from memory.

use crate::errors::Failure;
use bytes::Bytes;
use http_body::Body as _;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use std::time::Duration;

/// What goes upstream as the request body.
pub enum ClientBody {
    /// Streamed from the client as it comes.
    Streaming(Incoming),
    /// Read whole before `access`.
    Read(Bytes),
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
