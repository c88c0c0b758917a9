//! One upstream exchange: pick a target, get a connection (pooled or new), prepare the
//! request for that target, run the `upstream_request` phase, send, classify what came back,
//! and report it to the target's health checks and breaker. The retry loop and the fallback
//! upstream call it; so will mirroring and sub-requests, each for any upstream with its own
//! deadline.

use super::phases::{self, Answer, Phase};
use super::replay::Outgoing;
use super::state::{PluginState, Routed};
use super::verdict::{self, report};
use crate::body::InFlight;
use crate::errors::Failure;
use crate::observe::{Exchange, TRACEPARENT};
use bytes::Bytes;
use gatehouse_runtime::snapshot::{AllTargetsDown, Snapshot, TargetSet, UpstreamEntry};
use gatehouse_runtime::upstream::{
    BodyFault, ClientFault, ConnectError, ProxyBody, Sender, TargetState, UpBody,
};
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Request, Response, Uri, Version};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How many times a request may meet a pooled connection that the upstream had already
/// closed (the keep-alive race) before we open a fresh one. Such a request was never sent, so
/// trying again is safe for every method.
const STALE_RETRIES: usize = 3;

/// What one exchange is allowed: where to, and for how long.
pub struct Call<'a> {
    pub upstream: &'a UpstreamEntry,
    pub hash_key: &'a [u8],
    /// Targets this request already tried: another is picked while there is one.
    pub tried: &'a [usize],
    pub connect_timeout: Duration,
    /// How long the response head may take once sent.
    pub head_timeout: Duration,
    /// The request's overall deadline, if it has one.
    pub total: Option<Instant>,
    /// The Host to send; `None` sends the target's own.
    pub host: Option<&'a HeaderValue>,
    /// Where to tell the upstream how many milliseconds it has left.
    pub deadline_header: Option<&'a HeaderName>,
    /// Where the client's body tells of its own faults while it streams.
    pub body_fault: Option<&'a BodyFault>,
    /// For the log: who is asking (a route's name).
    pub label: &'a str,
}

/// The request's plugins, for the `upstream_request` phase (given only to routes that have
/// an instance with that hook).
pub struct Plugins<'a, 's> {
    pub state: &'a mut PluginState,
    pub routed: &'a Routed<'s>,
    pub client_ip: IpAddr,
    pub snap: &'s Arc<Snapshot>,
}

/// How an exchange ended.
pub enum Attempt {
    /// The target answered with a response head.
    Answered(Answered),
    /// No target could be picked (`all_down`: every one is down by its health checks).
    NoTarget { all_down: bool },
    /// Nothing reached target `idx` (connect failure, or the connection broke before sending).
    NotSent(Failure, usize),
    /// Sent to target `idx`, then it broke.
    Broken(Failure, Cause, usize),
    /// A plugin answered in the `upstream_request` phase.
    Refused(Answer),
    /// The client's body went over a plugin's limit, or the client broke it (malformed
    /// chunking, gone): not the upstream's fault. The connection is not reused.
    ClientBody(ClientFault),
}

/// What broke a request that was sent.
#[derive(Clone, Copy)]
pub enum Cause {
    Timeout,
    Reset,
}

/// A response head from target `idx`, with what its body still needs.
pub struct Answered {
    pub resp: Response<UpBody>,
    pub sender: Sender,
    pub in_flight: InFlight,
    pub head_at: Instant,
    pub idx: usize,
}

