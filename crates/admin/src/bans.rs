//! Ban endpoints: the node's ban list (shared by every node of the same Redis) listed,
//! added to and lifted: `GET /bans`, `POST /bans`, `DELETE /bans/{subject}`.

use crate::{error, ErrorBody, Shared};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gatehouse_plugin_api::bans::{bans, Ban, Subject};
use serde::Deserialize;
use std::time::Duration;

/// The longest ban the API gives.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// `POST /bans`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBan {
    /// `ip:203.0.113.7`, `cidr:198.51.100.0/24`, `consumer:alice` or `key:API-KEY`.
    pub subject: String,
    /// How long: `10m`, `24h` (1s to a year).
    pub ttl: String,
    #[serde(default)]
    pub reason: String,
}

/// A ban as listed.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct BanOut {
    pub subject: String,
    /// When it ends, Unix milliseconds.
    pub until_ms: u64,
    pub reason: String,
    /// Who banned: `admin`, `waf`, `rate-limit`, `cc`.
    pub source: String,
}

impl From<Ban> for BanOut {
    fn from(b: Ban) -> Self {
        BanOut {
            subject: b.subject,
            until_ms: b.until_ms,
            reason: b.reason,
            source: b.source,
        }
    }
}

#[utoipa::path(get, path = "/bans", tag = "bans",
    responses((status = 200, description = "The bans in force, soonest to end first", body = [BanOut])))]
pub(crate) async fn list(State(_c): State<Shared>) -> Response {
    let out: Vec<BanOut> = bans().list().into_iter().map(BanOut::from).collect();
    Json(out).into_response()
}

#[utoipa::path(post, path = "/bans", tag = "bans",
    request_body(content = NewBan, description = "`{\"subject\": \"ip:203.0.113.7\", \"ttl\": \"1h\", \"reason\": \"scraping\"}`"),
    responses(
        (status = 201, description = "Banned (a longer ban already in force is kept and answered)", body = BanOut),
        (status = 400, description = "A field is wrong (the message names it)", body = ErrorBody),
    ))]
pub(crate) async fn add(State(_c): State<Shared>, body: axum::body::Bytes) -> Response {
    let b: NewBan = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let subject = match Subject::parse(&b.subject) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("subject: {e}")),
    };
    let ttl = match humantime::parse_duration(&b.ttl) {
        Ok(t) if (Duration::from_secs(1)..=MAX_TTL).contains(&t) => t,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("ttl: {:?} must be between 1s and 365d", b.ttl),
            )
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("ttl: {:?} is not a duration ({e}); write e.g. 10m", b.ttl),
            )
        }
    };
    let reason = if b.reason.is_empty() {
        "banned by an operator"
    } else {
        &b.reason
    };
    let ban = bans().add(&subject, ttl, reason, "admin");
    (StatusCode::CREATED, Json(BanOut::from(ban))).into_response()
}

#[utoipa::path(delete, path = "/bans/{subject}", tag = "bans",
    params(("subject" = String, Path, description = "`ip:203.0.113.7`, `cidr:10.0.0.0/8`, `consumer:alice` or `key:...`")),
    responses(
        (status = 204, description = "Lifted"),
        (status = 400, description = "Not a subject", body = ErrorBody),
        (status = 404, description = "No ban in force on it", body = ErrorBody),
    ))]
pub(crate) async fn lift(State(_c): State<Shared>, Path(subject): Path<String>) -> Response {
    let s = match Subject::parse(&subject) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("subject: {e}")),
    };
    if bans().lift(&s) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("no ban in force on {s}"))
    }
}
