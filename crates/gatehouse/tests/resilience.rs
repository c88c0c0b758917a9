//! Integration tests of what keeps a route serving when upstreams misbehave: active and
//! passive health checks against real origins that the tests sicken, heal and kill.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
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

/// `n` GETs on one connection: how many got 200.
async fn successes(gw: std::net::SocketAddr, n: usize) -> usize {
    let mut c = Client::connect(gw).await;
    let mut ok = 0;
    for _ in 0..n {
        if c.get("/x").await.status == 200 {
            ok += 1;
        }
    }
    ok
}

fn served(o: &Steered) -> usize {
    o.served.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_retries_hide_a_flaky_target_within_the_budget_and_fail_fast_past_it() {
    let a = Steered::start("a").await;
    let b = Steered::start("b").await;
    a.fail_every.store(2, std::sync::atomic::Ordering::SeqCst); // half of a's answers: 503
    let retry = |ratio: &str| {
        format!(
            "    retries: 2\n    retry: {{on: [connect_failure, reset, 503], budget_ratio: {ratio}, budget_min_per_second: 0, backoff: 1ms, max_backoff: 2ms}}\n"
        )
    };
    let g = gateway(&(upstream_yaml_with_service(&[a.addr, b.addr], "", &retry("0.5")) + ROUTE));
    let gw = addr(&g);
    let n = 400;
    let ok = successes(gw, n).await;
    assert!(ok * 100 >= n * 99, "{ok} of {n} succeeded");
    // Every retry went to the other target, and retries stayed within 50 % of requests.
    let retries = served(&a) + served(&b) - n;
    assert!(
        retries > 0 && retries * 2 <= n,
        "{retries} retries for {n} requests"
    );
    let budget = &g.shared().snapshot.load().services[0].budget;
    let (requests, counted) = budget.counts(gatehouse_runtime::health::now_ns());
    assert_eq!((requests, counted), (n as u64, retries as u64));

    // A budget of 2 %: most failures are passed on at once instead of retried.
    let config = gatehouse_model::parse_yaml(
        &(upstream_yaml_with_service(&[a.addr, b.addr], "", &retry("0.02")) + ROUTE),
    );
    g.reload(config.unwrap()).unwrap();
    let (before_a, before_b) = (served(&a), served(&b));
    let ok = successes(gw, n).await;
    let retries = served(&a) - before_a + served(&b) - before_b - n;
    // The budget is the service's and survived the reload: its window already holds 400
    // requests and their retries, so few (if any) more are allowed.
    assert!(
        retries <= (0.02 * (2 * n) as f64) as usize,
        "{retries} retries"
    );
    assert!(
        ok < n * 90 / 100,
        "failures must show once the budget is spent: {ok} of {n}"
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried_after_it_was_sent_but_is_before() {
    let a = Steered::start("a").await;
    let b = Steered::start("b").await;
    a.fail_every.store(1, std::sync::atomic::Ordering::SeqCst);
    let service = "    retries: 2\n    retry: {on: [connect_failure, 503], methods: [GET, POST]}\n";
    let g = gateway(
        &(upstream_yaml_with_service(&[a.addr, b.addr], "", service)
            + "routes:\n  - {name: r, paths: [\"/*\"], service: svc}\n"),
    );
    let gw = addr(&g);
    let mut c = Client::connect(gw).await;
    // Round robin from a random start: send POSTs until one lands on `a`.
    let mut saw_503 = false;
    for _ in 0..4 {
        let r = c
            .request("POST", "/order", &[], b"{\"qty\":1}")
            .await
            .unwrap();
        if r.status == 503 {
            saw_503 = true;
        }
    }
    assert!(
        saw_503,
        "a POST answered 503 by a is passed on, not retried"
    );
    let posts_on_a = a.seen.lock().unwrap().len();
    let posts_on_b = b.seen.lock().unwrap().len();
    assert_eq!(
        posts_on_a + posts_on_b,
        4,
        "each POST was sent exactly once"
    );
    // GETs are retried on the 503: all succeed.
    assert_eq!(successes(gw, 10).await, 10);

    // Before sending, a POST may go elsewhere: a dead target is skipped.
    let dead = a.kill().await;
    for _ in 0..4 {
        let r = c.request("POST", "/order", &[], b"{}").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let _ = dead;
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_target_under_load_is_invisible_to_clients_and_it_is_readmitted() {
    let a = Steered::start("a").await;
    let b = Steered::start("b").await;
    let c = Steered::start("c").await;
    let extra = "    health:
      active: {path: /health, interval: 100ms, timeout: 300ms, healthy_threshold: 2, unhealthy_threshold: 2}
      passive: {consecutive_failures: 3, base_ejection: 30s}
";
    let service =
        "    retries: 2\n    retry: {on: [connect_failure, reset, timeout, 502, 503, 504]}\n";
    let g =
        gateway(&(upstream_yaml_with_service(&[a.addr, b.addr, c.addr], extra, service) + ROUTE));
    let gw = addr(&g);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            let mut client = Client::connect(gw).await;
            // Bounded: the main task stops the load after a few seconds.
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match client.request("GET", "/x", &[], b"").await {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a_addr = a.kill().await;
    assert!(
        eventually(Duration::from_secs(3), async || state_of(&g, a_addr)
            != "healthy")
        .await,
        "a was not taken out"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Back on the same address: the active checks re-admit it, ejected or not.
    let a = Steered::start_on(a_addr, "a").await;
    assert!(
        eventually(Duration::from_secs(3), async || state_of(&g, a_addr)
            == "healthy")
        .await,
        "a was not re-admitted"
    );
    assert!(
        eventually(Duration::from_secs(3), async || served(&a) > 0).await,
        "a gets traffic again"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut failed) = (0, Vec::new());
    for t in clients {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(ok > 500, "only {ok} requests in the run");
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    g.shutdown().await;
}

fn breaker_state(g: &Gateway, name: &str) -> &'static str {
    g.shared()
        .breakers()
        .into_iter()
        .find(|b| b.1 == name)
        .map(|b| b.2)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_breaker_opens_answers_503_with_retry_after_then_half_opens_and_closes() {
    let a = Steered::start("a").await;
    a.fail_every.store(1, std::sync::atomic::Ordering::SeqCst);
    let route = "routes:
  - name: r
    paths: [\"/*\"]
    service: svc
    circuit_breaker: {min_calls: 4, failure_ratio: 0.5, open_for: 1s, half_open_probes: 2}
";
    let g = gateway(&(upstream_yaml_with_service(&[a.addr], "", "    retries: 0\n") + route));
    let gw = addr(&g);
    let mut c = Client::connect(gw).await;
    for _ in 0..4 {
        assert_eq!(c.get("/x").await.status, 503);
    }
    assert_eq!(breaker_state(&g, "r"), "open");
    let r = c.get("/x").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "circuit breaker open");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(served(&a), 4, "an open breaker calls nobody");

    // Healed; after open_for, two probes get through and close it.
    a.fail_every.store(0, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(breaker_state(&g, "r"), "half_open");
    assert_eq!(c.get("/x").await.status, 200);
    assert_eq!(breaker_state(&g, "r"), "half_open");
    assert_eq!(c.get("/x").await.status, 200);
    assert_eq!(breaker_state(&g, "r"), "closed");
    assert_eq!(successes(gw, 5).await, 5);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_breaker_takes_a_failing_target_out_of_the_rotation() {
    let a = Steered::start("a").await;
    let b = Steered::start("b").await;
    a.fail_every.store(1, std::sync::atomic::Ordering::SeqCst);
    let extra = "    circuit_breaker: {min_calls: 2, failure_ratio: 1.0, open_for: 30s}\n";
    let g = gateway(
        &(upstream_yaml_with_service(&[a.addr, b.addr], extra, "    retries: 0\n") + ROUTE),
    );
    let gw = addr(&g);
    let first = spread(gw, 4).await;
    assert_eq!((first["503"], first["b"]), (2, 2), "{first:?}");
    assert_eq!(breaker_state(&g, &format!("up/{}", a.addr)), "open");
    assert_eq!(breaker_state(&g, &format!("up/{}", b.addr)), "closed");
    let then = spread(gw, 10).await;
    assert_eq!(then.get("b"), Some(&10), "{then:?}");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_upstream_serves_the_last_good_response_then_the_static_fallback() {
    let a = Steered::start("a").await;
    let route = r#"routes:
  - name: r
    paths: ["/*"]
    service: svc
    fallback:
      cache: {max_entries: 100, max_age: 1m}
      static: {status: 200, headers: {content-type: application/json}, body: '{"items":[]}'}
"#;
    let g = gateway(&(upstream_yaml_with_service(&[a.addr], "", "    retries: 0\n") + route));
    let gw = addr(&g);
    let first = get(gw, "/list?page=1").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["origin"], "a");
    assert!(first.headers.get("x-gatehouse-degraded").is_none());
    // The copy is kept once the body has been sent in full.
    tokio::time::sleep(Duration::from_millis(50)).await;

    let _ = a.kill().await;
    let kept = get(gw, "/list?page=1").await;
    assert_eq!(kept.status, 200, "{}", kept.text());
    assert_eq!(kept.body, first.body, "the last good answer, as it was");
    assert_eq!(kept.headers["x-gatehouse-degraded"], "cache");
    assert!(kept.headers.contains_key("age"));
    assert!(kept.headers.contains_key("x-request-id"));

    // Another query is another key: nothing kept, so the static answer.
    let other = get(gw, "/list?page=2").await;
    assert_eq!(other.status, 200);
    assert_eq!(other.text(), r#"{"items":[]}"#);
    assert_eq!(other.headers["content-type"], "application/json");
    assert_eq!(other.headers["x-gatehouse-degraded"], "static");
    // Only GET/HEAD answers are kept, but any method gets the static one.
    let mut c = Client::connect(gw).await;
    let post = c.request("POST", "/list?page=1", &[], b"{}").await.unwrap();
    assert_eq!(post.headers["x-gatehouse-degraded"], "static");
    assert_eq!(g.shared().fallbacks(), [("r".to_owned(), [1, 2, 0])]);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_upstream_answers_when_nothing_is_kept() {
    let a = Steered::start("a").await;
    let spare = Steered::start("spare").await;
    let yaml = format!(
        "upstreams:
  - name: up
    targets: [{{address: \"{}\"}}]
  - name: spare
    targets: [{{address: \"{}\"}}]
services:
  - {{name: svc, upstream: up, retries: 0}}
routes:
  - name: r
    paths: [\"/*\"]
    service: svc
    fallback: {{upstream: spare}}
",
        a.addr, spare.addr
    );
    let g = gateway(&yaml);
    let gw = addr(&g);
    assert_eq!(get(gw, "/x").await.json()["origin"], "a");
    a.fail_every.store(1, std::sync::atomic::Ordering::SeqCst);
    let r = get(gw, "/x?q=1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["origin"], "spare");
    assert_eq!(r.headers["x-gatehouse-degraded"], "upstream");
    assert_eq!(spare.seen.lock().unwrap().as_slice(), ["GET /x"]);
    // A small POST body goes to the fallback as it was sent.
    let mut c = Client::connect(gw).await;
    let r = c
        .request("POST", "/orders", &[], b"{\"qty\":2}")
        .await
        .unwrap();
    assert_eq!(r.json()["origin"], "spare");
    assert_eq!(r.json()["body_bytes"], 9);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstreams_targets_are_replaced_live_and_health_checks_follow() {
    let a = Steered::start("a").await;
    let b = Steered::start("b").await;
    let c = Steered::start("c").await;
    let g = gateway(&(upstream_yaml(&[a.addr], ACTIVE) + ROUTE));
    let gw = addr(&g);
    assert_eq!(spread(gw, 4).await.get("a"), Some(&4));

    // Discovery's seam: b and c replace a, without compiling the config.
    let (sb, sc) = (b.addr.to_string(), c.addr.to_string());
    g.shared().set_targets("up", &[(&sb, 1), (&sc, 1)]).unwrap();
    let now = spread(gw, 10).await;
    assert_eq!(
        (now.get("b"), now.get("c")),
        (Some(&5), Some(&5)),
        "{now:?}"
    );
    assert_eq!(a.served.load(std::sync::atomic::Ordering::SeqCst), 4);

    // The active checks moved to the new set on their own: c falls ill and is taken out.
    c.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(3), async || state_of(&g, c.addr)
            == "unhealthy")
        .await,
        "c, added by set_targets, was not checked"
    );
    assert_eq!(spread(gw, 6).await.get("b"), Some(&6));

    // Bad input changes nothing and says why.
    let e = g.shared().set_targets("nope", &[(&sb, 1)]).unwrap_err();
    assert_eq!(e, "no upstream named \"nope\"");
    let e = g
        .shared()
        .set_targets("up", &[("bad address", 1)])
        .unwrap_err();
    assert!(e.contains("bad address"), "{e}");
    assert_eq!(spread(gw, 2).await.get("b"), Some(&2));
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_fails_over_for_every_method_without_a_backoff() {
    let a = Steered::start("a").await;
    let dead = closed_addr();
    // A long backoff, so that pausing before another target would show.
    let service = "    retry: {backoff: 1s, max_backoff: 1s}\n";
    let g = gateway(&(upstream_yaml_with_service(&[a.addr, dead], "", service) + ROUTE));
    let mut c = Client::connect(addr(&g)).await;
    let started = Instant::now();
    for i in 0..20 {
        // Before: half of these got 502 (a POST was not retried even though nothing was sent).
        let r = c.request("POST", "/x", &[], b"hello").await.unwrap();
        assert_eq!(
            r.status,
            200,
            "POST {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "about 10 failovers paused: {:?}",
        started.elapsed()
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_refuses_connections_is_set_aside_by_default() {
    let a = Steered::start("a").await;
    let dead = closed_addr();
    // No `health` at all: the default set-aside (10 s) applies.
    let g = gateway(&(upstream_yaml_with_service(&[a.addr, dead], "", "") + ROUTE));
    let mut c = Client::connect(addr(&g)).await;
    for _ in 0..4 {
        assert_eq!(c.get("/x").await.status, 200);
    }
    assert_eq!(
        state_of(&g, dead),
        "ejected",
        "the refusing target is set aside"
    );
    // It comes back, but stays aside for the rest of its time: nothing reaches it.
    let b = Steered::start_on(dead, "b").await;
    for _ in 0..10 {
        assert_eq!(c.get("/x").await.status, 200);
    }
    assert_eq!(b.served.load(Ordering::SeqCst), 0, "b was set aside");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_aside_target_comes_back_after_its_time_and_a_single_target_never_is_set_aside() {
    let a = Steered::start("a").await;
    let dead = closed_addr();
    let health = "    health: {set_aside_on_connect_failure: 300ms}\n";
    let g = gateway(&(upstream_yaml_with_service(&[a.addr, dead], health, "") + ROUTE));
    let mut c = Client::connect(addr(&g)).await;
    for _ in 0..4 {
        assert_eq!(c.get("/x").await.status, 200);
    }
    let b = Steered::start_on(dead, "b").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..10 {
        assert_eq!(c.get("/x").await.status, 200);
    }
    assert!(
        b.served.load(Ordering::SeqCst) >= 4,
        "b is back after 300ms"
    );
    g.shutdown().await;

    // One target: setting it aside would only turn its next answer into none.
    drop(b);
    let g = gateway(&(upstream_yaml_with_service(&[dead], "", "") + ROUTE));
    let mut c = Client::connect(addr(&g)).await;
    assert_eq!(c.get("/x").await.status, 502);
    assert_eq!(state_of(&g, dead), "healthy");
    let b = Steered::start_on(dead, "b").await;
    assert_eq!(c.get("/x").await.status, 200, "served at once");
    assert_eq!(b.served.load(Ordering::SeqCst), 1);
    g.shutdown().await;
}
