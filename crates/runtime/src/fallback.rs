//! Fallback ("bottom data"): what a route answers when its upstream fails. The last good
//! response of the same GET/HEAD request, kept in a bounded in-memory cache (moka: concurrent,
//! size- and age-bounded, no global lock), else a static response from the config, else
//! another upstream.

use crate::snapshot::UpstreamEntry;
use bytes::Bytes;
use gatehouse_model::{ConfigError, Fallback, FallbackCache};
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONNECTION, COOKIE, SET_COOKIE, TRANSFER_ENCODING, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A kept response.
pub struct Stored {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    /// The request headers the response's `Vary` names, with the values they had: it is
    /// served again only to a request with the same values.
    pub vary: Varied,
}

/// Request headers named by a response's `Vary`, with the values the request had.
pub type Varied = Box<[(HeaderName, Option<HeaderValue>)]>;

impl Stored {
    /// Whether this answer fits a request with `headers` (its `Vary` values match).
    pub fn fits(&self, headers: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, v)| headers.get(name) == v.as_ref())
    }
}

/// What a response's `Vary` names, with the request's values; `None` for `Vary: *` (it may
/// never be served to another request).
pub fn vary(response: &HeaderMap, request: &HeaderMap) -> Option<Varied> {
    let mut out = Vec::new();
    for v in response.get_all(VARY) {
        let Ok(v) = v.to_str() else { return None };
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()?;
            let value = request.get(&name).cloned();
            out.push((name, value));
        }
    }
    Some(out.into_boxed_slice())
}

