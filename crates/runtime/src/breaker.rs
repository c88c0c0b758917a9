//! Circuit breakers (per route and per target): closed → open on a failure or slow-call
//! ratio over a minimum of calls → half-open after a wait, with a few probes → closed.
//! Sans-IO: every call takes the clock time, so tests drive it with a fake clock.

use crate::window::Window;
use gatehouse_model::CircuitBreaker;
use http::StatusCode;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// A breaker's state as shown in `/status` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// The breaker's config in clock nanoseconds.
#[derive(Clone)]
pub struct Policy {
    window_ns: u64,
    min_calls: u64,
    failure_ratio: f64,
    failure_statuses: Box<[u16]>,
    slow_ns: Option<u64>,
    slow_ratio: f64,
    open_ns: u64,
    probes: u32,
}

impl Policy {
    pub fn new(c: &CircuitBreaker) -> Self {
        let ns = |d: Duration| d.as_nanos().min(u128::from(u64::MAX)) as u64;
        Self {
            window_ns: ns(c.window),
            min_calls: u64::from(c.min_calls),
            failure_ratio: c.failure_ratio,
            failure_statuses: c.failure_statuses.clone().into_boxed_slice(),
            slow_ns: c.slow_call_duration.map(ns),
            slow_ratio: c.slow_call_ratio,
            open_ns: ns(c.open_for),
            probes: c.half_open_probes,
        }
    }

    pub fn is_failure(&self, status: StatusCode) -> bool {
        self.failure_statuses.contains(&status.as_u16())
    }

    pub fn is_slow(&self, took: Duration) -> bool {
        self.slow_ns
            .is_some_and(|s| took.as_nanos() > u128::from(s))
    }
}

/// One breaker's state: atomics, shared by every request (and kept across reloads).
#[derive(Default)]
pub struct Breaker {
    state: AtomicU8,
    opened_at: AtomicU64,
    /// Half-open: probes let through, and probes that succeeded.
    probes_out: AtomicU32,
    probes_ok: AtomicU32,
    window: Window,
    /// Times it opened (metrics).
    pub opened: AtomicU64,
}

/// A call the breaker refused: how long until it lets probes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after: Duration,
}

impl Breaker {
    pub fn state(&self, p: &Policy, now_ns: u64) -> State {
        match self.state.load(Ordering::Acquire) {
            CLOSED => State::Closed,
            OPEN if now_ns
                >= self
                    .opened_at
                    .load(Ordering::Acquire)
                    .saturating_add(p.open_ns) =>
            {
                State::HalfOpen
            }
            OPEN => State::Open,
            _ => State::HalfOpen,
        }
    }

    /// Whether a call would be let through, without taking a probe slot (for filtering
    /// candidates; [`Breaker::admit`] decides).
    pub fn would_admit(&self, p: &Policy, now_ns: u64) -> bool {
        match self.state(p, now_ns) {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => {
                self.state.load(Ordering::Acquire) == OPEN
                    || self.probes_out.load(Ordering::Acquire) < p.probes
            }
        }
    }

