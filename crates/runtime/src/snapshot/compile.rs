//! Snapshot compile as a sequence of stages over one [`Compiler`]: plugins, upstreams (with
//! the private ones of service and plugin URLs), services, routes, chains, consumers and
//! telemetry. Each stage reports its problems with their config paths; the previous snapshot
//! lends state (pools, counters, breakers) to what stays.

use super::{
    parse_template, HashSource, NodeContext, Resources, RouteEntry, RouteObserve, RouteProtocols,
    ServiceEntry, Snapshot, TargetSet, TargetSettings, UpstreamEntry,
};
use crate::balance::subset;
use crate::breaker;
use crate::connector::Connector;
use crate::consumers::IdentityHeaders;
use crate::discovery::{Found, Origin};
use crate::health::HealthPolicy;
use crate::plugins::{build_instances, chains, Built, Instances};
use crate::retry::Retry;
use crate::router::Router;
use crate::tls::CertIndex;
use gatehouse_model::{
    parse_service_url_with_scheme, Config, ConfigError, HashOn, Keepalive, RetryPolicy, Scheme,
    UpstreamProtocol, UpstreamTls,
};
use gatehouse_plugin_api::{BuildEnv, RedisStore, Registry};
use http::HeaderName;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

type Upstreams = HashMap<Box<str>, Arc<UpstreamEntry>>;

/// What every stage reads, and the problems found so far.
struct Compiler<'c> {
    config: &'c Config,
    previous: Option<&'c Snapshot>,
    node: NodeContext,
    resources: Resources,
    errs: Vec<ConfigError>,
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

/// The plan's snapshot: everything compiled, resources only checked.
pub(super) fn build(
    config: Config,
    previous: Option<&Snapshot>,
    node: NodeContext,
) -> Result<Snapshot, Vec<ConfigError>> {
    let resources = Resources::Check;
    let mut c = Compiler {
        config: &config,
        previous,
        node,
        resources,
        errs: gatehouse_model::validate(&config),
        changes: previous.map_or_else(
            || Arc::new(tokio::sync::watch::Sender::new(0)),
            |p| p.changes.clone(),
        ),
    };
    let (env, env_errs) = plugin_env(&config, config.redis.as_deref(), previous);
    c.errs.extend(env_errs);
    let prev_instances = previous.map(|p| &p.plugin_instances);
    let (plugin_instances, built, plugin_errs) =
        build_instances(&config, node.registry, prev_instances, &env);
    c.errs.extend(plugin_errs);
    let router = Router::build(&config.routes)
        .map_err(|e| c.errs.extend(e))
        .ok();
    let mut upstreams = c.upstreams();
    c.plugin_urls(&plugin_instances, &mut upstreams);
    let services = c.services(&mut upstreams);
    let mut routes = c.routes(&services, &upstreams);
    c.chains(&mut routes, &built, &services);
    let (consumers, consumer_errs) = crate::consumers::index(&config, node.registry);
    c.errs.extend(consumer_errs);
    let consumer_stats = c.consumer_stats();
    let certificates = CertIndex::compile(&config.certificates, &mut c.errs);
    crate::tls::server::check_listeners(&config.listen, &mut c.errs);
    let telemetry = crate::telemetry::Telemetry::new(
        &config.observability,
        previous.map(|p| &p.telemetry),
        &mut c.errs,
        resources,
    );
    let (mut errs, changes) = (c.errs, c.changes);
    gatehouse_model::sort_errors(&mut errs);
    errs.dedup();
    let (Some(router), true) = (router, errs.is_empty()) else {
        return Err(errs);
    };
    let color_header =
        HeaderName::from_bytes(config.node.color_header.to_ascii_lowercase().as_bytes())
            .unwrap_or_else(|_| HeaderName::from_static(gatehouse_model::DEFAULT_COLOR_HEADER));
    let debug_header = HeaderName::from_bytes(
        config
            .observability
            .debug_header
            .to_ascii_lowercase()
            .as_bytes(),
    )
    .unwrap_or_else(|_| HeaderName::from_static("x-gatehouse-debug"));
    let plugins = built
        .iter()
        .filter_map(|(i, p)| {
            let spec = config.plugins.get(*i)?;
            Some((spec.name.as_str().into(), spec.scope().into(), p.clone()))
        })
        .collect();
    Ok(Snapshot {
        plugins,
        route_index: routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), i))
            .collect(),
        router,
        routes,
        services: services.entries,
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
        consumers: Arc::new(consumers),
        certificates: Arc::new(certificates),
        changes,
        telemetry,
        consumer_stats,
        debug_header,
        color_header,
        config,
    })
}

