//! The life of one request: route, rewrite, pick a target, get a pooled connection, forward
//! with proxy headers, stream the response back (or tunnel an upgrade).

use crate::body::{InFlight, RespBody, Tee, UpstreamBody};
use crate::errors::{respond, Failure};
use crate::framing::Findings;
use crate::headers::{
    framing_problem, new_request_id, remove_hop_by_hop, set_forwarded, wants_upgrade, VIA,
    VIA_VALUE, X_REQUEST_ID,
};
use crate::observe::{
    Exchange, LogParts, Observed, PluginStep, SpanCtx, DECISION, SERVER_TIMING, TRACEPARENT,
};
use crate::Shared;
use bytes::Bytes;
use gatehouse_plugin_api::{Consumer, Flow, Hold, LogCtx, Plugin, RequestCtx, ResponseCtx};
use gatehouse_runtime::fallback;
use gatehouse_runtime::h1::Upgraded;
use gatehouse_runtime::plugins::Chain;
use gatehouse_runtime::router::{cookie, query_arg, RequestView};
use gatehouse_runtime::snapshot::{
    upstream_path, AllTargetsDown, HashSource, RouteEntry, ServiceEntry, Snapshot, UpstreamEntry,
};
use gatehouse_runtime::upstream::{ConnectError, ProxyBody, Sender, TargetState, UpBody};
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Facts about the client connection, computed once per connection.
pub struct ConnInfo {
    pub client: SocketAddr,
    /// The client's address as plugins see it (IPv4-mapped IPv6 as IPv4).
    pub ip: IpAddr,
    pub client_ip: HeaderValue,
    pub h2: bool,
    /// HTTP/1.1 only: what the framing watcher found, and how many requests came so far.
    framing: Option<Arc<Findings>>,
    requests: AtomicU64,
}

impl ConnInfo {
    pub fn new(client: SocketAddr, h2: bool, framing: Option<Arc<Findings>>) -> Self {
        let ip = client.ip().to_canonical();
        Self {
            client,
            ip,
            client_ip: HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            h2,
            framing,
            requests: AtomicU64::new(0),
        }
    }

    /// Counts this request; true when its head carried both Content-Length and
    /// Transfer-Encoding.
    fn ambiguous_framing(&self) -> bool {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        self.framing.as_ref().is_some_and(|f| f.is_ambiguous(n))
    }
}

/// How many times a request may meet a pooled connection that the upstream had already
/// closed (the keep-alive race) before we open a fresh one. Such a request was never sent, so
/// trying again is safe for every method.
const STALE_RETRIES: usize = 3;

pub async fn handle(
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Response<Observed> {
    let started = Instant::now();
    let snap = shared.snapshot.load_full();
    let mut x = Box::new(Exchange::new(started, req.method()));
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) => v.clone(),
        None => new_request_id(),
    };
    // The debug token never goes upstream; only a live one gets the decision trace.
    if let Some(token) = req.headers_mut().remove(&snap.debug_header) {
        let node = &snap.telemetry.node;
        if shared.debug_tokens.check(token.as_bytes()) {
            node.decision_traces.fetch_add(1, Ordering::Relaxed);
            x.decision = Some(Box::default());
        } else {
            node.decision_trace_refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(client = %info.client, "decision trace refused: not a live debug token");
        }
    }
    if snap.telemetry.access_log.is_some() {
        let h = req.headers();
        x.log = Some(LogParts {
            request_id: request_id.clone(),
            client_ip: info.ip,
            method: req.method().clone(),
            host: h.get(HOST).cloned(),
            uri: req.uri().clone(),
            version: req.version(),
            user_agent: h.get(http::header::USER_AGENT).cloned(),
        });
    }
    if let Some(n) = http_body::Body::size_hint(req.body()).exact() {
        x.bytes_in = n;
    }
    let mut log = None;
    let mut stage = None;
    drop(shared);
    let mut resp = handle_inner(&snap, info, req, request_id, &mut log, &mut stage, &mut x).await;
    if let Some(stage) = stage {
        resp = after_upstream(stage, resp, &mut x).await;
    }
    x.status = resp.status().as_u16();
    let route = x.route.and_then(|i| snap.routes.get(i));
    if route.is_some_and(|r| r.observe.server_timing) {
        if let Some(v) = x.server_timing() {
            resp.headers_mut().append(SERVER_TIMING.clone(), v);
        }
    }
    if let Some(d) = x.decision.as_mut() {
        d.status = x.status;
        d.retries = x.retries;
        d.fallback = x.degraded;
        let json = serde_json::to_vec(&**d).unwrap_or_default();
        if let Ok(v) = HeaderValue::from_bytes(&json) {
            resp.headers_mut().insert(DECISION.clone(), v);
        }
    }
    let resp = match log {
        // The log phase runs when the body (and so the guard) is dropped.
        Some(mut guard) => {
            guard.status = resp.status();
            resp.map(|b| b.with_hold(Box::new(guard)))
        }
        None => resp,
    };
    x.snap = Some(snap);
    resp.map(|b| Observed::new(b, Some(x)))
}

