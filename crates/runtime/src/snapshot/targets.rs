//! An upstream as requests use it: its target set (targets and their balancer) behind its own
//! swap, so one upstream's targets can be replaced without compiling the config (the seam
//! service discovery feeds), and the policies that pick among them.

use crate::balance::{subset, Balancer};
use crate::breaker;
use crate::discovery::{Found, Origin};
use crate::health::{HealthPolicy, SetAside};
use crate::upstream::TargetState;
use arc_swap::ArcSwap;
use gatehouse_model::{AllDown, Keepalive, UpstreamProtocol};
use http::HeaderName;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Where a consistent-hash key comes from.
#[derive(Clone)]
pub enum HashSource {
    None,
    ClientIp,
    Header(HeaderName),
    Cookie(Box<str>),
    Query(Box<str>),
}

/// The targets an upstream uses now (after subsetting), in a stable order, and their balancer.
pub struct TargetSet {
    pub targets: Vec<Arc<TargetState>>,
    pub balancer: Balancer,
    /// Where each target came from (config, DNS, etcd, a registration), by index.
    pub origins: Vec<Origin>,
}

/// How an upstream's targets are connected to and balanced: what a new target set is built
/// with.
#[derive(Clone)]
pub struct TargetSettings {
    pub balance: gatehouse_model::Balance,
    pub protocol: UpstreamProtocol,
    /// TCP, or TLS with its client settings.
    pub connector: crate::connector::Connector,
    pub keepalive: Keepalive,
    pub workers: usize,
}

impl TargetSet {
    /// A set of `list` (address, weight), reusing the state (pools, counters, health) of
    /// `old`'s targets whose address and connection settings stay.
    pub fn build(
        list: &[(&str, u32)],
        settings: &TargetSettings,
        old: Option<&TargetSet>,
    ) -> Result<TargetSet, String> {
        let (protocol, keepalive) = (settings.protocol, settings.keepalive);
        let connector = &settings.connector;
        let mut targets = Vec::with_capacity(list.len());
        for (addr, _) in list {
            let reused = old.and_then(|o| {
                o.targets
                    .iter()
                    .find(|t| {
                        &*t.address == *addr
                            && t.protocol == protocol
                            && t.keepalive == keepalive
                            && t.connector == *connector
                    })
                    .cloned()
            });
            let state = match reused {
                Some(s) => s,
                None => Arc::new(
                    TargetState::new(addr, protocol, keepalive, settings.workers)?
                        .with_connector(connector.clone()),
                ),
            };
            targets.push(state);
        }
        let addrs: Vec<&str> = list.iter().map(|(a, _)| *a).collect();
        let weights: Vec<u32> = list.iter().map(|(_, w)| *w).collect();
        Ok(TargetSet {
            balancer: Balancer::new(settings.balance, &addrs, &weights),
            origins: vec![Origin::Config; targets.len()],
            targets,
        })
    }
}

pub struct UpstreamEntry {
    pub name: Box<str>,
    set: ArcSwap<TargetSet>,
    pub settings: TargetSettings,
    pub hash: HashSource,
    /// Health checks; `None` (the default) uses every target without looking.
    pub health: Option<HealthPolicy>,
    /// Per-target circuit breakers.
    pub breaker: Option<breaker::Policy>,
    /// Targets whose connect failed are left out for a while (on by default).
    pub set_aside: Option<SetAside>,
    /// Told of every target change, so health checks follow without polling.
    changes: Arc<watch::Sender<u64>>,
    /// The config's targets (all colours), which discovered ones are added to.
    statics: Box<[Found]>,
    /// What discovery and registrations add now (carried into the next compile).
    dynamic: ArcSwap<Vec<Found>>,
    /// `subset_size` and this node's index: the subset is taken of the merged targets.
    subset: Option<(usize, u32)>,
    /// The targets labelled with a colour, as an upstream of their own per colour: where a
    /// request of that colour goes (`{name}@{color}`). Empty for most upstreams, which then
    /// pay one length check.
    pub colors: Box<[(http::HeaderValue, Arc<UpstreamEntry>)]>,
}

/// Every target of an upstream is down by its health checks, and it fails fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllTargetsDown;

impl UpstreamEntry {
    pub fn new(
        name: &str,
        set: TargetSet,
        settings: TargetSettings,
        hash: HashSource,
        health: Option<HealthPolicy>,
        breaker: Option<breaker::Policy>,
        changes: Arc<watch::Sender<u64>>,
    ) -> Self {
        Self {
            name: name.into(),
            set: ArcSwap::from_pointee(set),
            settings,
            hash,
            health,
            breaker,
            set_aside: None,
            changes,
            statics: Box::default(),
            dynamic: ArcSwap::from_pointee(Vec::new()),
            subset: None,
            colors: Box::default(),
        }
    }

