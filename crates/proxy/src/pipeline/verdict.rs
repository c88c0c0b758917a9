//! What one attempt on a target tells about it: fed to the passive health checks, the
//! target's breaker and the set-aside of targets that refuse connections, and logged once
//! per change of the target's state (failing, answering again), not once per attempt: the
//! access log already has every attempt.

use super::exchange::{Attempt, Call};
use crate::errors::Failure;
use gatehouse_runtime::snapshot::{TargetSet, UpstreamEntry};
use gatehouse_runtime::upstream::{ConnectError, TargetState};
use http::StatusCode;
use std::fmt::Display;
use std::time::Duration;

/// An attempt on `target` failed (`what`, with the error when there is one). WARN when the
/// target was answering until now, DEBUG while it goes on failing.
pub fn failed(label: &str, target: &TargetState, what: &str, error: &dyn Display) {
    if target.health.note_failure() {
        tracing::warn!(route = label, target = %target.address, error = %error, "{what}; the next failures of this target are logged at debug level until it answers again");
    } else {
        tracing::debug!(route = label, target = %target.address, error = %error, "{what}");
    }
}

/// An attempt on `set.targets[idx]` under `call` broke (`what`): logged as [`failed`] and
/// reported to the target's health and breaker as no answer.
pub fn broke(call: &Call<'_>, set: &TargetSet, idx: usize, what: &str, error: &dyn Display) {
    if let Some(target) = set.targets.get(idx) {
        failed(call.label, target, what, error);
    }
    report(call.upstream, set, idx, None, None);
}

/// `target` answered: worth a line when it was failing.
#[inline]
pub fn answered(target: &TargetState) {
    if target.health.note_answer() {
        tracing::info!(target = %target.address, "target answers again");
    }
}

/// A connect to `targets[idx]` that failed: reported to the target's health, breaker and
/// set-aside unless it was our own connection cap.
pub fn connect_failed(
    up: &UpstreamEntry,
    label: &str,
    set: &TargetSet,
    idx: usize,
    e: ConnectError,
) -> Attempt {
    let failure = match e {
        ConnectError::Limit(..) => Failure::ConnectionLimit,
        ref e if e.is_timeout() => Failure::ConnectTimeout,
        _ => Failure::ConnectFailed,
    };
    let Some(target) = set.targets.get(idx) else {
        return Attempt::NotSent(failure, idx);
    };
    if failure == Failure::ConnectionLimit {
        tracing::warn!(route = label, target = %target.address, error = %e, "upstream connection limit reached");
        return Attempt::NotSent(failure, idx);
    }
    failed(label, target, "upstream connect failed", &e);
    report(up, set, idx, None, None);
    if let Some(s) = &up.set_aside {
        let now = gatehouse_runtime::health::now_ns();
        if let Some(length) = s.report(&set.targets, idx, now) {
            tracing::warn!(upstream = %up.name, target = %target.address, ?length, "target set aside after a failed connect");
        }
    }
    Attempt::NotSent(failure, idx)
}

/// What one attempt on `targets[idx]` told: its status (None: no answer) and how long the
/// head took. Feeds passive health checks and the target's breaker.
pub fn report(
    up: &UpstreamEntry,
    set: &TargetSet,
    idx: usize,
    status: Option<StatusCode>,
    took: Option<Duration>,
) {
    let passive = up.health.as_ref().and_then(|h| h.passive.as_ref());
    if passive.is_none() && up.breaker.is_none() {
        return;
    }
    let now = gatehouse_runtime::health::now_ns();
    let address = set.targets.get(idx).map_or("", |t| &*t.address);
    if let Some(p) = passive {
        let failed = status.is_none_or(|s| p.is_failure(s));
        if let Some(length) = p.report(&set.targets, idx, failed, now) {
            tracing::warn!(upstream = %up.name, target = address, ?length, "target ejected (passive check)");
        }
    }
    if let (Some(p), Some(t)) = (&up.breaker, set.targets.get(idx)) {
        let failed = status.is_none_or(|s| p.is_failure(s));
        let slow = took.is_some_and(|d| p.is_slow(d));
        if let Some(state) = t.breaker.record(p, now, failed, slow) {
            tracing::warn!(upstream = %up.name, target = address, state = state.as_str(), "target circuit breaker");
        }
    }
}
