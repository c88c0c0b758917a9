//! What a plugin may ask of the gateway itself: upstreams named in its config (checked when
//! the plugin is built), and sub-requests to them through the gateway's own connection pools
//! and timeouts (forward-auth, aggregation, key fetches).

use crate::consumers::ConsumerIndex;
use bytes::Bytes;
use http::{Request, Response};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// An upstream a plugin may send to: one of the config's upstreams, or a URL's origin (then
/// the gateway keeps a private pool for it). Made by [`crate::BuildEnv::upstream`] or
/// [`crate::BuildEnv::url`], so it names something the snapshot has.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamRef {
    name: Arc<str>,
    /// For a URL: its `host:port` and its path.
    url: Option<(Arc<str>, Arc<str>)>,
}

impl UpstreamRef {
    pub(crate) fn upstream(name: &str) -> Self {
        Self {
            name: name.into(),
            url: None,
        }
    }

    /// `http://host[:port][/path]` as a private upstream; `Err` says what is wrong with it.
    pub(crate) fn url(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("\"{url}\" is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "\"{url}\": only http:// URLs can be called (not {other}://)"
                ))
            }
            None => return Err(format!("\"{url}\" is not an absolute http:// URL")),
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("\"{url}\" has no host"))?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(format!("\"{url}\": user info in a URL is not supported"));
        }
        let authority = format!("{host}:{}", uri.port_u16().unwrap_or(80));
        let path = match uri.path() {
            "" => "/",
            p => p,
        };
        Ok(Self {
            name: format!("url:{authority}").into(),
            url: Some((authority.into(), path.into())),
        })
    }

    /// The name the snapshot knows it by (`url:host:port` for a URL).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// For a URL: the `host:port` to connect to.
    pub fn url_authority(&self) -> Option<&str> {
        self.url.as_ref().map(|(a, _)| &**a)
    }

    /// The path to send to: a URL's own path, `/` for an upstream.
    pub fn path(&self) -> &str {
        self.url.as_ref().map_or("/", |(_, p)| &**p)
    }
}

/// How long a sub-request may take and how much of its answer is read.
#[derive(Debug, Clone, Copy)]
pub struct SubLimits {
    /// From sending to the whole response body read (connect included).
    pub timeout: Duration,
    /// The most response-body bytes read; more is an error.
    pub max_body: usize,
}

impl Default for SubLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_body: 1 << 20,
        }
    }
}

/// Why a sub-request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubrequestError {
    /// The upstream is not in the snapshot serving this request (it was removed by a reload).
    UnknownUpstream(Arc<str>),
    /// No target of the upstream could be picked (all down, or none).
    NoTarget,
    /// Connecting, sending or reading failed.
    Failed(String),
    /// Over [`SubLimits::timeout`].
    Timeout,
    /// The response body was longer than [`SubLimits::max_body`].
    TooLarge,
}

impl fmt::Display for SubrequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownUpstream(n) => write!(f, "upstream \"{n}\" is not configured"),
            Self::NoTarget => f.write_str("no target available"),
            Self::Failed(e) => write!(f, "sub-request failed: {e}"),
            Self::Timeout => f.write_str("sub-request timed out"),
            Self::TooLarge => f.write_str("sub-request response body over its limit"),
        }
    }
}

impl std::error::Error for SubrequestError {}

/// A sub-request on its way; `'static`, so a [`crate::Flow::Wait`] can await it.
pub type SubFuture = Pin<Box<dyn Future<Output = Result<Response<Bytes>, SubrequestError>> + Send>>;

/// The gateway as a plugin's request hooks reach it.
pub trait Gateway: Send + Sync {
    /// The consumers of the snapshot serving the request, with their credentials.
    fn consumers(&self) -> &ConsumerIndex;

    /// The same consumers, shared, for a check that finishes in a [`crate::Flow::Wait`].
    fn shared_consumers(&self) -> Arc<ConsumerIndex>;

    /// Sends `req` (origin-form URI; the Host is the target's unless set) to `to` through the
    /// gateway's pools. Not retried: a plugin that wants retries says so itself.
    fn subrequest(&self, to: &UpstreamRef, req: Request<Bytes>, limits: SubLimits) -> SubFuture;

    /// The same gateway, owned, for a [`crate::Flow::Wait`] that makes sub-requests one after
    /// another (a token exchange after a discovery fetch).
    fn detached(&self) -> Arc<dyn Gateway>;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_private_upstreams_and_bad_ones_say_why() {
        let r = UpstreamRef::url("http://127.0.0.1:9001/auth/check").unwrap();
        assert_eq!(r.name(), "url:127.0.0.1:9001");
        assert_eq!(r.url_authority(), Some("127.0.0.1:9001"));
        assert_eq!(r.path(), "/auth/check");
        let r = UpstreamRef::url("http://auth.internal").unwrap();
        assert_eq!(r.url_authority(), Some("auth.internal:80"));
        assert_eq!(r.path(), "/");
        for (bad, why) in [
            ("https://a/x", "only http://"),
            ("/x", "not an absolute"),
            ("http://u:p@a/x", "user info"),
            ("ht tp://a", "is not a URL"),
        ] {
            let e = UpstreamRef::url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
