//! Route lookup cost with 10, 1k and 100k routes: the router must not scan, so the time per
//! lookup should stay flat as the table grows (regex routes excepted; see docs).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gatehouse_model::Route;
use gatehouse_runtime::router::{RequestView, Router};
use http::{HeaderMap, Method};
use std::hint::black_box;

fn route(i: usize, path: String) -> Route {
    Route {
        name: format!("r{i}"),
        hosts: Vec::new(),
        paths: vec![path],
        methods: Vec::new(),
        headers: Vec::new(),
        query: Vec::new(),
        cookies: Vec::new(),
        service: "s".into(),
        priority: 0,
        strip_prefix: false,
        rewrite: None,
        rewrite_regex: None,
        preserve_host: false,
        priority_class: Default::default(),
        retries: None,
        retry: None,
        circuit_breaker: None,
        fallback: None,
        observability: None,
        protocols: Vec::new(),
        https_redirect_status_code: 426,
        grpc_transcode: None,
    }
}

/// A mix like a real gateway's: a third exact, a third RESTful templates, a third prefixes.
fn table(n: usize) -> Vec<Route> {
    (0..n)
        .map(|i| match i % 3 {
            0 => route(i, format!("/svc{i}/health")),
            1 => route(i, format!("/svc{i}/users/{{id}}/orders/{{order}}")),
            _ => route(i, format!("/svc{i}/static/*")),
        })
        .collect()
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    let headers = HeaderMap::new();
    for n in [10usize, 1_000, 100_000] {
        let router = match Router::build(&table(n)) {
            Ok(r) => r,
            Err(e) => panic!("{e:?}"),
        };
        // Paths that hit routes near the end of the table, one of each kind.
        let last = n - 1 - (n - 1) % 3;
        let paths = [
            format!("/svc{last}/health"),
            format!(
                "/svc{}/users/42/orders/7",
                last + 1 - 3 * usize::from(last + 1 >= n)
            ),
            format!(
                "/svc{}/static/css/site.css",
                last + 2 - 3 * usize::from(last + 2 >= n)
            ),
        ];
        for (kind, path) in ["exact", "template", "prefix"].iter().zip(&paths) {
            group.bench_with_input(BenchmarkId::new(*kind, n), path, |b, path| {
                b.iter(|| {
                    let view = RequestView {
                        method: &Method::GET,
                        host: "api.example.com",
                        path: black_box(path),
                        query: None,
                        headers: &headers,
                    };
                    let m = router.find(&view);
                    assert!(m.is_some(), "{path} did not match");
                    black_box(m.map(|m| m.route))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
