//! The real `gatehouse` binary: `validate` exit codes and messages, `run` with hot reload on
//! file change and SIGHUP, a rejected bad edit, and SIGTERM drain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/running.rs"]
mod running;
#[path = "common/tls_kit.rs"]
mod tls_kit;

use common::*;
use running::{Running, BIN};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gatehouse-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn validate(yaml: &str) -> (i32, String) {
    validate_with(yaml, &[])
}

fn validate_with(yaml: &str, args: &[&str]) -> (i32, String) {
    let dir = temp_dir("validate");
    let file = dir.join("gateway.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["validate", "-c"])
        .arg(&file)
        .args(args)
        .env_remove("GATEHOUSE_REDIS")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn validate_reports_every_problem_as_path_and_message() {
    let (code, out) = validate(
        r#"
upstreams:
  - {name: u, targets: [{address: "127.0.0.1:9000"}]}
services:
  - {name: s, upstream: u}
routes:
  - {name: a, service: users}
  - {name: b, service: s, paths: ["~^/(unclosed"]}
  - {name: b, service: s, colour: red}
"#,
    );
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    // Each line places the problem in the file.
    assert_eq!(
        lines[0],
        "routes[0].service (line 7 column 24): no service named \"users\""
    );
    assert!(
        lines[1].starts_with(
            "routes[1].paths[0] (line 8 column 35): regex does not compile: regex parse error:"
        ),
        "{out}"
    );
    assert!(
        lines[2].starts_with("routes[2].colour (line 9 column 35): unknown field `colour`"),
        "{out}"
    );
    assert_eq!(lines.len(), 3, "{out}");
}

#[test]
fn validate_accepts_the_examples() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = Command::new(BIN)
                .args(["validate", "-c"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stdout)
            );
            n += 1;
        }
    }
    assert!(n > 0, "no examples found");
    let (code, out) = validate("routes: [\n");
    assert_eq!(code, 1);
    assert!(out.starts_with("line "), "{out}");
}

fn config_for(origin: std::net::SocketAddr, path: &str) -> String {
    format!(
        "upstreams:\n  - {{name: u, targets: [{{address: \"{origin}\"}}]}}\nservices:\n  - {{name: s, upstream: u}}\nroutes:\n  - {{name: r, paths: [\"{path}\"], service: s}}\n"
    )
}

/// [`config_for`] `/*`, with `node` settings and a JSON access log written to `log`.
fn config_with_log(origin: std::net::SocketAddr, log: &Path, node: &str) -> String {
    let observability = format!(
        "observability:\n  access_log: {{path: \"{}\"}}\n",
        log.display()
    );
    config_for(origin, "/*") + node + &observability
}

/// Polls until `path` answers `status`, returning how long that took.
async fn until_status(addr: std::net::SocketAddr, path: &str, status: u16) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if get(addr, path).await.status == status {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{path} never answered {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reloads_on_edit_and_sighup_rejects_bad_edits_and_drains_on_sigterm() {
    let origin = Origin::start("o").await;
    let dir = temp_dir("run");
    let file = dir.join("gateway.yaml");
    std::fs::write(&file, config_for(origin.addr, "/one")).unwrap();
    let (mut gw, addr) = Running::start(&file);
    assert_eq!(get(addr, "/one").await.status, 200);
    assert_eq!(get(addr, "/two").await.status, 404);

    // An edit is live within a second.
    std::fs::write(&file, config_for(origin.addr, "/two")).unwrap();
    let took = until_status(addr, "/two", 200).await;
    assert!(took < Duration::from_secs(1), "reload took {took:?}");
    gw.wait_for("configuration reloaded");
    assert_eq!(get(addr, "/one").await.status, 404);

    // An editor-style replace (write elsewhere, rename over) is seen too.
    let tmp = dir.join(".gateway.yaml.swp");
    std::fs::write(&tmp, config_for(origin.addr, "/three")).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    until_status(addr, "/three", 200).await;

    // A bad edit is refused with the field named, and the old config keeps serving.
    std::fs::write(
        &file,
        config_for(origin.addr, "/three").replace("service: s}", "service: nope}"),
    )
    .unwrap();
    let line = gw.wait_for("configuration rejected");
    assert!(
        line.contains("routes[0].service (line 6 column 43): no service named \"nope\""),
        "{line}"
    );
    assert_eq!(get(addr, "/three").await.status, 200);

    // SIGHUP re-reads the file (fixed meanwhile without the watcher noticing is not needed:
    // write the good config, then signal; either path must apply it).
    std::fs::write(&file, config_for(origin.addr, "/four")).unwrap();
    gw.signal("-HUP");
    until_status(addr, "/four", 200).await;

    // SIGTERM: an in-flight request finishes, then the process exits 0.
    std::fs::write(&file, config_for(origin.addr, "/delay/*")).unwrap();
    until_status(addr, "/delay/1", 200).await;
    let slow = tokio::spawn(async move { get(addr, "/delay/700").await.status });
    tokio::time::sleep(Duration::from_millis(150)).await;
    gw.signal("-TERM");
    assert_eq!(slow.await.unwrap(), 200, "in-flight request was cut");
    let status = gw.exited().await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_request_has_its_access_log_line_when_the_process_exits() {
    let origin = Origin::start("a").await;
    let dir = temp_dir("log-at-exit");
    let (file, log) = (dir.join("gateway.yaml"), dir.join("access.log"));
    std::fs::write(&file, config_with_log(origin.addr, &log, "")).unwrap();
    let (mut gw, addr) = Running::start(&file);
    // A burst on 10 connections, then SIGTERM at once: before, the lines queued since the
    // writer's last period (it drains every 20 ms) were lost with the process.
    let burst: Vec<_> = (0..10)
        .map(|c| {
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                for i in 0..20 {
                    assert_eq!(client.get(&format!("/n/{c}/{i}")).await.status, 200);
                }
            })
        })
        .collect();
    for b in burst {
        b.await.unwrap();
    }
    gw.signal("-TERM");
    gw.exited().await;
    let text = std::fs::read_to_string(&log).unwrap();
    let paths: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].to_string())
        .collect();
    assert_eq!(paths.len(), 200, "lines lost at exit");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_has_an_admin_api_the_readmes_next_commands_can_reach() {
    let free = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (listen, admin) = (free(), free());
    let child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .env("GATEHOUSE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut gw = Running::watching(child);
    gw.wait_for("gatehouse listening");
    assert_eq!(get(listen, "/echo/hi").await.status, 200);
    // Before: nothing listened here, so `curl .../status` and `config export` failed.
    let status = get(admin, "/status").await;
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["mode"], "file");
    let export = Command::new(BIN)
        .args(["config", "export", "--admin", &format!("http://{admin}")])
        .output()
        .unwrap();
    assert!(export.status.success(), "{export:?}");
    assert!(String::from_utf8_lossy(&export.stdout).contains("name: echo"));
    gw.signal("-TERM");
    let _ = gw.child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_an_invalid_file_at_start() {
    let dir = temp_dir("bad-start");
    let file = dir.join("gateway.yaml");
    std::fs::write(&file, "routes:\n  - {name: r, service: missing}\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[0].service (line 2 column 24): no service named \"missing\""),
        "{err}"
    );
}

