//! The access log: one JSON line per request, formatted and written by a thread of its own.
//! Workers hand over a [`Line`] of plain owned values through a bounded queue and never wait:
//! when the queue is full the line is dropped and counted. The writer rotates by size and by
//! age, keeping `keep` old files (`access.log.1` is the newest).

use crate::snapshot::Snapshot;
use crate::telemetry::NodeStats;
use gatehouse_model::{AccessLog as Settings, LogField};
use http::{HeaderValue, Method, Uri, Version};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What one request leaves for its log line. Names (route, service, upstream) are read from
/// the snapshot on the writer's thread, so a worker copies no strings.
pub struct Line {
    pub time: SystemTime,
    pub snap: Arc<Snapshot>,
    pub route: Option<usize>,
    /// The target that answered.
    pub target: Option<Arc<crate::upstream::TargetState>>,
    pub request_id: HeaderValue,
    pub client_ip: IpAddr,
    pub consumer: Option<Arc<str>>,
    pub method: Method,
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    pub version: Version,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    pub retries: u32,
    pub rejected_by: Option<&'static str>,
    pub degraded: Option<&'static str>,
    pub trace_id: Option<[u8; 16]>,
    pub user_agent: Option<HeaderValue>,
    pub grpc_status: Option<u8>,
    /// Index of the route's release variant (see `RouteEntry::variants`).
    pub variant: Option<u16>,
}

/// A running access log writer; dropping the last handle ends its thread (after it wrote
/// what was queued).
pub struct AccessLog {
    tx: SyncSender<Msg>,
    /// What it was opened with: a reload with the same settings keeps this writer.
    pub settings: Settings,
    node: Arc<NodeStats>,
}

impl AccessLog {
    /// Checks that the log could be opened, without opening or creating anything: the file,
    /// if it exists, is a file; otherwise its directory exists and is writable.
    pub fn check(settings: &Settings) -> Result<(), String> {
        if settings.path == "stdout" {
            return Ok(());
        }
        let path = std::path::Path::new(&settings.path);
        if let Ok(m) = std::fs::metadata(path) {
            if !m.is_file() {
                return Err(format!("cannot open {}: not a file", path.display()));
            }
            if m.permissions().readonly() {
                return Err(format!("cannot open {}: read-only", path.display()));
            }
            return Ok(());
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() && !m.permissions().readonly() => Ok(()),
            Ok(m) if m.is_dir() => Err(format!(
                "cannot open {}: directory {} is read-only",
                path.display(),
                dir.display()
            )),
            Ok(_) => Err(format!(
                "cannot open {}: {} is not a directory",
                path.display(),
                dir.display()
            )),
            Err(e) => Err(format!(
                "cannot open {}: directory {}: {e}",
                path.display(),
                dir.display()
            )),
        }
    }

    /// Opens the file (or stdout) and starts the writer. The error names what failed.
    pub fn open(settings: &Settings, node: Arc<NodeStats>) -> Result<Arc<Self>, String> {
        let out = Output::open(settings)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(settings.buffer);
        let fields: Vec<LogField> = if settings.fields.is_empty() {
            LogField::ALL.to_vec()
        } else {
            settings.fields.clone()
        };
        let writer = Writer {
            clock: Clock::default(),
            capacity: settings.buffer,
            out,
            fields,
            redact: settings
                .redact_query
                .iter()
                .map(|s| s.as_str().into())
                .collect(),
            node: node.clone(),
            buf: Vec::with_capacity(64 * 1024),
        };
        std::thread::Builder::new()
            .name("gatehouse-access-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("cannot start the writer thread: {e}"))?;
        Ok(Arc::new(Self {
            tx,
            settings: settings.clone(),
            node,
        }))
    }

    /// Queues a line; never waits.
    #[inline]
    pub fn send(&self, line: Line) {
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.node.access_log_dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Waits (up to `timeout`) until every line queued before this call is written and
    /// flushed: what shutdown calls, so the last requests' lines are not lost with the
    /// process. False when the writer did not confirm in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        crate::telemetry::flush_queue(&self.tx, Msg::Flush, timeout)
    }
}

/// What the writer's queue carries: lines, and flush requests it acknowledges once everything
/// before them is written.
// Not boxed: a box would cost an allocation per item, and the queue's slots are as large
// as the item either way.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Line(Line),
    Flush(SyncSender<()>),
}

