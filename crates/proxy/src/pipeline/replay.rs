//! What goes upstream, and what a retry or a fallback upstream sends again: the request as it
//! was before any target touched it, kept only when a second send is possible and the body is
//! small enough to hold.

use super::finale::BodyCopy;
use crate::errors::Failure;
use bytes::Bytes;
use gatehouse_plugin_api::RequestHead;
use gatehouse_runtime::tee::TeeCopy;
use gatehouse_runtime::upstream::ProxyBody;
use http::{HeaderMap, Request, Uri, Version};
use std::sync::Arc;
use std::time::Duration;

/// The request on its way upstream: the first send takes it, later ones a replay copy.
pub struct Outgoing {
    request: Option<Request<ProxyBody>>,
    replay: Option<Arc<Replay>>,
    /// A copy taken while the body streams, and the head it goes with: a replay once the
    /// body is whole.
    tee: Option<(Arc<TeeCopy>, Box<Replay>)>,
}

impl Outgoing {
    pub fn new(request: Request<ProxyBody>) -> Self {
        Self {
            request: Some(request),
            replay: None,
            tee: None,
        }
    }

    /// The request for the next send: the original while it was not consumed, else a copy
    /// from the replay; `None` when neither is left.
    pub fn take(&mut self) -> Option<Request<ProxyBody>> {
        match self.request.take() {
            Some(r) => Some(r),
            None => self.replay.as_ref().map(|r| r.request()),
        }
    }

    /// A request that never reached its target comes back for the next send.
    pub fn give_back(&mut self, request: Request<ProxyBody>) {
        self.request = Some(request);
    }

    pub fn replay(&self) -> Option<&Arc<Replay>> {
        self.replay.as_ref()
    }

    /// Whether the request can be sent again: kept before it went, or copied whole while it
    /// streamed (which makes the replay now).
    pub fn ensure_replay(&mut self) -> bool {
        if self.replay.is_some() {
            return true;
        }
        let Some(body) = self.tee.as_ref().and_then(|(copy, _)| copy.whole()) else {
            return false;
        };
        if let Some((_, head)) = self.tee.take() {
            self.replay = Some(Arc::new(Replay { body, ..*head }));
        }
        true
    }

    /// Copies the body as it streams, up to `max` bytes, instead of holding it back: for
    /// bodies of no declared length that may be long-lived (a gRPC call's stream), so a
    /// retry is possible when the body ended within `max` by the time the answer came.
    pub fn copy_while_streaming(&mut self, max: u64) {
        let Some(req) = self.request.take() else {
            return;
        };
        let (parts, body) = req.into_parts();
        let copy = Arc::new(TeeCopy::new(max));
        let head = Box::new(Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body: Bytes::new(),
        });
        let body = ProxyBody::Tee {
            inner: Box::new(body),
            copy: copy.clone(),
        };
        self.tee = Some((copy, head));
        self.request = Some(Request::from_parts(parts, body));
    }

    /// The request as it goes, for a log-phase copy: its head, and its body (read already,
    /// or copied up to `max` bytes as it streams, apart from any retry copy).
    pub fn copy_for_log(&mut self, max: u64) -> Option<(RequestHead, BodyCopy)> {
        let head = |r: &Replay| RequestHead {
            method: r.method.clone(),
            uri: r.uri.clone(),
            version: r.version,
            headers: r.headers.clone(),
        };
        if let Some(r) = &self.replay {
            return Some((head(r), BodyCopy::Read(r.body.clone())));
        }
        if let Some((copy, r)) = &self.tee {
            return Some((head(r), BodyCopy::Streaming(copy.clone())));
        }
        let req = self.request.take()?;
        let (parts, body) = req.into_parts();
        let head = RequestHead::of(&parts);
        let (body, copy) = {
            use http_body::Body as _;
            if body.is_end_stream() {
                (body, BodyCopy::Read(Bytes::new()))
            } else {
                let tee = Arc::new(TeeCopy::new(max));
                let body = ProxyBody::Tee {
                    inner: Box::new(body),
                    copy: tee.clone(),
                };
                (body, BodyCopy::Streaming(tee))
            }
        };
        self.request = Some(Request::from_parts(parts, body));
        Some((head, copy))
    }

    /// Reads a small request body (declared by Content-Length, at most `max` bytes) so it can
    /// be sent again, and keeps a copy of the head. A chunked or larger body is not kept, and
    /// the request streams as it is.
    pub async fn keep_for_replay(
        &mut self,
        max: u64,
        read_timeout: Duration,
    ) -> Result<(), Failure> {
        use http_body::Body as _;
        use http_body_util::BodyExt;
        let Some(req) = self.request.take() else {
            return Ok(());
        };
        let (parts, body) = req.into_parts();
        let replayable = body.is_end_stream() || body.size_hint().exact().is_some_and(|n| n <= max);
        if !replayable {
            self.request = Some(Request::from_parts(parts, body));
            return Ok(());
        }
        let bytes = match tokio::time::timeout(read_timeout, body.collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => return Err(Failure::ClientBody),
            Err(_) => return Err(Failure::ClientBodyTimeout),
        };
        self.replay = Some(Arc::new(Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body: bytes.clone(),
        }));
        self.request = Some(Request::from_parts(
            parts,
            ProxyBody::Bytes((!bytes.is_empty()).then_some(bytes)),
        ));
        Ok(())
    }
}

/// What a retry sends again: the request as it was before any target touched it.
pub struct Replay {
    method: http::Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Replay {
    pub fn request(&self) -> Request<ProxyBody> {
        let mut r = Request::new(ProxyBody::Bytes(
            (!self.body.is_empty()).then(|| self.body.clone()),
        ));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}
