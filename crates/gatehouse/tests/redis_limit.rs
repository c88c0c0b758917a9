//! Cluster-wide rate limits through a real Redis: two gateway nodes sharing one limit under
//! concurrent load, and what happens while Redis is killed, frozen and brought back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use common::*;
use redis_server::RedisServer;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Statuses seen by `clients` keep-alive connections hammering `path` until `until`.
async fn hammer(addr: SocketAddr, path: &'static str, clients: usize, until: Instant) -> Vec<u16> {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await;
                let mut seen = Vec::new();
                while Instant::now() < until {
                    match c.request("GET", path, &[], b"").await {
                        Ok(r) => seen.push(r.status),
                        Err(_) => seen.push(0),
                    }
                }
                seen
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_share_one_limit_within_five_percent() {
    let redis = RedisServer::start().await;
    let o = Origin::start("a").await;
    let limit = 2000;
    let yaml = format!(
        "redis: {}\n{}routes:\n  - {{name: r, service: svc}}\nplugins:
  - name: rate-limit
    route: r
    config: {{limit: {limit}, window: 10s, algorithm: fixed_window, key: route, policy: redis}}
",
        redis.url(),
        upstream_yaml(&[o.addr], "")
    );
    let (g1, g2) = (gateway(&yaml), gateway(&yaml));

    // The whole load must fall in one window of Redis's clock.
    let into = redis.time_us().await % 10_000_000;
    if into > 5_000_000 {
        tokio::time::sleep(Duration::from_micros(10_000_000 - into + 50_000)).await;
    }
    let until = Instant::now() + Duration::from_secs(3);
    let (a, b) = tokio::join!(
        hammer(addr(&g1), "/x", 8, until),
        hammer(addr(&g2), "/x", 8, until)
    );
    let count = |v: &[u16], s: u16| v.iter().filter(|&&x| x == s).count();
    let admitted = count(&a, 200) + count(&b, 200);
    let rejected = count(&a, 429) + count(&b, 429);
    let offered = a.len() + b.len();
    let calls = redis.script_calls().await;
    println!(
        "offered {offered}, admitted {admitted} (node 1: {}, node 2: {}), rejected {rejected}, \
         script calls {calls}",
        count(&a, 200),
        count(&b, 200)
    );
    assert_eq!(admitted + rejected, offered, "only 200 and 429 expected");
    assert!(
        offered > limit * 3 / 2,
        "the load must exceed the limit to test it: {offered}"
    );
    assert!(count(&a, 200) > 0 && count(&b, 200) > 0, "both nodes admit");
    let (lo, hi) = (limit * 95 / 100, limit * 105 / 100);
    assert!(
        (lo..=hi).contains(&admitted),
        "admitted {admitted}, expected {lo}..={hi}"
    );
    // Quota is leased in batches: far fewer round trips than requests.
    assert!(
        calls * 5 <= admitted as u64,
        "{calls} script calls for {admitted} admitted requests"
    );
}

fn outage_config(redis: &RedisServer, origin: SocketAddr) -> String {
    format!(
        "redis: {}\n{}routes:
  - {{name: open, paths: [\"/open/*\"], service: svc}}
  - {{name: closed, paths: [\"/closed/*\"], service: svc}}
plugins:
  - name: rate-limit
    route: open
    config: {{limit: 10, window: 1m, algorithm: fixed_window, policy: redis, nodes: 2}}
  - name: rate-limit
    route: closed
    config: {{limit: 1000, window: 1m, policy: redis, on_redis_failure: fail_closed}}
",
        redis.url(),
        upstream_yaml(&[origin], "")
    )
}

fn remaining(r: &Reply) -> u64 {
    let v = r.headers["ratelimit"].to_str().unwrap();
    let r = v.split(";r=").nth(1).unwrap().split(';').next().unwrap();
    r.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_open_or_closed_then_recovers() {
    let mut redis = RedisServer::start().await;
    let o = Origin::start("a").await;
    let g = gateway(&outage_config(&redis, o.addr));
    let mut c = Client::connect(addr(&g)).await;

    // Redis decides: the cluster-wide limit of 10.
    let r = c.get("/open/x").await;
    assert_eq!((r.status, remaining(&r)), (200, 9));
    assert_eq!(c.get("/closed/x").await.status, 200);
    let keys: Vec<String> = redis.query(&["KEYS", "{gatehouse:rl:*"]).await;
    assert!(
        keys.iter().any(|k| k.contains("route=open")),
        "counters live in Redis: {keys:?}"
    );

    // Killed: fail_open falls back at once to this node's share (10 / 2 nodes); fail_closed
    // answers 503. Never a 500, never a wait.
    redis.kill();
    let t0 = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(c.get("/open/x").await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    let r = c.get("/closed/x").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "rate limit store unavailable");
    assert_eq!(r.headers["retry-after"], "1");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());

    // Back: within a second Redis decides again (an empty Redis: the full limit).
    redis.restart().await;
    let t1 = Instant::now();
    loop {
        let r = c.get("/closed/x").await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503);
        assert!(
            t1.elapsed() < Duration::from_secs(1),
            "Redis not used again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = c.get("/open/x").await;
    assert_eq!(
        (r.status, remaining(&r)),
        (200, 9),
        "decided by Redis again"
    );

    // Frozen (the socket stays open, nothing answers): a request waits at most the Redis
    // timeout (100 ms), then the fallback decides.
    redis.freeze(true);
    for _ in 0..3 {
        let t = Instant::now();
        let r = c.get("/open/x").await;
        assert!(r.status == 200 || r.status == 429, "{}", r.status);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
    assert_eq!(c.get("/closed/x").await.status, 503);
    redis.freeze(false);
    let t2 = Instant::now();
    while c.get("/closed/x").await.status != 200 {
        assert!(
            t2.elapsed() < Duration::from_secs(1),
            "Redis not used again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_through_redis_decides_as_its_local_twin() {
    let redis = RedisServer::start().await;
    let o = Origin::start("a").await;
    let algos = [
        ("fixed", "{limit: 5, window: 10s, algorithm: fixed_window}"),
        (
            "sliding",
            "{limit: 5, window: 10s, algorithm: sliding_window}",
        ),
        (
            "bucket",
            "{limit: 5, window: 10s, algorithm: token_bucket, burst: 3}",
        ),
        (
            "leaky",
            "{limit: 5, window: 1s, algorithm: leaky_bucket, max_delay: 1s}",
        ),
    ];
    let mut yaml = format!(
        "redis: {}\n{}routes:\n",
        redis.url(),
        upstream_yaml(&[o.addr], "")
    );
    for (name, _) in algos {
        for policy in ["local", "redis"] {
            yaml += &format!(
                "  - {{name: {policy}-{name}, paths: [\"/{policy}/{name}\"], service: svc}}\n"
            );
        }
    }
    yaml += "plugins:\n";
    for (name, config) in algos {
        for policy in ["local", "redis"] {
            let config = config.replace('}', &format!(", policy: {policy}}}"));
            yaml +=
                &format!("  - {{name: rate-limit, route: {policy}-{name}, config: {config}}}\n");
        }
    }
    let g = gateway(&yaml);
    let a = addr(&g);
    for (name, _) in algos.iter().take(3) {
        let mut seen = Vec::new();
        for policy in ["local", "redis"] {
            let mut c = Client::connect(a).await;
            let mut statuses = Vec::new();
            for _ in 0..7 {
                statuses.push(c.get(&format!("/{policy}/{name}")).await.status);
            }
            seen.push(statuses);
        }
        assert_eq!(seen[0], seen[1], "{name}: local vs redis");
        let admitted = seen[1].iter().filter(|&&s| s == 200).count();
        assert_eq!(admitted, if *name == "bucket" { 3 } else { 5 }, "{name}");
    }
    // Leaky bucket: 8 at once; slots every 200 ms up to 1 s of delay admit 6, spread out.
    for policy in ["local", "redis"] {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|_| tokio::spawn(async move { get(a, &format!("/{policy}/leaky")).await.status }))
            .collect();
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        let admitted = statuses.iter().filter(|&&s| s == 200).count();
        assert_eq!(admitted, 6, "{policy}: {statuses:?}");
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "{policy}: {took:?}"
        );
    }
}