/// The compiled services, and their indices by name.
struct Services<'c> {
    entries: Vec<ServiceEntry>,
    index: HashMap<&'c str, usize>,
}

impl<'c> Compiler<'c> {
    /// The configured upstreams, subset for this node.
    fn upstreams(&mut self) -> Upstreams {
        let mut upstreams = Upstreams::new();
        for (i, u) in self.config.upstreams.iter().enumerate() {
            let Some(hash) = self.hash_source(i, u) else {
                continue;
            };
            if let Some(etcd) = u.discovery.as_ref().and_then(|d| d.etcd.as_ref()) {
                if let Err((field, m)) = crate::discovery::etcd::check(etcd) {
                    let path = match field {
                        "tls" => format!("upstreams[{i}].discovery.etcd.tls"),
                        f => format!("upstreams[{i}].discovery.etcd.tls.{f}"),
                    };
                    self.errs.push(ConfigError::new(path, m));
                }
            }
            let statics: Vec<Found> = u.targets.iter().map(configured).collect();
            // What discovery found for this upstream before the reload keeps serving; the
            // discovery task applies its newest answers right after the swap.
            let dynamic: Vec<Found> = self
                .previous
                .and_then(|p| p.upstreams.get(u.name.as_str()))
                .map(|o| o.dynamic().to_vec())
                .unwrap_or_default();
            let all = super::targets::merge(&statics, &dynamic);
            let mut plain: Vec<&Found> = all
                .iter()
                .copied()
                .filter(|f| color_of(f).is_none())
                .collect();
            let subset_rule = u.subset_size.map(|size| (size, self.node.node_index));
            if let Some((size, node)) = subset_rule {
                plain.sort_unstable_by(|a, b| a.address.cmp(&b.address));
                let keep = subset(plain.len(), size, node);
                plain = keep
                    .into_iter()
                    .filter_map(|k| plain.get(k).copied())
                    .collect();
            }
            let list: Vec<(&str, u32)> = plain
                .iter()
                .map(|f| (f.address.as_str(), f.weight))
                .collect();
            let origins: Vec<Origin> = plain.iter().map(|f| f.origin).collect();
            let connector = match connector(u.scheme, u.tls.as_ref(), u.protocol) {
                Ok(c) => c,
                Err((field, m)) => {
                    let path = match field {
                        "tls" => format!("upstreams[{i}].tls"),
                        f => format!("upstreams[{i}].tls.{f}"),
                    };
                    self.errs.push(ConfigError::new(path, m));
                    continue;
                }
            };
            let mut colors: Vec<(&str, Vec<&Found>)> = Vec::new();
            for f in &all {
                let Some(c) = color_of(f) else { continue };
                match colors.iter_mut().find(|(name, _)| name == c) {
                    Some((_, l)) => l.push(f),
                    None => colors.push((c.as_str(), vec![f])),
                }
            }
            let spec = UpstreamSpec {
                name: &u.name,
                list,
                origins,
                balance: u.balance,
                hash,
                connector,
                protocol: u.protocol,
                keepalive: u.keepalive,
                health: u.health.as_ref().map(HealthPolicy::new),
                set_aside: u
                    .health
                    .as_ref()
                    .map_or(gatehouse_model::DEFAULT_SET_ASIDE, |h| {
                        h.set_aside_on_connect_failure
                    }),
                breaker: u.circuit_breaker.as_ref().map(breaker::Policy::new),
            };
            match self.colored(spec, &colors, &mut upstreams) {
                Ok(e) => {
                    let e = e.with_sources(statics.clone(), dynamic.clone(), subset_rule);
                    upstreams.insert(u.name.as_str().into(), Arc::new(e));
                }
                Err(m) => self
                    .errs
                    .push(ConfigError::new(format!("upstreams[{i}].targets"), m)),
            }
        }
        upstreams
    }

