//! Load balancers: smooth weighted round robin, weighted random, least connections, P2C over a
//! latency EWMA, and ketama consistent hashing; plus deterministic subsetting. Each picks an
//! index into the upstream's target list, skipping targets already tried by this request.

use crate::upstream::TargetState;
use gatehouse_model::Balance;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A balancer compiled for one target list. Targets of weight 0 are never chosen.
pub enum Balancer {
    /// nginx's smooth weighted round robin, precomputed as one period of its sequence so a
    /// pick is one atomic increment instead of a lock around the running weights.
    RoundRobin {
        sequence: Box<[u32]>,
        next: AtomicUsize,
    },
    Random(Weights),
    LeastConn(Weights),
    Ewma(Weights),
    ConsistentHash(Ring),
}

/// Members with weight > 0 and the running sum of their weights, for weighted draws.
pub struct Weights {
    members: Box<[(u32, u32)]>,
    cumulative: Box<[u64]>,
}

impl Weights {
    fn new(weights: &[u32]) -> Self {
        let members: Box<[(u32, u32)]> = weights
            .iter()
            .enumerate()
            .filter(|(_, w)| **w > 0)
            .map(|(i, w)| (i as u32, *w))
            .collect();
        let mut sum = 0u64;
        let cumulative = members
            .iter()
            .map(|(_, w)| {
                sum += u64::from(*w);
                sum
            })
            .collect();
        Self {
            members,
            cumulative,
        }
    }

    fn draw(&self) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let x = fastrand::u64(0..total);
        let pos = self.cumulative.partition_point(|c| *c <= x);
        self.members.get(pos).map(|(i, _)| *i as usize)
    }

    /// A weighted draw of a member `ok` accepts; falls back to a scan when draws keep
    /// hitting refused ones.
    fn draw_where(&self, ok: &impl Fn(usize) -> bool) -> Option<usize> {
        for _ in 0..4 {
            let i = self.draw()?;
            if ok(i) {
                return Some(i);
            }
        }
        self.members
            .iter()
            .map(|(i, _)| *i as usize)
            .find(|i| ok(*i))
    }
}

/// A period of nginx's smooth weighted round robin: on each step every member gains its
/// weight, the largest is chosen and loses the total. Weights are first divided by their gcd
/// and, if the period would be huge, scaled down (keeping every member at least 1).
fn smooth_sequence(weights: &[u32]) -> Box<[u32]> {
    const MAX_PERIOD: u64 = 1 << 16;
    let mut members: Vec<(u32, u64)> = weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0)
        .map(|(i, w)| (i as u32, u64::from(*w)))
        .collect();
    let g = members.iter().fold(0, |g, (_, w)| gcd(g, *w)).max(1);
    members.iter_mut().for_each(|(_, w)| *w /= g);
    let total: u64 = members.iter().map(|(_, w)| w).sum();
    if total > MAX_PERIOD {
        members
            .iter_mut()
            .for_each(|(_, w)| *w = (*w * MAX_PERIOD / total).max(1));
    }
    let total: i64 = members.iter().map(|(_, w)| *w as i64).sum();
    let mut current = vec![0i64; members.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (k, (_, w)) in members.iter().enumerate() {
            current[k] += *w as i64;
            if current[k] > current[best] {
                best = k;
            }
        }
        current[best] -= total;
        seq.push(members[best].0);
    }
    seq.into_boxed_slice()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// An nginx/memcached-compatible ketama ring (160 points per unit of weight, crc32 of
/// `host\0port` chained with the previous point). Written here rather than using
/// pingora-ketama because that crate only takes `SocketAddr` (our targets may be host names)
/// and panics on weight 0 (cloudflare/pingora#1006).
pub struct Ring {
    points: Box<[(u32, u32)]>,
}

impl Ring {
    fn new(addresses: &[&str], weights: &[u32]) -> Self {
        let mut points = Vec::new();
        for (i, (addr, w)) in addresses.iter().zip(weights).enumerate() {
            if *w == 0 {
                continue;
            }
            let (host, port) = addr.rsplit_once(':').unwrap_or((addr, ""));
            let mut base = crc32fast::Hasher::new();
            base.update(host.as_bytes());
            base.update(b"\0");
            base.update(port.as_bytes());
            let mut prev: u32 = 0;
            for _ in 0..(160 * *w) {
                let mut h = base.clone();
                h.update(&prev.to_le_bytes());
                prev = h.finalize();
                points.push((prev, i as u32));
            }
        }
        points.sort_unstable();
        points.dedup_by_key(|p| p.0);
        Self {
            points: points.into_boxed_slice(),
        }
    }

    fn pick(&self, key: &[u8], ok: &impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = crc32fast::hash(key);
        let start = self.points.partition_point(|p| p.0 < h) % self.points.len();
        // Walk clockwise to the first target this request may use.
        (0..self.points.len())
            .map(|k| self.points[(start + k) % self.points.len()].1 as usize)
            .find(|i| ok(*i))
    }
}

