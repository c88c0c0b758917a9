//! A lock-free sliding window of event counts (ten buckets), shared by outlier detection,
//! circuit breakers and retry budgets: each asks "how many, and how many of them failed,
//! over the last N seconds", from many threads, without a lock on the request path.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const BUCKETS: usize = 10;

/// Counts of up to three kinds of event per bucket (e.g. calls, failures, slow calls). The
/// window's span is given on every call, so a reload that changes it needs no new state: the
/// buckets of the old span simply age out.
#[derive(Default)]
pub struct Window {
    buckets: [Bucket; BUCKETS],
}

#[derive(Default)]
struct Bucket {
    /// Which slot of time (`now / bucket span`) the counts belong to; +1 so 0 means empty.
    slot: AtomicU64,
    counts: [AtomicU32; 3],
}

/// Sums over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts(pub [u64; 3]);

fn slot(now_ns: u64, span_ns: u64) -> u64 {
    now_ns / (span_ns / BUCKETS as u64).max(1) + 1
}

impl Window {
    /// Adds `by[k]` to counter k at time `now_ns`. A bucket from an older slot is reset
    /// first; racing resets may lose a few events, which the ratios tolerate.
    pub fn add(&self, now_ns: u64, span_ns: u64, by: [u32; 3]) {
        let slot = slot(now_ns, span_ns);
        let b = &self.buckets[(slot % BUCKETS as u64) as usize];
        let seen = b.slot.load(Ordering::Acquire);
        if seen != slot
            && b.slot
                .compare_exchange(seen, slot, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for c in &b.counts {
                c.store(0, Ordering::Release);
            }
        }
        for (c, n) in b.counts.iter().zip(by) {
            if n > 0 {
                c.fetch_add(n, Ordering::AcqRel);
            }
        }
    }

    /// The sums over the buckets still inside the window at `now_ns`.
    pub fn sum(&self, now_ns: u64, span_ns: u64) -> Counts {
        let now = slot(now_ns, span_ns);
        let mut out = [0u64; 3];
        for b in &self.buckets {
            let slot = b.slot.load(Ordering::Acquire);
            if slot != 0 && slot + (BUCKETS as u64) > now && slot <= now {
                for (o, c) in out.iter_mut().zip(&b.counts) {
                    *o += u64::from(c.load(Ordering::Acquire));
                }
            }
        }
        Counts(out)
    }

    /// Forgets everything (a breaker closing starts a fresh window).
    pub fn clear(&self) {
        for b in &self.buckets {
            b.slot.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const SPAN: u64 = 10 * S;

    #[test]
    fn counts_fall_out_of_the_window() {
        let w = Window::default();
        w.add(0, SPAN, [1, 1, 0]);
        w.add(S / 2, SPAN, [1, 0, 0]);
        w.add(5 * S, SPAN, [3, 2, 1]);
        assert_eq!(w.sum(5 * S, SPAN).0, [5, 3, 1]);
        // Ten seconds on, the first second's bucket is out.
        assert_eq!(w.sum(10 * S, SPAN).0, [3, 2, 1]);
        assert_eq!(w.sum(16 * S, SPAN).0, [0, 0, 0]);
        // A reused bucket starts from zero.
        w.add(20 * S, SPAN, [1, 0, 0]);
        assert_eq!(w.sum(20 * S, SPAN).0, [1, 0, 0]);
        w.clear();
        assert_eq!(w.sum(20 * S, SPAN).0, [0, 0, 0]);
    }
}
