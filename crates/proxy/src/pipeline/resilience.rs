//! The route's own resilience: its circuit breaker (admit before, judge after) and its
//! fallback (a cached good answer, a static one, or a second upstream) for answers the
//! fallback replaces; good answers are copied into the fallback cache as they stream.

use super::exchange::{exchange, Attempt, Call};
use super::replay::{Outgoing, Replay};
use super::state::{RequestState, Routed};
use crate::body::{RespBody, Tee, UpstreamBody};
use crate::errors::Failure;
use crate::headers::{remove_hop_by_hop, X_REQUEST_ID};
use gatehouse_runtime::fallback::{self, Compiled};
use gatehouse_runtime::snapshot::UpstreamEntry;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use std::sync::Arc;
use tokio::time::Instant;

/// What a route with a breaker or a fallback needs once its upstream answered.
pub struct Guarded {
    /// When the route's breaker let the request through.
    admitted_at: Option<Instant>,
    /// Its fallback cache key (GET and HEAD on a route with a cache), and the request's
    /// headers, which a kept answer's `Vary` is matched against.
    key: Option<(Box<str>, HeaderMap)>,
    /// Whether a good answer may be kept (GET only: a HEAD answer has no body).
    keep: bool,
    /// The request as sent upstream, for a fallback upstream.
    replay: Option<Arc<Replay>>,
}

/// The fallback cache's key: GET and HEAD of one host, path and query (and credentials, when
/// the cache keeps answers per credential) share an entry. The request's headers come with
/// it, copied only on routes with a cache.
pub fn cache_key<B>(routed: &Routed<'_>, req: &Request<B>) -> Option<(Box<str>, HeaderMap)> {
    let m = req.method();
    if m != Method::GET && m != Method::HEAD {
        return None;
    }
    let cache = routed.route.fallback.as_ref()?.cache.as_ref()?;
    let host = super::route::host_name(routed.host.as_ref());
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let key = fallback::key(host, pq, req.headers(), cache.by_credentials())?;
    Some((key, req.headers().clone()))
}

/// Lets the request through the route's breaker. The guard is `None` when the route has
/// neither a breaker nor a fallback; the response is the refusal of an open breaker, which
/// still goes through [`after`].
pub fn admit(
    st: &RequestState<'_>,
    routed: &Routed<'_>,
    key: Option<(Box<str>, HeaderMap)>,
    keep: bool,
    out: &Outgoing,
) -> (Option<Guarded>, Option<Response<RespBody>>) {
    let route = routed.route;
    if route.breaker.is_none() && route.fallback.is_none() {
        return (None, None);
    }
    let mut guarded = Guarded {
        admitted_at: None,
        key,
        keep,
        replay: out.replay().cloned(),
    };
    let mut refused = None;
    if let Some((policy, state)) = route.breaker.as_deref() {
        match state.admit(policy, gatehouse_runtime::health::now_ns()) {
            Ok(()) => guarded.admitted_at = Some(Instant::now()),
            Err(r) => {
                let mut resp = st.fail(Failure::BreakerOpen);
                let secs = r.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                resp.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
                refused = Some(resp);
            }
        }
    }
    (Some(guarded), refused)
}

/// The route's breaker judges the answer; a failed one is replaced by the fallback, a good
/// one is copied into the fallback cache as it streams.
pub async fn after(
    guarded: Guarded,
    resp: Response<RespBody>,
    st: &mut RequestState<'_>,
    routed: &Routed<'_>,
) -> Response<RespBody> {
    let route = routed.route;
    let status = resp.status();
    if let (Some((policy, state)), Some(at)) = (route.breaker.as_deref(), guarded.admitted_at) {
        let failed = policy.is_failure(status);
        let slow = policy.is_slow(at.elapsed());
        let now = gatehouse_runtime::health::now_ns();
        if let Some(s) = state.record(policy, now, failed, slow) {
            tracing::warn!(route = %route.name, state = s.as_str(), "route circuit breaker");
        }
    }
    let Some(fb) = &route.fallback else {
        return resp;
    };
    if fb.replaces(status) {
        // Boxed: the failure path's state (another exchange) stays out of every request's.
        let Some(mut out) = Box::pin(replacement(fb, &guarded, st, routed)).await else {
            return resp;
        };
        tracing::info!(route = %route.name, %status, "served the fallback");
        *out.version_mut() = resp.version();
        if let Some(id) = resp.headers().get(&X_REQUEST_ID) {
            out.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
        }
        // Dropping `resp` drops the failed upstream answer's body and its connection.
        return out;
    }
    if let (Some(cache), Some((key, request)), true) = (&fb.cache, guarded.key, guarded.keep) {
        let vary = fallback::vary(resp.headers(), &request);
        if let (true, Some(vary)) = (fallback::keepable(status, resp.headers()), vary) {
            let cache = cache.clone();
            let headers = fallback::kept_headers(resp.headers());
            let tee = Tee::new(cache.max_body(), move |body| {
                let at = std::time::Instant::now();
                cache.put(
                    key,
                    fallback::Stored {
                        status,
                        headers,
                        body,
                        at,
                        vary,
                    },
                );
            });
            return resp.map(|b| b.with_tee(tee));
        }
    }
    resp
}

