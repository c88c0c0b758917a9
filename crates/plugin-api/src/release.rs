//! What release plugins (traffic split, mirroring, transformations) hand the pipeline and
//! get from it: a variant name, another service, a new request body, the request's facts
//! (id, route captures), and copies of the exchange for the `log` phase.

use crate::RequestHead;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::sync::Arc;

/// A service a plugin may send requests to instead of the route's (made by
/// [`crate::BuildEnv::service`], so it names one the config has).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceRef(pub(crate) Arc<str>);

impl ServiceRef {
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// The release variant a request was given (a `traffic-split` rule's name): metrics and the
/// access log are labelled with it, and `header`, when set, names it in the response.
#[derive(Debug, Clone)]
pub struct Variant {
    pub name: Arc<str>,
    pub header: Option<HeaderName>,
}

/// Put in [`crate::RequestCtx::state`] by [`crate::RequestCtx::set_service`].
#[derive(Debug, Clone)]
pub struct ServiceChoice(pub ServiceRef);

/// Put in [`crate::RequestCtx::state`] by [`crate::RequestCtx::replace_body`].
#[derive(Debug, Clone)]
pub struct NewBody(pub Bytes);

/// Facts about the request that plugins declaring [`crate::Needs::facts`] find in
/// [`crate::RequestCtx::state`] from the `rewrite` phase on.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    pub request_id: Option<HeaderValue>,
    /// The route's `{param}` captures and named regex groups.
    pub captures: Vec<(Box<str>, Box<str>)>,
}

impl RequestFacts {
    pub fn capture(&self, name: &str) -> Option<&str> {
        self.captures
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| &**v)
    }
}

/// Copies of one exchange, for a plugin declaring [`crate::Needs::copies`]: the request as it
/// went upstream and (with [`crate::Needs::copy_response`]) the response the client got;
/// without it the response's headers are empty and its body `None`. A body is `None` when it
/// was longer than the cap or did not end cleanly.
#[derive(Debug, Clone)]
pub struct Copies {
    pub request: RequestHead,
    pub request_body: Option<Bytes>,
    pub status: StatusCode,
    pub response_headers: HeaderMap,
    pub response_body: Option<Bytes>,
}

/// A counter a plugin instance exports: `gatehouse_<name>_total{scope, <labels>}`.
#[derive(Debug, Clone)]
pub struct PluginMetric {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: u64,
}
