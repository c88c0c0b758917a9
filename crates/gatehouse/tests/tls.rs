//! TLS at the edge and to upstreams: SNI selection (exact, wildcard, default), ALPN,
//! version limits, client certificates, HTTPS-only routes, certificate replacement under
//! load, and upstream TLS (verification, mTLS, h2 by ALPN), with rustls clients, curl and
//! `openssl s_client`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/tls_kit.rs"]
mod tls_kit;

use common::{Gateway, Origin, StartOptions};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tls_kit::{client_config, get_over, handshake, yaml_block, Ca, Issued, TlsOrigin, BOTH};

/// Certificates for the SNI tests: an exact name, a wildcard, and a default.
struct Certs {
    ca: Ca,
    api: Issued,
    wild: Issued,
    fallback: Issued,
}

fn certs() -> Certs {
    let ca = Ca::new("Test CA");
    Certs {
        api: ca.server(&["api.test"]),
        wild: ca.server(&["*.apps.test"]),
        fallback: ca.server(&["fallback.test"]),
        ca,
    }
}

fn cert_yaml(name: &str, c: &Issued, extra: &str) -> String {
    format!(
        "  - name: {name}\n{extra}    cert: {}    key: {}",
        yaml_block(&c.cert, 6),
        yaml_block(&c.key, 6)
    )
}

fn options() -> StartOptions {
    StartOptions {
        listen: vec![],
        ..common::test_options()
    }
}

/// A gateway with a plain listener (first address) and a TLS one (second), routing to
/// `origin`.
fn edge(origin: SocketAddr, tls: &str, certificates: &str, routes_extra: &str) -> Gateway {
    let yaml = format!(
        r#"
listen:
  - address: "127.0.0.1:0"
  - address: "127.0.0.1:0"
    tls:
      {tls}
certificates:
{certificates}
upstreams:
  - name: o
    targets: [{{address: "{origin}"}}]
services:
  - {{name: s, upstream: o}}
routes:
  - {{name: all, paths: ["/*"], service: s}}
{routes_extra}
"#
    );
    let config = gatehouse_model::parse_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    Gateway::start(config, &options()).unwrap_or_else(|e| panic!("{e}"))
}

fn three_certs(c: &Certs) -> String {
    [
        cert_yaml("api", &c.api, ""),
        cert_yaml("wild", &c.wild, ""),
        cert_yaml("fallback", &c.fallback, "    default: true\n"),
    ]
    .join("\n")
}

#[tokio::test]
async fn sni_picks_exact_then_wildcard_then_default_and_alpn_picks_the_protocol() {
    let origin = Origin::start("o").await;
    let c = certs();
    let g = edge(origin.addr, "http2: true", &three_certs(&c), "");
    let tls_addr = g.addrs()[1];
    let h2_and_h1 = client_config(&c.ca, &["h2", "http/1.1"], None, BOTH);
    let h1_only = client_config(&c.ca, &["http/1.1"], None, BOTH);

    let s = handshake(tls_addr, "api.test", h2_and_h1.clone())
        .await
        .unwrap();
    assert_eq!(s.server_cn, "api.test");
    assert_eq!(s.alpn.as_deref(), Some("h2"));
    let (status, _, body) = get_over(s, "api.test", "/hello").await;
    assert_eq!(status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");

    let s = handshake(tls_addr, "x.apps.test", h1_only).await.unwrap();
    assert_eq!(s.server_cn, "*.apps.test");
    assert_eq!(s.alpn.as_deref(), Some("http/1.1"));
    let (status, _, _) = get_over(s, "x.apps.test", "/").await;
    assert_eq!(status, 200);

    // One label only, and unknown names: the default. rustls verifies the name, so a
    // client that sends one the default does not hold fails verification; the server side
    // is checked by what it presented.
    for sni in ["a.b.apps.test", "unknown.test"] {
        let e = handshake(tls_addr, sni, h2_and_h1.clone()).await.err();
        assert!(
            e.is_some_and(|e| e.to_string().contains("NotValidForName")
                || e.to_string().contains("not valid for")),
            "{sni}: the default certificate (fallback.test) was expected"
        );
    }
    let s = handshake(tls_addr, "fallback.test", h2_and_h1.clone())
        .await
        .unwrap();
    assert_eq!(s.server_cn, "fallback.test");
    // Session resumption: the client's second handshake resumes its first.
    let s = handshake(tls_addr, "api.test", h2_and_h1).await.unwrap();
    assert_eq!(
        s.stream.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );

    // The plain listener still serves plain HTTP.
    let r = common::get(g.addrs()[0], "/plain").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "http");
    let node = g.shared().snapshot.load().telemetry.node.clone();
    assert!(node.tls_handshakes.load(Ordering::Relaxed) >= 3);
}

