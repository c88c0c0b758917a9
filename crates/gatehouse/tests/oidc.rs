//! `openid-connect` against a real OpenID provider (panva/oidc-provider on Node.js, installed
//! by `scripts/test.sh` from the npm registry): the whole browser login driven by HTTP
//! requests (authorization code with PKCE, the provider's own login and consent pages), the
//! session it leaves, logout, and a bearer token from the same provider on an API route.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/redis_topology.rs"]
mod redis_topology;

use common::*;
use redis_topology::free_port;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

struct Provider {
    child: Child,
    port: u16,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Provider {
    fn start(gateway: u16) -> Provider {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run `npm ci --prefix {}` (scripts/test.sh does)",
            dir.display()
        );
        let port = free_port();
        let mut child = Command::new("node")
            .arg(dir.join("provider.js"))
            .args([
                &port.to_string(),
                "shop",
                "shop-secret-0123456789",
                &format!("http://127.0.0.1:{gateway}/callback"),
                &format!("http://127.0.0.1:{gateway}/bye"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening"), "provider said: {line}");
        Provider { child, port }
    }
}

/// A browser: one cookie jar per origin, no redirects followed by itself.
#[derive(Default)]
struct Browser {
    jars: HashMap<u16, HashMap<String, String>>,
}

impl Browser {
    async fn go(&mut self, method: &str, url: &str, form: Option<&str>) -> Reply {
        let rest = url
            .strip_prefix("http://127.0.0.1:")
            .expect("a loopback URL");
        let (port, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let port: u16 = port
            .parse()
            .unwrap_or_else(|_| panic!("not a loopback URL: {url}"));
        let jar = self.jars.entry(port).or_default();
        let mut headers = Vec::new();
        if !jar.is_empty() {
            let c: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            headers.push(("cookie".to_string(), c.join("; ")));
        }
        if form.is_some() {
            headers.push((
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ));
        }
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let path = if path.is_empty() { "/" } else { path };
        let r = Client::connect(addr)
            .await
            .request_owned(
                method,
                path,
                &headers,
                form.unwrap_or("").as_bytes().to_vec(),
            )
            .await;
        for sc in r.headers.get_all("set-cookie") {
            let sc = sc.to_str().unwrap();
            let (pair, attrs) = sc.split_once(';').unwrap_or((sc, ""));
            let (k, v) = pair.split_once('=').unwrap();
            let gone = attrs.to_ascii_lowercase().contains("max-age=0")
                || attrs
                    .to_ascii_lowercase()
                    .contains("expires=thu, 01 jan 1970");
            if gone || v.is_empty() {
                jar.remove(k.trim());
            } else {
                jar.insert(k.trim().to_string(), v.to_string());
            }
        }
        r
    }

    fn has(&self, port: u16, cookie: &str) -> bool {
        self.jars.get(&port).is_some_and(|j| j.contains_key(cookie))
    }
}

fn location(r: &Reply, base: &str) -> String {
    let l = r.headers["location"].to_str().unwrap();
    if l.starts_with("http") {
        l.to_string()
    } else {
        format!("{base}{l}")
    }
}

/// Where a provider's redirect (302 or 303) sends the browser.
fn redirected(r: &Reply, base: &str) -> String {
    assert!(
        r.status == 303 || r.status == 302,
        "{}: {}",
        r.status,
        r.text()
    );
    location(r, base)
}

/// The `action` of the page's first form.
fn form_action(html: &str) -> String {
    let at = html.find("action=\"").expect("a form") + 8;
    html[at..].split('"').next().unwrap().replace("&amp;", "&")
}

fn config(origin: SocketAddr, provider: u16, gateway: u16, bearer: &str) -> String {
    upstream_yaml(&[origin], "")
        + &format!(
            "routes:
  - {{name: web, paths: [\"/app/*\", \"/callback\", \"/logout\"], service: svc}}
  - {{name: api, paths: [\"/api/*\"], service: svc}}
consumers:
  - {{username: alice, groups: [staff]}}
plugins:
  - name: openid-connect
    route: web
    config: &oidc
      discovery: http://127.0.0.1:{provider}/.well-known/openid-configuration
      client_id: shop
      client_secret: shop-secret-0123456789
      redirect_uri: http://127.0.0.1:{gateway}/callback
      session_secret: a-session-secret-of-32-bytes-at-least
      logout_path: /logout
      post_logout_redirect_uri: http://127.0.0.1:{gateway}/bye
      claims_to_headers: {{sub: X-User-Id, email: X-User-Email}}
      access_token_header: X-Access-Token
      consumer_claim: sub
  - name: openid-connect
    route: api
    config:
      discovery: http://127.0.0.1:{provider}/.well-known/openid-configuration
      client_id: shop
      client_secret: shop-secret-0123456789
      redirect_uri: http://127.0.0.1:{gateway}/callback
      session_secret: a-session-secret-of-32-bytes-at-least
      unauth_action: deny
      bearer: {bearer}
      claims_to_headers: {{sub: X-User-Id}}
      consumer_claim: sub
"
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_through_the_provider_and_an_api_takes_its_bearer_token() {
    // The gateway listens first (port 0), so no other process can take its port before the
    // provider is told it; the login config follows by a reload once the provider runs.
    let o = Origin::start("a").await;
    let g = gateway(&(upstream_yaml(&[o.addr], "") + ROUTE_ALL));
    let gport = addr(&g).port();
    let idp = Provider::start(gport);
    let yaml = config(o.addr, idp.port, gport, "introspection");
    g.reload(gatehouse_model::parse_yaml(&yaml).unwrap())
        .unwrap_or_else(|e| panic!("{e:?}"));
    let gw = format!("http://127.0.0.1:{gport}");
    let idp_base = format!("http://127.0.0.1:{}", idp.port);
    let mut b = Browser::default();

    // 1. No session: off to the provider, with PKCE.
    let r = b.go("GET", &format!("{gw}/app/orders?page=2"), None).await;
    assert_eq!(r.status, 302, "{}", r.text());
    let auth = location(&r, &gw);
    assert!(auth.starts_with(&format!("{idp_base}/auth?")), "{auth}");
    assert!(auth.contains("code_challenge_method=S256") && auth.contains("client_id=shop"));
    assert!(b.has(gport, "gatehouse_session_login"));

    // 2. The provider's own login and consent pages.
    let mut next = auth;
    let mut page = String::new();
    for _ in 0..12 {
        let r = b.go("GET", &next, None).await;
        if r.status == 200 {
            page = r.text();
            let action = match form_action(&page) {
                a if a.starts_with("http") => a,
                a => format!("{idp_base}{a}"),
            };
            let form = if page.contains("name=\"login\"") {
                "prompt=login&login=alice&password=anything"
            } else {
                "prompt=consent"
            };
            next = redirected(&b.go("POST", &action, Some(form)).await, &idp_base);
            continue;
        }
        next = redirected(&r, &idp_base);
        if next.starts_with(&gw) {
            break;
        }
    }
    assert!(
        next.starts_with(&format!("{gw}/callback?code=")),
        "{next}\n{page}"
    );

    // 3. The callback: code traded, ID token checked, session set, back where we were.
    let r = b.go("GET", &next, None).await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(location(&r, &gw), format!("{gw}/app/orders?page=2"));
    assert!(b.has(gport, "gatehouse_session") && !b.has(gport, "gatehouse_session_login"));
    let r = b.go("GET", &format!("{gw}/app/orders?page=2"), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    assert_eq!(h["x-user-id"], "alice");
    assert_eq!(h["x-user-email"], "alice@example.test");
    assert_eq!(h["x-consumer-username"], "alice");
    assert!(
        h.get("cookie").is_none(),
        "the gateway's cookies stay with it: {h}"
    );
    let access_token = h["x-access-token"].as_str().unwrap().to_string();

    // 4. The same callback again (a replayed code or state) is refused.
    let r = b.go("GET", &next, None).await;
    assert_eq!(r.status, 401, "{}", r.text());

    // 5. An API route takes the provider's access token as a bearer token (introspection).
    let bearer = format!("Bearer {access_token}");
    let r = get_with(addr_of(gport), "/api/me", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-user-id"], "alice");
    let r = get_with(
        addr_of(gport),
        "/api/me",
        &[("authorization", "Bearer forged")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "the token is not active");
    let r = get(addr_of(gport), "/api/me").await;
    assert_eq!(r.status, 401, "an API is not sent to a login page");

    // 6. A forged or tampered session cookie is no session.
    let mut forged = Browser::default();
    forged
        .jars
        .entry(gport)
        .or_default()
        .insert("gatehouse_session".into(), "AAAA".into());
    let r = forged.go("GET", &format!("{gw}/app/orders"), None).await;
    assert_eq!(r.status, 302, "sent to log in");

    // 7. Logout: the session ends here and at the provider.
    let r = b.go("GET", &format!("{gw}/logout"), None).await;
    assert_eq!(r.status, 302);
    let end = location(&r, &gw);
    assert!(
        end.starts_with(&format!("{idp_base}/session/end?")),
        "{end}"
    );
    assert!(end.contains("id_token_hint="));
    assert!(!b.has(gport, "gatehouse_session"));
    let r = b.go("GET", &format!("{gw}/app/orders"), None).await;
    assert_eq!(r.status, 302, "logged out");
}

fn addr_of(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}
