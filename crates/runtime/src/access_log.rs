//! The access log: one JSON line per request, formatted and written by a thread of its own.
//! Workers hand over a [`Line`] of plain owned values through a bounded queue and never wait:
//! when the queue is full the line is dropped and counted. The writer rotates by size and by
//! age, keeping `keep` old files (`access.log.1` is the newest).

use crate::snapshot::Snapshot;
use crate::telemetry::NodeStats;
use crate::upstream::TargetState;
use gatehouse_model::{AccessLog as Settings, LogField};
use http::{HeaderValue, Method, Uri, Version};
use serde::ser::{SerializeMap, Serializer};
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
    pub target: Option<Arc<TargetState>>,
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
}

/// A running access log writer; dropping the last handle ends its thread (after it wrote
/// what was queued).
pub struct AccessLog {
    tx: SyncSender<Line>,
    /// What it was opened with: a reload with the same settings keeps this writer.
    pub settings: Settings,
    node: Arc<NodeStats>,
}

impl AccessLog {
    /// Opens the file (or stdout) and starts the writer. The error names what failed.
    pub fn open(settings: &Settings, node: Arc<NodeStats>) -> Result<Arc<Self>, String> {
        let out = Output::open(settings)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(settings.buffer);
        let fields: Vec<LogField> = if settings.fields.is_empty() {
            LogField::ALL.to_vec()
        } else {
            settings.fields.clone()
        };
        let writer = Writer {
            capacity: settings.buffer,
            out,
            fields,
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
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.node.access_log_dropped.fetch_add(1, Relaxed);
            }
        }
    }
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
    capacity: usize,
    out: Output,
    fields: Vec<LogField>,
    node: Arc<NodeStats>,
    buf: Vec<u8>,
}

impl Writer {
    /// Drains the queue on a timer instead of blocking on it: a worker's `try_send` then
    /// never has a sleeping writer to wake (a futex call per line, and on a busy core a
    /// context switch), and a burst is written with one `write` per 64 KiB.
    fn run(mut self, rx: Receiver<Line>) {
        loop {
            let mut taken = 0usize;
            let ended = loop {
                match rx.try_recv() {
                    Ok(line) => {
                        self.line(&line);
                        taken += 1;
                        if self.buf.len() >= 64 * 1024 {
                            self.write_out();
                        }
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
        let start = self.buf.len();
        if format(&mut self.buf, &self.fields, l).is_ok() {
            self.buf.push(b'\n');
            self.node.access_log_written.fetch_add(1, Relaxed);
        } else {
            self.buf.truncate(start);
            self.node.access_log_errors.fetch_add(1, Relaxed);
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

fn text(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

/// One request as a JSON object with the chosen fields, in their order.
pub fn format(buf: &mut Vec<u8>, fields: &[LogField], l: &Line) -> Result<(), serde_json::Error> {
    let mut ser = serde_json::Serializer::new(buf);
    let mut m = ser.serialize_map(Some(fields.len()))?;
    let route = l.route.and_then(|i| l.snap.routes.get(i));
    let service = route.and_then(|r| l.snap.services.get(r.service));
    for f in fields {
        match f {
            LogField::Time => m.serialize_entry(
                "time",
                &humantime::format_rfc3339_millis(l.time).to_string(),
            )?,
            LogField::RequestId => m.serialize_entry("request_id", &text(&l.request_id))?,
            LogField::ClientIp => m.serialize_entry("client_ip", &l.client_ip)?,
            LogField::Consumer => m.serialize_entry("consumer", &l.consumer.as_deref())?,
            LogField::Route => m.serialize_entry("route", &route.map(|r| &*r.name))?,
            LogField::Service => m.serialize_entry("service", &service.map(|s| &*s.name))?,
            LogField::Upstream => {
                m.serialize_entry("upstream", &service.map(|s| &*s.upstream.name))?
            }
            LogField::Target => {
                m.serialize_entry("target", &l.target.as_ref().map(|t| &*t.address))?
            }
            LogField::Method => m.serialize_entry("method", l.method.as_str())?,
            LogField::Host => m.serialize_entry("host", &l.host.as_ref().map(text))?,
            LogField::Path => {
                m.serialize_entry("path", l.uri.path_and_query().map_or("/", |p| p.as_str()))?
            }
            LogField::Protocol => m.serialize_entry("protocol", &format!("{:?}", l.version))?,
            LogField::Status => m.serialize_entry("status", &l.status)?,
            LogField::BytesIn => m.serialize_entry("bytes_in", &l.bytes_in)?,
            LogField::BytesOut => m.serialize_entry("bytes_out", &l.bytes_out)?,
            LogField::Duration => m.serialize_entry("duration_ms", &ms(l.duration))?,
            LogField::UpstreamDuration => m.serialize_entry("upstream_ms", &l.upstream.map(ms))?,
            LogField::GatewayDuration => m.serialize_entry(
                "gateway_ms",
                &ms(l.duration.saturating_sub(l.upstream.unwrap_or_default())),
            )?,
            LogField::Retries => m.serialize_entry("retries", &l.retries)?,
            LogField::RejectedBy => m.serialize_entry("rejected_by", &l.rejected_by)?,
            LogField::Degraded => m.serialize_entry("degraded", &l.degraded)?,
            LogField::TraceId => {
                m.serialize_entry("trace_id", &l.trace_id.map(|t| crate::trace::hex(&t)))?
            }
            LogField::UserAgent => {
                m.serialize_entry("user_agent", &l.user_agent.as_ref().map(text))?
            }
        }
    }
    m.end()
}
