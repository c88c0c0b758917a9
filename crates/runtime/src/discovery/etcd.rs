//! Targets from etcd v3: every key under a prefix is one target. A range read gives the
//! start, then a watch from the next revision streams the changes; when the connection
//! drops, the watch resumes from the last revision seen, so no change is missed across an
//! etcd restart (or re-reads everything when etcd compacted that revision away).
//!
//! Spoken through etcd's JSON gateway (`/v3/kv/range`, `/v3/watch`) over our hyper client,
//! not the `etcd-client` crate: that crate compiles etcd's protobufs at build time with
//! `protoc`, which a fresh machine lacks, and `cargo build` would fail there.

use super::{Found, Origin, Report};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use gatehouse_model::EtcdDiscovery;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A connection that lasted this long was healthy: its failure starts the backoff anew.
const HEALTHY: Duration = Duration::from_secs(5);

/// The value of a key: a target.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Value {
    address: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default, deserialize_with = "num")]
    revision: i64,
}

#[derive(Deserialize)]
struct Kv {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<Kv>,
}

#[derive(Deserialize)]
struct WatchLine {
    result: Option<WatchResult>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WatchResult {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    events: Vec<Event>,
    #[serde(default)]
    canceled: bool,
    #[serde(default, deserialize_with = "num")]
    compact_revision: i64,
    #[serde(default)]
    cancel_reason: String,
}

#[derive(Deserialize)]
struct Event {
    #[serde(default, rename = "type")]
    kind: String,
    kv: Kv,
}

/// etcd's gateway writes 64-bit numbers as strings.
fn num<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(i64),
    }
    match N::deserialize(d)? {
        N::S(s) => s.parse().map_err(serde::de::Error::custom),
        N::I(i) => Ok(i),
    }
}

/// The key just past every key starting with `prefix` (etcd's `GetPrefixRangeEnd`).
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Parses one key's value: JSON `{"address", "weight", "labels", "metadata"}` or a bare
/// `host:port`. `Err` says what is wrong, for the log line that names the key.
pub fn parse_value(key: &str, value: &[u8]) -> Result<Found, String> {
    let text = std::str::from_utf8(value).map_err(|_| "not UTF-8".to_owned())?;
    let v: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("not a target: {e}"))?
    } else {
        Value {
            address: text.trim().to_owned(),
            weight: 1,
            labels: BTreeMap::new(),
            metadata: None,
        }
    };
    gatehouse_model::check_host_port(&v.address)?;
    if v.weight == 0 || v.weight > 65535 {
        return Err(format!("weight {} is not 1-65535", v.weight));
    }
    for (k, l) in &v.labels {
        let bad = k.is_empty() || k.len() > 64 || l.is_empty() || l.len() > 128;
        if bad || http::HeaderValue::from_str(l).is_err() {
            return Err(format!(
                "label {k:?}: keys are 1-64 bytes, values 1-128 printable"
            ));
        }
    }
    Ok(Found {
        address: v.address,
        weight: v.weight,
        labels: v.labels,
        metadata: v.metadata,
        origin: Origin::Etcd,
        from: Some(key.to_owned()),
    })
}

/// The targets under the prefix as the watcher knows them, by key.
struct Keys {
    targets: BTreeMap<String, Found>,
    skipped: Vec<String>,
}

impl Keys {
    fn put(&mut self, upstream: &str, kv: &Kv) {
        let key = String::from_utf8_lossy(&B64.decode(&kv.key).unwrap_or_default()).into_owned();
        let value = B64.decode(&kv.value).unwrap_or_default();
        match parse_value(&key, &value) {
            Ok(found) => {
                self.targets.insert(key, found);
            }
            Err(e) => {
                // Not applied: the key keeps the target it had, if any.
                tracing::warn!(upstream, key = %key, error = %e,
                    "etcd: a malformed target value is skipped");
                self.skipped.push(format!("key {key}: {e}"));
            }
        }
    }

    fn delete(&mut self, kv: &Kv) {
        let key = String::from_utf8_lossy(&B64.decode(&kv.key).unwrap_or_default()).into_owned();
        self.targets.remove(&key);
    }

    fn report(&mut self, upstream: &str) -> Report {
        Report {
            upstream: upstream.into(),
            origin: Origin::Etcd,
            outcome: Ok(self.targets.values().cloned().collect()),
            skipped: std::mem::take(&mut self.skipped),
        }
    }
}

