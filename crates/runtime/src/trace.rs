//! OpenTelemetry tracing: W3C `traceparent` in and out, a span per request with a child span
//! per upstream attempt, exported in batches over OTLP/HTTP (protobuf) by a thread of its own.
//! Workers hand finished spans over a bounded queue and never wait; a full queue drops and
//! counts.
//!
//! The `traceparent` parser is written here: the header is fixed-width (55 characters for
//! version 00), and parsing it by hand keeps the OpenTelemetry SDK (its global tracer,
//! context and processor) off the request path. The wire types are `opentelemetry-proto`'s.

use crate::telemetry::NodeStats;
use bytes::Bytes;
use gatehouse_model::Tracing as Settings;
use http::HeaderValue;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A parsed `traceparent` (version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let d = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        *o = d(*pair.first()?)? << 4 | d(*pair.get(1)?)?;
    }
    Some(out)
}

pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

impl TraceParent {
    /// Parses a `traceparent` value; None for anything malformed (which W3C says to treat
    /// as absent: the gateway then starts a new trace).
    pub fn parse(v: &[u8]) -> Option<Self> {
        // version-traceid-parentid-flags; later versions may append fields after a dash.
        if v.len() < 55
            || v.get(2) != Some(&b'-')
            || v.get(35) != Some(&b'-')
            || v.get(52) != Some(&b'-')
        {
            return None;
        }
        let version: [u8; 1] = unhex(v.get(0..2)?)?;
        if version[0] == 0xff || (version[0] == 0 && v.len() != 55) {
            return None;
        }
        if v.len() > 55 && v.get(55) != Some(&b'-') {
            return None;
        }
        let trace_id: [u8; 16] = unhex(v.get(3..35)?)?;
        let parent_id: [u8; 8] = unhex(v.get(36..52)?)?;
        let flags: [u8; 1] = unhex(v.get(53..55)?)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            sampled: flags[0] & 1 == 1,
        })
    }

    /// The header value naming `span` as the parent.
    pub fn header(trace_id: &[u8; 16], span: &[u8; 8], sampled: bool) -> HeaderValue {
        let v = format!(
            "00-{}-{}-{}",
            hex(trace_id),
            hex(span),
            if sampled { "01" } else { "00" }
        );
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

/// A finished span, as workers hand it over.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub trace_state: Option<HeaderValue>,
    pub name: String,
    pub server: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Attr)>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Attr {
    Str(String),
    Int(i64),
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

impl SpanRecord {
    fn into_proto(self) -> Span {
        let attributes = self
            .attributes
            .into_iter()
            .map(|(k, v)| {
                kv(
                    k,
                    match v {
                        Attr::Str(s) => any_value::Value::StringValue(s),
                        Attr::Int(i) => any_value::Value::IntValue(i),
                    },
                )
            })
            .collect();
        let status = Some(match self.error {
            Some(message) => Status {
                message,
                code: status::StatusCode::Error as i32,
            },
            None => Status {
                message: String::new(),
                code: status::StatusCode::Unset as i32,
            },
        });
        Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            trace_state: self
                .trace_state
                .and_then(|v| v.to_str().ok().map(str::to_owned))
                .unwrap_or_default(),
            name: self.name,
            kind: if self.server {
                span::SpanKind::Server as i32
            } else {
                span::SpanKind::Client as i32
            },
            start_time_unix_nano: unix_ns(self.start),
            end_time_unix_nano: unix_ns(self.end),
            attributes,
            status,
            flags: 0x100 | 1, // has-is-remote known, sampled
            ..Default::default()
        }
    }
}

/// A running exporter; dropping the last handle flushes and ends its thread.
pub struct Tracer {
    tx: SyncSender<Msg>,
    pub settings: Settings,
    /// `sample_ratio` as a threshold on a random u32.
    sample_below: u64,
    node: Arc<NodeStats>,
}

impl Tracer {
    /// The endpoint and headers `settings` name, or what is wrong with them; starts nothing.
    pub fn check(settings: &Settings) -> Result<(http::Uri, http::HeaderMap), String> {
        let uri: http::Uri = settings
            .endpoint
            .parse()
            .map_err(|e| format!("endpoint: {e}"))?;
        let mut headers = http::HeaderMap::new();
        for (k, v) in &settings.headers {
            let k = http::HeaderName::try_from(k.as_str()).map_err(|e| format!("headers: {e}"))?;
            let v = HeaderValue::try_from(v.as_str()).map_err(|e| format!("headers: {e}"))?;
            headers.insert(k, v);
        }
        Ok((uri, headers))
    }

