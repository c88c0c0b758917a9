//! Compiles a [`Config`] into the immutable [`Snapshot`] requests read: everything a request
//! needs is resolved here (service and upstream by index, rewrite templates parsed, header
//! names built), and target state is carried over from the previous snapshot.

use crate::balance::{subset, Balancer};
use crate::breaker;
use crate::health::HealthPolicy;
use crate::plugins::{build_instances, chains, Chain, Instances};
use crate::retry::{Budget, Retry};
use crate::router::{RequestView, RouteMatch, Router};
use crate::upstream::TargetState;
use gatehouse_model::{
    parse_service_url, AllDown, Config, ConfigError, HashOn, Keepalive, RetryPolicy, Timeouts,
    UpstreamProtocol,
};
use gatehouse_plugin_api::{BuildEnv, RedisStore};
use http::HeaderName;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Whether compiling acquires what the config names (files, threads) or only checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resources {
    Acquire,
    Check,
}

/// Node facts that are not in the file, fixed for the life of the process.
#[derive(Debug, Clone, Copy)]
pub struct NodeContext {
    pub workers: usize,
    pub node_index: u32,
}

pub struct Snapshot {
    pub router: Router,
    pub routes: Vec<RouteEntry>,
    /// Route indices by name (to carry state across reloads without scanning).
    pub route_index: HashMap<Box<str>, usize>,
    pub services: Vec<ServiceEntry>,
    pub upstreams: HashMap<Box<str>, Arc<UpstreamEntry>>,
    pub via: bool,
    /// Peers whose forwarding headers are believed (`node.trusted_proxies`).
    pub trusted_proxies: Box<[ipnet::IpNet]>,
    pub drain_timeout: Duration,
    /// Plugin instances by identity, lent to the next snapshot.
    pub plugin_instances: Instances,
    /// The node's Redis, kept across reloads while its address stays.
    pub redis: Option<Arc<RedisStore>>,
    /// Metric bounds, node-wide counters, the access log writer and the trace exporter.
    pub telemetry: crate::telemetry::Telemetry,
    /// Per-consumer request counts, by consumer index (empty unless
    /// `observability.metrics.consumers`).
    pub consumer_stats: Vec<(Box<str>, Arc<crate::telemetry::Stats>)>,
    /// The header that asks for a decision trace.
    pub debug_header: HeaderName,
    /// The config this snapshot was built from (for diffing on reload).
    pub config: Config,
}

/// What a route records about its requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteObserve {
    /// Log a request when a random u32 falls below this; 0: never.
    pub log_below: u64,
    pub trace: bool,
    pub server_timing: bool,
}

impl RouteObserve {
    /// Whether this request gets an access log line.
    #[inline]
    pub fn sample_log(&self) -> bool {
        self.log_below > 0
            && (self.log_below > u32::MAX as u64 || (fastrand::u32(..) as u64) < self.log_below)
    }
}

pub struct RouteEntry {
    pub name: Box<str>,
    pub service: usize,
    pub strip_prefix: bool,
    pub rewrite: Option<Vec<Piece>>,
    pub preserve_host: bool,
    pub priority_class: gatehouse_plugin_api::PriorityClass,
    /// The plugins that run for this route, resolved across scopes.
    pub plugins: Chain,
    /// The route's retry policy (its own, else its service's, else the default).
    pub retry: Retry,
    /// The route's circuit breaker; its state is kept across reloads by route name.
    pub breaker: Option<(breaker::Policy, Arc<breaker::Breaker>)>,
    /// What the route answers when its upstream fails.
    pub fallback: Option<crate::fallback::Compiled>,
    /// Its request statistics (None: metrics off for it), kept across reloads by name.
    pub stats: Option<Arc<crate::telemetry::Stats>>,
    /// Rejection counters, one per entry of `plugins`.
    pub rejections: Box<[crate::telemetry::Rejections]>,
    pub observe: RouteObserve,
}

/// A part of a rewrite template.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Literal(Box<str>),
    Param(Box<str>),
    /// `{*}`: the rest of the path after the matched prefix.
    Rest,
}

pub struct ServiceEntry {
    pub name: Box<str>,
    pub upstream: Arc<UpstreamEntry>,
    /// From a service `url`: put before every upstream path.
    pub path_prefix: Box<str>,
    pub timeouts: Timeouts,
    pub retries: u32,
    pub retry: Option<RetryPolicy>,
    /// Shared by the service's routes and kept across reloads.
    pub budget: Arc<Budget>,
}

