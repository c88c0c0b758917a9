//! What the whole WAF engine costs per request with the built-in CRS at paranoia level 1:
//! a clean 1 KiB JSON POST (bench/waf/post-1k-json.lua's body), a clean GET with a query,
//! and an SQL injection. `cargo bench -p gatehouse-plugins --bench waf_engine`

use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse_plugins::waf::data::Request;
use gatehouse_plugins::waf::engine;
use gatehouse_plugins::waf::eval::Policy;
use std::hint::black_box;

fn body() -> String {
    let items: Vec<String> = (1..=12)
        .map(|i| format!(r#"{{"sku":"SKU-{i:04}","name":"Blue cotton t-shirt size M","qty":{i},"price":19.99}}"#))
        .collect();
    format!(
        r#"{{"customer":{{"name":"Anne O'Brien","email":"anne@example.com"}},"note":"Please deliver after 6pm, ring twice.","items":[{}]}}"#,
        items.join(",")
    )
}

fn bench(c: &mut Criterion) {
    let Ok(rs) = engine::load(true, &Vec::new(), None) else {
        panic!("the built-in CRS does not compile");
    };
    let mut pol = Policy {
        paranoia: 1,
        off: vec![false; rs.rules.len()],
        ..Policy::default()
    };
    for (k, v) in [
        ("crs_setup_version", "334"),
        ("paranoia_level", "1"),
        ("executing_paranoia_level", "1"),
        ("inbound_anomaly_score_threshold", "5"),
        ("outbound_anomaly_score_threshold", "4"),
    ] {
        pol.init.push((k.as_bytes().into(), v.as_bytes().into()));
    }
    let mut headers = http::HeaderMap::new();
    for (k, v) in [
        ("host", "127.0.0.1:8080"),
        ("user-agent", "wrk"),
        ("content-type", "application/json"),
        ("content-length", "1047"),
    ] {
        headers.insert(k, http::HeaderValue::from_static(v));
    }
    let body = body();
    let post: http::Uri = "/api/orders".parse().unwrap_or_default();
    let get: http::Uri = "/search?q=blue+cotton+shirt&page=2&sort=price"
        .parse()
        .unwrap_or_default();
    let sqli: http::Uri = "/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--"
        .parse()
        .unwrap_or_default();
    let req = |method, uri| Request {
        method,
        uri,
        version: http::Version::HTTP_11,
        headers: &headers,
        remote_addr: std::net::Ipv4Addr::LOCALHOST.into(),
        request_id: "b3b1c2d4",
    };
    c.bench_function("crs_pl1_clean_json_1k", |b| {
        b.iter(|| {
            black_box(engine::request(
                &rs,
                &pol,
                &req("POST", &post),
                Some(body.as_bytes()),
            ))
        })
    });
    c.bench_function("crs_pl1_clean_get", |b| {
        b.iter(|| black_box(engine::request(&rs, &pol, &req("GET", &get), None)))
    });
    c.bench_function("crs_pl1_sqli_get", |b| {
        b.iter(|| black_box(engine::request(&rs, &pol, &req("GET", &sqli), None)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
