//! What the gateway would do with a request, without sending it: which route matches and
//! with what captures, which plugin instances run in which order (and their scopes), the path
//! that goes upstream, and the targets the balancer chooses among. Behind `gatehouse explain`.

use crate::router::RequestView;
use crate::snapshot::{upstream_path, Snapshot};
use http::{HeaderMap, Method};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub method: String,
    pub host: String,
    pub path: String,
    /// None: no route matches, and the gateway answers 404.
    pub route: Option<Matched>,
}

#[derive(Debug, Serialize)]
pub struct Matched {
    pub name: String,
    /// The route's own conditions, as configured.
    pub hosts: Vec<String>,
    pub paths: Vec<String>,
    pub methods: Vec<String>,
    pub priority: i32,
    /// `{param}` captures or named regex groups.
    pub params: Vec<(String, String)>,
    pub service: String,
    pub upstream: String,
    pub balance: String,
    /// What goes upstream: the path and query after `strip_prefix`, `rewrite` and the
    /// service's path prefix.
    pub upstream_path: String,
    /// The targets this node balances over (after subsetting), with their weights and
    /// where each came from.
    pub targets: Vec<TargetLine>,
    /// Where more targets come from at run time (DNS, etcd), when the upstream says.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub discovery: Vec<String>,
    /// The plugin instances that run, in order.
    pub plugins: Vec<PluginRun>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TargetLine {
    pub address: String,
    pub weight: u32,
    /// `config`, `dns`, `etcd` or `registered`.
    pub source: String,
}

#[derive(Debug, Serialize)]
pub struct PluginRun {
    pub name: String,
    pub priority: i32,
    /// `global`, `route=api`, `service=s`, `consumer=a,route=api`...
    pub scope: String,
    /// Consumers that get an instance of their own instead (once authenticated).
    pub consumer_overrides: usize,
}

/// Explains `method host path?query` with `headers` against `snap`.
pub fn explain(
    snap: &Snapshot,
    method: &Method,
    host: &str,
    path_and_query: &str,
    headers: &HeaderMap,
) -> Explanation {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    // Routed as the data plane routes it: on the normalised path, and not at all when the
    // path is refused (400).
    let normal = crate::path::normalize(path, snap.config.node.encoded_slashes);
    let view = RequestView {
        method,
        host,
        path: normal.as_deref().unwrap_or(path),
        query,
        headers,
    };
    let found = normal.is_ok().then(|| snap.router.find(&view)).flatten();
    let route = found.and_then(|m| {
        let entry = snap.routes.get(m.route)?;
        let service = snap.services.get(entry.service)?;
        let spec = snap.config.routes.iter().find(|r| *r.name == *entry.name)?;
        let up_spec = snap
            .config
            .upstreams
            .iter()
            .find(|u| *u.name == *service.upstream.name);
        let plugins = entry
            .plugins
            .entries
            .iter()
            .map(|e| {
                let inst = e.default_index.and_then(|i| snap.config.plugins.get(i));
                PluginRun {
                    name: e.kind.to_string(),
                    priority: e.priority,
                    scope: inst.map_or_else(|| "(consumers only)".into(), |p| p.scope()),
                    consumer_overrides: e.consumers.len(),
                }
            })
            .collect();
        Some(Matched {
            name: entry.name.to_string(),
            hosts: spec.hosts.clone(),
            paths: spec.paths.clone(),
            methods: spec.methods.clone(),
            priority: spec.priority,
            params: m
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service: service.name.to_string(),
            upstream: service.upstream.name.to_string(),
            balance: up_spec
                .and_then(|u| serde_json::to_value(u.balance).ok())
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            upstream_path: upstream_path(entry, service, &m, &view, false)
                .unwrap_or_else(|| path_and_query.to_owned()),
            targets: {
                let set = service.upstream.targets();
                let listed = service.upstream.listed();
                set.targets
                    .iter()
                    .zip(&set.origins)
                    .map(|(t, o)| TargetLine {
                        address: t.address.to_string(),
                        weight: listed
                            .iter()
                            .find(|f| *f.address == *t.address)
                            .map_or(1, |f| f.weight),
                        source: o.as_str().into(),
                    })
                    .collect()
            },
            discovery: up_spec
                .and_then(|u| u.discovery.as_ref())
                .map(describe_discovery)
                .unwrap_or_default(),
            plugins,
        })
    });
    Explanation {
        method: method.to_string(),
        host: host.to_owned(),
        path: path_and_query.to_owned(),
        route,
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "request:  {} {} (host {:?})",
            self.method, self.path, self.host
        )?;
        let Some(m) = &self.route else {
            return writeln!(
                f,
                "route:    none matches: the gateway answers 404 {{\"error\":\"no route\"}}"
            );
        };
        writeln!(f, "route:    {} (priority {})", m.name, m.priority)?;
        let any = |v: &[String]| {
            if v.is_empty() {
                "any".to_string()
            } else {
                v.join(", ")
            }
        };
        writeln!(f, "  hosts:   {}", any(&m.hosts))?;
        writeln!(f, "  paths:   {}", any(&m.paths))?;
        writeln!(f, "  methods: {}", any(&m.methods))?;
        for (k, v) in &m.params {
            writeln!(f, "  param:   {k} = {v:?}")?;
        }
        writeln!(f, "service:  {}", m.service)?;
        writeln!(f, "upstream: {} ({})", m.upstream, m.balance)?;
        for t in &m.targets {
            writeln!(
                f,
                "  target:  {} (weight {}, from {})",
                t.address, t.weight, t.source
            )?;
        }
        for d in &m.discovery {
            writeln!(f, "  and:     {d}")?;
        }
        writeln!(f, "sends:    {} {}", self.method, m.upstream_path)?;
        if m.plugins.is_empty() {
            return writeln!(f, "plugins:  none");
        }
        writeln!(f, "plugins:  in this order")?;
        for p in &m.plugins {
            write!(
                f,
                "  {:<20} priority {:>5}  scope {}",
                p.name, p.priority, p.scope
            )?;
            if p.consumer_overrides > 0 {
                write!(f, " (+{} consumer-scoped)", p.consumer_overrides)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Where an upstream's discovered targets come from, in words.
fn describe_discovery(d: &gatehouse_model::Discovery) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(dns) = &d.dns {
        let what = match (dns.record, dns.port) {
            (gatehouse_model::DnsRecord::Srv, _) => format!("DNS SRV records of {}", dns.name),
            (_, Some(p)) => format!("DNS A/AAAA records of {}, port {p}", dns.name),
            (_, None) => format!("DNS A/AAAA records of {}", dns.name),
        };
        out.push(format!(
            "targets from {what} (live: GET /upstreams/NAME/targets)"
        ));
    }
    if let Some(etcd) = &d.etcd {
        out.push(format!(
            "targets from etcd keys under {} at {}",
            etcd.prefix,
            etcd.endpoints.join(", ")
        ));
    }
    out
}
