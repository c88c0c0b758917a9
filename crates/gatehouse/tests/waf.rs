//! The `waf` plugin through the real gateway: the CRS blocking and detecting, the deny log,
//! exclusions, the body policies, response inspection, metrics, and rule files that do not
//! compile being refused while the running rule set keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;
#[path = "common/running.rs"]
mod running;

use common::*;
use redis_server::RedisServer;
use running::Running;
use std::time::Duration;

fn waf_yaml(origin: std::net::SocketAddr, config: &str) -> String {
    upstream_yaml(&[origin], "")
        + &format!(
            "routes:
  - {{name: app, paths: [\"/*\"], service: svc}}
plugins:
  - name: waf
    route: app
    config: {config}
"
        )
}

fn json() -> Vec<(String, String)> {
    vec![("content-type".into(), "application/json".into())]
}

/// A directory of its own under the system's temporary one, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Scratch {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("gatehouse-waf-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn deny_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the deny log has fewer than {n} lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_get_403_with_the_request_id_and_the_deny_log_names_the_rules() {
    let o = Origin::start("a").await;
    let dir = Scratch::new();
    let log = dir.path().join("deny.log");
    let g = gateway(&waf_yaml(
        o.addr,
        &format!("{{deny_log: {}}}", log.display()),
    ));
    let a = addr(&g);
    let mut c = Client::connect(a).await;

    // Clean traffic goes through, bodies included.
    assert_eq!(c.get("/search?q=blue+shoes").await.status, 200);
    let r = c
        .request_owned(
            "POST",
            "/api/orders",
            &[("content-type".into(), "application/json".into())],
            r#"{"name":"O'Brien","qty":2}"#.as_bytes().to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_bytes"], 26);

    // SQL injection in the query: 403, with the request id and nothing about the rules.
    let r = c
        .get("/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--")
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(r.text().contains(&id), "{}", r.text());
    assert!(!r.text().contains("942"), "{}", r.text());
    assert!(!r.text().to_lowercase().contains("sql"), "{}", r.text());

    // XSS in a JSON body.
    let r = c
        .request_owned(
            "POST",
            "/api/c",
            &[("content-type".into(), "application/json".into())],
            r#"{"c":"<script>alert(1)</script>"}"#.as_bytes().to_vec(),
        )
        .await;
    assert_eq!(r.status, 403);

    let lines = deny_lines(&log, 2).await;
    let first = &lines[0]["waf"];
    assert_eq!(first["request_id"], id.as_str());
    assert_eq!(first["action"], "blocked");
    assert_eq!(first["route"], "app");
    assert!(first["score"].as_i64().unwrap() >= 5, "{first}");
    let rules = first["rules"].as_array().unwrap();
    let sqli = rules
        .iter()
        .find(|r| r["id"].as_u64().unwrap() / 1000 == 942)
        .unwrap_or_else(|| panic!("{first}"));
    assert_eq!(sqli["var"], "ARGS:q");
    let value = sqli["value"].as_str().unwrap().to_lowercase();
    assert!(value.contains("union select"), "{sqli}");
    assert!(rules.iter().any(|r| r["id"] == 949110), "{first}");

    let m = scrape(&g);
    assert!(
        m.contains("gatehouse_waf_decisions_total{plugin=\"waf\",scope=\"route=app\",route=\"app\",decision=\"blocked\",group=\"sqli\"} 1"),
        "{m}"
    );
    assert!(m.contains("group=\"xss\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_mode_logs_and_lets_through_and_exclusions_leave_a_field_alone() {
    let o = Origin::start("a").await;
    let dir = Scratch::new();
    let log = dir.path().join("deny.log");
    let g = gateway(&waf_yaml(
        o.addr,
        &format!("{{mode: detect, deny_log: {}}}", log.display()),
    ));
    let a = addr(&g);
    let r = get(a, "/x?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
    assert_eq!(r.status, 200);
    let lines = deny_lines(&log, 1).await;
    assert_eq!(lines[0]["waf"]["action"], "detected");

    // A field that carries code by design: the SQLi and XSS rules leave it alone, and only it.
    let yaml = waf_yaml(
        o.addr,
        "{exclusions: [{tags: [attack-sqli, attack-xss], targets: [\"ARGS:snippet\"]}]}",
    );
    g.reload(gatehouse_model::parse_yaml(&yaml).unwrap())
        .unwrap();
    let snippet = "snippet=SELECT%20name%20FROM%20users%20WHERE%20id%3D1%20OR%201%3D1";
    assert_eq!(get(a, &format!("/x?{snippet}")).await.status, 200);
    let other = "other=SELECT%20name%20FROM%20users%20WHERE%20id%3D1%20OR%201%3D1";
    assert_eq!(get(a, &format!("/x?{other}")).await.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_policies_block_or_pass_over_the_cap_and_on_bad_bodies() {
    let o = Origin::start("a").await;
    let g = gateway(&waf_yaml(o.addr, "{body_limit: 1KiB}"));
    let a = addr(&g);
    let mut c = Client::connect(a).await;
    let big = format!(r#"{{"text":"{}"}}"#, "a".repeat(2000));
    let r = c
        .request_owned("POST", "/p", &json(), big.as_bytes().to_vec())
        .await;
    assert_eq!(r.status, 413, "{}", r.text());
    let mut c = Client::connect(a).await;
    let r = c
        .request_owned("POST", "/p", &json(), "{\"a\": [1, 2".as_bytes().to_vec())
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let r = c
        .request_owned("POST", "/p", &json(), deep.as_bytes().to_vec())
        .await;
    assert_eq!(r.status, 400, "{}", r.text());

    let yaml = waf_yaml(
        o.addr,
        "{body_limit: 1KiB, body_over_limit: pass, body_error: pass}",
    );
    g.reload(gatehouse_model::parse_yaml(&yaml).unwrap())
        .unwrap();
    let mut c = Client::connect(a).await;
    let r = c
        .request_owned("POST", "/p", &json(), big.as_bytes().to_vec())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_bytes"], big.len());
    let r = c
        .request_owned("POST", "/p", &json(), "{\"a\": [1, 2".as_bytes().to_vec())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Chunked and over the cap: what was read before the cap goes upstream with the rest.
    let mut req =
        b"POST /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..3 {
        req.extend(b"258\r\n");
        req.extend(std::iter::repeat_n(b'z', 600));
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    let out = raw(a, &req).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"body_bytes\":1800"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_files_that_do_not_compile_are_refused_with_file_and_line() {
    let o = Origin::start("a").await;
    let dir = Scratch::new();
    let rules = dir.path().join("own.conf");
    std::fs::write(
        &rules,
        "SecRule REQUEST_HEADERS:x-evil \"@streq yes\" \"id:100001,phase:1,deny\"\n",
    )
    .unwrap();
    let yaml =
        |f: &std::path::Path| waf_yaml(o.addr, &format!("{{rule_files: [{}]}}", f.display()));
    let g = gateway(&yaml(&rules));
    let a = addr(&g);
    assert_eq!(get_with(a, "/", &[("x-evil", "yes")]).await.status, 403);
    assert_eq!(get_with(a, "/", &[("x-evil", "no")]).await.status, 200);

    let bad = dir.path().join("bad.conf");
    std::fs::write(
        &bad,
        "# ours\n\nSecRule ARGS \"@rx (unclosed\" \"id:100002,phase:2,deny\"\n",
    )
    .unwrap();
    let errs = g
        .reload(gatehouse_model::parse_yaml(&yaml(&bad)).unwrap())
        .unwrap_err();
    let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains(&format!("{}:3", bad.display())),
        "{errs:?}"
    );
    assert!(errs[0].contains("rule_files"), "{errs:?}");
    // The previous rule set keeps serving.
    assert_eq!(get_with(a, "/", &[("x-evil", "yes")]).await.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaking_responses_are_caught_by_response_inspection() {
    // The origin echoes the request path in its JSON: a path naming a PostgreSQL driver's
    // exception makes it answer with one (the request rules do not mind such a path).
    let o = Origin::start("a").await;
    let dir = Scratch::new();
    let log = dir.path().join("deny.log");
    let yaml = waf_yaml(
        o.addr,
        &format!(
            "{{response: {{enabled: true}}, deny_log: {}}}",
            log.display()
        ),
    );
    let g = gateway(&yaml);
    let a = addr(&g);
    let r = get(a, "/ok").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"origin\""), "{}", r.text());
    let r = get(a, "/Npgsql.NpgsqlException").await;
    assert_eq!(r.status, 200, "the head was already sent");
    assert!(
        r.body.is_empty(),
        "the leaking body is withheld: {}",
        r.text()
    );
    let lines = deny_lines(&log, 1).await;
    assert_eq!(lines[0]["waf"]["phase"], "response");
}

/// Two real nodes sharing one Redis: a client the WAF blocks twice is banned on both, a
/// ban added through one node's admin API holds on the other, and lifting it through the
/// other ends it on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_escalate_from_the_waf_and_are_shared_listed_and_lifted_across_nodes() {
    let o = Origin::start("a").await;
    let redis = RedisServer::start().await;
    let dir = Scratch::new();
    let file = dir.path().join("gw.yaml");
    let yaml = format!(
        "redis: {}\n{}  - name: bans\n    config: {{key_header: x-api-key}}\n",
        redis.url(),
        waf_yaml(o.addr, "{ban: {after: 2, within: 1m, for: 10m}}")
    );
    std::fs::write(&file, yaml).unwrap();
    let (n1, a1) = Running::start(&file);
    let (n2, a2) = Running::start(&file);
    let (admin1, admin2) = (n1.admin_addr(), n2.admin_addr());

    assert_eq!(get(a1, "/ok").await.status, 200);
    let attack = "/x?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    assert_eq!(get(a1, attack).await.status, 403);
    assert_eq!(get(a1, attack).await.status, 403);
    // Now banned: even a clean request is refused, with how long for.
    let r = get(a1, "/ok").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "banned", "{}", r.text());
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((590..=600).contains(&retry), "{retry}");
    // The other node learns of it through Redis within a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while get(a2, "/ok").await.status != 403 {
        assert!(
            std::time::Instant::now() < deadline,
            "node 2 never saw the ban"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Listed on either node, with where it came from.
    let mut c2 = Client::connect(admin2).await;
    let listed = c2.get("/bans").await;
    assert_eq!(listed.status, 200);
    let list = listed.json();
    let ban = &list.as_array().unwrap()[0];
    assert_eq!(ban["subject"], "ip:127.0.0.1");
    assert_eq!(ban["source"], "waf");

    // Bad input names the field.
    let mut c1 = Client::connect(admin1).await;
    let r = c1
        .send(
            "POST",
            "/bans",
            r#"{"subject": "ip:nope", "ttl": "1h"}"#.into(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("subject"), "{}", r.text());
    let r = c1
        .send(
            "POST",
            "/bans",
            r#"{"subject": "key:k1", "ttl": "forever"}"#.into(),
        )
        .await;
    assert!(r.status == 400 && r.text().contains("ttl"), "{}", r.text());

    // An API key banned on node 1 is refused on node 2.
    let r = c1
        .send(
            "POST",
            "/bans",
            r#"{"subject": "key:k1", "ttl": "1h", "reason": "leaked"}"#.into(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    // Lifted through node 2: both nodes serve the address again.
    let r = c2
        .request_owned("DELETE", "/bans/ip:127.0.0.1", &[], Vec::new())
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = c2
        .request_owned("DELETE", "/bans/ip:127.0.0.1", &[], Vec::new())
        .await;
    assert_eq!(r.status, 404);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while get(a1, "/ok").await.status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "node 1 never saw the lift"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(a2, "/ok").await.status, 200);
    let keyed = get_with(a2, "/ok", &[("x-api-key", "k1")]).await;
    assert_eq!(keyed.status, 403, "{}", keyed.text());
    assert_eq!(
        get_with(a2, "/ok", &[("x-api-key", "k2")]).await.status,
        200
    );
    let stored: std::collections::HashMap<String, String> =
        redis.query(&["HGETALL", "gatehouse:bans"]).await;
    assert!(stored.contains_key("key:k1"), "{stored:?}");
}
