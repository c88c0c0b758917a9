//! Distribution tests of the balancers: exact where the algorithm is deterministic,
//! statistical (with wide enough bounds to never flake) where it draws at random.

use super::*;
use gatehouse_model::{Keepalive, UpstreamProtocol};

fn targets(n: usize) -> Vec<Arc<TargetState>> {
    (0..n)
        .filter_map(|i| {
            TargetState::new(
                &format!("10.0.0.{i}:80"),
                UpstreamProtocol::Http1,
                Keepalive::default(),
                1,
            )
            .ok()
            .map(Arc::new)
        })
        .collect()
}

fn addrs(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
}

fn counts(b: &Balancer, t: &[Arc<TargetState>], picks: usize) -> Vec<usize> {
    let mut c = vec![0; t.len()];
    for k in 0..picks {
        if let Some(i) = b.pick(t, format!("key{k}").as_bytes(), &[]) {
            c[i] += 1;
        }
    }
    c
}

fn balancer(kind: Balance, weights: &[u32]) -> Balancer {
    let a = addrs(weights.len());
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    Balancer::new(kind, &refs, weights)
}

#[test]
fn smooth_round_robin_matches_nginx_sequence() {
    // nginx's documented example: weights a=5, b=1, c=1 give a a b a c a a.
    assert_eq!(&*smooth_sequence(&[5, 1, 1]), &[0, 0, 1, 0, 2, 0, 0]);
    let t = targets(3);
    let b = balancer(Balance::RoundRobin, &[5, 1, 1]);
    assert_eq!(counts(&b, &t, 7000), vec![5000, 1000, 1000]);
}

#[test]
fn weight_zero_is_drained_everywhere() {
    let t = targets(3);
    for kind in [
        Balance::RoundRobin,
        Balance::Random,
        Balance::LeastConn,
        Balance::Ewma,
        Balance::ConsistentHash,
    ] {
        let b = balancer(kind, &[1, 0, 1]);
        let c = counts(&b, &t, 3000);
        assert_eq!(c[1], 0, "{kind:?} picked a drained target: {c:?}");
        assert!(c[0] > 0 && c[2] > 0, "{kind:?}: {c:?}");
        let none = balancer(kind, &[0, 0, 0]);
        assert_eq!(none.pick(&t, b"k", &[]), None, "{kind:?}");
    }
}

#[test]
fn weighted_random_follows_weights() {
    let t = targets(2);
    let b = balancer(Balance::Random, &[1, 3]);
    let c = counts(&b, &t, 40_000);
    // Expected 10 000 / 30 000; the standard deviation is about 87, so ±600 never flakes.
    assert!((c[0] as i64 - 10_000).abs() < 600, "{c:?}");
}

#[test]
fn least_conn_prefers_idle_targets_per_weight() {
    let t = targets(3);
    let b = balancer(Balance::LeastConn, &[1, 1, 2]);
    t[0].active.store(5, Ordering::Relaxed);
    t[1].active.store(1, Ordering::Relaxed);
    t[2].active.store(3, Ordering::Relaxed);
    // Load per weight: 6/1, 2/1, 4/2 → tie between 1 and 2; never 0.
    for _ in 0..100 {
        let i = b.pick(&t, b"", &[]);
        assert!(matches!(i, Some(1) | Some(2)), "{i:?}");
    }
    t[2].active.store(0, Ordering::Relaxed);
    assert_eq!(b.pick(&t, b"", &[]), Some(2));
    assert_eq!(b.pick(&t, b"", &[2]), Some(1));
}

#[test]
fn ewma_sends_most_traffic_to_the_fast_target() {
    let t = targets(3);
    let now = std::time::Instant::now();
    t[0].record_latency(std::time::Duration::from_millis(50), now);
    t[1].record_latency(std::time::Duration::from_millis(1), now);
    t[2].record_latency(std::time::Duration::from_millis(50), now);
    let b = balancer(Balance::Ewma, &[1, 1, 1]);
    let c = counts(&b, &t, 3000);
    // P2C: the fast target wins every pair it is in: 1 - (2/3)^2 = 5/9 of picks, plus the
    // draws where both picks are it.
    assert!(c[1] > 1500, "{c:?}");
}

#[test]
fn consistent_hash_is_stable_and_moves_little() {
    let t = targets(5);
    let b = balancer(Balance::ConsistentHash, &[1, 1, 1, 1, 1]);
    let c = counts(&b, &t, 10_000);
    for n in &c {
        assert!((1000..3200).contains(n), "uneven ring: {c:?}");
    }
    for k in 0..100 {
        let key = format!("user{k}");
        assert_eq!(
            b.pick(&t, key.as_bytes(), &[]),
            b.pick(&t, key.as_bytes(), &[])
        );
    }
    // Drain target 4: only its keys move.
    let fewer = balancer(Balance::ConsistentHash, &[1, 1, 1, 1, 0]);
    let mut moved = 0;
    for k in 0..10_000 {
        let key = format!("key{k}");
        let before = b.pick(&t, key.as_bytes(), &[]);
        let after = fewer.pick(&t, key.as_bytes(), &[]);
        if before != after {
            assert_eq!(before, Some(4), "key {key} moved off a target that stayed");
            moved += 1;
        }
    }
    assert_eq!(moved, c[4]);
}

#[test]
fn retries_skip_tried_targets() {
    let t = targets(3);
    for kind in [
        Balance::RoundRobin,
        Balance::Random,
        Balance::LeastConn,
        Balance::Ewma,
        Balance::ConsistentHash,
    ] {
        let b = balancer(kind, &[1, 1, 1]);
        for _ in 0..50 {
            let i = b.pick(&t, b"k", &[0, 2]);
            assert_eq!(i, Some(1), "{kind:?}");
        }
        assert_eq!(b.pick(&t, b"k", &[0, 1, 2]), None, "{kind:?}");
    }
}

#[test]
fn subsets_spread_nodes_evenly() {
    // 12 targets, subsets of 3, 12 nodes: every target is used by exactly 3 nodes.
    let mut uses = vec![0; 12];
    for node in 0..12 {
        let s = subset(12, 3, node);
        assert_eq!(s.len(), 3);
        assert_eq!(s, subset(12, 3, node), "not deterministic");
        for i in s {
            uses[i] += 1;
        }
    }
    assert_eq!(uses, vec![3; 12]);
    assert_eq!(subset(4, 10, 7), vec![0, 1, 2, 3]);
}