/// One route `a` to service `s`, then the `plugins:` key for a test to fill.
const ROUTE_A: &str = r#"
upstreams:
  - {name: u, targets: [{address: "127.0.0.1:9000"}]}
services:
  - {name: s, upstream: u}
routes:
  - {name: a, service: s}
plugins:
"#;

#[test]
fn validate_names_the_bad_field_of_a_plugin_config() {
    let (code, out) = validate(&format!(
        "{ROUTE_A}{}",
        r#"
  - {name: rate-limit, route: a, config: {limit: 10}}
  - {name: rate-limit, config: {limit: 0, window: 1s}}
  - {name: rate-limit, service: s, config: {limit: 5, algorithm: magic}}
"#
    ));
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "plugins[1] (rate-limit).config.limit (line 11 column 40): must be > 0"
    );
    assert!(
        lines[1].starts_with(
            "plugins[2] (rate-limit).config.algorithm (line 12 column 66): unknown variant `magic`"
        ),
        "{out}"
    );
    assert_eq!(lines.len(), 2, "{out}");
}

#[test]
fn validate_checks_the_redis_a_redis_policy_needs_without_dialling_it() {
    let yaml = &format!(
        "{ROUTE_A}{}",
        "  - {name: rate-limit, route: a, config: {limit: 10, policy: redis}}\n"
    );
    let (code, out) = validate(yaml);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        out.trim(),
        "plugins[0] (rate-limit).config.policy (line 9 column 62): policy redis needs the node's Redis address: \
         set `redis:` in the file or run with --redis URL"
    );
    // Nothing listens on port 1: valid all the same, since validate does not connect.
    let (code, out) = validate_with(yaml, &["--redis", "redis://127.0.0.1:1"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = validate(&format!("redis: http://127.0.0.1:6379\n{yaml}"));
    assert_eq!(code, 1, "{out}");
    // The bad address first (the root cause), then the plugin that needs it.
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("redis (line 1 column 8): not a Redis address"),
        "{out}"
    );
    assert!(lines[0].contains("expected redis://"), "{out}");
    assert!(
        lines[1].starts_with("plugins[0] (rate-limit).config.policy (line 10 column 62): "),
        "{out}"
    );
}

