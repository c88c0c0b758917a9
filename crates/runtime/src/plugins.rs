//! Plugin instances of a snapshot, and for each route the precomputed chain saying which
//! instance of each kind runs (most specific scope wins), so no request resolves scopes.

use crate::consumers::IdentityHeaders;
use gatehouse_model::{Config, ConfigError, PluginInstance};
use gatehouse_plugin_api::{BuildEnv, Needs, Plugin, PluginKind, Registry, UpstreamRef};
use std::collections::HashMap;
use std::sync::Arc;

/// The plugins that run for one route, in priority order.
#[derive(Default)]
pub struct Chain {
    pub entries: Box<[ChainEntry]>,
    /// What the chain's instances (default or consumer-scoped) ask of the pipeline together:
    /// decided here so that requests on other routes do not look.
    pub needs: Needs,
    /// Present when the chain has authentication plugins.
    pub auth: Option<AuthGroup>,
}

/// A chain's authentication plugins taken together: alternatives, the first to identify the
/// caller wins (see [`PluginKind::authenticates`]).
pub struct AuthGroup {
    /// The chain index of the last authentication entry: past it, a request no plugin
    /// identified is refused or let through as `anonymous`.
    pub last: usize,
    /// The consumer (index) let through when none identifies the caller.
    pub anonymous: Option<usize>,
    /// What tells the upstream who the caller is.
    pub headers: Arc<IdentityHeaders>,
}

/// One kind of plugin in a chain.
pub struct ChainEntry {
    pub kind: &'static str,
    pub priority: i32,
    /// The instance for callers with no consumer-scoped one.
    pub default: Option<Arc<dyn Plugin>>,
    /// Its index in the config's `plugins` (to name its scope, e.g. in `explain`).
    pub default_index: Option<usize>,
    /// Consumer-scoped instances, by consumer index, sorted for binary search.
    pub consumers: Box<[(usize, Arc<dyn Plugin>)]>,
    /// The kind identifies callers (one of the chain's [`AuthGroup`]).
    pub auth: bool,
}

impl ChainEntry {
    /// The instance that runs for `consumer` (once an authentication plugin has set one).
    pub fn pick(&self, consumer: Option<usize>) -> Option<&Arc<dyn Plugin>> {
        if let Some(c) = consumer {
            if let Ok(i) = self.consumers.binary_search_by_key(&c, |(k, _)| *k) {
                return self.consumers.get(i).map(|(_, p)| p);
            }
        }
        self.default.as_ref()
    }
}

/// Built instances by identity (their whole config entry), so a reload reuses an instance
/// whose entry did not change and its state (counters) survives unrelated edits; with the
/// upstreams each named, checked again on reuse.
pub type Instances = HashMap<String, (Arc<dyn Plugin>, Box<[UpstreamRef]>)>;

/// The instances of one config in file order, by their index in `plugins`.
pub type Built = Vec<(usize, Arc<dyn Plugin>)>;

/// What makes two instances of a kind compete: name, route, service, consumer.
type Scope<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>);

/// A built instance with what scope resolution needs.
struct Resolved<'a> {
    index: usize,
    spec: &'a PluginInstance,
    kind: &'static dyn PluginKind,
    plugin: Arc<dyn Plugin>,
}

/// How specific a scope is: consumer > route > service > global, combinations above their
/// parts (consumer+route+service = 7 ... global = 0).
fn specificity(p: &PluginInstance) -> u8 {
    (p.consumer.is_some() as u8) << 2 | (p.route.is_some() as u8) << 1 | p.service.is_some() as u8
}

/// Builds every plugin instance of `config` (reusing those of `previous` whose entry is
/// unchanged) and checks them; every problem is reported with its path.
pub fn build_instances(
    config: &Config,
    registry: &Registry,
    previous: Option<&Instances>,
    env: &BuildEnv,
) -> (Instances, Built, Vec<ConfigError>) {
    let mut errs = Vec::new();
    let mut instances = Instances::new();
    let mut built = Vec::new();
    let mut scopes: HashMap<Scope<'_>, usize> = HashMap::new();
    for (i, p) in config.plugins.iter().enumerate() {
        let Some(kind) = registry.find(&p.name) else {
            errs.push(ConfigError::new(
                format!("plugins[{i}].name"),
                format!("unknown plugin \"{}\"", p.name),
            ));
            continue;
        };
        if p.consumer.is_some() && !kind.consumer_scopable() {
            errs.push(ConfigError::new(
                format!("plugins[{i}].consumer"),
                format!(
                    "a {} instance cannot be scoped to a consumer: it identifies consumers, so \
                     none is known when it would run",
                    p.name
                ),
            ));
            continue;
        }
        let scope = (
            p.name.as_str(),
            p.route.as_deref(),
            p.service.as_deref(),
            p.consumer.as_deref(),
        );
        if let Some(first) = scopes.insert(scope, i) {
            errs.push(ConfigError::new(
                format!("plugins[{i}]"),
                format!(
                    "plugins[{first}] is a {} with the same scope; one instance of a kind per scope",
                    p.name
                ),
            ));
            continue;
        }
        // What the instance was built from: its entry and the node facts it was given.
        let identity = format!(
            "{}|{}|{}",
            serde_json::to_string(p).unwrap_or_default(),
            env.redis.as_ref().map_or("", |r| r.url()),
            env.nodes
        );
        let reused = previous.and_then(|prev| prev.get(&identity)).cloned();
        let (plugin, named) = match reused {
            Some((plugin, named)) => {
                let gone: Vec<&UpstreamRef> = named
                    .iter()
                    .filter(|r| r.url_authority().is_none() && !env.has_upstream(r.name()))
                    .collect();
                if let Some(r) = gone.first() {
                    errs.push(ConfigError::new(
                        format!("plugins[{i}] ({}).config", p.name),
                        format!("no upstream named \"{}\"", r.name()),
                    ));
                    continue;
                }
                (plugin, named)
            }
            None => {
                let env = env.for_scope(p.scope());
                match kind.build(&p.config, &env) {
                    Ok(plugin) => (plugin, env.named().into_boxed_slice()),
                    Err(fields) => {
                        for f in fields {
                            let path = if f.path.is_empty() {
                                format!("plugins[{i}] ({}).config", p.name)
                            } else {
                                format!("plugins[{i}] ({}).config.{}", p.name, f.path)
                            };
                            errs.push(ConfigError::new(
                                path,
                                gatehouse_model::in_words(&f.message),
                            ));
                        }
                        continue;
                    }
                }
            }
        };
        if let Err(e) = anonymous_exists(config, i, plugin.as_ref()) {
            errs.push(e);
            continue;
        }
        instances.insert(identity, (plugin.clone(), named));
        built.push((i, plugin));
    }
    (instances, built, errs)
}

