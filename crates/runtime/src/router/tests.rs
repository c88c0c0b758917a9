//! Table tests of route precedence and matching.

use super::*;
use gatehouse_model::parse_yaml;

fn routes(yaml_routes: &str) -> Vec<Route> {
    let text = format!(
        "upstreams: [{{name: u, targets: [{{address: \"h:1\"}}]}}]\nservices: [{{name: s, upstream: u}}]\nroutes:\n{yaml_routes}"
    );
    match parse_yaml(&text) {
        Ok(c) => c.routes,
        Err(e) => panic!("bad test config: {e}"),
    }
}

fn router(yaml_routes: &str) -> (Router, Vec<Route>) {
    let rs = routes(yaml_routes);
    match Router::build(&rs) {
        Ok(r) => (r, rs),
        Err(e) => panic!("router did not build: {e:?}"),
    }
}

/// Looks up `method host path?query` with extra `name: value` headers; returns the route name.
fn find(r: &(Router, Vec<Route>), line: &str, headers: &[(&str, &str)]) -> Option<String> {
    let mut parts = line.split(' ');
    let method: Method = parts.next().unwrap_or("GET").parse().unwrap_or(Method::GET);
    let host = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap_or(http::header::ACCEPT),
            http::HeaderValue::from_str(v).unwrap_or(http::HeaderValue::from_static("")),
        );
    }
    let view = RequestView {
        method: &method,
        host,
        path,
        query,
        headers: &map,
    };
    r.0.find(&view).map(|m| r.1[m.route].name.clone())
}

const TABLE: &str = r#"
  - {name: exact, service: s, paths: ["/api/users/me"]}
  - {name: param, service: s, paths: ["/api/users/{id}"]}
  - {name: param2, service: s, paths: ["/api/users/{uid}/posts/{post}"]}
  - {name: prefix-long, service: s, paths: ["/api/users/*"]}
  - {name: prefix-short, service: s, paths: ["/api/*"]}
  - {name: regex, service: s, paths: ["~^/api/v[0-9]+/items$"]}
  - {name: host-exact, service: s, hosts: [api.example.com], paths: ["/*"]}
  - {name: host-wild, service: s, hosts: ["*.example.com"], paths: ["/*"]}
  - {name: host-wild-deep, service: s, hosts: ["*.eu.example.com"], paths: ["/*"]}
  - {name: catchall, service: s}
"#;

#[test]
fn precedence_table() {
    let r = router(TABLE);
    let cases: &[(&str, &str)] = &[
        ("GET x /api/users/me", "exact"),
        ("GET x /api/users/42", "param"),
        ("GET x /api/users/42/posts/7", "param2"),
        ("GET x /api/users/42/other", "prefix-long"),
        ("GET x /api/users", "prefix-long"),
        ("GET x /api/users/", "prefix-long"),
        ("GET x /api/things", "prefix-short"),
        ("GET x /api/v2/items", "prefix-short"),
        ("GET x /apiary", "catchall"),
        ("GET x /", "catchall"),
        ("GET api.example.com /api/users/me", "host-exact"),
        ("GET API.Example.COM /x", "host-exact"),
        ("GET www.example.com /x", "host-wild"),
        ("GET a.eu.example.com /x", "host-wild-deep"),
        ("GET example.com /api/users/me", "exact"),
    ];
    for (line, want) in cases {
        assert_eq!(find(&r, line, &[]).as_deref(), Some(*want), "{line}");
    }
}

#[test]
fn regex_is_last_and_priority_breaks_ties() {
    let r = router(
        r#"
  - {name: regex, service: s, paths: ["~^/v[0-9]+/items$"]}
  - {name: low, service: s, paths: ["/p/*"]}
  - {name: high, service: s, paths: ["/p/*"], priority: 10}
  - {name: re-low, service: s, paths: ["~^/r/"]}
  - {name: re-high, service: s, paths: ["~^/r/x"], priority: 5}
"#,
    );
    assert_eq!(find(&r, "GET h /v2/items", &[]).as_deref(), Some("regex"));
    assert_eq!(find(&r, "GET h /v2/items/x", &[]), None);
    assert_eq!(find(&r, "GET h /p/a", &[]).as_deref(), Some("high"));
    assert_eq!(find(&r, "GET h /r/xyz", &[]).as_deref(), Some("re-high"));
    assert_eq!(find(&r, "GET h /r/abc", &[]).as_deref(), Some("re-low"));
}

