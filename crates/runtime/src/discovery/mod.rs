//! Service discovery's state: what each source (DNS, etcd, self-registration) last found for
//! each upstream, whether it is reachable, and the merged targets that go into the
//! upstream's swappable target set. The watchers (`dns`, `etcd`) only report; the node's
//! discovery task applies their reports here and to the serving snapshot.

pub mod dns;
pub mod etcd;
mod metrics;
pub mod names;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a target came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The upstream's static `targets`.
    Config,
    Dns,
    Etcd,
    /// Registered through the admin API with a TTL.
    Registered,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Dns => "dns",
            Origin::Etcd => "etcd",
            Origin::Registered => "registered",
        }
    }
}

/// One target as a source found it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Found {
    pub address: String,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form data the registry holds for the target (etcd's `metadata`), shown by the
    /// admin API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Where it came from (also: the etcd key, the DNS name), for the admin API and explain.
    pub origin: Origin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// What a watcher reports: a whole new list of targets for one source of one upstream, or
/// why it could not get one.
#[derive(Debug)]
pub struct Report {
    pub upstream: Box<str>,
    pub origin: Origin,
    pub outcome: Result<Vec<Found>, String>,
    /// Problems that did not stop the answer (a malformed etcd value, skipped).
    pub skipped: Vec<String>,
}

/// One source of one upstream, as `/status` and `/metrics` show it.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub upstream: String,
    pub source: &'static str,
    /// Whether the last attempt reached the source.
    pub up: bool,
    /// Targets in use from this source (the last known ones while it is down).
    pub targets: usize,
    /// Why the source is down, or why its last answer was not applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix seconds of the last change of `up`.
    pub since: u64,
    /// Answers applied, and failed attempts, since start.
    pub updates: u64,
    pub failures: u64,
}

#[derive(Debug, Clone)]
struct Source {
    targets: Vec<Found>,
    up: bool,
    error: Option<String>,
    since: u64,
    updates: u64,
    failures: u64,
}

/// A self-registered target and when it goes unless heartbeated (unix milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub upstream: String,
    pub target: Found,
    pub expires_ms: u64,
}

