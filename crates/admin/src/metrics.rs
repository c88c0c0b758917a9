//! The admin API's Prometheus metrics: a registry owned by the gateway (no global state, so
//! tests each build their own), with the config revision and reload outcomes, plus the data
//! plane's metrics through a collector that reads the serving snapshot at scrape time.

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabels {
    scope: &'static str,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    route: String,
    source: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub revision: Gauge,
    reloads: Family<ReloadLabels, Counter>,
    breaker_state: Family<BreakerLabels, Gauge>,
    fallbacks: Family<FallbackLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gatehouse");
        let revision = Gauge::default();
        registry.register(
            "config_revision",
            "Revision of the config being served",
            revision.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads tried, by result (applied or rejected)",
            reloads.clone(),
        );
        // Both series exist from the start, so alerts on `rejected` have a baseline.
        for result in ["applied", "rejected"] {
            drop(reloads.get_or_create(&ReloadLabels { result }));
        }
        let breaker_state = Family::<BreakerLabels, Gauge>::default();
        registry.register(
            "circuit_breaker_state",
            "Circuit breaker state by scope (route or target) and name: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        let fallbacks = Family::<FallbackLabels, Counter>::default();
        registry.register(
            "fallback_responses",
            "Degraded answers served instead of a failed upstream's, by route and source (cache, static or upstream)",
            fallbacks.clone(),
        );
        Metrics {
            registry,
            revision,
            reloads,
            breaker_state,
            fallbacks,
        }
    }

    /// Brings the fallback counters up to the data plane's counts (read at scrape time; those
    /// only grow, so the difference is what was served since the last scrape).
    pub fn fallbacks(&self, now: &[(String, [u64; 3])]) {
        for (route, counts) in now {
            for (source, n) in ["cache", "static", "upstream"].into_iter().zip(*counts) {
                let c = self.fallbacks.get_or_create(&FallbackLabels {
                    route: route.clone(),
                    source,
                });
                let seen = c.get();
                if n > seen {
                    c.inc_by(n - seen);
                }
            }
        }
    }

    /// Sets the breaker gauges to `now` (read at scrape time; breakers a reload removed go).
    pub fn breakers(&self, now: &[crate::BreakerStatus]) {
        self.breaker_state.clear();
        for b in now {
            let value = match b.state {
                "open" => 1,
                "half_open" => 2,
                _ => 0,
            };
            self.breaker_state
                .get_or_create(&BreakerLabels {
                    scope: b.scope,
                    name: b.name.clone(),
                })
                .set(value);
        }
    }

    pub fn reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// Adds metrics read at scrape time (the data plane's).
    pub fn register_collector(&mut self, c: Box<dyn prometheus_client::collector::Collector>) {
        self.registry.register_collector(c);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, String> {
        let mut out = String::new();
        encode(&mut out, &self.registry).map_err(|e| e.to_string())?;
        Ok(out)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
