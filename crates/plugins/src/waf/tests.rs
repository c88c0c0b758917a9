use super::data::Request;
use super::engine::{self, Verdict};
use super::eval::Policy;
use super::ruleset::Ruleset;
use std::sync::Arc;

fn crs() -> Arc<Ruleset> {
    engine::load(true, &Vec::new(), None).unwrap()
}

pub fn policy(rs: &Ruleset, pl: u8) -> Policy {
    let mut p = Policy {
        paranoia: pl,
        off: vec![false; rs.rules.len()],
        ..Policy::default()
    };
    for (k, v) in [
        ("crs_setup_version", "334".to_owned()),
        ("paranoia_level", pl.to_string()),
        ("executing_paranoia_level", pl.to_string()),
        ("inbound_anomaly_score_threshold", "5".into()),
        ("outbound_anomaly_score_threshold", "4".into()),
    ] {
        p.init.push((k.as_bytes().into(), v.into_bytes().into()));
    }
    p
}

pub fn send(
    rs: &Ruleset,
    pol: &Policy,
    method: &str,
    uri: &str,
    ct: Option<&str>,
    body: &[u8],
) -> Verdict {
    let uri: http::Uri = uri.parse().unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("host", "shop.example".parse().unwrap());
    headers.insert(
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64)".parse().unwrap(),
    );
    headers.insert("accept", "text/html,application/json".parse().unwrap());
    if let Some(ct) = ct {
        headers.insert("content-type", ct.parse().unwrap());
        headers.insert("content-length", body.len().to_string().parse().unwrap());
    }
    let req = Request {
        method,
        uri: &uri,
        version: http::Version::HTTP_11,
        headers: &headers,
        remote_addr: "127.0.0.1".parse().unwrap(),
        request_id: "test",
    };
    engine::request(rs, pol, &req, (!body.is_empty()).then_some(body))
}

#[test]
fn the_built_in_crs_compiles_whole() {
    let rs = crs();
    assert!(rs.rules.len() > 400, "{}", rs.rules.len());
}

#[test]
fn a_clean_request_passes_and_an_injection_is_denied_by_the_anomaly_score() {
    let rs = crs();
    let pol = policy(&rs, 1);
    let v = send(&rs, &pol, "GET", "/search?q=blue+shoes&page=2", None, b"");
    assert_eq!(v.denied, None, "{:?}", v.hits);
    assert_eq!(v.score, 0, "{:?}", v.hits);
    let v = send(
        &rs,
        &pol,
        "GET",
        "/search?q=1'%20UNION%20SELECT%20password%20FROM%20users--",
        None,
        b"",
    );
    assert_eq!(v.denied, Some(949110), "{:?}", v.hits);
    assert!(v.score >= 5);
    assert!(v.hits.iter().any(|h| h.id / 1000 == 942), "{:?}", v.hits);
    let sqli = v.hits.iter().find(|h| h.id / 1000 == 942).unwrap();
    assert_eq!(sqli.var, "ARGS:q");
}

#[test]
fn bodies_are_inspected_by_type() {
    let rs = crs();
    let pol = policy(&rs, 1);
    let clean = br#"{"name":"O'Brien","items":[{"sku":"A-1","qty":2}],"note":"leave at the door"}"#;
    let v = send(
        &rs,
        &pol,
        "POST",
        "/api/orders",
        Some("application/json"),
        clean,
    );
    assert_eq!(v.denied, None, "{:?}", v.hits);
    let xss = br#"{"comment":{"text":["<script>alert(document.cookie)</script>"]}}"#;
    let v = send(
        &rs,
        &pol,
        "POST",
        "/api/orders",
        Some("application/json"),
        xss,
    );
    assert_eq!(v.denied, Some(949110), "{:?}", v.hits);
    assert!(
        v.hits.iter().any(|h| h.var == "ARGS:json.comment.text.0"),
        "{:?}",
        v.hits
    );
    let form = b"file=../../../../etc/passwd";
    let v = send(
        &rs,
        &pol,
        "POST",
        "/f",
        Some("application/x-www-form-urlencoded"),
        form,
    );
    assert_eq!(v.denied, Some(949110), "{:?}", v.hits);
    let mp = b"--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\r\n; cat /etc/passwd\r\n--XyZ--\r\n";
    let v = send(
        &rs,
        &pol,
        "POST",
        "/up",
        Some("multipart/form-data; boundary=XyZ"),
        mp,
    );
    assert_eq!(v.denied, Some(949110), "{:?}", v.hits);
    let xml = b"<?xml version=\"1.0\"?><a><b x=\"1\">1 OR 1=1; DROP TABLE users--</b></a>";
    let v = send(&rs, &pol, "POST", "/x", Some("application/xml"), xml);
    assert_eq!(v.denied, Some(949110), "{:?}", v.hits);
}

#[test]
fn a_body_that_does_not_parse_is_said() {
    let rs = crs();
    let pol = policy(&rs, 1);
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let v = send(
        &rs,
        &pol,
        "POST",
        "/api",
        Some("application/json"),
        deep.as_bytes(),
    );
    assert!(
        v.body_error.as_deref().unwrap_or("").contains("JSON"),
        "{:?}",
        v.body_error
    );
    let v = send(
        &rs,
        &pol,
        "POST",
        "/up",
        Some("multipart/form-data; boundary=XyZ"),
        b"--XyZ\r\nno end",
    );
    assert!(v.body_error.is_some());
}

