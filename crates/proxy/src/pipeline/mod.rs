//! The request pipeline: short, named stages over one [`RequestState`]. `handle` is the life
//! of a request as `docs/architecture.md` tells it: begin, route, plugins, prepare, replay,
//! guard, forward (one upstream exchange per attempt), answer, fallback, finish.

mod answer;
mod client;
mod exchange;
mod finale;
mod phases;
mod release;
mod replay;
mod request_body;
mod resilience;
mod retry;
mod route;
mod state;
mod subrequest;
mod transcode;
mod tunnel;
mod upstream_request;
mod verdict;

pub use state::{ConnInfo, TlsFacts};

use crate::body::RespBody;
use crate::errors::{respond, Failure};
use crate::headers::{new_request_id, wants_upgrade, X_REQUEST_ID};
use crate::observe::{Exchange, LogParts, Observed, SpanCtx, DECISION, SERVER_TIMING};
use crate::Shared;
use gatehouse_plugin_api::RequestHead;
use gatehouse_runtime::downstream::RequestBody as Incoming;
use gatehouse_runtime::snapshot::Snapshot;
use gatehouse_runtime::upstream::ClientFault;
use http::header::HOST;
use http::{HeaderValue, Request, Response};
use replay::Outgoing;
use request_body::ClientBody;
use state::{PluginState, RequestState, Routed};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

pub async fn handle(
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Response<Observed> {
    if req.uri().path().starts_with(HTTP01_PREFIX) {
        if let Some(answer) = Box::pin(acme_http01(&shared, &req)).await {
            return answer;
        }
    }
    let snap = shared.snapshot.load_full();
    let mut rec = Unfinished::new(Exchange::new(Instant::now(), req.method()), &snap);
    let mut st = begin(&shared, &snap, info, &mut req, rec.exchange());
    drop(shared);
    let grpc = crate::grpc::kind(req.headers());
    st.mark_upstream = grpc.is_some();
    let resp = match route::route(&snap, &st.info, &st.client, &mut req) {
        Ok(routed) => proxy(&mut st, routed, req, grpc).await,
        Err(Failure::HttpsRequired(code)) => route::https_required(&st, code, &req),
        Err(failure) => st.fail(failure),
    };
    let resp = match grpc {
        Some(kind) => grpc_answer(&mut st, resp, kind),
        None => resp,
    };
    let resp = finish(st, resp);
    let mut rec = rec.done();
    rec.snap = Some(snap);
    resp.map(|b| Observed::new(b, Some(rec)))
}

use gatehouse_runtime::tls::challenges::HTTP01_PREFIX;

/// The answer to an ACME server's HTTP-01 validation of a token this node holds.
async fn acme_http01<B>(shared: &Shared, req: &Request<B>) -> Option<Response<Observed>> {
    let token = req.uri().path().strip_prefix(HTTP01_PREFIX)?;
    let key_authorization = shared.challenges.http_anywhere(token).await?;
    tracing::info!(token, "answered an ACME HTTP-01 validation");
    let mut resp = Response::new(Observed::new(
        RespBody::full(bytes::Bytes::from(key_authorization)),
        None,
    ));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Some(resp)
}

/// A gRPC call's answer: the upstream's as it came (its status noted when in the head), the
/// gateway's own made a gRPC answer.
fn grpc_answer(
    st: &mut RequestState<'_>,
    resp: Response<RespBody>,
    kind: crate::grpc::Kind,
) -> Response<RespBody> {
    if resp
        .extensions()
        .get::<crate::grpc::FromUpstream>()
        .is_some()
    {
        st.rec.grpc_status = crate::grpc::status_of(resp.headers());
        if kind == crate::grpc::Kind::Grpc {
            return resp;
        }
        return crate::grpc_web::from_grpc(resp, kind);
    }
    let (resp, code) = crate::grpc::answer(resp, kind);
    st.rec.grpc_status = Some(code);
    resp
}

/// The request's record while its handler runs. Dropped with the handler before an answer
/// (the client went away on HTTP/2, or the drain timeout cut the connection), it records the
/// request as `499` with what was known, so that the metrics and the access log still see it.
struct Unfinished<'s> {
    rec: Option<Box<Exchange>>,
    snap: &'s Arc<Snapshot>,
}