    /// Sets what the config lists (`statics`, all colours), what discovery added at
    /// compile (`dynamic`), and the subset rule, for later [`UpstreamEntry::set_dynamic`].
    pub fn with_sources(
        mut self,
        statics: Vec<Found>,
        dynamic: Vec<Found>,
        subset: Option<(usize, u32)>,
    ) -> Self {
        self.statics = statics.into();
        self.dynamic = ArcSwap::from_pointee(dynamic);
        self.subset = subset;
        self
    }

    /// Every target the config, discovery and registrations list now (colours and targets
    /// a subset leaves out included), each once.
    pub fn listed(&self) -> Vec<Found> {
        let dynamic = self.dynamic.load();
        merge(&self.statics, &dynamic)
            .into_iter()
            .cloned()
            .collect()
    }

    /// What discovery and registrations add to the config's targets now.
    pub fn dynamic(&self) -> Arc<Vec<Found>> {
        self.dynamic.load_full()
    }

    /// Replaces what discovery and registrations add (`dynamic`), keeping the config's
    /// targets: the merged list goes to this upstream (uncoloured targets) and its colour
    /// upstreams. A target listed twice is taken from the first source (config first).
    /// `Ok(true)`: a target has a colour this upstream has no colour upstream for yet, which
    /// only a compile makes (the caller recompiles). `Err` (nothing changed) names a bad
    /// target.
    pub fn set_dynamic(&self, dynamic: Vec<Found>) -> Result<bool, String> {
        let all = merge(&self.statics, &dynamic);
        self.check(&all)?;
        let color = |f: &Found| f.labels.get(gatehouse_model::COLOR_LABEL).cloned();
        let plain: Vec<&Found> = all.iter().copied().filter(|f| color(f).is_none()).collect();
        let new_color = all.iter().any(|f| {
            color(f).is_some_and(|c| {
                !self
                    .colors
                    .iter()
                    .any(|(v, _)| v.as_bytes() == c.as_bytes())
            })
        });
        let mut updates = vec![(self, plain)];
        for (value, sub) in self.colors.iter() {
            let mine: Vec<&Found> = all
                .iter()
                .copied()
                .filter(|f| color(f).is_some_and(|c| c.as_bytes() == value.as_bytes()))
                .collect();
            updates.push((&**sub, mine));
        }
        for (u, list) in updates {
            u.replace_found(&list)?;
        }
        self.dynamic.store(Arc::new(dynamic));
        Ok(new_color)
    }

    fn check(&self, list: &[&Found]) -> Result<(), String> {
        for f in list {
            gatehouse_model::check_host_port(&f.address)?;
            if let Some(c) = f.labels.get(gatehouse_model::COLOR_LABEL) {
                // Checked here so that a compile never meets a colour it cannot make.
                if c.is_empty() || http::HeaderValue::from_str(c).is_err() {
                    return Err(format!(
                        "\"{}\": color {c:?} cannot be a header value",
                        f.address
                    ));
                }
            }
            if f.weight == 0 {
                return Err(format!("\"{}\": a weight must be at least 1", f.address));
            }
        }
        Ok(())
    }

    /// Builds and swaps in the target set of `list`, subset as configured.
    fn replace_found(&self, list: &[&Found]) -> Result<(), String> {
        let mut list: Vec<&Found> = list.to_vec();
        if let Some((size, node)) = self.subset {
            list.sort_unstable_by(|a, b| a.address.cmp(&b.address));
            let keep = subset(list.len(), size, node);
            list = keep
                .into_iter()
                .filter_map(|k| list.get(k).copied())
                .collect();
        }
        let pairs: Vec<(&str, u32)> = list
            .iter()
            .map(|f| (f.address.as_str(), f.weight))
            .collect();
        let origins = list.iter().map(|f| f.origin).collect();
        self.swap_in(&pairs, origins)
    }

    /// The upstream a request coloured `color` goes to: this one's targets of that colour,
    /// or, when none has it, this one (its uncoloured targets).
    #[inline]
    pub fn for_color(&self, color: Option<&http::HeaderValue>) -> Option<&UpstreamEntry> {
        let color = color?;
        self.colors
            .iter()
            .find(|(c, _)| c == color)
            .map(|(_, u)| &**u)
    }

    /// Sets targets aside for `length` after a failed connect (zero: never).
    pub fn with_set_aside(mut self, length: Duration) -> Self {
        self.set_aside = SetAside::new(length, &self.set.load().targets);
        self
    }

