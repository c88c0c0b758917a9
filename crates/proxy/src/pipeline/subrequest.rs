//! The gateway as plugins reach it: the snapshot's consumers, and sub-requests sent as one
//! upstream exchange (the same unit the retry loop uses) through the snapshot's pools, under
//! the plugin's own timeout and body cap.

use super::exchange::{exchange, Attempt, Call};
use super::replay::Outgoing;
use crate::body::{RespBody, UpstreamBody};
use crate::observe::Exchange;
use bytes::Bytes;
use gatehouse_plugin_api::{ConsumerIndex, SubFuture, SubLimits, SubrequestError, UpstreamRef};
use gatehouse_runtime::snapshot::Snapshot;
use gatehouse_runtime::upstream::ProxyBody;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use std::sync::Arc;
use tokio::time::Instant;

/// What a request's plugins see of the gateway: the snapshot serving the request.
pub struct Gateway<'s> {
    pub snap: &'s Arc<Snapshot>,
}

impl gatehouse_plugin_api::Gateway for Gateway<'_> {
    fn consumers(&self) -> &ConsumerIndex {
        &self.snap.consumers
    }

    fn shared_consumers(&self) -> Arc<ConsumerIndex> {
        self.snap.consumers.clone()
    }

    fn subrequest(&self, to: &UpstreamRef, req: Request<Bytes>, limits: SubLimits) -> SubFuture {
        Box::pin(send(self.snap.clone(), to.clone(), req, limits))
    }

    fn detached(&self) -> Arc<dyn gatehouse_plugin_api::Gateway> {
        Arc::new(Owned(self.snap.clone()))
    }
}

/// The gateway of one snapshot, owned (see [`gatehouse_plugin_api::Gateway::detached`]).
struct Owned(Arc<Snapshot>);

impl gatehouse_plugin_api::Gateway for Owned {
    fn consumers(&self) -> &ConsumerIndex {
        &self.0.consumers
    }

    fn shared_consumers(&self) -> Arc<ConsumerIndex> {
        self.0.consumers.clone()
    }

    fn subrequest(&self, to: &UpstreamRef, req: Request<Bytes>, limits: SubLimits) -> SubFuture {
        Box::pin(send(self.0.clone(), to.clone(), req, limits))
    }

    fn detached(&self) -> Arc<dyn gatehouse_plugin_api::Gateway> {
        Arc::new(Owned(self.0.clone()))
    }
}

/// One exchange with `to`, its whole response read within `limits`.
async fn send(
    snap: Arc<Snapshot>,
    to: UpstreamRef,
    req: Request<Bytes>,
    limits: SubLimits,
) -> Result<Response<Bytes>, SubrequestError> {
    let Some(up) = snap.upstreams.get(to.name()) else {
        return Err(SubrequestError::UnknownUpstream(to.name().into()));
    };
    let deadline = Instant::now() + limits.timeout;
    let call = Call {
        upstream: up,
        hash_key: &[],
        tried: &[],
        connect_timeout: limits.timeout,
        head_timeout: limits.timeout,
        total: Some(deadline),
        host: None,
        deadline_header: None,
        body_fault: None,
        label: "sub-request",
    };
    let mut rec = Exchange::new(Instant::now(), req.method());
    let req = req.map(|b| ProxyBody::Bytes((!b.is_empty()).then_some(b)));
    let mut out = Outgoing::new(req);
    let answered = match exchange(&call, &mut out, &mut rec, None).await {
        Attempt::Answered(a) => a,
        Attempt::NoTarget { .. } => return Err(SubrequestError::NoTarget),
        Attempt::NotSent(f, _) | Attempt::Broken(f, _, _) => {
            return Err(match f {
                crate::errors::Failure::UpstreamTimeout
                | crate::errors::Failure::ConnectTimeout => SubrequestError::Timeout,
                f => SubrequestError::Failed(f.message().to_owned()),
            })
        }
        Attempt::Refused(_) | Attempt::ClientBody(_) => {
            return Err(SubrequestError::Failed("refused".into()))
        }
    };
    let (parts, body) = answered.resp.into_parts();
    // Read through the same body wrapper as a proxied response, so a clean end returns the
    // connection to the pool.
    let body = RespBody::upstream(UpstreamBody::new(
        body,
        Some(answered.sender),
        answered.in_flight,
        Vec::new(),
        deadline,
        limits.timeout,
        Some(deadline),
    ));
    let read = Limited::new(body, limits.max_body).collect();
    match tokio::time::timeout_at(deadline, read).await {
        Err(_) => Err(SubrequestError::Timeout),
        Ok(Ok(b)) => Ok(Response::from_parts(parts, b.to_bytes())),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(SubrequestError::TooLarge),
        Ok(Err(e)) if e.is::<crate::body::TotalTimeout>() => Err(SubrequestError::Timeout),
        Ok(Err(e)) => Err(SubrequestError::Failed(e.to_string())),
    }
}