/// The cache key of a GET or HEAD request: host, path and query, and with
/// `by_credentials` its `Authorization` and `Cookie` values. `None`: the request carries
/// credentials and the cache does not keep answers to such requests.
pub fn key(
    host: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    by_credentials: bool,
) -> Option<Box<str>> {
    let credentials = headers.contains_key(AUTHORIZATION) || headers.contains_key(COOKIE);
    if credentials && !by_credentials {
        return None;
    }
    let mut k = String::with_capacity(host.len() + path_and_query.len());
    k.push_str(host);
    k.push_str(path_and_query);
    if credentials {
        for name in [AUTHORIZATION, COOKIE] {
            for v in headers.get_all(&name) {
                // NUL cannot occur in a header value: the parts cannot run into each other.
                k.push('\0');
                k.push_str(name.as_str());
                k.push('\0');
                k.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
        }
    }
    Some(k.into_boxed_str())
}

/// The store of last good responses of one route, kept across reloads while its settings
/// stay.
pub struct Cache {
    settings: FallbackCache,
    entries: moka::sync::Cache<Box<str>, Arc<Stored>>,
}

impl Cache {
    fn new(settings: &FallbackCache) -> Self {
        Self {
            settings: settings.clone(),
            entries: moka::sync::Cache::builder()
                .max_capacity(settings.max_entries)
                .time_to_live(settings.max_age)
                .build(),
        }
    }

    pub fn max_body(&self) -> u64 {
        self.settings.max_body
    }

    pub fn by_credentials(&self) -> bool {
        self.settings.by_credentials
    }

    pub fn get(&self, key: &str) -> Option<Arc<Stored>> {
        self.entries.get(key)
    }

    pub fn put(&self, key: Box<str>, stored: Stored) {
        self.entries.insert(key, Arc::new(stored));
    }
}

/// A route's fallback, compiled.
pub struct Compiled {
    statuses: Box<[u16]>,
    pub cache: Option<Arc<Cache>>,
    pub static_response: Option<(StatusCode, HeaderMap, Bytes)>,
    /// Asked when nothing is kept and there is no static response.
    pub upstream: Option<Arc<UpstreamEntry>>,
    pub header: HeaderName,
    /// Fallback answers served, by source (metrics).
    pub served_cache: Arc<AtomicU64>,
    pub served_static: Arc<AtomicU64>,
    pub served_upstream: Arc<AtomicU64>,
}

impl Compiled {
    /// Compiles `f` for route `path` (e.g. `routes[3]`), reading a `body_file`, with its
    /// fallback `upstream` resolved; `previous` lends its cache and counters.
    /// Reads the static response's `body_file` (a plan only checked that it is a file).
    pub fn read_body_file(&mut self, f: &Fallback, path: &str) -> Result<(), ConfigError> {
        let (Some(s), Some((_, _, body))) = (&f.static_response, self.static_response.as_mut())
        else {
            return Ok(());
        };
        if let (None, Some(file)) = (&s.body, &s.body_file) {
            *body = std::fs::read(file).map(Bytes::from).map_err(|e| {
                ConfigError::new(
                    format!("{path}.fallback.static.body_file"),
                    format!("cannot read {file}: {e}"),
                )
            })?;
        }
        Ok(())
    }

    pub fn new(
        f: &Fallback,
        path: &str,
        upstream: Option<Arc<UpstreamEntry>>,
        previous: Option<&Compiled>,
        resources: crate::snapshot::Resources,
    ) -> Result<Self, ConfigError> {
        let header = HeaderName::from_bytes(f.header.to_ascii_lowercase().as_bytes())
            .map_err(|e| ConfigError::new(format!("{path}.fallback.header"), e.to_string()))?;
        let cache = f.cache.as_ref().map(|c| {
            previous
                .and_then(|p| p.cache.as_ref())
                .filter(|old| old.settings == *c)
                .cloned()
                .unwrap_or_else(|| Arc::new(Cache::new(c)))
        });
        let static_response = match &f.static_response {
            None => None,
            Some(s) => {
                let at = |k: &str| format!("{path}.fallback.static.{k}");
                let status = StatusCode::from_u16(s.status)
                    .map_err(|e| ConfigError::new(at("status"), e.to_string()))?;
                let mut headers = HeaderMap::new();
                for (k, v) in &s.headers {
                    let name =
                        HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).map_err(|e| {
                            ConfigError::new(at(&format!("headers.{k}")), e.to_string())
                        })?;
                    let value = HeaderValue::from_str(v).map_err(|e| {
                        ConfigError::new(at(&format!("headers.{k}")), e.to_string())
                    })?;
                    headers.append(name, value);
                }
                let body = match (&s.body, &s.body_file) {
                    (Some(b), _) => Bytes::from(b.clone()),
                    (None, Some(file)) if resources == crate::snapshot::Resources::Check => {
                        match std::fs::metadata(file) {
                            Ok(m) if m.is_file() => Bytes::new(),
                            Ok(_) => {
                                let why = format!("cannot read {file}: not a file");
                                return Err(ConfigError::new(at("body_file"), why));
                            }
                            Err(e) => {
                                let why = format!("cannot read {file}: {e}");
                                return Err(ConfigError::new(at("body_file"), why));
                            }
                        }
                    }
                    (None, Some(file)) => std::fs::read(file).map(Bytes::from).map_err(|e| {
                        ConfigError::new(at("body_file"), format!("cannot read {file}: {e}"))
                    })?,
                    (None, None) => Bytes::new(),
                };
                Some((status, headers, body))
            }
        };
        Ok(Self {
            statuses: f.statuses.clone().into_boxed_slice(),
            cache,
            static_response,
            upstream,
            header,
            served_cache: previous.map_or_else(Arc::default, |p| p.served_cache.clone()),
            served_static: previous.map_or_else(Arc::default, |p| p.served_static.clone()),
            served_upstream: previous.map_or_else(Arc::default, |p| p.served_upstream.clone()),
        })
    }

    /// Whether an answer with `status` is replaced.
    pub fn replaces(&self, status: StatusCode) -> bool {
        self.statuses.contains(&status.as_u16())
    }

    /// Counts one fallback answer from `source`.
    pub fn count(&self, source: Source) {
        let c = match source {
            Source::Cache => &self.served_cache,
            Source::Static => &self.served_static,
            Source::Upstream => &self.served_upstream,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where a fallback answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Static,
    Upstream,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Static => "static",
            Source::Upstream => "upstream",
        }
    }
}

/// Whether a response may be kept to answer other clients later: a success that is not
/// private to its client (no Set-Cookie, no `private` or `no-store`).
pub fn keepable(status: StatusCode, headers: &HeaderMap) -> bool {
    if !matches!(status.as_u16(), 200 | 203 | 204) || headers.contains_key(SET_COOKIE) {
        return false;
    }
    !headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|d| {
                let d = d.trim();
                d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("private")
            })
        })
    })
}

/// The headers worth keeping with a body (framing is set again when it is served).
pub fn kept_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for h in [TRANSFER_ENCODING, CONNECTION] {
        out.remove(h);
    }
    out
}

/// The age header value of a response kept since `at`.
pub fn age(at: Instant) -> HeaderValue {
    HeaderValue::from(at.elapsed().as_secs())
}