/// An authentication instance's `anonymous` must name a consumer of the config.
fn anonymous_exists(config: &Config, i: usize, plugin: &dyn Plugin) -> Result<(), ConfigError> {
    match plugin.anonymous() {
        Some(anon) if !config.consumers.iter().any(|c| c.username == anon) => {
            let name = config.plugins.get(i).map_or("", |p| p.name.as_str());
            Err(ConfigError::new(
                format!("plugins[{i}] ({name}).config.anonymous"),
                format!("no consumer named \"{anon}\""),
            ))
        }
        _ => Ok(()),
    }
}

/// The chain of every route, in `routes` order (route name, service name).
pub fn chains(
    config: &Config,
    registry: &Registry,
    built: &[(usize, Arc<dyn Plugin>)],
    routes: &[(&str, &str)],
    identity: &Arc<IdentityHeaders>,
) -> Vec<Chain> {
    let consumers: HashMap<&str, usize> = config
        .consumers
        .iter()
        .enumerate()
        .map(|(i, c)| (c.username.as_str(), i))
        .collect();
    let built: Vec<Resolved<'_>> = built
        .iter()
        .filter_map(|(i, plugin)| {
            let spec = config.plugins.get(*i)?;
            Some(Resolved {
                index: *i,
                spec,
                kind: registry.find(&spec.name)?,
                plugin: plugin.clone(),
            })
        })
        .filter(|b| b.spec.enabled)
        .collect();
    routes
        .iter()
        .map(|(route, service)| chain_for(&built, route, service, &consumers, identity))
        .collect()
}

fn chain_for(
    built: &[Resolved<'_>],
    route: &str,
    service: &str,
    consumers: &HashMap<&str, usize>,
    identity: &Arc<IdentityHeaders>,
) -> Chain {
    let applies = |b: &&Resolved<'_>| {
        b.spec.route.as_deref().is_none_or(|r| r == route)
            && b.spec.service.as_deref().is_none_or(|s| s == service)
    };
    let mut kinds: Vec<&'static dyn PluginKind> = Vec::new();
    for b in built.iter().filter(applies) {
        if !kinds.iter().any(|k| k.name() == b.kind.name()) {
            kinds.push(b.kind);
        }
    }
    kinds.sort_by(|a, b| b.priority().cmp(&a.priority()).then(a.name().cmp(b.name())));
    let entries: Box<[ChainEntry]> = kinds
        .into_iter()
        .map(|kind| {
            let mine: Vec<&Resolved<'_>> = built
                .iter()
                .filter(applies)
                .filter(|b| b.kind.name() == kind.name())
                .collect();
            let best = |list: &mut dyn Iterator<Item = &&Resolved<'_>>| {
                list.max_by_key(|b| (specificity(b.spec), std::cmp::Reverse(b.index)))
                    .map(|b| (b.index, b.plugin.clone()))
            };
            let default = best(&mut mine.iter().filter(|b| b.spec.consumer.is_none()));
            let mut per_consumer: Vec<(usize, Arc<dyn Plugin>)> = Vec::new();
            for (name, &ci) in consumers {
                if let Some(p) = best(
                    &mut mine
                        .iter()
                        .filter(|b| b.spec.consumer.as_deref() == Some(*name)),
                ) {
                    per_consumer.push((ci, p.1));
                }
            }
            per_consumer.sort_by_key(|(c, _)| *c);
            ChainEntry {
                kind: kind.name(),
                priority: kind.priority(),
                default_index: default.as_ref().map(|d| d.0),
                default: default.map(|d| d.1),
                consumers: per_consumer.into(),
                auth: kind.authenticates(),
            }
        })
        .collect();
    let needs = entries
        .iter()
        .flat_map(|e| e.default.iter().chain(e.consumers.iter().map(|(_, p)| p)))
        .fold(Needs::default(), |n, p| n.union(p.needs()));
    let auth = entries.iter().rposition(|e| e.auth).map(|last| AuthGroup {
        last,
        anonymous: entries
            .iter()
            .filter(|e| e.auth)
            .find_map(|e| e.default.as_ref()?.anonymous())
            .and_then(|name| consumers.get(name).copied()),
        headers: identity.clone(),
    });
    Chain {
        entries,
        needs,
        auth,
    }
}

#[cfg(test)]
mod tests;