fn failures(g: &Gateway, reason: &str) -> u64 {
    let node = g.shared().snapshot.load().telemetry.node.clone();
    let i = gatehouse_runtime::telemetry::TLS_FAILURE_REASONS
        .iter()
        .position(|r| *r == reason)
        .unwrap();
    node.tls_handshake_failures[i].load(Ordering::Relaxed)
}

async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not met in 2 s");
}

#[tokio::test]
async fn failed_handshakes_are_counted_by_reason() {
    let origin = Origin::start("o").await;
    let c = certs();
    // No default certificate, and TLS 1.3 only.
    let certificates = [cert_yaml("api", &c.api, ""), cert_yaml("wild", &c.wild, "")].join("\n");
    let g = edge(origin.addr, "min_version: \"1.3\"", &certificates, "");
    let tls_addr = g.addrs()[1];
    let any = client_config(&c.ca, &["http/1.1"], None, BOTH);
    assert!(handshake(tls_addr, "unknown.test", any.clone())
        .await
        .is_err());
    eventually(|| failures(&g, "no_certificate") == 1).await;

    let tls12 = client_config(&c.ca, &["http/1.1"], None, &[&rustls::version::TLS12]);
    assert!(handshake(tls_addr, "api.test", tls12).await.is_err());
    eventually(|| failures(&g, "protocol_version") == 1).await;

    // What is allowed still works.
    assert!(handshake(tls_addr, "api.test", any).await.is_ok());
}