pub struct UpstreamEntry {
    pub name: Box<str>,
    /// The targets this node uses (after subsetting), in a stable order.
    pub targets: Vec<Arc<TargetState>>,
    pub balancer: Balancer,
    pub hash: HashSource,
    /// Health checks; `None` (the default) uses every target without looking.
    pub health: Option<HealthPolicy>,
    /// Per-target circuit breakers.
    pub breaker: Option<breaker::Policy>,
}

/// Every target of an upstream is down by its health checks, and it fails fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllTargetsDown;

impl UpstreamEntry {
    /// A target for this request: one not yet `tried` and healthy, or, when health checks
    /// left none and the upstream says `try_anyway`, any not yet tried.
    #[inline]
    pub fn pick(&self, hash_key: &[u8], tried: &[usize]) -> Result<Option<usize>, AllTargetsDown> {
        if self.health.is_none() && self.breaker.is_none() {
            return Ok(self.balancer.pick(&self.targets, hash_key, tried));
        }
        let now = crate::health::now_ns();
        let usable = |t: &TargetState| {
            t.health.available(now)
                && self
                    .breaker
                    .as_ref()
                    .is_none_or(|p| t.breaker.would_admit(p, now))
        };
        let healthy = self.balancer.pick_where(&self.targets, hash_key, |i| {
            !tried.contains(&i) && self.targets.get(i).is_some_and(|t| usable(t))
        });
        if let Some(i) = healthy {
            if let (Some(p), Some(t)) = (&self.breaker, self.targets.get(i)) {
                // Takes a half-open probe slot. A race may let one probe more through than
                // configured; refusing the request for it would be worse.
                let _ = t.breaker.admit(p, now);
            }
            return Ok(Some(i));
        }
        let any_up = self.targets.iter().any(|t| usable(t));
        let all_down = self
            .health
            .as_ref()
            .map_or(AllDown::FailFast, |h| h.all_down);
        match all_down {
            // Usable targets remain, all tried already: nothing left for this request.
            _ if any_up => Ok(None),
            AllDown::TryAnyway => Ok(self.balancer.pick(&self.targets, hash_key, tried)),
            AllDown::FailFast => Err(AllTargetsDown),
        }
    }
}

/// Where a consistent-hash key comes from.
pub enum HashSource {
    None,
    ClientIp,
    Header(HeaderName),
    Cookie(Box<str>),
    Query(Box<str>),
}

impl Snapshot {
    /// Builds a snapshot; `previous` lends target state (pools, counters) for targets that
    /// stay. On error nothing is built and the caller keeps serving the previous snapshot.
    /// Compiles `config` into a snapshot to serve: acquires what it needs (the access log's
    /// file and writer, the trace exporter, fallback body files), lending the previous
    /// snapshot's state where settings stay.
    pub fn compile(
        config: Config,
        previous: Option<&Snapshot>,
        node: NodeContext,
    ) -> Result<Snapshot, Vec<ConfigError>> {
        Self::build(config, previous, node, Resources::Acquire)
    }

    /// Checks `config` as [`Snapshot::compile`] would, with no side effect: no file is opened
    /// or created, no thread started, no socket opened (it may look at files and directories).
    /// What `gatehouse validate`, admin dry runs and `explain` use. The snapshot it returns
    /// holds no resources (no access log writer, no exporter, fallback files not read) and
    /// must not serve traffic.
    pub fn plan(
        config: Config,
        previous: Option<&Snapshot>,
        node: NodeContext,
    ) -> Result<Snapshot, Vec<ConfigError>> {
        Self::build(config, previous, node, Resources::Check)
    }