/// Runs the `log` phase of the plugins that want it when dropped, i.e. once the request has
/// ended. Made only for routes with such plugins.
struct LogGuard {
    snap: Arc<Snapshot>,
    route: usize,
    client_ip: IpAddr,
    consumer: Option<Consumer>,
    status: StatusCode,
    started: Instant,
    plugins: Vec<Arc<dyn Plugin>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let Some(route) = self.snap.routes.get(self.route) else {
            return;
        };
        let service = self
            .snap
            .services
            .get(route.service)
            .map_or("", |s| &*s.name);
        let ctx = LogCtx {
            route: &route.name,
            service,
            client_ip: self.client_ip,
            consumer: self.consumer.as_ref(),
            status: self.status,
            duration: self.started.elapsed(),
        };
        for p in &self.plugins {
            p.log(&ctx);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle_inner(
    snap: &Arc<Snapshot>,
    info: Arc<ConnInfo>,
    mut req: Request<Incoming>,
    request_id: HeaderValue,
    log: &mut Option<LogGuard>,
    stage: &mut Option<Stage>,
    x: &mut Exchange,
) -> Response<RespBody> {
    let problem = if info.ambiguous_framing() {
        Some("both Content-Length and Transfer-Encoding")
    } else {
        framing_problem(req.headers())
    };
    if let Some(problem) = problem {
        tracing::info!(client = %info.client, problem, "rejected request framing");
        return respond(Failure::BadFraming, &request_id);
    }
    let host_value = match req.headers().get(HOST) {
        Some(h) => Some(h.clone()),
        None => req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    let host = host_value
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .map(strip_port)
        .unwrap_or("");

    // Everything that borrows the request is worked out first.
    let (route_index, new_path, hash_key) = {
        let view = RequestView {
            method: req.method(),
            host,
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        let Some(m) = snap.router.find(&view) else {
            return respond(Failure::NoRoute, &request_id);
        };
        let Some(route) = snap.routes.get(m.route) else {
            return respond(Failure::NoRoute, &request_id);
        };
        let Some(service) = snap.services.get(route.service) else {
            return respond(Failure::NoRoute, &request_id);
        };
        let new_path = upstream_path(route, service, &m, &view, info.h2);
        let key = hash_key(&service.upstream.hash, &view, &info);
        (m.route, new_path, key)
    };
    let (route, service) = match snap
        .routes
        .get(route_index)
        .and_then(|r| Some((r, snap.services.get(r.service)?)))
    {
        Some(x) => x,
        None => return respond(Failure::NoRoute, &request_id),
    };
    x.route = Some(route_index);
    if route.observe.trace {
        if let Some(t) = &snap.telemetry.tracer {
            x.span = Some(Box::new(SpanCtx::start(
                req.headers(),
                || t.sample(),
                req.method(),
                req.uri().path(),
                info.ip,
            )));
        }
    }
    if let Some(d) = x.decision.as_mut() {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        d.plan = Some(gatehouse_runtime::explain::explain(
            snap,
            req.method(),
            host,
            pq,
            req.headers(),
        ));
    }

    // The fallback cache's key: GET and HEAD of one host, path and query share an entry.
    let is_get = req.method() == http::Method::GET;
    let cache_key = route
        .fallback
        .as_ref()
        .filter(|f| f.cache.is_some())
        .filter(|_| is_get || req.method() == http::Method::HEAD)
        .map(|_| {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let mut k = String::with_capacity(host.len() + pq.len());
            k.push_str(host);
            k.push_str(pq);
            k.into_boxed_str()
        });
    let upgrade = !info.h2 && wants_upgrade(req.headers());
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let client_version = parts.version;
    let chain = &route.plugins;
    let mut plugin_headers = HeaderMap::new();
    let mut holds: Vec<Hold> = Vec::new();
    let mut body_limit = None;
    let mut consumer = None;
    let mut new_path = new_path;
    if !chain.entries.is_empty() {
        let plugins_started = chain.logs.then(Instant::now);
        let original = parts.uri.clone();
        let mut ctx = RequestCtx {
            parts: &mut parts,
            client_ip: info.ip,
            route: &route.name,
            service: &service.name,
            priority_class: route.priority_class,
            consumer: None,
            response_headers: &mut plugin_headers,
            holds: &mut holds,
            body_limit: None,
        };
        let mut steps = x.decision.as_mut().map(|d| &mut d.plugins);
        let verdict = run_phase(chain, &mut ctx, Phase::Rewrite, steps.as_deref_mut()).await;
        let verdict = match verdict {
            Ok(()) => run_phase(chain, &mut ctx, Phase::Access, steps).await,
            Err(r) => Err(r),
        };
        consumer = ctx.consumer.take();
        x.consumer = consumer.clone();
        body_limit = ctx.body_limit;
        let c = consumer.as_ref().map(|c| c.index);
        let loggers: Vec<Arc<dyn Plugin>> = if chain.logs {
            chain
                .entries
                .iter()
                .filter_map(|e| e.pick(c))
                .filter(|p| p.wants_log())
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if let (false, Some(started)) = (loggers.is_empty(), plugins_started) {
            *log = Some(LogGuard {
                snap: snap.clone(),
                route: route_index,
                client_ip: info.ip,
                consumer: consumer.clone(),
                status: StatusCode::OK,
                started,
                plugins: loggers,
            });
        }
        if let Err((i, resp)) = verdict {
            rejected(x, route, i);
            let c = consumer.as_ref().map(|c| c.index);
            return plugin_response(resp, plugin_headers, chain, c, &route.name, &request_id);
        }
        if parts.uri != original {
            // A plugin rewrote the URI: what it made goes upstream as it is.
            new_path = None;
        }
    }
    if let Some(p) = new_path {
        match PathAndQuery::from_maybe_shared(Bytes::from(p)) {
            Ok(pq) => parts.uri = Uri::from(pq),
            Err(e) => {
                tracing::warn!(route = %route.name, error = %e, "rewritten path is not a valid URI");
                return respond(Failure::UpstreamError, &request_id);
            }
        }
    }
    remove_hop_by_hop(&mut parts.headers, upgrade);
    set_forwarded(&mut parts.headers, &info.client_ip, host_value.clone());
    if !parts.headers.contains_key(&X_REQUEST_ID) {
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), request_id.clone());
    }
    if snap.via {
        parts.headers.append(VIA.clone(), VIA_VALUE.clone());
    }
    // Allocated only when a plugin limits the body.
    let body_limit = body_limit.map(|n| (n, Arc::new(AtomicBool::new(false))));
    let tripped = body_limit.as_ref().map(|(_, t)| t.clone());
    let over_limit = || tripped.as_ref().is_some_and(|t| t.load(Ordering::Acquire));
    let chunked = {
        use http_body::Body as _;
        !body.is_end_stream() && body.size_hint().exact().is_none()
    };
    if chunked {
        x.counted_in = Some(Arc::default());
    }
    let mut request = Some(Request::from_parts(
        parts,
        ProxyBody::client(body, body_limit, x.counted_in.clone()),
    ));

    let upstream = &service.upstream;
    let timeouts = &service.timeouts;
    let total_deadline = timeouts.total.map(|t| Instant::now() + t);
    let retry = &route.retry;
    let allowed = match &request {
        Some(r) => retry.allowed(r.method()),
        None => Default::default(),
    };
    if retry.budgeted() {
        retry.count_request(gatehouse_runtime::health::now_ns());
    }
    // A copy of what is sent, kept only when a retry after sending is possible and the body
    // is small enough to hold.
    let mut replay = None;
    let fallback_upstream = route
        .fallback
        .as_ref()
        .is_some_and(|f| f.upstream.is_some());
    if allowed.after_send || fallback_upstream {
        match keep_for_replay(&mut request, retry.max_body, timeouts.read).await {
            Ok(r) => replay = r.map(Arc::new),
            Err(f) if over_limit() => {
                tracing::info!(route = %route.name, error = ?f, "request body over its limit");
                return respond(Failure::BodyTooLarge, &request_id);
            }
            Err(f) => return respond(f, &request_id),
        }
    }
    if route.breaker.is_some() || route.fallback.is_some() {
        *stage = Some(Stage {
            snap: snap.clone(),
            route: route_index,
            admitted_at: None,
            key: cache_key,
            keep: is_get,
            replay: replay.clone(),
        });
    }
    if let Some((policy, state)) = &route.breaker {
        match state.admit(policy, gatehouse_runtime::health::now_ns()) {
            Ok(()) => {
                if let Some(s) = stage.as_mut() {
                    s.admitted_at = Some(Instant::now());
                }
            }
            Err(refused) => {
                let mut resp = respond(Failure::BreakerOpen, &request_id);
                let secs = refused.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                resp.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
                return resp;
            }
        }
    }
    let mut tried: Vec<usize> = Vec::new();
    let mut failure = Failure::NoTarget;
    let passive = upstream.health.as_ref().and_then(|h| h.passive.as_ref());
    // What one attempt on `targets[idx]` told: its status (None: no answer) and how long the
    // head took. Feeds passive health checks and the target's breaker.
    let report = |idx: usize, status: Option<StatusCode>, took: Option<Duration>| {
        if passive.is_none() && upstream.breaker.is_none() {
            return;
        }
        let now = gatehouse_runtime::health::now_ns();
        let address = upstream.targets.get(idx).map_or("", |t| &*t.address);
        if let Some(p) = passive {
            let failed = status.is_none_or(|s| p.is_failure(s));
            if let Some(length) = p.report(&upstream.targets, idx, failed, now) {
                tracing::warn!(upstream = %upstream.name, target = address, ?length, "target ejected (passive check)");
            }
        }
        if let (Some(p), Some(t)) = (&upstream.breaker, upstream.targets.get(idx)) {
            let failed = status.is_none_or(|s| p.is_failure(s));
            let slow = took.is_some_and(|d| p.is_slow(d));
            if let Some(state) = t.breaker.record(p, now, failed, slow) {
                tracing::warn!(upstream = %upstream.name, target = address, state = state.as_str(), "target circuit breaker");
            }
        }
    };
    let mut attempt = 0u32;
    loop {
        // Another target when there is one; the same again only when all were tried.
        let idx = match upstream.pick(&hash_key, &tried) {
            Ok(Some(i)) => i,
            Ok(None) if !tried.is_empty() => match upstream.pick(&hash_key, &[]) {
                Ok(Some(i)) => i,
                _ => return respond(failure, &request_id),
            },
            Ok(None) => return respond(failure, &request_id),
            Err(AllTargetsDown) => return respond(Failure::AllTargetsDown, &request_id),
        };
        let Some(target) = upstream.targets.get(idx) else {
            return respond(failure, &request_id);
        };
        let mut stale = 0;
        let outcome = loop {
            let tried_at = Instant::now();
            let (mut sender, reused) = match acquire(target, timeouts.connect, stale).await {
                Ok(s) => {
                    if s.1 {
                        target.count_hit();
                    }
                    s
                }
                Err(e) => {
                    x.attempt(None, target, tried_at, None, Some("connect failed"), || {
                        why_target(upstream, idx, &tried)
                    });
                    tracing::warn!(route = %route.name, target = %target.address, error = %e, "upstream connect failed");
                    failure = match e {
                        ConnectError::Limit(..) => Failure::ConnectionLimit,
                        e if e.is_timeout() => Failure::ConnectTimeout,
                        _ => Failure::ConnectFailed,
                    };
                    // Our own connection cap is not the target's fault.
                    if failure != Failure::ConnectionLimit {
                        report(idx, None, None);
                    }
                    break Outcome::NotSent;
                }
            };
            let mut req = match (request.take(), &replay) {
                (Some(r), _) => r,
                (None, Some(r)) => r.request(),
                (None, None) => return respond(failure, &request_id),
            };
            prepare_for_target(&mut req, target, &sender, route, host_value.as_ref());
            let sent_at = Instant::now();
            let attempt_deadline = earliest(
                sent_at
                    + retry
                        .per_try
                        .map_or(timeouts.read, |t| t.min(timeouts.read)),
                total_deadline,
            );
            if let Some(h) = &retry.deadline_header {
                if retry.per_try.is_some() || total_deadline.is_some() {
                    let left = attempt_deadline
                        .saturating_duration_since(sent_at)
                        .as_millis();
                    req.headers_mut()
                        .insert(h.clone(), HeaderValue::from(left as u64));
                }
            }
            if !chain.entries.is_empty() {
                let (mut parts, body) = req.into_parts();
                let mut ctx = RequestCtx {
                    parts: &mut parts,
                    client_ip: info.ip,
                    route: &route.name,
                    service: &service.name,
                    priority_class: route.priority_class,
                    consumer: consumer.clone(),
                    response_headers: &mut plugin_headers,
                    holds: &mut holds,
                    body_limit: None,
                };
                let steps = x.decision.as_mut().map(|d| &mut d.plugins);
                if let Err((i, resp)) =
                    run_phase(chain, &mut ctx, Phase::UpstreamRequest, steps).await
                {
                    rejected(x, route, i);
                    let c = consumer.as_ref().map(|c| c.index);
                    return plugin_response(
                        resp,
                        plugin_headers,
                        chain,
                        c,
                        &route.name,
                        &request_id,
                    );
                }
                req = Request::from_parts(parts, body);
            }
            let span_id = x.span.as_ref().map(|s| {
                let (id, parent) = s.next_attempt();
                req.headers_mut().insert(TRACEPARENT.clone(), parent);
                id
            });
            let in_flight = InFlight::new(target.clone());
            let result = tokio::time::timeout_at(attempt_deadline, sender.send(req)).await;
            let resp = match result {
                Err(_) => {
                    x.attempt(span_id, target, sent_at, None, Some("timeout"), || {
                        why_target(upstream, idx, &tried)
                    });
                    tracing::warn!(route = %route.name, target = %target.address, "upstream response head timed out");
                    report(idx, None, None);
                    failure = Failure::UpstreamTimeout;
                    break Outcome::Sent(retry.on_timeout());
                }
                Ok(Err(mut e)) => match e.take_message() {
                    // Never sent: the pooled connection was already closed. Try again.
                    Some(unsent) if reused && stale < STALE_RETRIES => {
                        request = Some(unsent);
                        stale += 1;
                        continue;
                    }
                    _ if over_limit() => {
                        tracing::info!(route = %route.name, "request body over its limit");
                        return respond(Failure::BodyTooLarge, &request_id);
                    }
                    Some(unsent) => {
                        x.attempt(
                            span_id,
                            target,
                            sent_at,
                            None,
                            Some("connection failed before sending"),
                            || why_target(upstream, idx, &tried),
                        );
                        tracing::warn!(route = %route.name, target = %target.address, error = %e.error(), "upstream connection failed before the request was sent");
                        report(idx, None, None);
                        request = Some(unsent);
                        failure = Failure::UpstreamError;
                        break Outcome::NotSent;
                    }
                    None => {
                        x.attempt(span_id, target, sent_at, None, Some("reset"), || {
                            why_target(upstream, idx, &tried)
                        });
                        tracing::warn!(route = %route.name, target = %target.address, error = %e.error(), "upstream exchange failed");
                        report(idx, None, None);
                        failure = Failure::UpstreamError;
                        break Outcome::Sent(retry.on_reset());
                    }
                },
                Ok(Ok(resp)) => resp,
            };
            let head_at = Instant::now();
            x.attempt(
                span_id,
                target,
                sent_at,
                Some(resp.status().as_u16()),
                None,
                || why_target(upstream, idx, &tried),
            );
            x.upstream = Some(x.upstream.unwrap_or_default() + (head_at - sent_at));
            x.target = Some(idx);
            target.record_latency(head_at - sent_at, head_at.into_std());
            report(idx, Some(resp.status()), Some(head_at - sent_at));
            if retry.retries_status(resp.status())
                && allowed.after_send
                && replay.is_some()
                && attempt < retry.attempts
            {
                if retry.take_budget(gatehouse_runtime::health::now_ns()) {
                    tracing::info!(route = %route.name, target = %target.address, status = %resp.status(), "retrying on status");
                    break Outcome::Status;
                }
                x.budget_exhausted = true;
                tracing::info!(route = %route.name, service = %service.name, "retry budget exhausted: passing the failure on");
            }
            break Outcome::Response(resp, sender, in_flight, head_at);
        };
        let (mut resp, sender, in_flight, head_at) = match outcome {
            Outcome::Response(resp, sender, in_flight, head_at) => {
                (resp, sender, in_flight, head_at)
            }
            other => {
                tried.push(idx);
                let may = match other {
                    Outcome::NotSent => allowed.before_send,
                    Outcome::Sent(condition) => condition && allowed.after_send && replay.is_some(),
                    // Its budget was taken when the status was seen.
                    _ => true,
                };
                let budgeted = matches!(other, Outcome::Status)
                    || (may
                        && attempt < retry.attempts
                        && retry.take_budget(gatehouse_runtime::health::now_ns()));
                if !may || attempt >= retry.attempts || !budgeted {
                    if may && attempt < retry.attempts {
                        x.budget_exhausted = true;
                        tracing::info!(route = %route.name, service = %service.name, "retry budget exhausted: failing fast");
                    }
                    return respond(failure, &request_id);
                }
                attempt += 1;
                x.retries = attempt;
                let pause = Instant::now() + retry.backoff(attempt);
                if total_deadline.is_some_and(|d| d <= pause) {
                    return respond(Failure::UpstreamTimeout, &request_id);
                }
                tokio::time::sleep_until(pause).await;
                continue;
            }
        };
        *resp.version_mut() = client_version;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let (Some(down), Some(up)) = (on_upgrade, resp.body_mut().take_upgrade()) {
                let holds = std::mem::take(&mut holds);
                tokio::spawn(tunnel(down, up, in_flight, holds, target.address.clone()));
                return resp.map(|_| RespBody::empty());
            }
        }
        remove_hop_by_hop(resp.headers_mut(), false);
        if snap.via {
            resp.headers_mut().append(VIA.clone(), VIA_VALUE.clone());
        }
        if !resp.headers().contains_key(&X_REQUEST_ID) {
            resp.headers_mut()
                .insert(X_REQUEST_ID.clone(), request_id.clone());
        }
        if !chain.entries.is_empty() {
            append_all(resp.headers_mut(), std::mem::take(&mut plugin_headers));
            let status = resp.status();
            let c = consumer.as_ref().map(|c| c.index);
            response_phase(chain, c, status, resp.headers_mut(), &route.name);
        }
        let read_timeout = timeouts.read;
        return resp.map(move |b| {
            RespBody::upstream(UpstreamBody::new(
                b,
                Some(sender),
                in_flight,
                holds,
                head_at + read_timeout,
                read_timeout,
                total_deadline,
            ))
        });
    }
}

/// What `handle` needs once a request reached the upstream stage of a route with a breaker
/// or a fallback.
struct Stage {
    snap: Arc<Snapshot>,
    route: usize,
    /// When the route's breaker let it through.
    admitted_at: Option<Instant>,
    /// Its fallback cache key (GET and HEAD on a route with a cache).
    key: Option<Box<str>>,
    /// Whether a good answer may be kept (GET only: a HEAD answer has no body).
    keep: bool,
    /// The request as sent upstream, for a fallback upstream.
    replay: Option<Arc<Replay>>,
}

/// The route's breaker judges the answer; a failed one is replaced by the fallback, a good one
/// is copied into the fallback cache as it streams.
async fn after_upstream(
    stage: Stage,
    resp: Response<RespBody>,
    x: &mut Exchange,
) -> Response<RespBody> {
    let Some(route) = stage.snap.routes.get(stage.route) else {
        return resp;
    };
    let status = resp.status();
    if let (Some((policy, state)), Some(at)) = (&route.breaker, stage.admitted_at) {
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
        let kept = match (&fb.cache, &stage.key) {
            (Some(c), Some(k)) => c.get(k),
            _ => None,
        };
        let mut out = if let Some(kept) = kept {
            fb.count(fallback::Source::Cache);
            x.degraded = Some("cache");
            let mut r = Response::new(RespBody::full(kept.body.clone()));
            *r.status_mut() = kept.status;
            *r.headers_mut() = kept.headers.clone();
            r.headers_mut()
                .insert(http::header::AGE, fallback::age(kept.at));
            r.headers_mut()
                .insert(fb.header.clone(), HeaderValue::from_static("cache"));
            r
        } else if let Some((status, headers, body)) = &fb.static_response {
            fb.count(fallback::Source::Static);
            x.degraded = Some("static");
            let mut r = Response::new(RespBody::full(body.clone()));
            *r.status_mut() = *status;
            *r.headers_mut() = headers.clone();
            r.headers_mut()
                .insert(fb.header.clone(), HeaderValue::from_static("static"));
            r
        } else if let (Some(up), Some(replay), Some(service)) = (
            &fb.upstream,
            &stage.replay,
            stage.snap.services.get(route.service),
        ) {
            match ask_fallback_upstream(up, replay, route, service).await {
                Some(mut r) => {
                    fb.count(fallback::Source::Upstream);
                    x.degraded = Some("upstream");
                    r.headers_mut()
                        .insert(fb.header.clone(), HeaderValue::from_static("upstream"));
                    r
                }
                None => return resp,
            }
        } else {
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
    if let (Some(cache), Some(key), true) = (&fb.cache, stage.key, stage.keep) {
        if fallback::keepable(status, resp.headers()) {
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
                    },
                );
            });
            return resp.map(|b| b.with_tee(tee));
        }
    }
    resp
}

