//! `/metrics` for the data plane: sums each route's shards at scrape time and encodes them
//! with prometheus-client, keeping the output bounded on nodes with very many routes (only
//! routes with traffic, at most `metrics.max_routes` with series of their own, the rest as
//! `route="_other"`; histograms per service when per-route ones are off).

use super::{Histo, NodeStats, Stats, CLASSES, METHODS};
use crate::snapshot::Snapshot;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Encodes the serving snapshot's statistics at scrape time.
pub struct SnapshotCollector<F>(pub F);

impl<F> std::fmt::Debug for SnapshotCollector<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotCollector")
    }
}

impl<F> prometheus_client::collector::Collector for SnapshotCollector<F>
where
    F: Fn() -> Arc<Snapshot> + Send + Sync + 'static,
{
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = (self.0)();
        encode(&snap, &mut e)
    }
}

pub(super) fn counter(
    m: &mut prometheus_client::encoding::MetricEncoder,
    v: u64,
) -> std::fmt::Result {
    m.encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge(m: &mut prometheus_client::encoding::MetricEncoder, v: i64) -> std::fmt::Result {
    m.encode_gauge(&v)
}

/// A route's say in `/metrics`, decided the first time a scrape finds it has traffic and kept
/// for the life of its statistics (across reloads): its own series while fewer than
/// `metrics.max_routes` routes have them, else its numbers go to `route="_other"`. Sticky, so
/// that no counter ever moves between series (a counter that did would look reset).
pub(super) const UNDECIDED: u8 = 0;
pub(super) const OWN: u8 = 1;
pub(super) const OTHER: u8 = 2;

/// A histogram summed over workers (and routes).
#[derive(Clone, Default)]
pub(super) struct HistoSum {
    sum_ns: u64,
    pub(super) count: u64,
    buckets: Vec<u64>,
}

impl HistoSum {
    fn add_histo(&mut self, h: &Histo) {
        if self.buckets.len() < h.buckets.len() {
            self.buckets.resize(h.buckets.len(), 0);
        }
        for (o, b) in self.buckets.iter_mut().zip(h.buckets.iter()) {
            *o += b.load(Relaxed);
        }
        self.count += h.count.load(Relaxed);
        self.sum_ns += h.sum_ns.load(Relaxed);
    }

    fn add(&mut self, o: &HistoSum) {
        if self.buckets.len() < o.buckets.len() {
            self.buckets.resize(o.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a += b;
        }
        self.count += o.count;
        self.sum_ns += o.sum_ns;
    }

    pub(super) fn encode(&self, bounds: &[f64], m: &mut MetricEncoder) -> std::fmt::Result {
        let buckets: Vec<(f64, u64)> = bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().copied().chain(std::iter::repeat(0)))
            .collect();
        m.encode_histogram::<NoLabelSet>(self.sum_ns as f64 / 1e9, self.count, &buckets, None)
    }
}

/// One series set's numbers: a route's, summed over its workers, or `_other`'s, summed over
/// the routes without series of their own.
#[derive(Clone, Default)]
pub(super) struct Totals {
    pub(super) requests: [[u64; 6]; 8],
    codes: Vec<(u16, u64)>,
    /// Total, upstream, gateway.
    pub(super) histos: [HistoSum; 3],
    /// Bytes in, bytes out, retries, budget exhausted.
    counters: [u64; 4],
    /// gRPC answers by status code.
    grpc: [u64; 17],
}

impl Totals {
    pub(super) fn of(s: &Stats) -> Self {
        let mut t = Totals {
            requests: s.requests(),
            codes: s.codes(),
            grpc: s.grpc_codes(),
            ..Default::default()
        };
        for shard in s.shards() {
            for (o, h) in t
                .histos
                .iter_mut()
                .zip([&shard.total, &shard.upstream, &shard.gateway])
            {
                o.add_histo(h);
            }
            let c = [
                &shard.bytes_in,
                &shard.bytes_out,
                &shard.retries,
                &shard.budget_exhausted,
            ];
            for (o, c) in t.counters.iter_mut().zip(c) {
                *o += c.load(Relaxed);
            }
        }
        t
    }

    fn add(&mut self, o: &Totals) {
        for (a, b) in self.requests.iter_mut().zip(&o.requests) {
            for (a, b) in a.iter_mut().zip(b) {
                *a += b;
            }
        }
        for (code, n) in &o.codes {
            match self.codes.iter_mut().find(|(k, _)| k == code) {
                Some((_, m)) => *m += n,
                None => self.codes.push((*code, *n)),
            }
        }
        self.codes.sort_unstable();
        for (a, b) in self.histos.iter_mut().zip(&o.histos) {
            a.add(b);
        }
        for (a, b) in self.counters.iter_mut().zip(&o.counters) {
            *a += b;
        }
        for (a, b) in self.grpc.iter_mut().zip(&o.grpc) {
            *a += b;
        }
    }
}

/// The series sets of `snap`'s routes: `(route, service, totals)` for each route with series
/// of its own and traffic, then `_other` when some routes go there. Routes without traffic
/// have no series. Decides the say of routes seen for the first time.
fn route_series(snap: &Snapshot) -> (Vec<(&str, &str, Totals)>, Vec<bool>) {
    let t = &snap.telemetry;
    // One scrape decides at a time, so that two cannot both take the last free place.
    let _deciding = t.node.scrape.lock().unwrap_or_else(|e| e.into_inner());
    let mut own = snap
        .routes
        .iter()
        .filter_map(|r| r.stats.as_ref())
        .filter(|s| s.series.load(Relaxed) == OWN)
        .count();
    let mut out = Vec::new();
    let mut other = Totals::default();
    let mut any_other = false;
    // Whether route i counts under `_other` (for its plugin rejections).
    let mut in_other = vec![false; snap.routes.len()];
    for (i, r) in snap.routes.iter().enumerate() {
        let Some(stats) = r.stats.as_deref() else {
            continue;
        };
        if stats.shards().next().is_none() {
            continue;
        }
        let mut say = stats.series.load(Relaxed);
        if say == UNDECIDED {
            say = if own < t.max_routes { OWN } else { OTHER };
            own += usize::from(say == OWN);
            stats.series.store(say, Relaxed);
        }
        let totals = Totals::of(stats);
        if say == OWN {
            let service = snap.services.get(r.service).map_or("", |s| &*s.name);
            out.push((&*r.name, service, totals));
        } else {
            other.add(&totals);
            any_other = true;
            if let Some(f) = in_other.get_mut(i) {
                *f = true;
            }
        }
    }
    if any_other {
        out.push(("_other", "_other", other));
    }
    (out, in_other)
}

/// Every data-plane metric of `snap`, named without the `gatehouse_` prefix: the registry
/// it is registered in adds it.
pub fn encode(snap: &Snapshot, e: &mut DescriptorEncoder) -> std::fmt::Result {
    let t = &snap.telemetry;
    let (series, in_other) = route_series(snap);

    encode_requests(&series, e)?;
    encode_histograms(snap, &series, e)?;

    for (i, (name, help)) in [
        (
            "http_request_bytes",
            "Request body bytes received, by route",
        ),
        ("http_response_bytes", "Response body bytes sent, by route"),
        ("retries", "Upstream attempts after the first, by route"),
        (
            "retry_budget_exhausted",
            "Requests that could not retry because the service's retry budget was spent, by route",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (route, service, s) in &series {
            let labels = [("route", *route), ("service", *service)];
            counter(
                &mut m.encode_family(&labels)?,
                s.counters.get(i).copied().unwrap_or(0),
            )?;
        }
    }

    encode_grpc(&series, e)?;
    encode_rejections(snap, &in_other, e)?;

    if !snap.consumer_stats.is_empty() {
        let mut m = e.encode_descriptor(
            "consumer_requests",
            "Requests by consumer, method class and status class",
            None,
            MetricType::Counter,
        )?;
        for (consumer, s) in snap.consumer_stats.iter() {
            for (mi, row) in s.requests().iter().enumerate() {
                for (ci, n) in row.iter().enumerate() {
                    if *n == 0 {
                        continue;
                    }
                    let labels = [
                        ("consumer", &**consumer),
                        ("method", METHODS.get(mi).copied().unwrap_or("OTHER")),
                        ("class", CLASSES.get(ci).copied().unwrap_or("other")),
                    ];
                    counter(&mut m.encode_family(&labels)?, *n)?;
                }
            }
        }
    }

    super::release::encode_variants(snap, e)?;
    super::release::encode_plugin_metrics(snap, e)?;
    encode_targets(snap, e)?;
    encode_certificates(snap, e)?;
    encode_node(&t.node, e)
}

/// Requests by method and status class, and responses by exact code, per series set.
fn encode_requests(series: &[(&str, &str, Totals)], e: &mut DescriptorEncoder) -> std::fmt::Result {
    let mut m = e.encode_descriptor(
        "http_requests",
        "Requests by route, service, method class and status class",
        None,
        MetricType::Counter,
    )?;
    for (route, service, s) in series {
        for (mi, row) in s.requests.iter().enumerate() {
            for (ci, n) in row.iter().enumerate() {
                if *n == 0 {
                    continue;
                }
                let labels = [
                    ("route", *route),
                    ("service", *service),
                    ("method", METHODS.get(mi).copied().unwrap_or("OTHER")),
                    ("class", CLASSES.get(ci).copied().unwrap_or("other")),
                ];
                counter(&mut m.encode_family(&labels)?, *n)?;
            }
        }
    }

    let mut m = e.encode_descriptor(
        "http_responses",
        "Responses by route, service and exact status code",
        None,
        MetricType::Counter,
    )?;
    for (route, service, s) in series {
        for (code, n) in &s.codes {
            let code = if *code == 0 {
                "other".to_string()
            } else {
                code.to_string()
            };
            let labels = [("route", *route), ("service", *service), ("code", &code)];
            counter(&mut m.encode_family(&labels)?, *n)?;
        }
    }

    Ok(())
}

/// The three latency histograms: per route series set, or, with `metrics.route_histograms`
/// off, per service (summed over its routes, `_other` included): a histogram is most of a
/// route's series.
fn encode_histograms(
    snap: &Snapshot,
    series: &[(&str, &str, Totals)],
    e: &mut DescriptorEncoder,
) -> std::fmt::Result {
    let bounds = &snap.telemetry.bounds_s;
    let by_service = (!snap.telemetry.route_histograms).then(|| {
        let mut m: std::collections::BTreeMap<&str, [HistoSum; 3]> = Default::default();
        for r in &snap.routes {
            let Some(stats) = r.stats.as_deref() else {
                continue;
            };
            if stats.shards().next().is_none() {
                continue;
            }
            let service = snap.services.get(r.service).map_or("", |s| &*s.name);
            let t = Totals::of(stats);
            let sums = m.entry(service).or_default();
            for (a, b) in sums.iter_mut().zip(&t.histos) {
                a.add(b);
            }
        }
        m
    });
    let families = [
        (
            "request_duration_seconds",
            "Time from the request's head to the end of its response, by route",
        ),
        (
            "upstream_duration_seconds",
            "Time the upstream took to send its response head (all attempts), by route",
        ),
        (
            "gateway_duration_seconds",
            "Time the gateway itself added: total minus upstream, by route",
        ),
    ];
    for (i, (name, help)) in families.into_iter().enumerate() {
        let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
        match &by_service {
            Some(services) => {
                for (service, sums) in services {
                    let Some(h) = sums.get(i).filter(|h| h.count > 0) else {
                        continue;
                    };
                    h.encode(bounds, &mut m.encode_family(&[("service", *service)])?)?;
                }
            }
            None => {
                for (route, service, s) in series {
                    let Some(h) = s.histos.get(i).filter(|h| h.count > 0) else {
                        continue;
                    };
                    let labels = [("route", *route), ("service", *service)];
                    h.encode(bounds, &mut m.encode_family(&labels)?)?;
                }
            }
        }
    }
    Ok(())
}

/// Plugin rejections by route (those under `_other` summed there), plugin, instance and key.
fn encode_rejections(
    snap: &Snapshot,
    in_other: &[bool],
    e: &mut DescriptorEncoder,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(
        "plugin_rejections",
        "Requests a plugin answered itself (limits, shedding, auth), by route, plugin and key class",
        None,
        MetricType::Counter,
    )?;
    let mut other: std::collections::BTreeMap<(&str, &str, &str), u64> = Default::default();
    for (i, r) in snap.routes.iter().enumerate() {
        let pooled = in_other.get(i).copied().unwrap_or(false);
        for j in r.rejections.iter() {
            let n = j.count.load(Relaxed);
            if pooled {
                *other.entry((j.plugin, &*j.instance, &*j.key)).or_default() += n;
                continue;
            }
            // A route that never rejected has nothing to say: 100 000 routes under one
            // global limit would otherwise be 100 000 zero series.
            if n == 0 {
                continue;
            }
            let labels = [
                ("route", &*r.name),
                ("plugin", j.plugin),
                ("instance", &*j.instance),
                ("key", &*j.key),
            ];
            counter(&mut m.encode_family(&labels)?, n)?;
        }
    }
    for ((plugin, instance, key), n) in other {
        let labels = [
            ("route", "_other"),
            ("plugin", plugin),
            ("instance", instance),
            ("key", key),
        ];
        counter(&mut m.encode_family(&labels)?, n)?;
    }
    Ok(())
}

fn encode_targets(snap: &Snapshot, e: &mut DescriptorEncoder) -> std::fmt::Result {
    let mut ups: Vec<_> = snap.upstreams.values().collect();
    ups.sort_by(|a, b| a.name.cmp(&b.name));
    let now = crate::health::now_ns();
    type Read = fn(&crate::upstream::TargetState, u64) -> i64;
    let gauges: [(&str, &str, Read); 3] = [
        (
            "upstream_connections",
            "Upstream connections open now (busy or idle), by upstream and target",
            |t, _| t.open_connections() as i64,
        ),
        (
            "upstream_requests_in_flight",
            "Requests waiting on a target now",
            |t, _| t.active.load(Relaxed) as i64,
        ),
        (
            "upstream_target_healthy",
            "1 when health checks let the target take requests, 0 when it is out",
            |t, now| t.health.available(now) as i64,
        ),
    ];
    for (name, help, read) in gauges {
        let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for u in &ups {
            for t in &u.targets().targets {
                let labels = [("upstream", &*u.name), ("target", &*t.address)];
                gauge(&mut m.encode_family(&labels)?, read(t, now))?;
            }
        }
    }
    type Count = fn(&crate::upstream::TargetState) -> u64;
    let counters: [(&str, &str, Count); 2] = [
        (
            "upstream_pool_hits",
            "Requests that reused a pooled upstream connection",
            |t| t.pool_hits(),
        ),
        (
            "upstream_pool_misses",
            "Upstream connections opened (a request found no idle one)",
            |t| t.connects.load(Relaxed),
        ),
    ];
    for (name, help, read) in counters {
        let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
        for u in &ups {
            for t in &u.targets().targets {
                let labels = [("upstream", &*u.name), ("target", &*t.address)];
                counter(&mut m.encode_family(&labels)?, read(t))?;
            }
        }
    }
    Ok(())
}

fn encode_node(n: &NodeStats, e: &mut DescriptorEncoder) -> std::fmt::Result {
    let mut m = e.encode_descriptor(
        "downstream_connections",
        "Client connections open now",
        None,
        MetricType::Gauge,
    )?;
    gauge(&mut m, n.downstream_connections.load(Relaxed))?;
    let counters: [(&str, &str, &AtomicU64); 10] = [
        (
            "http_unrouted",
            "Requests no route matched (answered 404)",
            &n.unrouted,
        ),
        (
            "downstream_connections_accepted",
            "Client connections accepted",
            &n.downstream_accepted,
        ),
        (
            "access_log_lines",
            "Access log lines written",
            &n.access_log_written,
        ),
        (
            "access_log_dropped",
            "Access log lines dropped because the writer's buffer was full",
            &n.access_log_dropped,
        ),
        (
            "access_log_errors",
            "Access log writes or rotations that failed",
            &n.access_log_errors,
        ),
        (
            "trace_spans_exported",
            "Spans the OTLP collector accepted",
            &n.spans_exported,
        ),
        (
            "trace_spans_dropped",
            "Spans dropped: buffer full, or the collector refused or could not be reached",
            &n.spans_dropped,
        ),
        (
            "trace_export_failures",
            "OTLP export requests that failed",
            &n.span_export_failures,
        ),
        (
            "decision_traces",
            "Requests answered with a decision trace (valid debug token)",
            &n.decision_traces,
        ),
        (
            "decision_traces_refused",
            "Requests that asked for a decision trace with a missing, wrong or expired token",
            &n.decision_trace_refused,
        ),
    ];
    for (name, help, c) in counters {
        let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
        counter(&mut m, c.load(Relaxed))?;
    }
    let mut m = e.encode_descriptor(
        "tls_handshakes",
        "TLS handshakes completed on TLS listeners",
        None,
        MetricType::Counter,
    )?;
    counter(&mut m, n.tls_handshakes.load(Relaxed))?;
    let mut m = e.encode_descriptor(
        "tls_handshake_failures",
        "TLS handshakes that failed, by reason",
        None,
        MetricType::Counter,
    )?;
    for (reason, c) in super::TLS_FAILURE_REASONS
        .iter()
        .zip(&n.tls_handshake_failures)
    {
        counter(
            &mut m.encode_family(&[("reason", *reason)])?,
            c.load(Relaxed),
        )?;
    }
    Ok(())
}

/// gRPC answers by route and `grpc-status`, for the codes that occurred.
fn encode_grpc(series: &[(&str, &str, Totals)], e: &mut DescriptorEncoder) -> std::fmt::Result {
    let mut m = e.encode_descriptor(
        "grpc_responses",
        "gRPC calls answered, by route, service and grpc-status code",
        None,
        MetricType::Counter,
    )?;
    let mut code = itoa::Buffer::new();
    for (route, service, t) in series {
        for (c, n) in t.grpc.iter().enumerate() {
            if *n > 0 {
                let labels = [
                    ("route", *route),
                    ("service", *service),
                    ("grpc_status", code.format(c)),
                ];
                counter(&mut m.encode_family(&labels)?, *n)?;
            }
        }
    }
    Ok(())
}

/// When each certificate expires, as Prometheus alert rules want it (Unix seconds).
fn encode_certificates(snap: &Snapshot, e: &mut DescriptorEncoder) -> std::fmt::Result {
    let infos = &snap.certificates.infos;
    let mut m = e.encode_descriptor(
        "certificate_expiry_timestamp_seconds",
        "When the certificate stops being valid (not_after), in Unix seconds",
        None,
        MetricType::Gauge,
    )?;
    for c in infos {
        gauge(
            &mut m.encode_family(&[("name", c.name.as_str())])?,
            c.not_after,
        )?;
    }
    Ok(())
}

/// A route's request count, total-latency buckets and bytes out, as a scrape sums them.
#[cfg(test)]
pub(super) fn totals_for_test(s: &Stats) -> (u64, Vec<u64>, u64) {
    let t = Totals::of(s);
    (
        t.histos[0].count,
        t.histos[0].buckets.clone(),
        t.counters[1],
    )
}
