//! One request as observability sees it: an [`Exchange`] filled in along the request's way,
//! carried by the response body ([`Observed`]) and turned into metrics, an access log line and
//! spans when the body is dropped (sent, or abandoned by the client).

use crate::body::RespBody;
use bytes::Bytes;
use gatehouse_plugin_api::Consumer;
use gatehouse_runtime::access_log::Line;
use gatehouse_runtime::snapshot::Snapshot;
use gatehouse_runtime::telemetry::Finished;
use gatehouse_runtime::trace::{Attr, SpanRecord, TraceParent};
use gatehouse_runtime::upstream::TargetState;
use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use serde::Serialize;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
pub static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");
pub static SERVER_TIMING: http::HeaderName = http::HeaderName::from_static("server-timing");
pub static DECISION: http::HeaderName = http::HeaderName::from_static("x-gatehouse-decision");

/// What a request's access log line needs from its head, taken before the head is changed.
pub struct LogParts {
    pub request_id: HeaderValue,
    pub client_ip: IpAddr,
    pub method: Method,
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    pub version: Version,
    pub user_agent: Option<HeaderValue>,
}

/// The request's span, and its attempts' child spans.
pub struct SpanCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
    pub trace_state: Option<HeaderValue>,
    pub method: Method,
    pub path: String,
    pub client_ip: IpAddr,
    pub attempts: Vec<AttemptSpan>,
}

pub struct AttemptSpan {
    pub span_id: [u8; 8],
    pub start: Instant,
    pub end: Instant,
    pub target: Arc<TargetState>,
    pub status: Option<u16>,
    pub error: Option<&'static str>,
}

impl SpanCtx {
    /// Starts the request's span: continues the client's trace when `traceparent` is valid
    /// (and follows its sampling decision), else starts a new one sampled by `sample`.
    pub fn start(
        headers: &HeaderMap,
        sample: impl FnOnce() -> bool,
        method: &Method,
        path: &str,
        client_ip: IpAddr,
    ) -> Self {
        let parent = headers
            .get(&TRACEPARENT)
            .and_then(|v| TraceParent::parse(v.as_bytes()));
        let (trace_id, parent_id, sampled) = match parent {
            Some(p) => (p.trace_id, Some(p.parent_id), p.sampled),
            None => (gatehouse_runtime::trace::new_trace_id(), None, sample()),
        };
        Self {
            trace_id,
            span_id: gatehouse_runtime::trace::new_span_id(),
            parent: parent_id,
            sampled,
            // tracestate means nothing without the traceparent it came with.
            trace_state: parent.and_then(|_| headers.get(&TRACESTATE).cloned()),
            method: method.clone(),
            path: path.to_owned(),
            client_ip,
            attempts: Vec::new(),
        }
    }

    /// A new attempt's span id, and the `traceparent` that names it for the upstream.
    pub fn next_attempt(&self) -> ([u8; 8], HeaderValue) {
        let id = gatehouse_runtime::trace::new_span_id();
        (id, TraceParent::header(&self.trace_id, &id, self.sampled))
    }
}

/// The decision trace: what the gateway decided for one request, returned to a caller that
/// presented a valid debug token.
#[derive(Debug, Default, Serialize)]
pub struct Decision {
    /// The route, its conditions and captures, the plugin plan and the balancer's targets.
    pub plan: Option<gatehouse_runtime::explain::Explanation>,
    pub plugins: Vec<PluginStep>,
    pub attempts: Vec<AttemptNote>,
    pub retries: u32,
    /// `cache`, `static` or `upstream` when a fallback answered.
    pub fallback: Option<&'static str>,
    pub status: u16,
}

#[derive(Debug, Serialize)]
pub struct PluginStep {
    pub plugin: &'static str,
    pub phase: &'static str,
    /// `continue`, or `respond <status>`.
    pub verdict: String,
    pub micros: u64,
    /// What a limit counts by (its key class), when the plugin has one.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub key: String,
    /// This request's key under it (e.g. the client's address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_value: Option<String>,
    /// Headers the plugin set for the client (remaining quota, policy, retry-after).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Serialize)]
pub struct AttemptNote {
    pub target: String,
    /// Why this target: the balancer and the target's health and breaker state.
    pub why: String,
    /// `status 200`, or what failed.
    pub outcome: String,
    pub ms: f64,
}

/// Everything observed of one request.
pub struct Exchange {
    pub started: Instant,
    /// The snapshot the request was served with; set once the handler is done with it (so
    /// the request path shares one `Arc` of it, not two).
    pub snap: Option<Arc<Snapshot>>,
    pub route: Option<usize>,
    pub method: u8,
    pub status: u16,
    pub bytes_in: u64,
    /// Counted as a chunked request body streams.
    pub counted_in: Option<Arc<AtomicU64>>,
    pub bytes_out: u64,
    /// Time upstreams took to answer (head), over all attempts.
    pub upstream: Option<Duration>,
    /// The target that answered; kept only for the access log (a shared reference count
    /// touched per request otherwise).
    pub target: Option<Arc<TargetState>>,
    pub retries: u32,
    pub budget_exhausted: bool,
    /// A gRPC call's status: from the answer's head, else its trailers.
    pub grpc_status: Option<u8>,
    /// The route's release variant this request was given (index into its `variants`).
    pub variant: Option<u16>,
    pub rejected_by: Option<&'static str>,
    pub degraded: Option<&'static str>,
    pub consumer: Option<Consumer>,
    pub log: Option<LogParts>,
    pub span: Option<Box<SpanCtx>>,
    pub decision: Option<Box<Decision>>,
}

impl Exchange {
    pub fn new(started: Instant, method: &Method) -> Self {
        Self {
            started,
            snap: None,
            route: None,
            method: gatehouse_runtime::telemetry::method_class(method),
            status: 0,
            bytes_in: 0,
            counted_in: None,
            bytes_out: 0,
            upstream: None,
            target: None,
            retries: 0,
            budget_exhausted: false,
            grpc_status: None,
            variant: None,
            rejected_by: None,
            degraded: None,
            consumer: None,
            log: None,
            span: None,
            decision: None,
        }
    }