impl<'s> Unfinished<'s> {
    fn new(rec: Exchange, snap: &'s Arc<Snapshot>) -> Self {
        Self {
            rec: Some(Box::new(rec)),
            snap,
        }
    }

    fn exchange(&mut self) -> &mut Exchange {
        // Always Some until `done`, which consumes self.
        self.rec
            .get_or_insert_with(|| Box::new(Exchange::new(Instant::now(), &http::Method::GET)))
    }

    /// The handler answered: the record goes on with the response body.
    fn done(mut self) -> Box<Exchange> {
        self.rec
            .take()
            .unwrap_or_else(|| Box::new(Exchange::new(Instant::now(), &http::Method::GET)))
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(mut rec) = self.rec.take() {
            // nginx's code for a request that ended before its answer was sent.
            rec.status = 499;
            rec.snap = Some(self.snap.clone());
        }
    }
}

/// The first stage: the request id, the observability record, and the debug token.
fn begin<'s>(
    shared: &Shared,
    snap: &'s Arc<Snapshot>,
    info: Arc<ConnInfo>,
    req: &mut Request<Incoming>,
    rec: &'s mut Exchange,
) -> RequestState<'s> {
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) => v.clone(),
        None => new_request_id(),
    };
    // The debug token never goes upstream; only a live one gets the decision trace.
    if let Some(token) = req.headers_mut().remove(&snap.debug_header) {
        let node = &snap.telemetry.node;
        if shared.debug_tokens.check(token.as_bytes()) {
            node.decision_traces.fetch_add(1, Ordering::Relaxed);
            rec.decision = Some(Box::default());
        } else {
            node.decision_trace_refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(client = %info.client, "decision trace refused: not a live debug token");
        }
    }
    let client = client::resolve(&info, req.headers(), &snap.trusted_proxies);
    if snap.telemetry.access_log.is_some() {
        let h = req.headers();
        rec.log = Some(LogParts {
            request_id: request_id.clone(),
            client_ip: client.ip,
            method: req.method().clone(),
            host: h.get(HOST).cloned(),
            uri: req.uri().clone(),
            version: req.version(),
            user_agent: h.get(http::header::USER_AGENT).cloned(),
        });
    }
    if let Some(n) = http_body::Body::size_hint(req.body()).exact() {
        rec.bytes_in = n;
    }
    RequestState {
        snap,
        info,
        client,
        request_id,
        rec,
        plugins: PluginState::default(),
        finale: None,
        mark_upstream: false,
    }
}