    fn build(
        config: Config,
        previous: Option<&Snapshot>,
        node: NodeContext,
        resources: Resources,
    ) -> Result<Snapshot, Vec<ConfigError>> {
        let mut errs = gatehouse_model::validate(&config);
        let (env, env_errs) = plugin_env(&config, previous);
        errs.extend(env_errs);
        let (plugin_instances, built, plugin_errs) =
            build_instances(&config, previous.map(|p| &p.plugin_instances), &env);
        errs.extend(plugin_errs);
        let router = match Router::build(&config.routes) {
            Ok(r) => Some(r),
            Err(e) => {
                errs.extend(e);
                None
            }
        };
        let mut upstreams: HashMap<Box<str>, Arc<UpstreamEntry>> = HashMap::new();
        for (i, u) in config.upstreams.iter().enumerate() {
            let hash = match (u.hash_on, &u.hash_key) {
                (_, _) if u.balance != gatehouse_model::Balance::ConsistentHash => HashSource::None,
                (None | Some(HashOn::Ip), _) => HashSource::ClientIp,
                (Some(HashOn::Header), Some(k)) => {
                    match HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()) {
                        Ok(h) => HashSource::Header(h),
                        Err(_) => {
                            errs.push(ConfigError::new(
                                format!("upstreams[{i}].hash_key"),
                                format!("\"{k}\" is not a valid header name"),
                            ));
                            continue;
                        }
                    }
                }
                (Some(HashOn::Cookie), Some(k)) => HashSource::Cookie(k.as_str().into()),
                (Some(HashOn::Query), Some(k)) => HashSource::Query(k.as_str().into()),
                (Some(_), None) => continue, // reported by validate
            };
            let mut list: Vec<(&str, u32)> = u
                .targets
                .iter()
                .map(|t| (t.address.as_str(), t.weight))
                .collect();
            if let Some(size) = u.subset_size {
                list.sort_unstable();
                let keep = subset(list.len(), size, node.node_index);
                list = keep
                    .into_iter()
                    .filter_map(|k| list.get(k).copied())
                    .collect();
            }
            match build_upstream(
                &u.name,
                &list,
                u.balance,
                hash,
                u.protocol,
                u.keepalive,
                u.health.as_ref().map(HealthPolicy::new),
                u.circuit_breaker.as_ref().map(breaker::Policy::new),
                previous,
                node,
            ) {
                Ok(e) => {
                    upstreams.insert(u.name.as_str().into(), Arc::new(e));
                }
                Err(m) => errs.push(ConfigError::new(format!("upstreams[{i}].targets"), m)),
            }
        }

        let mut services = Vec::with_capacity(config.services.len());
        let mut service_index = HashMap::new();
        for (i, s) in config.services.iter().enumerate() {
            let (upstream, path_prefix) = match (&s.upstream, &s.url) {
                (Some(u), _) => match upstreams.get(u.as_str()) {
                    Some(e) => (e.clone(), String::new()),
                    None => continue, // reported by validate
                },
                (None, Some(url)) => {
                    let Ok((target, prefix)) = parse_service_url(url) else {
                        continue;
                    };
                    // A URL service gets a private one-target upstream, named so that it
                    // cannot clash with a configured upstream (names have no ':').
                    let name = format!("service:{}", s.name);
                    match build_upstream(
                        &name,
                        &[(target.as_str(), 1)],
                        gatehouse_model::Balance::RoundRobin,
                        HashSource::None,
                        UpstreamProtocol::Http1,
                        Keepalive::default(),
                        None,
                        None,
                        previous,
                        node,
                    ) {
                        Ok(e) => {
                            let e = Arc::new(e);
                            upstreams.insert(name.into(), e.clone());
                            (e, prefix)
                        }
                        Err(m) => {
                            errs.push(ConfigError::new(format!("services[{i}].url"), m));
                            continue;
                        }
                    }
                }
                (None, None) => continue,
            };
            service_index.insert(s.name.as_str(), services.len());
            let budget = previous
                .and_then(|p| p.services.iter().find(|o| *o.name == *s.name))
                .map_or_else(Arc::default, |o| o.budget.clone());
            services.push(ServiceEntry {
                name: s.name.as_str().into(),
                upstream,
                path_prefix: path_prefix.into(),
                timeouts: s.timeouts.clone(),
                retries: s.retries,
                retry: s.retry.clone(),
                budget,
            });
        }

