//! Data-plane statistics: per-route (and opt-in per-consumer) request counts, latency
//! histograms, bytes and retries, kept as plain atomics in one cache-line-aligned shard per
//! worker, resolved when the snapshot is built and read only when `/metrics` is scraped.
//!
//! Why not prometheus-client's own `Family`/`Histogram` on the request path: a family lookup
//! hashes the label set under a lock, and its histogram takes a lock per observation. Here a
//! request finds its route's counters by index, and each worker writes only its own shard, so
//! the hot path shares no cache line between workers. prometheus-client still does the text
//! encoding, through a [`Collector`] that sums the shards at scrape time.

use crate::upstream::worker;
use std::sync::atomic::{AtomicI64, AtomicU16, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

mod release;
mod scrape;
pub use scrape::{encode, SnapshotCollector};

/// Method classes: the common methods by name, everything else as `OTHER` (bounded labels).
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];

pub fn method_class(m: &http::Method) -> u8 {
    match *m {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

fn class_of(status: u16) -> usize {
    match status / 100 {
        c @ 1..=5 => c as usize - 1,
        _ => 5,
    }
}

/// Distinct status codes a shard counts by code; a route answering with more than this many
/// different codes counts the rest under `code="other"` (its class is still exact).
const CODE_SLOTS: usize = 16;

/// Adds `n` to a counter only this shard's worker writes: a load and a store, no locked
/// read-modify-write. The admin thread only reads.
#[inline]
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Relaxed).wrapping_add(n), Relaxed);
}

/// A latency histogram: one counter per bucket (the last is +Inf), count and sum in ns.
pub struct Histo {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histo {
    fn new(bounds: usize) -> Self {
        Self {
            buckets: (0..=bounds).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    #[inline]
    fn observe(&self, bounds: &[u64], ns: u64) {
        let i = bounds.partition_point(|b| *b < ns);
        if let Some(b) = self.buckets.get(i) {
            bump(b, 1);
        }
        bump(&self.count, 1);
        bump(&self.sum_ns, ns);
    }
}

/// One worker's counters for one route.
#[repr(align(128))]
pub struct Shard {
    requests: [[AtomicU64; 6]; 8],
    code_keys: [AtomicU16; CODE_SLOTS],
    codes: [AtomicU64; CODE_SLOTS],
    other_codes: AtomicU64,
    total: Histo,
    upstream: Histo,
    gateway: Histo,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
    /// gRPC answers by `grpc-status` (0-16; anything else counts as 2, UNKNOWN).
    grpc: [AtomicU64; 17],
}

impl Shard {
    fn new(bounds: usize) -> Self {
        Self {
            requests: Default::default(),
            code_keys: Default::default(),
            codes: Default::default(),
            other_codes: AtomicU64::new(0),
            total: Histo::new(bounds),
            upstream: Histo::new(bounds),
            gateway: Histo::new(bounds),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            budget_exhausted: AtomicU64::new(0),
            grpc: Default::default(),
        }
    }

    #[inline]
    fn count_code(&self, status: u16) {
        for (k, c) in self.code_keys.iter().zip(&self.codes) {
            let key = k.load(Relaxed);
            if key == status {
                bump(c, 1);
                return;
            }
            if key == 0 {
                // Single writer: claiming a free slot needs no compare-and-swap. The count is
                // written before the key, so a scrape never sees a key with a stale count.
                c.store(1, Relaxed);
                k.store(status, std::sync::atomic::Ordering::Release);
                return;
            }
        }
        bump(&self.other_codes, 1);
    }
}

/// What one finished request adds to its route's statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Finished {
    pub method: u8,
    pub status: u16,
    pub total_ns: u64,
    /// Time to the upstream's response head, over all attempts; None when no upstream answered.
    pub upstream_ns: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub retries: u32,
    pub budget_exhausted: bool,
    /// The gRPC status of a gRPC call's answer.
    pub grpc_status: Option<u8>,
}

/// A route's (or consumer's) shards, one per worker, each made on its worker's first request.
pub struct Stats {
    shards: Box<[OnceLock<Box<Shard>>]>,
    bounds: usize,
    /// Whether the route has series of its own in `/metrics` (see [`scrape`]); decided by
    /// the first scrape that sees it used, kept with the statistics across reloads.
    series: AtomicU8,
}

impl Stats {
    pub fn new(workers: usize, bounds: usize) -> Self {
        Self {
            shards: (0..workers.max(1)).map(|_| OnceLock::new()).collect(),
            bounds,
            series: AtomicU8::new(scrape::UNDECIDED),
        }
    }

