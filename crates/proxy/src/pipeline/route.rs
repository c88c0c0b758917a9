//! The routing stage: the request head is checked (framing), its host read, and the router
//! picks the route; the rest of the pipeline works from the [`Routed`] it returns.

use super::client::Client;
use super::state::{ConnInfo, RequestState, Routed};
use crate::errors::Failure;
use crate::headers::{framing_problem, valid_host};
use bytes::Bytes;
use gatehouse_model::EncodedSlashes;
use gatehouse_plugin_api::UpstreamRef;
use gatehouse_runtime::path;
use gatehouse_runtime::router::{cookie, query_arg, RequestView};
use gatehouse_runtime::snapshot::{upstream_path, HashSource, Snapshot};
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request};
use http::{Uri, Version};
use std::borrow::Cow;

/// Checks the request head, normalises its path, and finds its route; or the failure to
/// answer with.
pub fn route<'s, B>(
    snap: &'s Snapshot,
    info: &ConnInfo,
    client: &Client,
    req: &mut Request<B>,
) -> Result<Routed<'s>, Failure> {
    let problem = if info.ambiguous_framing() {
        Some("both Content-Length and Transfer-Encoding")
    } else {
        framing_problem(req.headers())
    };
    if let Some(problem) = problem {
        tracing::info!(client = %info.client, problem, "rejected request framing");
        return Err(Failure::BadFraming);
    }
    check_target(req)?;
    normalize_path(req, snap.config.node.encoded_slashes)?;
    let host_value = client_host(req)?;
    let host = host_value
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .map(strip_port)
        .unwrap_or("");
    let view = RequestView {
        method: req.method(),
        host,
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let m = snap.router.find(&view).ok_or(Failure::NoRoute)?;
    let route = snap.routes.get(m.route).ok_or(Failure::NoRoute)?;
    match (info.tls.is_some(), route.protocols) {
        (false, p) if !p.http => return Err(Failure::HttpsRequired(p.https_redirect)),
        // As in Kong: an HTTPS request does not match an HTTP-only route.
        (true, p) if !p.https => return Err(Failure::NoRoute),
        _ => {}
    }
    let service = snap.services.get(route.service).ok_or(Failure::NoRoute)?;
    // An HTTP/2 client's absolute URI needs no new path: the exchange sets the form the
    // upstream wants from the URI's own parts, without a string per request.
    let new_path = upstream_path(route, service, &m, &view, false);
    let hash_key = hash_key(&service.upstream.hash, &view, client.value(info));
    let captures = match route.plugins.needs.facts {
        true => m
            .params
            .iter()
            .map(|(n, v)| ((*n).into(), (*v).into()))
            .collect(),
        false => Vec::new(),
    };
    Ok(Routed {
        captures,
        index: m.route,
        route,
        service,
        upstream: &service.upstream,
        new_path,
        hash_key,
        host: host_value,
    })
}

/// The answer to a plain-HTTP request for an HTTPS-only route: a redirect to the same URL
/// over `https://` (on the default port), or the refusal `code` names (426 with
/// `Upgrade: TLS/1.2, HTTP/1.1` as RFC 2817 asks, or 403).
pub fn https_required<B>(
    st: &RequestState<'_>,
    code: u16,
    req: &Request<B>,
) -> http::Response<crate::body::RespBody> {
    let mut resp = st.fail(Failure::HttpsRequired(code));
    if matches!(code, 301 | 302 | 307 | 308) {
        let host = client_host(req)
            .ok()
            .flatten()
            .and_then(|h| h.to_str().ok().map(|h| strip_port(h).to_owned()));
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = host.and_then(|h| HeaderValue::from_str(&format!("https://{h}{pq}")).ok());
        match location {
            Some(l) => {
                resp.headers_mut().insert(http::header::LOCATION, l);
            }
            // No host to send the client to: it is told to use TLS instead.
            None => return st.fail(Failure::HttpsRequired(426)),
        }
    } else if code == 426 {
        resp.headers_mut().insert(
            http::header::UPGRADE,
            HeaderValue::from_static("TLS/1.2, HTTP/1.1"),
        );
        resp.headers_mut().insert(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        );
    }
    resp
}

