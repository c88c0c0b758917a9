//! `/metrics` for discovery: per upstream and source, whether it answers, how many targets
//! it gives, and how many answers and failures there were.

use super::State;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::sync::Arc;

/// A metric: its name, its help, and its value for one source.
type Series<T> = (&'static str, &'static str, fn(&super::SourceStatus) -> T);

/// Encodes the discovery state at scrape time.
#[derive(Debug)]
pub struct Collector(pub Arc<State>);

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = self.0.status();
        if all.is_empty() {
            return Ok(());
        }
        let gauges: [Series<i64>; 2] = [
            (
                "discovery_up",
                "1 when the source answered its last query or watch, 0 while it is unreachable (its last known targets keep serving)",
                |s| i64::from(s.up),
            ),
            (
                "discovery_targets",
                "Targets in use from each discovery source",
                |s| s.targets as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for s in &all {
                let labels = [("upstream", s.upstream.as_str()), ("source", s.source)];
                m.encode_family(&labels)?.encode_gauge(&value(s))?;
            }
        }
        let counters: [Series<u64>; 2] = [
            (
                "discovery_updates",
                "Answers that changed an upstream's targets",
                |s| s.updates,
            ),
            (
                "discovery_failures",
                "Queries or watches that failed",
                |s| s.failures,
            ),
        ];
        for (name, help, value) in counters {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in &all {
                let labels = [("upstream", s.upstream.as_str()), ("source", s.source)];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&value(s), None)?;
            }
        }
        Ok(())
    }
}
