use super::*;
use crate::test_support::{get, AccessNow};
use gatehouse_plugin_api::testing::env_with_upstreams;
use gatehouse_plugin_api::{Consumer, PluginKind, RequestFacts};

fn build(kind: &dyn PluginKind, config: serde_json::Value) -> Arc<dyn Plugin> {
    kind.build(&config, &env_with_upstreams(&[]))
        .unwrap_or_else(|e| panic!("{e:?}"))
}

#[test]
fn request_headers_and_query_are_edited_with_variables() {
    let p = build(
        &RequestKind,
        serde_json::json!({
            "headers": {
                "remove": ["x-secret"],
                "rename": {"x-old": "x-new"},
                "set": {"x-user": "{consumer}@{client_ip}", "x-id": "{capture.id}/{request_id}"},
                "add": {"x-tenant": "{query.tenant}", "x-keep": "no"},
                "append": {"x-trail": "gw"},
            },
            "query": {"remove": ["debug"], "rename": {"q": "search"}, "set": {"v": "2"},
                      "add": {"lang": "en"}},
        }),
    );
    assert!(p.needs().facts);
    let mut r = get("/items/7?q=a+b&debug=1&tenant=t%201")
        .header("x-secret", "s")
        .header("x-old", "o")
        .header("x-keep", "yes")
        .header("x-trail", "client");
    r.consumer = Some(Consumer::named(0, "alice"));
    r.state.insert(RequestFacts {
        request_id: Some("rid-1".parse().unwrap()),
        captures: vec![("id".into(), "7".into())],
    });
    r.access_now(&*p).unwrap();
    let h = &r.parts.headers;
    assert!(h.get("x-secret").is_none() && h.get("x-old").is_none());
    assert_eq!(h["x-new"], "o");
    assert_eq!(h["x-user"], "alice@127.0.0.1");
    assert_eq!(h["x-id"], "7/rid-1");
    assert_eq!(h["x-tenant"], "t 1");
    assert_eq!(h["x-keep"], "yes");
    let trail: Vec<_> = h.get_all("x-trail").iter().collect();
    assert_eq!(trail, ["client", "gw"]);
    assert_eq!(
        r.parts.uri.to_string(),
        "/items/7?search=a+b&tenant=t+1&v=2&lang=en"
    );
}

#[test]
fn request_json_bodies_are_edited_and_others_left() {
    let p = build(
        &RequestKind,
        serde_json::json!({"json": {"remove": ["password"], "rename": {"user": "login"},
                                     "set": {"source": "gateway", "n": 3}}}),
    );
    assert_eq!(p.needs().request_body, Some(1 << 20));
    let mut r = get("/")
        .header("content-type", "application/json; charset=utf-8")
        .with_body(r#"{"user":"a","password":"p","n":1}"#);
    r.access_now(&*p).unwrap();
    let new = r.state.get::<gatehouse_plugin_api::NewBody>().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&new.0).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"login": "a", "n": 3, "source": "gateway"})
    );
    let mut r = get("/").header("content-type", "text/plain").with_body("x");
    r.access_now(&*p).unwrap();
    assert!(r.state.get::<gatehouse_plugin_api::NewBody>().is_none());
}

#[test]
fn response_json_bodies_are_edited_when_small_enough() {
    let p = build(
        &ResponseKind,
        serde_json::json!({"headers": {"set": {"x-served-for": "{client_ip}"}, "remove": ["server"]},
                           "json": {"remove": ["internal"], "add": {"route": "{route}"}},
                           "max_body": "64B"}),
    );
    let mut r = get("/");
    r.access_now(&*p).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("server", "x".parse().unwrap());
    let mut state = std::mem::take(&mut r.state);
    p.response(&mut ResponseCtx {
        status: http::StatusCode::OK,
        headers: &mut headers,
        route: "r",
        service: "s",
        request: None,
        consumer: None,
        state: &mut state,
    });
    assert_eq!(headers["x-served-for"], "127.0.0.1");
    assert!(headers.get("server").is_none());
    let body = |state: &mut http::Extensions, chunks: &[&'static str]| {
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let mut b = Bytes::from_static(c.as_bytes());
            let mut ctx = BodyCtx {
                status: http::StatusCode::OK,
                route: "r",
                consumer: None,
                state,
            };
            p.response_body(&mut ctx, &mut b, i + 1 == chunks.len());
            out.extend_from_slice(&b);
        }
        String::from_utf8(out).unwrap()
    };
    let mut s2 = state.clone();
    assert_eq!(
        body(&mut state, &[r#"{"a":1,"#, r#""internal":true}"#]),
        r#"{"a":1,"route":"r"}"#
    );
    let long =
        r#"{"a":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    assert_eq!(body(&mut s2, &[&long[..20], &long[20..]]), long);
}

#[test]
fn unknown_variables_and_bad_names_are_refused() {
    let e = PluginKind::build(
        &RequestKind,
        &serde_json::json!({"headers": {"set": {"x": "{nope}", "bad name": "v"}},
                                "json": {"append": {"a": 1}}}),
        &env_with_upstreams(&[]),
    )
    .err()
    .unwrap();
    let got: Vec<String> = e
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect();
    assert_eq!(
        got,
        [
            "headers.set.bad name: \"bad name\" is not a valid header name",
            "headers.set.x: unknown variable {nope}",
            "json.append: JSON fields cannot be appended to; use set or add"
        ]
    );
}