    /// Notes one upstream attempt (for the span and the decision trace, when either is on).
    pub fn attempt(
        &mut self,
        span_id: Option<[u8; 8]>,
        target: &Arc<TargetState>,
        start: Instant,
        status: Option<u16>,
        error: Option<&'static str>,
        why: impl FnOnce() -> String,
    ) {
        if self.decision.is_none() && !self.span.as_ref().is_some_and(|s| s.sampled) {
            return;
        }
        let end = Instant::now();
        if let (Some(span), Some(id)) = (self.span.as_mut(), span_id) {
            if span.sampled {
                span.attempts.push(AttemptSpan {
                    span_id: id,
                    start,
                    end,
                    target: target.clone(),
                    status,
                    error,
                });
            }
        }
        if let Some(d) = self.decision.as_mut() {
            d.attempts.push(AttemptNote {
                target: target.address.to_string(),
                why: why(),
                outcome: match (status, error) {
                    (Some(s), _) => format!("status {s}"),
                    (None, Some(e)) => e.to_string(),
                    (None, None) => "no answer".into(),
                },
                ms: (end - start).as_micros() as f64 / 1000.0,
            });
        }
    }

    /// `Server-Timing` for the response head: the upstream's time and the gateway's own.
    pub fn server_timing(&self) -> Option<HeaderValue> {
        let so_far = self.started.elapsed();
        let up = self.upstream.unwrap_or_default();
        let gw = so_far.saturating_sub(up);
        let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
        let v = match self.upstream {
            Some(_) => format!("gateway;dur={:.3}, upstream;dur={:.3}", ms(gw), ms(up)),
            None => format!("gateway;dur={:.3}", ms(gw)),
        };
        HeaderValue::from_str(&v).ok()
    }

    fn finish(&mut self) {
        let Some(snap) = self.snap.take() else {
            return;
        };
        let total = self.started.elapsed();
        let route = self.route.and_then(|i| snap.routes.get(i));
        let bytes_in = self.bytes_in
            + self
                .counted_in
                .as_ref()
                .map_or(0, |c| c.load(Ordering::Relaxed));
        if let Some(stats) = route.and_then(|r| r.stats.as_ref()) {
            let finished = Finished {
                method: self.method,
                status: self.status,
                total_ns: total.as_nanos() as u64,
                upstream_ns: self.upstream.map(|d| d.as_nanos() as u64),
                bytes_in,
                bytes_out: self.bytes_out,
                retries: self.retries,
                budget_exhausted: self.budget_exhausted,
                grpc_status: self.grpc_status,
            };
            stats.record(&snap.telemetry.bounds_ns, &finished);
            let variant = self
                .variant
                .and_then(|v| route?.variants.get(usize::from(v)));
            if let Some((_, v)) = variant {
                v.record(&snap.telemetry.bounds_ns, &finished);
            }
        } else if route.is_none() && self.status == 404 {
            // Requests refused before routing (bad framing: 400) are not "no route".
            snap.telemetry.node.unrouted.fetch_add(1, Ordering::Relaxed);
        }
        if let Some((_, s)) = self
            .consumer
            .as_ref()
            .and_then(|c| snap.consumer_stats.get(c.index))
        {
            s.record_class(self.method, self.status);
        }
        // The wall clock is read only for a log line or a span.
        let wall = || {
            let now = SystemTime::now();
            (now, now.checked_sub(total).unwrap_or(now))
        };
        self.write_log(&snap, total, bytes_in, wall);
        self.send_spans(&snap, wall);
    }

