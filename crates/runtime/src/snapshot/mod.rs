//! Compiles a [`Config`] into the immutable [`Snapshot`] requests read: everything a request
//! needs is resolved here (service and upstream by index, rewrite templates parsed, header
//! names built), and target state is carried over from the previous snapshot.

mod compile;
mod targets;

pub use compile::{parse_config, parse_config_for_node};
pub use targets::{AllTargetsDown, HashSource, TargetSet, TargetSettings, UpstreamEntry};

use crate::breaker;
use crate::plugins::{Chain, Instances};
use crate::retry::{Budget, Retry};
use crate::router::{RequestView, RouteMatch, Router};
use crate::upstream::TargetState;
use gatehouse_model::{Config, ConfigError, RetryPolicy, Timeouts};
use gatehouse_plugin_api::{ConsumerIndex, RedisStore, Registry};
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

/// A config checked and compiled without resources: what validation and dry runs look at.
/// It cannot serve until [`Plan::activate`] acquires what it names.
pub struct Plan {
    snapshot: Snapshot,
}

impl Plan {
    /// The compiled config, to inspect (routes, chains, upstreams): it holds no access log
    /// writer, no exporter, and no fallback body files.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Acquires what the plan names: the access log's file and writer and the trace exporter
    /// (the previous snapshot's, while their settings stay), and fallback body files. `Err`
    /// names what could not be had; nothing is left running.
    pub fn activate(self, previous: Option<&Snapshot>) -> Result<Snapshot, Vec<ConfigError>> {
        let mut snap = self.snapshot;
        let mut errs = Vec::new();
        snap.telemetry = crate::telemetry::Telemetry::new(
            &snap.config.observability,
            previous.map(|p| &p.telemetry),
            &mut errs,
            Resources::Acquire,
        );
        for (i, r) in snap.config.routes.iter().enumerate() {
            let (Some(f), Some(&at)) = (&r.fallback, snap.route_index.get(r.name.as_str())) else {
                continue;
            };
            if let Some(compiled) = snap.routes.get_mut(at).and_then(|e| e.fallback.as_mut()) {
                if let Err(e) = compiled.read_body_file(f, &format!("routes[{i}]")) {
                    errs.push(e);
                }
            }
        }
        if errs.is_empty() {
            Ok(snap)
        } else {
            Err(errs)
        }
    }
}

/// An enabled plugin instance: its kind, its scope (`route=api`), and the instance.
pub type ScopedPlugin = (Box<str>, Box<str>, Arc<dyn gatehouse_plugin_api::Plugin>);

