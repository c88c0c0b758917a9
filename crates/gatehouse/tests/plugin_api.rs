//! The plugin interface through the real gateway: a test-only plugin kind, registered in the
//! gateway's registry the way any out-of-tree kind would be, uses every facility plugin-api
//! offers (credentials and `authenticate`, then a consumer-scoped rate limit; state across
//! phases; the request body with a cap; a response body rewrite; upstream choice; a
//! sub-request to a local server) and every one is checked from the client's side.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use gatehouse_plugin_api::{
    json_response, BodyCtx, BuildEnv, Credential, FieldError, Flow, Later, LogCtx, Needs, Plugin,
    PluginKind, RequestCtx, ResponseCtx, SubLimits, TypedKind, UpstreamRef,
};
use http::{HeaderMap, HeaderValue, StatusCode};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `probe` kind: authenticates by `x-api-key` against its consumers' credentials, asks a
/// verifier for a stamp, may send the request to another upstream, and rewrites the answer.
struct ProbeKind;

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ProbeConfig {
    /// Where the verifier answers (a URL: a sub-request goes there).
    verify_url: String,
    /// The upstream `x-pick: alt` sends the request to.
    alt_upstream: String,
    /// The most request-body bytes read before `access`.
    body_cap: u64,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ProbeCredential {
    key: String,
}

/// Every `log` line the probes wrote, across tests.
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl TypedKind for ProbeKind {
    const NAME: &'static str = "probe";
    const PRIORITY: i32 = 1500;
    const CONSUMER_SCOPABLE: bool = false;
    type Config = ProbeConfig;

    fn build(&self, c: ProbeConfig, env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        let mut errs = Vec::new();
        let verify = env
            .url(&c.verify_url)
            .map_err(|e| errs.push(FieldError::new("verify_url", e)));
        let alt = env
            .upstream(&c.alt_upstream)
            .map_err(|e| errs.push(FieldError::new("alt_upstream", e)));
        match (verify, alt) {
            (Ok(verify), Ok(alt)) if errs.is_empty() => Ok(Arc::new(Probe {
                verify,
                alt,
                body_cap: c.body_cap,
            })),
            _ => Err(errs),
        }
    }

    fn credential_schema(&self) -> Option<serde_json::Value> {
        Some(gatehouse_plugin_api::schema_of::<ProbeCredential>())
    }

    fn credential(&self, config: &serde_json::Value) -> Result<Credential, Vec<FieldError>> {
        let c: ProbeCredential = gatehouse_plugin_api::parse_config(config)?;
        let label = format!("key-{}", c.key.len());
        Ok(Credential::new(c.key, ()).labelled(label))
    }
}

struct Probe {
    verify: UpstreamRef,
    alt: UpstreamRef,
    body_cap: u64,
}

/// What one request's probe keeps between its phases.
#[derive(Clone, Default)]
struct Seen {
    user: String,
    body_len: usize,
    /// The response body, held back by the filter until its end.
    held: Vec<u8>,
}

impl Plugin for Probe {
    fn needs(&self) -> Needs {
        Needs {
            log: true,
            request_head: true,
            request_body: Some(self.body_cap),
            response_body: true,
            upstream_request: true,
            ..Needs::default()
        }
    }

    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let key = ctx
            .parts
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let Some(found) = ctx.consumers().find("probe", key) else {
            return Flow::Respond(json_response(
                StatusCode::UNAUTHORIZED,
                "no valid x-api-key",
                HeaderMap::new(),
            ));
        };
        let consumer = found.consumer.clone();
        ctx.authenticate(&consumer);
        ctx.state.insert(Seen {
            user: consumer.username.to_string(),
            body_len: ctx.body.map_or(0, Bytes::len),
            held: Vec::new(),
        });
        if ctx.parts.headers.get("x-pick").is_some_and(|v| v == "alt") {
            ctx.set_upstream(&self.alt);
        }
        let verify = ctx.subrequest(
            &self.verify,
            http::Request::get(self.verify.path())
                .body(Bytes::new())
                .unwrap(),
            SubLimits {
                timeout: Duration::from_secs(2),
                max_body: 4096,
            },
        );
        Flow::Wait(Box::pin(async move {
            let stamp = match verify.await {
                Ok(r) if r.status() == StatusCode::OK => {
                    let json: serde_json::Value =
                        serde_json::from_slice(r.body()).unwrap_or_default();
                    json["origin"].as_str().unwrap_or("?").to_owned()
                }
                _ => {
                    return Err(json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "verifier unavailable",
                        HeaderMap::new(),
                    ))
                }
            };
            let mut headers = HeaderMap::new();
            headers.insert("x-verified-by", HeaderValue::from_str(&stamp).unwrap());
            Ok(Later::from(headers))
        }))
    }

    fn upstream_request(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let len = ctx.state.get::<Seen>().map_or(0, |s| s.body_len);
        ctx.parts
            .headers
            .insert("x-body-len", HeaderValue::from(len));
        Flow::Continue
    }

    fn response(&self, ctx: &mut ResponseCtx<'_>) {
        let user = ctx.state.get::<Seen>().map(|s| s.user.clone());
        if let Some(user) = user {
            ctx.headers
                .insert("x-probe-user", HeaderValue::from_str(&user).unwrap());
        }
        if let Some(head) = ctx.request {
            let m = HeaderValue::from_str(head.method.as_str()).unwrap();
            ctx.headers.insert("x-probe-method", m);
        }
    }

    fn response_body(&self, ctx: &mut BodyCtx<'_>, chunk: &mut Bytes, end: bool) {
        let Some(seen) = ctx.state.get_mut::<Seen>() else {
            return;
        };
        seen.held.extend_from_slice(chunk);
        *chunk = Bytes::new();
        if end {
            let inner = String::from_utf8_lossy(&seen.held);
            *chunk = Bytes::from(format!("{{\"probed\":true,\"upstream\":{inner}}}"));
        }
    }

    fn log(&self, ctx: &LogCtx<'_>) {
        let seen = ctx.state.get::<Seen>().cloned().unwrap_or_default();
        let who = ctx.consumer.map_or("-", |c| &c.username);
        LOG.lock().unwrap().push(format!(
            "{} {who} {} {}",
            ctx.route,
            seen.body_len,
            ctx.status.as_u16()
        ));
    }
}

