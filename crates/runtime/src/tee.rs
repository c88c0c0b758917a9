//! A copy of a request body taken while it streams upstream (Envoy's retry buffer): when
//! the body ended within `max` bytes, a retry can send it again without the gateway having
//! held the request back first. What gRPC calls need, whose bodies have no length and
//! whose streaming calls must not wait for the client to finish.

use bytes::{Bytes, BytesMut};
use std::sync::Mutex;

/// The copy; one per request, locked only by that request's body and its retry.
pub struct TeeCopy {
    max: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    bytes: BytesMut,
    /// The body ended cleanly.
    complete: bool,
    /// Larger than `max`, or broken: nothing to replay.
    lost: bool,
}

impl TeeCopy {
    pub fn new(max: u64) -> Self {
        Self {
            max: usize::try_from(max).unwrap_or(usize::MAX),
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn data(&self, d: &Bytes) {
        if let Ok(mut s) = self.state.lock() {
            if s.lost {
                return;
            }
            if s.bytes.len() + d.len() > self.max {
                s.lost = true;
                s.bytes = BytesMut::new();
            } else {
                s.bytes.extend_from_slice(d);
            }
        }
    }

    pub(crate) fn end(&self, clean: bool) {
        if let Ok(mut s) = self.state.lock() {
            if clean {
                s.complete = true;
            } else {
                s.lost = true;
            }
        }
    }

    /// The whole body, once it ended within `max` bytes.
    pub fn whole(&self) -> Option<Bytes> {
        let s = self.state.lock().ok()?;
        (s.complete && !s.lost).then(|| s.bytes.clone().freeze())
    }
}
