//! `concurrency-limit`: at most `max` requests in flight per key (route, consumer, ip...);
//! more wait in a short FIFO queue or are rejected with 503. A slot is held until the
//! response has been sent (or the WebSocket tunnel closed, or the client went away).

use crate::key::{Key, KeySpec, UaClass};
use bytes::Bytes;
use dashmap::DashMap;
use gatehouse_plugin_api::{
    json_response, now_ns, rejection_status, BuildEnv, FieldError, Flow, Later, Plugin, RequestCtx,
    TypedKind,
};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Limits how many requests per key are in flight at once.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Requests in flight at once, per key.
    pub max: u32,
    /// What is limited separately, as in `rate-limit`: `route` (default), `consumer`, `ip`,
    /// `header:NAME`... or a list for a composite key.
    #[serde(default = "KeySpec::route")]
    pub key: KeySpec,
    /// For `ua_class` keys: User-Agent classes tried in order.
    #[serde(default)]
    pub ua_classes: Vec<UaClass>,
    /// How many more requests per key may wait for a slot (first come, first served); 0
    /// rejects at once.
    #[serde(default)]
    pub queue: u32,
    /// The longest a request waits in the queue before it is rejected.
    #[serde(default = "half_second", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub queue_timeout: Duration,
    /// Status of a rejection.
    #[serde(default = "unavailable")]
    pub status: u16,
}

fn half_second() -> Duration {
    Duration::from_millis(500)
}
fn unavailable() -> u16 {
    503
}

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = "concurrency-limit";
    // After rate-limit (910): a request over its rate never takes a slot.
    const PRIORITY: i32 = 900;
    type Config = Config;

    fn build(&self, config: Config, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        Ok(Arc::new(ConcurrencyLimit::new(config)?))
    }
}

pub struct ConcurrencyLimit(Arc<Inner>);

struct Inner {
    max: u32,
    queue: u32,
    queue_timeout: Duration,
    status: StatusCode,
    key: Key,
    slots: DashMap<u64, Arc<Slots>, foldhash::fast::FixedState>,
    last_sweep: AtomicU64,
}

/// One key's slots and its queue length.
struct Slots {
    sem: Arc<Semaphore>,
    waiting: AtomicU32,
}