/// The stages of a routed request, from its plugins to its answer (or the fallback's).
async fn proxy(
    st: &mut RequestState<'_>,
    mut routed: Routed<'_>,
    mut req: Request<Incoming>,
    grpc: Option<crate::grpc::Kind>,
) -> Response<RespBody> {
    observe_route(st, &routed, &req);
    let snap: &Arc<Snapshot> = st.snap;
    let key = resilience::cache_key(&routed, &req);
    let keep = req.method() == http::Method::GET;
    let allowed = routed.route.retry.allowed(req.method(), grpc.is_some());
    // A gRPC call's own deadline bounds the whole exchange, like the service's total.
    let call_deadline = grpc.and_then(|_| crate::grpc::deadline(req.headers()));
    let upgrade = !st.info.h2 && wants_upgrade(req.headers());
    let on_upgrade = upgrade.then(|| tunnel::ClientUpgrade::of(&mut req));
    let (mut parts, body) = req.into_parts();
    let mut body = ClientBody::Streaming(body);
    let client_version = parts.version;
    if !routed.route.plugins.entries.is_empty() {
        // Boxed, like every stage only some routes reach: the request's future is moved on
        // every poll, so what plain routes never run should not make it larger.
        body = match Box::pin(plugins(st, snap, &mut routed, &mut parts, body)).await {
            Ok(body) => body,
            Err(resp) => return resp,
        };
    }
    release::color(snap, &mut routed, &parts.headers);
    let mut transcoding = None;
    if let (Some(t), None) = (routed.route.transcode.as_deref(), grpc) {
        st.mark_upstream = true;
        let made = Box::pin(transcode::request(st, &mut routed, t, &mut parts, body)).await;
        (body, transcoding) = match made {
            Ok((b, pending)) => (b, Some(pending)),
            Err(resp) => return resp,
        };
    }
    let (mut request, fault) = match upstream_request::build(st, &mut routed, parts, body, upgrade)
    {
        Ok(r) => r,
        Err(failure) => return st.fail(failure),
    };
    if let Some(kind @ (crate::grpc::Kind::Web | crate::grpc::Kind::WebText)) = grpc {
        request = crate::grpc_web::to_grpc(request, kind);
    }
    let total = total_deadline(routed.service.timeouts.total, call_deadline);
    let mut out = Outgoing::new(request);
    let fallback_upstream = routed
        .route
        .fallback
        .as_ref()
        .is_some_and(|f| f.upstream.is_some());
    if grpc.is_some() && allowed.after_send && !fallback_upstream {
        // A call may stream both ways: its body is copied as it goes, not held back.
        out.copy_while_streaming(routed.route.retry.max_body);
    } else if allowed.after_send || fallback_upstream {
        let (max, read) = (routed.route.retry.max_body, routed.service.timeouts.read);
        if let Err(f) = Box::pin(out.keep_for_replay(max, read)).await {
            let over_limit = fault.as_ref().and_then(|f| f.get()) == Some(ClientFault::OverLimit);
            if over_limit {
                tracing::info!(route = %routed.route.name, error = ?f, "request body over its limit");
                return st.fail(Failure::BodyTooLarge);
            }
            return st.fail(f);
        }
    }
    if st.finale.is_some() {
        release::copy_request(st, &mut out);
    }
    let (guard, refused) = resilience::admit(st, &routed, key, keep, &out);
    let resp = match refused {
        Some(refused) => refused,
        None => {
            let f = retry::Forward {
                allowed,
                total,
                body_fault: fault.as_deref(),
            };
            let down = answer::Downstream {
                version: client_version,
                on_upgrade,
                total,
            };
            let resp = match retry::forward(st, &routed, &mut out, f).await {
                Ok(answered) => answer::respond(st, &routed, answered, down),
                Err(resp) => resp,
            };
            match transcoding {
                Some(p) => Box::pin(transcode::response(p, resp)).await,
                None => resp,
            }
        }
    };
    match guard {
        Some(g) => resilience::after(g, resp, st, &routed).await,
        None => resp,
    }
}

/// When the whole exchange must end: the service's total timeout or the gRPC call's own
/// deadline, whichever comes first.
fn total_deadline(
    total: Option<std::time::Duration>,
    call: Option<std::time::Duration>,
) -> Option<Instant> {
    let d = match (total, call) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    d.map(|t| Instant::now() + t)
}

/// The route's span and the decision trace's plan, when either is on.
fn observe_route<B>(st: &mut RequestState<'_>, routed: &Routed<'_>, req: &Request<B>) {
    st.rec.route = Some(routed.index);
    if routed.route.observe.trace {
        if let Some(t) = &st.snap.telemetry.tracer {
            st.rec.span = Some(Box::new(SpanCtx::start(
                req.headers(),
                || t.sample(),
                req.method(),
                req.uri().path(),
                st.client.ip,
            )));
        }
    }
    if let Some(d) = st.rec.decision.as_mut() {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let host = route::host_name(routed.host.as_ref());
        d.plan = Some(gatehouse_runtime::explain::explain(
            st.snap,
            req.method(),
            host,
            pq,
            req.headers(),
        ));
    }
}

/// The plugin stage: the phases, then what the plugins chose applied to the routed request
/// (a new URI, service, variant, body or upstream).
async fn plugins<'s>(
    st: &mut RequestState<'_>,
    snap: &'s Snapshot,
    routed: &mut Routed<'s>,
    parts: &mut http::request::Parts,
    body: ClientBody,
) -> Result<ClientBody, Response<RespBody>> {
    let original = parts.uri.clone();
    let body = plugin_access(st, routed, parts, body).await?;
    if parts.uri != original {
        release::uri_changed(routed, &original, &parts.uri);
    }
    let body = release::apply(st, snap, routed, parts, body).map_err(|f| st.fail(f))?;
    if let Some(chosen) = st.plugins.upstream.take() {
        route::choose_upstream(st, snap, routed, &chosen, parts).map_err(|f| st.fail(f))?;
    }
    Ok(body)
}