enum Sink {
    Stdout(std::io::Stdout),
    File(BufWriter<File>),
}

struct Output {
    sink: Sink,
    path: Option<PathBuf>,
    size: u64,
    opened: Instant,
    max_size: Option<u64>,
    every: Option<Duration>,
    keep: u32,
}

impl Output {
    fn open(s: &Settings) -> Result<Self, String> {
        let (sink, path, size) = if s.path == "stdout" {
            (Sink::Stdout(std::io::stdout()), None, 0)
        } else {
            let path = PathBuf::from(&s.path);
            let (f, size) = open_append(&path)?;
            (
                Sink::File(BufWriter::with_capacity(64 * 1024, f)),
                Some(path),
                size,
            )
        };
        Ok(Self {
            sink,
            path,
            size,
            opened: Instant::now(),
            max_size: s.max_size.map(|b| b.as_u64()),
            every: s.rotate_every,
            keep: s.keep,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.size += bytes.len() as u64;
        match &mut self.sink {
            Sink::Stdout(o) => o.lock().write_all(bytes),
            Sink::File(f) => f.write_all(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::Stdout(o) => o.flush(),
            Sink::File(f) => f.flush(),
        }
    }

    fn due(&self) -> bool {
        self.path.is_some()
            && (self.max_size.is_some_and(|m| self.size >= m)
                || self.every.is_some_and(|e| self.opened.elapsed() >= e))
    }

    /// Moves `path` to `path.1` (shifting older ones up, deleting past `keep`) and starts a
    /// new file.
    fn rotate(&mut self) -> Result<(), String> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        self.flush().map_err(|e| e.to_string())?;
        let numbered = |n: u32| {
            let mut p = path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.keep == 0 {
            let _ = std::fs::remove_file(&path);
        } else {
            let _ = std::fs::remove_file(numbered(self.keep));
            for n in (1..self.keep).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1)).map_err(|e| e.to_string())?;
                }
            }
            std::fs::rename(&path, numbered(1)).map_err(|e| e.to_string())?;
        }
        let (f, size) = open_append(&path)?;
        self.sink = Sink::File(BufWriter::with_capacity(64 * 1024, f));
        self.size = size;
        self.opened = Instant::now();
        Ok(())
    }
}

fn open_append(path: &PathBuf) -> Result<(File, u64), String> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((f, size))
}

/// How often the writer looks for queued lines.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

struct Writer {
    clock: Clock,
    capacity: usize,
    out: Output,
    fields: Vec<LogField>,
    /// Query arguments logged as `***`.
    redact: Box<[Box<str>]>,
    node: Arc<NodeStats>,
    buf: Vec<u8>,
}

impl Writer {
    /// Drains the queue on a timer instead of blocking on it: a worker's `try_send` then
    /// never has a sleeping writer to wake (a futex call per line, and on a busy core a
    /// context switch), and a burst is written with one `write` per 64 KiB.
    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let mut taken = 0usize;
            let ended = loop {
                match rx.try_recv() {
                    Ok(Msg::Line(line)) => {
                        self.line(&line);
                        taken += 1;
                        if self.buf.len() >= 64 * 1024 {
                            self.write_out();
                        }
                    }
                    Ok(Msg::Flush(ack)) => {
                        self.write_out();
                        let _ = ack.send(());
                    }
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
            };
            self.write_out();
            if self.out.due() {
                if let Err(e) = self.out.rotate() {
                    self.node.access_log_errors.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "access log rotation failed");
                }
            }
            if ended {
                return;
            }
            // A queue that filled a quarter since the last look is drained again at once.
            if taken < self.capacity / 4 {
                std::thread::sleep(DRAIN_EVERY);
            }
        }
    }

    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let r = self.out.write(&self.buf).and_then(|()| self.out.flush());
        if let Err(e) = r {
            self.node.access_log_errors.fetch_add(1, Relaxed);
            tracing::warn!(error = %e, "access log write failed");
        }
        self.buf.clear();
    }

    fn line(&mut self, l: &Line) {
        format(
            &mut self.buf,
            &mut self.clock,
            &self.fields,
            &self.redact,
            l,
        );
        self.buf.push(b'\n');
        self.node.access_log_written.fetch_add(1, Relaxed);
    }
}