static PROBE: ProbeKind = ProbeKind;

fn registry() -> &'static gatehouse_plugin_api::Registry {
    gatehouse_plugins::registry().clone().with(&PROBE).leak()
}

fn config(main: &Origin, alt: &Origin, verifier: &Origin, extra: &str) -> String {
    format!(
        r#"upstreams:
  - {{name: main, targets: [{{address: "{}"}}]}}
  - {{name: alt, targets: [{{address: "{}"}}]}}
services: [{{name: svc, upstream: main}}]
routes: [{{name: api, paths: ["/api/*"], service: svc}}]
consumers:
  - {{username: alice, credentials: [{{type: probe, key: alice-secret}}]}}
  - {{username: bob, credentials: [{{type: probe, key: bob-secret}}]}}
plugins:
  - name: probe
    route: api
    config: {{verify_url: "http://{}/verify", alt_upstream: alt, body_cap: 64}}
  - name: rate-limit
    consumer: alice
    config: {{limit: 2, window: 1m, key: [consumer]}}
{extra}"#,
        main.addr, alt.addr, verifier.addr
    )
}

fn start(yaml: &str) -> Result<Gateway, gatehouse_proxy::StartError> {
    let config = gatehouse_model::parse_yaml(yaml).unwrap();
    let opts = StartOptions {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 2,
        node_index: 0,
        registry: registry(),
    };
    Gateway::start(config, &opts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_plugin_uses_every_facility_through_the_gateway() {
    let (main, alt, verifier) = (
        Origin::start("main").await,
        Origin::start("alt").await,
        Origin::start("verifier").await,
    );
    let g = start(&config(&main, &alt, &verifier, "")).unwrap();
    let a = addr(&g);

    // No credential: the probe answers, in the gateway's error shape.
    let r = get(a, "/api/x").await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "no valid x-api-key");
    assert!(r.json()["request_id"].is_string());

    // Bob: authenticated, his body read (and still forwarded), the verifier asked, the state
    // carried from access to upstream_request, response and log, the body rewritten.
    let mut c = Client::connect(a).await;
    let body: &'static [u8] = "x".repeat(40).leak().as_bytes();
    let r = c
        .request("POST", "/api/one", &[("x-api-key", "bob-secret")], body)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-probe-user"], "bob");
    assert_eq!(r.headers["x-probe-method"], "POST");
    assert_eq!(r.headers["x-verified-by"], "verifier");
    assert!(
        !r.headers.contains_key("content-length"),
        "the length changed"
    );
    let outer = r.json();
    assert_eq!(outer["probed"], true);
    let up = &outer["upstream"];
    assert_eq!(up["origin"], "main");
    assert_eq!(
        up["body_bytes"], 40,
        "the body read before access still went up"
    );
    assert_eq!(
        up["headers"]["x-body-len"], "40",
        "state reached upstream_request"
    );

    // x-pick: alt sends the request to the upstream the plugin chose.
    let r = c
        .request(
            "GET",
            "/api/two",
            &[("x-api-key", "bob-secret"), ("x-pick", "alt")],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(r.json()["upstream"]["origin"], "alt");

    // A body over the plugin's cap is refused before access runs.
    let r = c
        .request(
            "POST",
            "/api/big",
            &[("x-api-key", "bob-secret")],
            "y".repeat(65).leak().as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());

    // Alice is authenticated, then her consumer-scoped rate limit (2 a minute) applies;
    // Bob, with no limit of his own, is not limited.
    for i in 0..2 {
        let r = c
            .request("GET", "/api/a", &[("x-api-key", "alice-secret")], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "alice request {i}");
    }
    let r = c
        .request("GET", "/api/a", &[("x-api-key", "alice-secret")], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 429, "alice's third request");
    for _ in 0..3 {
        let r = c
            .request("GET", "/api/b", &[("x-api-key", "bob-secret")], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }

    // The log phase saw the consumer, the state and the status.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = LOG.lock().unwrap().clone();
    assert!(log.contains(&"api bob 40 200".to_string()), "{log:?}");
    assert!(log.contains(&"api alice 0 429".to_string()), "{log:?}");

    // Without its verifier the probe says so (the sub-request fails, it answers 503); body
    // filters see the gateway's own answers too.
    let gone = closed_addr();
    let yaml = config(&main, &alt, &verifier, "").replace(
        &format!("http://{}/verify", verifier.addr),
        &format!("http://{gone}/verify"),
    );
    g.reload(gatehouse_model::parse_yaml(&yaml).unwrap())
        .unwrap();
    let r = get_with(a, "/api/x", &[("x-api-key", "bob-secret")]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["upstream"]["error"], "verifier unavailable");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_that_break_the_plugin_contracts_are_refused_with_their_paths() {
    let (main, alt, verifier) = (
        Origin::start("main").await,
        Origin::start("alt").await,
        Origin::start("verifier").await,
    );
    let errors = |extra: &str, edit: &dyn Fn(String) -> String| -> Vec<String> {
        let yaml = edit(config(&main, &alt, &verifier, extra));
        match start(&yaml) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(gatehouse_proxy::StartError::Config(errs)) => {
                errs.iter().map(|e| e.to_string()).collect()
            }
            Err(e) => panic!("{e}"),
        }
    };
    let keep = |y: String| y;
    // An authentication plugin cannot be scoped to a consumer (none is known when it runs).
    let e = errors(
        "  - {name: probe, consumer: bob, config: {verify_url: \"http://127.0.0.1:1/\", alt_upstream: alt, body_cap: 1}}\n",
        &keep,
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("plugins[2].consumer: a probe instance cannot be scoped to a consumer"),
        "{e:?}"
    );
    // The upstream a plugin names must exist; a URL must be one it can call.
    let e = errors("", &|y| {
        y.replace("alt_upstream: alt", "alt_upstream: nope")
            .replace("\"http://", "\"https://")
    });
    assert_eq!(
        e,
        [
            "plugins[0] (probe).config.alt_upstream: no upstream named \"nope\"".to_string(),
            format!(
                "plugins[0] (probe).config.verify_url: \"https://{}/verify\": only http:// URLs can be called (not https://)",
                verifier.addr
            ),
        ]
    );
    // Credentials are checked by the kind that owns them, and must be unique per kind.
    let e = errors("", &|y| {
        y.replace(
            "[{type: probe, key: bob-secret}]",
            "[{type: probe, key: alice-secret}, {type: probe, nope: 1}, {type: rate-limit}]",
        )
    });
    assert_eq!(
        e,
        [
            "consumers[1].credentials[0]: consumer \"alice\" already has a probe credential with this id; ids must be unique per kind",
            "consumers[1].credentials[1].nope: unknown field `nope`, expected `key`",
            "consumers[1].credentials[2].type: rate-limit takes no consumer credentials",
        ]
    );
    // A kind the registry does not have is unknown, here and in credentials.
    let opts = StartOptions {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 1,
        node_index: 0,
        registry: gatehouse_plugins::registry(),
    };
    let yaml = config(&main, &alt, &verifier, "");
    let Err(gatehouse_proxy::StartError::Config(errs)) =
        Gateway::start(gatehouse_model::parse_yaml(&yaml).unwrap(), &opts)
    else {
        panic!("the stock registry has no probe kind");
    };
    let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(
        errs.contains(&"plugins[0].name: unknown plugin \"probe\"".to_string()),
        "{errs:?}"
    );
    assert!(
        errs.contains(&"consumers[0].credentials[0].type: unknown plugin \"probe\"".to_string()),
        "{errs:?}"
    );
    let _ = PluginKind::name(&PROBE);
}
