//! The node's Redis, shared by every plugin that keeps cluster-wide state: connected lazily
//! (so `validate` never dials it), multiplexed, and behind a health gate so that once Redis is
//! known to be down requests stop waiting on it until a background probe sees it back.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How often a down Redis is probed: about how long a recovered Redis goes unused.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// A probe that takes longer than this counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

pub struct RedisStore {
    url: Box<str>,
    client: redis::Client,
    /// The runtime the connection's I/O task lives on: the one the store was made in, which
    /// outlives reloads, rather than whichever worker happened to ask first.
    runtime: Option<tokio::runtime::Handle>,
    conn: OnceLock<ConnectionManager>,
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

impl RedisStore {
    /// Checks the address; does not connect.
    pub fn open(url: &str) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(url).map_err(|e| {
            format!("not a Redis address ({e}): expected redis://[:PASSWORD@]HOST:PORT[/DB] or unix:///PATH")
        })?;
        Ok(Arc::new(RedisStore {
            url: url.into(),
            client,
            runtime: tokio::runtime::Handle::try_current().ok(),
            conn: OnceLock::new(),
            down: AtomicBool::new(false),
        }))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A handle on the shared connection (cheap to clone; commands from all callers are
    /// pipelined on one socket). Reconnects by itself after I/O errors.
    pub fn connection(&self) -> Result<ConnectionManager, String> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let _entered = self.runtime.as_ref().map(|h| h.enter());
        if tokio::runtime::Handle::try_current().is_err() {
            return Err("no async runtime to run the Redis connection on".into());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(100));
        let made = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|e| e.to_string())?;
        // Two first callers may race: one connection wins, the other is dropped unused.
        Ok(self.conn.get_or_init(|| made).clone())
    }

    /// Whether callers should use Redis now: false, at once, from the first failed call until
    /// a background probe sees Redis answer again.
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// A call failed (error or timeout): stop sending, and probe until Redis answers.
    pub fn failed(self: &Arc<Self>, why: &str) {
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
                    let mut c = store.connection()?;
                    redis::cmd("PING")
                        .query_async::<String>(&mut c)
                        .await
                        .map_err(|e| e.to_string())
                };
                if let Ok(Ok(_)) = tokio::time::timeout(PROBE_TIMEOUT, ping).await {
                    store.down.store(false, Ordering::Release);
                    tracing::info!(redis = %store.url, "Redis reachable again");
                    return;
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
