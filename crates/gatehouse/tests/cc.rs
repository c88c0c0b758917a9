//! CC protection through the real gateway: a client over the rate gets the JavaScript
//! challenge, a real browser (Debian's headless Chromium) solves it and is let through, a
//! crawler is let through only when its reverse DNS (a real dnsmasq) verifies it, and a
//! client that keeps ignoring challenges is banned.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/dns_server.rs"]
mod dns_server;

use common::*;
use dns_server::DnsServer;

fn cc_yaml(origin: std::net::SocketAddr, config: &str) -> String {
    upstream_yaml(&[origin], "")
        + &format!(
            "routes:
  - {{name: app, paths: [\"/*\"], service: svc}}
plugins:
  - name: bans
  - name: cc-protect
    route: app
    config: {config}
"
        )
}

/// The page as headless Chromium leaves it after running its scripts (and the reload the
/// challenge makes).
fn browse(url: &str) -> String {
    let profile =
        std::env::temp_dir().join(format!("gatehouse-cc-chromium-{}", std::process::id()));
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run chromium ({e}): apt-get install chromium, as .ci/run does")
        });
    let _ = std::fs::remove_dir_all(&profile);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_a_browser_solves_the_challenge_and_a_script_does_not() {
    let o = Origin::start("a").await;
    let g = gateway(&cc_yaml(
        o.addr,
        "{rate: 2, window: 1m, secret: 0123456789abcdef0123}",
    ));
    let a = addr(&g);
    assert_eq!(get(a, "/1").await.status, 200);
    assert_eq!(get(a, "/2").await.status, 200);
    let r = get(a, "/3").await;
    assert_eq!(r.status, 429);
    assert!(r.text().contains("document.cookie"), "{}", r.text());
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");

    // A real browser runs the page, gets the cookie, and the reload reaches the origin.
    let dom = browse(&format!("http://{a}/page"));
    assert!(dom.contains("\"origin\":\"a\""), "{dom}");
    assert!(dom.contains("gatehouse_cc="), "{dom}");

    // The cookie is bound to the address and signed: a forged one is challenged again.
    let forged = [(
        "cookie",
        "gatehouse_cc=9999999999.00000000000000000000000000000000",
    )];
    assert_eq!(get_with(a, "/4", &forged).await.status, 429);
}

/// One GET on behalf of client `ip` (sent by a trusted proxy on 127.0.0.1, as an edge load
/// balancer would: the client address is only a header, every socket stays on loopback; a
/// resolver answers 127/8's reverse names itself, as RFC 6761 says) with User-Agent `ua`.
async fn from(a: std::net::SocketAddr, ip: &str, ua: &str) -> u16 {
    get_with(a, "/crawl", &[("x-forwarded-for", ip), ("user-agent", ua)])
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawlers_pass_only_when_reverse_dns_verifies_them_and_ignored_challenges_ban() {
    let o = Origin::start("a").await;
    let dns = DnsServer::start("192.0.2.7 crawl-7.search.example\n", &[], 60).await;
    let config = format!(
        "{{rate: 1, window: 1m, ban: {{after: 4, within: 1m, for: 5m}}, resolvers: [\"{}\"], \
         crawlers: [{{user_agent: ExampleBot, domains: [search.example]}}, \
                    {{user_agent: FakeBot, domains: [crawler.example]}}]}}",
        dns.address()
    );
    let yaml = cc_yaml(o.addr, &config) + "node: {trusted_proxies: [127.0.0.1]}\n";
    let g = gateway(&yaml);
    let a = addr(&g);
    assert_eq!(get(a, "/1").await.status, 200);
    // 192.0.2.7 is crawl-7.search.example, which resolves back: a verified ExampleBot.
    let bot = "Mozilla/5.0 (compatible; ExampleBot/2.1)";
    assert_eq!(from(a, "192.0.2.7", bot).await, 200);
    for _ in 0..3 {
        assert_eq!(from(a, "192.0.2.7", bot).await, 200);
    }
    // The same claim from an address whose reverse name is not the crawler's: challenged.
    assert_eq!(from(a, "192.0.2.8", bot).await, 200);
    assert_eq!(from(a, "192.0.2.8", bot).await, 429);
    // A FakeBot from the verified address does not verify (wrong domain): challenged.
    assert_eq!(from(a, "192.0.2.7", "FakeBot/1.0").await, 429);
    // A client that never runs the page: its fourth challenge bans it. (A forwarded address:
    // the ban list is the process's, and tests running beside this one come from 127.0.0.1.)
    let script = "python-requests/2.31";
    assert_eq!(from(a, "192.0.2.9", script).await, 200);
    for _ in 0..4 {
        assert_eq!(from(a, "192.0.2.9", script).await, 429);
    }
    let r = get_with(a, "/y", &[("x-forwarded-for", "192.0.2.9")]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "banned");
    let b = gatehouse_plugin_api::bans::bans().list();
    assert_eq!(
        (b[0].subject.as_str(), b[0].source.as_str()),
        ("ip:192.0.2.9", "cc")
    );
    assert_eq!(
        get(a, "/z").await.status,
        429,
        "127.0.0.1 is over the rate, not banned"
    );
}