#[tokio::test]
async fn client_certificates_are_verified_and_their_subject_goes_upstream() {
    let origin = Origin::start("o").await;
    let c = certs();
    let clients = Ca::new("Client CA");
    let alice = clients.client("alice");
    let stranger = Ca::new("Other CA").client("mallory");
    let tls = format!(
        "client_ca: {}      client_subject_header: X-Client-Subject",
        yaml_block(&clients.pem, 8)
    );
    let g = edge(origin.addr, &tls, &three_certs(&c), "");
    let tls_addr = g.addrs()[1];

    let none = client_config(&c.ca, &["http/1.1"], None, BOTH);
    let refused = match handshake(tls_addr, "api.test", none).await {
        // TLS 1.3: the client finishes first and learns of the refusal on its first read.
        Ok(s) => {
            let io = hyper_util::rt::TokioIo::new(s.stream);
            match hyper::client::conn::http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(
                io,
            )
            .await
            {
                Ok((mut send, conn)) => {
                    tokio::spawn(conn);
                    let req = hyper::Request::get("/")
                        .header("host", "api.test")
                        .body(Default::default())
                        .unwrap();
                    send.send_request(req).await.is_err()
                }
                Err(_) => true,
            }
        }
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate must be refused");
    eventually(|| failures(&g, "client_certificate") >= 1).await;

    let wrong = client_config(&c.ca, &["http/1.1"], Some(&stranger), BOTH);
    if let Ok(s) = handshake(tls_addr, "api.test", wrong).await {
        let io = hyper_util::rt::TokioIo::new(s.stream);
        if let Ok((mut send, conn)) =
            hyper::client::conn::http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(io)
                .await
        {
            tokio::spawn(conn);
            let req = hyper::Request::get("/")
                .header("host", "api.test")
                .body(Default::default())
                .unwrap();
            assert!(
                send.send_request(req).await.is_err(),
                "an unknown CA's client must be refused"
            );
        }
    }

    let good = client_config(&c.ca, &["http/1.1"], Some(&alice), BOTH);
    let s = handshake(tls_addr, "api.test", good).await.unwrap();
    let (status, _, body) = get_over(s, "api.test", "/who").await;
    assert_eq!(status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let subject = echo["headers"]["x-client-subject"].as_str().unwrap();
    assert!(subject.contains("CN=alice"), "{subject}");

    // A client's own claim never reaches the upstream on the plain listener either... it is
    // left alone there (no verification happened), so the TLS listener is where it counts:
    // a verified client that also sends the header gets its verified subject.
    let s = handshake(
        tls_addr,
        "api.test",
        client_config(&c.ca, &["http/1.1"], Some(&alice), BOTH),
    )
    .await
    .unwrap();
    let io = hyper_util::rt::TokioIo::new(s.stream);
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/forged")
        .header("host", "api.test")
        .header("x-client-subject", "CN=admin")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(echo["headers"]["x-client-subject"]
        .as_str()
        .unwrap()
        .contains("CN=alice"));
}

#[tokio::test]
async fn https_only_routes_refuse_or_redirect_plain_http() {
    let origin = Origin::start("o").await;
    let c = certs();
    let routes = r#"  - {name: secure, paths: ["/secure/*"], service: s, protocols: [https]}
  - {name: moved, paths: ["/moved/*"], service: s, protocols: [https], https_redirect_status_code: 308}
  - {name: forbidden, paths: ["/forbidden/*"], service: s, protocols: [https], https_redirect_status_code: 403}"#;
    let g = edge(origin.addr, "http2: true", &three_certs(&c), routes);
    let plain = g.addrs()[0];
    let r = common::get(plain, "/secure/x").await;
    assert_eq!(r.status, 426);
    assert_eq!(r.headers["upgrade"], "TLS/1.2, HTTP/1.1");
    let r = common::get_with(plain, "/moved/x?y=1", &[("host", "api.test:8080")]).await;
    assert_eq!(r.status, 308);
    assert_eq!(r.headers["location"], "https://api.test/moved/x?y=1");
    let r = common::get(plain, "/forbidden/x").await;
    assert_eq!(r.status, 403);
    // Over TLS the route answers.
    let s = handshake(
        g.addrs()[1],
        "api.test",
        client_config(&c.ca, &["h2"], None, BOTH),
    )
    .await
    .unwrap();
    let (status, _, _) = get_over(s, "api.test", "/secure/x").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_certificate_replaced_under_load_fails_no_handshake_and_no_request() {
    let origin = Origin::start("o").await;
    let c = certs();
    let g = edge(origin.addr, "http2: true", &three_certs(&c), "");
    let tls_addr = g.addrs()[1];
    // Full handshakes every time: a resumed session would not show the new certificate.
    let mut config = (*client_config(&c.ca, &["http/1.1"], None, BOTH)).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let config = std::sync::Arc::new(config);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (config, stop) = (config.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut seen) = (0u32, 0u32, std::collections::HashSet::new());
            // Bounded: the loop ends when told, or after 10 s whatever happens.
            let until = tokio::time::Instant::now() + Duration::from_secs(10);
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < until {
                match handshake(tls_addr, "api.test", config.clone()).await {
                    Ok(s) => {
                        let fingerprint =
                            s.stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                        seen.insert(fingerprint);
                        let (status, _, _) = get_over(s, "api.test", "/").await;
                        if status == 200 {
                            ok += 1
                        } else {
                            failed += 1
                        }
                    }
                    Err(_) => failed += 1,
                }
            }
            (ok, failed, seen)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Replace api's certificate (a new key too), twice, while the clients run.
    let mut config_now = g.shared().snapshot.load().config.clone();
    for _ in 0..2 {
        let fresh = c.ca.server(&["api.test"]);
        config_now.certificates[0].cert = fresh.cert.clone();
        config_now.certificates[0].key = Some(fresh.key.clone());
        g.reload(config_now.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed, mut seen) = (0, 0, std::collections::HashSet::new());
    for w in workers {
        let (o, f, s) = w.await.unwrap();
        ok += o;
        failed += f;
        seen.extend(s);
    }
    assert_eq!(failed, 0, "{failed} failures among {ok} requests");
    assert!(ok > 50, "only {ok} requests");
    assert_eq!(
        seen.len(),
        3,
        "the original and both replacements were served"
    );
}

#[tokio::test]
async fn bad_certificates_are_refused_and_the_running_ones_keep_serving() {
    let origin = Origin::start("o").await;
    let c = certs();
    let g = edge(origin.addr, "http2: true", &three_certs(&c), "");
    let mut bad = g.shared().snapshot.load().config.clone();
    let other = c.ca.server(&["other.test"]);
    bad.certificates[1].key = Some(other.key.clone()); // not wild's key
    bad.certificates[2].snis = vec!["api.test".into()]; // claimed by certificates[0]
    let mut garbage = bad.certificates[0].clone();
    garbage.name = "garbage".into();
    garbage.cert = "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n".into();
    bad.certificates.push(garbage);
    let errs: Vec<String> = g
        .reload(bad)
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert!(
        errs.iter()
            .any(|e| e.starts_with("certificates[1].key: does not match")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("certificates[3].cert: unparsable PEM")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("certificates[2].snis[0]: \"api.test\" is served by")),
        "{errs:?}"
    );
    let s = handshake(
        g.addrs()[1],
        "api.test",
        client_config(&c.ca, &["h2"], None, BOTH),
    )
    .await
    .unwrap();
    assert_eq!(get_over(s, "api.test", "/").await.0, 200);
}

/// curl and `openssl s_client`, as operators check a TLS endpoint.
#[tokio::test]
async fn curl_and_openssl_see_the_right_certificates() {
    let origin = Origin::start("o").await;
    let c = certs();
    let g = edge(origin.addr, "http2: true", &three_certs(&c), "");
    let port = g.addrs()[1].port();
    let dir = std::env::temp_dir().join(format!("gatehouse-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &c.ca.pem).unwrap();

    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg("--cacert")
        .arg(&ca_file)
        .args(["--resolve", &format!("x.apps.test:{port}:127.0.0.1")])
        .arg(format!("https://x.apps.test:{port}/curl"))
        .output()
        .await
        .expect("curl runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2 200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for (sni, cn, alpn) in [
        ("api.test", "api.test", "h2"),
        ("x.apps.test", "*.apps.test", "http/1.1"),
        ("nobody.test", "fallback.test", "h2"),
    ] {
        let out = tokio::process::Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", sni, "-alpn", alpn])
            .arg("-CAfile")
            .arg(&ca_file)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("openssl runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("CN = {cn}")), "{sni}: {text}");
        assert!(
            text.contains(&format!("ALPN protocol: {alpn}")),
            "{sni}: {text}"
        );
    }
    // TLS 1.1 is never spoken.
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-tls1_1",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn upstream_gateway(origin: SocketAddr, upstream_extra: &str) -> Gateway {
    common::gateway(&format!(
        r#"
upstreams:
  - name: secure
    scheme: https
{upstream_extra}
    targets: [{{address: "localhost:{}"}}]
services:
  - {{name: s, upstream: secure}}
routes:
  - {{name: all, paths: ["/*"], service: s}}
"#,
        origin.port()
    ))
}

#[tokio::test]
async fn https_upstreams_are_verified_against_the_configured_ca() {
    let ca = Ca::new("Origin CA");
    let origin = TlsOrigin::start("secure", &ca.server(&["localhost"]), None).await;
    let g = upstream_gateway(
        origin.addr,
        &format!("    tls:\n      ca: {}", yaml_block(&ca.pem, 8)),
    );
    let r = common::get(common::addr(&g), "/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["sni"], "localhost");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(
        echo["headers"]["host"],
        format!("localhost:{}", origin.addr.port())
    );

    // Against the system roots the test CA is unknown: 502.
    let g = upstream_gateway(origin.addr, "");
    let r = common::get(common::addr(&g), "/x").await;
    assert_eq!(r.status, 502);

    // verify: false takes any certificate.
    let g = upstream_gateway(origin.addr, "    tls: {verify: false}");
    assert_eq!(common::get(common::addr(&g), "/x").await.status, 200);
}

#[tokio::test]
async fn https_upstreams_speak_h2_by_alpn_and_present_client_certificates() {
    let ca = Ca::new("Origin CA");
    let client_ca = Ca::new("Gateway client CA");
    let gw_cert = client_ca.client("gatehouse");
    let origin = TlsOrigin::start("mtls", &ca.server(&["origin.internal"]), Some(&client_ca)).await;
    let tls = format!(
        "    protocol: h2\n    tls:\n      sni: origin.internal\n      ca: {}      client_cert: {}      client_key: {}",
        yaml_block(&ca.pem, 8),
        yaml_block(&gw_cert.cert, 8),
        yaml_block(&gw_cert.key, 8),
    );
    let g = upstream_gateway(origin.addr, &tls);
    let mut client = common::Client::connect(common::addr(&g)).await;
    for _ in 0..3 {
        let r = client.get("/h2").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.json();
        assert_eq!(echo["version"], "HTTP/2.0");
        assert_eq!(echo["sni"], "origin.internal");
        assert!(echo["client_cn"].as_str().unwrap().contains("CN=gatehouse"));
    }
    // One multiplexed connection served them all.
    let snap = g.shared().snapshot.load();
    let target = &snap.upstreams["secure"].targets().targets[0];
    assert_eq!(target.connects.load(Ordering::Relaxed), 1);

    // Without the client certificate the origin refuses: 502.
    let g = upstream_gateway(
        origin.addr,
        &format!(
            "    protocol: h2\n    tls:\n      sni: origin.internal\n      ca: {}",
            yaml_block(&ca.pem, 8)
        ),
    );
    assert_eq!(common::get(common::addr(&g), "/h2").await.status, 502);
}
