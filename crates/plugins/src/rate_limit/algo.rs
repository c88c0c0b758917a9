//! Rate-limit arithmetic, free of I/O and clocks so it can be table-tested: each algorithm
//! takes a key's state and the time, and says whether one more request fits.

/// How requests are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Counts per aligned window; cheap, but allows up to twice the limit across a boundary.
    FixedWindow,
    /// The current window's count plus the previous one's, weighted by how much of it still
    /// overlaps the sliding window (Cloudflare's approximation): no boundary bursts.
    SlidingWindow,
    /// GCRA: a bucket of `burst` tokens refilled at limit/window.
    TokenBucket { burst: u64 },
    /// Requests leave evenly spaced at limit/window; an early one waits for its slot, up to
    /// `max_delay_ns`, instead of being rejected (nginx `limit_req` without `nodelay`).
    LeakyBucket { max_delay_ns: u64 },
}

/// One key's state. The fields mean different things per algorithm (window start and counts,
/// or the theoretical arrival time); `touched` is for forgetting idle keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub touched: u64,
}

/// The verdict on one request, with what the `RateLimit` headers report. Times in ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub remaining: u64,
    /// Until the quota is back (the header's `t`).
    pub reset_ns: u64,
    /// When rejected: until a retry can succeed.
    pub retry_after_ns: u64,
    /// When admitted by the leaky bucket: how long to hold the request first.
    pub delay_ns: u64,
}

impl Decision {
    fn allow(remaining: u64, reset_ns: u64) -> Self {
        Decision {
            allowed: true,
            remaining,
            reset_ns,
            retry_after_ns: 0,
            delay_ns: 0,
        }
    }
    /// A rejection: the `RateLimit` header's `t` and `Retry-After` both say when a request
    /// is admitted again.
    fn deny(retry_after_ns: u64) -> Self {
        Decision {
            allowed: false,
            remaining: 0,
            reset_ns: retry_after_ns.max(1),
            retry_after_ns: retry_after_ns.max(1),
            delay_ns: 0,
        }
    }
}

/// A limit: `limit` requests per `window_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub algorithm: Algorithm,
    pub limit: u64,
    pub window_ns: u64,
}

impl Limit {
    /// Time between two requests at the sustained rate.
    fn interval_ns(&self) -> u64 {
        (self.window_ns / self.limit.max(1)).max(1)
    }

    /// Decides on one request at `now` (ns on any monotonic clock), updating `s`.
    pub fn check(&self, s: &mut State, now: u64) -> Decision {
        s.touched = now;
        let (limit, w) = (self.limit, self.window_ns.max(1));
        match self.algorithm {
            Algorithm::FixedWindow => {
                // a: window start, b: count
                let start = now - now % w;
                if s.a != start || s.b == 0 {
                    s.a = start;
                    s.b = 0;
                }
                let reset = start + w - now;
                if s.b < limit {
                    s.b += 1;
                    Decision::allow(limit - s.b, reset)
                } else {
                    Decision::deny(reset)
                }
            }
            Algorithm::SlidingWindow => {
                // a: current window start, b: its count, c: previous window's count
                let start = now - now % w;
                if s.a != start {
                    s.c = if s.a + w == start { s.b } else { 0 };
                    s.b = 0;
                    s.a = start;
                }
                let elapsed = now - start;
                let weighted_prev = mul_div(s.c, w - elapsed, w);
                let reset = start + w - now;
                if weighted_prev + s.b < limit {
                    s.b += 1;
                    Decision::allow(limit - (weighted_prev + s.b), reset)
                } else {
                    Decision::deny(self.sliding_retry(s, elapsed))
                }
            }
            Algorithm::TokenBucket { burst } => {
                // a: theoretical arrival time (tat)
                let t = self.interval_ns();
                let burst = burst.max(1);
                let tat = s.a.max(now);
                let new_tat = tat + t;
                let allow_at = new_tat.saturating_sub(burst * t);
                if now < allow_at {
                    return Decision::deny(allow_at - now);
                }
                s.a = new_tat;
                let remaining = (now + burst * t - new_tat) / t;
                Decision::allow(remaining, new_tat - now)
            }
            Algorithm::LeakyBucket { max_delay_ns } => {
                let t = self.interval_ns();
                let tat = s.a.max(now);
                let delay = tat - now;
                if delay > max_delay_ns {
                    return Decision::deny(delay - max_delay_ns);
                }
                s.a = tat + t;
                let queued = delay / t;
                let capacity = max_delay_ns / t;
                Decision {
                    delay_ns: delay,
                    ..Decision::allow(capacity.saturating_sub(queued), s.a - now)
                }
            }
        }
    }

