//! `adaptive-shed`: CPU- and latency-adaptive load shedding in the style of BBR (Kratos,
//! Sentinel). While the gateway's CPU is over a threshold (and for a cool-down after the last
//! shed), a request is admitted only while the requests in flight stay under the capacity
//! the gateway has shown: its best pass rate times its best response time over the last
//! window. Sheddable requests get a smaller share of that capacity, so they are always shed
//! before critical ones. Rejections are 503 + `Retry-After`, so well-behaved clients back off.

use crate::cpu;
use gatehouse_plugin_api::{
    header_name, json_response, now_ns, rejection_status, BuildEnv, FieldError, Flow, Plugin,
    PriorityClass, RequestCtx, TypedKind,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Sheds load when the gateway is overloaded, sheddable routes first.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Shedding is armed while the gateway process uses more than this share (0-1) of the
    /// CPUs it may run on.
    #[serde(default = "point_eight")]
    pub cpu_threshold: f64,
    /// The share (0-1] of the measured capacity that sheddable requests may fill; critical
    /// requests may fill all of it.
    #[serde(default = "half")]
    pub sheddable_share: f64,
    /// How far back pass rate and response time are measured (in 10 buckets).
    #[serde(default = "one_second", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub window: Duration,
    /// After a shed, keep enforcing the capacity this long even if the CPU falls below the
    /// threshold: the CPU reading lags, and a burst should not get through at once.
    #[serde(default = "one_second", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub cooldown: Duration,
    /// A request header (`critical` or `sheddable`) that overrides the route's class. Only
    /// set this when a layer in front of the gateway controls that header.
    #[serde(default)]
    pub priority_header: Option<String>,
    /// Status of a shed request.
    #[serde(default = "unavailable")]
    pub status: u16,
    /// `Retry-After` seconds on a shed request.
    #[serde(default = "one")]
    pub retry_after: u32,
}

fn point_eight() -> f64 {
    0.8
}
fn half() -> f64 {
    0.5
}
fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn unavailable() -> u16 {
    503
}
fn one() -> u32 {
    1
}

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = "adaptive-shed";
    // First in access: shedding must cost less than the work it saves.
    const PRIORITY: i32 = 1980;
    type Config = Config;

    fn build(&self, config: Config, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        // The sampler thread starts with the first request that reads it, not here: building
        // is also how `gatehouse validate` checks a config, which must start nothing.
        let read = || {
            cpu::start_sampler();
            cpu::usage()
        };
        Ok(Arc::new(Shed::new(config, Arc::new(read))?))
    }
}

const BUCKETS: usize = 10;

/// Completed requests and their summed response times per bucket of a rolling window.
/// Atomics only: every worker records into it without a lock. A bucket is reset by the first
/// request of its new period; a record racing the reset may be lost, which only blurs a
/// statistic.
struct Window {
    bucket_ns: u64,
    buckets: [Bucket; BUCKETS],
}

#[derive(Default)]
struct Bucket {
    period: AtomicU64,
    passed: AtomicU64,
    rt_sum_us: AtomicU64,
}

impl Window {
    fn record(&self, now: u64, rt_us: u64) {
        let period = now / self.bucket_ns;
        let b = &self.buckets[(period % BUCKETS as u64) as usize];
        if b.period.load(Ordering::Acquire) != period
            && b.period.swap(period, Ordering::AcqRel) != period
        {
            b.passed.store(0, Ordering::Release);
            b.rt_sum_us.store(0, Ordering::Release);
        }
        b.passed.fetch_add(1, Ordering::AcqRel);
        b.rt_sum_us.fetch_add(rt_us, Ordering::AcqRel);
    }

    /// The most requests a finished bucket passed, and the lowest mean response time (µs)
    /// of a finished bucket, over the window; None before there is any.
    fn capacity(&self, now: u64) -> Option<(u64, u64)> {
        let current = now / self.bucket_ns;
        let (mut max_pass, mut min_rt) = (0, u64::MAX);
        for b in &self.buckets {
            let p = b.period.load(Ordering::Acquire);
            if p >= current || current - p > BUCKETS as u64 {
                continue;
            }
            let passed = b.passed.load(Ordering::Acquire);
            if passed == 0 {
                continue;
            }
            max_pass = max_pass.max(passed);
            min_rt = min_rt.min(b.rt_sum_us.load(Ordering::Acquire) / passed);
        }
        (max_pass > 0).then_some((max_pass, min_rt.max(1)))
    }
}