    /// The upstream of `spec`, with an upstream of its own (`{name}@{color}`, also listed in
    /// `upstreams` for health checks and metrics) for each colour's targets.
    fn colored(
        &self,
        spec: UpstreamSpec<'_>,
        colors: &[(&str, Vec<&Found>)],
        upstreams: &mut Upstreams,
    ) -> Result<UpstreamEntry, String> {
        let mut variants = Vec::with_capacity(colors.len());
        for (color, list) in colors {
            let value = http::HeaderValue::from_str(color)
                .map_err(|_| format!("color \"{color}\" cannot be a header value"))?;
            let name = format!("{}@{color}", spec.name);
            let variant = UpstreamSpec {
                name: &name,
                list: list
                    .iter()
                    .map(|f| (f.address.as_str(), f.weight))
                    .collect(),
                origins: list.iter().map(|f| f.origin).collect(),
                hash: spec.hash.clone(),
                connector: spec.connector.clone(),
                health: spec.health.clone(),
                breaker: spec.breaker.clone(),
                ..spec
            }
            .build(self)?;
            let variant = Arc::new(variant);
            upstreams.insert(name.into(), variant.clone());
            variants.push((value, variant));
        }
        let mut e = spec.build(self)?;
        e.colors = variants.into();
        Ok(e)
    }