    /// Sliding window: how long until one more request would fit.
    fn sliding_retry(&self, s: &State, elapsed: u64) -> u64 {
        let (limit, w) = (self.limit, self.window_ns.max(1));
        let to_end = w - elapsed;
        if s.b < limit && s.c > 0 {
            // Within this window, once the previous window's weight has faded enough:
            // c * (w - e) / w + b < limit  ⇔  e > w - (limit - b) * w / c.
            let need = w.saturating_sub(mul_div(limit - s.b, w, s.c));
            return need.saturating_sub(elapsed) + 1;
        }
        // Next window: this window's count becomes the weighted previous one, and one more
        // fits once b * (w - e) / w < limit  ⇔  e > w - limit * w / b.
        if s.b < limit {
            return to_end;
        }
        let need = w.saturating_sub(mul_div(limit, w, s.b.max(1)));
        to_end + need + 1
    }

    /// True when `s` is as good as new at `now`, so the key can be forgotten.
    pub fn is_idle(&self, s: &State, now: u64) -> bool {
        match self.algorithm {
            Algorithm::FixedWindow => now.saturating_sub(s.touched) >= self.window_ns,
            Algorithm::SlidingWindow => now.saturating_sub(s.touched) >= 2 * self.window_ns,
            Algorithm::TokenBucket { .. } | Algorithm::LeakyBucket { .. } => s.a <= now,
        }
    }
}

