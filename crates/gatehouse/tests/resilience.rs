//! Integration tests of what keeps a route serving when upstreams misbehave: active and
//! passive health checks against real origins that the tests sicken, heal and kill.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const ROUTE: &str = "routes:\n  - {name: r, paths: [\"/*\"], service: svc}\n";

/// Which origins answered `n` requests (by their `origin` field; errors by status).
async fn spread(gw: std::net::SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut c = Client::connect(gw).await;
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let r = c.get("/x").await;
        let key = if r.status == 200 {
            r.json()["origin"].as_str().unwrap_or("?").to_owned()
        } else {
            r.status.to_string()
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// Waits up to `limit` for `cond` to hold, checking every 50 ms.
async fn eventually(limit: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn state_of(g: &Gateway, address: std::net::SocketAddr) -> &'static str {
    let targets = g.shared().health_of("up").unwrap();
    let (_, view) = targets
        .iter()
        .find(|(a, _)| **a == *address.to_string())
        .unwrap();
    view.state
}

const ACTIVE: &str = "    health:
      active: {path: /health, interval: 100ms, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_failing_target_out_and_bring_it_back() {
    let a = Steered::start("a").await;
    let b = Steered::start("b").await;
    let g = gateway(&(upstream_yaml(&[a.addr, b.addr], ACTIVE) + ROUTE));
    let gw = addr(&g);
    let both = spread(gw, 10).await;
    assert_eq!((both["a"], both["b"]), (5, 5), "{both:?}");

    a.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(3), async || state_of(&g, a.addr)
            == "unhealthy")
        .await,
        "a was not marked unhealthy"
    );
    let only_b = spread(gw, 10).await;
    assert_eq!(only_b.get("b"), Some(&10), "{only_b:?}");

    a.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(3), async || state_of(&g, a.addr)
            == "healthy")
        .await,
        "a was not re-admitted"
    );
    let back = spread(gw, 10).await;
    assert_eq!((back["a"], back["b"]), (5, 5), "{back:?}");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_target_down_the_upstream_fails_fast_or_tries_anyway() {
    let a = Steered::start("a").await;
    let g = gateway(&(upstream_yaml(&[a.addr], ACTIVE) + ROUTE));
    let gw = addr(&g);
    a.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(3), async || state_of(&g, a.addr)
            == "unhealthy")
        .await
    );
    let r = get(gw, "/x").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no healthy upstream target");
    let served = a.served.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(served, 0, "fail fast sends nothing upstream");

    // try_anyway: the checks may be what is wrong, so the target is used regardless.
    let anyway = ACTIVE.to_owned() + "      all_down: try_anyway\n";
    let config = gatehouse_model::parse_yaml(&(upstream_yaml(&[a.addr], &anyway) + ROUTE));
    g.reload(config.unwrap()).unwrap();
    // The verdict survived the reload (same target), and the request goes through.
    assert_eq!(state_of(&g, a.addr), "unhealthy");
    let r = get(gw, "/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_checks_eject_a_target_that_keeps_failing_and_readmit_it_later() {
    let a = Steered::start("a").await;
    let b = Steered::start("b").await;
    a.fail_every.store(1, std::sync::atomic::Ordering::SeqCst); // every request: 503
    let passive = "    health:
      passive: {consecutive_failures: 3, base_ejection: 1s}
";
    let g = gateway(&(upstream_yaml(&[a.addr, b.addr], passive) + ROUTE));
    let gw = addr(&g);
    // Round robin: a fails its first three, then is ejected.
    let first = spread(gw, 6).await;
    assert_eq!((first["503"], first["b"]), (3, 3), "{first:?}");
    assert_eq!(state_of(&g, a.addr), "ejected");
    let then = spread(gw, 10).await;
    assert_eq!(then.get("b"), Some(&10), "{then:?}");

    // Healed, and its ejection over: back in the rotation.
    a.fail_every.store(0, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(state_of(&g, a.addr), "healthy");
    let back = spread(gw, 10).await;
    assert_eq!((back["a"], back["b"]), (5, 5), "{back:?}");
    g.shutdown().await;
}
