//! The node's discovery task: starts and stops the DNS and etcd watchers as the config
//! names them, applies their reports to the serving snapshot's upstreams (one upstream's
//! target set swapped, nothing recompiled), expires self-registrations, keeps target host
//! names resolved, and writes what was found to disk for a restart while a registry is down.

use crate::Shared;
use gatehouse_model::{Config, DnsDiscovery, EtcdDiscovery};
use gatehouse_runtime::discovery::{self, names, Applied, Origin, Registration, Report, State};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// How often registrations are checked for expiry and found targets written to disk.
const TICK: Duration = Duration::from_millis(250);
/// How often target host names are checked for a stale answer.
const NAMES_TICK: Duration = Duration::from_secs(1);

/// The discovery state of a node and the channel its watchers report on.
pub struct Discovery {
    pub state: Arc<State>,
    reports: mpsc::UnboundedSender<Report>,
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Report>>>,
    /// Where found targets are kept across restarts (`DATA_DIR/discovered.json`).
    file: Mutex<Option<PathBuf>>,
}

impl Default for Discovery {
    fn default() -> Self {
        let (reports, inbox) = mpsc::unbounded_channel();
        Self {
            state: Arc::default(),
            reports,
            inbox: Mutex::new(Some(inbox)),
            file: Mutex::new(None),
        }
    }
}

/// One running watcher: what it watches, and whether an empty answer applies (a change
/// restarts the watcher, so its next answer is judged by the new rule).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Watch {
    Dns(DnsDiscovery, bool),
    Etcd(EtcdDiscovery, bool),
}

impl Watch {
    fn origin(&self) -> Origin {
        match self {
            Watch::Dns(..) => Origin::Dns,
            Watch::Etcd(..) => Origin::Etcd,
        }
    }
}

/// Every watcher `config` asks for, by upstream.
fn wanted(config: &Config) -> Vec<(Box<str>, Watch)> {
    let mut out = Vec::new();
    for u in &config.upstreams {
        let Some(d) = &u.discovery else { continue };
        if let Some(dns) = &d.dns {
            out.push((
                u.name.as_str().into(),
                Watch::Dns(dns.clone(), d.allow_empty),
            ));
        }
        if let Some(etcd) = &d.etcd {
            out.push((
                u.name.as_str().into(),
                Watch::Etcd(etcd.clone(), d.allow_empty),
            ));
        }
    }
    out
}

fn allow_empty(config: &Config, upstream: &str) -> bool {
    config
        .upstreams
        .iter()
        .find(|u| u.name == upstream)
        .and_then(|u| u.discovery.as_ref())
        .is_some_and(|d| d.allow_empty)
}

impl Shared {
    /// Applies what discovery and registrations hold for `upstream` to the serving
    /// snapshot. A target they name wrongly is logged and the upstream keeps its set.
    pub fn resync(&self, upstream: &str) {
        let snap = self.snapshot.load();
        let Some(u) = snap.upstreams.get(upstream) else {
            return;
        };
        let dynamic = self.discovery.state.dynamic(upstream);
        if *u.dynamic() == dynamic {
            return;
        }
        match u.set_dynamic(dynamic) {
            Ok(false) => {}
            Ok(true) => {
                // A colour no target had at compile: its `{name}@{color}` upstream is made
                // by compiling the same config again (which takes the discovered targets).
                // Rare, and a full compile: it runs on the discovery task's worker.
                drop(snap);
                tracing::info!(
                    upstream,
                    "a discovered target brings a new colour; recompiling"
                );
                self.recompile();
            }
            Err(e) => tracing::warn!(upstream, error = %e, "discovered targets not applied"),
        }
    }

    /// [`Shared::resync`] for every upstream discovery knows of: after a snapshot swap, so
    /// an answer that arrived while the new snapshot compiled is not lost.
    pub(crate) fn resync_all(&self) {
        for u in self.discovery.state.upstreams() {
            self.resync(&u);
        }
    }