fn mul_div(a: u64, b: u64, c: u64) -> u64 {
    ((a as u128 * b as u128) / c.max(1) as u128) as u64
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn run(limit: Limit, times: &[u64]) -> Vec<bool> {
        let mut s = State::default();
        times
            .iter()
            .map(|&t| limit.check(&mut s, t).allowed)
            .collect()
    }

    #[test]
    fn fixed_window_counts_per_aligned_window() {
        let l = Limit {
            algorithm: Algorithm::FixedWindow,
            limit: 2,
            window_ns: S,
        };
        assert_eq!(
            run(l, &[10 * S, 10 * S + 1, 10 * S + 2, 11 * S, 11 * S + 5]),
            [true, true, false, true, true]
        );
        let mut s = State::default();
        assert_eq!(l.check(&mut s, 20 * S + S / 4).remaining, 1);
        l.check(&mut s, 20 * S + S / 4);
        let d = l.check(&mut s, 20 * S + S / 4);
        assert_eq!(
            (d.allowed, d.retry_after_ns, d.reset_ns),
            (false, 3 * S / 4, 3 * S / 4)
        );
    }

    #[test]
    fn sliding_window_weights_the_previous_window() {
        let l = Limit {
            algorithm: Algorithm::SlidingWindow,
            limit: 10,
            window_ns: S,
        };
        let mut s = State::default();
        for i in 0..10 {
            assert!(l.check(&mut s, 100 * S + i).allowed);
        }
        assert!(!l.check(&mut s, 100 * S + 20).allowed);
        // A quarter into the next window, 10 * 0.75 = 7.5 of the previous still count.
        let at = 101 * S + S / 4;
        let admitted = (0..10).filter(|i| l.check(&mut s, at + i).allowed).count();
        assert_eq!(admitted, 3);
        // Retry-After points to when the previous window has faded enough for one more.
        let d = l.check(&mut s, at + 20);
        assert!(!d.allowed);
        let mut probe = s;
        assert!(!l.check(&mut probe, at + d.retry_after_ns - 2).allowed);
        let mut probe = s;
        assert!(l.check(&mut probe, at + 20 + d.retry_after_ns).allowed);
        // Two windows later nothing is left.
        assert!(l.check(&mut s, 103 * S).allowed);
    }

    /// For every rejection in a stream of requests: a retry just before `Retry-After` is
    /// still refused, one at it is admitted, and the `RateLimit` header's `t` says the same.
    #[test]
    fn retry_after_is_exact_for_every_rejection_and_agrees_with_t() {
        let mut rng = 7u64;
        let mut next = |max: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % max
        };
        for algorithm in [
            Algorithm::SlidingWindow,
            Algorithm::FixedWindow,
            Algorithm::TokenBucket { burst: 3 },
        ] {
            for (limit, window_ns) in [(5, 10 * S), (10, S), (1, S), (100, 60 * S)] {
                let l = Limit {
                    algorithm,
                    limit,
                    window_ns,
                };
                let mut s = State::default();
                let mut now = 1000 * S;
                for _ in 0..3000 {
                    now += next(3 * window_ns / limit.max(1) + 1);
                    let before = s;
                    let d = l.check(&mut s, now);
                    if d.allowed {
                        continue;
                    }
                    assert_eq!(
                        d.reset_ns, d.retry_after_ns,
                        "{algorithm:?}: t and Retry-After"
                    );
                    let r = d.retry_after_ns;
                    if r > 2 {
                        let mut early = before;
                        let e = l.check(&mut early, now + r - 2);
                        assert!(
                            !e.allowed,
                            "{algorithm:?} {limit}/{window_ns}: admitted before {r}"
                        );
                    }
                    let mut at = before;
                    assert!(
                        l.check(&mut at, now + r).allowed,
                        "{algorithm:?} {limit}/{window_ns}: refused at Retry-After {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn sliding_window_has_no_boundary_burst() {
        let l = Limit {
            algorithm: Algorithm::SlidingWindow,
            limit: 100,
            window_ns: S,
        };
        let mut s = State::default();
        // 100 at the end of one window, then a burst right after the boundary.
        let end = (0..100)
            .filter(|i| l.check(&mut s, 5 * S + 9 * S / 10 + i).allowed)
            .count();
        let next = (0..100)
            .filter(|i| l.check(&mut s, 6 * S + 1 + i).allowed)
            .count();
        assert_eq!(end, 100);
        assert!(next <= 1, "admitted {next} right after the boundary");
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let l = Limit {
            algorithm: Algorithm::TokenBucket { burst: 5 },
            limit: 10,
            window_ns: S,
        };
        let mut s = State::default();
        let t0 = 50 * S;
        let burst = (0..8).filter(|_| l.check(&mut s, t0).allowed).count();
        assert_eq!(burst, 5);
        let d = l.check(&mut s, t0);
        assert_eq!(d.retry_after_ns, S / 10);
        assert!(l.check(&mut s, t0 + S / 10).allowed);
        assert!(!l.check(&mut s, t0 + S / 10).allowed);
        // A full second later the bucket is full again.
        let mut s2 = s;
        assert_eq!(l.check(&mut s2, t0 + 2 * S).remaining, 4);
    }

    #[test]
    fn leaky_bucket_delays_within_max_delay() {
        let l = Limit {
            algorithm: Algorithm::LeakyBucket {
                max_delay_ns: S / 2,
            },
            limit: 10,
            window_ns: S,
        };
        let mut s = State::default();
        let t0 = 7 * S;
        let delays: Vec<_> = (0..8)
            .map(|_| {
                let d = l.check(&mut s, t0);
                d.allowed.then_some(d.delay_ns / (S / 10))
            })
            .collect();
        assert_eq!(
            delays,
            [
                Some(0),
                Some(1),
                Some(2),
                Some(3),
                Some(4),
                Some(5),
                None,
                None
            ]
        );
    }

    #[test]
    fn idle_keys_are_recognised() {
        let l = Limit {
            algorithm: Algorithm::TokenBucket { burst: 1 },
            limit: 1,
            window_ns: S,
        };
        let mut s = State::default();
        l.check(&mut s, S);
        assert!(!l.is_idle(&s, S + 1));
        assert!(l.is_idle(&s, 2 * S));
    }
}
