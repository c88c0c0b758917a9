//! `traffic-mirror`: copies a sample of requests to another upstream or URL (another
//! domain), fire and forget. The copy goes once the primary exchange has ended, from copies
//! the pipeline took as the request and response streamed, so the client's latency and
//! answer do not change; at most `queue` copies are in flight, and past that they are
//! dropped and counted. With `diff`, the mirror's answer is compared with the primary's
//! (status, chosen headers, JSON-aware body with ignored fields): matches and differences
//! are counted, and the latest differences are kept for the admin API.

mod diff;

use super::conditions::{Conditions, Subject, UserId, When};
use bytesize::ByteSize;
use diff::{Answer, DiffSpec};
use gatehouse_plugin_api::{
    header_name, BuildEnv, Copies, FieldError, Flow, LogCtx, Needs, Plugin, PluginMetric,
    RequestCtx, SubLimits, TypedKind, UpstreamRef,
};
use http::{HeaderName, Request};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The upstream copies go to. Exactly one of `upstream` and `url`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// `http://host[:port][/base]`: copies go there (another domain), the request's path
    /// after `/base`.
    #[serde(default)]
    pub url: Option<String>,
    /// Share of requests copied, at random (0-100).
    #[serde(default = "hundred")]
    pub percent: f64,
    /// Only requests these conditions hold for are copied (as `traffic-split`'s `when`).
    #[serde(default)]
    pub when: Option<When>,
    /// Where the user id is read, for `when` conditions on users.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Request (and, with `diff`, response) bodies up to this size are copied; a request
    /// with a longer body is not mirrored (and counted).
    #[serde(default = "default_max_body")]
    #[schemars(with = "String")]
    pub max_body: ByteSize,
    /// Copies in flight at most; more are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// How long a copy may take.
    #[serde(default = "five_seconds", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Compare the mirror's answers with the primary's.
    #[serde(default)]
    pub diff: Option<DiffConfig>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiffConfig {
    /// Response headers compared (the status and body always are).
    #[serde(default)]
    pub headers: Vec<String>,
    /// JSON fields left out of the comparison: a name (`updated_at`, wherever it is) or a
    /// JSON pointer (`/data/id`).
    #[serde(default)]
    pub ignore: Vec<String>,
    /// How many of the latest differences are kept for `GET /plugins/traffic-mirror/report`.
    #[serde(default = "default_samples")]
    pub samples: usize,
}

fn hundred() -> f64 {
    100.0
}
fn default_max_body() -> ByteSize {
    ByteSize::kib(64)
}
fn default_queue() -> usize {
    1000
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn default_samples() -> usize {
    20
}

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = "traffic-mirror";
    const PRIORITY: i32 = 450;
    type Config = Config;

    fn build(&self, c: Config, env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        let mut errs = Vec::new();
        let to = match (&c.upstream, &c.url) {
            (Some(u), None) => env
                .upstream(u)
                .map_err(|m| errs.push(FieldError::new("upstream", m)))
                .ok(),
            (None, Some(url)) => env
                .url(url)
                .map_err(|m| errs.push(FieldError::new("url", m)))
                .ok(),
            _ => {
                errs.push(FieldError::new("", "give exactly one of upstream and url"));
                None
            }
        };
        if !(0.0..=100.0).contains(&c.percent) {
            errs.push(FieldError::new("percent", "must be between 0 and 100"));
        }
        if c.queue == 0 {
            errs.push(FieldError::new("queue", "must be at least 1"));
        }
        if c.timeout.is_zero() {
            errs.push(FieldError::new("timeout", "must be above 0"));
        }
        let user_id = UserId::setting(c.user_id.as_deref(), &mut errs);
        let when = c
            .when
            .as_ref()
            .map(|w| Conditions::compile("when", w))
            .transpose()
            .map_err(|e| errs.extend(e))
            .ok()
            .flatten();
        if when.as_ref().is_some_and(|w| w.needs_user) && user_id.is_none() {
            errs.push(FieldError::new("when", "user conditions need user_id"));
        }
        let diff = c.diff.as_ref().map(|d| {
            let mut headers = Vec::new();
            for (i, h) in d.headers.iter().enumerate() {
                match header_name(h) {
                    Ok(n) => headers.push(n),
                    Err(m) => errs.push(FieldError::new(format!("diff.headers[{i}]"), m)),
                }
            }
            (DiffSpec::new(headers, &d.ignore), d.samples)
        });
        let (Some(to), true) = (to, errs.is_empty()) else {
            return Err(errs);
        };
        let base = match to.path() {
            "/" => String::new(),
            p => p.trim_end_matches('/').to_owned(),
        };
        Ok(Arc::new(Mirror {
            to,
            base,
            share: c.percent / 100.0,
            when,
            user_id,
            max_body: c.max_body.0,
            queue: c.queue,
            timeout: c.timeout,
            shared: Arc::new(Shared {
                diff: diff.map(|(spec, samples)| Diffing {
                    spec,
                    samples: Mutex::new(VecDeque::new()),
                    keep: samples,
                    matches: AtomicU64::new(0),
                    differences: AtomicU64::new(0),
                }),
                ..Shared::default()
            }),
        }))
    }
}

