//! The admin API over a real socket: entities, pagination and filters, status, metrics,
//! read-only writes, and the OpenAPI spec.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const YAML: &str = r#"
upstreams:
  - {name: u1, targets: [{address: "127.0.0.1:9001"}]}
  - {name: u2, targets: [{address: "127.0.0.1:9002"}]}
services:
  - {name: users, upstream: u1}
  - {name: orders, upstream: u2}
routes:
  - {name: r1, paths: ["/users/*"], service: users}
  - {name: r2, paths: ["/me"], service: users}
  - {name: r3, paths: ["/orders/*"], service: orders}
consumers:
  - {username: alice}
plugins:
  - {name: rate-limit, route: r1, config: {limit: 10}}
  - {name: rate-limit, config: {limit: 100}}
"#;

/// A gateway as a file-mode admin API sees it: a config read from a file, served as is.
struct FileServed(Config);

impl GatewayView for FileServed {
    fn config(&self) -> Config {
        self.0.clone()
    }
    fn check(&self, _: &Config) -> Vec<gatehouse_model::ConfigError> {
        Vec::new()
    }
    fn apply(&self, _: Config) -> Result<(), Vec<gatehouse_model::ConfigError>> {
        Ok(())
    }
    fn health(&self, _: &str) -> Option<Vec<TargetHealth>> {
        None
    }
    fn breakers(&self) -> Vec<BreakerStatus> {
        Vec::new()
    }
    fn fallbacks(&self) -> Vec<(String, [u64; 3])> {
        Vec::new()
    }
}

async fn start() -> (SocketAddr, Arc<Control>) {
    let config = gatehouse_model::parse_yaml(YAML).unwrap();
    let control = Arc::new(Control::new(
        Source::File("gateway.yaml".into()),
        Arc::new(FileServed(config)),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let c = control.clone();
    tokio::spawn(serve(listener, c, std::future::pending()));
    (addr, control)
}

/// A minimal HTTP/1.1 client: method, path, and optional JSON body; returns status and body.
async fn call(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn lists_pages_filters_and_gets_entities() {
    let (a, _) = start().await;
    let (s, b) = call(a, "GET", "/routes").await;
    assert_eq!(s, 200);
    let page = json(&b);
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"][0]["name"], "r1");
    assert_eq!(page["items"][0]["paths"][0], "/users/*");

    let page = json(&call(a, "GET", "/routes?offset=1&limit=1").await.1);
    assert_eq!(
        (
            page["total"].as_u64(),
            page["items"].as_array().unwrap().len()
        ),
        (Some(3), 1)
    );
    assert_eq!(page["items"][0]["name"], "r2");

    let page = json(&call(a, "GET", "/routes?service=orders").await.1);
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["name"], "r3");

    let (s, b) = call(a, "GET", "/routes?limit=0").await;
    assert_eq!(s, 400);
    assert_eq!(
        json(&b)["error"],
        "query argument limit: must be from 1 to 1000"
    );

    let (s, b) = call(a, "GET", "/services/orders").await;
    assert_eq!((s, json(&b)["upstream"].as_str()), (200, Some("u2")));
    let (s, b) = call(a, "GET", "/consumers/alice").await;
    assert_eq!((s, json(&b)["username"].as_str()), (200, Some("alice")));
    let (s, b) = call(a, "GET", "/upstreams/nope").await;
    assert_eq!(s, 404);
    assert_eq!(json(&b)["error"], "no upstream named \"nope\"");

    // Plugin instances are named by kind and scope.
    let page = json(&call(a, "GET", "/plugins?route=r1").await.1);
    assert_eq!(page["items"][0]["id"], "rate-limit:route=r1");
    let (s, b) = call(a, "GET", "/plugins/rate-limit:global").await;
    assert_eq!((s, json(&b)["config"]["limit"].as_u64()), (200, Some(100)));

    let whole = json(&call(a, "GET", "/config").await.1);
    assert_eq!(whole["routes"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn writes_are_refused_while_a_file_is_the_source_of_truth() {
    let (a, _) = start().await;
    for (m, p) in [
        ("POST", "/routes"),
        ("PUT", "/routes/r1"),
        ("DELETE", "/routes/r1"),
    ] {
        let (s, b) = call(a, m, p).await;
        assert_eq!(s, 405, "{m} {p}");
        assert!(
            json(&b)["error"].as_str().unwrap().contains("read-only"),
            "{b}"
        );
    }
    let (s, b) = call(a, "GET", "/nothing/here").await;
    assert_eq!(
        (s, json(&b)["error"].as_str()),
        (404, Some("no such admin endpoint"))
    );
}

#[tokio::test]
async fn status_and_metrics_follow_reloads() {
    let (a, control) = start().await;
    let st = json(&call(a, "GET", "/status").await.1);
    assert_eq!(st["revision"], 1);
    assert_eq!(st["mode"], "file");
    assert_eq!(st["store"]["location"], "gateway.yaml");
    control.reloaded(true);
    control.reloaded(false);
    assert_eq!(json(&call(a, "GET", "/status").await.1)["revision"], 2);
    let (s, m) = call(a, "GET", "/metrics").await;
    assert_eq!(s, 200);
    assert!(m.contains("gatehouse_config_revision 2"), "{m}");
    assert!(
        m.contains("gatehouse_config_reloads_total{result=\"applied\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("gatehouse_config_reloads_total{result=\"rejected\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn the_openapi_spec_describes_every_endpoint_and_the_ui_is_served() {
    let (a, _) = start().await;
    let (s, b) = call(a, "GET", "/openapi.json").await;
    assert_eq!(s, 200);
    let spec = json(&b);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/status",
        "/metrics",
        "/config",
        "/routes",
        "/routes/{id}",
        "/plugins/{id}",
    ] {
        assert!(spec["paths"][p]["get"].is_object(), "{p} missing");
    }
    // Write bodies are the model's own schemas, not bare objects.
    assert_eq!(
        spec["paths"]["/routes"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            ["$ref"],
        "#/components/schemas/Route"
    );
    let route = &spec["components"]["schemas"]["Route"];
    assert_eq!(route["additionalProperties"], false);
    assert_eq!(route["required"], serde_json::json!(["name", "service"]));
    assert_eq!(
        spec["components"]["schemas"]["Timeouts"]["properties"]["connect"]["type"],
        "string"
    );
    let (s, b) = call(a, "GET", "/docs/").await;
    assert_eq!(s, 200);
    assert!(b.contains("swagger"), "{b}");
}