    /// Lets a call through, or refuses it while open (and, half-open, beyond the probes).
    pub fn admit(&self, p: &Policy, now_ns: u64) -> Result<(), Refused> {
        let opened = self.opened_at.load(Ordering::Acquire);
        match self.state.load(Ordering::Acquire) {
            CLOSED => return Ok(()),
            OPEN => {
                let until = opened.saturating_add(p.open_ns);
                if now_ns < until {
                    return Err(Refused {
                        retry_after: Duration::from_nanos(until - now_ns),
                    });
                }
                // The wait is over: the first caller turns it half-open.
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.probes_out.store(0, Ordering::Release);
                    self.probes_ok.store(0, Ordering::Release);
                }
            }
            _ => {}
        }
        // Half-open: only `probes` calls go through until they have answered.
        let taken = self.probes_out.fetch_add(1, Ordering::AcqRel);
        if taken < p.probes {
            Ok(())
        } else {
            self.probes_out.fetch_sub(1, Ordering::AcqRel);
            Err(Refused {
                retry_after: Duration::from_secs(1),
            })
        }
    }

    /// Records how an admitted call went. Returns the new state when it changed.
    pub fn record(&self, p: &Policy, now_ns: u64, failed: bool, slow: bool) -> Option<State> {
        match self.state.load(Ordering::Acquire) {
            CLOSED => {
                self.window
                    .add(now_ns, p.window_ns, [1, u32::from(failed), u32::from(slow)]);
                if !failed && !slow {
                    return None;
                }
                let [calls, failures, slows] = self.window.sum(now_ns, p.window_ns).0;
                let over = |n: u64, ratio: f64| n as f64 >= ratio * calls as f64;
                if calls >= p.min_calls
                    && (over(failures, p.failure_ratio)
                        || (p.slow_ns.is_some() && over(slows, p.slow_ratio)))
                {
                    return self.open(CLOSED, now_ns);
                }
                None
            }
            HALF_OPEN => {
                if failed || slow {
                    return self.open(HALF_OPEN, now_ns);
                }
                let ok = self.probes_ok.fetch_add(1, Ordering::AcqRel) + 1;
                if ok >= p.probes
                    && self
                        .state
                        .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    self.window.clear();
                    return Some(State::Closed);
                }
                None
            }
            // Calls admitted before it opened finish while it is open: nothing to learn.
            _ => None,
        }
    }

    fn open(&self, from: u8, now_ns: u64) -> Option<State> {
        self.state
            .compare_exchange(from, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        self.opened_at.store(now_ns, Ordering::Release);
        self.opened.fetch_add(1, Ordering::Relaxed);
        Some(State::Open)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn policy(yaml: &str) -> Policy {
        let c: CircuitBreaker = yaml_serde::from_str(yaml).unwrap();
        Policy::new(&c)
    }

    #[test]
    fn opens_half_opens_and_closes_as_configured() {
        let p = policy("{min_calls: 4, failure_ratio: 0.5, open_for: 10s, half_open_probes: 2}");
        let b = Breaker::default();
        let t = 100 * S;
        // Three calls, all failed: under min_calls, still closed.
        for _ in 0..3 {
            assert!(b.admit(&p, t).is_ok());
            assert_eq!(b.record(&p, t, true, false), None);
        }
        // The fourth: 4 calls, 4 failed ≥ 50 %: open.
        assert_eq!(
            b.record(&p, t, false, false),
            None,
            "a success does not open it"
        );
        assert_eq!(b.state(&p, t), State::Closed);
        assert_eq!(b.record(&p, t, true, false), Some(State::Open));
        assert_eq!(b.state(&p, t), State::Open);
        assert_eq!(
            b.admit(&p, t + 4 * S),
            Err(Refused {
                retry_after: Duration::from_secs(6)
            })
        );
        // After open_for: half-open, two probes and no more.
        let t = t + 10 * S;
        assert_eq!(b.state(&p, t), State::HalfOpen);
        assert!(b.admit(&p, t).is_ok());
        assert!(b.admit(&p, t).is_ok());
        assert!(b.admit(&p, t).is_err(), "a third probe");
        assert_eq!(b.record(&p, t, false, false), None);
        assert_eq!(b.record(&p, t, false, false), Some(State::Closed));
        assert!(b.admit(&p, t).is_ok());
        assert_eq!(b.opened.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let p = policy("{min_calls: 1, failure_ratio: 1.0, open_for: 1s, half_open_probes: 3}");
        let b = Breaker::default();
        assert_eq!(b.record(&p, S, true, false), Some(State::Open));
        assert!(b.admit(&p, 2 * S).is_ok());
        assert_eq!(b.record(&p, 2 * S, true, false), Some(State::Open));
        assert_eq!(b.state(&p, 2 * S + S / 2), State::Open);
        assert_eq!(b.state(&p, 3 * S), State::HalfOpen);
    }

    #[test]
    fn slow_calls_open_it_when_a_slow_call_ratio_is_set() {
        let p = policy("{min_calls: 2, slow_call_duration: 100ms, slow_call_ratio: 0.5}");
        assert!(p.is_slow(Duration::from_millis(150)));
        assert!(!p.is_slow(Duration::from_millis(50)));
        let b = Breaker::default();
        assert_eq!(b.record(&p, S, false, false), None);
        assert_eq!(b.record(&p, S, false, true), Some(State::Open));
        // Without a slow_call_duration nothing is slow.
        let p = policy("{min_calls: 1}");
        assert!(!p.is_slow(Duration::from_secs(100)));
    }
}