/// Sends the request to the upstream a plugin chose (`set_upstream`) instead of its
/// service's, with its consistent-hash key made for that upstream.
pub fn choose_upstream<'s>(
    st: &RequestState<'_>,
    snap: &'s Snapshot,
    routed: &mut Routed<'s>,
    chosen: &UpstreamRef,
    parts: &http::request::Parts,
) -> Result<(), Failure> {
    // Checked when the plugin was built, and the snapshot is the one it was built for.
    let Some(upstream) = snap.upstreams.get(chosen.name()) else {
        tracing::warn!(route = %routed.route.name, upstream = chosen.name(), "a plugin chose an upstream the snapshot does not have");
        return Err(Failure::NoTarget);
    };
    routed.upstream = upstream;
    let view = RequestView {
        method: &parts.method,
        host: "",
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    routed.hash_key = hash_key(&upstream.hash, &view, st.client.value(&st.info));
    Ok(())
}

/// Puts the request's path in normal form (`gatehouse_runtime::path`), or refuses it.
fn normalize_path<B>(req: &mut Request<B>, slashes: EncodedSlashes) -> Result<(), Failure> {
    let uri = req.uri();
    let normal = match path::normalize(uri.path(), slashes) {
        Ok(Cow::Borrowed(_)) => return Ok(()),
        Ok(Cow::Owned(p)) => p,
        Err(e) => {
            tracing::info!(
                path = uri.path(),
                problem = e.as_str(),
                "refused request path"
            );
            return Err(Failure::BadPath);
        }
    };
    let pq = match uri.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.path_and_query =
        Some(PathAndQuery::from_maybe_shared(Bytes::from(pq)).map_err(|_| Failure::BadPath)?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Failure::BadPath)?;
    Ok(())
}

/// RFC 9112 §3.2: a request-target is origin-form (`/path?query`), absolute-form, the
/// authority-form only for CONNECT (refused with 405: no tunnels to arbitrary places) and `*`
/// only for OPTIONS. Anything else (`GET x`) is refused, not forwarded as `/`.
fn check_target<B>(req: &Request<B>) -> Result<(), Failure> {
    let uri = req.uri();
    if uri.scheme().is_some() {
        return Ok(());
    }
    let method = req.method();
    match uri.path_and_query().map(|p| p.as_str()) {
        Some(p) if p.starts_with('/') => Ok(()),
        Some("*") if method == http::Method::OPTIONS => Ok(()),
        // A tunnel to an authority: not what a gateway to its own services does (HTTP/2's
        // extended CONNECT for WebSockets has a scheme and a path, and passed above).
        None | Some("") if method == http::Method::CONNECT => Err(Failure::ConnectRefused),
        _ => {
            tracing::info!(target = %uri, %method, "refused request-target");
            Err(Failure::BadTarget)
        }
    }
}

/// The host the client asked for (RFC 9112 §3.2): the target's authority when it has one,
/// else the one Host header. An HTTP/1.1 request without either, with more than one Host,
/// with an invalid one, or (HTTP/2) with a Host that differs from `:authority` is refused.
fn client_host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, Failure> {
    let mut all = req.headers().get_all(HOST).iter();
    let header = all.next();
    if all.next().is_some() {
        return Err(Failure::BadHost);
    }
    let authority = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let host = match (authority, header) {
        (Some(a), Some(h)) if req.version() == Version::HTTP_2 && a != h => {
            return Err(Failure::BadHost)
        }
        (Some(a), _) => Some(a),
        (None, Some(h)) => Some(h.clone()),
        (None, None) if req.version() == Version::HTTP_11 => return Err(Failure::BadHost),
        (None, None) => None,
    };
    match host {
        Some(h) if !valid_host(h.as_bytes()) => Err(Failure::BadHost),
        h => Ok(h),
    }
}

/// The host name the client asked for, without its port.
pub fn host_name(host: Option<&HeaderValue>) -> &str {
    host.and_then(|h| h.to_str().ok())
        .map(strip_port)
        .unwrap_or("")
}

fn hash_key(source: &HashSource, view: &RequestView<'_>, client: &HeaderValue) -> Vec<u8> {
    match source {
        HashSource::None => Vec::new(),
        HashSource::ClientIp => client.as_bytes().to_vec(),
        HashSource::Header(h) => match view.headers.get(h) {
            Some(v) => v.as_bytes().to_vec(),
            None => client.as_bytes().to_vec(),
        },
        HashSource::Cookie(name) => match cookie(view.headers, name) {
            Some(v) => v.as_bytes().to_vec(),
            None => client.as_bytes().to_vec(),
        },
        HashSource::Query(name) => match query_arg(view.query, name) {
            Some(v) => v.as_bytes().to_vec(),
            None => client.as_bytes().to_vec(),
        },
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("127.0.0.1:1"), "127.0.0.1");
    }
}
