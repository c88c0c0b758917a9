//! The release stage, between the plugins and the upstream request: what release plugins
//! chose (another service, a variant, a new body) applied to the routed request, the
//! request's colour resolved to its upstream's targets of that colour, and the request copied
//! for plugins that want copies of the exchange (mirroring).

use super::replay::Outgoing;
use super::request_body::ClientBody;
use super::state::{RequestState, Routed};
use crate::errors::Failure;
use gatehouse_plugin_api::{NewBody, RequestFacts, ServiceChoice, Variant};
use gatehouse_runtime::snapshot::Snapshot;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::HeaderValue;

/// Puts the request's facts (id, route captures) where plugins declaring `Needs::facts`
/// read them.
pub fn facts(st: &mut RequestState<'_>, routed: &mut Routed<'_>) {
    st.plugins.state.insert(RequestFacts {
        request_id: Some(st.request_id.clone()),
        captures: std::mem::take(&mut routed.captures),
    });
}

/// Applies what the route's plugins chose: another service, a variant, a new body.
pub fn apply<'s>(
    st: &mut RequestState<'_>,
    snap: &'s Snapshot,
    routed: &mut Routed<'s>,
    parts: &mut Parts,
    body: ClientBody,
) -> Result<ClientBody, Failure> {
    if let Some(ServiceChoice(to)) = st.plugins.state.remove::<ServiceChoice>() {
        switch_service(snap, routed, to.name(), parts)?;
    }
    if let Some(v) = &st.plugins.variant {
        st.rec.variant = routed
            .route
            .variant(&v.name)
            .and_then(|i| u16::try_from(i).ok());
    }
    match st.plugins.state.remove::<NewBody>() {
        Some(NewBody(bytes)) => {
            parts.headers.remove(TRANSFER_ENCODING);
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            Ok(ClientBody::Read(bytes))
        }
        None => Ok(body),
    }
}

/// The route's requests go to service `name` instead: its upstream, timeouts and retries;
/// the path routing made keeps its route part, under the new service's URL path.
fn switch_service<'s>(
    snap: &'s Snapshot,
    routed: &mut Routed<'s>,
    name: &str,
    parts: &Parts,
) -> Result<(), Failure> {
    let Some(service) = snap.services.iter().find(|s| &*s.name == name) else {
        tracing::warn!(route = %routed.route.name, service = name, "a plugin chose a service the snapshot does not have");
        return Err(Failure::NoTarget);
    };
    let (old, new) = (&*routed.service.path_prefix, &*service.path_prefix);
    if old != new {
        if let Some(p) = routed.new_path.as_deref() {
            let rest = p.strip_prefix(old).unwrap_or(p);
            routed.new_path = Some(format!("{new}{rest}"));
        } else if !new.is_empty() {
            // The client's own path went unchanged; it now goes under the new prefix.
            let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            routed.new_path = Some(format!("{new}{pq}"));
        }
    }
    routed.service = service;
    routed.upstream = &service.upstream;
    Ok(())
}

/// A coloured request (by the client, or by a plugin) goes to its upstream's targets of
/// that colour when it has some.
#[inline]
pub fn color<'s>(snap: &Snapshot, routed: &mut Routed<'s>, headers: &http::HeaderMap) {
    let upstream: &'s gatehouse_runtime::snapshot::UpstreamEntry = routed.upstream;
    if upstream.colors.is_empty() {
        return;
    }
    if let Some(u) = upstream.for_color(headers.get(&snap.color_header)) {
        routed.upstream = u;
    }
}

/// The response header naming the request's variant, when its rule asked for one.
pub fn variant_header(st: &RequestState<'_>, headers: &mut http::HeaderMap) {
    if let Some(Variant {
        name,
        header: Some(h),
    }) = &st.plugins.variant
    {
        if let Ok(v) = HeaderValue::from_str(name) {
            headers.insert(h.clone(), v);
        }
    }
}

/// Hands the request as it goes upstream to the finale's copies, when the route wants them.
pub fn copy_request(st: &mut RequestState<'_>, out: &mut Outgoing) {
    let Some(finale) = st.finale.as_mut() else {
        return;
    };
    let Some(cap) = finale.copy_cap() else {
        return;
    };
    if !st.plugins.keep_copies {
        return;
    }
    if let Some((head, body)) = out.copy_for_log(cap) {
        finale.copy_request(head, body);
    }
}

/// A plugin changed the request's URI. A new path goes upstream as it is; a new query
/// alone keeps the path routing made (a rewrite, a stripped prefix) with the new query.
pub fn uri_changed(routed: &mut Routed<'_>, original: &http::Uri, now: &http::Uri) {
    let Some(path) = routed.new_path.as_deref() else {
        return;
    };
    if now.path() != original.path() {
        routed.new_path = None;
        return;
    }
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    routed.new_path = Some(match now.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    });
}