pub struct Mirror {
    to: UpstreamRef,
    /// The URL's base path, put before the request's.
    base: String,
    share: f64,
    when: Option<Conditions>,
    user_id: Option<UserId>,
    max_body: u64,
    queue: usize,
    timeout: Duration,
    shared: Arc<Shared>,
}

/// What copies in flight share with the instance.
#[derive(Default)]
struct Shared {
    in_flight: AtomicUsize,
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    too_large: AtomicU64,
    diff: Option<Diffing>,
}

struct Diffing {
    spec: DiffSpec,
    samples: Mutex<VecDeque<serde_json::Value>>,
    keep: usize,
    matches: AtomicU64,
    differences: AtomicU64,
}

impl Plugin for Mirror {
    fn needs(&self) -> Needs {
        Needs {
            log: true,
            copies: Some(self.max_body),
            copy_response: self.shared.diff.is_some(),
            ..Needs::default()
        }
    }

    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        if self.share < 1.0 && fastrand::f64() >= self.share {
            return Flow::Continue;
        }
        if let Some(when) = &self.when {
            let user = self.user_id.as_ref().and_then(|u| u.of(ctx));
            let ip = super::traffic_split::ip_key(ctx.client_ip);
            let who = Subject {
                user: user.as_deref(),
                key: user.as_deref().map_or(ip.as_ref(), str::as_bytes),
            };
            if !when.holds(ctx, &who) {
                return Flow::Continue;
            }
        }
        ctx.keep_copies();
        Flow::Continue
    }

    fn log(&self, ctx: &LogCtx<'_>) {
        // Only requests chosen in `access` have copies.
        let Some(copies) = ctx.copies else { return };
        let s = &self.shared;
        let Some(body) = copies.request_body.clone() else {
            s.too_large.fetch_add(1, Relaxed);
            return;
        };
        if s.in_flight.fetch_add(1, Relaxed) >= self.queue {
            s.in_flight.fetch_sub(1, Relaxed);
            s.dropped.fetch_add(1, Relaxed);
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            s.in_flight.fetch_sub(1, Relaxed);
            s.dropped.fetch_add(1, Relaxed);
            return;
        };
        let Some(req) = self.copy_of(copies, body) else {
            s.in_flight.fetch_sub(1, Relaxed);
            s.failed.fetch_add(1, Relaxed);
            return;
        };
        let limits = SubLimits {
            timeout: self.timeout,
            max_body: usize::try_from(self.max_body).unwrap_or(usize::MAX),
        };
        let sent = ctx.gateway.subrequest(&self.to, req, limits);
        let shared = self.shared.clone();
        // The primary's answer is kept only when it is compared.
        let primary = shared.diff.is_some().then(|| copies.clone());
        handle.spawn(async move {
            let answer = sent.await;
            shared.in_flight.fetch_sub(1, Relaxed);
            match answer {
                Ok(resp) => {
                    shared.sent.fetch_add(1, Relaxed);
                    if let (Some(d), Some(p)) = (&shared.diff, primary) {
                        d.record(&p, &resp);
                    }
                }
                Err(e) => {
                    shared.failed.fetch_add(1, Relaxed);
                    tracing::debug!(error = %e, "mirror copy failed");
                }
            }
        });
    }

    fn metrics(&self) -> Vec<PluginMetric> {
        let s = &self.shared;
        let copies = |outcome: &str, n: &AtomicU64| PluginMetric {
            name: "mirror_copies",
            help: "Requests copied by traffic-mirror, by outcome",
            labels: vec![("outcome", outcome.to_owned())],
            value: n.load(Relaxed),
        };
        let mut out = vec![
            copies("sent", &s.sent),
            copies("failed", &s.failed),
            copies("dropped_queue_full", &s.dropped),
            copies("body_too_large", &s.too_large),
        ];
        if let Some(d) = &s.diff {
            for (result, n) in [("match", &d.matches), ("differ", &d.differences)] {
                out.push(PluginMetric {
                    name: "mirror_diffs",
                    help: "Mirrored answers compared with the primary's, by result",
                    labels: vec![("result", result.to_owned())],
                    value: n.load(Relaxed),
                });
            }
        }
        out
    }

    fn report(&self) -> Option<serde_json::Value> {
        let s = &self.shared;
        let mut r = serde_json::json!({
            "to": self.to.name(),
            "in_flight": s.in_flight.load(Relaxed),
            "sent": s.sent.load(Relaxed),
            "failed": s.failed.load(Relaxed),
            "dropped_queue_full": s.dropped.load(Relaxed),
            "body_too_large": s.too_large.load(Relaxed),
        });
        if let Some(d) = &s.diff {
            let samples: Vec<serde_json::Value> = d
                .samples
                .lock()
                .map(|q| q.iter().cloned().collect())
                .unwrap_or_default();
            r["matches"] = d.matches.load(Relaxed).into();
            r["differences"] = d.differences.load(Relaxed).into();
            r["samples"] = samples.into();
        }
        Some(r)
    }
}