pub struct Shed(Arc<Inner>);

struct Inner {
    cpu_threshold: f64,
    sheddable_share: f64,
    cooldown_ns: u64,
    priority_header: Option<HeaderName>,
    status: StatusCode,
    retry_after: HeaderValue,
    window: Window,
    in_flight: AtomicU64,
    last_shed: AtomicU64,
    /// The CPU reading (0-1); a parameter so tests can drive it.
    cpu: Arc<dyn Fn() -> f64 + Send + Sync>,
}

/// A request in flight: counted until it ends, when its response time is recorded.
struct Flight {
    inner: Arc<Inner>,
    started: u64,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let now = now_ns();
        self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
        let rt_us = now.saturating_sub(self.started) / 1000;
        self.inner.window.record(now, rt_us);
    }
}

impl Shed {
    fn new(c: Config, cpu: Arc<dyn Fn() -> f64 + Send + Sync>) -> Result<Self, Vec<FieldError>> {
        let mut errs = Vec::new();
        if !(0.0..=1.0).contains(&c.cpu_threshold) {
            errs.push(FieldError::new("cpu_threshold", "must be from 0 to 1"));
        }
        if !(c.sheddable_share > 0.0 && c.sheddable_share <= 1.0) {
            errs.push(FieldError::new(
                "sheddable_share",
                "must be more than 0 and at most 1",
            ));
        }
        if c.window < Duration::from_millis(10) {
            errs.push(FieldError::new("window", "must be at least 10ms"));
        }
        let priority_header = match c.priority_header.as_deref().map(header_name) {
            Some(Ok(h)) => Some(h),
            Some(Err(e)) => {
                errs.push(FieldError::new("priority_header", e));
                None
            }
            None => None,
        };
        let status = rejection_status("status", c.status, &mut errs);
        let (Some(status), true) = (status, errs.is_empty()) else {
            return Err(errs);
        };
        Ok(Shed(Arc::new(Inner {
            cpu_threshold: c.cpu_threshold,
            sheddable_share: c.sheddable_share,
            cooldown_ns: c.cooldown.as_nanos() as u64,
            priority_header,
            status,
            retry_after: HeaderValue::from(c.retry_after),
            window: Window {
                bucket_ns: (c.window.as_nanos() as u64 / BUCKETS as u64).max(1),
                buckets: Default::default(),
            },
            in_flight: AtomicU64::new(0),
            last_shed: AtomicU64::new(0),
            cpu,
        })))
    }
}

impl Inner {
    fn class(&self, ctx: &RequestCtx<'_>) -> PriorityClass {
        let from_header = self
            .priority_header
            .as_ref()
            .and_then(|h| ctx.parts.headers.get(h))
            .and_then(|v| match v.as_bytes() {
                b"critical" => Some(PriorityClass::Critical),
                b"sheddable" => Some(PriorityClass::Sheddable),
                _ => None,
            });
        from_header.unwrap_or(ctx.priority_class)
    }

    /// Whether a request of `class` must be shed now.
    fn overloaded(&self, class: PriorityClass, now: u64) -> bool {
        let cooling = now < self.last_shed.load(Ordering::Relaxed) + self.cooldown_ns;
        if !cooling && (self.cpu)() < self.cpu_threshold {
            return false;
        }
        let Some((max_pass, min_rt_us)) = self.window.capacity(now) else {
            return false;
        };
        // Little's law: in flight = throughput × time in the system.
        let capacity = (max_pass as u128 * min_rt_us as u128 * 1000 / self.window.bucket_ns as u128)
            .max(1) as f64;
        let ceiling = match class {
            PriorityClass::Critical => capacity,
            PriorityClass::Sheddable => (capacity * self.sheddable_share).max(1.0),
        };
        self.in_flight.load(Ordering::Acquire) as f64 >= ceiling
    }
}