    /// Where upstream `i`'s consistent-hash key comes from; `None` when that is wrong (and
    /// reported).
    fn hash_source(&mut self, i: usize, u: &gatehouse_model::Upstream) -> Option<HashSource> {
        Some(match (u.hash_on, &u.hash_key) {
            (_, _) if u.balance != gatehouse_model::Balance::ConsistentHash => HashSource::None,
            (None | Some(HashOn::Ip), _) => HashSource::ClientIp,
            (Some(HashOn::Header), Some(k)) => {
                match HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()) {
                    Ok(h) => HashSource::Header(h),
                    Err(_) => {
                        self.errs.push(ConfigError::new(
                            format!("upstreams[{i}].hash_key"),
                            format!("\"{k}\" is not a valid header name"),
                        ));
                        return None;
                    }
                }
            }
            (Some(HashOn::Cookie), Some(k)) => HashSource::Cookie(k.as_str().into()),
            (Some(HashOn::Query), Some(k)) => HashSource::Query(k.as_str().into()),
            (Some(_), None) => return None, // reported by validate
        })
    }

    /// A private one-target upstream for every URL a plugin calls (`url:host:port`), so its
    /// sub-requests get a pool that lives across reloads like any other.
    fn plugin_urls(&mut self, instances: &Instances, upstreams: &mut Upstreams) {
        for (_, named) in instances.values() {
            for r in named.iter() {
                let Some(authority) = r.url_authority() else {
                    continue;
                };
                if upstreams.contains_key(r.name()) {
                    continue;
                }
                match UpstreamSpec::single(r.name(), authority).build(self) {
                    Ok(e) => {
                        upstreams.insert(r.name().into(), Arc::new(e));
                    }
                    Err(m) => self.errs.push(ConfigError::new("plugins", m)),
                }
            }
        }
    }

    /// The services, each with its upstream (a URL service gets a private one).
    fn services(&mut self, upstreams: &mut Upstreams) -> Services<'c> {
        let config = self.config;
        let mut entries = Vec::with_capacity(config.services.len());
        let mut index = HashMap::new();
        for (i, s) in config.services.iter().enumerate() {
            let named = s.upstream.as_deref().or(s
                .blue_green
                .as_ref()
                .map(gatehouse_model::BlueGreen::active_upstream));
            let (upstream, path_prefix) = match (named, &s.url) {
                (Some(u), _) => match upstreams.get(u) {
                    Some(e) => (e.clone(), String::new()),
                    None => continue, // reported by validate
                },
                (None, Some(url)) => {
                    let Ok((scheme, target, prefix)) = parse_service_url_with_scheme(url) else {
                        continue;
                    };
                    // Named so that it cannot clash with a configured upstream (names have
                    // no ':').
                    let name = format!("service:{}", s.name);
                    let mut spec = UpstreamSpec::single(&name, &target);
                    match connector(scheme, None, UpstreamProtocol::Http1) {
                        Ok(c) => spec.connector = c,
                        Err((_, m)) => {
                            self.errs
                                .push(ConfigError::new(format!("services[{i}].url"), m));
                            continue;
                        }
                    }
                    match spec.build(self) {
                        Ok(e) => {
                            let e = Arc::new(e);
                            upstreams.insert(name.into(), e.clone());
                            (e, prefix)
                        }
                        Err(m) => {
                            self.errs
                                .push(ConfigError::new(format!("services[{i}].url"), m));
                            continue;
                        }
                    }
                }
                (None, None) => continue,
            };
            index.insert(s.name.as_str(), entries.len());
            let budget = self
                .previous
                .and_then(|p| p.services.iter().find(|o| *o.name == *s.name))
                .map_or_else(Arc::default, |o| o.budget.clone());
            entries.push(ServiceEntry {
                name: s.name.as_str().into(),
                upstream,
                path_prefix: path_prefix.into(),
                timeouts: s.timeouts.clone(),
                retries: s.retries,
                retry: s.retry.clone(),
                budget,
            });
        }
        Services { entries, index }
    }

    /// The routes whose service compiled, with their policies (plugins come after).
    fn routes(&mut self, services: &Services<'_>, upstreams: &Upstreams) -> Vec<RouteEntry> {
        let config = self.config;
        let mut routes = Vec::with_capacity(config.routes.len());
        for (ri, r) in config.routes.iter().enumerate() {
            let Some(&service) = services.index.get(r.service.as_str()) else {
                continue; // reported by validate
            };
            let Some(svc) = services.entries.get(service) else {
                continue;
            };
            let policy = r.retry.as_deref().or(svc.retry.as_ref());
            let retry = Retry::new(
                r.retries.unwrap_or(svc.retries),
                policy.unwrap_or(&RetryPolicy::default()),
                policy.is_some(),
                svc.budget.clone(),
            );
            let old_route = self.previous.and_then(|p| p.route_named(&r.name));
            let breaker = r.circuit_breaker.as_ref().map(|c| {
                let state = old_route
                    .and_then(|o| o.breaker.as_deref())
                    .map_or_else(Arc::default, |(_, b)| b.clone());
                Box::new((breaker::Policy::new(c), state))
            });
            let fallback = r.fallback.as_ref().and_then(|f| {
                let old = old_route.and_then(|o| o.fallback.as_deref());
                let up = f
                    .upstream
                    .as_ref()
                    .and_then(|u| upstreams.get(u.as_str()).cloned());
                let path = format!("routes[{ri}]");
                crate::fallback::Compiled::new(f, &path, up, old, self.resources)
                    .map(Box::new)
                    .map_err(|e| self.errs.push(e))
                    .ok()
            });
            let transcode = r.grpc_transcode.as_deref().and_then(|t| {
                let p = format!("routes[{ri}].grpc_transcode");
                if !svc.upstream.settings.protocol.is_h2() {
                    self.errs.push(ConfigError::new(
                        p.clone(),
                        "the service's upstream must speak gRPC: protocol h2 or h2c",
                    ));
                }
                crate::transcode::Transcoder::compile(t)
                    .map(Arc::new)
                    .map_err(|(f, m)| self.errs.push(ConfigError::new(format!("{p}.{f}"), m)))
                    .ok()
            });
            let rewrite_regex = r.rewrite_regex.as_ref().and_then(|rr| {
                regex::Regex::new(&rr.regex)
                    .map(|re| Box::new((re, rr.replace.as_str().into())))
                    .map_err(|e| {
                        self.errs.push(ConfigError::new(
                            format!("routes[{ri}].rewrite_regex.regex"),
                            format!("not a valid regex: {e}"),
                        ))
                    })
                    .ok()
            });
            routes.push(RouteEntry {
                rewrite_regex,
                variants: Box::default(),
                transcode,
                stats: self.route_stats(r, old_route),
                rejections: Box::new([]),
                observe: self.route_observe(r),
                retry,
                breaker,
                fallback,
                name: r.name.as_str().into(),
                service,
                strip_prefix: r.strip_prefix,
                rewrite: r.rewrite.as_deref().map(parse_template),
                preserve_host: r.preserve_host,
                protocols: RouteProtocols::of(r),
                priority_class: match r.priority_class {
                    gatehouse_model::PriorityClass::Critical => {
                        gatehouse_plugin_api::PriorityClass::Critical
                    }
                    gatehouse_model::PriorityClass::Sheddable => {
                        gatehouse_plugin_api::PriorityClass::Sheddable
                    }
                },
                plugins: Default::default(),
            });
        }
        routes
    }

    /// A route's request statistics (kept across reloads by name), when metrics are on for it.
    fn route_stats(
        &self,
        r: &gatehouse_model::Route,
        old: Option<&RouteEntry>,
    ) -> Option<Arc<crate::telemetry::Stats>> {
        let o = r.observability.clone().unwrap_or_default();
        let obs = &self.config.observability;
        o.metrics.unwrap_or(obs.metrics.enabled).then(|| {
            old.and_then(|o| o.stats.clone()).unwrap_or_else(|| {
                Arc::new(crate::telemetry::Stats::new(
                    self.node.workers,
                    obs.metrics.buckets.len(),
                ))
            })
        })
    }

    /// What a route records: log sampling, tracing, Server-Timing.
    fn route_observe(&self, r: &gatehouse_model::Route) -> RouteObserve {
        let o = r.observability.clone().unwrap_or_default();
        let obs = &self.config.observability;
        let log_sample = match (&obs.access_log, o.access_log) {
            (None, _) | (_, Some(false)) => 0.0,
            (Some(l), _) => o.log_sample.unwrap_or(l.sample),
        };
        RouteObserve {
            log_below: (log_sample.clamp(0.0, 1.0) * (u32::MAX as f64 + 2.0)) as u64,
            trace: obs.tracing.is_some() && o.tracing.unwrap_or(true),
            server_timing: o.server_timing.unwrap_or(obs.server_timing),
        }
    }

    /// Each route's plugin chain, and a rejection counter per chain entry (kept across
    /// reloads by route and plugin).
    fn chains(&mut self, routes: &mut [RouteEntry], built: &Built, services: &Services<'_>) {
        let config = self.config;
        let scopes: Vec<(&str, &str)> = config
            .routes
            .iter()
            .filter(|r| services.index.contains_key(r.service.as_str()))
            .map(|r| (r.name.as_str(), r.service.as_str()))
            .collect();
        let identity = match IdentityHeaders::compile(&config.node.consumer_headers) {
            Ok(h) => Arc::new(h),
            Err(e) => {
                self.errs.extend(e);
                Arc::default()
            }
        };
        let all = chains(config, self.node.registry, built, &scopes, &identity);
        for (route, chain) in routes.iter_mut().zip(all) {
            route.plugins = chain;
            let old = self.previous.and_then(|p| p.route_named(&route.name));
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
            route.variants = self.variant_stats(route, old);
        }
    }

    /// Statistics for each release variant the route's plugins name, kept across reloads
    /// by route and variant name.
    fn variant_stats(
        &self,
        route: &RouteEntry,
        old: Option<&RouteEntry>,
    ) -> Box<[(Box<str>, Arc<crate::telemetry::Stats>)]> {
        let mut out: Vec<(Box<str>, Arc<crate::telemetry::Stats>)> = Vec::new();
        let instances = route
            .plugins
            .entries
            .iter()
            .flat_map(|e| e.default.iter().chain(e.consumers.iter().map(|(_, p)| p)));
        for name in instances.flat_map(|p| p.variants()) {
            if out.iter().any(|(n, _)| **n == *name) {
                continue;
            }
            let stats = old
                .and_then(|o| o.variant(&name).and_then(|i| o.variants.get(i)))
                .map_or_else(
                    || {
                        Arc::new(crate::telemetry::Stats::new(
                            self.node.workers,
                            self.config.observability.metrics.buckets.len(),
                        ))
                    },
                    |(_, s)| s.clone(),
                );
            out.push((name.as_ref().into(), stats));
        }
        out.into()
    }

    /// Per-consumer request counts, kept across reloads by username (empty unless
    /// `observability.metrics.consumers`).
    fn consumer_stats(&self) -> Vec<(Box<str>, Arc<crate::telemetry::Stats>)> {
        if !self.config.observability.metrics.consumers {
            return Vec::new();
        }
        self.config
            .consumers
            .iter()
            .map(|c| {
                let kept = self.previous.and_then(|p| {
                    p.consumer_stats
                        .iter()
                        .find(|(n, _)| **n == *c.username)
                        .map(|(_, s)| s.clone())
                });
                let s = kept.unwrap_or_else(|| {
                    Arc::new(crate::telemetry::Stats::new(self.node.workers, 0))
                });
                (c.username.as_str().into(), s)
            })
            .collect()
    }
}

