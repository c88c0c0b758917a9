//! The request as it goes upstream: the routed path, hop-by-hop headers out, forwarding
//! headers and the request id in, and the body with a plugin's size cap.

use super::request_body::ClientBody;
use super::state::{RequestState, Routed};
use crate::errors::Failure;
use crate::headers::{remove_hop_by_hop, set_forwarded, VIA, VIA_VALUE, X_REQUEST_ID};
use bytes::Bytes;
use gatehouse_runtime::upstream::{BodyFault, ProxyBody};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Uri};
use std::sync::Arc;

/// The request to send, and where its body tells of a client fault (over a plugin's cap, or
/// broken by the client) when it can have one.
pub type Built = (Request<ProxyBody>, Option<Arc<BodyFault>>);

/// Builds the upstream request from the client's head and body.
pub fn build(
    st: &mut RequestState<'_>,
    routed: &mut Routed<'_>,
    mut parts: Parts,
    body: ClientBody,
    upgrade: bool,
) -> Result<Built, Failure> {
    if let Some(p) = routed.new_path.take() {
        match PathAndQuery::from_maybe_shared(Bytes::from(p)) {
            Ok(pq) => parts.uri = Uri::from(pq),
            Err(e) => {
                tracing::warn!(route = %routed.route.name, error = %e, "rewritten path is not a valid URI");
                return Err(Failure::UpstreamError);
            }
        }
    }
    remove_hop_by_hop(&mut parts.headers, upgrade);
    let (peer, client) = (&st.info.client_ip, st.client.value(&st.info));
    let tls = st.info.tls.as_deref();
    set_forwarded(
        &mut parts.headers,
        peer,
        client,
        routed.host.clone(),
        tls.is_some(),
    );
    if let Some(t) = tls {
        if let Some(h) = &t.subject_header {
            // Only the listener's verification may say who the client certificate names.
            match &t.client_subject {
                Some(subject) => parts.headers.insert(h.clone(), subject.clone()),
                None => parts.headers.remove(h),
            };
        }
    }
    if let (Some(h), false) = (
        &routed.route.retry.deadline_header,
        st.client.via_trusted_proxy,
    ) {
        // A deadline is the gateway's to give: a client could claim any.
        parts.headers.remove(h);
    }
    if !parts.headers.contains_key(&X_REQUEST_ID) {
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), st.request_id.clone());
    }
    if st.snap.via {
        parts.headers.append(VIA.clone(), VIA_VALUE.clone());
    }
    let body = match body {
        ClientBody::Streaming(body) => body,
        ClientBody::Prefixed(head, rest) => {
            let body = ProxyBody::Boxed(super::request_body::prefixed(head, rest));
            return Ok((Request::from_parts(parts, body), None));
        }
        // Read before `access`: its length is known, and the client can no longer break it.
        ClientBody::Read(bytes) => {
            if st
                .plugins
                .body_limit
                .is_some_and(|max| bytes.len() as u64 > max)
            {
                return Err(Failure::BodyTooLarge);
            }
            let body = ProxyBody::Bytes((!bytes.is_empty()).then_some(bytes));
            return Ok((Request::from_parts(parts, body), None));
        }
    };
    let chunked = {
        use http_body::Body as _;
        !body.is_end_stream() && body.size_hint().exact().is_none()
    };
    if chunked {
        st.rec.counted_in = Some(Arc::default());
    }
    // Watched only when a plugin limits the body or it is chunked (whose framing the client
    // can break after the head went upstream).
    let limit = st.plugins.body_limit;
    let fault = (limit.is_some() || chunked).then(Arc::<BodyFault>::default);
    let body = ProxyBody::client(body, limit, st.rec.counted_in.clone(), fault.clone());
    Ok((Request::from_parts(parts, body), fault))
}