/// Counts a request in the queue until it leaves it, however it leaves (a slot, the
/// timeout, or the client going away).
struct Waiting(Arc<Slots>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConcurrencyLimit {
    pub fn new(c: Config) -> Result<Self, Vec<FieldError>> {
        let mut errs = Vec::new();
        if c.max == 0 {
            errs.push(FieldError::new("max", "must be > 0"));
        }
        if c.queue > 0 && c.queue_timeout.is_zero() {
            errs.push(FieldError::new(
                "queue_timeout",
                "must be > 0 when there is a queue",
            ));
        }
        let status = rejection_status("status", c.status, &mut errs);
        let key = Key::new(&c.key, &c.ua_classes, &mut errs);
        let (Some(status), true) = (status, errs.is_empty()) else {
            return Err(errs);
        };
        Ok(ConcurrencyLimit(Arc::new(Inner {
            max: c.max,
            queue: c.queue,
            queue_timeout: c.queue_timeout,
            status,
            key,
            slots: DashMap::with_hasher(foldhash::fast::FixedState::default()),
            last_sweep: AtomicU64::new(0),
        })))
    }
}

impl Inner {
    fn reject(&self) -> Response<Bytes> {
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        json_response(self.status, "too many requests in flight", h)
    }

    /// Forgets keys with nothing in flight and nobody holding them, now and then (every 10
    /// s), so that a key per client ip does not grow the map for ever.
    fn maybe_sweep(&self, now: u64) {
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 10_000_000_000
            || self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let max = self.max as usize;
        // Under the shard's lock nobody can take a new reference, so a count of one is final.
        self.slots
            .retain(|_, s| Arc::strong_count(s) > 1 || s.sem.available_permits() < max);
    }
}

impl Plugin for ConcurrencyLimit {
    fn key_class(&self) -> &str {
        self.0.key.class()
    }

    fn key_of(&self, ctx: &RequestCtx<'_>) -> Option<String> {
        Some(self.0.key.text(ctx))
    }

    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let me = &self.0;
        me.maybe_sweep(now_ns());
        let key = me.key.hash(ctx);
        let slots = me
            .slots
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Slots {
                    sem: Arc::new(Semaphore::new(me.max as usize)),
                    waiting: AtomicU32::new(0),
                })
            })
            .clone();
        // Fair: once requests queue, a freed slot goes to the first of them, and this fails.
        if let Ok(permit) = slots.sem.clone().try_acquire_owned() {
            ctx.holds.push(Box::new(permit));
            return Flow::Continue;
        }
        if slots.waiting.fetch_add(1, Ordering::AcqRel) >= me.queue {
            slots.waiting.fetch_sub(1, Ordering::AcqRel);
            return Flow::Respond(me.reject());
        }
        let waiting = Waiting(slots);
        let me = me.clone();
        Flow::Wait(Box::pin(async move {
            let sem = waiting.0.sem.clone();
            let got = tokio::time::timeout(me.queue_timeout, sem.acquire_owned()).await;
            drop(waiting);
            match got {
                Ok(Ok(permit)) => Ok(Later {
                    hold: Some(Box::new(permit)),
                    ..Later::default()
                }),
                _ => Err(me.reject()),
            }
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::{req, AccessNow};
    use gatehouse_plugin_api::PluginKind;
    use serde_json::json;

    fn build(config: serde_json::Value) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        PluginKind::build(&Kind, &config, &BuildEnv::default())
    }

    #[test]
    fn bad_configs_name_the_field() {
        let errs: Vec<String> = build(json!({"max": 0, "status": 99, "key": "planet"}))
            .err()
            .unwrap()
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert_eq!(errs[0], "max: must be > 0");
        assert!(errs[1].starts_with("status: "), "{errs:?}");
        assert!(
            errs[2].starts_with("key: unknown key \"planet\""),
            "{errs:?}"
        );
    }

    #[test]
    fn slots_are_held_until_the_hold_is_dropped() {
        let p = build(json!({"max": 2, "key": "ip"})).unwrap();
        let (mut a, mut b, mut c) = (req("10.0.0.1"), req("10.0.0.1"), req("10.0.0.1"));
        assert!(a.access_now(&*p).is_ok());
        assert!(b.access_now(&*p).is_ok());
        let r = c.access_now(&*p).unwrap_err();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
        // Another key has its own slots.
        assert!(req("10.0.0.2").access_now(&*p).is_ok());
        // The first request ends: its slot is free again.
        a.holds.clear();
        assert!(c.access_now(&*p).is_ok());
        assert_eq!(c.holds.len(), 1);
    }

    #[tokio::test]
    async fn a_short_queue_waits_in_order_then_times_out() {
        let p =
            build(json!({"max": 1, "key": "route", "queue": 1, "queue_timeout": "200ms"})).unwrap();
        let mut first = req("10.0.0.1");
        assert!(first.access_now(&*p).is_ok());
        let mut second = req("10.0.0.2");
        let Flow::Wait(waiting) = p.access(&mut second.ctx()) else {
            panic!("the second request queues");
        };
        // The queue (1) is full: the third is rejected at once.
        let third = req("10.0.0.3").access_now(&*p);
        assert_eq!(third.unwrap_err().status(), 503);
        // The first ends while the second waits: the second gets the slot.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(first);
        });
        let later = waiting.await.unwrap();
        assert!(later.hold.is_some());
        release.await.unwrap();
        // Nothing frees the slot now: the next one waits its 200 ms, then is rejected.
        let mut fourth = req("10.0.0.4");
        let Flow::Wait(waiting) = p.access(&mut fourth.ctx()) else {
            panic!("queues");
        };
        let t = std::time::Instant::now();
        assert_eq!(waiting.await.err().unwrap().status(), 503);
        assert!(t.elapsed() >= Duration::from_millis(190));
        drop(later);
        // A client that goes away while queued leaves the queue.
        let mut fifth = req("10.0.0.5");
        let Flow::Continue = p.access(&mut fifth.ctx()) else {
            panic!("the slot is free again");
        };
        let mut sixth = req("10.0.0.6");
        let Flow::Wait(gone) = p.access(&mut sixth.ctx()) else {
            panic!("queues");
        };
        drop(gone);
        let mut seventh = req("10.0.0.7");
        assert!(
            matches!(p.access(&mut seventh.ctx()), Flow::Wait(_)),
            "the queue place was given back"
        );
    }
}
