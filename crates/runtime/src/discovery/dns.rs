//! Targets from DNS: A/AAAA records of a name (each address a target) or SRV records (ports,
//! priorities, weights), re-resolved when the answer's TTL runs out, kept between a floor
//! and a ceiling. hickory-resolver does the DNS; it never blocks a thread.

use super::{Found, Origin, Report};
use gatehouse_model::{DnsDiscovery, DnsRecord};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// How long one query may take before the source counts as unreachable.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest wait between attempts while a source is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A resolver asking `servers` (`ip:port`), or the system's (`/etc/resolv.conf`) when
/// there are none; answers are cached no longer than `max_ttl`.
pub fn resolver(servers: &[String], max_ttl: Duration) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if servers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| format!("/etc/resolv.conf: {e}"))?
    } else {
        let mut config = ResolverConfig::from_parts(None, Vec::new(), Vec::new());
        for s in servers {
            let addr: SocketAddr = s
                .parse()
                .map_err(|_| format!("\"{s}\" is not an ip:port"))?;
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            config.add_name_server(NameServerConfig::new(addr.ip(), true, vec![udp, tcp]));
        }
        TokioResolver::builder_with_config(config, provider)
    };
    let opts = builder.options_mut();
    opts.timeout = QUERY_TIMEOUT;
    opts.attempts = 1;
    opts.positive_max_ttl = Some(max_ttl);
    opts.negative_max_ttl = Some(Duration::from_secs(1));
    opts.cache_size = 64;
    builder.build().map_err(|e| e.to_string())
}

/// Resolves `spec` for `upstream` for as long as it runs, reporting every answer (or
/// failure) to `tx`. Aborted by the discovery task when the upstream's config changes.
pub async fn watch(upstream: Box<str>, spec: DnsDiscovery, tx: UnboundedSender<Report>) {
    let resolver = match resolver(&spec.resolvers, spec.max_ttl) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(report(&upstream, Err(format!("resolver: {e}"))));
            return;
        }
    };
    let mut backoff = spec.min_ttl.max(Duration::from_secs(1));
    loop {
        let (outcome, valid_until) = match resolve(&resolver, &spec).await {
            Ok((targets, until)) => {
                backoff = spec.min_ttl.max(Duration::from_secs(1));
                (Ok(targets), Some(until))
            }
            Err(e) => (Err(e), None),
        };
        if tx.send(report(&upstream, outcome)).is_err() {
            return;
        }
        let wait = match valid_until {
            Some(until) => until
                .saturating_duration_since(Instant::now())
                .clamp(spec.min_ttl, spec.max_ttl),
            None => {
                let w = backoff;
                backoff = (backoff * 2)
                    .min(MAX_BACKOFF)
                    .min(spec.max_ttl.max(backoff));
                w
            }
        };
        tokio::time::sleep(wait).await;
    }
}

fn report(upstream: &str, outcome: Result<Vec<Found>, String>) -> Report {
    Report {
        upstream: upstream.into(),
        origin: Origin::Dns,
        outcome,
        skipped: Vec::new(),
    }
}

/// The name as an absolute name: a discovery name is never meant relative to the search
/// domains.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

/// One resolution of `spec`: its targets, and until when the answer holds.
pub async fn resolve(
    resolver: &TokioResolver,
    spec: &DnsDiscovery,
) -> Result<(Vec<Found>, Instant), String> {
    let name = fqdn(&spec.name);
    match spec.record {
        DnsRecord::A => {
            let port = spec.port.unwrap_or(80);
            match resolver.lookup_ip(name.as_str()).await {
                Ok(ips) => {
                    let targets = ips
                        .iter()
                        .map(|ip| found(SocketAddr::new(ip, port), spec.weight, &spec.name, None))
                        .collect();
                    Ok((targets, ips.valid_until()))
                }
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                    Ok((Vec::new(), Instant::now() + spec.min_ttl))
                }
                Err(e) => Err(format!("{}: {e}", spec.name)),
            }
        }
        DnsRecord::Srv => srv(resolver, spec, &name).await,
    }
}

/// SRV records: the lowest priority's records (higher priorities are backups, RFC 2782),
/// each target name resolved to its addresses.
async fn srv(
    resolver: &TokioResolver,
    spec: &DnsDiscovery,
    name: &str,
) -> Result<(Vec<Found>, Instant), String> {
    let lookup = match resolver.srv_lookup(name).await {
        Ok(l) => l,
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
            return Ok((Vec::new(), Instant::now() + spec.min_ttl))
        }
        Err(e) => return Err(format!("{}: {e}", spec.name)),
    };
    let mut until = lookup.valid_until();
    let records: Vec<_> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    let Some(best) = records.iter().map(|s| s.priority).min() else {
        return Ok((Vec::new(), until));
    };
    let mut targets = Vec::new();
    for s in records.iter().filter(|s| s.priority == best) {
        let host = s.target.to_ascii();
        let ips = resolver
            .lookup_ip(host.as_str())
            .await
            .map_err(|e| format!("{}: SRV target {host}: {e}", spec.name))?;
        until = until.min(ips.valid_until());
        let mut meta = serde_json::Map::new();
        meta.insert("priority".into(), s.priority.into());
        meta.insert("srv_target".into(), host.trim_end_matches('.').into());
        for ip in ips.iter() {
            let weight = u32::from(s.weight).max(1);
            let addr = SocketAddr::new(ip, s.port);
            targets.push(found(addr, weight, &spec.name, Some(meta.clone().into())));
        }
    }
    Ok((targets, until))
}

fn found(addr: SocketAddr, weight: u32, name: &str, metadata: Option<serde_json::Value>) -> Found {
    Found {
        address: addr.to_string(),
        weight,
        labels: BTreeMap::new(),
        metadata,
        origin: Origin::Dns,
        from: Some(name.to_owned()),
    }
}
