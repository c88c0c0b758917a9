//! `/metrics` for releases: each route's requests and latency by release variant (so a
//! canary's error rate and latency sit next to the baseline's), and the counters plugin
//! instances export (mirror copies sent, dropped, diffs).

use super::scrape::{counter, Totals};
use super::{CLASSES, METHODS};
use crate::snapshot::Snapshot;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

/// `variant_requests_total{route, variant, method, class}` and
/// `variant_request_duration_seconds{route, variant}`, for variants with traffic (the
/// families always, so dashboards and alerts find them).
pub(super) fn encode_variants(snap: &Snapshot, e: &mut DescriptorEncoder) -> std::fmt::Result {
    let mut series = Vec::new();
    for r in &snap.routes {
        for (name, stats) in r.variants.iter() {
            if stats.shards().next().is_some() {
                series.push((&*r.name, &**name, Totals::of(stats)));
            }
        }
    }
    let mut m = e.encode_descriptor(
        "variant_requests",
        "Requests by route, release variant, method class and status class",
        None,
        MetricType::Counter,
    )?;
    for (route, variant, t) in &series {
        for (mi, row) in t.requests.iter().enumerate() {
            for (ci, n) in row.iter().enumerate() {
                if *n == 0 {
                    continue;
                }
                let labels = [
                    ("route", *route),
                    ("variant", *variant),
                    ("method", METHODS.get(mi).copied().unwrap_or("OTHER")),
                    ("class", CLASSES.get(ci).copied().unwrap_or("other")),
                ];
                counter(&mut m.encode_family(&labels)?, *n)?;
            }
        }
    }
    let mut m = e.encode_descriptor(
        "variant_request_duration_seconds",
        "Time from the request's head to the end of its response, by route and release variant",
        None,
        MetricType::Histogram,
    )?;
    for (route, variant, t) in &series {
        if let Some(h) = t.histos.first().filter(|h| h.count > 0) {
            let labels = [("route", *route), ("variant", *variant)];
            h.encode(&snap.telemetry.bounds_s, &mut m.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// Every plugin instance's own counters, `<name>_total{plugin, scope, ...}`, grouped by name.
pub(super) fn encode_plugin_metrics(
    snap: &Snapshot,
    e: &mut DescriptorEncoder,
) -> std::fmt::Result {
    let mut all: Vec<(&str, &str, gatehouse_plugin_api::PluginMetric)> = Vec::new();
    for (kind, scope, plugin) in snap.plugins.iter() {
        for m in plugin.metrics() {
            all.push((kind, scope, m));
        }
    }
    all.sort_by(|a, b| a.2.name.cmp(b.2.name));
    let mut i = 0;
    while let Some((_, _, first)) = all.get(i) {
        let name = first.name;
        let mut m = e.encode_descriptor(name, first.help, None, MetricType::Counter)?;
        while let Some((kind, scope, pm)) = all.get(i).filter(|(_, _, pm)| pm.name == name) {
            let mut labels: Vec<(&str, &str)> = vec![("plugin", *kind), ("scope", *scope)];
            labels.extend(pm.labels.iter().map(|(k, v)| (*k, v.as_str())));
            counter(&mut m.encode_family(&labels)?, pm.value)?;
            i += 1;
        }
    }
    Ok(())
}