        let mut routes = Vec::with_capacity(config.routes.len());
        for (ri, r) in config.routes.iter().enumerate() {
            let Some(&service) = service_index.get(r.service.as_str()) else {
                continue; // reported by validate
            };
            let Some(svc) = services.get(service) else {
                continue;
            };
            let policy = r.retry.as_ref().or(svc.retry.as_ref());
            let retry = Retry::new(
                r.retries.unwrap_or(svc.retries),
                policy.unwrap_or(&RetryPolicy::default()),
                policy.is_some(),
                svc.budget.clone(),
            );
            let breaker = r.circuit_breaker.as_ref().map(|c| {
                let state = previous
                    .and_then(|p| p.route_named(&r.name))
                    .and_then(|o| o.breaker.as_ref())
                    .map_or_else(Arc::default, |(_, b)| b.clone());
                (breaker::Policy::new(c), state)
            });
            let old_route = previous.and_then(|p| p.route_named(&r.name));
            let fallback = match &r.fallback {
                None => None,
                Some(f) => {
                    let path = format!("routes[{ri}]");
                    let old = old_route.and_then(|o| o.fallback.as_ref());
                    let up = f
                        .upstream
                        .as_ref()
                        .and_then(|u| upstreams.get(u.as_str()).cloned());
                    match crate::fallback::Compiled::new(f, &path, up, old, resources) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            errs.push(e);
                            None
                        }
                    }
                }
            };
            let o = r.observability.clone().unwrap_or_default();
            let obs = &config.observability;
            let stats = o.metrics.unwrap_or(obs.metrics.enabled).then(|| {
                old_route.and_then(|o| o.stats.clone()).unwrap_or_else(|| {
                    Arc::new(crate::telemetry::Stats::new(
                        node.workers,
                        obs.metrics.buckets.len(),
                    ))
                })
            });
            let log_sample = match (&obs.access_log, o.access_log) {
                (None, _) | (_, Some(false)) => 0.0,
                (Some(l), _) => o.log_sample.unwrap_or(l.sample),
            };
            let observe = RouteObserve {
                log_below: (log_sample.clamp(0.0, 1.0) * (u32::MAX as f64 + 2.0)) as u64,
                trace: obs.tracing.is_some() && o.tracing.unwrap_or(true),
                server_timing: o.server_timing.unwrap_or(obs.server_timing),
            };
            routes.push(RouteEntry {
                stats,
                rejections: Box::new([]),
                observe,
                retry,
                breaker,
                fallback,
                name: r.name.as_str().into(),
                service,
                strip_prefix: r.strip_prefix,
                rewrite: r.rewrite.as_deref().map(parse_template),
                preserve_host: r.preserve_host,
                priority_class: match r.priority_class {
                    gatehouse_model::PriorityClass::Critical => {
                        gatehouse_plugin_api::PriorityClass::Critical
                    }
                    gatehouse_model::PriorityClass::Sheddable => {
                        gatehouse_plugin_api::PriorityClass::Sheddable
                    }
                },
                plugins: Chain::default(),
            });
        }
        let scopes: Vec<(&str, &str)> = config
            .routes
            .iter()
            .filter(|r| service_index.contains_key(r.service.as_str()))
            .map(|r| (r.name.as_str(), r.service.as_str()))
            .collect();
        for (route, chain) in routes.iter_mut().zip(chains(&config, &built, &scopes)) {
            route.plugins = chain;
            let old = previous.and_then(|p| p.route_named(&route.name));
            route.rejections = route
                .plugins
                .entries
                .iter()
                .map(|e| {
                    let key = e
                        .default
                        .as_ref()
                        .or_else(|| e.consumers.first().map(|(_, p)| p))
                        .map_or("", |p| p.key_class());
                    let count = old
                        .and_then(|o| o.rejections.iter().find(|j| j.plugin == e.kind))
                        .map_or_else(Arc::default, |j| j.count.clone());
                    let instance = e
                        .default_index
                        .and_then(|i| config.plugins.get(i))
                        .map_or_else(|| "consumers".to_string(), |p| p.scope());
                    crate::telemetry::Rejections {
                        plugin: e.kind,
                        instance: instance.into(),
                        key: key.into(),
                        count,
                    }
                })
                .collect();
        }
        let consumer_stats = if config.observability.metrics.consumers {
            config
                .consumers
                .iter()
                .map(|c| {
                    let kept = previous.and_then(|p| {
                        p.consumer_stats
                            .iter()
                            .find(|(n, _)| **n == *c.username)
                            .map(|(_, s)| s.clone())
                    });
                    let s = kept
                        .unwrap_or_else(|| Arc::new(crate::telemetry::Stats::new(node.workers, 0)));
                    (c.username.as_str().into(), s)
                })
                .collect()
        } else {
            Vec::new()
        };
        let telemetry = crate::telemetry::Telemetry::new(
            &config.observability,
            previous.map(|p| &p.telemetry),
            &mut errs,
            resources,
        );
        let debug_header = HeaderName::from_bytes(
            config
                .observability
                .debug_header
                .to_ascii_lowercase()
                .as_bytes(),
        )
        .unwrap_or_else(|_| HeaderName::from_static("x-gatehouse-debug"));

        gatehouse_model::sort_errors(&mut errs);
        errs.dedup();
        match router {
            Some(router) if errs.is_empty() => Ok(Snapshot {
                route_index: routes
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (r.name.clone(), i))
                    .collect(),
                router,
                routes,
                services,
                upstreams,
                via: config.node.via,
                trusted_proxies: config
                    .node
                    .trusted_proxies
                    .iter()
                    .filter_map(|p| gatehouse_model::parse_cidr(p).ok())
                    .collect(),
                drain_timeout: config.node.drain_timeout,
                plugin_instances,
                redis: env.redis,
                telemetry,
                consumer_stats,
                debug_header,
                config,
            }),
            _ => Err(errs),
        }
    }

    /// The route called `name`, if this snapshot has one.
    pub fn route_named(&self, name: &str) -> Option<&RouteEntry> {
        self.route_index.get(name).and_then(|&i| self.routes.get(i))
    }

    /// Every distinct target of this snapshot (for idle sweeping).
    pub fn targets(&self) -> impl Iterator<Item = &Arc<TargetState>> {
        self.upstreams.values().flat_map(|u| u.targets.iter())
    }
}

