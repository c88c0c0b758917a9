//! Tests of the rate-limit plugin through its config and the request facade.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::test_support::{req, AccessNow};
use gatehouse_plugin_api::Consumer;
use gatehouse_plugin_api::PluginKind;
use serde_json::json;

fn build(config: serde_json::Value) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
    PluginKind::build(&Kind, &config, &BuildEnv::default())
}

fn errors(config: serde_json::Value) -> Vec<String> {
    match build(config) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect(),
    }
}

#[test]
fn bad_configs_name_the_field() {
    assert_eq!(errors(json!({"limit": 0})), ["limit: must be > 0"]);
    assert_eq!(
        errors(json!({"limit": 1, "window": "0s", "status": 200, "burst": 0})),
        [
            "window: must be > 0",
            "burst: must be > 0",
            "status: must be an HTTP status from 400 to 599"
        ]
    );
    assert_eq!(
        errors(json!({"limit": 1, "key": ["ip", "header:", "planet"]})),
        [
            "key[1]: \"header\" needs a header name: \"header:NAME\"",
            "key[2]: unknown key \"planet\"; expected ip, consumer, credential, route, service, \
             user_agent, ua_class, header:NAME, query:NAME or cookie:NAME"
        ]
    );
    assert_eq!(
        errors(json!({"limit": 1, "key": "ua_class"})),
        ["ua_classes: a ua_class key needs at least one class"]
    );
    assert_eq!(
        errors(
            json!({"limit": 1, "key": "ua_class", "ua_classes": [{"name": "bot", "regex": "("}]})
        )
        .len(),
        1
    );
    let e = errors(json!({"limit": 1, "window": "soon"}));
    assert!(e[0].starts_with("window: "), "{e:?}");
    let e = errors(json!({"limit": 1, "algorithm": "magic"}));
    assert!(
        e[0].starts_with("algorithm: unknown variant `magic`"),
        "{e:?}"
    );
    let e = errors(json!({"limit": 1, "limits": 2}));
    assert!(e[0].starts_with("limits: unknown field `limits`"), "{e:?}");
    assert!(errors(json!({"limit": 5, "window": "1m", "algorithm": "gcra"})).is_empty());
}

#[test]
fn rejects_past_the_limit_with_headers() {
    let p = build(json!({"limit": 2, "window": "1m", "algorithm": "fixed_window"})).unwrap();
    let mut r = req("10.0.0.1");
    let h = r.access_now(&*p).unwrap();
    assert_eq!(h["ratelimit-policy"], "\"default\";q=2;w=60");
    assert!(h["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"default\";r=1;t="));
    r.access_now(&*p).unwrap();
    let resp = r.access_now(&*p).unwrap_err();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(resp.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"default\";r=0;"));
    let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(body["error"], "rate limit exceeded");
    // Another client has its own budget.
    assert!(req("10.0.0.2").access_now(&*p).is_ok());
}

#[test]
fn composite_and_consumer_keys() {
    let p =
        build(json!({"limit": 1, "window": "1m", "key": ["consumer", "query:tenant"]})).unwrap();
    let mut anon = req("10.0.0.1");
    assert!(anon.access_now(&*p).is_ok());
    assert!(anon.access_now(&*p).is_err());
    // An identified consumer is counted apart from its ip.
    let mut alice = req("10.0.0.1");
    alice.consumer = Some(Consumer::named(0, "alice"));
    assert!(alice.access_now(&*p).is_ok());
    assert!(alice.access_now(&*p).is_err());
    // Another tenant is another key.
    let mut other = req("10.0.0.1");
    other.parts.uri = "/a?tenant=t2".parse().unwrap();
    assert!(other.access_now(&*p).is_ok());
}

#[test]
fn ua_classes_share_a_budget_per_class() {
    let p = build(json!({
        "limit": 1, "window": "1m", "key": "ua_class",
        "ua_classes": [{"name": "spider", "regex": "(?i)bot|spider"}]
    }))
    .unwrap();
    let mut a = req("10.0.0.1");
    a.parts
        .headers
        .insert("user-agent", "Googlebot/2.1".parse().unwrap());
    let mut b = req("10.0.0.2");
    b.parts
        .headers
        .insert("user-agent", "Baiduspider".parse().unwrap());
    assert!(a.access_now(&*p).is_ok());
    assert!(
        b.access_now(&*p).is_err(),
        "both spiders share the spider budget"
    );
    assert!(
        req("10.0.0.3").access_now(&*p).is_ok(),
        "browsers are class other"
    );
}

#[tokio::test]
async fn leaky_bucket_delays_then_rejects() {
    let p = build(
        json!({"limit": 10, "window": "1s", "algorithm": "leaky_bucket", "max_delay": "250ms"}),
    )
    .unwrap();
    let mut r = req("10.0.0.1");
    // Five requests at once: decided first, waited for afterwards.
    let flows: Vec<Flow> = (0..5).map(|_| p.access(&mut r.ctx())).collect();
    let started = std::time::Instant::now();
    let (mut passed, mut waited, mut rejected) = (0, 0, 0);
    for f in flows {
        match f {
            Flow::Continue => passed += 1,
            Flow::Wait(f) => {
                let later = f.await.unwrap();
                assert!(later.headers.contains_key("ratelimit"));
                waited += 1;
            }
            Flow::Respond(resp) => {
                assert_eq!(resp.status(), 429);
                rejected += 1;
            }
        }
    }
    // The first passes at once, the next ones wait 100 and 200 ms, then the queue is full
    // (300 ms > 250 ms).
    assert_eq!((passed, waited, rejected), (1, 2, 2));
    assert!(started.elapsed() >= Duration::from_millis(190));
}