/// Follows `spec` for `upstream` for as long as it runs, reporting every change (or
/// failure) to `tx`. Aborted by the discovery task when the upstream's config changes.
pub async fn watch(upstream: Box<str>, spec: EtcdDiscovery, tx: UnboundedSender<Report>) {
    let client = match Client::new(&spec) {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Report {
                upstream: upstream.clone(),
                origin: Origin::Etcd,
                outcome: Err(e),
                skipped: Vec::new(),
            });
            return;
        }
    };
    let mut keys = Keys {
        targets: BTreeMap::new(),
        skipped: Vec::new(),
    };
    // 0: read everything first; else the revision the watch resumes after.
    let mut revision = 0i64;
    let mut backoff = MIN_BACKOFF;
    let mut at = 0usize;
    loop {
        let endpoint = spec
            .endpoints
            .get(at % spec.endpoints.len().max(1))
            .cloned();
        let Some(endpoint) = endpoint else { return };
        let Some((https, host)) = gatehouse_model::etcd_endpoint(&endpoint) else {
            return;
        };
        let to = Endpoint { https, host };
        let started = std::time::Instant::now();
        let ended = follow(
            &upstream,
            &spec,
            &client,
            &to,
            &mut keys,
            &mut revision,
            &tx,
        )
        .await;
        let Err(e) = ended else { return };
        if started.elapsed() > HEALTHY {
            // The connection served a while: this is a new failure, not a repeated one.
            backoff = MIN_BACKOFF;
        }
        let report = Report {
            upstream: upstream.clone(),
            origin: Origin::Etcd,
            outcome: Err(format!("{endpoint}: {e}")),
            skipped: Vec::new(),
        };
        if tx.send(report).is_err() {
            return;
        }
        at += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: a range read when needed, then the watch until it breaks.
/// `Ok(())` only when the discovery task is gone.
async fn follow(
    upstream: &str,
    spec: &EtcdDiscovery,
    client: &Client,
    at: &Endpoint<'_>,
    keys: &mut Keys,
    revision: &mut i64,
    tx: &UnboundedSender<Report>,
) -> Result<(), String> {
    let token = client.authenticate(at).await?;
    let post =
        |path: &'static str, body: serde_json::Value| client.post(at, path, body, token.as_deref());
    let prefix = spec.prefix.as_bytes();
    if *revision == 0 {
        let body = serde_json::json!({
            "key": B64.encode(prefix),
            "range_end": B64.encode(range_end(prefix)),
        });
        let resp = post("/v3/kv/range", body).await?;
        let bytes = tokio::time::timeout(READ_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| "range read timed out".to_owned())?
            .map_err(|e| e.to_string())?
            .to_bytes();
        let range: RangeResponse =
            serde_json::from_slice(&bytes).map_err(|e| format!("range answer: {e}"))?;
        keys.targets.clear();
        for kv in &range.kvs {
            keys.put(upstream, kv);
        }
        *revision = range.header.revision;
        if tx.send(keys.report(upstream)).is_err() {
            return Ok(());
        }
    }
    let body = serde_json::json!({"create_request": {
        "key": B64.encode(prefix),
        "range_end": B64.encode(range_end(prefix)),
        "start_revision": (*revision + 1).to_string(),
        "progress_notify": true,
    }});
    let mut stream = post("/v3/watch", body).await?.into_body();
    let mut buf = BytesMut::new();
    loop {
        let frame = match stream.frame().await {
            Some(Ok(f)) => f,
            Some(Err(e)) => return Err(format!("watch: {e}")),
            None => return Err("watch ended".into()),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Bytes = buf.split_to(nl + 1).freeze();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match on_line(upstream, &line, keys, revision)? {
                Line::Changed => {
                    if tx.send(keys.report(upstream)).is_err() {
                        return Ok(());
                    }
                }
                Line::Quiet => {}
            }
        }
        if buf.remaining() > 1 << 20 {
            return Err("watch: a message over 1 MiB".into());
        }
    }
}

enum Line {
    Changed,
    Quiet,
}

/// Applies one watch message. A compacted start revision means the changes in between are
/// gone: read everything again (`Err` with `revision` reset).
fn on_line(
    upstream: &str,
    line: &[u8],
    keys: &mut Keys,
    revision: &mut i64,
) -> Result<Line, String> {
    let msg: WatchLine = serde_json::from_slice(line).map_err(|e| format!("watch message: {e}"))?;
    if let Some(e) = msg.error {
        return Err(format!("watch: {e}"));
    }
    let Some(r) = msg.result else {
        return Ok(Line::Quiet);
    };
    if r.compact_revision > 0 {
        *revision = 0;
        return Err(format!(
            "watch: revision compacted (now {}); reading everything again",
            r.compact_revision
        ));
    }
    if r.canceled {
        return Err(format!("watch canceled: {}", r.cancel_reason));
    }
    if r.events.is_empty() {
        // Created, or a progress notice: nothing changed up to this revision.
        *revision = (*revision).max(r.header.revision);
        return Ok(Line::Quiet);
    }
    for ev in &r.events {
        if ev.kind == "DELETE" {
            keys.delete(&ev.kv);
        } else {
            keys.put(upstream, &ev.kv);
        }
    }
    *revision = (*revision).max(r.header.revision);
    Ok(Line::Changed)
}

/// Whether `spec`'s TLS settings load (a CA that parses, a key that matches); `Err` names
/// the field under `tls`, as compile reports it.
pub fn check(spec: &EtcdDiscovery) -> Result<(), (&'static str, String)> {
    Client::new_tls(spec).map(|_| ())
}

/// One etcd endpoint: its scheme and `host:port`.
struct Endpoint<'a> {
    https: bool,
    host: &'a str,
}

