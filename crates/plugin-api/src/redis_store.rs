//! The node's Redis, shared by every plugin that keeps cluster-wide state: a single node, a
//! Redis Cluster or a Sentinel-watched primary, over TCP or TLS; connected lazily (so
//! `validate` never dials it), multiplexed, and behind a health gate so that once Redis is
//! known to be down requests stop waiting on it until a background probe sees it back.
//!
//! Addresses:
//! - `redis://[:PASSWORD@]HOST:PORT[/DB]`, `rediss://...` for TLS;
//! - `redis+cluster://HOST:PORT,HOST:PORT,...` (`rediss+cluster://` for TLS): the seed nodes;
//! - `redis+sentinel://HOST:PORT,HOST:PORT/SERVICE[/DB]` (`rediss+sentinel://`): the
//!   sentinels and the name of the primary they watch.
//!
//! With TLS, `?ca=PATH` trusts that CA instead of the system's, `&cert=PATH&key=PATH` adds a
//! client certificate.

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a down Redis is probed: about how long a recovered Redis goes unused.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// A probe that takes longer than this counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the address names. One per node, so its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
    Sentinel(Arc<tokio::sync::Mutex<redis::sentinel::SentinelClient>>),
}

/// A connection to whatever the address names; commands, scripts and pipelines run on it
/// the same way (it is a [`ConnectionLike`]).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
    /// To the primary Sentinel named when it was made; dropped on failure so the next one
    /// asks the sentinels again.
    Primary(redis::aio::MultiplexedConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
            RedisConn::Primary(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Primary(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
            RedisConn::Primary(c) => c.get_db(),
        }
    }
}

pub struct RedisStore {
    url: Box<str>,
    backend: Backend,
    /// The runtime the connection's I/O task lives on: the one the store was made in, which
    /// outlives reloads, rather than whichever worker happened to ask first.
    runtime: Option<tokio::runtime::Handle>,
    conn: ArcSwapOption<RedisConn>,
    /// Set by a failed call, cleared by the probe that sees Redis answer.
    down: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("up", &self.is_up())
            .finish()
    }
}

const FORMS: &str = "expected redis://[:PASSWORD@]HOST:PORT[/DB], rediss://..., \
                     redis+cluster://HOST:PORT,HOST:PORT or redis+sentinel://HOST:PORT,.../SERVICE";

/// TLS files named in the address's query (`ca`, `cert`, `key`), read now.
fn tls_files(query: Option<&str>) -> Result<Option<redis::TlsCertificates>, String> {
    let Some(q) = query else { return Ok(None) };
    let mut ca = None;
    let (mut cert, mut key) = (None, None);
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let read = |v: &str| std::fs::read(v).map_err(|e| format!("cannot read {k}={v}: {e}"));
        match k {
            "ca" => ca = Some(read(v)?),
            "cert" => cert = Some(read(v)?),
            "key" => key = Some(read(v)?),
            other => return Err(format!("unknown option {other:?} (ca, cert, key)")),
        }
    }
    let client_tls = match (cert, key) {
        (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
            client_cert,
            client_key,
        }),
        (None, None) => None,
        _ => return Err("cert and key go together".into()),
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert: ca,
    }))
}

/// `scheme://a:1,b:2/rest?query` → (scheme, hosts, rest, query).
fn split(url: &str) -> Option<(&str, Vec<&str>, &str, Option<&str>)> {
    let (scheme, rest) = url.split_once("://")?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    Some((
        scheme,
        hosts.split(',').filter(|h| !h.is_empty()).collect(),
        path,
        query,
    ))
}

fn backend(url: &str) -> Result<Backend, String> {
    let (scheme, hosts, path, query) = split(url).ok_or_else(|| FORMS.to_string())?;
    let tls = scheme.starts_with("rediss");
    let certs = tls_files(query)?;
    if certs.is_some() && !tls {
        return Err("ca, cert and key are for rediss:// addresses".into());
    }
    let node = |h: &str, db: &str| -> String {
        let scheme = if tls { "rediss" } else { "redis" };
        match db {
            "" => format!("{scheme}://{h}"),
            db => format!("{scheme}://{h}/{db}"),
        }
    };
    let bad = |e: redis::RedisError| format!("not a Redis address ({e}): {FORMS}");
    match scheme {
        "redis" | "rediss" | "unix" => {
            let base = url.split('?').next().unwrap_or(url);
            match certs {
                Some(c) => redis::Client::build_with_tls(base, c),
                None => redis::Client::open(base),
            }
            .map(Backend::Single)
            .map_err(bad)
        }
        "redis+cluster" | "rediss+cluster" => {
            if hosts.is_empty() {
                return Err(format!("no nodes: {FORMS}"));
            }
            let mut b = redis::cluster::ClusterClient::builder(hosts.iter().map(|h| node(h, "")))
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(2);
            if let Some(c) = certs {
                b = b.certs(c);
            }
            b.build().map(Backend::Cluster).map_err(bad)
        }
        "redis+sentinel" | "rediss+sentinel" => {
            let (service, db) = path.split_once('/').unwrap_or((path, ""));
            if service.is_empty() || hosts.is_empty() {
                return Err(format!("no sentinels or no service name: {FORMS}"));
            }
            let mut info = redis::sentinel::SentinelNodeConnectionInfo::default();
            if tls {
                info = info.set_tls_mode(redis::TlsMode::Secure);
            }
            if let Ok(db) = db.parse::<i64>() {
                info = info
                    .set_redis_connection_info(redis::RedisConnectionInfo::default().set_db(db));
            }
            let sentinels: Vec<String> = hosts.iter().map(|h| node(h, "")).collect();
            let client = match certs {
                Some(c) => redis::sentinel::SentinelClientBuilder::new(
                    sentinels
                        .iter()
                        .filter_map(|s| {
                            redis::IntoConnectionInfo::into_connection_info(s.as_str()).ok()
                        })
                        .map(|i| i.addr().clone()),
                    service,
                    redis::sentinel::SentinelServerType::Master,
                )
                .and_then(|b| {
                    b.set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                        .set_client_to_sentinel_certificates(c.clone())
                        .set_client_to_redis_certificates(c)
                        .build()
                }),
                None => redis::sentinel::SentinelClient::build(
                    sentinels,
                    service,
                    Some(info),
                    redis::sentinel::SentinelServerType::Master,
                ),
            };
            client
                .map(|c| Backend::Sentinel(Arc::new(tokio::sync::Mutex::new(c))))
                .map_err(bad)
        }
        _ => Err(format!("unknown scheme {scheme:?}: {FORMS}")),
    }
}

