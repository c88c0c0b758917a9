//! Service discovery against real servers: DNS answers from `dnsmasq`, targets from a real
//! `etcd` (watched through kills and restarts, under load), self-registration with TTL
//! heartbeats on two nodes sharing one PostgreSQL store, and the last known targets kept
//! through outages and restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/dns_server.rs"]
mod dns_server;
#[path = "common/etcd_server.rs"]
mod etcd_server;
#[path = "common/running.rs"]
mod running;
#[path = "common/tls_kit.rs"]
mod tls_kit;

use common::*;
use dns_server::DnsServer;
use etcd_server::EtcdServer;
use running::Running;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The origin that answered a request, from its JSON echo.
fn origin_of(r: &Reply) -> String {
    r.json()["origin"].as_str().unwrap_or_default().to_owned()
}

/// The origins that answer `n` requests (`status N` for an answer that is not a 200).
async fn answering(addr: SocketAddr, path: &str, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut c = Client::connect(addr).await;
    for _ in 0..n {
        let r = c.get(path).await;
        if r.status == 200 {
            seen.insert(origin_of(&r));
        } else {
            seen.insert(format!("status {}", r.status));
        }
    }
    seen
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Waits (up to `within`) until exactly `names` answer.
async fn until_answering(addr: SocketAddr, path: &str, names: &[&str], within: Duration) {
    let want = set(names);
    let start = Instant::now();
    let mut last = BTreeSet::new();
    while start.elapsed() < within {
        last = answering(addr, path, 12).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("wanted {want:?} answering, still {last:?} after {within:?}");
}

fn source_status(g: &Gateway, upstream: &str, source: &str) -> serde_json::Value {
    let all = g.shared().discovery.state.status();
    let s = all
        .into_iter()
        .find(|s| s.upstream == upstream && s.source == source)
        .unwrap_or_else(|| panic!("no {source} status for {upstream}"));
    serde_json::to_value(s).unwrap()
}

fn route_to(upstream_yaml: &str) -> String {
    format!(
        "routes:\n  - {{name: r, paths: ['/*'], service: s}}\n\
         services:\n  - {{name: s, upstream: u, retries: 0}}\n\
         upstreams:\n{upstream_yaml}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_a_records_become_targets_follow_the_ttl_and_outlive_an_outage() {
    let a = Steered::start_on("127.0.0.2:0".parse().unwrap(), "a").await;
    let port = a.addr.port();
    let _b = Steered::start_on(SocketAddr::from(([127, 0, 0, 3], port)), "b").await;
    let mut dns = DnsServer::start("127.0.0.2 orders.test\n", &[], 1).await;
    let g = gateway(&route_to(&format!(
        "  - name: u\n    discovery:\n      dns: {{name: orders.test, port: {port}, \
         resolvers: ['{}'], min_ttl: 200ms, max_ttl: 2s}}\n",
        dns.address()
    )));
    let addr = addr(&g);
    until_answering(addr, "/x", &["a"], Duration::from_secs(5)).await;
    assert_eq!(source_status(&g, "u", "dns")["up"], true);

    // A second record: picked up when the 1 s TTL runs out.
    dns.set_hosts("127.0.0.2 orders.test\n127.0.0.3 orders.test\n");
    until_answering(addr, "/x", &["a", "b"], Duration::from_secs(6)).await;

    // The server goes away: the last known targets keep serving, and the outage shows.
    dns.stop();
    let start = Instant::now();
    while source_status(&g, "u", "dns")["up"] == true {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "outage never seen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answering(addr, "/x", 12).await, set(&["a", "b"]));
    let down = source_status(&g, "u", "dns");
    assert_eq!(down["targets"], 2, "{down}");
    assert!(down["error"].as_str().is_some(), "{down}");

    // Back, with one record fewer: followed again.
    dns.set_hosts("127.0.0.3 orders.test\n");
    dns.restart().await;
    until_answering(addr, "/x", &["b"], Duration::from_secs(10)).await;
    assert_eq!(source_status(&g, "u", "dns")["up"], true);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_srv_records_give_ports_and_weights_and_backups_wait() {
    let (a, b, backup) = (
        Steered::start("a").await,
        Steered::start("b").await,
        Steered::start("backup").await,
    );
    let srv = |host: &str, s: &Steered, prio: u16, weight: u16| {
        format!(
            "_http._tcp.orders.test,{host},{},{prio},{weight}",
            s.addr.port()
        )
    };
    let records = [
        srv("a.orders.test", &a, 0, 30),
        srv("b.orders.test", &b, 0, 10),
        srv("c.orders.test", &backup, 1, 10),
    ];
    let records: Vec<&str> = records.iter().map(String::as_str).collect();
    let hosts = "127.0.0.1 a.orders.test\n127.0.0.1 b.orders.test\n127.0.0.1 c.orders.test\n";
    let dns = DnsServer::start(hosts, &records, 5).await;
    let g = gateway(&route_to(&format!(
        "  - name: u\n    discovery:\n      dns: {{name: _http._tcp.orders.test, record: srv, \
         resolvers: ['{}']}}\n",
        dns.address()
    )));
    let addr = addr(&g);
    until_answering(addr, "/x", &["a", "b"], Duration::from_secs(5)).await;
    // Weights 30:10 from the records: round robin gives a three of every four.
    let mut c = Client::connect(addr).await;
    let mut a_count = 0;
    for _ in 0..40 {
        if origin_of(&c.get("/x").await) == "a" {
            a_count += 1;
        }
    }
    assert_eq!(a_count, 30, "weights from SRV records");
    let targets = g.shared().targets_of("u").unwrap();
    assert_eq!(targets.len(), 2, "{targets:?}");
    assert!(targets.iter().all(|t| t["source"] == "dns"), "{targets:?}");
    drop(dns);
    g.shutdown().await;
}

/// Sends requests from `clients` connections until `stop`, counting answers and failures.
fn load(
    addr: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicUsize>, Arc<AtomicUsize>, tokio::task::JoinSet<()>) {
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        set.spawn(async move {
            let mut c = Client::connect(addr).await;
            // Bounded: the test stops it, and it never runs past 60 s.
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                match c.request("GET", "/x", &[], b"").await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => {
                        c = Client::connect(addr).await;
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
    }
    (ok, failed, set)
}

fn target_json(addr: SocketAddr, weight: u32) -> String {
    format!("{{\"address\":\"{addr}\",\"weight\":{weight},\"metadata\":{{\"zone\":\"z1\"}}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_targets_added_changed_and_removed_under_load_fail_no_request() {
    let (a, b, c) = (
        Steered::start("a").await,
        Steered::start("b").await,
        Steered::start("c").await,
    );
    let etcd = EtcdServer::start().await;
    etcd.put("/services/orders/a", &target_json(a.addr, 1));
    let g = gateway(&route_to(&format!(
        "  - name: u\n    discovery:\n      etcd: {{endpoints: ['{}'], prefix: /services/orders/}}\n",
        etcd.endpoint()
    )));
    let addr = addr(&g);
    until_answering(addr, "/x", &["a"], Duration::from_secs(5)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, mut clients) = load(addr, 4, stop.clone());
    etcd.put("/services/orders/b", &target_json(b.addr, 1));
    until_answering(addr, "/x", &["a", "b"], Duration::from_secs(3)).await;
    // Changed: key a now names c.
    etcd.put("/services/orders/a", &target_json(c.addr, 2));
    until_answering(addr, "/x", &["b", "c"], Duration::from_secs(3)).await;
    etcd.del("/services/orders/b");
    until_answering(addr, "/x", &["c"], Duration::from_secs(3)).await;

    // A malformed value is skipped (and named), the rest stays.
    etcd.put("/services/orders/bad", "{\"address\": \"no-port\"}");
    let start = Instant::now();
    loop {
        let s = source_status(&g, "u", "etcd");
        if s["error"]
            .as_str()
            .is_some_and(|e| e.contains("/services/orders/bad"))
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "never named: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answering(addr, "/x", 8).await, set(&["c"]));

    stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("{ok} requests under changing etcd targets, {failed} failed");
    assert!(ok > 100, "the load ran: {ok}");
    assert_eq!(failed, 0);
    let targets = g.shared().targets_of("u").unwrap();
    assert_eq!(targets[0]["source"], "etcd", "{targets:?}");
    assert_eq!(targets[0]["from"], "/services/orders/a", "{targets:?}");
    assert_eq!(targets[0]["metadata"]["zone"], "z1", "{targets:?}");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_watch_resumes_after_a_restart_and_misses_no_change() {
    let (a, b) = (Steered::start("a").await, Steered::start("b").await);
    let mut etcd = EtcdServer::start().await;
    etcd.put("/svc/u/a", &target_json(a.addr, 1));
    let g = gateway(&route_to(&format!(
        "  - name: u\n    discovery:\n      etcd: {{endpoints: ['{}'], prefix: /svc/u/}}\n",
        etcd.endpoint()
    )));
    let addr = addr(&g);
    until_answering(addr, "/x", &["a"], Duration::from_secs(5)).await;

    etcd.kill();
    let start = Instant::now();
    while source_status(&g, "u", "etcd")["up"] == true {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "outage never seen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        answering(addr, "/x", 6).await,
        set(&["a"]),
        "last known serve"
    );

    // Changed while the gateway is away (its reconnect backs off): the resumed watch
    // starts after the last revision it saw, so it hears both.
    etcd.restart().await;
    etcd.put("/svc/u/b", &target_json(b.addr, 1));
    etcd.del("/svc/u/a");
    until_answering(addr, "/x", &["b"], Duration::from_secs(10)).await;
    assert_eq!(source_status(&g, "u", "etcd")["up"], true);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_while_etcd_is_down_serves_the_targets_it_had() {
    let a = Steered::start("a").await;
    let mut etcd = EtcdServer::start().await;
    etcd.put("/svc/k/a", &target_json(a.addr, 1));
    let dir = std::env::temp_dir().join(format!("gatehouse-disc-{}", etcd.client_port));
    let yaml = route_to(&format!(
        "  - name: u\n    discovery:\n      etcd: {{endpoints: ['{}'], prefix: /svc/k/}}\n",
        etcd.endpoint()
    ));
    let g = gateway(&yaml);
    g.shared().keep_discovered_in(&dir);
    until_answering(addr(&g), "/x", &["a"], Duration::from_secs(5)).await;
    let file = dir.join("discovered.json");
    let start = Instant::now();
    while !std::fs::read_to_string(&file).is_ok_and(|t| t.contains(&a.addr.to_string())) {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "never kept on disk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    g.shutdown().await;

    etcd.kill();
    let g = gateway(&yaml);
    g.shared().keep_discovered_in(&dir);
    assert_eq!(answering(addr(&g), "/x", 4).await, set(&["a"]));
    let s = source_status(&g, "u", "etcd");
    assert_eq!(
        (s["up"].as_bool(), s["targets"].as_u64()),
        (Some(false), Some(1)),
        "{s}"
    );
    g.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_registry_is_ignored_unless_the_upstream_allows_it() {
    let a = Steered::start("a").await;
    let etcd = EtcdServer::start().await;
    etcd.put("/svc/e/a", &target_json(a.addr, 1));
    let upstream = |allow: bool| {
        route_to(&format!(
            "  - name: u\n    discovery:\n      allow_empty: {allow}\n      \
             etcd: {{endpoints: ['{}'], prefix: /svc/e/}}\n",
            etcd.endpoint()
        ))
    };
    let g = gateway(&upstream(false));
    let addr = addr(&g);
    until_answering(addr, "/x", &["a"], Duration::from_secs(5)).await;
    etcd.del("/svc/e/a");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(answering(addr, "/x", 4).await, set(&["a"]), "kept");
    let s = source_status(&g, "u", "etcd");
    assert!(
        s["error"].as_str().unwrap_or("").contains("no targets"),
        "{s}"
    );

    // allow_empty: the empty answer applies, and the upstream has nothing to send to.
    g.reload(gatehouse_model::parse_yaml(&upstream(true)).unwrap())
        .unwrap();
    let start = Instant::now();
    while get(addr, "/x").await.status == 200 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "empty answer never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_named_targets_are_resolved_in_the_background() {
    let a = Steered::start("a").await;
    let g = gateway(&route_to(&format!(
        "  - name: u\n    targets: [{{address: 'localhost:{}'}}]\n",
        a.addr.port()
    )));
    until_answering(addr(&g), "/x", &["a"], Duration::from_secs(5)).await;
    let targets = g.shared().targets_of("u").unwrap();
    let resolved = targets[0]["resolved"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        resolved
            .iter()
            .any(|r| r.as_str() == Some(&a.addr.to_string())),
        "{targets:?}"
    );
    g.shutdown().await;
}

/// Registers `target` on `admin` for `ttl`; the answer's status.
async fn register(admin: SocketAddr, upstream: &str, target: SocketAddr, ttl: &str) -> Reply {
    let mut c = Client::connect(admin).await;
    c.send(
        "PUT",
        &format!("/upstreams/{upstream}/targets/{target}"),
        format!("{{\"ttl\": \"{ttl}\"}}"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_heartbeat_expire_and_reach_every_node_of_a_store() {
    let (a, b) = (Steered::start("a").await, Steered::start("b").await);
    let db = gatehouse_store::test_support::TempPg::create().await;
    let dir = std::env::temp_dir().join(format!("gatehouse-reg-{}", a.addr.port()));
    let (n1, n1_addr) = Running::start_store(&db.url, &dir.join("1"));
    let (n2, n2_addr) = Running::start_store(&db.url, &dir.join("2"));
    let (admin1, admin2) = (n1.admin_addr(), n2.admin_addr());
    let mut c = Client::connect(admin1).await;
    for (path, body) in [
        ("/upstreams", r#"{"name": "u", "discovery": {}}"#),
        (
            "/services",
            r#"{"name": "s", "upstream": "u", "retries": 0}"#,
        ),
        (
            "/routes",
            r#"{"name": "r", "paths": ["/*"], "service": "s"}"#,
        ),
    ] {
        let r = c.send("POST", path, body.into()).await;
        assert_eq!(r.status, 201, "{path}: {}", r.text());
    }

    // Bad input names the field, and changes nothing.
    let r = c
        .send(
            "PUT",
            &format!("/upstreams/u/targets/{}", a.addr),
            "{}".into(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("ttl"), "{}", r.text());
    let r = register(admin1, "u", a.addr, "forever").await;
    assert!(r.status == 400 && r.text().contains("ttl"), "{}", r.text());
    let r = register(admin1, "nope", a.addr, "5s").await;
    assert_eq!(r.status, 404);

    // a registers on node 1 and heartbeats; b on node 2. Both nodes serve both.
    let beating = Arc::new(AtomicBool::new(true));
    let heart = {
        let beating = beating.clone();
        let a_addr = a.addr;
        tokio::spawn(async move {
            let start = Instant::now();
            while beating.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                assert_eq!(register(admin1, "u", a_addr, "2s").await.status, 200);
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };
    assert_eq!(register(admin2, "u", b.addr, "1h").await.status, 200);
    for node in [n1_addr, n2_addr] {
        until_answering(node, "/x", &["a", "b"], Duration::from_secs(5)).await;
    }
    let listed = get(admin2, "/upstreams/u/targets").await.json();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{listed}");
    assert!(
        items.iter().all(|t| t["source"] == "registered"),
        "{listed}"
    );
    assert!(
        items.iter().all(|t| t["expires_ms"].as_u64().is_some()),
        "{listed}"
    );

    // a stops heartbeating: gone from both nodes once its 2 s TTL runs out.
    beating.store(false, Ordering::Relaxed);
    heart.await.unwrap();
    let stopped = Instant::now();
    for node in [n1_addr, n2_addr] {
        until_answering(node, "/x", &["b"], Duration::from_secs(5)).await;
    }
    assert!(
        stopped.elapsed() >= Duration::from_millis(1200),
        "{:?}",
        stopped.elapsed()
    );

    // Deregistered on node 1: gone from node 2 too.
    let r = Client::connect(admin1)
        .await
        .send(
            "DELETE",
            &format!("/upstreams/u/targets/{}", b.addr),
            String::new(),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let start = Instant::now();
    while get(n2_addr, "/x").await.status == 200 {
        assert!(start.elapsed() < Duration::from_secs(3), "node 2 kept b");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = get(admin2, "/status").await.json();
    assert!(status["discovery"].is_array(), "{status}");
    drop((n1, n2));
    db.drop_db().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_names_a_malformed_etcd_key_in_its_log_and_shows_sources() {
    let a = Steered::start("a").await;
    let etcd = EtcdServer::start().await;
    etcd.put("/svc/m/good", &target_json(a.addr, 1));
    etcd.put(
        "/svc/m/broken",
        "{\"address\": \"10.0.0.1:80\", \"wieght\": 2}",
    );
    let dir = std::env::temp_dir().join(format!("gatehouse-malformed-{}", etcd.client_port));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.yaml");
    std::fs::write(
        &file,
        route_to(&format!(
            "  - name: u\n    discovery:\n      etcd: {{endpoints: ['{}'], prefix: /svc/m/}}\n",
            etcd.endpoint()
        )),
    )
    .unwrap();
    let (mut gw, addr) = Running::start(&file);
    let line = gw.logged("malformed target value");
    assert!(line.contains("/svc/m/broken"), "{line}");
    assert!(line.contains("wieght"), "{line}");
    until_answering(addr, "/x", &["a"], Duration::from_secs(5)).await;
    let admin = gw.admin_addr();
    let metrics = get(admin, "/metrics").await.text();
    assert!(
        metrics.contains("gatehouse_discovery_up{upstream=\"u\",source=\"etcd\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_discovery_targets{upstream=\"u\",source=\"etcd\"} 1"),
        "{metrics}"
    );
    let status = get(admin, "/status").await.json();
    assert_eq!(status["discovery"][0]["source"], "etcd", "{status}");
    let out = std::process::Command::new(running::BIN)
        .args([
            "explain",
            "GET",
            "/x",
            "--admin",
            &format!("http://{admin}"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("target:  {} (weight 1, from etcd)", a.addr)),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovered_target_that_stays_keeps_its_state_and_health_verdict() {
    let (a, b, c) = (
        Steered::start("a").await,
        Steered::start("b").await,
        Steered::start("c").await,
    );
    b.healthy.store(false, Ordering::SeqCst);
    let etcd = EtcdServer::start().await;
    etcd.put("/svc/h/a", &target_json(a.addr, 1));
    etcd.put("/svc/h/b", &target_json(b.addr, 1));
    let g = gateway(&route_to(&format!(
        "  - name: u\n    health:\n      active: {{path: /health, interval: 100ms, \
         unhealthy_threshold: 1}}\n    discovery:\n      \
         etcd: {{endpoints: ['{}'], prefix: /svc/h/}}\n",
        etcd.endpoint()
    )));
    let addr = addr(&g);
    // b's probes fail: only a serves.
    until_answering(addr, "/x", &["a"], Duration::from_secs(5)).await;
    let state_of = |address: SocketAddr| {
        let snap = g.shared().snapshot.load_full();
        let set = snap.upstreams["u"].targets();
        set.targets
            .iter()
            .find(|t| *t.address == *address.to_string())
            .cloned()
            .expect("target listed")
    };
    let a_before = state_of(a.addr);

    // c joins: a keeps its pool and counters (the same state), b stays out (its verdict
    // is kept, not reset to healthy by the change).
    etcd.put("/svc/h/c", &target_json(c.addr, 1));
    let start = Instant::now();
    while !answering(addr, "/x", 8).await.contains("c") {
        assert!(start.elapsed() < Duration::from_secs(3), "c never joined");
    }
    for _ in 0..5 {
        let seen = answering(addr, "/x", 12).await;
        assert!(
            !seen.contains("b"),
            "an unhealthy target came back with a change: {seen:?}"
        );
    }
    assert!(
        Arc::ptr_eq(&a_before, &state_of(a.addr)),
        "a's state was rebuilt"
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_read_only_user_is_followed_and_its_password_never_shown() {
    let a = Steered::start("a").await;
    let ca = tls_kit::Ca::new("etcd test CA");
    let cert = ca.server(&["127.0.0.1", "localhost"]);
    let mut etcd = EtcdServer::start_tls(&cert.cert, &cert.key, &ca.pem).await;
    etcd.enable_auth("gateway", "s3cret", "/secure/u/");
    etcd.put("/secure/u/a", &target_json(a.addr, 1));
    let spec = |password: &str| {
        format!(
            "  - name: u\n    discovery:\n      etcd:\n        endpoints: ['{}']\n        \
             prefix: /secure/u/\n        username: gateway\n        password: {password}\n        \
             tls:\n          ca: {}",
            etcd.endpoint(),
            tls_kit::yaml_block(&ca.pem, 12)
        )
    };
    let g = gateway(&route_to(&spec("s3cret")));
    until_answering(addr(&g), "/x", &["a"], Duration::from_secs(5)).await;
    g.shutdown().await;

    // A wrong password: the source is down and says why; nothing is served from it.
    let g = gateway(&route_to(&spec("wrong")));
    let start = Instant::now();
    loop {
        let s = g.shared().discovery.state.status();
        if let Some(e) = s.first().and_then(|s| s.error.clone()) {
            assert!(e.contains("authenticate"), "{e}");
            assert!(!s[0].up);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no error reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    g.shutdown().await;

    // A CA that does not parse is a config error with its path.
    let bad = route_to(&format!(
        "  - name: u\n    discovery:\n      etcd: {{endpoints: ['{}'], prefix: /p/, \
         tls: {{ca: '-----BEGIN CERTIFICATE-----\n\n        nonsense'}}}}\n",
        etcd.endpoint()
    ));
    let config = gatehouse_model::parse_yaml(&bad).unwrap();
    let errs = match Gateway::start(config, &test_options()) {
        Err(gatehouse_proxy::StartError::Config(e)) => e,
        _ => panic!("a bad etcd CA must be refused"),
    };
    assert!(
        errs[0]
            .path
            .starts_with("upstreams[0].discovery.etcd.tls.ca"),
        "{errs:?}"
    );

    // The admin API never shows the password, and a config written back as read keeps it.
    let mut config = gatehouse_model::parse_yaml(&route_to(&spec("s3cret"))).unwrap();
    gatehouse_runtime::discovery::redact(&mut config);
    let shown = serde_json::to_string(&config).unwrap();
    assert!(!shown.contains("s3cret"), "{shown}");
    let old = gatehouse_model::parse_yaml(&route_to(&spec("s3cret"))).unwrap();
    gatehouse_runtime::discovery::keep_passwords(&mut config, &old);
    let etcd_spec = config.upstreams[0]
        .discovery
        .as_ref()
        .unwrap()
        .etcd
        .as_ref()
        .unwrap();
    assert_eq!(etcd_spec.password.as_deref(), Some("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovered_target_with_a_new_colour_serves_that_colour() {
    let (a, gray) = (Steered::start("a").await, Steered::start("gray").await);
    let etcd = EtcdServer::start().await;
    let g = gateway(&route_to(&format!(
        "  - name: u\n    targets: [{{address: '{}'}}]\n    discovery:\n      \
         etcd: {{endpoints: ['{}'], prefix: /svc/c/}}\n",
        a.addr,
        etcd.endpoint()
    )));
    let addr = addr(&g);
    until_answering(addr, "/x", &["a"], Duration::from_secs(5)).await;
    etcd.put(
        "/svc/c/gray",
        &format!(
            "{{\"address\":\"{}\",\"labels\":{{\"color\":\"gray\"}}}}",
            gray.addr
        ),
    );
    let start = Instant::now();
    loop {
        let r = get_with(addr, "/x", &[("x-gatehouse-color", "gray")]).await;
        if origin_of(&r) == "gray" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "gray never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Uncoloured requests still go to the uncoloured target only.
    assert_eq!(answering(addr, "/x", 8).await, set(&["a"]));
    g.shutdown().await;
}