/// A JSON object written straight into the line buffer. Written by hand because
/// serde_json's map serializer wants owned values: a `String` for each header value, the
/// time and the protocol, several allocations per line on the writer's thread, which shares
/// the core with the workers. This writes every value in place and formats a second's time
/// prefix once.
struct Obj<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl Obj<'_> {
    fn key(&mut self, k: &str) {
        self.buf.push(if self.first { b'{' } else { b',' });
        self.first = false;
        self.buf.push(b'"');
        self.buf.extend_from_slice(k.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }
    fn text(&mut self, k: &str, v: &[u8]) {
        self.key(k);
        string(self.buf, v);
    }
    fn opt_text(&mut self, k: &str, v: Option<&[u8]>) {
        match v {
            Some(v) => self.text(k, v),
            None => self.null(k),
        }
    }
    fn null(&mut self, k: &str) {
        self.key(k);
        self.buf.extend_from_slice(b"null");
    }
    fn uint(&mut self, k: &str, n: u64) {
        self.key(k);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }
    /// Milliseconds with three decimals (microsecond resolution).
    fn ms(&mut self, k: &str, d: Duration) {
        self.key(k);
        let us = d.as_micros() as u64;
        let mut b = itoa::Buffer::new();
        self.buf.extend_from_slice(b.format(us / 1000).as_bytes());
        let frac = us % 1000;
        self.buf.extend_from_slice(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
    }
    fn end(self) {
        if self.first {
            self.buf.push(b'{');
        }
        self.buf.push(b'}');
    }
}

/// A JSON string of `v`: escaped, and made valid UTF-8 if the bytes were not (header values
/// may carry obs-text).
fn string(buf: &mut Vec<u8>, v: &[u8]) {
    // Nearly every value is printable ASCII with nothing to escape: one pass to check, one
    // copy.
    if v.iter()
        .all(|&c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
    {
        buf.push(b'"');
        buf.extend_from_slice(v);
        buf.push(b'"');
        return;
    }
    let lossy;
    let v = match std::str::from_utf8(v) {
        Ok(s) => s.as_bytes(),
        Err(_) => {
            lossy = String::from_utf8_lossy(v).into_owned();
            lossy.as_bytes()
        }
    };
    buf.push(b'"');
    let mut start = 0;
    for (i, &c) in v.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        buf.extend_from_slice(v.get(start..i).unwrap_or_default());
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            buf.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(c >> 4) as usize],
                HEX[(c & 15) as usize],
            ]);
        } else {
            buf.extend_from_slice(esc);
        }
        start = i + 1;
    }
    buf.extend_from_slice(v.get(start..).unwrap_or_default());
    buf.push(b'"');
}

/// The `YYYY-MM-DDTHH:MM:SS` of one second, kept while lines stay in it.
#[derive(Default)]
pub struct Clock {
    second: u64,
    prefix: Vec<u8>,
}

impl Clock {
    fn write(&mut self, buf: &mut Vec<u8>, t: SystemTime) {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if second != self.second || self.prefix.is_empty() {
            self.second = second;
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(second);
            self.prefix = humantime::format_rfc3339_seconds(whole)
                .to_string()
                .trim_end_matches('Z')
                .as_bytes()
                .to_vec();
        }
        let ms = since.subsec_millis();
        buf.push(b'"');
        buf.extend_from_slice(&self.prefix);
        buf.extend_from_slice(&[
            b'.',
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
            b'Z',
            b'"',
        ]);
    }
}

/// `path` with the values of the query arguments named in `names` replaced by `***`;
/// borrowed, with no copy, when it has none of them (the common case).
fn redacted<'p>(path: &'p str, names: &[Box<str>]) -> std::borrow::Cow<'p, str> {
    let Some((p, query)) = path.split_once('?') else {
        return path.into();
    };
    let secret = |pair: &str| {
        let name = pair.split_once('=').map_or(pair, |(k, _)| k);
        names.iter().any(|n| **n == *name)
    };
    if !query.split('&').any(secret) {
        return path.into();
    }
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if secret(pair) => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{p}?{}", pairs.join("&")).into()
}