/// How the watcher reaches etcd: TCP or TLS, and the user it logs in as.
struct Client {
    tls: Option<crate::connector::Connector>,
    login: Option<(String, String)>,
}

#[derive(Deserialize)]
struct AuthResponse {
    token: String,
}

impl Client {
    fn new(spec: &EtcdDiscovery) -> Result<Client, String> {
        let tls = Self::new_tls(spec).map_err(|(field, m)| format!("tls.{field}: {m}"))?;
        let login = spec.username.clone().zip(spec.password.clone());
        Ok(Client { tls, login })
    }

    fn new_tls(
        spec: &EtcdDiscovery,
    ) -> Result<Option<crate::connector::Connector>, (&'static str, String)> {
        if !spec.endpoints.iter().any(|e| e.starts_with("https://")) {
            return Ok(None);
        }
        let tls = crate::connector::Tls::new(spec.tls.as_ref(), false)?;
        Ok(Some(crate::connector::Connector::Tls(std::sync::Arc::new(
            tls,
        ))))
    }

    /// A token for the configured user (a new one per connection: etcd's simple tokens
    /// expire), or `None` without authentication.
    async fn authenticate(&self, at: &Endpoint<'_>) -> Result<Option<String>, String> {
        let Some((name, password)) = &self.login else {
            return Ok(None);
        };
        let body = serde_json::json!({"name": name, "password": password});
        let resp = self.post(at, "/v3/auth/authenticate", body, None).await?;
        let bytes = tokio::time::timeout(READ_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| "authentication timed out".to_owned())?
            .map_err(|e| e.to_string())?
            .to_bytes();
        let auth: AuthResponse =
            serde_json::from_slice(&bytes).map_err(|e| format!("authentication answer: {e}"))?;
        Ok(Some(auth.token))
    }

    /// POSTs `body` as JSON on a new connection; the response once its head arrived with
    /// status 200.
    async fn post(
        &self,
        at: &Endpoint<'_>,
        path: &str,
        body: serde_json::Value,
        token: Option<&str>,
    ) -> Result<hyper::Response<Incoming>, String> {
        let io = tokio::time::timeout(CONNECT_TIMEOUT, self.connect(at))
            .await
            .map_err(|_| "connect timed out".to_owned())??;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::post(path)
            .header(hyper::header::HOST, at.host)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(hyper::header::AUTHORIZATION, t);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(READ_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| format!("{path}: no answer"))?
            .map_err(|e| format!("{path}: {e}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            // etcd says why (a wrong password, no permission) in a small JSON body.
            let why = tokio::time::timeout(READ_TIMEOUT, resp.into_body().collect())
                .await
                .ok()
                .and_then(|b| b.ok())
                .map(|b| {
                    String::from_utf8_lossy(&b.to_bytes())
                        .chars()
                        .take(200)
                        .collect::<String>()
                })
                .unwrap_or_default();
            return Err(format!("{path}: status {status} {why}"));
        }
        Ok(resp)
    }

    /// A connection to the endpoint: plain TCP, or TLS verified as the spec says. The
    /// name is resolved here, on the discovery task, never on a request's path.
    async fn connect(&self, at: &Endpoint<'_>) -> Result<crate::connector::Stream, String> {
        let addr = tokio::net::lookup_host(at.host)
            .await
            .map_err(|e| format!("resolve {}: {e}", at.host))?
            .next()
            .ok_or_else(|| format!("resolve {}: no address", at.host))?;
        match (&self.tls, at.https) {
            (Some(tls), true) => tls
                .connect(addr, at.host)
                .await
                .map_err(|e| format!("connect: {e}")),
            _ => crate::connector::Connector::Tcp
                .connect(addr, at.host)
                .await
                .map_err(|e| format!("connect: {e}")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_or_say_why() {
        let f = parse_value(
            "/s/a",
            br#"{"address":"10.0.0.1:80","weight":3,"labels":{"zone":"a"}}"#,
        )
        .unwrap();
        assert_eq!((f.address.as_str(), f.weight), ("10.0.0.1:80", 3));
        assert_eq!(f.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(parse_value("/s/b", b"10.0.0.2:81").unwrap().weight, 1);
        assert!(parse_value("/s/c", b"{\"address\":\"x\"}")
            .unwrap_err()
            .contains("port"));
        assert!(parse_value("/s/d", b"{\"addr\":\"x:1\"}")
            .unwrap_err()
            .contains("unknown field"));
        assert!(parse_value("/s/e", br#"{"address":"a:1","weight":0}"#).is_err());
        let e = parse_value("/s/f", br#"{"address":"a:1","labels":{"color":"a\nb"}}"#);
        assert!(e.unwrap_err().contains("label"));
    }

    #[test]
    fn a_prefix_range_ends_past_its_last_key() {
        assert_eq!(range_end(b"/svc/"), b"/svc0");
        assert_eq!(range_end(b"a\xff"), b"b");
        assert_eq!(range_end(b"\xff"), vec![0]);
    }
}