/// Every upstream's discovered and registered targets, on this node.
#[derive(Debug, Default)]
pub struct State {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    sources: HashMap<(Box<str>, Origin), Source>,
    registered: HashMap<Box<str>, BTreeMap<String, Registration>>,
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn now_s() -> u64 {
    unix_ms(SystemTime::now()) / 1000
}

/// Whether a report changed anything, so the upstream must be rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Changed,
    Unchanged,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind: still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a watcher's report. An empty answer is kept out unless `allow_empty`; a
    /// failure keeps the last known targets and marks the source down.
    pub fn apply(&self, report: Report, allow_empty: bool) -> Applied {
        let key = (report.upstream.clone(), report.origin);
        let mut inner = self.lock();
        let source = inner.sources.entry(key).or_insert_with(|| Source {
            targets: Vec::new(),
            up: false,
            error: None,
            since: now_s(),
            updates: 0,
            failures: 0,
        });
        let was_up = source.up;
        match report.outcome {
            Ok(targets) if targets.is_empty() && !allow_empty && !source.targets.is_empty() => {
                tracing::warn!(upstream = %report.upstream, source = report.origin.as_str(),
                    kept = source.targets.len(),
                    "discovery answered no targets; keeping the last known (allow_empty is off)");
                source.up = true;
                source.error = Some("answered no targets; the last known are kept".into());
                if !was_up {
                    source.since = now_s();
                }
                Applied::Unchanged
            }
            Ok(mut targets) => {
                targets.sort_by(|a, b| a.address.cmp(&b.address));
                targets.dedup_by(|a, b| a.address == b.address);
                source.up = true;
                source.error = report.skipped.first().cloned();
                if !was_up {
                    source.since = now_s();
                    tracing::info!(upstream = %report.upstream, source = report.origin.as_str(),
                        targets = targets.len(), "discovery source answers");
                }
                if source.targets == targets {
                    return Applied::Unchanged;
                }
                source.updates += 1;
                source.targets = targets;
                Applied::Changed
            }
            Err(e) => {
                source.failures += 1;
                if was_up || source.error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(upstream = %report.upstream, source = report.origin.as_str(),
                        error = %e, kept = source.targets.len(),
                        "discovery source unreachable; the last known targets keep serving");
                }
                if was_up {
                    source.since = now_s();
                }
                source.up = false;
                source.error = Some(e);
                Applied::Unchanged
            }
        }
    }

    /// Seeds a source with targets known before (from disk), marked down until its watcher
    /// answers.
    pub fn seed(&self, upstream: &str, origin: Origin, targets: Vec<Found>) {
        let mut inner = self.lock();
        inner
            .sources
            .entry((upstream.into(), origin))
            .or_insert_with(|| Source {
                targets,
                up: false,
                error: Some("not answered yet; serving the targets known before restart".into()),
                since: now_s(),
                updates: 0,
                failures: 0,
            });
    }

    /// Forgets the sources no longer configured (`keep` says which stay).
    pub fn retain(&self, keep: impl Fn(&str, Origin) -> bool) -> Vec<Box<str>> {
        let mut inner = self.lock();
        let mut gone = Vec::new();
        inner.sources.retain(|(u, o), _| {
            let k = keep(u, *o);
            if !k {
                gone.push(u.clone());
            }
            k
        });
        gone
    }

    /// Registers (or heartbeats) a target of `upstream` until `expires_ms`.
    pub fn register(&self, r: Registration) {
        let mut inner = self.lock();
        inner
            .registered
            .entry(r.upstream.as_str().into())
            .or_default()
            .insert(r.target.address.clone(), r);
    }

    /// Removes a registration; whether there was one.
    pub fn deregister(&self, upstream: &str, address: &str) -> bool {
        let mut inner = self.lock();
        inner
            .registered
            .get_mut(upstream)
            .is_some_and(|m| m.remove(address).is_some())
    }

    /// Replaces every registration with `all` (a store's view); the upstreams whose
    /// registrations changed.
    pub fn set_registrations(&self, all: Vec<Registration>) -> Vec<Box<str>> {
        let mut next: HashMap<Box<str>, BTreeMap<String, Registration>> = HashMap::new();
        for r in all {
            next.entry(r.upstream.as_str().into())
                .or_default()
                .insert(r.target.address.clone(), r);
        }
        let mut inner = self.lock();
        let mut changed: Vec<Box<str>> = Vec::new();
        for (u, m) in &next {
            let same = inner.registered.get(u).is_some_and(|o| {
                o.len() == m.len()
                    && o.iter()
                        .zip(m)
                        .all(|((a, x), (b, y))| a == b && x.target == y.target)
            });
            if !same {
                changed.push(u.clone());
            }
        }
        changed.extend(
            inner
                .registered
                .keys()
                .filter(|u| !next.contains_key(*u))
                .cloned(),
        );
        inner.registered = next;
        changed
    }

    /// Drops registrations past their TTL at `now_ms`; the upstreams that lost one.
    pub fn expire(&self, now_ms: u64) -> Vec<Box<str>> {
        let mut inner = self.lock();
        let mut changed = Vec::new();
        for (u, m) in inner.registered.iter_mut() {
            let before = m.len();
            m.retain(|address, r| {
                let live = r.expires_ms > now_ms;
                if !live {
                    tracing::info!(upstream = %u, target = %address,
                        "a registered target missed its heartbeat; removed after its TTL");
                }
                live
            });
            if m.len() != before {
                changed.push(u.clone());
            }
        }
        inner.registered.retain(|_, m| !m.is_empty());
        changed
    }

    /// The live registrations of `upstream` (all upstreams with `None`).
    pub fn registrations(&self, upstream: Option<&str>) -> Vec<Registration> {
        let inner = self.lock();
        inner
            .registered
            .iter()
            .filter(|(u, _)| upstream.is_none_or(|n| &***u == n))
            .flat_map(|(_, m)| m.values().cloned())
            .collect()
    }

    /// Everything discovered and registered for `upstream`, sources in a fixed order.
    pub fn dynamic(&self, upstream: &str) -> Vec<Found> {
        let inner = self.lock();
        let mut out = Vec::new();
        for origin in [Origin::Dns, Origin::Etcd] {
            if let Some(s) = inner.sources.get(&(upstream.into(), origin)) {
                out.extend(s.targets.iter().cloned());
            }
        }
        if let Some(m) = inner.registered.get(upstream) {
            out.extend(m.values().map(|r| r.target.clone()));
        }
        out
    }

    /// The upstreams with anything discovered or registered.
    pub fn upstreams(&self) -> Vec<Box<str>> {
        let inner = self.lock();
        let mut names: Vec<Box<str>> = inner.sources.keys().map(|(u, _)| u.clone()).collect();
        names.extend(inner.registered.keys().cloned());
        names.sort();
        names.dedup();
        names
    }

    /// Each source's state, for `/status` and `/metrics`.
    pub fn status(&self) -> Vec<SourceStatus> {
        let inner = self.lock();
        let mut out: Vec<SourceStatus> = inner
            .sources
            .iter()
            .map(|((u, o), s)| SourceStatus {
                upstream: u.to_string(),
                source: o.as_str(),
                up: s.up,
                targets: s.targets.len(),
                error: s.error.clone(),
                since: s.since,
                updates: s.updates,
                failures: s.failures,
            })
            .collect();
        for (u, m) in &inner.registered {
            out.push(SourceStatus {
                upstream: u.to_string(),
                source: Origin::Registered.as_str(),
                up: true,
                targets: m.len(),
                error: None,
                since: 0,
                updates: 0,
                failures: 0,
            });
        }
        out.sort_by(|a, b| (&a.upstream, a.source).cmp(&(&b.upstream, b.source)));
        out
    }

    /// Writes what DNS and etcd found to `path` (atomically: a temporary file renamed), so a
    /// node restarted while its registry is down starts with the targets it had.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let known: BTreeMap<String, BTreeMap<Origin, Vec<Found>>> = {
            let inner = self.lock();
            let mut m: BTreeMap<String, BTreeMap<Origin, Vec<Found>>> = BTreeMap::new();
            for ((u, o), s) in &inner.sources {
                m.entry(u.to_string())
                    .or_default()
                    .insert(*o, s.targets.clone());
            }
            m
        };
        let text = serde_json::to_vec_pretty(&known).map_err(std::io::Error::other)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    /// What [`State::save`] wrote, by upstream and source; empty when there is no file.
    pub fn load(path: &Path) -> Result<BTreeMap<String, BTreeMap<Origin, Vec<Found>>>, String> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