    /// Upstream `name`'s targets on this node, configured, discovered and registered, each
    /// with its `source` (and `from`: the etcd key, the DNS name), whether it is `in_use`
    /// (a subset leaves some out), and a registration's `expires_ms`.
    pub fn targets_of(&self, name: &str) -> Option<Vec<serde_json::Value>> {
        let snap = self.snapshot.load();
        let u = snap.upstreams.get(name)?;
        let set = u.targets();
        let registrations = self.discovery.state.registrations(Some(name));
        let listed = u.listed();
        let mut out = Vec::with_capacity(listed.len());
        for f in listed {
            let mut v = serde_json::json!({
                "address": f.address,
                "weight": f.weight,
                "source": f.origin.as_str(),
                "in_use": set.targets.iter().any(|t| *t.address == *f.address),
            });
            if !f.labels.is_empty() {
                v["labels"] = serde_json::json!(f.labels);
            }
            if let Some(from) = &f.from {
                v["from"] = from.as_str().into();
            }
            if let Some(m) = &f.metadata {
                v["metadata"] = m.clone();
            }
            if let Some(r) = registrations.iter().find(|r| r.target.address == f.address) {
                v["expires_ms"] = r.expires_ms.into();
            }
            if let Some(n) = set
                .targets
                .iter()
                .find(|t| *t.address == *f.address)
                .and_then(|t| t.name.as_ref())
            {
                let resolved: Vec<String> = n.addresses().iter().map(|a| a.to_string()).collect();
                v["resolved"] = resolved.into();
            }
            out.push(v);
        }
        Some(out)
    }

    /// Registers (or heartbeats) `target` of `upstream` on this node until `expires_ms`
    /// (Unix ms). `Err` names what is wrong (no such upstream, a bad address).
    pub fn register(
        &self,
        upstream: &str,
        mut target: discovery::Found,
        expires_ms: u64,
    ) -> Result<Registration, String> {
        if !self.snapshot.load().upstreams.contains_key(upstream) {
            return Err(format!("no upstream named \"{upstream}\""));
        }
        gatehouse_model::check_host_port(&target.address)?;
        target.origin = Origin::Registered;
        let r = Registration {
            upstream: upstream.to_owned(),
            target,
            expires_ms,
        };
        self.discovery.state.register(r.clone());
        self.resync(upstream);
        Ok(r)
    }

    /// Removes a registration; whether there was one.
    pub fn deregister(&self, upstream: &str, address: &str) -> bool {
        let had = self.discovery.state.deregister(upstream, address);
        if had {
            self.resync(upstream);
        }
        had
    }

    /// Replaces every registration with a store's list (store mode: every node agrees).
    pub fn set_registrations(&self, all: Vec<Registration>) {
        for u in self.discovery.state.set_registrations(all) {
            self.resync(&u);
        }
    }