    #[inline]
    fn shard(&self) -> Option<&Shard> {
        let n = self.shards.len();
        let cell = self.shards.get(worker() % n.max(1))?;
        Some(cell.get_or_init(|| Box::new(Shard::new(self.bounds))))
    }

    /// Records a finished request; `bounds` are the histogram bounds in ns (the snapshot's).
    #[inline]
    pub fn record(&self, bounds: &[u64], f: &Finished) {
        let Some(s) = self.shard() else { return };
        if let Some(row) = s.requests.get(f.method as usize) {
            if let Some(c) = row.get(class_of(f.status)) {
                bump(c, 1);
            }
        }
        s.count_code(f.status);
        s.total.observe(bounds, f.total_ns);
        if let Some(up) = f.upstream_ns {
            s.upstream.observe(bounds, up);
            s.gateway.observe(bounds, f.total_ns.saturating_sub(up));
        } else {
            s.gateway.observe(bounds, f.total_ns);
        }
        if f.bytes_in > 0 {
            bump(&s.bytes_in, f.bytes_in);
        }
        bump(&s.bytes_out, f.bytes_out);
        if f.retries > 0 {
            bump(&s.retries, f.retries as u64);
        }
        if f.budget_exhausted {
            bump(&s.budget_exhausted, 1);
        }
        if let Some(code) = f.grpc_status {
            let i = if code <= 16 { code as usize } else { 2 };
            if let Some(c) = s.grpc.get(i) {
                bump(c, 1);
            }
        }
    }

    /// gRPC answers by status code, over all workers.
    pub(crate) fn grpc_codes(&self) -> [u64; 17] {
        let mut out = [0u64; 17];
        for s in self.shards() {
            for (o, c) in out.iter_mut().zip(&s.grpc) {
                *o += c.load(Relaxed);
            }
        }
        out
    }

    /// Requests by status class only (consumers' statistics).
    #[inline]
    pub fn record_class(&self, method: u8, status: u16) {
        let Some(s) = self.shard() else { return };
        if let Some(c) = s
            .requests
            .get(method as usize)
            .and_then(|r| r.get(class_of(status)))
        {
            bump(c, 1);
        }
    }

    fn shards(&self) -> impl Iterator<Item = &Shard> {
        self.shards.iter().filter_map(|s| s.get().map(|b| &**b))
    }

    fn requests(&self) -> [[u64; 6]; 8] {
        let mut out = [[0u64; 6]; 8];
        for s in self.shards() {
            for (o, r) in out.iter_mut().zip(&s.requests) {
                for (o, c) in o.iter_mut().zip(r) {
                    *o += c.load(Relaxed);
                }
            }
        }
        out
    }

    fn codes(&self) -> Vec<(u16, u64)> {
        let mut out: Vec<(u16, u64)> = Vec::new();
        for s in self.shards() {
            for (k, c) in s.code_keys.iter().zip(&s.codes) {
                let key = k.load(std::sync::atomic::Ordering::Acquire);
                if key == 0 {
                    break;
                }
                let n = c.load(Relaxed);
                match out.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, m)) => *m += n,
                    None => out.push((key, n)),
                }
            }
            let other = s.other_codes.load(Relaxed);
            if other > 0 {
                match out.iter_mut().find(|(k, _)| *k == 0) {
                    Some((_, m)) => *m += other,
                    None => out.push((0, other)),
                }
            }
        }
        out.sort_unstable();
        out
    }
}

/// Why TLS handshakes fail, as `crate::tls::failure_reason` names it (plus `timeout`).
pub const TLS_FAILURE_REASONS: [&str; 11] = [
    "no_certificate",
    "protocol_version",
    "no_shared_cipher",
    "incompatible",
    "client_certificate",
    "alert_received",
    "bad_message",
    "timeout",
    "closed",
    "io",
    "other",
];