fn protocol(v: Version) -> &'static [u8] {
    match v {
        Version::HTTP_09 => b"HTTP/0.9",
        Version::HTTP_10 => b"HTTP/1.0",
        Version::HTTP_11 => b"HTTP/1.1",
        Version::HTTP_2 => b"HTTP/2.0",
        Version::HTTP_3 => b"HTTP/3.0",
        _ => b"HTTP",
    }
}

/// One request as a JSON object with the chosen fields, in their order.
pub fn format(
    buf: &mut Vec<u8>,
    clock: &mut Clock,
    fields: &[LogField],
    redact: &[Box<str>],
    l: &Line,
) {
    let route = l.route.and_then(|i| l.snap.routes.get(i));
    let service = route.and_then(|r| l.snap.services.get(r.service));
    let mut o = Obj { buf, first: true };
    for f in fields {
        match f {
            LogField::Time => {
                o.key("time");
                clock.write(o.buf, l.time);
            }
            LogField::RequestId => o.text("request_id", l.request_id.as_bytes()),
            LogField::ClientIp => {
                o.key("client_ip");
                match l.client_ip {
                    IpAddr::V4(v4) => {
                        // The common case without the formatting machinery.
                        o.buf.push(b'"');
                        for (i, octet) in v4.octets().iter().enumerate() {
                            if i > 0 {
                                o.buf.push(b'.');
                            }
                            o.buf
                                .extend_from_slice(itoa::Buffer::new().format(*octet).as_bytes());
                        }
                        o.buf.push(b'"');
                    }
                    IpAddr::V6(v6) => {
                        let _ = write!(o.buf, "\"{v6}\"");
                    }
                }
            }
            LogField::Consumer => o.opt_text("consumer", l.consumer.as_deref().map(str::as_bytes)),
            LogField::Route => o.opt_text("route", route.map(|r| r.name.as_bytes())),
            LogField::Service => o.opt_text("service", service.map(|s| s.name.as_bytes())),
            LogField::Upstream => {
                o.opt_text("upstream", service.map(|s| s.upstream.name.as_bytes()))
            }
            LogField::Target => {
                o.opt_text("target", l.target.as_ref().map(|t| t.address.as_bytes()))
            }
            LogField::Method => o.text("method", l.method.as_str().as_bytes()),
            LogField::Host => o.opt_text("host", l.host.as_ref().map(|h| h.as_bytes())),
            LogField::Path => {
                let path = l.uri.path_and_query().map_or("/", |p| p.as_str());
                o.text("path", redacted(path, redact).as_bytes())
            }
            LogField::Protocol => o.text("protocol", protocol(l.version)),
            LogField::Status => o.uint("status", l.status as u64),
            LogField::BytesIn => o.uint("bytes_in", l.bytes_in),
            LogField::BytesOut => o.uint("bytes_out", l.bytes_out),
            LogField::Duration => o.ms("duration_ms", l.duration),
            LogField::UpstreamDuration => match l.upstream {
                Some(d) => o.ms("upstream_ms", d),
                None => o.null("upstream_ms"),
            },
            LogField::GatewayDuration => o.ms(
                "gateway_ms",
                l.duration.saturating_sub(l.upstream.unwrap_or_default()),
            ),
            LogField::Retries => o.uint("retries", l.retries as u64),
            LogField::RejectedBy => o.opt_text("rejected_by", l.rejected_by.map(str::as_bytes)),
            LogField::Degraded => o.opt_text("degraded", l.degraded.map(str::as_bytes)),
            LogField::TraceId => match l.trace_id {
                Some(t) => o.text("trace_id", crate::trace::hex(&t).as_bytes()),
                None => o.null("trace_id"),
            },
            LogField::UserAgent => {
                o.opt_text("user_agent", l.user_agent.as_ref().map(|h| h.as_bytes()))
            }
            LogField::GrpcStatus => match l.grpc_status {
                Some(c) => o.uint("grpc_status", c as u64),
                None => o.null("grpc_status"),
            },
            LogField::Variant => {
                let name = l.variant.and_then(|v| {
                    let route = l.route.and_then(|r| l.snap.routes.get(r))?;
                    route
                        .variants
                        .get(usize::from(v))
                        .map(|(n, _)| n.as_bytes())
                });
                o.opt_text("variant", name)
            }
        }
    }
    o.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_query_are_not_logged() {
        let names: Vec<Box<str>> = ["apikey", "code"].map(Into::into).to_vec();
        assert_eq!(
            redacted("/a?apikey=s3cr3t&x=1", &names),
            "/a?apikey=***&x=1"
        );
        assert_eq!(
            redacted("/cb?state=1&code=abc", &names),
            "/cb?state=1&code=***"
        );
        assert!(matches!(
            redacted("/a?x=1", &names),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(redacted("/a", &names), "/a");
        assert_eq!(redacted("/a?apikeys=1", &names), "/a?apikeys=1");
    }

    #[test]
    fn strings_are_escaped_and_made_utf8() {
        let mut b = Vec::new();
        string(&mut b, b"a\"b\\c\nd\x01\x7f\xc3\xa9");
        assert_eq!(String::from_utf8_lossy(&b), r#""a\"b\\c\nd\u0001\u007fé""#);
        b.clear();
        string(&mut b, b"bad \xff byte");
        let back: String = serde_json::from_slice(&b).unwrap_or_default();
        assert_eq!(back, "bad \u{fffd} byte");
    }

    #[test]
    fn times_and_durations_read_back() {
        let mut c = Clock::default();
        let mut b = Vec::new();
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_574_789_042);
        c.write(&mut b, t);
        assert_eq!(String::from_utf8_lossy(&b), "\"2025-12-01T07:39:49.042Z\"");
        let mut b = Vec::new();
        let mut o = Obj {
            buf: &mut b,
            first: true,
        };
        o.ms("a", Duration::from_micros(1_234_567));
        o.ms("b", Duration::from_micros(7));
        o.uint("c", 42);
        o.end();
        assert_eq!(
            String::from_utf8_lossy(&b),
            r#"{"a":1234.567,"b":0.007,"c":42}"#
        );
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test --release -p gatehouse-runtime format_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn format_cost() {
        let cfg = gatehouse_model::parse_yaml(
            "upstreams: [{name: u, targets: [{address: \"127.0.0.1:1\"}]}]\nservices: [{name: s, upstream: u}]\nroutes: [{name: r, service: s}]\n",
        );
        let Ok(cfg) = cfg else { return };
        let node = crate::NodeContext {
            workers: 1,
            node_index: 0,
            registry: gatehouse_plugins::registry(),
        };
        let Ok(snap) = Snapshot::compile(cfg, None, node) else {
            return;
        };
        let snap = Arc::new(snap);
        let line = || Line {
            time: SystemTime::now(),
            snap: snap.clone(),
            route: Some(0),
            target: snap
                .upstreams
                .get("u")
                .map(|u| u.targets().targets[0].clone()),
            request_id: HeaderValue::from_static("8018868a-3d22-462e-83ec-cd537ebba2a1"),
            client_ip: "127.0.0.1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1])),
            consumer: None,
            method: Method::GET,
            host: Some(HeaderValue::from_static("127.0.0.1:29998")),
            uri: Uri::from_static("/api/orders/42?x=1"),
            version: Version::HTTP_11,
            status: 200,
            bytes_in: 0,
            bytes_out: 689,
            duration: Duration::from_micros(1752),
            upstream: Some(Duration::from_micros(1079)),
            retries: 0,
            rejected_by: None,
            degraded: None,
            trace_id: None,
            user_agent: Some(HeaderValue::from_static("wrk/4.2.0")),
            grpc_status: None,
            variant: None,
        };
        let lines: Vec<Line> = (0..100_000).map(|_| line()).collect();
        let mut buf = Vec::with_capacity(128 * 1024);
        let mut clock = Clock::default();
        let t = Instant::now();
        let mut total = 0;
        for l in &lines {
            format(&mut buf, &mut clock, &LogField::ALL, &[], l);
            buf.push(b'\n');
            if buf.len() > 64 * 1024 {
                total += buf.len();
                buf.clear();
            }
        }
        total += buf.len();
        let fmt = t.elapsed();
        let t = Instant::now();
        drop(lines);
        let dropped = t.elapsed();
        println!(
            "format {:?}/line, drop {:?}/line, {} bytes/line",
            fmt / 100_000,
            dropped / 100_000,
            total / 100_000
        );
    }
}