/// What plugins are built with: the node's Redis (reused from `previous` while its address
/// stays, so its connection and health survive reloads) and the cluster size.
fn plugin_env(config: &Config, previous: Option<&Snapshot>) -> (BuildEnv, Vec<ConfigError>) {
    let mut errs = Vec::new();
    let redis = config.redis.as_deref().and_then(|url| {
        let kept = previous
            .and_then(|p| p.redis.as_ref())
            .filter(|r| r.url() == url);
        match kept {
            Some(r) => Some(r.clone()),
            None => RedisStore::open(url)
                .map_err(|e| errs.push(ConfigError::new("redis", e)))
                .ok(),
        }
    });
    let env = BuildEnv {
        nodes: config.node.cluster_size,
        redis,
        scope: String::new(),
    };
    (env, errs)
}

/// Parses and checks a config file's text as completely as one pass can: structure,
/// references, and what compiling finds (regexes, plugin names), every problem reported.
pub fn parse_config(text: &str) -> Result<Config, gatehouse_model::ConfigErrors> {
    parse_config_for_node(text, None)
}

/// [`parse_config`], with the Redis address given on the command line (`--redis`), which
/// replaces the file's `redis:`.
pub fn parse_config_for_node(
    text: &str,
    redis: Option<&str>,
) -> Result<Config, gatehouse_model::ConfigErrors> {
    let with_node = |c: &Config| {
        let mut c = c.clone();
        if let Some(url) = redis {
            c.redis = Some(url.to_owned());
        }
        c
    };
    let config = gatehouse_model::parse_yaml_with(text, &|c| {
        let c = with_node(c);
        let (env, mut errs) = plugin_env(&c, None);
        let (_, _, plugin_errs) = build_instances(&c, None, &env);
        errs.extend(plugin_errs);
        if let Err(e) = Router::build(&c.routes) {
            errs.extend(e);
        }
        errs
    })?;
    Ok(with_node(&config))
}

#[allow(clippy::too_many_arguments)]
fn build_upstream(
    name: &str,
    list: &[(&str, u32)],
    balance: gatehouse_model::Balance,
    hash: HashSource,
    protocol: UpstreamProtocol,
    keepalive: Keepalive,
    health: Option<HealthPolicy>,
    breaker: Option<breaker::Policy>,
    previous: Option<&Snapshot>,
    node: NodeContext,
) -> Result<UpstreamEntry, String> {
    let old = previous.and_then(|p| p.upstreams.get(name));
    let mut targets = Vec::with_capacity(list.len());
    for (addr, _) in list {
        let reused = old.and_then(|o| {
            o.targets
                .iter()
                .find(|t| {
                    &*t.address == *addr && t.protocol == protocol && t.keepalive == keepalive
                })
                .cloned()
        });
        let state = match reused {
            Some(s) => s,
            None => Arc::new(TargetState::new(addr, protocol, keepalive, node.workers)?),
        };
        targets.push(state);
    }
    let addrs: Vec<&str> = list.iter().map(|(a, _)| *a).collect();
    let weights: Vec<u32> = list.iter().map(|(_, w)| *w).collect();
    Ok(UpstreamEntry {
        name: name.into(),
        balancer: Balancer::new(balance, &addrs, &weights),
        targets,
        hash,
        health,
        breaker,
    })
}

/// `/v2/{id}/x{*}` → [Literal("/v2/"), Param("id"), Literal("/x"), Rest].
pub fn parse_template(t: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        if open > 0 {
            out.push(Piece::Literal(rest[..open].into()));
        }
        let name = &rest[open + 1..open + close];
        out.push(if name == "*" {
            Piece::Rest
        } else {
            Piece::Param(name.into())
        });
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Literal(rest.into()));
    }
    out
}

