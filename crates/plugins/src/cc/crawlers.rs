//! Crawler verification the way search engines document it: a request claiming to be a
//! crawler (by User-Agent) is one when its address's reverse DNS name ends in one of the
//! crawler's domains and that name resolves back to the address. Verdicts are cached per
//! address and crawler claimed for an hour, so each costs a few lookups at most.

use gatehouse_plugin_api::FieldError;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use http::HeaderMap;
use regex::Regex;
use schemars::JsonSchema;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

/// `{user_agent: "Googlebot", domains: [googlebot.com, google.com]}`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Crawler {
    /// A regex the crawler's User-Agent matches.
    pub user_agent: String,
    /// Domains its reverse DNS names end in.
    pub domains: Vec<String>,
}

pub struct Verifier {
    crawlers: Vec<(Regex, Vec<String>)>,
    resolvers: Vec<SocketAddr>,
    resolver: OnceLock<Option<TokioResolver>>,
    /// Per address and crawler claimed.
    verdicts: moka::sync::Cache<(IpAddr, usize), bool>,
}

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

impl Verifier {
    pub fn new(list: &[Crawler], resolvers: &[String], errs: &mut Vec<FieldError>) -> Verifier {
        let mut crawlers = Vec::new();
        for (i, c) in list.iter().enumerate() {
            match Regex::new(&c.user_agent) {
                Ok(re) => crawlers.push((re, c.domains.iter().map(|d| normal(d)).collect())),
                Err(e) => errs.push(FieldError::new(
                    format!("crawlers[{i}].user_agent"),
                    e.to_string(),
                )),
            }
            if c.domains.is_empty() {
                errs.push(FieldError::new(
                    format!("crawlers[{i}].domains"),
                    "name at least one",
                ));
            }
        }
        let mut addrs = Vec::new();
        for (i, r) in resolvers.iter().enumerate() {
            match r.parse() {
                Ok(a) => addrs.push(a),
                Err(_) => errs.push(FieldError::new(
                    format!("resolvers[{i}]"),
                    format!("{r:?} is not an ip:port"),
                )),
            }
        }
        Verifier {
            crawlers,
            resolvers: addrs,
            resolver: OnceLock::new(),
            verdicts: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }

    /// The crawler a request claims to be, by its User-Agent.
    pub fn claimed(&self, headers: &HeaderMap) -> Option<usize> {
        if self.crawlers.is_empty() {
            return None;
        }
        let ua = headers.get(http::header::USER_AGENT)?.to_str().ok()?;
        self.crawlers.iter().position(|(re, _)| re.is_match(ua))
    }

    /// A cached verdict on `ip` as crawler `which`.
    pub fn known(&self, ip: IpAddr, which: usize) -> Option<bool> {
        self.verdicts.get(&(ip, which))
    }

    /// Looks `ip` up (reverse, then forward) for crawler `which`, and caches the verdict.
    pub async fn verify(&self, ip: IpAddr, which: usize) -> bool {
        let Some((_, domains)) = self.crawlers.get(which) else {
            return false;
        };
        let ok = tokio::time::timeout(LOOKUP_TIMEOUT, self.lookup(ip, domains))
            .await
            .unwrap_or(false);
        self.verdicts.insert((ip, which), ok);
        ok
    }

    async fn lookup(&self, ip: IpAddr, domains: &[String]) -> bool {
        let Some(r) = self.resolver.get_or_init(|| self.build()).as_ref() else {
            return false;
        };
        let Ok(names) = r.reverse_lookup(ip).await else {
            return false;
        };
        for name in names.answers().iter().filter_map(|a| match &a.data {
            hickory_resolver::proto::rr::RData::PTR(p) => Some(p.0.to_ascii()),
            _ => None,
        }) {
            let host = normal(&name);
            if !domains
                .iter()
                .any(|d| host == *d || host.ends_with(&format!(".{d}")))
            {
                continue;
            }
            if let Ok(back) = r.lookup_ip(host.as_str()).await {
                if back.iter().any(|a| a == ip) {
                    return true;
                }
            }
        }
        false
    }

    fn build(&self) -> Option<TokioResolver> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if self.resolvers.is_empty() {
            TokioResolver::builder(provider).ok()?
        } else {
            let mut config = ResolverConfig::from_parts(None, Vec::new(), Vec::new());
            for a in &self.resolvers {
                let mut udp = ConnectionConfig::udp();
                udp.port = a.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = a.port();
                config.add_name_server(NameServerConfig::new(a.ip(), true, vec![udp, tcp]));
            }
            TokioResolver::builder_with_config(config, provider)
        };
        // Verification must come from DNS: a hosts file says whatever the machine says.
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        builder.options_mut().timeout = LOOKUP_TIMEOUT;
        builder.build().ok()
    }
}

/// Lower case, without the root's trailing dot.
fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}