impl Balancer {
    /// The algorithm's config name.
    pub fn name(&self) -> &'static str {
        match self {
            Balancer::RoundRobin { .. } => "round_robin",
            Balancer::Random(_) => "random",
            Balancer::LeastConn(_) => "least_conn",
            Balancer::Ewma(_) => "ewma",
            Balancer::ConsistentHash(_) => "consistent_hash",
        }
    }

    pub fn new(kind: Balance, addresses: &[&str], weights: &[u32]) -> Self {
        match kind {
            Balance::RoundRobin => {
                let sequence = smooth_sequence(weights);
                let start = if sequence.is_empty() {
                    0
                } else {
                    // Nodes start at different points so they do not all hit target 0 first.
                    fastrand::usize(0..sequence.len())
                };
                Balancer::RoundRobin {
                    sequence,
                    next: AtomicUsize::new(start),
                }
            }
            Balance::Random => Balancer::Random(Weights::new(weights)),
            Balance::LeastConn => Balancer::LeastConn(Weights::new(weights)),
            Balance::Ewma => Balancer::Ewma(Weights::new(weights)),
            Balance::ConsistentHash => Balancer::ConsistentHash(Ring::new(addresses, weights)),
        }
    }

    /// Chooses a target index, avoiding those in `tried`. `hash_key` is used by
    /// consistent hashing only. `None`: no target left (all drained or tried).
    pub fn pick(
        &self,
        targets: &[Arc<TargetState>],
        hash_key: &[u8],
        tried: &[usize],
    ) -> Option<usize> {
        self.pick_where(targets, hash_key, |i| !tried.contains(&i))
    }

    /// Chooses a target index among those `ok` accepts (not yet tried, healthy...).
    pub fn pick_where(
        &self,
        targets: &[Arc<TargetState>],
        hash_key: &[u8],
        ok: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let ok = &ok;
        match self {
            Balancer::RoundRobin { sequence, next } => {
                if sequence.is_empty() {
                    return None;
                }
                for _ in 0..sequence.len().min(64) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let i = sequence[n % sequence.len()] as usize;
                    if ok(i) {
                        return Some(i);
                    }
                }
                sequence.iter().map(|i| *i as usize).find(|i| ok(*i))
            }
            Balancer::Random(w) => w.draw_where(ok),
            Balancer::LeastConn(w) => {
                // Fewest in-flight requests per unit of weight; a random start breaks ties
                // without favouring the first target.
                let n = w.members.len();
                if n == 0 {
                    return None;
                }
                let start = fastrand::usize(0..n);
                let mut best: Option<(usize, u64, u64)> = None;
                for k in 0..n {
                    let (i, weight) = w.members[(start + k) % n];
                    let i = i as usize;
                    if !ok(i) {
                        continue;
                    }
                    let active = targets
                        .get(i)
                        .map_or(0, |t| t.active.load(Ordering::Relaxed))
                        as u64;
                    let (load, weight) = (active + 1, u64::from(weight));
                    let better = match best {
                        None => true,
                        Some((_, bl, bw)) => load * bw < bl * weight,
                    };
                    if better {
                        best = Some((i, load, weight));
                    }
                }
                best.map(|(i, _, _)| i)
            }
            Balancer::Ewma(w) => {
                // Power of two choices: two weighted draws, keep the lower
                // latency × (in-flight + 1) per unit of weight.
                let a = w.draw_where(ok)?;
                let b = match w.draw_where(ok) {
                    Some(b) if b != a => b,
                    _ => return Some(a),
                };
                let cost = |i: usize| {
                    let weight = w
                        .members
                        .iter()
                        .find(|(m, _)| *m as usize == i)
                        .map_or(1, |(_, w)| *w) as f64;
                    targets.get(i).map_or(f64::MAX, |t| {
                        t.ewma() * (t.active.load(Ordering::Relaxed) + 1) as f64 / weight
                    })
                };
                Some(if cost(b) < cost(a) { b } else { a })
            }
            Balancer::ConsistentHash(ring) => ring.pick(hash_key, ok),
        }
    }
}

/// Deterministic subsetting (Google SRE book, ch. 20, as in Bilibili's gateway): nodes with
/// consecutive indices take disjoint subsets of a shuffled target list, and each round of
/// nodes reshuffles, so every target gets about the same number of nodes. Returns indices into
/// `addresses` (which must be in a stable order, e.g. sorted).
pub fn subset(n: usize, subset_size: usize, node_index: u32) -> Vec<usize> {
    if subset_size == 0 || subset_size >= n {
        return (0..n).collect();
    }
    let subset_count = (n / subset_size).max(1);
    let round = u64::from(node_index) / subset_count as u64;
    let mut order: Vec<usize> = (0..n).collect();
    // Fisher-Yates with a fixed-algorithm generator (splitmix64), so every node and every
    // version of Gatehouse computes the same shuffle for the same round.
    let mut state = round.wrapping_add(0x9E37_79B9_7F4A_7C15);
    for i in (1..n).rev() {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let j = (z % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let id = node_index as usize % subset_count;
    order[id * subset_size..(id + 1) * subset_size].to_vec()
}

#[cfg(test)]
mod tests;