impl Plugin for Shed {
    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let me = &self.0;
        let now = now_ns();
        if me.overloaded(me.class(ctx), now) {
            me.last_shed.store(now, Ordering::Relaxed);
            let mut h = HeaderMap::new();
            h.insert(http::header::RETRY_AFTER, me.retry_after.clone());
            return Flow::Respond(json_response(me.status, "overloaded, retry later", h));
        }
        me.in_flight.fetch_add(1, Ordering::AcqRel);
        ctx.holds.push(Box::new(Flight {
            inner: me.clone(),
            started: now,
        }));
        Flow::Continue
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::{req, AccessNow, Req};
    use gatehouse_plugin_api::{parse_config, PluginKind};
    use serde_json::json;
    use std::sync::atomic::AtomicU64;

    fn shed(config: serde_json::Value, cpu: Arc<AtomicU64>) -> Shed {
        let read = move || cpu.load(Ordering::Relaxed) as f64 / 100.0;
        Shed::new(parse_config(&config).unwrap(), Arc::new(read)).unwrap()
    }

    #[test]
    fn bad_configs_name_the_field() {
        let errs = PluginKind::build(
            &Kind,
            &json!({"cpu_threshold": 2, "sheddable_share": 0, "priority_header": "a b"}),
            &BuildEnv::default(),
        )
        .err()
        .unwrap();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["cpu_threshold", "sheddable_share", "priority_header"]
        );
    }

    #[test]
    fn sheds_sheddable_first_once_the_cpu_is_hot_and_in_flight_passes_capacity() {
        let cpu = Arc::new(AtomicU64::new(10));
        let s = shed(
            json!({"cpu_threshold": 0.8, "window": "1s", "priority_header": "x-prio"}),
            cpu.clone(),
        );
        // A measured past: 100 requests per 100 ms bucket at 10 ms each → capacity
        // 100 × 10 ms / 100 ms = 10 in flight.
        let now = now_ns();
        for back in 1..=5u64 {
            for _ in 0..100 {
                s.0.window.record(now - back * 100_000_000, 10_000);
            }
        }
        let mut held = Vec::new();
        let admit = |class: PriorityClass, held: &mut Vec<Req>| {
            let mut r = req("10.0.0.1");
            r.priority_class = class;
            let ok = r.access_now(&s).is_ok();
            held.push(r);
            ok
        };
        // Cool CPU: everything is admitted, whatever is in flight.
        for _ in 0..12 {
            assert!(admit(PriorityClass::Sheddable, &mut held));
        }
        held.clear();
        assert_eq!(
            s.0.in_flight.load(Ordering::Relaxed),
            0,
            "holds released the slots"
        );
        // Hot: sheddable may fill half the capacity (5), critical all of it (10).
        cpu.store(95, Ordering::Relaxed);
        let mut shed_count = 0;
        for _ in 0..5 {
            assert!(admit(PriorityClass::Sheddable, &mut held));
        }
        if !admit(PriorityClass::Sheddable, &mut held) {
            shed_count += 1;
        }
        assert_eq!(shed_count, 1, "the 6th sheddable request is shed");
        for _ in 0..5 {
            assert!(admit(PriorityClass::Critical, &mut held));
        }
        let mut r = req("10.0.0.1");
        let resp = r.access_now(&s).unwrap_err();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        // A trusted header overrides the route's class.
        let mut r = req("10.0.0.1");
        r.priority_class = PriorityClass::Critical;
        r.parts
            .headers
            .insert("x-prio", "sheddable".parse().unwrap());
        held.truncate(8); // 7 in flight: under critical's 10, over sheddable's 5
        assert!(r.access_now(&s).is_err(), "sheddable by header");
        r.parts.headers.remove("x-prio");
        assert!(r.access_now(&s).is_ok(), "critical by route");
        // Cooling down: the CPU reads low, but a shed just happened, so capacity still holds.
        cpu.store(10, Ordering::Relaxed);
        let mut r = req("10.0.0.1");
        r.priority_class = PriorityClass::Sheddable;
        assert!(r.access_now(&s).is_err());
    }
}