/// One try of a route's fallback upstream with the request as it was sent to the failed
/// one, under the route's service timeouts. `None`: that failed too (the log says how).
async fn ask_fallback_upstream(
    up: &UpstreamEntry,
    replay: &Replay,
    route: &RouteEntry,
    service: &ServiceEntry,
) -> Option<Response<RespBody>> {
    let idx = match up.pick(&[], &[]) {
        Ok(Some(i)) => i,
        _ => {
            tracing::warn!(route = %route.name, upstream = %up.name, "fallback upstream: no target");
            return None;
        }
    };
    let target = up.targets.get(idx)?;
    let timeouts = &service.timeouts;
    let (mut sender, _) = match acquire(target, timeouts.connect, 0).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(route = %route.name, target = %target.address, error = %e, "fallback upstream: connect failed");
            return None;
        }
    };
    let mut req = replay.request();
    // Host as for the failed upstream: the client's with preserve_host, else the target's.
    let host = replay.headers.get(HOST).cloned();
    prepare_for_target(&mut req, target, &sender, route, host.as_ref());
    let in_flight = InFlight::new(target.clone());
    let deadline = Instant::now() + timeouts.read;
    let mut resp = match tokio::time::timeout_at(deadline, sender.send(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(route = %route.name, target = %target.address, error = %e.error(), "fallback upstream failed");
            return None;
        }
        Err(_) => {
            tracing::warn!(route = %route.name, target = %target.address, "fallback upstream timed out");
            return None;
        }
    };
    remove_hop_by_hop(resp.headers_mut(), false);
    let head_at = Instant::now();
    let read = timeouts.read;
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

