//! The upstream's answer made into the client's response: hop-by-hop headers out, the
//! gateway's headers in, the `response` phase, and the body wrapped with its read and total
//! timeouts (or, after a 101, the connection handed to a tunnel).

use super::exchange::Answered;
use super::phases::{append_all, response_phase};
use super::state::{RequestState, Routed};
use super::tunnel::tunnel;
use crate::body::{RespBody, UpstreamBody};
use crate::headers::{remove_hop_by_hop, VIA, VIA_VALUE, X_REQUEST_ID};
use http::{Response, StatusCode, Version};
use tokio::time::Instant;

/// What the client's side of the exchange needs of the response.
pub struct Downstream {
    /// The client's HTTP version.
    pub version: Version,
    /// The client side of an upgrade the request asked for.
    pub on_upgrade: Option<super::tunnel::ClientUpgrade>,
    /// The request's overall deadline, which its body must meet too.
    pub total: Option<Instant>,
}

/// The client's response to an upstream answer.
pub fn respond(
    st: &mut RequestState<'_>,
    routed: &Routed<'_>,
    answered: Answered,
    down: Downstream,
) -> Response<RespBody> {
    let Answered {
        mut resp,
        sender,
        in_flight,
        head_at,
        ..
    } = answered;
    // hyper keeps an HTTP/1.0 client's connection open (and says `Connection: keep-alive`)
    // only for a response it is given as HTTP/1.1; it still writes HTTP/1.0 on the wire.
    *resp.version_mut() = match down.version {
        Version::HTTP_10 => Version::HTTP_11,
        v => v,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let (Some(client), Some(up)) = (down.on_upgrade, resp.body_mut().take_upgrade()) {
            let holds = std::mem::take(&mut st.plugins.holds);
            let address = in_flight.0.address.clone();
            let idle = st.snap.config.node.tunnel_idle_timeout;
            tokio::spawn(tunnel(client, up, in_flight, holds, address, idle));
            return resp.map(|_| RespBody::empty());
        }
    }
    remove_hop_by_hop(resp.headers_mut(), false);
    if st.mark_upstream {
        resp.extensions_mut().insert(crate::grpc::FromUpstream);
    }
    if st.snap.via {
        resp.headers_mut().append(VIA.clone(), VIA_VALUE.clone());
    }
    if !resp.headers().contains_key(&X_REQUEST_ID) {
        resp.headers_mut()
            .insert(X_REQUEST_ID.clone(), st.request_id.clone());
    }
    let chain = &routed.route.plugins;
    if !chain.entries.is_empty() {
        append_all(
            resp.headers_mut(),
            std::mem::take(&mut st.plugins.response_headers),
        );
        let status = resp.status();
        response_phase(routed, &mut st.plugins, status, resp.headers_mut());
    }
    let read_timeout = routed.service.timeouts.read;
    let holds = std::mem::take(&mut st.plugins.holds);
    resp.map(move |b| {
        RespBody::upstream(UpstreamBody::new(
            b,
            Some(sender),
            in_flight,
            holds,
            head_at + read_timeout,
            read_timeout,
            down.total,
        ))
    })
}