    /// The targets in use now. A request holds what it loaded for its whole exchange, so
    /// indices stay meaningful while a replacement swaps in.
    pub fn targets(&self) -> Arc<TargetSet> {
        self.set.load_full()
    }

    /// Replaces the targets with `list` (address, weight), keeping the state of targets
    /// that stay; requests already under way finish on the set they loaded. Health checks
    /// hear of it. `Err` (nothing changed) names a bad address.
    pub fn replace_targets(&self, list: &[(&str, u32)]) -> Result<(), String> {
        for (addr, weight) in list {
            gatehouse_model::check_host_port(addr)?;
            if *weight == 0 {
                return Err(format!("\"{addr}\": a weight must be at least 1"));
            }
        }
        self.swap_in(list, vec![Origin::Config; list.len()])
    }

    fn swap_in(&self, list: &[(&str, u32)], origins: Vec<Origin>) -> Result<(), String> {
        let old = self.set.load();
        let mut set = TargetSet::build(list, &self.settings, Some(&old))?;
        set.origins = origins;
        if self.health.is_some() {
            let active = self.health.as_ref().is_some_and(|h| h.active.is_some());
            let passive = self.health.as_ref().is_some_and(|h| h.passive.is_some());
            let new = |t: &&Arc<TargetState>| !old.targets.iter().any(|o| Arc::ptr_eq(o, t));
            for t in set.targets.iter().filter(new) {
                t.health.reset(active, passive);
            }
        }
        self.set.store(Arc::new(set));
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }

    /// A target of `set` for this request: one not yet `tried` and healthy, or, when health
    /// checks left none and the upstream says `try_anyway`, any not yet tried.
    #[inline]
    pub fn pick(
        &self,
        set: &TargetSet,
        hash_key: &[u8],
        tried: &[usize],
    ) -> Result<Option<usize>, AllTargetsDown> {
        let targets = &set.targets;
        let mut clock = 0;
        let mut now = || {
            if clock == 0 {
                clock = crate::health::now_ns();
            }
            clock
        };
        let aside = self.set_aside.as_ref().is_some_and(|s| s.active(&mut now));
        if self.health.is_none() && self.breaker.is_none() && !aside {
            return Ok(set.balancer.pick(targets, hash_key, tried));
        }
        let now = now();
        let admits = |t: &TargetState| {
            self.breaker
                .as_ref()
                .is_none_or(|p| t.breaker.would_admit(p, now))
        };
        let usable = |t: &TargetState| t.health.available(now) && admits(t);
        if let Some(i) = self.take(set, hash_key, tried, now, usable) {
            return Ok(Some(i));
        }
        let any_up = targets.iter().any(|t| usable(t));
        if !any_up && self.health.is_none() {
            // Only set-asides (and breakers) took targets out, and a set-aside is a hint,
            // never a reason to refuse: try what the breakers admit.
            if let Some(i) = self.take(set, hash_key, tried, now, admits) {
                return Ok(Some(i));
            }
            if self.breaker.is_none() || targets.iter().any(|t| admits(t)) {
                return Ok(None);
            }
            return Err(AllTargetsDown);
        }
        let all_down = self
            .health
            .as_ref()
            .map_or(AllDown::FailFast, |h| h.all_down);
        match all_down {
            // Usable targets remain, all tried already: nothing left for this request.
            _ if any_up => Ok(None),
            AllDown::TryAnyway => Ok(set.balancer.pick(targets, hash_key, tried)),
            AllDown::FailFast => Err(AllTargetsDown),
        }
    }

    /// A target not yet `tried` that passes `ok`, as the balancer picks; takes a half-open
    /// probe slot of its breaker. A race may let one probe more through than configured;
    /// refusing the request for it would be worse.
    fn take(
        &self,
        set: &TargetSet,
        hash_key: &[u8],
        tried: &[usize],
        now: u64,
        ok: impl Fn(&TargetState) -> bool,
    ) -> Option<usize> {
        let targets = &set.targets;
        let i = set.balancer.pick_where(targets, hash_key, |i| {
            !tried.contains(&i) && targets.get(i).is_some_and(|t| ok(t))
        })?;
        if let (Some(p), Some(t)) = (&self.breaker, targets.get(i)) {
            let _ = t.breaker.admit(p, now);
        }
        Some(i)
    }
}

/// `statics` then `dynamic`, each address once (the first source that lists it wins).
pub fn merge<'a>(statics: &'a [Found], dynamic: &'a [Found]) -> Vec<&'a Found> {
    let mut seen = std::collections::HashSet::new();
    statics
        .iter()
        .chain(dynamic)
        .filter(|f| seen.insert(f.address.as_str()))
        .collect()
}
