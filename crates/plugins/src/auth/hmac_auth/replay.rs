//! Replay protection: a signature is accepted once. Seen signatures are remembered for the
//! clock-skew window (past it the date check refuses them anyway): in Redis, so that every
//! node sharing it refuses a replay (`SET NX PX`, one round trip), or in this node's memory,
//! which is also where a node falls back while Redis is unreachable.

use dashmap::DashMap;
use gatehouse_plugin_api::{now_ns, RedisStore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Replay {
    window: Duration,
    redis: Option<(Arc<RedisStore>, String)>,
    /// Signature digest → when it stops mattering (`now_ns`).
    local: DashMap<[u8; 32], u64, foldhash::fast::RandomState>,
    /// When the local memory was last swept of old entries.
    swept: AtomicU64,
}

/// How a replay check ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    First,
    Again,
}

impl Replay {
    /// `prefix` names the instance (its scope) in Redis keys.
    pub fn new(window: Duration, redis: Option<(Arc<RedisStore>, String)>) -> Self {
        Self {
            window,
            redis,
            local: DashMap::default(),
            swept: AtomicU64::new(0),
        }
    }

    pub fn uses_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// Notes `digest` in this node's memory.
    pub fn check_local(&self, digest: [u8; 32]) -> Seen {
        let now = now_ns();
        let until = now + self.window.as_nanos() as u64;
        self.sweep(now);
        let mut seen = Seen::First;
        self.local
            .entry(digest)
            .and_modify(|t| {
                if *t > now {
                    seen = Seen::Again;
                }
                *t = until;
            })
            .or_insert(until);
        seen
    }

    /// Drops expired entries, at most once per window, so memory is bounded by one window's
    /// worth of signed requests.
    fn sweep(&self, now: u64) {
        let last = self.swept.load(Ordering::Relaxed);
        let every = self.window.as_nanos() as u64;
        if now.saturating_sub(last) < every
            || self
                .swept
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.local.retain(|_, until| *until > now);
    }

    /// Notes `digest` across nodes (falls back to memory while Redis is down).
    pub async fn check(&self, digest: [u8; 32]) -> Seen {
        let Some((store, prefix)) = &self.redis else {
            return self.check_local(digest);
        };
        if !store.is_up() {
            return self.check_local(digest);
        }
        let key = format!("{prefix}:{}", super::super::hex(&digest[..16]));
        let call = async {
            let mut c = store.connection().await?;
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(self.window.as_millis() as u64)
                .query_async::<Option<String>>(&mut c)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_millis(250), call).await {
            Ok(Ok(Some(_))) => Seen::First,
            Ok(Ok(None)) => Seen::Again,
            Ok(Err(e)) => {
                store.failed(&e);
                self.check_local(digest)
            }
            Err(_) => {
                store.failed("timed out");
                self.check_local(digest)
            }
        }
    }
}

use gatehouse_plugin_api::redis;