pub use metrics::Collector;

/// Takes the etcd passwords out of `config` before it is shown (they are write-only).
pub fn redact(config: &mut gatehouse_model::Config) {
    for e in etcd_specs(config) {
        e.password = None;
    }
}

/// An etcd spec written back without its password keeps the stored one, while the user
/// stays the same: what the API showed can be sent back as it is.
pub fn keep_passwords(new: &mut gatehouse_model::Config, old: &gatehouse_model::Config) {
    for u in &mut new.upstreams {
        let Some(e) = u.discovery.as_mut().and_then(|d| d.etcd.as_mut()) else {
            continue;
        };
        if e.password.is_some() || e.username.is_none() {
            continue;
        }
        let stored = old
            .upstreams
            .iter()
            .find(|o| o.name == u.name)
            .and_then(|o| o.discovery.as_ref()?.etcd.as_ref())
            .filter(|o| o.username == e.username);
        if let Some(o) = stored {
            e.password.clone_from(&o.password);
        }
    }
}

fn etcd_specs(
    config: &mut gatehouse_model::Config,
) -> impl Iterator<Item = &mut gatehouse_model::EtcdDiscovery> {
    config
        .upstreams
        .iter_mut()
        .filter_map(|u| u.discovery.as_mut()?.etcd.as_mut())
}