/// The repository's corpora through the engine at each paranoia level: detection and false
/// positives, printed (`--nocapture`) for bench/RESULTS.md and held to the figures there.
#[test]
fn the_corpora_at_each_paranoia_level() {
    let rs = crs();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/waf/corpus");
    let lines = |kind: &str| -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(dir.join(kind))
            .unwrap()
            .flatten()
            .collect();
        files.sort_by_key(|e| e.path());
        for f in files {
            let name = f.file_name().to_string_lossy().into_owned();
            for l in std::fs::read_to_string(f.path()).unwrap().lines() {
                if !l.trim().is_empty() {
                    out.push((name.clone(), l.to_owned()));
                }
            }
        }
        out
    };
    let (attack, benign) = (lines("attack"), lines("benign"));
    let blocked = |pol: &Policy, file: &str, s: &str| -> bool {
        if file == "json.txt" {
            return send(
                &rs,
                pol,
                "POST",
                "/api/items",
                Some("application/json"),
                s.as_bytes(),
            )
            .denied
            .is_some();
        }
        let q: String = form_urlencoded::byte_serialize(s.as_bytes()).collect();
        let json = serde_json::json!({ "comment": s }).to_string();
        send(&rs, pol, "GET", &format!("/search?q={q}"), None, b"")
            .denied
            .is_some()
            || send(
                &rs,
                pol,
                "POST",
                "/comments",
                Some("application/x-www-form-urlencoded"),
                format!("comment={q}").as_bytes(),
            )
            .denied
            .is_some()
            || send(
                &rs,
                pol,
                "POST",
                "/api/items",
                Some("application/json"),
                json.as_bytes(),
            )
            .denied
            .is_some()
    };
    for pl in 1..=4u8 {
        let pol = policy(&rs, pl);
        let hits = attack.iter().filter(|(f, s)| blocked(&pol, f, s)).count();
        let fps: Vec<&String> = benign
            .iter()
            .filter(|(f, s)| blocked(&pol, f, s))
            .map(|(_, s)| s)
            .collect();
        println!(
            "PL {pl}: detected {hits}/{} ({:.1} %), false positives {}/{} ({:.1} %)",
            attack.len(),
            100.0 * hits as f64 / attack.len() as f64,
            fps.len(),
            benign.len(),
            100.0 * fps.len() as f64 / benign.len() as f64
        );
        if pl == 1 {
            for f in &fps {
                println!("  false positive: {f}");
            }
            for (_, s) in attack.iter().filter(|(f, s)| !blocked(&pol, f, s)) {
                println!("  missed: {s}");
            }
        }
    }
}

#[test]
fn a_response_leaking_a_database_error_is_denied() {
    let rs = crs();
    let pol = policy(&rs, 1);
    let v = send(&rs, &pol, "GET", "/ok", None, b"");
    let mut h = http::HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    let body = br#"{"path":"/Npgsql.NpgsqlException"}"#;
    let out = engine::response(&rs, &pol, v.tx.clone(), 200, &h, body);
    assert_eq!(out.denied, Some(959100), "{:?}", out.hits);
    let out = engine::response(&rs, &pol, v.tx, 200, &h, br#"{"fine":true}"#);
    assert_eq!(out.denied, None, "{:?}", out.hits);
}

/// Each evasion the issue names, on a payload CRS catches plainly: still denied once
/// encoded, cased, commented, entity-escaped, null-padded or split across repeated
/// parameters.
#[test]
fn evasions_are_normalised_before_matching() {
    let rs = crs();
    let pol = policy(&rs, 1);
    let denied = |uri: &str| send(&rs, &pol, "GET", uri, None, b"").denied.is_some();
    let form = |body: &str| {
        let ct = Some("application/x-www-form-urlencoded");
        send(&rs, &pol, "POST", "/f", ct, body.as_bytes())
            .denied
            .is_some()
    };
    let cases: &[(&str, &str)] = &[
        ("plain", "/s?q=1%20UNION%20SELECT%20password%20FROM%20users"),
        (
            "URL-encoded twice",
            "/s?q=%253Cscript%253Ealert(1)%253C%252Fscript%253E",
        ),
        (
            "%u Unicode",
            "/s?q=%u003cscript%u003ealert(1)%u003c/script%u003e",
        ),
        (
            "overlong UTF-8 dot-dot-slash",
            "/s?file=%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
        ),
        (
            "mixed case",
            "/s?q=1%20UnIoN%20SeLeCt%20password%20FrOm%20users",
        ),
        (
            "SQL comments",
            "/s?q=1/**/UNION/**/SELECT/**/password/**/FROM/**/users",
        ),
        (
            "HTML entities",
            "/s?q=%3Cimg%20src%3Dx%20onerror%3D%26%23x61%3Blert(1)%3E",
        ),
        ("null bytes", "/s?q=%3Cscr%00ipt%3Ealert(1)%3C/script%3E"),
        (
            "path traversal, backslashes",
            "/s?file=..%5C..%5C..%5Cwindows%5Cwin.ini",
        ),
    ];
    let mut missed = Vec::new();
    for (name, uri) in cases {
        if !denied(uri) {
            missed.push(*name);
        }
    }
    // Parameter pollution: the payload split over repeats of one name, which a backend that
    // joins them (ASP.NET) would reassemble; CRS sees every repeat.
    if !form("q=1%20UNION%20SELECT%20password&q=FROM%20users--") {
        missed.push("parameter pollution");
    }
    assert!(missed.is_empty(), "not caught: {missed:?}");
}