impl NodeStats {
    /// Records what the listeners serve now (after a reload, or ACME).
    pub fn set_certificates(&self, index: &crate::tls::CertIndex) {
        if let Ok(mut c) = self.served_certificates.lock() {
            *c = index
                .infos
                .iter()
                .map(|i| (i.name.clone(), i.not_after))
                .collect();
        }
    }

    /// Counts a failed TLS handshake under `reason` (one of [`TLS_FAILURE_REASONS`]).
    pub fn tls_failed(&self, reason: &str) {
        let i = TLS_FAILURE_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(TLS_FAILURE_REASONS.len() - 1);
        if let Some(c) = self.tls_handshake_failures.get(i) {
            c.fetch_add(1, Relaxed);
        }
    }
}

/// Node-wide counters that belong to no route.
#[derive(Default)]
pub struct NodeStats {
    /// Client connections open now.
    pub downstream_connections: AtomicI64,
    /// Client connections accepted since start.
    pub downstream_accepted: AtomicU64,
    pub access_log_written: AtomicU64,
    pub access_log_dropped: AtomicU64,
    pub access_log_errors: AtomicU64,
    pub spans_exported: AtomicU64,
    pub spans_dropped: AtomicU64,
    pub span_export_failures: AtomicU64,
    pub decision_traces: AtomicU64,
    pub decision_trace_refused: AtomicU64,
    /// Requests no route matched (answered 404).
    pub unrouted: AtomicU64,
    /// TLS handshakes completed on TLS listeners.
    pub tls_handshakes: AtomicU64,
    /// The certificates served now (configured and ACME): name and not-after (Unix seconds).
    pub served_certificates: std::sync::Mutex<Vec<(String, i64)>>,
    /// TLS handshakes that failed, by [`TLS_FAILURE_REASONS`].
    pub tls_handshake_failures: [AtomicU64; TLS_FAILURE_REASONS.len()],
    /// Held by the scrape that decides which routes get series of their own.
    scrape: std::sync::Mutex<()>,
}

/// Where a route's plugin rejections are counted: one per plugin kind in its chain, kept
/// across reloads by route and kind.
pub struct Rejections {
    pub plugin: &'static str,
    /// The scope of the instance that runs for callers without a consumer-scoped one
    /// (`global`, `route=api`...).
    pub instance: Box<str>,
    /// What the instance limits by (its key class), as the plugin describes it.
    pub key: Box<str>,
    pub count: Arc<AtomicU64>,
}

/// Compiled observability settings of a snapshot, and what outlives reloads.
pub struct Telemetry {
    pub node: Arc<NodeStats>,
    /// Histogram bounds, in ns for recording and in s for encoding.
    pub bounds_ns: Box<[u64]>,
    pub bounds_s: Box<[f64]>,
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    pub tracer: Option<Arc<crate::trace::Tracer>>,
    /// Latency histograms per route (else per service).
    pub route_histograms: bool,
    /// Routes with series of their own in `/metrics`; the rest are `route="_other"`.
    pub max_routes: usize,
}

/// Sends a flush request down a writer thread's queue (made by `wrap` around the
/// acknowledgement channel) and waits up to `timeout` for it to be acknowledged, i.e. for
/// everything queued before it to be written. Blocks while the queue is full: the writer
/// drains it within one period.
pub(crate) fn flush_queue<M>(
    tx: &std::sync::mpsc::SyncSender<M>,
    wrap: impl FnOnce(std::sync::mpsc::SyncSender<()>) -> M,
    timeout: std::time::Duration,
) -> bool {
    let (ack, done) = std::sync::mpsc::sync_channel(1);
    if tx.send(wrap(ack)).is_err() {
        return false;
    }
    done.recv_timeout(timeout).is_ok()
}

impl Telemetry {
    /// Writes out the access log and exports queued spans, each within `timeout`: the last
    /// thing a stopping gateway does, so the last requests are not lost with the process.
    pub fn flush(&self, timeout: std::time::Duration) {
        if let Some(log) = &self.access_log {
            if !log.flush(timeout) {
                tracing::warn!(?timeout, "access log not flushed in time");
            }
        }
        if let Some(t) = &self.tracer {
            if !t.flush(timeout) {
                tracing::warn!(?timeout, "spans not exported in time");
            }
        }
    }

