//! The retry loop: exchanges with the route's upstream until one answers, as the route's
//! retry policy and its service's retry budget allow (conditions, attempts, backoff, the
//! request's total deadline).

use super::exchange::{exchange, Answered, Attempt, Call, Cause, Plugins};
use super::phases;
use super::replay::Outgoing;
use super::state::{RequestState, Routed};
use crate::body::RespBody;
use crate::errors::Failure;
use gatehouse_runtime::retry::Allowed;
use gatehouse_runtime::upstream::{BodyFault, ClientFault};
use http::Response;
use tokio::time::Instant;

/// What the retry loop needs beside the request.
pub struct Forward<'a> {
    /// What the method allows: retries before and after sending.
    pub allowed: Allowed,
    pub total: Option<Instant>,
    pub body_fault: Option<&'a BodyFault>,
}

/// Sends the request in `out` until a target answers, or returns the response to give
/// instead (the last failure, or a plugin's answer).
pub async fn forward(
    st: &mut RequestState<'_>,
    routed: &Routed<'_>,
    out: &mut Outgoing,
    f: Forward<'_>,
) -> Result<Answered, Response<RespBody>> {
    let (route, retry, timeouts) = (routed.route, &routed.route.retry, &routed.service.timeouts);
    if retry.budgeted() {
        retry.count_request(gatehouse_runtime::health::now_ns());
    }
    let host = route
        .preserve_host
        .then_some(routed.host.as_ref())
        .flatten();
    let deadline_header = retry
        .deadline_header
        .as_ref()
        .filter(|_| retry.per_try.is_some() || f.total.is_some());
    let mut tried: Vec<usize> = Vec::new();
    let mut failure = Failure::NoTarget;
    let mut attempt = 0u32;
    loop {
        let call = Call {
            upstream: routed.upstream,
            hash_key: &routed.hash_key,
            tried: &tried,
            connect_timeout: timeouts.connect,
            head_timeout: retry
                .per_try
                .map_or(timeouts.read, |t| t.min(timeouts.read)),
            total: f.total,
            host,
            deadline_header,
            body_fault: f.body_fault,
            label: &route.name,
        };
        let plugins = route.plugins.needs.upstream_request.then_some(Plugins {
            state: &mut st.plugins,
            routed,
            client_ip: st.client.ip,
            snap: st.snap,
        });
        let (may, idx) = match exchange(&call, out, st.rec, plugins).await {
            Attempt::Answered(a) => {
                let again = f.allowed.after_send && attempt < retry.attempts && out.ensure_replay();
                if !(again
                    && retry.retries_answer(a.resp.status(), a.resp.headers())
                    && take_budget(st, routed, a.resp.status()))
                {
                    return Ok(a);
                }
                // Its budget is taken: the retry below goes ahead.
                tried.push(a.idx);
                (None, a.idx)
            }
            Attempt::NoTarget { all_down: true } => {
                return Err(st.fail(Failure::AllTargetsDown));
            }
            Attempt::NoTarget { all_down: false } => return Err(st.fail(failure)),
            Attempt::Refused(answer) => return Err(phases::answered(st, routed, answer)),
            Attempt::ClientBody(ClientFault::OverLimit) => {
                return Err(st.fail(Failure::BodyTooLarge))
            }
            Attempt::ClientBody(ClientFault::Broken) => return Err(st.fail(Failure::ClientBody)),
            Attempt::NotSent(why, idx) => {
                failure = why;
                (Some(f.allowed.before_send), idx)
            }
            Attempt::Broken(why, cause, idx) => {
                failure = why;
                let condition = match cause {
                    Cause::Timeout => retry.on_timeout(),
                    Cause::Reset => retry.on_reset(),
                };
                (
                    Some(condition && f.allowed.after_send && out.ensure_replay()),
                    idx,
                )
            }
        };
        if let Some(may) = may {
            tried.push(idx);
            let budgeted = may
                && attempt < retry.attempts
                && retry.take_budget(gatehouse_runtime::health::now_ns());
            if !budgeted {
                if may && attempt < retry.attempts {
                    st.rec.budget_exhausted = true;
                    tracing::info!(route = %route.name, service = %routed.service.name, "retry budget exhausted: failing fast");
                }
                return Err(st.fail(failure));
            }
        }
        attempt += 1;
        st.rec.retries = attempt;
        if !back_off(routed, &tried, attempt, f.total).await {
            return Err(st.fail(Failure::UpstreamTimeout));
        }
    }
}

/// Waits before retry `attempt`, but only when every target was tried already: another
/// target is not the one that is struggling. False when the pause would pass the request's
/// deadline.
async fn back_off(
    routed: &Routed<'_>,
    tried: &[usize],
    attempt: u32,
    total: Option<Instant>,
) -> bool {
    if tried.len() < routed.upstream.targets().targets.len() {
        return true;
    }
    let pause = Instant::now() + routed.route.retry.backoff(attempt);
    if total.is_some_and(|d| d <= pause) {
        return false;
    }
    tokio::time::sleep_until(pause).await;
    true
}

/// Takes the budget for a retry on `status`; when it is spent, notes that the failure is
/// passed on.
fn take_budget(st: &mut RequestState<'_>, routed: &Routed<'_>, status: http::StatusCode) -> bool {
    let route = &routed.route.name;
    if routed
        .route
        .retry
        .take_budget(gatehouse_runtime::health::now_ns())
    {
        tracing::info!(%route, %status, "retrying on status");
        return true;
    }
    st.rec.budget_exhausted = true;
    tracing::info!(%route, service = %routed.service.name, "retry budget exhausted: passing the failure on");
    false
}
