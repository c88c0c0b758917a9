//! `policy: redis`: one limit shared by every node on the same Redis. Each node leases quota
//! in batches through one atomic Lua script (Redis's clock, so node clocks need not agree)
//! and spends it locally, so a busy key costs one round trip per batch, not per request.
//!
//! Accuracy: the script never grants more than the algorithm allows, so the cluster never
//! admits more than the limit; quota leased by a node that then goes quiet is lost when its
//! lease ends, so the cluster may admit up to `nodes × batch` less per window.

use super::{Algorithm, Decision, Limit};
use dashmap::DashMap;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use gatehouse_plugin_api::{now_ns, redis, RedisStore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// Leases quota for one key. KEYS[1]: the key's base name. ARGV: algorithm (1 fixed window,
/// 2 sliding window, 3 token bucket, 4 leaky bucket), limit, window (µs), quota wanted, burst,
/// max delay (µs). Returns {granted, remaining, reset µs, retry-after µs, first slot µs}.
/// Times are µs on Redis's clock; Lua numbers are doubles, exact for integers below 2^53.
const LUA: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local algo = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local w = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local burst = tonumber(ARGV[5])
local max_delay = tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function fmt(x) return string.format('%.0f', x) end
local function clamp(x, lo, hi) return math.max(lo, math.min(hi, x)) end
if algo == 1 or algo == 2 then
  local win = math.floor(now / w)
  local elapsed = now - win * w
  local cur_k = KEYS[1] .. ':' .. fmt(win)
  local cur = tonumber(redis.call('GET', cur_k) or '0')
  local prev = 0
  if algo == 2 then
    prev = tonumber(redis.call('GET', KEYS[1] .. ':' .. fmt(win - 1)) or '0')
  end
  local weighted = math.floor(prev * (w - elapsed) / w)
  local avail = limit - weighted - cur
  local grant = clamp(want, 0, avail)
  if grant > 0 then
    redis.call('INCRBY', cur_k, grant)
    redis.call('PEXPIRE', cur_k, math.ceil(algo * w / 1000) + 1000)
  end
  local b = cur + grant
  local reset = w - elapsed
  local retry = reset
  if algo == 2 then
    if b < limit and prev > 0 then
      retry = math.max(0, w - math.floor((limit - b) * w / prev) - elapsed) + 1
    elseif b >= limit then
      retry = reset + w - math.floor((limit - 1) * w / math.max(b, 1)) + 1
    end
  end
  return {grant, math.max(0, avail - grant), reset, retry, 0}
end
local interval = math.max(1, math.floor(w / limit))
local tat = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
local avail
if algo == 3 then
  avail = math.floor((now + burst * interval - tat) / interval)
elseif tat - now <= max_delay then
  avail = math.floor((now + max_delay - tat) / interval) + 1
else
  avail = 0
end
local grant = clamp(want, 0, avail)
local first = tat - now
if grant > 0 then
  tat = tat + grant * interval
  redis.call('SET', KEYS[1], fmt(tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
local remaining
local retry
if algo == 3 then
  remaining = math.floor((now + burst * interval - tat) / interval)
  retry = tat + interval - burst * interval - now
else
  remaining = math.floor((now + max_delay - tat) / interval) + 1
  retry = tat - now - max_delay
end
return {grant, math.max(0, remaining), tat - now, math.max(1, retry), first}
"#;

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(LUA));

/// A fetch of quota in flight for one key; every request waiting on that key awaits it.
pub(super) type Fetch = Shared<BoxFuture<'static, ()>>;

/// What can be decided without waiting.
pub(super) enum Quick {
    Decided(Decision),
    /// Redis is down: the caller falls back.
    Down,
    /// No quota here yet: await this, then ask again.
    Fetch(Fetch),
}

pub(super) struct Cluster(Arc<State>);

struct State {
    store: Arc<RedisStore>,
    /// `gatehouse:rl:` + scope, policy, algorithm and window: instances that differ in these
    /// keep their counts apart, while changing only `limit` keeps them.
    prefix: String,
    limit: Limit,
    batch: u64,
    timeout: Duration,
    leases: DashMap<u64, Lease, foldhash::fast::FixedState>,
    last_sweep: AtomicU64,
}

/// A node's view of one key: quota leased and not yet spent, and what Redis last said.
#[derive(Default)]
struct Lease {
    tokens: u64,
    /// Leased quota is spent by then (the end of the window it was counted in).
    valid_until: u64,
    /// Leaky bucket: the time of the next leased slot, and the slot spacing.
    next_slot: u64,
    interval: u64,
    /// Cluster-wide quota left beyond this lease, and until when, as Redis last reported.
    remaining: u64,
    reset_at: u64,
    /// Redis granted nothing: reject locally until then.
    denied_until: u64,
    /// Requests that found the lease empty since the last fetch: sizes the next one.
    demand: u64,
    touched: u64,
    fetch: Option<Fetch>,
}

impl Lease {
    /// Spends one leased unit, if there is one.
    fn take(&mut self, now: u64, algorithm: Algorithm) -> Option<Decision> {
        if self.tokens == 0 {
            return None;
        }
        let mut delay = 0;
        if let Algorithm::LeakyBucket { .. } = algorithm {
            // Slots whose time has passed unused are gone: using them late would burst.
            if self.next_slot < now {
                let missed = ((now - self.next_slot) / self.interval.max(1)).min(self.tokens);
                self.tokens -= missed;
                self.next_slot += missed * self.interval;
                if self.tokens == 0 {
                    return None;
                }
            }
            delay = self.next_slot.saturating_sub(now);
            self.next_slot += self.interval;
        } else if now >= self.valid_until {
            self.tokens = 0;
            return None;
        }
        self.tokens -= 1;
        Some(Decision {
            allowed: true,
            remaining: self.remaining + self.tokens,
            reset_ns: self.reset_at.saturating_sub(now),
            retry_after_ns: 0,
            delay_ns: delay,
        })
    }
}

impl Cluster {
    pub(super) fn new(
        store: Arc<RedisStore>,
        scope: &str,
        policy_name: &str,
        limit: Limit,
        batch: u64,
        timeout: Duration,
    ) -> Self {
        let algo = match limit.algorithm {
            Algorithm::FixedWindow => "fixed",
            Algorithm::SlidingWindow => "sliding",
            Algorithm::TokenBucket { .. } => "bucket",
            Algorithm::LeakyBucket { .. } => "leaky",
        };
        let window_ms = limit.window_ns / 1_000_000;
        Cluster(Arc::new(State {
            store,
            prefix: format!("gatehouse:rl:{scope}:{policy_name}:{algo}:{window_ms}ms:"),
            limit,
            batch,
            timeout,
            leases: DashMap::with_hasher(foldhash::fast::FixedState::default()),
            last_sweep: AtomicU64::new(0),
        }))
    }

    /// Decides from the local lease if it can; else joins or starts a fetch for this key
    /// (`text` names the key in Redis; only called when a fetch starts).
    pub(super) fn quick(&self, key: u64, now: u64, text: impl FnOnce() -> String) -> Quick {
        let st = &self.0;
        if !st.store.is_up() {
            return Quick::Down;
        }
        st.maybe_sweep(now);
        let mut lease = st.leases.entry(key).or_default();
        lease.touched = now;
        if let Some(d) = lease.take(now, st.limit.algorithm) {
            return Quick::Decided(d);
        }
        if now < lease.denied_until {
            return Quick::Decided(Decision {
                allowed: false,
                remaining: 0,
                // `t` and Retry-After say the same: when a request is admitted again.
                reset_ns: lease.denied_until - now,
                retry_after_ns: lease.denied_until - now,
                delay_ns: 0,
            });
        }
        lease.demand += 1;
        if let Some(f) = &lease.fetch {
            return Quick::Fetch(f.clone());
        }
        // Twice the recent demand: the batch grows quickly under load up to `batch`, and
        // stays small (little quota stranded on this node) for a quiet key. Never less than
        // the requests already waiting: they spend it at once, so none is stranded, and a
        // small `batch` cannot starve a crowd of waiters.
        let want = (2 * lease.demand).min(st.batch).max(lease.demand);
        lease.demand = 0;
        let f = st.clone().fetch(key, text(), want).boxed().shared();
        lease.fetch = Some(f.clone());
        Quick::Fetch(f)
    }

    /// A request that lost the race for fetched quota several times over: tried again in a
    /// second (`t` says the same).
    pub(super) fn contended(&self) -> Decision {
        Decision {
            allowed: false,
            remaining: 0,
            reset_ns: 1_000_000_000,
            retry_after_ns: 1_000_000_000,
            delay_ns: 0,
        }
    }
}

impl State {
    async fn fetch(self: Arc<Self>, key: u64, text: String, want: u64) {
        let (algo, burst, max_delay_ns) = match self.limit.algorithm {
            Algorithm::FixedWindow => (1, 0, 0),
            Algorithm::SlidingWindow => (2, 0, 0),
            Algorithm::TokenBucket { burst } => (3, burst, 0),
            Algorithm::LeakyBucket { max_delay_ns } => (4, 0, max_delay_ns),
        };
        // A hash tag around the whole name keeps a key's window counters in one slot.
        let name = format!("{{{}{}}}", self.prefix, text);
        let call = async {
            let mut c = self.store.connection().await?;
            SCRIPT
                .key(name)
                .arg(algo)
                .arg(self.limit.limit)
                .arg((self.limit.window_ns / 1000).max(1))
                .arg(want)
                .arg(burst)
                .arg(max_delay_ns / 1000)
                .invoke_async::<(u64, u64, u64, u64, u64)>(&mut c)
                .await
                .map_err(|e| e.to_string())
        };
        let result = tokio::time::timeout(self.timeout, call).await;
        let now = now_ns();
        let mut lease = self.leases.entry(key).or_default();
        lease.fetch = None;
        let (grant, remaining, reset_us, retry_us, first_us) = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return self.store.failed(&e),
            Err(_) => return self.store.failed("Redis call timed out"),
        };
        lease.remaining = remaining;
        lease.reset_at = now + reset_us * 1000;
        if grant == 0 {
            lease.denied_until = now + retry_us.max(1) * 1000;
            return;
        }
        lease.valid_until = match self.limit.algorithm {
            Algorithm::FixedWindow | Algorithm::SlidingWindow => lease.reset_at,
            _ => now + self.limit.window_ns,
        };
        if lease.tokens == 0 {
            lease.next_slot = now + first_us * 1000;
            // The script's spacing, in whole µs.
            let window_us = (self.limit.window_ns / 1000).max(1);
            lease.interval = (window_us / self.limit.limit.max(1)).max(1) * 1000;
        }
        lease.tokens += grant;
    }

    /// Forgets quiet keys now and then (see the local limiter's sweep).
    fn maybe_sweep(&self, now: u64) {
        let window = self.limit.window_ns;
        let every = (2 * window).max(10_000_000_000);
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) < every
            || self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.leases.retain(|_, l| {
            l.fetch.is_some() || l.denied_until > now || now.saturating_sub(l.touched) < 2 * window
        });
    }
}