#[test]
fn predicates_select_and_fall_through() {
    let r = router(
        r#"
  - {name: get-only, service: s, paths: ["/m"], methods: [GET]}
  - {name: canary, service: s, paths: ["/c/*"], headers: [{name: X-Canary, equals: "1"}]}
  - {name: stable, service: s, paths: ["/c/*"]}
  - {name: beta-cookie, service: s, paths: ["/k"], cookies: [{name: beta, present: true}]}
  - {name: q, service: s, paths: ["/q"], query: [{name: v, regex: "^[0-9]+$"}]}
  - {name: q-space, service: s, paths: ["/q"], query: [{name: v, equals: "a b"}]}
  - {name: fallback, service: s, paths: ["/*"]}
"#,
    );
    assert_eq!(find(&r, "GET h /m", &[]).as_deref(), Some("get-only"));
    assert_eq!(find(&r, "POST h /m", &[]).as_deref(), Some("fallback"));
    assert_eq!(
        find(&r, "GET h /c/x", &[("x-canary", "1")]).as_deref(),
        Some("canary")
    );
    assert_eq!(
        find(&r, "GET h /c/x", &[("x-canary", "0")]).as_deref(),
        Some("stable")
    );
    assert_eq!(
        find(&r, "GET h /k", &[("cookie", "a=1; beta=yes")]).as_deref(),
        Some("beta-cookie")
    );
    assert_eq!(
        find(&r, "GET h /k", &[("cookie", "a=1")]).as_deref(),
        Some("fallback")
    );
    assert_eq!(find(&r, "GET h /q?x=1&v=42", &[]).as_deref(), Some("q"));
    assert_eq!(
        find(&r, "GET h /q?v=a%20b", &[]).as_deref(),
        Some("q-space")
    );
    assert_eq!(find(&r, "GET h /q?v=a+b", &[]).as_deref(), Some("q-space"));
    assert_eq!(find(&r, "GET h /q?v=abc", &[]).as_deref(), Some("fallback"));
}

#[test]
fn params_and_matched_len() {
    let rs = routes(
        r#"
  - {name: a, service: s, paths: ["/users/{id}/posts/{post}"]}
  - {name: b, service: s, paths: ["/u/{name}"]}
  - {name: c, service: s, paths: ["/files/*"]}
  - {name: d, service: s, paths: ["~^/re/(?P<slug>[a-z]+)"]}
"#,
    );
    let r = match Router::build(&rs) {
        Ok(r) => r,
        Err(e) => panic!("{e:?}"),
    };
    let headers = HeaderMap::new();
    let look = |path: &'static str| {
        r.find(&RequestView {
            method: &Method::GET,
            host: "h",
            path,
            query: None,
            headers: &headers,
        })
    };
    let m = look("/users/7/posts/99");
    let m = m.as_ref();
    assert_eq!(m.map(|m| m.route), Some(0));
    assert_eq!(m.and_then(|m| m.param("id")), Some("7"));
    assert_eq!(m.and_then(|m| m.param("post")), Some("99"));
    assert_eq!(m.map(|m| m.matched_len), Some("/users/".len()));
    assert_eq!(
        look("/u/bob")
            .and_then(|m| m.param("name").map(str::to_owned))
            .as_deref(),
        Some("bob")
    );
    assert_eq!(
        look("/files/a/b").map(|m| m.matched_len),
        Some("/files".len())
    );
    let d = look("/re/abc/rest");
    assert_eq!(d.as_ref().and_then(|m| m.param("slug")), Some("abc"));
    assert_eq!(d.map(|m| m.matched_len), Some("/re/abc".len()));
}

#[test]
fn templates_with_different_param_names_share_a_leaf() {
    let r = router(
        r#"
  - {name: by-id, service: s, paths: ["/t/{id}"], headers: [{name: x-v, equals: "1"}]}
  - {name: by-name, service: s, paths: ["/t/{name}"]}
"#,
    );
    assert_eq!(
        find(&r, "GET h /t/1", &[("x-v", "1")]).as_deref(),
        Some("by-id")
    );
    assert_eq!(find(&r, "GET h /t/1", &[]).as_deref(), Some("by-name"));
}

#[test]
fn build_errors_name_the_field() {
    let rs = routes(
        r#"
  - {name: a, service: s, paths: ["/ok", "~^/(unclosed"]}
  - {name: b, service: s, headers: [{name: x, regex: "a)"}]}
"#,
    );
    let errs = match Router::build(&rs) {
        Ok(_) => panic!("should not build"),
        Err(e) => e,
    };
    let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("routes[0].paths[1]: regex does not compile: regex parse error:"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("routes[1].headers[0].regex: regex does not compile:"),
        "{}",
        lines[1]
    );
}

#[test]
fn many_routes_do_not_need_a_scan() {
    let mut yaml = String::new();
    for i in 0..5000 {
        yaml.push_str(&format!("  - {{name: r{i}, service: s, paths: [\"/svc{i}/items/{{id}}\", \"/svc{i}/static/*\"]}}\n"));
    }
    let r = router(&yaml);
    assert_eq!(
        find(&r, "GET h /svc4999/items/5", &[]).as_deref(),
        Some("r4999")
    );
    assert_eq!(
        find(&r, "GET h /svc17/static/a/b.css", &[]).as_deref(),
        Some("r17")
    );
    assert_eq!(find(&r, "GET h /nothing", &[]), None);
}