    /// The access log line, when the log is on and the request is sampled.
    fn write_log(
        &mut self,
        snap: &Arc<Snapshot>,
        total: Duration,
        bytes_in: u64,
        wall: impl Fn() -> (SystemTime, SystemTime),
    ) {
        let route = self.route.and_then(|i| snap.routes.get(i));
        if let (Some(parts), Some(log)) = (self.log.take(), &snap.telemetry.access_log) {
            let keep = match route {
                Some(r) => r.observe.sample_log(),
                None => fastrand::f64() < log.settings.sample,
            };
            if keep {
                log.send(Line {
                    time: wall().1,
                    snap: snap.clone(),
                    route: self.route,
                    target: self.target.take(),
                    request_id: parts.request_id,
                    client_ip: parts.client_ip,
                    consumer: self.consumer.as_ref().map(|c| c.username.clone()),
                    method: parts.method,
                    host: parts.host,
                    uri: parts.uri,
                    version: parts.version,
                    status: self.status,
                    bytes_in,
                    bytes_out: self.bytes_out,
                    duration: total,
                    upstream: self.upstream,
                    retries: self.retries,
                    rejected_by: self.rejected_by,
                    degraded: self.degraded,
                    trace_id: self.span.as_ref().map(|s| s.trace_id),
                    user_agent: parts.user_agent,
                    grpc_status: self.grpc_status,
                    variant: self.variant,
                });
            }
        }
    }

    /// The request's span and its attempts' spans, when sampled.
    fn send_spans(&mut self, snap: &Snapshot, wall: impl Fn() -> (SystemTime, SystemTime)) {
        let route = self.route.and_then(|i| snap.routes.get(i));
        if let (Some(span), Some(tracer)) = (self.span.take(), &snap.telemetry.tracer) {
            if span.sampled {
                let (now, began) = wall();
                let wall = |at: Instant| {
                    began
                        .checked_add(at.saturating_duration_since(self.started))
                        .unwrap_or(began)
                };
                let route_name = route.map_or("", |r| &*r.name);
                let service = route
                    .and_then(|r| snap.services.get(r.service))
                    .map_or("", |s| &*s.name);
                for a in &span.attempts {
                    let mut attributes = vec![
                        ("server.address", Attr::Str(a.target.address.to_string())),
                        ("http.request.method", Attr::Str(span.method.to_string())),
                    ];
                    if let Some(s) = a.status {
                        attributes.push(("http.response.status_code", Attr::Int(s as i64)));
                    }
                    if let Some(e) = a.error {
                        attributes.push(("error.type", Attr::Str(e.to_string())));
                    }
                    tracer.send(SpanRecord {
                        trace_id: span.trace_id,
                        span_id: a.span_id,
                        parent: Some(span.span_id),
                        trace_state: None,
                        name: format!("{} upstream", span.method),
                        server: false,
                        start: wall(a.start),
                        end: wall(a.end),
                        attributes,
                        error: a.error.map(str::to_owned).or_else(|| {
                            a.status
                                .filter(|s| *s >= 500)
                                .map(|s| format!("status {s}"))
                        }),
                    });
                }
                let mut attributes = vec![
                    ("http.request.method", Attr::Str(span.method.to_string())),
                    ("url.path", Attr::Str(span.path.clone())),
                    ("http.response.status_code", Attr::Int(self.status as i64)),
                    ("client.address", Attr::Str(span.client_ip.to_string())),
                    ("gatehouse.retries", Attr::Int(self.retries as i64)),
                ];
                if route.is_some() {
                    attributes.push(("http.route", Attr::Str(route_name.to_string())));
                    attributes.push(("gatehouse.service", Attr::Str(service.to_string())));
                }
                if let Some(p) = self.rejected_by {
                    attributes.push(("gatehouse.rejected_by", Attr::Str(p.to_string())));
                }
                if let Some(d) = self.degraded {
                    attributes.push(("gatehouse.degraded", Attr::Str(d.to_string())));
                }
                tracer.send(SpanRecord {
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent: span.parent,
                    trace_state: span.trace_state.clone(),
                    name: if route.is_some() {
                        format!("{} {}", span.method, route_name)
                    } else {
                        span.method.to_string()
                    },
                    server: true,
                    start: began,
                    end: now,
                    attributes,
                    error: (self.status >= 500).then(|| format!("status {}", self.status)),
                });
            }
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish();
    }
}

pin_project_lite::pin_project! {
    /// The response body with its request's observation: counts the bytes sent, and records
    /// the request when dropped.
    pub struct Observed {
        #[pin]
        inner: RespBody,
        x: Option<Box<Exchange>>,
    }
}

impl Observed {
    pub fn new(inner: RespBody, x: Option<Box<Exchange>>) -> Self {
        Self { inner, x }
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let (Poll::Ready(Some(Ok(f))), Some(x)) = (&r, this.x.as_mut()) {
            if let Some(d) = f.data_ref() {
                x.bytes_out += d.len() as u64;
            } else if let Some(t) = f.trailers_ref() {
                if let Some(code) = crate::grpc::status_of(t) {
                    x.grpc_status = Some(code);
                }
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