/// What plugins are built with: the node's Redis (reused from `previous` while its address
/// stays, so its connection and health survive reloads), the cluster size, and the names of
/// the upstreams they may name.
/// What plugins are built with: the node's Redis at `redis` (the file's, or the command
/// line's), the upstream names, the cluster size.
fn plugin_env(
    config: &Config,
    redis: Option<&str>,
    previous: Option<&Snapshot>,
) -> (BuildEnv, Vec<ConfigError>) {
    let mut errs = Vec::new();
    let redis = redis.and_then(|url| {
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

    let names = config.upstreams.iter().map(|u| u.name.as_str());
    let env = BuildEnv::new(config.node.cluster_size, redis, names)
        .with_services(config.services.iter().map(|s| s.name.as_str()));
    let env = match HeaderName::from_bytes(config.node.color_header.to_ascii_lowercase().as_bytes())
    {
        Ok(h) => env.with_color_header(h),
        Err(_) => env,
    };
    (env, errs)
}

/// Parses and checks a config file's text as completely as one pass can: structure,
/// references, and what compiling finds (plugin configs, credentials; regexes and path
/// conflicts when there were other problems), every problem reported at once. The route
/// table is only built here for a config that is wrong anyway: a right one is compiled by
/// the caller next, which reports the same, and building it twice cost a second router at
/// 100 000 routes.
pub fn parse_config(
    text: &str,
    registry: &Registry,
) -> Result<Config, gatehouse_model::ConfigErrors> {
    parse_config_for_node(text, registry, None)
}

/// [`parse_config`], with the Redis address given on the command line (`--redis`), which
/// replaces the file's `redis:`.
pub fn parse_config_for_node(
    text: &str,
    registry: &Registry,
    redis: Option<&str>,
) -> Result<Config, gatehouse_model::ConfigErrors> {
    let mut config = gatehouse_model::parse_yaml_with(text, &|c, wrong| {
        let (env, mut errs) = plugin_env(c, redis.or(c.redis.as_deref()), None);
        let (_, _, plugin_errs) = build_instances(c, registry, None, &env);
        errs.extend(plugin_errs);
        errs.extend(crate::consumers::index(c, registry).1);
        if wrong {
            if let Err(e) = Router::build(&c.routes) {
                errs.extend(e);
            }
        }
        errs
    })?;
    if let Some(url) = redis {
        config.redis = Some(url.to_owned());
    }
    Ok(config)
}

/// How an upstream's targets are dialled: TLS (with its settings compiled) for `https`.
fn connector(
    scheme: Scheme,
    tls: Option<&UpstreamTls>,
    protocol: UpstreamProtocol,
) -> Result<Connector, (&'static str, String)> {
    match scheme {
        Scheme::Http => Ok(Connector::Tcp),
        Scheme::Https => {
            let tls = crate::connector::Tls::new(tls, protocol.is_h2())?;
            Ok(Connector::Tls(Arc::new(tls)))
        }
    }
}

/// The colour a target serves (its `color` label), if any.
fn color_of(f: &Found) -> Option<&String> {
    f.labels.get(gatehouse_model::COLOR_LABEL)
}

/// A configured target, as the merge with discovered ones sees it.
fn configured(t: &gatehouse_model::Target) -> Found {
    Found {
        address: t.address.clone(),
        weight: t.weight,
        labels: t.labels.clone(),
        metadata: None,
        origin: Origin::Config,
        from: None,
    }
}

/// One upstream as compiled: its targets and how they are used.
struct UpstreamSpec<'a> {
    name: &'a str,
    list: Vec<(&'a str, u32)>,
    /// Where each of `list` came from.
    origins: Vec<Origin>,
    balance: gatehouse_model::Balance,
    hash: HashSource,
    connector: Connector,
    protocol: UpstreamProtocol,
    keepalive: Keepalive,
    health: Option<HealthPolicy>,
    set_aside: Duration,
    breaker: Option<breaker::Policy>,
}

impl<'a> UpstreamSpec<'a> {
    /// A private plain HTTP/1.1 upstream of one target (service and plugin URLs).
    fn single(name: &'a str, target: &'a str) -> UpstreamSpec<'a> {
        UpstreamSpec {
            name,
            list: vec![(target, 1)],
            origins: vec![Origin::Config],
            balance: gatehouse_model::Balance::RoundRobin,
            hash: HashSource::None,
            connector: Connector::Tcp,
            protocol: UpstreamProtocol::Http1,
            keepalive: Keepalive::default(),
            health: None,
            set_aside: Duration::ZERO,
            breaker: None,
        }
    }

    /// The upstream, reusing the target state (pools, counters) of `previous`'s upstream of
    /// the same name for targets whose address and connection settings stay.
    fn build(self, c: &Compiler<'_>) -> Result<UpstreamEntry, String> {
        let old = c.previous.and_then(|p| p.upstreams.get(self.name));
        let settings = TargetSettings {
            balance: self.balance,
            connector: self.connector,
            protocol: self.protocol,
            keepalive: self.keepalive,
            workers: c.node.workers,
        };
        let mut set = TargetSet::build(&self.list, &settings, old.map(|o| o.targets()).as_deref())?;
        if self.origins.len() == set.targets.len() {
            set.origins = self.origins;
        }
        Ok(UpstreamEntry::new(
            self.name,
            set,
            settings,
            self.hash,
            self.health,
            self.breaker,
            c.changes.clone(),
        )
        .with_set_aside(self.set_aside))
    }
}
