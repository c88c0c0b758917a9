//! For plugins' unit tests: a request that builds a [`RequestCtx`] without the gateway, and a
//! [`Gateway`] whose consumers and sub-request answers the test sets.

use crate::{
    BuildEnv, Consumer, ConsumerIndex, Flow, Gateway, Hold, Plugin, PriorityClass, RequestCtx,
    SubFuture, SubLimits, SubrequestError, UpstreamRef,
};
use bytes::Bytes;
use http::{Extensions, HeaderMap, Request, Response};
use std::sync::Arc;

/// Answers sub-requests in a unit test (what the other service would say).
pub type Answerer =
    dyn Fn(&UpstreamRef, Request<Bytes>) -> Result<Response<Bytes>, SubrequestError> + Send + Sync;

/// A gateway for unit tests: its consumers, and sub-requests answered by a function.
#[derive(Default, Clone)]
pub struct TestGateway {
    pub consumers: ConsumerIndex,
    pub answer: Option<Arc<Answerer>>,
}

impl Gateway for TestGateway {
    fn consumers(&self) -> &ConsumerIndex {
        &self.consumers
    }

    fn shared_consumers(&self) -> Arc<ConsumerIndex> {
        Arc::new(self.consumers.clone())
    }

    fn detached(&self) -> Arc<dyn Gateway> {
        Arc::new(self.clone())
    }

    fn subrequest(&self, to: &UpstreamRef, req: Request<Bytes>, _limits: SubLimits) -> SubFuture {
        let result = match &self.answer {
            Some(f) => f(to, req),
            None => Err(SubrequestError::UnknownUpstream(to.name().into())),
        };
        Box::pin(async move { result })
    }
}

/// A request to run plugin hooks on, owning everything a [`RequestCtx`] borrows.
pub struct TestRequest {
    pub parts: http::request::Parts,
    pub client_ip: std::net::IpAddr,
    pub route: String,
    pub service: String,
    pub priority_class: PriorityClass,
    pub consumer: Option<Consumer>,
    pub response_headers: HeaderMap,
    pub holds: Vec<Hold>,
    pub body_limit: Option<u64>,
    pub state: Extensions,
    pub body: Option<Bytes>,
    pub upstream: Option<UpstreamRef>,
    pub variant: Option<crate::Variant>,
    pub gateway: TestGateway,
}

impl TestRequest {
    /// A GET of `uri` from 127.0.0.1 on route `r` of service `s`.
    pub fn get(uri: &str) -> Self {
        let mut parts = Request::new(()).into_parts().0;
        parts.uri = uri.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        Self {
            parts,
            client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            route: "r".into(),
            service: "s".into(),
            priority_class: PriorityClass::Critical,
            consumer: None,
            response_headers: HeaderMap::new(),
            holds: Vec::new(),
            body_limit: None,
            state: Extensions::new(),
            body: None,
            upstream: None,
            variant: None,
            gateway: TestGateway::default(),
        }
    }

    /// Adds a request header (a bad name or value is a test bug and is skipped).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            self.parts.headers.append(n, v);
        }
        self
    }

    pub fn from_ip(mut self, ip: std::net::IpAddr) -> Self {
        self.client_ip = ip;
        self
    }

    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// The context a hook is called with; what the hook changes stays in `self`.
    pub fn ctx(&mut self) -> Ctx<'_> {
        Ctx {
            ctx: RequestCtx {
                parts: &mut self.parts,
                client_ip: self.client_ip,
                route: &self.route,
                service: &self.service,
                priority_class: self.priority_class,
                consumer: self.consumer.take(),
                response_headers: &mut self.response_headers,
                holds: &mut self.holds,
                body_limit: self.body_limit,
                state: &mut self.state,
                body: self.body.as_ref(),
                body_partial: false,
                upstream: self.upstream.take(),
                variant: self.variant.take(),
                keep_copies: false,
                gateway: &self.gateway,
            },
            variant: &mut self.variant,
            consumer: &mut self.consumer,
            upstream: &mut self.upstream,
            body_limit: &mut self.body_limit,
        }
    }

    /// Runs `plugin`'s access hook, waiting if it waits: `Err` is its answer.
    pub async fn access(&mut self, plugin: &dyn Plugin) -> Result<(), Response<Bytes>> {
        let flow = plugin.access(&mut self.ctx());
        self.settle(flow).await
    }

    /// Runs `plugin`'s rewrite hook, waiting if it waits: `Err` is its answer.
    pub async fn rewrite(&mut self, plugin: &dyn Plugin) -> Result<(), Response<Bytes>> {
        let flow = plugin.rewrite(&mut self.ctx());
        self.settle(flow).await
    }

    async fn settle(&mut self, flow: Flow) -> Result<(), Response<Bytes>> {
        match flow {
            Flow::Continue => Ok(()),
            Flow::Respond(r) => Err(r),
            Flow::Wait(later) => {
                let later = later.await?;
                for (name, value) in later.headers.iter() {
                    self.response_headers.append(name, value.clone());
                }
                self.holds.extend(later.hold);
                if let Some(c) = later.consumer {
                    self.consumer = Some(c);
                }
                crate::set_all(&mut self.parts.headers, later.upstream_headers);
                Ok(())
            }
        }
    }
}

/// A [`RequestCtx`] over a [`TestRequest`]; what the hook set (consumer, upstream, body
/// limit) goes back to the request when this is dropped.
pub struct Ctx<'a> {
    ctx: RequestCtx<'a>,
    consumer: &'a mut Option<Consumer>,
    upstream: &'a mut Option<UpstreamRef>,
    body_limit: &'a mut Option<u64>,
    variant: &'a mut Option<crate::Variant>,
}

impl<'a> std::ops::Deref for Ctx<'a> {
    type Target = RequestCtx<'a>;
    fn deref(&self) -> &RequestCtx<'a> {
        &self.ctx
    }
}

impl<'a> std::ops::DerefMut for Ctx<'a> {
    fn deref_mut(&mut self) -> &mut RequestCtx<'a> {
        &mut self.ctx
    }
}

impl Drop for Ctx<'_> {
    fn drop(&mut self) {
        *self.consumer = self.ctx.consumer.take();
        *self.upstream = self.ctx.upstream.take();
        *self.body_limit = self.ctx.body_limit;
        *self.variant = self.ctx.variant.take();
    }
}

/// A build environment whose config has upstreams `names` (one node, no Redis).
pub fn env_with_upstreams(names: &[&str]) -> BuildEnv {
    BuildEnv::new(1, None, names.iter().copied()).for_scope("global".into())
}