/// The path (and query) to send upstream, or `None` when the client's can go as it is.
pub fn upstream_path(
    route: &RouteEntry,
    service: &ServiceEntry,
    m: &RouteMatch<'_, '_>,
    view: &RequestView<'_>,
    absolute_uri: bool,
) -> Option<String> {
    let path = view.path;
    if route.rewrite.is_none()
        && !route.strip_prefix
        && service.path_prefix.is_empty()
        && !absolute_uri
    {
        return None;
    }
    let mut out = String::with_capacity(service.path_prefix.len() + path.len() + 16);
    out.push_str(&service.path_prefix);
    let rest = path.get(m.matched_len..).unwrap_or("");
    if let Some(pieces) = &route.rewrite {
        for p in pieces {
            match p {
                Piece::Literal(s) => out.push_str(s),
                Piece::Param(name) => out.push_str(m.param(name).unwrap_or("")),
                Piece::Rest => out.push_str(rest.strip_prefix('/').unwrap_or(rest)),
            }
        }
    } else if route.strip_prefix {
        if !rest.starts_with('/') {
            out.push('/');
        }
        out.push_str(rest);
    } else {
        out.push_str(path);
    }
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = view.query {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
upstreams:
  - name: pool
    targets: [{address: "127.0.0.1:1001"}, {address: "127.0.0.1:1002"}]
services:
  - {name: s, upstream: pool}
  - {name: u, url: "http://127.0.0.1:1003/base"}
routes:
  - {name: r, service: s, paths: ["/a/{id}"], rewrite: "/b/{id}/c"}
  - {name: r2, service: u}
"#;

    const NODE: NodeContext = NodeContext {
        workers: 2,
        node_index: 0,
    };

    fn compile(yaml: &str, prev: Option<&Snapshot>) -> Snapshot {
        let config = match gatehouse_model::parse_yaml(yaml) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        match Snapshot::compile(config, prev, NODE) {
            Ok(s) => s,
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_plan_checks_resources_without_acquiring_them() {
        let dir = std::env::temp_dir().join(format!("gatehouse-plan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("access.log");
        let yaml = format!(
            "{CONFIG}observability:\n  access_log: {{path: \"{}\"}}\n  tracing: {{endpoint: \"http://127.0.0.1:9/v1/traces\"}}\n",
            log.display()
        );
        let planned = Snapshot::plan(parse_config(&yaml).unwrap(), None, NODE).unwrap();
        assert!(planned.telemetry.access_log.is_none(), "no writer");
        assert!(planned.telemetry.tracer.is_none(), "no exporter");
        assert!(!log.exists(), "no file");
        let compiled = Snapshot::compile(parse_config(&yaml).unwrap(), None, NODE).unwrap();
        assert!(compiled.telemetry.access_log.is_some());
        assert!(log.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn templates_parse() {
        assert_eq!(
            parse_template("/v2/{id}/x{*}"),
            vec![
                Piece::Literal("/v2/".into()),
                Piece::Param("id".into()),
                Piece::Literal("/x".into()),
                Piece::Rest
            ]
        );
    }

    #[test]
    fn reload_keeps_state_of_targets_that_stay() {
        let a = compile(CONFIG, None);
        let changed = CONFIG.replace("127.0.0.1:1002", "127.0.0.1:1009");
        let b = compile(&changed, Some(&a));
        let (ua, ub) = (&a.upstreams["pool"], &b.upstreams["pool"]);
        assert!(
            Arc::ptr_eq(&ua.targets[0], &ub.targets[0]),
            "kept target lost its state"
        );
        assert!(!Arc::ptr_eq(&ua.targets[1], &ub.targets[1]));
        assert!(Arc::ptr_eq(
            &a.upstreams["service:u"].targets[0],
            &b.upstreams["service:u"].targets[0]
        ));
        assert_eq!(&*b.services[1].path_prefix, "/base");
    }

    #[test]
    fn unknown_plugins_are_rejected() {
        let config =
            gatehouse_model::parse_yaml(&format!("{CONFIG}plugins:\n  - name: no-such-plugin\n"));
        let errs = match config.map(|c| Snapshot::compile(c, None, NODE)) {
            Ok(Err(e)) => e,
            _ => panic!("should be rejected"),
        };
        assert_eq!(
            errs[0].to_string(),
            "plugins[0].name: unknown plugin \"no-such-plugin\""
        );
    }
}