/// Node facts that are not in the file, fixed for the life of the process.
#[derive(Debug, Clone, Copy)]
pub struct NodeContext {
    pub workers: usize,
    pub node_index: u32,
    /// The plugin kinds configs may use.
    pub registry: &'static Registry,
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
    /// The enabled instances in config order: kind, scope (`route=api`) and instance, for
    /// their metrics and reports.
    pub plugins: Box<[ScopedPlugin]>,
    /// The node's Redis, kept across reloads while its address stays.
    pub redis: Option<Arc<RedisStore>>,
    /// The consumers and their credentials, for authentication plugins.
    pub consumers: Arc<ConsumerIndex>,
    /// The certificates TLS listeners serve, by SNI (the node's resolver is pointed at this
    /// snapshot's index when it is swapped in).
    pub certificates: Arc<crate::tls::CertIndex>,
    /// Told of every change of targets (a reload, or one upstream's targets replaced), so
    /// health checks follow without polling. One channel for the life of the gateway.
    pub changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Metric bounds, node-wide counters, the access log writer and the trace exporter.
    pub telemetry: crate::telemetry::Telemetry,
    /// Per-consumer request counts, by consumer index (empty unless
    /// `observability.metrics.consumers`).
    pub consumer_stats: Vec<(Box<str>, Arc<crate::telemetry::Stats>)>,
    /// The header that asks for a decision trace.
    pub debug_header: HeaderName,
    /// The header that carries a request's colour (`node.color_header`).
    pub color_header: HeaderName,
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
    /// `rewrite_regex`: the regex and its replacement, applied to the upstream path last.
    pub rewrite_regex: Option<Box<(regex::Regex, Box<str>)>>,
    pub preserve_host: bool,
    /// Which of plain HTTP and HTTPS the route takes.
    pub protocols: RouteProtocols,
    /// HTTP/JSON to gRPC transcoding, when the route has it.
    pub transcode: Option<Arc<crate::transcode::Transcoder>>,
    pub priority_class: gatehouse_plugin_api::PriorityClass,
    /// The plugins that run for this route, resolved across scopes.
    pub plugins: Chain,
    /// The route's retry policy (its own, else its service's, else the default).
    pub retry: Retry,
    /// The route's circuit breaker; its state is kept across reloads by route name. Boxed,
    /// like the fallback: few routes have one, and every route would pay its size.
    pub breaker: Option<Box<(breaker::Policy, Arc<breaker::Breaker>)>>,
    /// What the route answers when its upstream fails.
    pub fallback: Option<Box<crate::fallback::Compiled>>,
    /// Its request statistics (None: metrics off for it), kept across reloads by name.
    pub stats: Option<Arc<crate::telemetry::Stats>>,
    /// Rejection counters, one per entry of `plugins`.
    pub rejections: Box<[crate::telemetry::Rejections]>,
    pub observe: RouteObserve,
    /// Statistics per release variant its plugins name (`traffic-split` rules), kept
    /// across reloads by route and variant name; empty for most routes.
    pub variants: Box<[(Box<str>, Arc<crate::telemetry::Stats>)]>,
}

impl RouteEntry {
    /// The statistics of variant `name`, if the route's plugins declared it.
    pub fn variant(&self, name: &str) -> Option<usize> {
        self.variants.iter().position(|(n, _)| &**n == name)
    }
}

/// Which protocols a route takes requests over, and what a plain-HTTP request to an
/// HTTPS-only route gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteProtocols {
    pub http: bool,
    pub https: bool,
    /// 426, 403, or a redirect code (301, 302, 307, 308).
    pub https_redirect: u16,
}

impl RouteProtocols {
    pub fn of(r: &gatehouse_model::Route) -> Self {
        use gatehouse_model::RouteProtocol;
        let any = r.protocols.is_empty();
        Self {
            http: any || r.protocols.contains(&RouteProtocol::Http),
            https: any || r.protocols.contains(&RouteProtocol::Https),
            https_redirect: r.https_redirect_status_code,
        }
    }
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

impl Snapshot {
    /// Compiles `config` into a snapshot to serve: [`Snapshot::plan`], then
    /// [`Plan::activate`]. On error nothing is built and the caller keeps serving the
    /// previous snapshot.
    pub fn compile(
        config: Config,
        previous: Option<&Snapshot>,
        node: NodeContext,
    ) -> Result<Snapshot, Vec<ConfigError>> {
        Self::plan(config, previous, node)?.activate(previous)
    }

    /// Checks and compiles `config` with no side effect: no file is opened or created, no
    /// thread started, no socket opened (it may look at files and directories). What
    /// `gatehouse validate`, admin dry runs and `explain` use. State of what stays (pools,
    /// counters, plugin instances) is lent by `previous`, as a compile would.
    pub fn plan(
        config: Config,
        previous: Option<&Snapshot>,
        node: NodeContext,
    ) -> Result<Plan, Vec<ConfigError>> {
        compile::build(config, previous, node).map(|snapshot| Plan { snapshot })
    }

    /// The route called `name`, if this snapshot has one.
    pub fn route_named(&self, name: &str) -> Option<&RouteEntry> {
        self.route_index.get(name).and_then(|&i| self.routes.get(i))
    }

