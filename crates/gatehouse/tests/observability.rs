//! Integration tests of what the gateway tells about its requests: Prometheus metrics read
//! from the serving snapshot, JSON access log lines (sampling, per-route switches, field
//! selection, rotation), OTLP spans sent to a real HTTP receiver that decodes the protobuf,
//! W3C trace context, `Server-Timing`, and the token-gated decision trace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The value of the sample whose line starts with `series` (name and labels, exact).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gatehouse-obs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const TWO_ROUTES: &str = "routes:
  - {name: api, paths: [\"/api/*\"], service: svc}
  - {name: quiet, paths: [\"/quiet/*\"], service: svc, observability: {metrics: false, access_log: false}}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_time_and_size_requests_per_route_and_survive_reloads() {
    let o = Origin::start("a").await;
    let dead_addr = closed_addr();
    let yaml = (upstream_yaml(&[o.addr], "")
        + &format!(
            "  - name: broken
    upstream: gone
{TWO_ROUTES}  - {{name: down, paths: [\"/down/*\"], service: broken}}
plugins:
  - name: rate-limit
    route: api
    config: {{limit: 4, window: 1m, algorithm: fixed_window}}
"
        ))
        .replace(
            "services:",
            &format!("  - name: gone\n    targets: [{{address: \"{dead_addr}\"}}]\nservices:"),
        );
    let g = gateway(&yaml);
    let a = addr(&g);
    let mut c = Client::connect(a).await;
    for _ in 0..3 {
        assert_eq!(c.get("/api/x").await.status, 200);
    }
    let r = c
        .request("POST", "/api/post", &[], b"0123456789")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        c.get("/api/x").await.status,
        429,
        "the fifth is over the limit"
    );
    assert_eq!(c.get("/quiet/x").await.status, 200);
    assert_eq!(c.get("/down/x").await.status, 502);
    assert_eq!(c.get("/nowhere").await.status, 404);
    drop(c);

    let m = scrape(&g);
    let api = "route=\"api\",service=\"svc\"";
    // The request is recorded when its response body is done; give the workers a moment.
    assert!(
        eventually(Duration::from_secs(2), || {
            sample(
                &scrape(&g),
                &format!("gatehouse_http_responses_total{{{api},code=\"429\"}}"),
            ) == Some(1.0)
        })
        .await,
        "{m}"
    );
    let m = scrape(&g);
    let get = |s: &str| sample(&m, s).unwrap_or_else(|| panic!("no {s} in\n{m}"));
    assert_eq!(
        get(&format!(
            "gatehouse_http_requests_total{{{api},method=\"GET\",class=\"2xx\"}}"
        )),
        3.0
    );
    assert_eq!(
        get(&format!(
            "gatehouse_http_requests_total{{{api},method=\"POST\",class=\"2xx\"}}"
        )),
        1.0
    );
    assert_eq!(
        get(&format!(
            "gatehouse_http_requests_total{{{api},method=\"GET\",class=\"4xx\"}}"
        )),
        1.0
    );
    assert_eq!(
        get(&format!(
            "gatehouse_http_responses_total{{{api},code=\"200\"}}"
        )),
        4.0
    );
    assert_eq!(
        get("gatehouse_http_responses_total{route=\"down\",service=\"broken\",code=\"502\"}"),
        1.0
    );
    assert_eq!(
        get(&format!(
            "gatehouse_request_duration_seconds_count{{{api}}}"
        )),
        5.0
    );
    assert_eq!(
        get(&format!(
            "gatehouse_request_duration_seconds_bucket{{le=\"+Inf\",{api}}}"
        )),
        5.0
    );
    // The 429 never reached the upstream: four upstream timings, five gateway ones.
    assert_eq!(
        get(&format!(
            "gatehouse_upstream_duration_seconds_count{{{api}}}"
        )),
        4.0
    );
    assert_eq!(
        get(&format!(
            "gatehouse_gateway_duration_seconds_count{{{api}}}"
        )),
        5.0
    );
    assert_eq!(
        get(&format!("gatehouse_http_request_bytes_total{{{api}}}")),
        10.0
    );
    assert!(get(&format!("gatehouse_http_response_bytes_total{{{api}}}")) > 100.0);
    assert_eq!(
        get("gatehouse_plugin_rejections_total{route=\"api\",plugin=\"rate-limit\",instance=\"route=api\",key=\"ip\"}"),
        1.0
    );
    assert_eq!(get("gatehouse_http_unrouted_total"), 1.0);
    let target = format!("upstream=\"up\",target=\"{}\"", o.addr);
    assert_eq!(
        get(&format!("gatehouse_upstream_pool_misses_total{{{target}}}")),
        1.0
    );
    assert_eq!(
        get(&format!("gatehouse_upstream_pool_hits_total{{{target}}}")),
        4.0
    );
    assert_eq!(
        get(&format!("gatehouse_upstream_connections{{{target}}}")),
        1.0
    );
    assert_eq!(
        get(&format!("gatehouse_upstream_target_healthy{{{target}}}")),
        1.0
    );
    assert!(
        !m.contains("route=\"quiet\""),
        "a route with metrics off has no series:\n{m}"
    );
    assert!(get("gatehouse_downstream_connections_accepted_total") >= 1.0);

    // A reload that changes the route keeps its counters.
    g.reload(gatehouse_model::parse_yaml(&yaml.replace("/api/*", "/v2/*")).unwrap())
        .unwrap();
    assert_eq!(get_with(a, "/v2/x", &[]).await.status, 429);
    assert!(
        eventually(Duration::from_secs(2), || {
            sample(
                &scrape(&g),
                &format!("gatehouse_http_responses_total{{{api},code=\"429\"}}"),
            ) == Some(2.0)
        })
        .await
    );
    let m = scrape(&g);
    assert_eq!(
        sample(
            &m,
            &format!("gatehouse_http_responses_total{{{api},code=\"200\"}}")
        ),
        Some(4.0)
    );
}

fn read_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_a_json_line_per_request_off_the_hot_path() {
    let o = Origin::start("a").await;
    let dir = temp_dir("log");
    let file = dir.join("access.log");
    let yaml = upstream_yaml(&[o.addr], "")
        + TWO_ROUTES
        + "  - {name: half, paths: [\"/half/*\"], service: svc, observability: {log_sample: 0.5}}\n"
        + &format!(
            "observability:\n  access_log: {{path: \"{}\"}}\n",
            file.display()
        );
    let g = gateway(&yaml);
    let a = addr(&g);
    let mut c = Client::connect(a).await;
    let r = c
        .request("GET", "/api/one?x=1", &[("user-agent", "probe/1.0")], b"")
        .await
        .unwrap();
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    c.request("POST", "/api/two", &[], b"hello").await.unwrap();
    c.get("/quiet/never").await;
    for _ in 0..200 {
        c.get("/half/x").await;
    }
    c.get("/nowhere").await;
    drop(c);
    assert!(
        eventually(Duration::from_secs(3), || read_lines(&file).len() >= 3).await,
        "lines: {:?}",
        read_lines(&file)
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let lines = read_lines(&file);
    let first = &lines[0];
    assert_eq!(first["request_id"], id.as_str());
    assert_eq!(first["route"], "api");
    assert_eq!(first["service"], "svc");
    assert_eq!(first["upstream"], "up");
    assert_eq!(first["target"], o.addr.to_string());
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/api/one?x=1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["user_agent"], "probe/1.0");
    assert_eq!(first["retries"], 0);
    assert!(first["bytes_out"].as_u64().unwrap() > 50, "{first}");
    let (total, up, gw) = (
        first["duration_ms"].as_f64().unwrap(),
        first["upstream_ms"].as_f64().unwrap(),
        first["gateway_ms"].as_f64().unwrap(),
    );
    assert!(
        up > 0.0 && up <= total && (total - up - gw).abs() < 0.01,
        "{first}"
    );
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(lines[1]["bytes_in"], 5);
    assert!(lines.iter().all(|l| l["route"] != "quiet"), "quiet is off");
    let half = lines.iter().filter(|l| l["route"] == "half").count();
    assert!(
        (50..=150).contains(&half),
        "log_sample 0.5 of 200 logged {half}"
    );
    let unrouted = lines
        .iter()
        .find(|l| l["status"] == 404)
        .expect("404 logged");
    assert!(unrouted["route"].is_null());
    drop(g);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_line_of_an_upstream_timeout_names_the_target() {
    let o = Origin::start("a").await;
    let dir = temp_dir("timeout-target");
    let file = dir.join("access.log");
    let yaml = upstream_yaml_with_service(&[o.addr], "", "    timeouts: {read: 200ms}\n")
        + ROUTE_ALL
        + &format!(
            "observability:\n  access_log: {{path: \"{}\"}}\n",
            file.display()
        );
    let g = gateway(&yaml);
    let r = get(addr(&g), "/delay/1000/x").await;
    assert_eq!(r.status, 504);
    assert!(
        eventually(Duration::from_secs(3), || !read_lines(&file).is_empty()).await,
        "no line"
    );
    let line = &read_lines(&file)[0];
    assert_eq!(line["status"], 504);
    // Before: `null`, while the WARN line named the target.
    assert_eq!(line["target"], o.addr.to_string(), "{line}");
    drop(g);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One route to a fresh origin, with an access log in a directory of its own: `settings`
/// are the `access_log` keys after `path`. Returns the origin, the directory, the log file and
/// the gateway.
async fn logged_gateway(
    name: &str,
    settings: &str,
) -> (Origin, std::path::PathBuf, std::path::PathBuf, Gateway) {
    let o = Origin::start("a").await;
    let dir = temp_dir(name);
    let file = dir.join("access.log");
    let yaml = upstream_yaml(&[o.addr], "")
        + ROUTE_ALL
        + &format!(
            "observability:\n  access_log: {{path: \"{}\", {settings}}}\n",
            file.display()
        );
    let g = gateway(&yaml);
    (o, dir, file, g)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_fields_are_selectable_and_files_rotate_by_size() {
    let (_o, dir, file, g) = logged_gateway(
        "rotate",
        "fields: [status, route, path], max_size: 2KiB, keep: 2",
    )
    .await;
    let mut c = Client::connect(addr(&g)).await;
    // About 50 bytes a line: 400 lines are about ten files' worth.
    for i in 0..400 {
        c.get(&format!("/n/{i:04}")).await;
        if i % 50 == 49 {
            // Let the writer catch up, so rotations happen between bursts.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    let rotated = dir.join("access.log.1");
    assert!(eventually(Duration::from_secs(3), || rotated.exists()).await);
    let text = std::fs::read_to_string(&rotated).unwrap();
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with("{\"status\":200,\"route\":\"r\",\"path\":\"/n/"),
        "the configured fields in their order: {first}"
    );
    assert_eq!(read_lines(&rotated)[0].as_object().unwrap().len(), 3);
    assert!(dir.join("access.log.2").exists());
    assert!(!dir.join("access.log.3").exists(), "keep: 2");
    assert!(file.exists(), "writing goes on in a new file");
    let size = std::fs::metadata(&rotated).unwrap().len();
    assert!((2048..2048 + 64 * 1024).contains(&size), "{size}");
    drop(g);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An OTLP/HTTP receiver: decodes each export's protobuf body and keeps its spans.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start() -> Receiver {
        use prost::Message;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let kept = spans.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let kept = kept.clone();
                            async move {
                                let ok = req.uri().path() == "/v1/traces"
                                    && req.headers()["content-type"] == "application/x-protobuf";
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let status = match ExportTraceServiceRequest::decode(body) {
                                    Ok(r) if ok => {
                                        for rs in r.resource_spans {
                                            for ss in rs.scope_spans {
                                                kept.lock().unwrap().extend(ss.spans);
                                            }
                                        }
                                        200
                                    }
                                    _ => 400,
                                };
                                let mut resp = hyper::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::new(),
                                ));
                                *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Receiver { addr, spans, task }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_continue_the_callers_context_and_reach_an_otlp_receiver() {
    let o = Origin::start("a").await;
    let rx = Receiver::start().await;
    let yaml = upstream_yaml(&[o.addr], "")
        + TWO_ROUTES
        + &format!(
            "observability:\n  tracing: {{endpoint: \"http://{}/v1/traces\", sample_ratio: 0, flush_every: 50ms, service_name: edge}}\n",
            rx.addr
        );
    let g = gateway(&yaml);
    let a = addr(&g);

    // A sampled caller: its trace goes on through the gateway to the origin.
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get_with(
        a,
        "/api/x",
        &[("traceparent", caller), ("tracestate", "vendor=1")],
    )
    .await;
    let seen = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        seen.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{seen}"
    );
    assert!(seen.ends_with("-01"));
    let upstream_parent = &seen[36..52];
    assert_ne!(
        upstream_parent, "00f067aa0ba902b7",
        "the gateway's attempt span is the parent"
    );
    assert_eq!(r.json()["headers"]["tracestate"], "vendor=1");

    assert!(eventually(Duration::from_secs(3), || rx.spans().len() >= 2).await);
    let spans = rx.spans();
    let server = spans.iter().find(|s| s.kind == 2).expect("a server span");
    let client = spans.iter().find(|s| s.kind == 3).expect("a client span");
    assert_eq!(hex(&server.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&server.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(server.name, "GET api");
    assert_eq!(server.trace_state, "vendor=1");
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(hex(&client.span_id), upstream_parent);
    assert!(server.start_time_unix_nano <= client.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);
    let attr = |s: &Span, k: &str| {
        s.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    assert_eq!(
        attr(server, "http.route"),
        Some(Value::StringValue("api".into()))
    );
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(Value::IntValue(200))
    );
    assert_eq!(
        attr(client, "server.address"),
        Some(Value::StringValue(o.addr.to_string()))
    );

    // No caller context and sample_ratio 0: a new, unsampled trace is still propagated, and
    // nothing is exported.
    let before = rx.spans().len();
    let r = get(a, "/api/y").await;
    let seen = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(seen.starts_with("00-") && seen.ends_with("-00"), "{seen}");
    // A caller that said "not sampled" is not overruled.
    get_with(
        a,
        "/api/z",
        &[("traceparent", &caller.replace("-01", "-00"))],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.spans().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_timing_is_opt_in_per_route() {
    let o = Origin::start("a").await;
    let yaml = upstream_yaml(&[o.addr], "")
        + "routes:
  - {name: timed, paths: [\"/t/*\"], service: svc, strip_prefix: true, observability: {server_timing: true}}
  - {name: plain, paths: [\"/p/*\"], service: svc}
";
    let g = gateway(&yaml);
    let a = addr(&g);
    let r = get(a, "/t/delay/30/x").await;
    let st = r.headers["server-timing"].to_str().unwrap().to_owned();
    let dur = |name: &str| -> f64 {
        st.split(", ")
            .find_map(|p| p.strip_prefix(&format!("{name};dur=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {st}"))
    };
    assert!(dur("upstream") >= 30.0, "{st}");
    assert!(dur("gateway") < dur("upstream"), "{st}");
    assert!(!get(a, "/p/x").await.headers.contains_key("server-timing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_debug_token_gets_the_decision_trace_and_nothing_else_does() {
    let o = Origin::start("a").await;
    let yaml = upstream_yaml(&[o.addr], "")
        + "routes:
  - {name: api, paths: [\"/api/{id}\"], service: svc}
plugins:
  - name: rate-limit
    route: api
    config: {limit: 10, window: 1m, algorithm: fixed_window, key: [ip, \"header:x-tier\"]}
";
    let g = gateway(&yaml);
    let a = addr(&g);
    let token = g
        .shared()
        .debug_tokens
        .issue(Duration::from_secs(60))
        .unwrap();

    let r = get_with(a, "/api/42", &[("x-gatehouse-debug", &token)]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.json()["headers"].get("x-gatehouse-debug").is_none(),
        "the token never goes upstream"
    );
    let d: serde_json::Value =
        serde_json::from_slice(r.headers["x-gatehouse-decision"].as_bytes()).unwrap();
    let plan = &d["plan"]["route"];
    assert_eq!(plan["name"], "api");
    assert_eq!(plan["paths"][0], "/api/{id}");
    assert_eq!(plan["params"][0], serde_json::json!(["id", "42"]));
    let step = d["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["phase"] == "access")
        .expect("the access phase");
    assert_eq!(step["plugin"], "rate-limit");
    assert_eq!(step["verdict"], "continue");
    assert_eq!(step["key"], "ip+header:x-tier");
    assert_eq!(
        step["key_value"], "127.0.0.1|",
        "the client's address, no x-tier header"
    );
    let remaining = step["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "ratelimit")
        .expect("the limit's state");
    assert!(
        remaining[1].as_str().unwrap().contains(";r=9;"),
        "{remaining}"
    );
    let attempt = &d["attempts"][0];
    assert_eq!(attempt["target"], o.addr.to_string());
    assert_eq!(attempt["outcome"], "status 200");
    assert!(attempt["why"]
        .as_str()
        .unwrap()
        .starts_with("round_robin pick"));
    assert_eq!(d["retries"], 0);
    assert_eq!(d["status"], 200);

    for bad in ["", "ghd_0000", &format!("{token}x")] {
        let r = get_with(a, "/api/42", &[("x-gatehouse-debug", bad)]).await;
        assert_eq!(r.status, 200);
        assert!(!r.headers.contains_key("x-gatehouse-decision"), "{bad:?}");
        assert!(r.json()["headers"].get("x-gatehouse-debug").is_none());
    }
    assert!(!get(a, "/api/42")
        .await
        .headers
        .contains_key("x-gatehouse-decision"));
    let m = scrape(&g);
    assert_eq!(sample(&m, "gatehouse_decision_traces_total"), Some(1.0));
    assert_eq!(
        sample(&m, "gatehouse_decision_traces_refused_total"),
        Some(3.0)
    );
}

/// Every metric name the docs, the Grafana dashboard and the alert rules use is one the
/// gateway exports (as a sample name: counters with `_total`, histograms with `_bucket`,
/// `_sum`, `_count`, or a histogram's family name), prefixes and all.
#[test]
fn the_dashboard_alerts_and_docs_name_only_exported_metrics() {
    let o = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let yaml = upstream_yaml(&[o.local_addr().unwrap()], "")
        + ROUTE_ALL
        + "consumers: [{username: alice}]\nobservability: {metrics: {consumers: true}}\n"
        + "plugins: [{name: traffic-mirror, config: {upstream: up, diff: {}}}]\n";
    let g = gateway(&yaml);
    let shared = g.shared().clone();
    let mut metrics = gatehouse_admin::Metrics::new();
    metrics.register_collector(Box::new(gatehouse_runtime::telemetry::SnapshotCollector(
        move || shared.snapshot.load_full(),
    )));
    // A registered target, so that discovery's series are there too.
    let target = gatehouse_runtime::discovery::Found {
        address: o.local_addr().unwrap().to_string(),
        weight: 1,
        labels: Default::default(),
        metadata: None,
        origin: gatehouse_runtime::discovery::Origin::Registered,
        from: None,
    };
    g.shared().register("up", target, u64::MAX).unwrap();
    metrics.register_collector(Box::new(gatehouse_runtime::discovery::Collector(
        g.shared().discovery.state.clone(),
    )));
    metrics.breakers(&[gatehouse_admin::BreakerStatus {
        scope: "route",
        name: "r".into(),
        state: "closed",
        opened_total: 0,
    }]);
    metrics.fallbacks(&[("r".into(), [0, 0, 0])]);
    let text = metrics.encode().unwrap();
    let mut exported = std::collections::BTreeSet::new();
    for l in text.lines() {
        let mut w = l.split_whitespace().skip(2);
        if let (Some(name), Some(kind)) = (w.next(), w.next()) {
            if !l.starts_with("# TYPE ") {
                continue;
            }
            match kind {
                "counter" => drop(exported.insert(format!("{name}_total"))),
                "histogram" => {
                    exported.insert(name.to_owned()); // the family, as docs name it
                    for s in ["_bucket", "_sum", "_count"] {
                        exported.insert(format!("{name}{s}"));
                    }
                }
                _ => drop(exported.insert(name.to_owned())),
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for doc in [
        "docs/grafana-dashboard.json",
        "docs/prometheus-alerts.yml",
        "docs/observability.md",
        "docs/admin-api.md",
    ] {
        let mut body = std::fs::read_to_string(root.join(doc)).unwrap();
        if doc.ends_with("admin-api.md") {
            // Only its /metrics row names metrics (elsewhere `gatehouse_config` is the
            // PostgreSQL notification channel).
            body = body
                .lines()
                .filter(|l| l.starts_with("| `GET /metrics`"))
                .collect();
        }
        let mut used = 0;
        for (i, _) in body.match_indices("gatehouse_") {
            let name: String = body[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if name.ends_with('_') {
                continue; // a prefix in prose
            }
            used += 1;
            assert!(
                exported.contains(&name),
                "{doc} uses {name}, which is not exported; exported: {exported:?}"
            );
        }
        assert!(used > 0, "{doc} names no metric");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_files_rotate_by_age() {
    let (_o, dir, file, g) =
        logged_gateway("age", "fields: [path], rotate_every: 1s, keep: 1").await;
    let a = addr(&g);
    get(a, "/first").await;
    let rotated = dir.join("access.log.1");
    assert!(eventually(Duration::from_secs(3), || rotated.exists()).await);
    get(a, "/second").await;
    assert!(
        eventually(Duration::from_secs(2), || !read_lines(&file).is_empty()).await,
        "a new file after rotating"
    );
    assert_eq!(read_lines(&rotated)[0]["path"], "/first");
    assert_eq!(read_lines(&file)[0]["path"], "/second");
    drop(g);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `n` routes `r0`..: `/r{i}/*` to service `svc`, and `observability.metrics` settings.
fn many_routes(origin: SocketAddr, n: usize, metrics: &str) -> String {
    let mut yaml = upstream_yaml(&[origin], "") + "routes:\n";
    for i in 0..n {
        yaml += &format!("  - {{name: r{i}, paths: [\"/r{i}/*\"], service: svc}}\n");
    }
    yaml + &format!("observability:\n  metrics: {metrics}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_of_many_routes_is_bounded_and_no_counter_moves_between_series() {
    let o = Origin::start("a").await;
    let yaml = many_routes(o.addr, 200, "{max_routes: 3}");
    let g = gateway(&yaml);
    let a = addr(&g);
    let m = scrape(&g);
    // Before: every route had its four counters at zero, traffic or not.
    assert!(
        !m.contains("route=\"r"),
        "unused routes have no series:\n{m}"
    );

    for i in 0..3 {
        assert_eq!(get(a, &format!("/r{i}/x")).await.status, 200);
    }
    let m = scrape(&g);
    for i in 0..3 {
        let s = format!(
            "gatehouse_http_responses_total{{route=\"r{i}\",service=\"svc\",code=\"200\"}}"
        );
        assert_eq!(sample(&m, &s), Some(1.0), "{m}");
    }
    // The cap is reached: later routes are summed under `_other`.
    for i in 3..8 {
        assert_eq!(get(a, &format!("/r{i}/x")).await.status, 200);
        assert_eq!(get(a, &format!("/r{i}/y")).await.status, 200);
    }
    assert_eq!(get(a, "/r0/x").await.status, 200);
    let m = scrape(&g);
    let other = "gatehouse_http_responses_total{route=\"_other\",service=\"_other\",code=\"200\"}";
    assert_eq!(sample(&m, other), Some(10.0), "{m}");
    let r0 = "gatehouse_http_responses_total{route=\"r0\",service=\"svc\",code=\"200\"}";
    assert_eq!(sample(&m, r0), Some(2.0));
    assert!(!m.contains("route=\"r3\""), "{m}");
    let histograms = m
        .lines()
        .filter(|l| l.starts_with("gatehouse_request_duration_seconds_count"))
        .count();
    assert_eq!(histograms, 4, "3 routes and _other:\n{m}");

    // A reload keeps each route where it was, even one that would now find a free place.
    let fewer = yaml.replace("  - {name: r1, paths: [\"/r1/*\"], service: svc}\n", "");
    g.reload(gatehouse_model::parse_yaml(&fewer).unwrap())
        .unwrap();
    assert_eq!(get(a, "/r3/z").await.status, 200);
    assert_eq!(get(a, "/r9/z").await.status, 200);
    let m = scrape(&g);
    assert_eq!(sample(&m, other), Some(11.0), "r3 stays in _other:\n{m}");
    assert!(!m.contains("route=\"r3\""), "{m}");
    let r9 = "gatehouse_http_responses_total{route=\"r9\",service=\"svc\",code=\"200\"}";
    assert_eq!(
        sample(&m, r9),
        Some(1.0),
        "r9 takes the place r1 left:\n{m}"
    );

    // Per-route histograms off: one per service, counting every route.
    let off = many_routes(o.addr, 200, "{max_routes: 3, route_histograms: false}");
    g.reload(gatehouse_model::parse_yaml(&off).unwrap())
        .unwrap();
    let m = scrape(&g);
    let count = sample(
        &m,
        "gatehouse_request_duration_seconds_count{service=\"svc\"}",
    );
    // All 16 requests but r1's, whose statistics went when it left the config.
    assert_eq!(count, Some(15.0), "{m}");
    assert!(
        !m.contains("gatehouse_request_duration_seconds_count{route"),
        "{m}"
    );
    g.shutdown().await;
}
