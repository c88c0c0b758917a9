//! Discovery endpoints: an upstream's live targets with where each came from, and
//! self-registration with a TTL (`PUT /upstreams/{id}/targets/{address}` with `ttl`,
//! repeated as the heartbeat). In store mode a registration is written to the store, so
//! every node serves it; from a file it lives on this node only.

use crate::{error, page, ErrorBody, Page, Shared, Source};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The shortest and longest TTL a registration may ask for.
const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(3600);

/// `PUT /upstreams/{id}/targets/{address}`: a registration or its heartbeat.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// How long the target stays without another PUT: `10s`, `1m` (1s to 1h).
    pub ttl: String,
    /// Relative share of requests (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Free-form data shown with the target.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

fn one() -> u32 {
    1
}

/// A registration as stored and answered.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Registered {
    pub upstream: String,
    pub address: String,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// When it goes unless heartbeated, Unix milliseconds.
    pub expires_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Parses and checks a registration body; `Err` names the field.
fn parse(body: &[u8]) -> Result<(Register, Duration), String> {
    let r: Register = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    let ttl = humantime::parse_duration(&r.ttl)
        .map_err(|e| format!("ttl: {:?} is not a duration ({e}); write e.g. 10s", r.ttl))?;
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(format!("ttl: {:?} must be between 1s and 1h", r.ttl));
    }
    if r.weight == 0 || r.weight > 65535 {
        return Err("weight: must be between 1 and 65535".into());
    }
    for (k, v) in &r.labels {
        let printable = v.bytes().all(|b| (0x20..0x7f).contains(&b));
        if k.is_empty() || k.len() > 64 || v.is_empty() || v.len() > 128 || !printable {
            return Err(format!(
                "labels.{k}: keys are 1-64 bytes, values 1-128 printable ASCII"
            ));
        }
    }
    Ok((r, ttl))
}

#[utoipa::path(put, path = "/upstreams/{id}/targets/{address}", tag = "upstreams",
    params(
        ("id" = String, Path, description = "The upstream's name"),
        ("address" = String, Path, description = "The target's `host:port`"),
    ),
    request_body(content = Register, description = "`{\"ttl\": \"10s\", \"weight\": 1}`: registers the target, or heartbeats it"),
    responses(
        (status = 200, description = "Registered (or heartbeated) and live until `expires_ms`", body = Registered),
        (status = 400, description = "A field is wrong (the message names it)", body = ErrorBody),
        (status = 404, description = "No such upstream", body = ErrorBody),
        (status = 503, description = "The store is unreachable: nothing changed", body = ErrorBody),
    ))]
pub(crate) async fn register_target(
    State(c): State<Shared>,
    Path((id, address)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let (r, ttl) = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = gatehouse_model::check_host_port(&address) {
        return error(StatusCode::BAD_REQUEST, format!("address: {e}"));
    }
    if !c.view.config().upstreams.iter().any(|u| u.name == id) {
        return error(StatusCode::NOT_FOUND, format!("no upstream named {id:?}"));
    }
    let reg = Registered {
        upstream: id,
        address,
        weight: r.weight,
        labels: r.labels,
        metadata: r.metadata,
        expires_ms: now_ms() + ttl.as_millis() as u64,
    };
    if let Source::Store(store) = &c.source {
        let data = serde_json::to_string(&reg).unwrap_or_default();
        let stored = store
            .register(&reg.upstream, &reg.address, &data, reg.expires_ms as i64)
            .await;
        if let Err(e) = stored {
            return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
    }
    match c.view.register(&reg) {
        Ok(()) => Json(reg).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// Removes `address`'s registration from `upstream` (store and node); `Some` with the
/// answer when there was one, `None` when the target is not a registration.
pub(crate) async fn deregister(c: &Shared, upstream: &str, address: &str) -> Option<Response> {
    let mut had = false;
    if let Source::Store(store) = &c.source {
        match store.deregister(upstream, address).await {
            Ok(h) => had = h,
            Err(e) => return Some(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        }
    }
    had |= c.view.deregister(upstream, address);
    had.then(|| StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/upstreams/{id}/targets", tag = "upstreams",
    params(
        ("id" = String, Path, description = "The upstream's name"),
        ("offset" = Option<usize>, Query, description = "Targets to skip (default 0)"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "Page size, 1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "A page of the upstream's targets on this node: configured, discovered and registered, each with its `source`", body = Page),
        (status = 400, description = "Bad pagination", body = ErrorBody),
        (status = 404, description = "No such upstream", body = ErrorBody),
    ))]
pub(crate) async fn list_targets(
    State(c): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let items = match c.view.targets(&id) {
        Some(items) => items,
        None => {
            let config = c.view.config();
            let Some(u) = config.upstreams.iter().find(|u| u.name == id) else {
                return error(StatusCode::NOT_FOUND, format!("no upstream named {id:?}"));
            };
            u.targets
                .iter()
                .filter_map(|t| serde_json::to_value(t).ok())
                .collect()
        }
    };
    match page(items, &q) {
        Ok(p) => Json(p).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// Store mode: the store's registrations, as a node applies them.
pub fn decode_registrations(rows: Vec<(String, String, String, i64)>) -> Vec<Registered> {
    rows.into_iter()
        .filter_map(|(upstream, address, data, _)| {
            let r: Result<Registered, _> = serde_json::from_str(&data);
            match r {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(upstream, address, error = %e, "a stored registration is unreadable; skipped");
                    None
                }
            }
        })
        .collect()
}