    /// Compiles `o`, keeping the previous snapshot's counters, and its access log writer and
    /// exporter while their settings stay. A file that cannot be opened is a config error.
    pub fn new(
        o: &gatehouse_model::Observability,
        previous: Option<&Telemetry>,
        errs: &mut Vec<gatehouse_model::ConfigError>,
        resources: crate::snapshot::Resources,
    ) -> Self {
        use crate::snapshot::Resources;
        let node: Arc<NodeStats> = previous.map_or_else(Arc::default, |p| p.node.clone());
        let access_log = o.access_log.as_ref().and_then(|s| {
            let kept = previous
                .and_then(|p| p.access_log.as_ref())
                .filter(|l| l.settings == *s);
            match kept {
                Some(l) => Some(l.clone()),
                None if resources == Resources::Check => {
                    if let Err(e) = crate::access_log::AccessLog::check(s) {
                        errs.push(gatehouse_model::ConfigError::new(
                            "observability.access_log.path",
                            e,
                        ));
                    }
                    None
                }
                None => crate::access_log::AccessLog::open(s, node.clone())
                    .map_err(|e| {
                        errs.push(gatehouse_model::ConfigError::new(
                            "observability.access_log.path",
                            e,
                        ))
                    })
                    .ok(),
            }
        });
        let tracer = o.tracing.as_ref().and_then(|s| {
            let kept = previous
                .and_then(|p| p.tracer.as_ref())
                .filter(|t| t.settings == *s);
            match kept {
                Some(t) => Some(t.clone()),
                None if resources == Resources::Check => {
                    if let Err(e) = crate::trace::Tracer::check(s) {
                        errs.push(gatehouse_model::ConfigError::new(
                            "observability.tracing",
                            e,
                        ));
                    }
                    None
                }
                None => crate::trace::Tracer::start(s, node.clone())
                    .map_err(|e| {
                        errs.push(gatehouse_model::ConfigError::new(
                            "observability.tracing",
                            e,
                        ))
                    })
                    .ok(),
            }
        });
        let buckets = &o.metrics.buckets;
        Self {
            node,
            bounds_ns: buckets.iter().map(|b| (b * 1e9) as u64).collect(),
            bounds_s: buckets.as_slice().into(),
            access_log,
            tracer,
            route_histograms: o.metrics.route_histograms,
            max_routes: o.metrics.max_routes as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_sum_and_histograms_bucket_by_upper_bound() {
        let s = Stats::new(2, 3);
        let bounds = [1_000, 10_000, 100_000];
        let mut f = Finished {
            method: 0,
            status: 200,
            total_ns: 1_000,
            upstream_ns: Some(400),
            bytes_out: 10,
            ..Default::default()
        };
        s.record(&bounds, &f);
        f.total_ns = 50_000;
        f.status = 503;
        s.record(&bounds, &f);
        f.total_ns = 10_000_000;
        f.status = 404;
        f.method = 2;
        s.record(&bounds, &f);
        let r = s.requests();
        assert_eq!(r[0][1], 1);
        assert_eq!(r[0][4], 1);
        assert_eq!(r[2][3], 1);
        assert_eq!(s.codes(), vec![(200, 1), (404, 1), (503, 1)]);
        let (count, buckets, bytes_out) = scrape::totals_for_test(&s);
        assert_eq!(count, 3);
        // 1 µs lands in `le=1e-6` (upper bound inclusive), 50 µs in 1e-4, 10 ms in +Inf.
        assert_eq!(buckets, vec![1, 0, 1, 1]);
        assert_eq!(bytes_out, 30);
    }

    #[test]
    fn codes_past_the_slots_count_as_other() {
        let s = Stats::new(1, 1);
        for code in 100..(100 + CODE_SLOTS as u16 + 3) {
            s.record(
                &[1],
                &Finished {
                    status: code,
                    ..Default::default()
                },
            );
        }
        let codes = s.codes();
        assert_eq!(codes.len(), CODE_SLOTS + 1);
        assert_eq!(codes.first(), Some(&(0, 3)));
    }
}