/// Headers that describe one connection, or the primary's target: not copied.
const NOT_COPIED: [HeaderName; 7] = [
    http::header::HOST,
    http::header::CONNECTION,
    http::header::TRANSFER_ENCODING,
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
    http::header::CONTENT_LENGTH,
];

impl Mirror {
    fn copy_of(&self, c: &Copies, body: bytes::Bytes) -> Option<Request<bytes::Bytes>> {
        let mut req = Request::new(body);
        *req.method_mut() = c.request.method.clone();
        *req.uri_mut() = match self.base.as_str() {
            // Origin-form as it went: reused as it is (an HTTP/2 client's absolute URI is not).
            "" if c.request.uri.scheme().is_none() => c.request.uri.clone(),
            base => {
                let pq = c.request.uri.path_and_query().map_or("/", |p| p.as_str());
                format!("{base}{pq}").parse().ok()?
            }
        };
        let h = req.headers_mut();
        *h = c.request.headers.clone();
        for name in &NOT_COPIED {
            h.remove(name);
        }
        h.insert(
            HeaderName::from_static("x-gatehouse-mirror"),
            http::HeaderValue::from_static("1"),
        );
        Some(req)
    }
}

impl Diffing {
    fn record(&self, primary: &Copies, mirror: &http::Response<bytes::Bytes>) {
        let found = self.spec.compare(
            &Answer {
                status: primary.status,
                headers: &primary.response_headers,
                body: primary.response_body.as_ref(),
            },
            &Answer {
                status: mirror.status(),
                headers: mirror.headers(),
                body: Some(mirror.body()),
            },
        );
        if found.is_empty() {
            self.matches.fetch_add(1, Relaxed);
            return;
        }
        self.differences.fetch_add(1, Relaxed);
        if self.keep == 0 {
            return;
        }
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let sample = serde_json::json!({
            "at": at,
            "method": primary.request.method.as_str(),
            "path": primary.request.uri.path_and_query().map_or("/", |p| p.as_str()),
            "request_id": primary.request.headers.get("x-request-id").and_then(|v| v.to_str().ok()),
            "primary_status": primary.status.as_u16(),
            "mirror_status": mirror.status().as_u16(),
            "differences": found,
        });
        if let Ok(mut q) = self.samples.lock() {
            if q.len() >= self.keep {
                q.pop_front();
            }
            q.push_back(sample);
        }
    }
}
