//! Escalation into a ban: strikes (a WAF block, a rate-limit rejection, an ignored CC
//! challenge) counted per client in a window; at `after` strikes within `within`, the client
//! is banned `for` a while through the node's ban list (shared by Redis when attached).

use dashmap::DashMap;
use gatehouse_plugin_api::bans::{bans, now_ms, Subject};
use schemars::JsonSchema;
use serde::Deserialize;
use std::time::Duration;

/// `ban: {after: 5, within: 1m, for: 10m}`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BanAfter {
    /// Strikes that make a ban.
    pub after: u32,
    /// The window they are counted in.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub within: Duration,
    /// How long the ban lasts.
    #[serde(rename = "for", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub duration: Duration,
}

impl BanAfter {
    pub fn check(&self, field: &str, errs: &mut Vec<gatehouse_plugin_api::FieldError>) {
        use gatehouse_plugin_api::FieldError;
        if self.after == 0 {
            errs.push(FieldError::new(format!("{field}.after"), "must be > 0"));
        }
        if self.within.is_zero() {
            errs.push(FieldError::new(format!("{field}.within"), "must be > 0"));
        }
        if self.duration.is_zero() {
            errs.push(FieldError::new(format!("{field}.for"), "must be > 0"));
        }
    }
}

/// Entries beyond which old windows are swept out, so that a flood of distinct clients
/// cannot grow the map without bound.
const SWEEP_AT: usize = 100_000;

pub struct Strikes {
    cfg: BanAfter,
    source: &'static str,
    /// Subject → (strikes, window start in Unix ms).
    counts: DashMap<Subject, (u32, u64), foldhash::fast::RandomState>,
}

impl Strikes {
    /// The strikes of a plugin's `ban:` setting, checked (problems under `ban.`).
    pub fn of(
        cfg: &Option<BanAfter>,
        source: &'static str,
        errs: &mut Vec<gatehouse_plugin_api::FieldError>,
    ) -> Option<Strikes> {
        let cfg = cfg.as_ref()?;
        cfg.check("ban", errs);
        Some(Strikes::new(cfg.clone(), source))
    }

    pub fn new(cfg: BanAfter, source: &'static str) -> Strikes {
        Strikes {
            cfg,
            source,
            counts: DashMap::default(),
        }
    }

    /// Counts a strike against `who`; bans it when that makes `after`. Whether it did.
    pub fn strike(&self, who: Subject, why: &str) -> bool {
        let now = now_ms();
        let within = self.cfg.within.as_millis() as u64;
        if self.counts.len() > SWEEP_AT {
            self.counts
                .retain(|_, (_, start)| now.saturating_sub(*start) < within);
        }
        let reached = {
            let mut e = self.counts.entry(who.clone()).or_insert((0, now));
            if now.saturating_sub(e.1) >= within {
                *e = (0, now);
            }
            e.0 += 1;
            e.0 >= self.cfg.after
        };
        if reached {
            self.counts.remove(&who);
            let reason = format!(
                "{why}: {} times within {:?}",
                self.cfg.after, self.cfg.within
            );
            bans().add(&who, self.cfg.duration, &reason, self.source);
            tracing::warn!(subject = %who, source = self.source, %reason, "banned");
        }
        reached
    }
}