    /// Every target this snapshot's upstreams use now (for idle sweeping).
    pub fn targets(&self) -> Vec<Arc<TargetState>> {
        self.upstreams
            .values()
            .flat_map(|u| u.targets().targets.clone())
            .collect()
    }
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
        && route.rewrite_regex.is_none()
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
    if let Some(rr) = &route.rewrite_regex {
        let (re, replace) = &**rr;
        if let std::borrow::Cow::Owned(o) = re.replace(&out, &**replace) {
            out = o;
        }
    }
    if out.is_empty() || !out.starts_with('/') {
        out.insert(0, '/');
    }
    // A rewrite template may carry its own query (`/status?version={ver}`): the client's
    // arguments follow the template's, in one query string.
    if let Some(q) = view.query {
        let merged = route.rewrite.is_some() && out.contains('?');
        if !(merged && q.is_empty()) {
            out.push(if merged { '&' } else { '?' });
            out.push_str(q);
        }
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

    fn node() -> NodeContext {
        NodeContext {
            workers: 2,
            node_index: 0,
            registry: gatehouse_plugins::registry(),
        }
    }

    fn compile(yaml: &str, prev: Option<&Snapshot>) -> Snapshot {
        let config = match gatehouse_model::parse_yaml(yaml) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        match Snapshot::compile(config, prev, node()) {
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
        let planned = Snapshot::plan(
            parse_config(&yaml, gatehouse_plugins::registry()).unwrap(),
            None,
            node(),
        )
        .unwrap();
        assert!(
            planned.snapshot().telemetry.access_log.is_none(),
            "no writer"
        );
        assert!(planned.snapshot().telemetry.tracer.is_none(), "no exporter");
        assert!(!log.exists(), "no file");
        let compiled = Snapshot::compile(
            parse_config(&yaml, gatehouse_plugins::registry()).unwrap(),
            None,
            node(),
        )
        .unwrap();
        assert!(compiled.telemetry.access_log.is_some());
        assert!(log.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_plan_only_checks_fallback_files_and_activate_reads_them() {
        let dir = std::env::temp_dir().join(format!("gh-plan-fallback-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("degraded.json");
        std::fs::write(&file, "{\"items\":[]}").unwrap();
        let yaml = |path: &std::path::Path| {
            CONFIG.replace(
                "  - {name: r2, service: u}",
                &format!(
                    "  - name: r2\n    service: u\n    fallback: {{static: {{status: 200, body_file: \"{}\"}}}}",
                    path.display()
                ),
            )
        };
        let reg = gatehouse_plugins::registry();
        let plan = Snapshot::plan(parse_config(&yaml(&file), reg).unwrap(), None, node()).unwrap();
        let body = |s: &Snapshot| {
            let f = s.route_named("r2").unwrap().fallback.as_ref().unwrap();
            f.static_response.as_ref().unwrap().2.clone()
        };
        assert!(body(plan.snapshot()).is_empty(), "the plan did not read it");
        let snap = plan.activate(None).unwrap();
        assert_eq!(&body(&snap)[..], b"{\"items\":[]}");
        // A file that is not there is the plan's error, with its path.
        let gone = dir.join("gone.json");
        let errs = match Snapshot::plan(parse_config(&yaml(&gone), reg).unwrap(), None, node()) {
            Err(e) => e,
            Ok(_) => panic!("a missing body_file passed the plan"),
        };
        assert_eq!(errs[0].path, "routes[1].fallback.static.body_file");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_rewrite_with_a_query_merges_the_clients_after_it() {
        let yaml = CONFIG.replace(
            "rewrite: \"/b/{id}/c\"",
            "rewrite: \"/status?version={id}\"",
        );
        let snap = compile(&yaml, None);
        let (route, service) = (&snap.routes[0], &snap.services[0]);
        let send = |path: &str, query: Option<&str>| {
            let method = http::Method::GET;
            let headers = http::HeaderMap::new();
            let view = RequestView {
                method: &method,
                host: "",
                path,
                query,
                headers: &headers,
            };
            let m = snap.router.find(&view).unwrap();
            upstream_path(route, service, &m, &view, false)
        };
        // Before: `/status?version=3?a=b`.
        assert_eq!(
            send("/a/3", Some("a=b")).as_deref(),
            Some("/status?version=3&a=b")
        );
        assert_eq!(send("/a/3", None).as_deref(), Some("/status?version=3"));
        assert_eq!(send("/a/3", Some("")).as_deref(), Some("/status?version=3"));
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
            Arc::ptr_eq(&ua.targets().targets[0], &ub.targets().targets[0]),
            "kept target lost its state"
        );
        assert!(!Arc::ptr_eq(
            &ua.targets().targets[1],
            &ub.targets().targets[1]
        ));
        assert!(Arc::ptr_eq(
            &a.upstreams["service:u"].targets().targets[0],
            &b.upstreams["service:u"].targets().targets[0]
        ));
        assert_eq!(&*b.services[1].path_prefix, "/base");
    }

    #[test]
    fn one_upstreams_targets_are_replaced_without_a_compile() {
        let a = compile(CONFIG, None);
        let up = &a.upstreams["pool"];
        let before = up.targets();
        let changes = a.changes.subscribe();
        up.replace_targets(&[("127.0.0.1:1002", 1), ("127.0.0.1:1005", 3)])
            .unwrap();
        assert!(changes.has_changed().unwrap(), "health checks are told");
        let after = up.targets();
        let addrs: Vec<&str> = after.targets.iter().map(|t| &*t.address).collect();
        assert_eq!(addrs, ["127.0.0.1:1002", "127.0.0.1:1005"]);
        assert!(
            Arc::ptr_eq(&before.targets[1], &after.targets[0]),
            "a target that stays keeps its pool and health"
        );
        // Requests pick among the new set; one that loaded the old set keeps it.
        for _ in 0..8 {
            let i = up.pick(&after, &[], &[]).unwrap().unwrap();
            assert!(i < 2);
        }
        assert_eq!(&*before.targets[0].address, "127.0.0.1:1001");
        // A bad address changes nothing.
        let e = up.replace_targets(&[("not an address\n", 1)]).unwrap_err();
        assert!(e.contains("has no port"), "{e}");
        assert_eq!(up.targets().targets.len(), 2);
    }

    #[test]
    fn discovered_targets_join_the_configured_ones_and_survive_a_reload() {
        use crate::discovery::{Found, Origin};
        let found = |address: &str, origin| Found {
            address: address.into(),
            weight: 2,
            labels: Default::default(),
            metadata: None,
            origin,
            from: Some("/svc/x".into()),
        };
        let a = compile(CONFIG, None);
        let up = &a.upstreams["pool"];
        let before = up.targets();
        up.set_dynamic(vec![
            found("127.0.0.1:1009", Origin::Etcd),
            // Listed by the config already: the config's entry stays.
            found("127.0.0.1:1001", Origin::Dns),
        ])
        .unwrap();
        let after = up.targets();
        let addrs: Vec<&str> = after.targets.iter().map(|t| &*t.address).collect();
        assert_eq!(
            addrs,
            ["127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1009"]
        );
        assert_eq!(
            after.origins,
            [Origin::Config, Origin::Config, Origin::Etcd]
        );
        assert!(
            Arc::ptr_eq(&before.targets[0], &after.targets[0]),
            "pool and health kept"
        );
        // A reload keeps what discovery found (its task re-applies newer answers after).
        let b = compile(CONFIG, Some(&a));
        let kept = b.upstreams["pool"].targets();
        assert_eq!(kept.targets.len(), 3);
        assert!(Arc::ptr_eq(&after.targets[2], &kept.targets[2]));
        // A bad discovered address changes nothing.
        let e = up
            .set_dynamic(vec![found("nope", Origin::Etcd)])
            .unwrap_err();
        assert!(e.contains("port"), "{e}");
        assert_eq!(up.targets().targets.len(), 3);
    }

    #[test]
    fn unknown_plugins_are_rejected() {
        let config =
            gatehouse_model::parse_yaml(&format!("{CONFIG}plugins:\n  - name: no-such-plugin\n"));
        let errs = match config.map(|c| Snapshot::compile(c, None, node())) {
            Ok(Err(e)) => e,
            _ => panic!("should be rejected"),
        };
        assert_eq!(
            errs[0].to_string(),
            "plugins[0].name: unknown plugin \"no-such-plugin\""
        );
    }
}