#[test]
fn plugins_lists_kinds_and_prints_schemas() {
    let out = Command::new(BIN).arg("plugins").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("rate-limit"));
    let out = Command::new(BIN)
        .args(["plugins", "schema", "rate-limit"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["required"], serde_json::json!(["limit"]));
    assert!(schema["properties"]["window"].is_object());
    let out = Command::new(BIN)
        .args(["plugins", "schema", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown plugin \"nope\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_shed_keeps_critical_routes_serving_on_an_overloaded_one_core_gateway() {
    let o = Origin::start("a").await;
    let dir = temp_dir("shed");
    let file = dir.join("gateway.yaml");
    let yaml = upstream_yaml(&[o.addr], "")
        + "routes:
  - {name: checkout, paths: [\"/pay/*\"], service: svc, strip_prefix: true, priority_class: critical}
  - {name: feed, paths: [\"/feed/*\"], service: svc, strip_prefix: true, priority_class: sheddable}
plugins:
  - name: adaptive-shed
    config: {cpu_threshold: 0.6}
";
    std::fs::write(&file, yaml).unwrap();
    let (_gw, addr) = Running::start_pinned(&file, "0");

    // Far more than one core can carry: 96 connections on the sheddable route, 8 on the
    // critical one, each sending back to back for 4 s.
    let until = Instant::now() + Duration::from_secs(4);
    let run = |path: &'static str, clients: usize| {
        (0..clients)
            .map(move |_| {
                tokio::spawn(async move {
                    let mut c = Client::connect(addr).await;
                    let mut seen = Vec::new();
                    while Instant::now() < until {
                        let t = Instant::now();
                        let status = match c.request("GET", path, &[], b"").await {
                            Ok(r) => {
                                if r.status == 503 {
                                    assert_eq!(r.headers["retry-after"], "1");
                                }
                                r.status
                            }
                            Err(_) => 0,
                        };
                        seen.push((status, t.elapsed()));
                    }
                    seen
                })
            })
            .collect::<Vec<_>>()
    };
    let (feed, pay) = (run("/feed/delay/5/x", 96), run("/pay/delay/5/x", 8));
    let mut results = Vec::new();
    for tasks in [feed, pay] {
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        results.push(all);
    }
    let summary = |v: &[(u16, Duration)]| {
        let ok = v.iter().filter(|(s, _)| *s == 200).count();
        let shed = v.iter().filter(|(s, _)| *s == 503).count();
        let mut lat: Vec<Duration> = v.iter().map(|(_, d)| *d).collect();
        lat.sort();
        let p99 = lat.get(lat.len() * 99 / 100).copied().unwrap_or_default();
        (v.len(), ok, shed, ok as f64 / v.len().max(1) as f64, p99)
    };
    let (feed, pay) = (summary(&results[0]), summary(&results[1]));
    println!("sheddable (sent, ok, shed, ok-rate, p99): {feed:?}\ncritical: {pay:?}");
    for (v, name) in [(&results[0], "sheddable"), (&results[1], "critical")] {
        assert!(
            v.iter().all(|(s, _)| *s == 200 || *s == 503),
            "{name}: only 200 and 503 expected"
        );
    }
    assert!(feed.2 > 0, "the sheddable route was shed: {feed:?}");
    assert!(pay.3 >= 0.95, "critical success rate {:.3}", pay.3);
    assert!(
        pay.3 > feed.3,
        "critical {:.3} vs sheddable {:.3}",
        pay.3,
        feed.3
    );
    assert!(
        pay.4 < Duration::from_millis(500),
        "critical p99 {:?}",
        pay.4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_serves_the_running_config_and_counts_reloads() {
    let o = Origin::start("a").await;
    let dir = temp_dir("admin");
    let file = dir.join("gateway.yaml");
    std::fs::write(&file, config_for(o.addr, "/one/*")).unwrap();
    let (mut gw, data) = Running::start(&file);
    let admin = gw.admin_addr();
    let status = get(admin, "/status").await.json();
    assert_eq!(status["revision"], 1);
    assert_eq!(status["store"]["kind"], "file");

    // The data plane's metrics are on the admin address, and the admin issues debug tokens
    // that get a request's decision trace back.
    assert_eq!(get(data, "/one/x").await.status, 200);
    let token = Client::connect(admin)
        .await
        .send("POST", "/debug/tokens", r#"{"ttl": "2m"}"#.into())
        .await;
    assert_eq!(token.status, 201, "{}", token.text());
    assert_eq!(token.json()["header"], "x-gatehouse-debug");
    assert_eq!(token.json()["expires_in_seconds"], 120);
    let secret = token.json()["token"].as_str().unwrap().to_owned();
    let r = get_with(data, "/one/y", &[("x-gatehouse-debug", &secret)]).await;
    let d: serde_json::Value =
        serde_json::from_slice(r.headers["x-gatehouse-decision"].as_bytes()).unwrap();
    assert_eq!(d["plan"]["route"]["name"], "r");
    let bad = Client::connect(admin)
        .await
        .send("POST", "/debug/tokens", r#"{"ttl": "soon"}"#.into())
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    let array = Client::connect(admin)
        .await
        .send("POST", "/debug/tokens", "[]".into())
        .await;
    assert_eq!(array.status, 400, "{}", array.text());
    let metrics = get(admin, "/metrics").await.text();
    let has = |line: &str| metrics.lines().any(|l| l == line);
    assert!(
        has("gatehouse_http_requests_total{route=\"r\",service=\"s\",method=\"GET\",class=\"2xx\"} 2"),
        "{metrics}"
    );
    assert!(has("gatehouse_decision_traces_total 1"), "{metrics}");

    // A valid edit is a new revision, visible in the entities; a bad one is counted and
    // changes nothing.
    std::fs::write(&file, config_for(o.addr, "/two/*")).unwrap();
    gw.wait_for("configuration reloaded");
    assert_eq!(get(admin, "/status").await.json()["revision"], 2);
    let routes = get(admin, "/routes").await.json();
    assert_eq!(routes["items"][0]["paths"][0], "/two/*");
    std::fs::write(&file, "routes: [{name: r}]\n").unwrap();
    gw.wait_for("configuration rejected");
    let metrics = get(admin, "/metrics").await.text();
    assert!(
        metrics.contains("gatehouse_config_reloads_total{result=\"rejected\"} 1"),
        "{metrics}"
    );
    assert_eq!(get(admin, "/status").await.json()["revision"], 2);
    // Read-only while the file is the source of truth.
    let r = Client::connect(admin)
        .await
        .request("DELETE", "/routes/r", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 405);
}

#[test]
fn an_admin_api_off_loopback_is_refused_until_tokens_exist() {
    let dir = temp_dir("admin-open");
    let file = dir.join("gateway.yaml");
    std::fs::write(&file, "").unwrap();
    let out = Command::new(BIN)
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "0.0.0.0:0",
            "-c",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("non-loopback address needs admin tokens"),
        "{err}"
    );
}

/// Waits (up to 3 s) until the node in `data` has written its last-known-good snapshot of
/// `revision` to disk.
async fn wait_for_snapshot(data: &Path, revision: i64) {
    let snapshot = data.join("last-known-good.json");
    let want = format!("\"revision\":{revision}");
    let t = Instant::now();
    while !std::fs::read_to_string(&snapshot).is_ok_and(|s| s.contains(&want)) {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "no snapshot of revision {revision}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs schemathesis (PyPI; .ci/run installs it) on the admin API at `admin` with `args`.
fn schemathesis(admin: std::net::SocketAddr, dir: &Path, args: &[&str]) {
    let spec = format!("http://{admin}/openapi.json");
    let out = Command::new("schemathesis")
        .args(["run", &spec, "--max-examples", "40"])
        .args(args)
        .env("NO_COLOR", "1")
        // Its cache goes in the test's own directory, not the source tree.
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run schemathesis ({e}); install it: pip install schemathesis")
        });
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found faults:\n{report}");
    assert!(report.contains("passed"), "{report}");
}

/// The admin API's generated spec, fuzzed against the real binary: reads with every check
/// (responses match the spec, valid input is accepted, invalid rejected); writes, in store
/// mode, for server errors, responses that break the spec, and bodies that break the spec
/// but are accepted. (Not for acceptance of every body the schema allows: a route naming a
/// service that does not exist fits the schema and is rightly refused.)
#[test]
fn schemathesis_finds_no_fault_in_the_admin_api() {
    let dir = temp_dir("schemathesis");
    let file = dir.join("gateway.yaml");
    std::fs::write(
        &file,
        "upstreams: [{name: u, targets: [{address: \"127.0.0.1:9\"}]}]
services: [{name: s, upstream: u}]
routes: [{name: r, service: s}]
consumers: [{username: alice}]
plugins: [{name: rate-limit, route: r, config: {limit: 5}}]
",
    )
    .unwrap();
    let (gw, _) = Running::start(&file);
    schemathesis(
        gw.admin_addr(),
        &dir,
        &["--checks", "all", "--include-method", "GET"],
    );
    drop(gw);
    let (gw, _) = Running::start_store(&format!("sqlite://{}/st.db", dir.display()), &dir);
    schemathesis(
        gw.admin_addr(),
        &dir,
        &[
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,negative_data_rejection",
        ],
    );
}

#[test]
fn config_export_prints_the_running_config_as_a_file_that_runs() {
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/gateway.yaml"
    ))
    .unwrap();
    let dir = temp_dir("export");
    let file = dir.join("gateway.yaml");
    std::fs::write(&file, &source).unwrap();
    let (gw, _) = Running::start(&file);
    let out = Command::new(BIN)
        .args(["config", "export", "--admin"])
        .arg(format!("http://{}", gw.admin_addr()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported = String::from_utf8(out.stdout).unwrap();
    // The same config, entity for entity, and a file `validate` accepts.
    assert_eq!(
        gatehouse_model::parse_yaml(&exported).unwrap(),
        gatehouse_model::parse_yaml(&source).unwrap()
    );
    let (code, msg) = validate(&exported);
    assert_eq!(code, 0, "{msg}");
    // explain works against the running gateway's config too.
    let admin = format!("http://{}", gw.admin_addr());
    let (code, out) = explain(&["GET", "/api/carts/1", "--admin", &admin]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("route:    carts (priority 0)"), "{out}");

    let out = Command::new(BIN)
        .args(["config", "export", "--admin", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the admin API at 127.0.0.1:1"),
        "{err}"
    );
}

fn explain(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("explain")
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn explain_shows_route_params_plugins_in_order_and_the_upstream_path() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/gateway.yaml");
    let (code, out) = explain(&["GET", "http://gw.example.com/api/users/42?x=1", "-c", file]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("route:    user-by-id (priority 0)"), "{out}");
    assert!(out.contains("param:   id = \"42\""), "{out}");
    assert!(out.contains("sends:    GET /v2/users/42?x=1"), "{out}");
    assert!(
        out.contains("target:  127.0.0.1:9001 (weight 3, from config)"),
        "{out}"
    );
    let size = out.find("request-size-limit").expect(&out);
    let shed = out.find("adaptive-shed").expect(&out);
    assert!(size < shed, "priority order: {out}");

    // A header predicate picks the canary route; the service's rate limit runs there.
    let (_, out) = explain(&["GET", "/api/carts/7", "-H", "X-Canary: 1", "-c", file]);
    assert!(
        out.contains("route:    carts-canary (priority 10)"),
        "{out}"
    );
    assert!(out.contains("scope service=carts"), "{out}");

    let (code, out) = explain(&["GET", "/nowhere", "-c", file, "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["route"].is_null(), "{out}");

    let (code, out) = explain(&["GE T", "/", "-c", file]);
    assert_ne!(code, 0);
    assert!(out.contains("not an HTTP method"), "{out}");
}

/// Creates an upstream to `origin`, a service and a route `r` on `/app/*` through the admin
/// API at `admin`.
async fn create_app(admin: std::net::SocketAddr, origin: std::net::SocketAddr) {
    let mut c = Client::connect(admin).await;
    let r = c
        .send(
            "POST",
            "/upstreams",
            format!(r#"{{"name": "u", "targets": [{{"address": "{origin}"}}]}}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = c
        .send(
            "POST",
            "/services",
            r#"{"name": "s", "upstream": "u"}"#.into(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = c
        .send(
            "PUT",
            "/routes/r",
            r#"{"name": "r", "paths": ["/app/*"], "service": "s", "strip_prefix": true}"#.into(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_stored_hashed_and_secrets_are_never_read_back() {
    use base64::Engine;
    let o = Origin::start("a").await;
    let dir = temp_dir("creds");
    let (gw, addr) = Running::start_store(&format!("sqlite://{}/g.db", dir.display()), &dir);
    let admin = gw.admin_addr();
    create_app(admin, o.addr).await;
    let mut c = Client::connect(admin).await;
    let alice = r#"{"username": "alice", "groups": ["partners"], "credentials": [
        {"type": "key-auth", "key": "alice-key-1", "id": "k1"},
        {"type": "basic-auth", "username": "alice", "password": "correct horse"},
        {"type": "hmac-auth", "key_id": "alice", "secret": "alice-secret-0123456789"}]}"#;
    let r = c.send("POST", "/consumers", alice.into()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let shown = c
        .send("GET", "/consumers/alice", String::new())
        .await
        .json();
    let creds = &shown["credentials"];
    assert!(creds[0].get("key").is_none(), "{shown}");
    assert_eq!(
        creds[0]["key_hash"].as_str().unwrap().len(),
        71,
        "sha256: + 64 hex"
    );
    assert!(creds[1]["password_hash"]
        .as_str()
        .unwrap()
        .starts_with("$argon2id$"));
    assert!(creds[1].get("password").is_none());
    assert!(creds[2].get("secret").is_none(), "write-only: {shown}");
    let export = c.send("GET", "/config", String::new()).await.text();
    for secret in ["alice-key-1", "correct horse", "alice-secret-0123456789"] {
        assert!(!export.contains(secret), "{secret} in the export");
    }
    let audit = c.send("GET", "/audit", String::new()).await.text();
    assert!(!audit.contains("alice-secret-0123456789") && !audit.contains("correct horse"));
    let r = c
        .send(
            "POST",
            "/plugins",
            r#"{"name": "key-auth", "route": "r"}"#.into(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        get_with(addr, "/app/x", &[("apikey", "alice-key-1")])
            .await
            .status,
        200
    );
    // What was read, written back (a tag added): the stored secrets stay.
    let mut again = shown.clone();
    again["tags"] = serde_json::json!(["edited"]);
    let r = c.send("PUT", "/consumers/alice", again.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c
        .send(
            "POST",
            "/plugins",
            r#"{"name": "basic-auth", "route": "r"}"#.into(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let login = base64::engine::general_purpose::STANDARD.encode("alice:correct horse");
    let r = get_with(
        addr,
        "/app/x",
        &[("authorization", &format!("Basic {login}"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-consumer-username"], "alice");
    assert_eq!(
        get_with(addr, "/app/x", &[("apikey", "alice-key-1")])
            .await
            .status,
        200
    );
    let stored = c
        .send("GET", "/consumers/alice", String::new())
        .await
        .json();
    assert_eq!(stored["tags"][0], "edited");
    // A credential naming a kind that takes none is refused with its field.
    let r = c
        .send(
            "PUT",
            "/consumers/bob",
            r#"{"username": "bob", "credentials": [{"type": "rate-limit"}]}"#.into(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text()
            .contains("rate-limit takes no consumer credentials"),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_through_the_gateway_example_lets_ops_in_and_no_one_else() {
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/admin-through-gateway.yaml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = std::fs::read_to_string(example)
        .unwrap()
        .replace("127.0.0.1:9180", &format!("127.0.0.1:{port}"));
    let dir = temp_dir("admin-through");
    let file = dir.join("gateway.yaml");
    std::fs::write(&file, yaml).unwrap();
    let admin = format!("127.0.0.1:{port}");
    let (_gw, addr) = Running::start_with_admin(
        Command::new(BIN),
        &["-c".as_ref(), file.as_os_str()],
        2,
        &admin,
    );
    let r = get_with(
        addr,
        "/admin/status",
        &[("x-api-key", "ops-alice-demo-key")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["mode"], "file");
    let r = get_with(addr, "/admin/status", &[("x-api-key", "crawler-demo-key")]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = get(addr, "/admin/status").await;
    assert_eq!(r.status, 401);
    let r = get(addr, "/admin/status?apikey=ops-alice-demo-key").await;
    assert_eq!(r.status, 401, "keys only in the header here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_take_a_json_merge_patch() {
    let o = Origin::start("a").await;
    let dir = temp_dir("patch");
    let (gw, _) = Running::start_store(&format!("sqlite://{}/g.db", dir.display()), &dir);
    let admin = gw.admin_addr();
    create_app(admin, o.addr).await;
    let mut c = Client::connect(admin).await;
    // PATCH, Kong-style: a JSON merge patch changes only what it names.
    let r = c
        .send("PATCH", "/routes/r", r#"{"preserve_host": true}"#.into())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let route = c.send("GET", "/routes/r", String::new()).await.json();
    assert_eq!(route["preserve_host"], true);
    assert_eq!(route["paths"][0], "/app/*", "the rest stays");
    let r = c
        .send("PATCH", "/routes/r", r#"{"name": "other"}"#.into())
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = c
        .send("PATCH", "/routes/r", r#"{"service": "nope"}"#.into())
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = c.send("PATCH", "/routes/none", "{}".into()).await;
    assert_eq!(r.status, 404);
    let r = c
        .send("PATCH", "/routes/r", r#"{"preserve_host": null}"#.into())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_mode_writes_through_the_admin_api_go_live_and_survive_a_restart() {
    let o = Origin::start("a").await;
    let dir = temp_dir("sqlite-store");
    let url = format!("sqlite://{}/data/gatehouse.db", dir.display());
    let (gw, addr) = Running::start_store(&url, &dir);
    let admin = gw.admin_addr();
    assert_eq!(get(addr, "/app/x").await.status, 404, "an empty store");
    create_app(admin, o.addr).await;
    let r = get(addr, "/app/x").await;
    assert_eq!((r.status, r.json()["path"].as_str()), (200, Some("/x")));

    let mut c = Client::connect(admin).await;
    // Invalid input: 400 naming the fields of the entity written; nothing changes.
    let r = c
        .send(
            "POST",
            "/routes",
            r#"{"name": "bad", "paths": ["~("], "service": "nope"}"#.into(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let fields = &r.json()["fields"];
    assert!(fields["routes.paths[0]"]
        .as_str()
        .unwrap()
        .starts_with("regex does not compile"));
    assert_eq!(fields["routes.service"], "no service named \"nope\"");
    let r = c
        .send(
            "POST",
            "/routes",
            r#"{"name": "r", "service": "s", "colour": 1}"#.into(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["fields"]["routes.colour"]
        .as_str()
        .unwrap()
        .contains("unknown field"));
    // What the spec says is an object must be one: serde alone would take a struct's fields
    // as an array.
    let r = c
        .send(
            "POST",
            "/routes",
            r#"["r2", [], [], [], [], [], [], "s"]"#.into(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["fields"]["routes"]
        .as_str()
        .unwrap()
        .contains("is not of type \"object\""));
    // Conflicts: a taken name, a delete that would leave a route dangling.
    let r = c
        .send("POST", "/routes", r#"{"name": "r", "service": "s"}"#.into())
        .await;
    assert_eq!(r.status, 409);
    let r = c.send("DELETE", "/services/s", String::new()).await;
    assert_eq!(r.status, 409);
    assert_eq!(
        r.json()["fields"]["routes[0].service"],
        "no service named \"s\""
    );
    // Before: "the change to service \"s\" does not validate".
    assert_eq!(
        r.json()["error"],
        "service \"s\" is still used by route \"r\""
    );
    // A method a path does not take says so, not that the API is read-only.
    let r = c.send("PATCH", "/status", String::new()).await;
    assert_eq!(r.status, 405);
    assert!(!r.text().contains("DB-less"), "{}", r.text());
    let status = get(admin, "/status").await.json();
    assert_eq!(
        (status["mode"].as_str(), status["revision"].as_u64()),
        (Some("store"), Some(3))
    );
    assert_eq!(status["store"]["kind"], "sqlite");

    // Targets one at a time, as Kong's /upstreams/{id}/targets: the new one takes traffic,
    // the removed one gets none, and each change is audited as an upstream update.
    let b = Origin::start("b").await;
    let r = c
        .send(
            "POST",
            "/upstreams/u/targets",
            format!(r#"{{"address": "{}"}}"#, b.addr),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["weight"], 1);
    let r = c
        .send(
            "POST",
            "/upstreams/u/targets",
            format!(r#"{{"address": "{}"}}"#, b.addr),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(get(addr, "/app/x").await.json()["origin"].to_string());
    }
    assert_eq!(seen.len(), 2, "both targets serve: {seen:?}");
    let r = c
        .send(
            "DELETE",
            &format!("/upstreams/u/targets/{}", o.addr),
            String::new(),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    for _ in 0..4 {
        assert_eq!(get(addr, "/app/x").await.json()["origin"], "b");
    }
    let r = c
        .send(
            "DELETE",
            &format!("/upstreams/u/targets/{}", b.addr),
            String::new(),
        )
        .await;
    assert_eq!(r.status, 409, "the last target stays: {}", r.text());
    let audit = get(admin, "/audit").await.json();
    assert_eq!(
        audit[0]["message"],
        format!("remove target \"{}\" from upstreams/u", o.addr)
    );
    // Back to one target on `a`, as the rest of the test expects.
    let r = c
        .send(
            "PUT",
            "/upstreams/u",
            format!(
                r#"{{"name": "u", "targets": [{{"address": "{}"}}]}}"#,
                o.addr
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A restart serves what the store holds.
    drop(gw);
    let (gw, addr) = Running::start_store(&url, &dir);
    assert_eq!(get(addr, "/app/y").await.status, 200);
    assert_eq!(get(gw.admin_addr(), "/status").await.json()["revision"], 6);
    let r = Client::connect(gw.admin_addr())
        .await
        .send("DELETE", "/routes/r", String::new())
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(get(addr, "/app/y").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_postgres_see_each_others_writes_within_a_second() {
    let o = Origin::start("a").await;
    let db = gatehouse_store::test_support::TempPg::create().await;
    let dir = temp_dir("two-nodes");
    let (a, a_addr) = Running::start_store(&db.url, &dir.join("a"));
    let (b, b_addr) = Running::start_store(&db.url, &dir.join("b"));
    create_app(a.admin_addr(), o.addr).await;
    assert_eq!(
        get(a_addr, "/app/x").await.status,
        200,
        "live on the writer at once"
    );
    let t = Instant::now();
    while get(b_addr, "/app/x").await.status != 200 {
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "node B never saw the change"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "node B served the change {:?} after node A committed it",
        t.elapsed()
    );
    let status = get(b.admin_addr(), "/status").await.json();
    assert_eq!(
        (
            status["revision"].as_u64(),
            status["store"]["kind"].as_str()
        ),
        (Some(3), Some("postgres"))
    );
    drop((a, b));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_audit_and_rollback_round_trip_in_store_mode() {
    let o = Origin::start("a").await;
    let dir = temp_dir("rollback");
    let (gw, addr) = Running::start_store(&format!("sqlite://{}/g.db", dir.display()), &dir);
    let admin = gw.admin_addr();
    create_app(admin, o.addr).await; // revisions 1-3
    let mut c = Client::connect(admin).await;
    let r = c.send("DELETE", "/routes/r", String::new()).await; // revision 4
    assert_eq!(r.status, 204);
    assert_eq!(get(addr, "/app/x").await.status, 404);

    // The audit log says who did what, with the entity before and after.
    let audit = get(admin, "/audit?entity=routes/r").await.json();
    let audit = audit.as_array().unwrap();
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(
        (audit[0]["action"].as_str(), audit[0]["id"].as_i64()),
        (Some("delete"), Some(4))
    );
    assert_eq!(audit[0]["before"]["paths"][0], "/app/*");
    assert!(audit[0]["after"].is_null());
    assert_eq!(audit[1]["author"], "admin-api");

    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["config"])
            .args(args)
            .args(["--admin", &format!("http://{admin}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let history = cli(&["history"]);
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 5, "{history}");
    assert!(
        lines[1].trim_start().starts_with("4 ") && lines[1].contains("delete"),
        "{history}"
    );
    assert!(lines[1].contains("routes/r"), "{history}");

    // Back to revision 3: the route is live again, as revision 5.
    let said = cli(&["rollback", "3"]);
    assert!(said.contains("live again as revision 5"), "{said}");
    assert_eq!(get(addr, "/app/x").await.status, 200);
    assert_eq!(get(admin, "/status").await.json()["revision"], 5);
    let r = Client::connect(admin)
        .await
        .send("POST", "/revisions/99/rollback", String::new())
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_store_is_down_at_start_serves_its_last_known_good_snapshot() {
    let o = Origin::start("a").await;
    let db = gatehouse_store::test_support::TempPg::create().await;
    let data = temp_dir("last-known-good");
    let (gw, _) = Running::start_store(&db.url, &data);
    create_app(gw.admin_addr(), o.addr).await;
    wait_for_snapshot(&data, 3).await;
    drop(gw);

    // The same database behind a port where nothing listens: unreachable at start.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead_url = db.url.replace(":5432/", &format!(":{dead}/"));
    assert_ne!(dead_url, db.url);
    let (gw, addr) = Running::start_store(&dead_url, &data);
    let r = get(addr, "/app/x").await;
    assert_eq!(
        (r.status, r.json()["path"].as_str()),
        (200, Some("/x")),
        "served from the snapshot"
    );
    let status = get(gw.admin_addr(), "/status").await.json();
    assert_eq!(status["store"]["from_snapshot"], true, "{status}");
    assert_eq!(status["store"]["healthy"], false, "{status}");
    assert_eq!(status["revision"], 3);
    // Writes need the store.
    let r = Client::connect(gw.admin_addr())
        .await
        .send("DELETE", "/routes/r", String::new())
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    drop(gw);
    db.drop_db().await;
}

/// `gatehouse admin-token NAME --role ROLE`: the secret, and the entry to store.
fn make_token(name: &str, role: &str) -> (String, String) {
    let out = Command::new(BIN)
        .args(["admin-token", name, "--role", role])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let secret = text
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    let entry = text.lines().last().unwrap().to_string();
    assert!(
        entry.starts_with(&format!("- {{name: {name}, role: {role}, sha256: ")),
        "{text}"
    );
    (secret, entry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tokens_gate_the_api_by_role_and_name_the_author() {
    let o = Origin::start("a").await;
    let dir = temp_dir("tokens");
    let (ops, ops_entry) = make_token("ops", "admin");
    let (ci, ci_entry) = make_token("ci", "viewer");
    let file = dir.join("tokens.yaml");
    std::fs::write(&file, format!("{ops_entry}\n{ci_entry}\n")).unwrap();
    assert!(
        !std::fs::read_to_string(&file).unwrap().contains(&ops),
        "only hashes are stored"
    );
    let url = format!("sqlite://{}/g.db", dir.display());
    let open = closed_addr();
    let open_arg = open.to_string();
    let (gw, _) = Running::start_store_with(
        &url,
        &dir,
        &[
            "--admin-tokens".as_ref(),
            file.as_os_str(),
            "--metrics".as_ref(),
            open_arg.as_ref(),
        ],
    );
    let admin = gw.admin_addr();
    let mut c = Client::connect(admin).await;

    // Load balancers and Prometheus need no token: /ready on the admin API, and /metrics
    // and /ready on the --metrics address, which serves nothing else.
    let r = get(admin, "/ready").await;
    assert_eq!(
        (r.status, r.json()["ready"].clone()),
        (200, true.into()),
        "{}",
        r.text()
    );
    assert_eq!(get(admin, "/metrics").await.status, 401);
    let m = get(open, "/metrics").await;
    assert_eq!(m.status, 200);
    assert!(m.text().contains("gatehouse_"), "{}", m.text());
    assert_eq!(get(open, "/ready").await.status, 200);
    assert_eq!(get(open, "/config").await.status, 404);

    let r = c.send_as(None, "GET", "/status", String::new()).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let r = c
        .send_as(Some("gh_not-a-token"), "GET", "/status", String::new())
        .await;
    assert_eq!(r.status, 401);
    let r = c.send_as(Some(&ci), "GET", "/status", String::new()).await;
    assert_eq!(r.status, 200);
    let body = format!(
        r#"{{"name": "u", "targets": [{{"address": "{}"}}]}}"#,
        o.addr
    );
    let r = c
        .send_as(Some(&ci), "POST", "/upstreams", body.clone())
        .await;
    assert_eq!(r.status, 403, "a viewer may not write");
    let r = c.send_as(Some(&ops), "POST", "/upstreams", body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let audit = c
        .send_as(Some(&ci), "GET", "/audit", String::new())
        .await
        .json();
    assert_eq!(audit[0]["author"], "ops", "{audit}");

    // The CLI: without a token it says what to set; with --token or GATEHOUSE_TOKEN it works.
    let url = format!("http://{admin}");
    let export = |extra: &[&str], env: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["config", "export", "--admin", &url]).args(extra);
        cmd.env_remove("GATEHOUSE_TOKEN");
        if let Some(t) = env {
            cmd.env("GATEHOUSE_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let out = export(&[], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no token was given: pass --token TOKEN or set GATEHOUSE_TOKEN"),
        "{err}"
    );
    assert!(export(&["--token", &ci], None).status.success());
    let out = export(&[], Some(&ci));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("name: u"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_edit_diff_apply_history_rollback_round_trip() {
    use std::io::Write;
    let o = Origin::start("a").await;
    let dir = temp_dir("round-trip");
    let (gw, addr) = Running::start_store(&format!("sqlite://{}/g.db", dir.display()), &dir);
    let admin = format!("http://{}", gw.admin_addr());
    create_app(gw.admin_addr(), o.addr).await; // revisions 1-3
    let config = |args: &[&str], stdin: &str| {
        let mut child = Command::new(BIN)
            .arg("config")
            .args(args)
            .args(["--admin", &admin])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Export, then edit: the route moves to /v2/*, a service is added.
    let (ok, exported, err) = config(&["export"], "");
    assert!(ok, "{err}");
    let edited = exported.replace("/app/*", "/v2/*");
    let mut cfg = gatehouse_model::parse_yaml(&edited).unwrap();
    let mut s2 = cfg.services[0].clone();
    s2.name = "s2".into();
    cfg.services.push(s2);
    let file = dir.join("edited.yaml");
    // JSON is YAML too.
    std::fs::write(&file, serde_json::to_string(&cfg).unwrap()).unwrap();

    let f = file.to_str().unwrap();
    let (ok, diff, err) = config(&["diff", "-f", f], "");
    assert!(ok, "{err}");
    assert!(diff.contains("+ services/s2"), "{diff}");
    assert!(
        diff.contains("~ routes/r\n    paths: [\"/app/*\"] → [\"/v2/*\"]"),
        "{diff}"
    );
    assert!(
        diff.contains("1 to create, 1 to update, 0 to delete"),
        "{diff}"
    );

    let (ok, out, err) = config(&["apply", "-f", f, "--yes"], "");
    assert!(ok, "{err}");
    assert!(out.contains("applied as revision 4"), "{out}");
    assert_eq!(get(addr, "/v2/x").await.status, 200);
    assert_eq!(get(addr, "/app/x").await.status, 404);
    let (_, history, _) = config(&["history"], "");
    assert!(
        history.lines().nth(1).unwrap().contains("apply"),
        "{history}"
    );

    // A file that empties the gateway: loud warning, and "n" keeps everything.
    let empty = dir.join("empty.yaml");
    std::fs::write(&empty, "routes: []\n").unwrap();
    let (ok, _, err) = config(&["apply", "-f", empty.to_str().unwrap()], "n\n");
    assert!(!ok);
    assert!(
        err.contains("WARNING: this change deletes or modifies 4 of 4"),
        "{err}"
    );
    assert!(err.contains("not applied"), "{err}");
    assert_eq!(get(addr, "/v2/x").await.status, 200);

    let (ok, out, err) = config(&["rollback", "3"], "");
    assert!(ok, "{err}");
    assert!(out.contains("live again as revision 5"), "{out}");
    assert_eq!(get(addr, "/app/x").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_postgres_never_stops_proxying_and_a_restart_without_it_serves_the_snapshot() {
    let o = Origin::start("a").await;
    let pg = gatehouse_store::test_support::PrivatePg::start();
    let data = temp_dir("pg-kill");
    let (gw, addr) = Running::start_store(&pg.url(), &data);
    create_app(gw.admin_addr(), o.addr).await;
    wait_for_snapshot(&data, 3).await;

    // PostgreSQL dies under a running node: every request is still served.
    pg.kill();
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1500) {
        assert_eq!(get(addr, "/app/x").await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = Client::connect(gw.admin_addr())
        .await
        .send("DELETE", "/routes/r", String::new())
        .await;
    assert_eq!(r.status, 503, "writes need the store: {}", r.text());

    // Restarted while PostgreSQL is still down: it serves its snapshot, and says so.
    drop(gw);
    let (gw, addr) = Running::start_store(&pg.url(), &data);
    assert_eq!(get(addr, "/app/x").await.status, 200);
    let status = get(gw.admin_addr(), "/status").await.json();
    assert_eq!(status["store"]["from_snapshot"], true, "{status}");

    // PostgreSQL is back: the node follows the store again.
    pg.resume();
    let t = Instant::now();
    loop {
        let status = get(gw.admin_addr(), "/status").await.json();
        if status["store"]["from_snapshot"] == false && status["store"]["healthy"] == true {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never reconnected: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = Client::connect(gw.admin_addr())
        .await
        .send("DELETE", "/routes/r", String::new())
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
}

/// `/upstreams/{id}/health` on the real binary: a target nobody listens on fails its TCP
/// probes and shows as unhealthy, the other stays healthy. Breakers show in `/status` and
/// `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_health_shows_what_the_active_checks_found() {
    let o = Origin::start("a").await;
    let dead = closed_addr();
    let dir = temp_dir("health");
    let file = dir.join("gateway.yaml");
    std::fs::write(
        &file,
        format!(
            "upstreams:
  - name: u
    targets: [{{address: \"{}\"}}, {{address: \"{dead}\"}}]
    health: {{active: {{type: tcp, interval: 100ms, unhealthy_threshold: 1}}}}
services: [{{name: s, upstream: u}}]
routes: [{{name: r, service: s, circuit_breaker: {{min_calls: 5}}, fallback: {{static: {{body: down}}}}}}]
",
            o.addr
        ),
    )
    .unwrap();
    let (gw, addr) = Running::start(&file);
    // The route's breaker, in /status and /metrics.
    let status = get(gw.admin_addr(), "/status").await.json();
    assert_eq!(
        status["circuit_breakers"],
        serde_json::json!([{"scope": "route", "name": "r", "state": "closed", "opened_total": 0}])
    );
    let metrics = get(gw.admin_addr(), "/metrics").await.text();
    assert!(
        metrics.contains("gatehouse_circuit_breaker_state{scope=\"route\",name=\"r\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_fallback_responses_total{route=\"r\",source=\"static\"} 0"),
        "{metrics}"
    );
    let mut states = serde_json::Value::Null;
    for _ in 0..60 {
        let h = get(gw.admin_addr(), "/upstreams/u/health").await.json();
        states = h["targets"].clone();
        if states[1]["state"] == "unhealthy" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(states[0]["address"], o.addr.to_string());
    assert_eq!(states[0]["state"], "healthy", "{states}");
    assert_eq!(states[1]["state"], "unhealthy", "{states}");
    // Every request now goes to the healthy target.
    for _ in 0..4 {
        assert_eq!(get(addr, "/").await.status, 200);
    }
    assert_eq!(
        get(gw.admin_addr(), "/upstreams/nope/health").await.status,
        404
    );
}

#[test]
fn validate_creates_no_access_log_and_still_names_a_missing_directory() {
    let dir = temp_dir("validate-log");
    let log = dir.join("access.log");
    let config = |path: &std::path::Path| {
        format!(
            "upstreams: [{{name: u, targets: [{{address: \"127.0.0.1:9000\"}}]}}]
services: [{{name: s, upstream: u}}]
routes: [{{name: r, service: s}}]
observability:
  access_log: {{path: \"{}\"}}
  tracing: {{endpoint: \"http://127.0.0.1:9/v1/traces\"}}
",
            path.display()
        )
    };
    let (code, out) = validate(&config(&log));
    assert_eq!(code, 0, "{out}");
    assert!(!log.exists(), "validate created the access log file");
    let missing = dir.join("no-such-dir").join("access.log");
    let (code, out) = validate(&config(&missing));
    assert_eq!(code, 1);
    assert!(
        out.starts_with("observability.access_log.path (line 5 column 22): cannot open ")
            && out.contains("No such file or directory"),
        "{out}"
    );
    assert!(!missing.parent().unwrap().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_is_logged_when_it_starts_failing_and_when_it_answers_again() {
    let dead = closed_addr();
    let dir = temp_dir("failing-target-log");
    let file = dir.join("gateway.yaml");
    std::fs::write(&file, config_for(dead, "/*")).unwrap();
    let (mut gw, addr) = Running::start(&file);
    for _ in 0..6 {
        assert_eq!(get(addr, "/x").await.status, 502);
    }
    let origin = Steered::start_on(dead, "back").await;
    assert_eq!(get(addr, "/x").await.status, 200);
    assert_eq!(get(addr, "/x").await.status, 200);
    gw.signal("-TERM");
    gw.wait_for("stopped");
    let count = |needle: &str| gw.seen.iter().filter(|l| l.contains(needle)).count();
    // Before: one WARN per failed attempt (6 requests, 2 attempts each).
    assert_eq!(count("upstream connect failed"), 1, "{:#?}", gw.seen);
    assert_eq!(count("target answers again"), 1, "{:#?}", gw.seen);
    drop(origin);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_at_the_drain_timeout_has_its_access_log_line() {
    let origin = Origin::start("a").await;
    let dir = temp_dir("log-cut-at-drain");
    let (file, log) = (dir.join("gateway.yaml"), dir.join("access.log"));
    let node = "node:\n  drain_timeout: 300ms\n";
    std::fs::write(&file, config_with_log(origin.addr, &log, node)).unwrap();
    let (mut gw, addr) = Running::start(&file);
    assert_eq!(get(addr, "/quick").await.status, 200);
    // Still waiting on the upstream's head when the drain ends.
    let slow = tokio::spawn(async move { get(addr, "/delay/5000").await.status });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal("-TERM");
    gw.exited().await;
    let _ = slow.await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let cut = &lines[1];
    assert_eq!(cut["path"], "/delay/5000", "{text}");
    assert_eq!(cut["status"], 499, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `/certificates` in the admin API: the key is write-only (never in a read, the export or
/// the audit log), a certificate written back as read keeps its key, a bad one is refused
/// with the field named and the stored config unchanged, and `/status` and `/metrics` tell
/// when each expires.
#[tokio::test]
async fn certificates_are_managed_through_the_admin_api_and_their_keys_never_read_back() {
    let ca = tls_kit::Ca::new("Admin test CA");
    let api = ca.server(&["api.example.test"]);
    let dir = temp_dir("certs");
    let (gw, _) = Running::start_store(&format!("sqlite://{}/g.db", dir.display()), &dir);
    let admin = gw.admin_addr();
    let mut c = Client::connect(admin).await;
    let body = serde_json::json!({"name": "api", "cert": api.cert, "key": api.key});
    let r = c.send("POST", "/certificates", body.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let key_line = api.key.lines().nth(1).unwrap().to_owned();
    let shown = c.send("GET", "/certificates/api", String::new()).await;
    assert_eq!(shown.status, 200);
    assert!(shown.json().get("key").is_none(), "{}", shown.text());
    assert_eq!(shown.json()["cert"], api.cert.as_str());
    for path in ["/certificates", "/config", "/audit"] {
        let text = c.send("GET", path, String::new()).await.text();
        assert!(!text.contains(&key_line), "the key is in {path}");
    }
    // Written back as read (with SNIs added): the key stays.
    let mut again = shown.json();
    again["snis"] = serde_json::json!(["api.example.test", "www.example.test"]);
    let r = c.send("PUT", "/certificates/api", again.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A key that is not the certificate's: refused, nothing stored.
    let other = ca.server(&["other.example.test"]);
    let bad = serde_json::json!({"name": "api", "cert": api.cert, "key": other.key});
    let r = c.send("PUT", "/certificates/api", bad.to_string()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.json()["fields"]["certificates.key"],
        "does not match the certificate's public key (keys may not be consistent: KeyMismatch)"
    );
    let status = c.send("GET", "/status", String::new()).await.json();
    let cert = &status["certificates"][0];
    assert_eq!(cert["name"], "api");
    assert_eq!(
        cert["snis"],
        serde_json::json!(["api.example.test", "www.example.test"])
    );
    assert!(cert["expires_in_days"].as_i64().unwrap() > 300, "{status}");
    let metrics = get(admin, "/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gatehouse_certificate_expiry_timestamp_seconds{name=\"api\"} ")),
        "{metrics}"
    );
    let r = c.send("DELETE", "/certificates/api", String::new()).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn validate_names_what_is_wrong_with_a_certificate() {
    let ca = tls_kit::Ca::new("Validate CA");
    let a = ca.server(&["a.example.test"]);
    let b = ca.server(&["b.example.test"]);
    let yaml = format!(
        "certificates:\n  - name: a\n    cert: {}    key: {}  - name: b\n    snis: [a.example.test]\n    cert: {}    key: {}  - name: c\n    cert: /nonexistent/c.pem\n    key: /nonexistent/c.key\n",
        tls_kit::yaml_block(&a.cert, 6),
        tls_kit::yaml_block(&a.key, 6),
        tls_kit::yaml_block(&b.cert, 6),
        tls_kit::yaml_block(&a.key, 6),
    );
    let (code, out) = validate(&yaml);
    assert_eq!(code, 1, "{out}");
    // Each message names its field (and where it is in the file).
    let has = |field: &str, message: &str| {
        out.lines()
            .any(|l| l.starts_with(&format!("{field} (line ")) && l.contains(message))
    };
    assert!(has("certificates[1].key", "): does not match"), "{out}");
    assert!(
        has(
            "certificates[2].cert",
            "): cannot read PEM file \"/nonexistent/c.pem\""
        ),
        "{out}"
    );
}

/// The admin API over HTTPS with the gateway's own certificates; and off loopback over plain
/// HTTP, tokens refused.
#[tokio::test]
async fn the_admin_api_serves_https_and_refuses_tokens_in_clear_off_loopback() {
    let ca = tls_kit::Ca::new("Admin CA");
    let cert = ca.server(&["localhost"]);
    let dir = temp_dir("admin-https");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let file = dir.join("gateway.yaml");
    std::fs::write(
        &file,
        format!(
            "admin:\n  address: 127.0.0.1:9180\n  tls: {{}}\ncertificates:\n  - name: admin\n    default: true\n    cert: {}    key: {}",
            tls_kit::yaml_block(&cert.cert, 6),
            tls_kit::yaml_block(&cert.key, 6)
        ),
    )
    .unwrap();
    let (gw, _) = Running::start_with_admin(
        Command::new(BIN),
        &["-c".as_ref(), file.as_os_str()],
        1,
        "127.0.0.1:0",
    );
    let port = gw.admin_addr().port();
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca_file)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/status"))
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(status["mode"], "file");
    assert_eq!(status["certificates"][0]["name"], "admin");
    // Plain HTTP to the HTTPS port gets nothing useful.
    let plain = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}/status"))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");
    drop(gw);

    // Off loopback, plain HTTP: a call with a token is refused, whatever the token.
    let (secret, hash) = gatehouse_admin::new_token().unwrap();
    std::fs::write(
        &file,
        format!("admin:\n  address: 0.0.0.0:0\n  tokens: [{{name: ops, role: admin, sha256: {hash}}}]\n"),
    )
    .unwrap();
    let (gw, _) = Running::start_with_admin(
        Command::new(BIN),
        &["-c".as_ref(), file.as_os_str()],
        1,
        "0.0.0.0:0",
    );
    let port = gw.admin_addr().port();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = get_with(
        admin,
        "/status",
        &[("authorization", &format!("Bearer {secret}"))],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("over plain HTTP"), "{}", r.text());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_switch_and_back_under_load_fails_no_request() {
    let (blue, green) = (Origin::start("blue").await, Origin::start("green").await);
    let dir = temp_dir("blue-green");
    let (gw, addr) = Running::start_store(&format!("sqlite://{}/g.db", dir.display()), &dir);
    let admin = gw.admin_addr();
    let mut c = Client::connect(admin).await;
    for (name, o) in [("shop-blue", &blue), ("shop-green", &green)] {
        let body = format!(
            r#"{{"name": "{name}", "targets": [{{"address": "{}"}}]}}"#,
            o.addr
        );
        assert_eq!(c.send("POST", "/upstreams", body).await.status, 201);
    }
    let service = r#"{"name": "shop", "blue_green": {"blue": "shop-blue", "green": "shop-green"}}"#;
    let r = c.send("POST", "/services", service.into()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let route = r#"{"name": "shop", "paths": ["/shop/*"], "service": "shop"}"#;
    assert_eq!(c.send("POST", "/routes", route.into()).await.status, 201);
    // A service with plain upstream cannot be switched, and says why.
    let plain = r#"{"name": "plain", "upstream": "shop-blue"}"#;
    assert_eq!(c.send("POST", "/services", plain.into()).await.status, 201);
    let r = c
        .send("POST", "/services/plain/switch", String::new())
        .await;
    assert_eq!(r.status, 409, "{}", r.text());

    // Four clients keep requesting for the whole test; every answer is counted.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let (mut seen, mut failed) = (std::collections::BTreeMap::new(), 0);
            let end = Instant::now() + Duration::from_secs(20);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < end {
                match c.request("GET", "/shop/x", &[], b"").await {
                    Ok(r) if r.status == 200 => {
                        let who = r.json()["origin"].as_str().unwrap_or("?").to_owned();
                        *seen.entry(who).or_insert(0u32) += 1;
                    }
                    _ => {
                        failed += 1;
                        c = Client::connect(addr).await;
                    }
                }
            }
            (seen, failed)
        }));
    }
    let switch = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["release", "switch", "shop", "--admin"])
            .arg(format!("http://{admin}"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let origin_now = || async { get(addr, "/shop/x").await.json()["origin"].clone() };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(origin_now().await, "blue");
    let said = switch(&[]);
    assert!(
        said.contains("now sends to green (upstream shop-green)"),
        "{said}"
    );
    assert_eq!(
        origin_now().await,
        "green",
        "live once the command returned"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let said = switch(&["--to", "blue"]);
    assert!(said.contains("now sends to blue"), "{said}");
    assert_eq!(origin_now().await, "blue");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut total, mut failed) = (std::collections::BTreeMap::new(), 0);
    for t in load {
        let (seen, f) = t.await.unwrap();
        failed += f;
        for (k, v) in seen {
            *total.entry(k).or_insert(0) += v;
        }
    }
    assert_eq!(failed, 0, "requests failed during the switches: {total:?}");
    assert!(total.get("green").is_some_and(|n| *n > 10), "{total:?}");
    assert!(total.get("blue").is_some_and(|n| *n > 10), "{total:?}");
    // The switches are revisions, with who and what in the audit log.
    let history = c
        .send("GET", "/revisions?limit=3", String::new())
        .await
        .text();
    assert!(
        history.contains("switch services/shop to green"),
        "{history}"
    );
    assert!(
        history.contains("switch services/shop to blue"),
        "{history}"
    );
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
