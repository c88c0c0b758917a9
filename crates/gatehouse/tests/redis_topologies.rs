//! Everything that keeps state in Redis (cluster-wide rate limits, HMAC replay nonces) goes
//! through one store that speaks to a single node, a Redis Cluster, a Sentinel-watched
//! primary, or Redis over TLS. Each is started here for real, and the cluster and sentinel
//! have their primary killed while limits are being counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/redis_topology.rs"]
mod redis_topology;

use common::*;
use redis_topology::{RedisCluster, RedisSentinel, RedisTls};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Two gateway nodes sharing a limit of 10 per minute per `x-user` through `redis`.
fn shared_limit(redis: &str, origin: SocketAddr) -> String {
    format!(
        "redis: \"{redis}\"\n{}routes:\n  - {{name: r, service: svc}}\nplugins:
  - name: rate-limit
    route: r
    config: {{limit: 10, window: 1m, algorithm: fixed_window, key: \"header:x-user\", policy: redis, redis_batch: 1, nodes: 1, redis_timeout: 500ms}}
",
        upstream_yaml(&[origin], "")
    )
}

async fn status(a: SocketAddr, user: &str) -> u16 {
    get_with(a, "/x", &[("x-user", user)]).await.status
}

/// `user` makes 5 requests on each node: all admitted; the 11th, on either, is refused,
/// which only a count shared through Redis gives (each node alone would admit 10).
async fn counted_together(a: SocketAddr, b: SocketAddr, user: &str) {
    for i in 0..5 {
        assert_eq!(status(a, user).await, 200, "{user} #{i} on a");
        assert_eq!(status(b, user).await, 200, "{user} #{i} on b");
    }
    assert_eq!(status(a, user).await, 429, "{user}: the shared limit");
    assert_eq!(status(b, user).await, 429, "{user}: the shared limit");
}

/// Waits until both nodes count `user` through Redis again after a failover (probing with
/// throwaway users), within 20 s.
async fn until_shared_again(a: SocketAddr, b: SocketAddr, probe: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        let user = format!("{probe}-{n}");
        let mut shared = true;
        for _ in 0..5 {
            shared &= status(a, &user).await == 200 && status(b, &user).await == 200;
        }
        if shared && status(a, &user).await == 429 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the nodes never shared a count again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_counted_in_a_redis_cluster_and_survive_a_primary_failing_over() {
    let cluster = RedisCluster::start();
    let o = Origin::start("a").await;
    let yaml = shared_limit(&cluster.url(), o.addr);
    let (g1, g2) = (gateway(&yaml), gateway(&yaml));
    let (a, b) = (addr(&g1), addr(&g2));
    counted_together(a, b, "alice").await;
    let keys = cluster.keys("*alice*");
    assert!(!keys.is_empty(), "the count lives in the cluster");
    // Kill the primary holding alice's count while bob's requests keep coming.
    let victim = cluster.primary_of(&keys[0]);
    let mut cluster = cluster;
    cluster.nodes.kill(victim);
    let until = Instant::now() + Duration::from_secs(4);
    let mut seen = Vec::new();
    while Instant::now() < until {
        seen.push(status(a, "bob").await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen.iter().all(|s| *s == 200 || *s == 429),
        "never an error: {seen:?}"
    );
    assert!(seen.contains(&429), "bob stays limited during the failover");
    cluster.wait_ok();
    assert!(!cluster.primaries().contains(&victim));
    until_shared_again(a, b, "carol").await;
    counted_together(a, b, "dave").await;
    assert!(!cluster.keys("*dave*").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_follow_the_primary_a_sentinel_promotes() {
    let mut sentinel = RedisSentinel::start();
    let o = Origin::start("a").await;
    let yaml = shared_limit(&sentinel.url(), o.addr);
    let (g1, g2) = (gateway(&yaml), gateway(&yaml));
    let (a, b) = (addr(&g1), addr(&g2));
    counted_together(a, b, "alice").await;
    let old = sentinel.primary;
    sentinel.fail_over();
    assert_ne!(sentinel.primary, old);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let s = status(a, "bob").await;
        assert!(s == 200 || s == 429, "never an error: {s}");
    }
    until_shared_again(a, b, "carol").await;
    counted_together(a, b, "dave").await;
    let on_new = redis_topology::cli(sentinel.primary, &[], &["KEYS", "*dave*"]).unwrap();
    assert!(
        !on_new.is_empty(),
        "dave's count is on the promoted primary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_replay_nonces_go_over_tls() {
    let tls = RedisTls::start();
    let o = Origin::start("a").await;
    let yaml = shared_limit(&tls.url(), o.addr);
    let (g1, g2) = (gateway(&yaml), gateway(&yaml));
    counted_together(addr(&g1), addr(&g2), "alice").await;
    let keys = tls.query(&["KEYS", "*alice*"]).unwrap();
    assert!(!keys.is_empty(), "counted in the TLS Redis");
    // A wrong CA: the address is refused at load with the file named.
    let bad = yaml.replace(&tls.ca.display().to_string(), "/nonexistent/ca.pem");
    let cfg = gatehouse_model::parse_yaml(&bad).unwrap();
    let Err(gatehouse_proxy::StartError::Config(e)) =
        gatehouse_proxy::Gateway::start(cfg, &test_options())
    else {
        panic!("accepted a missing CA file");
    };
    let e: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert!(
        e.iter()
            .any(|e| e.contains("cannot read ca=/nonexistent/ca.pem")),
        "{e:?}"
    );
}