    /// Keeps found targets in `dir/discovered.json` from now on, and starts from what is
    /// there: a node restarted while DNS or etcd is down serves the targets it had.
    pub fn keep_discovered_in(&self, dir: &std::path::Path) {
        let path = dir.join("discovered.json");
        let snap = self.snapshot.load();
        match State::load(&path) {
            Ok(known) => {
                let wanted = wanted(&snap.config);
                for (upstream, sources) in known {
                    for (origin, targets) in sources {
                        let configured = wanted
                            .iter()
                            .any(|(u, w)| **u == *upstream && w.origin() == origin);
                        if configured && !targets.is_empty() {
                            self.discovery.state.seed(&upstream, origin, targets);
                        }
                    }
                }
                self.resync_all();
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the discovered targets kept on disk"),
        }
        if let Ok(mut f) = self.discovery.file.lock() {
            *f = Some(path);
        }
    }
}

/// The discovery task; runs on one worker for the whole node.
pub(crate) async fn run(shared: Arc<Shared>) {
    let Some(mut inbox) = shared
        .discovery
        .inbox
        .lock()
        .ok()
        .and_then(|mut i| i.take())
    else {
        return;
    };
    let names = tokio::spawn(resolve_names(shared.clone()));
    let mut watchers: HashMap<(Box<str>, Watch), AbortHandle> = HashMap::new();
    let mut changes = shared.snapshot.load().changes.subscribe();
    let mut tick = tokio::time::interval(TICK);
    // The snapshot last reconciled: a change of targets alone needs no reconcile. Weak, so
    // it keeps no pools alive, yet its address is not reused while held.
    let mut seen = std::sync::Weak::new();
    let mut dirty = false;
    loop {
        let snap = shared.snapshot.load_full();
        if !std::ptr::eq(seen.as_ptr(), Arc::as_ptr(&snap)) {
            seen = Arc::downgrade(&snap);
            reconcile(&shared, &snap.config, &mut watchers);
        }
        tokio::select! {
            report = inbox.recv() => {
                let Some(report) = report else { break };
                let upstream = report.upstream.clone();
                let allow = allow_empty(&snap.config, &upstream);
                if shared.discovery.state.apply(report, allow) == Applied::Changed {
                    shared.resync(&upstream);
                    dirty = true;
                }
            }
            changed = changes.changed() => if changed.is_err() { break },
            _ = tick.tick() => {
                let now = discovery::unix_ms(SystemTime::now());
                for u in shared.discovery.state.expire(now) {
                    shared.resync(&u);
                }
                if dirty {
                    dirty = false;
                    save(&shared);
                }
            }
        }
    }
    names.abort();
    for (_, w) in watchers {
        w.abort();
    }
}

/// Starts the watchers `config` asks for and stops the others (a changed spec restarts).
fn reconcile(
    shared: &Shared,
    config: &Config,
    watchers: &mut HashMap<(Box<str>, Watch), AbortHandle>,
) {
    let wanted = wanted(config);
    watchers.retain(|key, handle| {
        let keep = wanted.contains(key);
        if !keep {
            handle.abort();
        }
        keep
    });
    for (upstream, watch) in wanted.iter().cloned() {
        if watchers.contains_key(&(upstream.clone(), watch.clone())) {
            continue;
        }
        let tx = shared.discovery.reports.clone();
        let handle = match watch.clone() {
            Watch::Dns(spec, _) => tokio::spawn(discovery::dns::watch(upstream.clone(), spec, tx)),
            Watch::Etcd(spec, _) => {
                tokio::spawn(discovery::etcd::watch(upstream.clone(), spec, tx))
            }
        };
        watchers.insert((upstream, watch), handle.abort_handle());
    }
    let gone = shared
        .discovery
        .state
        .retain(|u, o| wanted.iter().any(|(wu, w)| &**wu == u && w.origin() == o));
    for u in gone {
        shared.resync(&u);
    }
}

fn save(shared: &Shared) {
    let path = shared.discovery.file.lock().ok().and_then(|f| f.clone());
    if let Some(path) = path {
        if let Err(e) = shared.discovery.state.save(&path) {
            tracing::warn!(error = %e, path = %path.display(), "cannot keep the discovered targets on disk");
        }
    }
}

/// Keeps the serving snapshot's target host names resolved: each when its answer's TTL
/// runs out, or at once when a connection waits for a first answer.
async fn resolve_names(shared: Arc<Shared>) {
    let resolver = match discovery::dns::resolver(&[], names::MAX_TTL) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "no DNS resolver: targets named by host name cannot be resolved");
            return;
        }
    };
    loop {
        let snap = shared.snapshot.load_full();
        let mut all = Vec::new();
        for u in snap.upstreams.values() {
            all.extend(u.targets().targets.iter().filter_map(|t| t.name.clone()));
        }
        drop(snap);
        if !all.is_empty() {
            names::refresh_due(all, &resolver).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(NAMES_TICK) => {}
            _ = names::KICK.notified() => {}
        }
    }
}