/// Runs one exchange of the request in `out` under `call`.
pub async fn exchange(
    call: &Call<'_>,
    out: &mut Outgoing,
    rec: &mut Exchange,
    mut plugins: Option<Plugins<'_, '_>>,
) -> Attempt {
    let up = call.upstream;
    // This exchange's view of the targets, even if a replacement swaps in meanwhile.
    let set = up.targets();
    let (idx, target) = match pick(call, &set) {
        Ok(picked) => picked,
        Err(all_down) => return Attempt::NoTarget { all_down },
    };
    let why = || why_target(up, &set, idx, call.tried);
    // The access log names the target tried last, answered or not.
    if rec.log.is_some() {
        rec.target = Some(target.clone());
    }
    let mut stale = 0;
    loop {
        let tried_at = Instant::now();
        let (mut sender, reused) = match acquire(target, call.connect_timeout, stale).await {
            Ok(s) => s,
            Err(e) => {
                rec.attempt(None, target, tried_at, None, Some("connect failed"), why);
                return verdict::connect_failed(up, call.label, &set, idx, e);
            }
        };
        if reused {
            target.count_hit();
        }
        let Some(mut req) = out.take() else {
            return Attempt::NotSent(Failure::NoTarget, idx);
        };
        prepare_for_target(&mut req, target, &sender, call.host);
        let sent_at = Instant::now();
        let deadline = earliest(sent_at + call.head_timeout, call.total);
        tell_deadline(&mut req, call.deadline_header, deadline, sent_at);
        if let Some(p) = plugins.as_mut() {
            // Boxed: its state is large and most routes have no plugins, so the exchange
            // future (moved at every poll) stays small for them.
            if let Err(answer) = Box::pin(upstream_request_phase(&mut req, p, rec)).await {
                return Attempt::Refused(answer);
            }
        }
        let span_id = rec.span.as_ref().map(|s| {
            let (id, parent) = s.next_attempt();
            req.headers_mut().insert(TRACEPARENT.clone(), parent);
            id
        });
        let in_flight = InFlight::new(target.clone());
        let resp = match tokio::time::timeout_at(deadline, sender.send(req)).await {
            Err(_) => {
                rec.attempt(span_id, target, sent_at, None, Some("timeout"), why);
                let timeout = format!("no response head within {:?}", call.head_timeout);
                verdict::broke(
                    call,
                    &set,
                    idx,
                    "upstream response head timed out",
                    &timeout,
                );
                return Attempt::Broken(Failure::UpstreamTimeout, Cause::Timeout, idx);
            }
            Ok(Err(mut e)) => match (e.take_message(), call.body_fault.and_then(BodyFault::get)) {
                // Never sent: the pooled connection was already closed. Try again.
                (Some(unsent), _) if reused && stale < STALE_RETRIES => {
                    out.give_back(unsent);
                    stale += 1;
                    continue;
                }
                (_, Some(fault)) => {
                    tracing::info!(route = %call.label, ?fault, error = %e.error(), "request body failed on the client's side");
                    return Attempt::ClientBody(fault);
                }
                (Some(unsent), None) => {
                    let note = Some("connection failed before sending");
                    rec.attempt(span_id, target, sent_at, None, note, why);
                    let what = "upstream connection failed before the request was sent";
                    verdict::broke(call, &set, idx, what, &e.error());
                    out.give_back(unsent);
                    return Attempt::NotSent(Failure::UpstreamError, idx);
                }
                (None, None) => {
                    rec.attempt(span_id, target, sent_at, None, Some("reset"), why);
                    verdict::broke(call, &set, idx, "upstream exchange failed", &e.error());
                    return Attempt::Broken(Failure::UpstreamError, Cause::Reset, idx);
                }
            },
            Ok(Ok(resp)) => resp,
        };
        let head_at = Instant::now();
        let status = resp.status();
        rec.attempt(span_id, target, sent_at, Some(status.as_u16()), None, why);
        rec.upstream = Some(rec.upstream.unwrap_or_default() + (head_at - sent_at));
        target.record_latency(head_at - sent_at, head_at.into_std());
        verdict::answered(target);
        report(up, &set, idx, Some(status), Some(head_at - sent_at));
        return Attempt::Answered(Answered {
            resp,
            sender,
            in_flight,
            head_at,
            idx,
        });
    }
}

/// Tells the upstream (in `header`, when the route names one) how many milliseconds it has.
fn tell_deadline(
    req: &mut Request<ProxyBody>,
    header: Option<&HeaderName>,
    deadline: Instant,
    now: Instant,
) {
    if let Some(h) = header {
        let left = deadline.saturating_duration_since(now).as_millis();
        req.headers_mut()
            .insert(h.clone(), HeaderValue::from(left as u64));
    }
}

/// The target for this exchange: another than those tried when there is one, the same
/// again only when all were tried.
/// `Err(all_down)` when none can be picked.
fn pick<'s>(call: &Call<'_>, set: &'s TargetSet) -> Result<(usize, &'s Arc<TargetState>), bool> {
    let up = call.upstream;
    let idx = match up.pick(set, call.hash_key, call.tried) {
        Ok(Some(i)) => i,
        Ok(None) if !call.tried.is_empty() => match up.pick(set, call.hash_key, &[]) {
            Ok(Some(i)) => i,
            _ => return Err(false),
        },
        Ok(None) => return Err(false),
        Err(AllTargetsDown) => return Err(true),
    };
    match set.targets.get(idx) {
        Some(t) => Ok((idx, t)),
        None => Err(false),
    }
}