/// The fallback's answer in place of a failed one: from the cache, the static response, or
/// the fallback upstream, in that order; `None` when none has one.
async fn replacement(
    fb: &Compiled,
    guarded: &Guarded,
    st: &mut RequestState<'_>,
    routed: &Routed<'_>,
) -> Option<Response<RespBody>> {
    let kept = match (&fb.cache, &guarded.key) {
        (Some(c), Some((k, request))) => c.get(k).filter(|s| s.fits(request)),
        _ => None,
    };
    let (source, mut r) = if let Some(kept) = kept {
        let mut r = Response::new(RespBody::full(kept.body.clone()));
        *r.status_mut() = kept.status;
        *r.headers_mut() = kept.headers.clone();
        r.headers_mut()
            .insert(http::header::AGE, fallback::age(kept.at));
        (fallback::Source::Cache, r)
    } else if let Some((status, headers, body)) = &fb.static_response {
        let mut r = Response::new(RespBody::full(body.clone()));
        *r.status_mut() = *status;
        *r.headers_mut() = headers.clone();
        (fallback::Source::Static, r)
    } else {
        let (up, replay) = (fb.upstream.as_ref()?, guarded.replay.as_ref()?);
        let r = ask_fallback_upstream(up, replay, st, routed).await?;
        (fallback::Source::Upstream, r)
    };
    fb.count(source);
    st.rec.degraded = Some(source.as_str());
    r.headers_mut()
        .insert(fb.header.clone(), HeaderValue::from_static(source.as_str()));
    Some(r)
}

/// One exchange with a route's fallback upstream, of the request as it was sent to the
/// failed one, under the route's service timeouts. `None`: that failed too (the log says
/// how).
async fn ask_fallback_upstream(
    up: &UpstreamEntry,
    replay: &Arc<Replay>,
    st: &mut RequestState<'_>,
    routed: &Routed<'_>,
) -> Option<Response<RespBody>> {
    let timeouts = &routed.service.timeouts;
    let call = Call {
        upstream: up,
        hash_key: &[],
        tried: &[],
        connect_timeout: timeouts.connect,
        head_timeout: timeouts.read,
        total: None,
        // Host as for the failed upstream: the client's with preserve_host, else the target's.
        host: routed
            .route
            .preserve_host
            .then_some(routed.host.as_ref())
            .flatten(),
        deadline_header: None,
        body_fault: None,
        label: &routed.route.name,
    };
    let mut out = Outgoing::new(replay.request());
    // The record's target names one of the route's own upstream targets: keep the one that
    // failed.
    let primary = st.rec.target.take();
    let attempt = exchange(&call, &mut out, st.rec, None).await;
    st.rec.target = primary;
    let answered = match attempt {
        Attempt::Answered(a) => a,
        _ => {
            tracing::warn!(route = %routed.route.name, upstream = %up.name, "fallback upstream failed");
            return None;
        }
    };
    let mut resp = answered.resp;
    remove_hop_by_hop(resp.headers_mut(), false);
    let read = timeouts.read;
    let (sender, in_flight, head_at) = (answered.sender, answered.in_flight, answered.head_at);
    Some(resp.map(move |b| {
        RespBody::upstream(UpstreamBody::new(
            b,
            Some(sender),
            in_flight,
            Vec::new(),
            head_at + read,
            read,
            None,
        ))
    }))
}