    pub fn start(settings: &Settings, node: Arc<NodeStats>) -> Result<Arc<Self>, String> {
        let (uri, headers) = Self::check(settings)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(settings.buffer);
        let exporter = Exporter {
            uri,
            headers,
            resource: Resource {
                attributes: vec![kv(
                    "service.name",
                    any_value::Value::StringValue(settings.service_name.clone()),
                )],
                ..Default::default()
            },
            every: settings.flush_every,
            node: node.clone(),
        };
        std::thread::Builder::new()
            .name("gatehouse-otlp".into())
            .spawn(move || exporter.run(rx))
            .map_err(|e| format!("cannot start the exporter thread: {e}"))?;
        Ok(Arc::new(Self {
            tx,
            settings: settings.clone(),
            sample_below: (settings.sample_ratio.clamp(0.0, 1.0) * (u32::MAX as f64 + 2.0)) as u64,
            node,
        }))
    }

    /// Whether a new trace (one with no sampled parent) is recorded.
    pub fn sample(&self) -> bool {
        self.sample_below > u32::MAX as u64 || (fastrand::u32(..) as u64) < self.sample_below
    }

    pub fn send(&self, span: SpanRecord) {
        match self.tx.try_send(Msg::Span(span)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.node.spans_dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Waits (up to `timeout`) until every span queued before this call was exported (or
    /// its export failed): what shutdown calls. False when the exporter did not confirm in
    /// time.
    pub fn flush(&self, timeout: Duration) -> bool {
        crate::telemetry::flush_queue(&self.tx, Msg::Flush, timeout)
    }
}

/// What the exporter's queue carries: spans, and flush requests it acknowledges once
/// everything before them was exported.
// Not boxed: a box would cost an allocation per item, and the queue's slots are as large
// as the item either way.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Span(SpanRecord),
    Flush(SyncSender<()>),
}

/// Most spans per export request.
const BATCH: usize = 512;

struct Exporter {
    uri: http::Uri,
    headers: http::HeaderMap,
    resource: Resource,
    every: Duration,
    node: Arc<NodeStats>,
}

impl Exporter {
    fn run(self, rx: Receiver<Msg>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "OTLP exporter runtime did not start");
                return;
            }
        };
        // Drained on a timer, not by blocking on the queue, so that a worker handing over a
        // span never has to wake this thread (see the access log writer).
        let tick = self.every.min(Duration::from_millis(50));
        let mut batch: Vec<SpanRecord> = Vec::new();
        let mut due = Instant::now() + self.every;
        loop {
            let ended = loop {
                match rx.try_recv() {
                    Ok(Msg::Span(s)) => {
                        batch.push(s);
                        if batch.len() >= BATCH {
                            self.send(&rt, std::mem::take(&mut batch));
                        }
                    }
                    Ok(Msg::Flush(ack)) => {
                        if !batch.is_empty() {
                            self.send(&rt, std::mem::take(&mut batch));
                        }
                        let _ = ack.send(());
                    }
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
            };
            if !batch.is_empty() && (ended || Instant::now() >= due) {
                self.send(&rt, std::mem::take(&mut batch));
            }
            if Instant::now() >= due {
                due = Instant::now() + self.every;
            }
            if ended {
                return;
            }
            std::thread::sleep(tick);
        }
    }

    fn send(&self, rt: &tokio::runtime::Runtime, spans: Vec<SpanRecord>) {
        let n = spans.len() as u64;
        match rt.block_on(self.export(spans)) {
            Ok(()) => {
                self.node.spans_exported.fetch_add(n, Relaxed);
            }
            Err(e) => {
                self.node.span_export_failures.fetch_add(1, Relaxed);
                self.node.spans_dropped.fetch_add(n, Relaxed);
                tracing::warn!(error = %e, endpoint = %self.uri, spans = n, "OTLP export failed");
            }
        }
    }

    async fn export(&self, spans: Vec<SpanRecord>) -> Result<(), String> {
        use prost::Message;
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "gatehouse".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: spans.into_iter().map(SpanRecord::into_proto).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let body = Bytes::from(req.encode_to_vec());
        let authority = self.uri.authority().ok_or("endpoint has no host")?.clone();
        let port = authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect((authority.host(), port)),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = http::Request::post(self.uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(http_body_util::Full::new(body))
            .map_err(|e| e.to_string())?;
        for (k, v) in &self.headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
            .await
            .map_err(|_| "collector did not answer in 10s".to_string())?
            .map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {}", resp.status()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_malformed() {
        let v = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = TraceParent::parse(v);
        assert_eq!(
            p.map(|p| (hex(&p.trace_id), hex(&p.parent_id), p.sampled)),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                "00f067aa0ba902b7".into(),
                true
            ))
        );
        let again = p.map(|p| TraceParent::header(&p.trace_id, &p.parent_id, p.sampled));
        assert_eq!(again.as_ref().map(|h| h.as_bytes()), Some(&v[..]));
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"garbage",
        ] {
            assert_eq!(
                TraceParent::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A later version may carry more fields; its first four are read.
        let v1 = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what";
        assert_eq!(TraceParent::parse(v1).map(|p| p.sampled), Some(false));
    }
}