/// The `upstream_request` phase over the request as it is about to go.
async fn upstream_request_phase(
    req: &mut Request<ProxyBody>,
    p: &mut Plugins<'_, '_>,
    rec: &mut Exchange,
) -> Result<(), Answer> {
    let placeholder = Request::new(ProxyBody::empty());
    let (mut parts, body) = std::mem::replace(req, placeholder).into_parts();
    let phase = [Phase::UpstreamRequest];
    let ran = phases::run(
        &phase,
        &mut parts,
        p.state,
        rec,
        p.client_ip,
        p.routed,
        p.snap,
    )
    .await;
    *req = Request::from_parts(parts, body);
    ran
}

/// Why the balancer's pick was `idx`, for the decision trace.
fn why_target(upstream: &UpstreamEntry, set: &TargetSet, idx: usize, tried: &[usize]) -> String {
    let now = gatehouse_runtime::health::now_ns();
    let Some(t) = set.targets.get(idx) else {
        return String::new();
    };
    let health = if upstream.health.is_none() {
        "no health checks".to_string()
    } else if t.health.available(now) {
        "healthy".to_string()
    } else {
        "unhealthy (all down, trying anyway)".to_string()
    };
    let breaker = match &upstream.breaker {
        Some(p) => format!("breaker {}", t.breaker.state(p, now).as_str()),
        None => "no breaker".into(),
    };
    format!(
        "{} pick among {} targets; {health}; {breaker}; {} tried before",
        set.balancer.name(),
        set.targets.len(),
        tried.len()
    )
}

pub fn earliest(a: Instant, b: Option<Instant>) -> Instant {
    b.map_or(a, |b| a.min(b))
}

/// A pooled connection if one is ready (unless the pool has just handed out stale ones),
/// else a new one. Returns whether it came from the pool.
async fn acquire(
    target: &TargetState,
    connect_timeout: Duration,
    stale: usize,
) -> Result<(Sender, bool), ConnectError> {
    let deadline = Instant::now() + connect_timeout;
    loop {
        if stale < STALE_RETRIES {
            while let Some(mut s) = target.take_idle() {
                if s.ready().await {
                    return Ok((s, true));
                }
            }
        }
        // Boxed: opening a connection (with an h2c handshake) has a large state, and most
        // requests find a pooled connection and never run it.
        match Box::pin(target.connect(connect_timeout)).await {
            Ok(s) => return Ok((s, false)),
            Err(ConnectError::Limit(addr, max)) => {
                // At the cap: reuse any worker's idle connection, else wait for one to be
                // returned or closed, until the connect timeout.
                if let Some(mut s) = target.steal_idle() {
                    if s.ready().await {
                        return Ok((s, true));
                    }
                    continue;
                }
                if !target.wait_for_free(deadline).await {
                    return Err(ConnectError::Limit(addr, max));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sets what depends on the chosen target: Host (or :authority) and the URI form.
fn prepare_for_target(
    req: &mut Request<ProxyBody>,
    target: &TargetState,
    sender: &Sender,
    host: Option<&HeaderValue>,
) {
    let host = host.unwrap_or(&target.authority).clone();
    match sender {
        Sender::H1(_) => {
            *req.version_mut() = Version::HTTP_11;
            if req.uri().scheme().is_some() {
                // An HTTP/2 client's URI is absolute; an HTTP/1.1 upstream wants origin-form.
                let pq = req
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                *req.uri_mut() = Uri::from(pq);
            }
            req.headers_mut().insert(HOST, host);
        }
        Sender::H2(_) => {
            *req.version_mut() = Version::HTTP_2;
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(match target.connector {
                gatehouse_runtime::connector::Connector::Tcp => Scheme::HTTP,
                gatehouse_runtime::connector::Connector::Tls(_) => Scheme::HTTPS,
            });
            parts.authority =
                Authority::from_maybe_shared(Bytes::copy_from_slice(host.as_bytes())).ok();
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(PathAndQuery::from_static("/"));
            }
            if let Ok(u) = Uri::from_parts(parts) {
                *req.uri_mut() = u;
            }
            req.headers_mut().remove(HOST);
        }
    }
}