/// A connection to the primary the sentinels name now.
async fn primary(
    sentinels: Arc<tokio::sync::Mutex<redis::sentinel::SentinelClient>>,
) -> Result<RedisConn, String> {
    let primary = sentinels
        .lock()
        .await
        .async_get_client()
        .await
        .map_err(|e| format!("no primary from the sentinels: {e}"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    primary
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map(RedisConn::Primary)
        .map_err(|e| e.to_string())
}

impl RedisStore {
    /// Checks the address (and reads TLS files it names); does not connect.
    pub fn open(url: &str) -> Result<Arc<Self>, String> {
        Ok(Arc::new(RedisStore {
            url: url.into(),
            backend: backend(url).map_err(|e| match e.starts_with("not a Redis address") {
                true => e,
                false => format!("not a Redis address: {e}"),
            })?,
            runtime: tokio::runtime::Handle::try_current().ok(),
            conn: ArcSwapOption::empty(),
            down: AtomicBool::new(false),
        }))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A handle on the shared connection (cheap to clone; commands from all callers are
    /// pipelined on one socket per node). Made on first use.
    pub async fn connection(&self) -> Result<RedisConn, String> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let made = self.connect().await?;
        // Two first callers may race: both connections work; one stays.
        self.conn.store(Some(Arc::new(made.clone())));
        Ok(made)
    }

    async fn connect(&self) -> Result<RedisConn, String> {
        let connecting: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> =
            match &self.backend {
                Backend::Single(client) => {
                    let _entered = self.runtime.as_ref().map(|h| h.enter());
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(Some(RESPONSE_TIMEOUT))
                        .set_number_of_retries(1)
                        .set_min_delay(Duration::from_millis(20))
                        .set_max_delay(Duration::from_millis(100));
                    return ConnectionManager::new_lazy_with_config(client.clone(), config)
                        .map(RedisConn::Single)
                        .map_err(|e| e.to_string());
                }
                Backend::Cluster(client) => {
                    let client = client.clone();
                    Box::pin(async move {
                        client
                            .get_async_connection()
                            .await
                            .map(RedisConn::Cluster)
                            .map_err(|e| e.to_string())
                    })
                }
                Backend::Sentinel(client) => Box::pin(primary(client.clone())),
            };
        // On the store's runtime, where the connection's I/O task then lives.
        match &self.runtime {
            Some(h) => h
                .spawn(connecting)
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r),
            None => connecting.await,
        }
    }

    /// Whether callers should use Redis now: false, at once, from the first failed call until
    /// a background probe sees Redis answer again.
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// A call failed (error or timeout): stop sending, and probe until Redis answers.
    pub fn failed(self: &Arc<Self>, why: &str) {
        // A primary found through sentinels may have been replaced: ask them again.
        if matches!(self.backend, Backend::Sentinel(_)) {
            self.conn.store(None);
        }
        if self.down.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(redis = %self.url, error = why, "Redis unreachable; limits fall back");
        // The probe holds the store weakly: a store dropped by a reload stops its probe.
        let me = Arc::downgrade(self);
        let probe = async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Some(store) = me.upgrade() else { return };
                let ping = async {
                    let mut c = store.connection().await?;
                    redis::cmd("PING")
                        .query_async::<String>(&mut c)
                        .await
                        .map_err(|e| e.to_string())
                };
                match tokio::time::timeout(PROBE_TIMEOUT, ping).await {
                    Ok(Ok(_)) => {
                        store.down.store(false, Ordering::Release);
                        tracing::info!(redis = %store.url, "Redis reachable again");
                        return;
                    }
                    _ if matches!(store.backend, Backend::Sentinel(_)) => store.conn.store(None),
                    _ => {}
                }
            }
        };
        match (&self.runtime, tokio::runtime::Handle::try_current()) {
            (Some(h), _) => drop(h.spawn(probe)),
            (None, Ok(h)) => drop(h.spawn(probe)),
            // Nowhere to probe from: let callers try Redis again rather than never.
            (None, Err(_)) => self.down.store(false, Ordering::Release),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_address_is_read_and_bad_ones_say_why() {
        for ok in [
            "redis://127.0.0.1:6379/0",
            "rediss://127.0.0.1:6380",
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
            "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster",
            "redis+sentinel://127.0.0.1:26379/mymaster/2",
        ] {
            assert!(RedisStore::open(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("127.0.0.1:6379", "expected redis://"),
            ("http://x", "unknown scheme"),
            ("redis+cluster://", "no nodes"),
            (
                "redis+sentinel://127.0.0.1:1",
                "no sentinels or no service name",
            ),
            (
                "rediss://a:1?ca=/nonexistent/ca.pem",
                "cannot read ca=/nonexistent/ca.pem",
            ),
            ("redis://a:1?ca=/etc/hostname", "are for rediss://"),
            ("rediss://a:1?cert=/etc/hostname", "go together"),
        ] {
            let e = RedisStore::open(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