/// The `rewrite` and `access` phases, with the request body read between them when a plugin
/// asked for it; `Err` is the answer a plugin (or a bad body) gave.
async fn plugin_access(
    st: &mut RequestState<'_>,
    routed: &mut Routed<'_>,
    parts: &mut http::request::Parts,
    mut body: ClientBody,
) -> Result<ClientBody, Response<RespBody>> {
    use phases::Phase;
    let needs = routed.route.plugins.needs;
    let started = (needs.log || needs.response_body || needs.copies.is_some()).then(Instant::now);
    let (ip, snap) = (st.client.ip, st.snap);
    if needs.facts {
        release::facts(st, routed);
    }
    let plugins = &mut st.plugins;
    // Without a body to read between them, both phases run over one context.
    let first: &[Phase] = match needs.request_body {
        Some(_) => &[Phase::Rewrite],
        None => &[Phase::Rewrite, Phase::Access],
    };
    let mut verdict = phases::run(first, parts, plugins, st.rec, ip, routed, snap).await;
    if let (Ok(()), Some(cap)) = (&verdict, needs.request_body) {
        body = match body {
            ClientBody::Streaming(incoming) if needs.request_body_partial => {
                let read = routed.service.timeouts.read;
                match request_body::read_or_pass(incoming, cap, read).await {
                    Ok(request_body::Outcome::Whole(bytes)) => {
                        st.plugins.body = Some(bytes.clone());
                        ClientBody::Read(bytes)
                    }
                    Ok(request_body::Outcome::Over(body)) => {
                        st.plugins.body_partial = true;
                        body
                    }
                    Err(failure) => return Err(st.fail(failure)),
                }
            }
            ClientBody::Streaming(incoming) => {
                match request_body::read(incoming, cap, routed.service.timeouts.read).await {
                    Ok(bytes) => {
                        st.plugins.body = Some(bytes.clone());
                        ClientBody::Read(bytes)
                    }
                    Err(failure) => return Err(st.fail(failure)),
                }
            }
            read => read,
        };
    }
    if verdict.is_ok() && needs.request_body.is_some() {
        let plugins = &mut st.plugins;
        verdict = phases::run(&[Phase::Access], parts, plugins, st.rec, ip, routed, snap).await;
    }
    if needs.request_head {
        st.plugins.head = Some(Box::new(RequestHead::of(parts)));
    }
    st.rec.consumer = st.plugins.consumer.clone();
    if let Some(started) = started {
        let consumer = st.plugins.consumer.as_ref();
        st.finale = finale::prepare(st.snap, routed, ip, consumer, started);
    }
    verdict
        .map(|()| body)
        .map_err(|answer| phases::answered(st, routed, answer))
}

/// The last stage: Server-Timing, the decision trace, and the log guard on the body.
fn finish(mut st: RequestState<'_>, mut resp: Response<RespBody>) -> Response<RespBody> {
    if st.rec.variant.is_some() {
        release::variant_header(&st, resp.headers_mut());
    }
    let rec = &mut *st.rec;
    rec.status = resp.status().as_u16();
    let route = rec.route.and_then(|i| st.snap.routes.get(i));
    if route.is_some_and(|r| r.observe.server_timing) {
        if let Some(v) = rec.server_timing() {
            resp.headers_mut().append(SERVER_TIMING.clone(), v);
        }
    }
    if let Some(d) = rec.decision.as_mut() {
        d.status = rec.status;
        d.retries = rec.retries;
        d.fallback = rec.degraded;
        let json = serde_json::to_vec(&**d).unwrap_or_default();
        if let Ok(v) = HeaderValue::from_bytes(&json) {
            resp.headers_mut().insert(DECISION.clone(), v);
        }
    }
    // Body filters run as the body streams; the log phase when it is dropped.
    if let Some(finale) = st.finale.take() {
        resp = finale.attach(std::mem::take(&mut st.plugins.state), resp);
    }
    resp
}

impl RequestState<'_> {
    /// The gateway's own answer for `failure`.
    pub fn fail(&self, failure: Failure) -> Response<RespBody> {
        respond(failure, &self.request_id)
    }
}