/// How one attempt ended, when it did not end the request.
enum Outcome {
    /// Nothing reached the target (connect failure, or the connection broke before sending).
    NotSent,
    /// Sent, then a reset or timeout; whether the policy retries that condition.
    Sent(bool),
    /// A response whose status the policy retries (its budget already taken).
    Status,
    /// A response to pass on.
    Response(Response<UpBody>, Sender, InFlight, Instant),
}

/// What a retry sends again: the request as it was before any target touched it.
struct Replay {
    method: http::Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Replay {
    fn request(&self) -> Request<ProxyBody> {
        let mut r = Request::new(ProxyBody::Bytes(
            (!self.body.is_empty()).then(|| self.body.clone()),
        ));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// Reads a small request body (declared by Content-Length, at most `max` bytes) so it can be
/// sent again, and keeps a copy of the head. `Ok(None)`: not replayable (chunked or too
/// large), and the request streams as it is.
async fn keep_for_replay(
    request: &mut Option<Request<ProxyBody>>,
    max: u64,
    read_timeout: Duration,
) -> Result<Option<Replay>, Failure> {
    use http_body::Body as _;
    use http_body_util::BodyExt;
    let Some(req) = request.take() else {
        return Ok(None);
    };
    let (parts, body) = req.into_parts();
    let replayable = body.is_end_stream() || body.size_hint().exact().is_some_and(|n| n <= max);
    if !replayable {
        *request = Some(Request::from_parts(parts, body));
        return Ok(None);
    }
    let bytes = match tokio::time::timeout(read_timeout, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return Err(Failure::ClientBody),
        Err(_) => return Err(Failure::ClientBodyTimeout),
    };
    let replay = Replay {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: bytes.clone(),
    };
    *request = Some(Request::from_parts(
        parts,
        ProxyBody::Bytes((!bytes.is_empty()).then_some(bytes)),
    ));
    Ok(Some(replay))
}

#[derive(Clone, Copy)]
enum Phase {
    Rewrite,
    Access,
    UpstreamRequest,
}

/// Runs one request phase of every plugin in `chain`; the first that answers ends it.
/// `Err` names the chain entry that answered. With `steps` (a decision trace), each plugin's
/// verdict, time and the headers it set are noted.
async fn run_phase(
    chain: &Chain,
    ctx: &mut RequestCtx<'_>,
    phase: Phase,
    mut steps: Option<&mut Vec<PluginStep>>,
) -> Result<(), (usize, Response<Bytes>)> {
    for (i, entry) in chain.entries.iter().enumerate() {
        let Some(plugin) = entry.pick(ctx.consumer.as_ref().map(|c| c.index)) else {
            continue;
        };
        let began = steps
            .as_ref()
            .map(|_| (Instant::now(), ctx.response_headers.len()));
        let flow = match phase {
            Phase::Rewrite => plugin.rewrite(ctx),
            Phase::Access => plugin.access(ctx),
            Phase::UpstreamRequest => plugin.upstream_request(ctx),
        };
        let result = match flow {
            Flow::Continue => Ok(()),
            Flow::Respond(resp) => Err(resp),
            Flow::Wait(later) => match later.await {
                Ok(later) => {
                    append_all(ctx.response_headers, later.headers);
                    ctx.holds.extend(later.hold);
                    Ok(())
                }
                Err(resp) => Err(resp),
            },
        };
        if let (Some(steps), Some((at, before))) = (steps.as_deref_mut(), began) {
            let headers = match &result {
                Err(r) => r.headers().iter().collect::<Vec<_>>(),
                Ok(()) => ctx.response_headers.iter().skip(before).collect(),
            };
            steps.push(PluginStep {
                plugin: entry.kind,
                phase: phase.name(),
                verdict: match &result {
                    Ok(()) => "continue".into(),
                    Err(r) => format!("respond {}", r.status().as_u16()),
                },
                micros: at.elapsed().as_micros() as u64,
                key: plugin.key_class().to_owned(),
                key_value: plugin.key_of(ctx),
                headers: headers
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
            });
        }
        if let Err(resp) = result {
            return Err((i, resp));
        }
    }
    Ok(())
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Rewrite => "rewrite",
            Phase::Access => "access",
            Phase::UpstreamRequest => "upstream_request",
        }
    }
}

/// Counts a rejection by the plugin at `entry` of the route's chain.
fn rejected(x: &mut Exchange, route: &RouteEntry, entry: usize) {
    if let Some(r) = route.rejections.get(entry) {
        r.count.fetch_add(1, Ordering::Relaxed);
        x.rejected_by = Some(r.plugin);
    }
}

/// Why the balancer's pick was `idx`, for the decision trace.
fn why_target(upstream: &UpstreamEntry, idx: usize, tried: &[usize]) -> String {
    let now = gatehouse_runtime::health::now_ns();
    let Some(t) = upstream.targets.get(idx) else {
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
        upstream.balancer.name(),
        upstream.targets.len(),
        tried.len()
    )
}

/// Runs every plugin's response hook on a response head.
fn response_phase(
    chain: &Chain,
    consumer: Option<usize>,
    status: StatusCode,
    headers: &mut HeaderMap,
    route: &str,
) {
    for entry in chain.entries.iter() {
        if let Some(plugin) = entry.pick(consumer) {
            plugin.response(&mut ResponseCtx {
                status,
                headers,
                route,
            });
        }
    }
}

/// A response a plugin made, with the headers plugins added and the request id.
fn plugin_response(
    resp: Response<Bytes>,
    extra: HeaderMap,
    chain: &Chain,
    consumer: Option<usize>,
    route: &str,
    request_id: &HeaderValue,
) -> Response<RespBody> {
    let mut resp = resp.map(RespBody::full);
    append_all(resp.headers_mut(), extra);
    resp.headers_mut()
        .entry(X_REQUEST_ID.clone())
        .or_insert_with(|| request_id.clone());
    let status = resp.status();
    response_phase(chain, consumer, status, resp.headers_mut(), route);
    resp
}

fn append_all(to: &mut HeaderMap, from: HeaderMap) {
    let mut last = None;
    for (name, value) in from {
        if let Some(n) = name {
            last = Some(n);
        }
        if let Some(n) = &last {
            to.append(n.clone(), value);
        }
    }
}

fn earliest(a: Instant, b: Option<Instant>) -> Instant {
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
        match target.connect(connect_timeout).await {
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
    route: &RouteEntry,
    client_host: Option<&HeaderValue>,
) {
    let host = match (route.preserve_host, client_host) {
        (true, Some(h)) => h.clone(),
        _ => target.authority.clone(),
    };
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
            parts.scheme = Some(Scheme::HTTP);
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

fn hash_key(source: &HashSource, view: &RequestView<'_>, info: &ConnInfo) -> Vec<u8> {
    match source {
        HashSource::None => Vec::new(),
        HashSource::ClientIp => info.client_ip.as_bytes().to_vec(),
        HashSource::Header(h) => match view.headers.get(h) {
            Some(v) => v.as_bytes().to_vec(),
            None => info.client_ip.as_bytes().to_vec(),
        },
        HashSource::Cookie(name) => match cookie(view.headers, name) {
            Some(v) => v.as_bytes().to_vec(),
            None => info.client_ip.as_bytes().to_vec(),
        },
        HashSource::Query(name) => match query_arg(view.query, name) {
            Some(v) => v.as_bytes().to_vec(),
            None => info.client_ip.as_bytes().to_vec(),
        },
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Copies bytes both ways between the client and the upstream after a 101.
async fn tunnel(
    down: hyper::upgrade::OnUpgrade,
    up: Upgraded,
    in_flight: InFlight,
    holds: Vec<Hold>,
    target: Box<str>,
) {
    let down = match down.await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(%target, error = %e, "upgrade failed");
            return;
        }
    };
    let mut down = TokioIo::new(down);
    let Upgraded {
        io: mut up,
        read_ahead,
        slot,
    } = up;
    // What the upstream sent right behind its 101 goes to the client first.
    if !read_ahead.is_empty() {
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut down, &read_ahead).await {
            tracing::debug!(%target, error = %e, "upgraded connection ended");
            return;
        }
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(%target, error = %e, "upgraded connection ended");
    }
    drop(slot);
    drop(in_flight);
    drop(holds);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A plugin that writes down what its log phase saw.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Plugin for Recorder {
        fn wants_log(&self) -> bool {
            true
        }
        fn log(&self, ctx: &LogCtx<'_>) {
            let who = ctx.consumer.map_or("-", |c| &c.username);
            self.0.lock().unwrap().push(format!(
                "{} {} {} {} {}",
                ctx.route, ctx.service, ctx.client_ip, who, ctx.status
            ));
        }
    }

    #[test]
    fn the_log_phase_runs_when_the_response_body_is_dropped() {
        let yaml = "upstreams: [{name: u, targets: [{address: \"127.0.0.1:9\"}]}]
services: [{name: s, upstream: u}]
routes: [{name: r, service: s}]
";
        let config = gatehouse_model::parse_yaml(yaml).unwrap();
        let node = gatehouse_runtime::NodeContext {
            workers: 1,
            node_index: 0,
        };
        let snap = Arc::new(Snapshot::compile(config, None, node).unwrap());
        let recorder = Arc::new(Recorder::default());
        let guard = LogGuard {
            snap,
            route: 0,
            client_ip: "10.1.2.3".parse().unwrap(),
            consumer: Some(Consumer {
                index: 0,
                username: "alice".into(),
                credential: None,
            }),
            status: StatusCode::IM_A_TEAPOT,
            started: Instant::now(),
            plugins: vec![recorder.clone()],
        };
        let body = RespBody::full(Bytes::from_static(b"hi")).with_hold(Box::new(guard));
        assert!(recorder.0.lock().unwrap().is_empty(), "not before the end");
        drop(body);
        assert_eq!(
            *recorder.0.lock().unwrap(),
            ["r s 10.1.2.3 alice 418 I'm a teapot"]
        );
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("127.0.0.1:1"), "127.0.0.1");
    }
}
