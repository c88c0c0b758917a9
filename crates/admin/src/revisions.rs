//! Store mode's history: the revisions (each one a whole config plus the audit record of the
//! write that made it), the audit log as a filterable list of them, and rollback, which
//! commits an old revision's config as a new revision.

use crate::{error, ErrorBody, Shared, Source};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gatehouse_store::{Change, Revision, Store};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// The store, or (boxed: a `Response` is large) the answer for DB-less mode.
fn store(c: &crate::Control) -> Result<&Store, Box<Response>> {
    match &c.source {
        Source::Store(s) => Ok(s),
        Source::File(_) => Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "revisions and the audit log exist in store mode; in DB-less mode the file's \
             history is yours (e.g. Git)",
        ))),
    }
}

/// Revisions, newest first. `author`, `action` and `entity` filter; `before` pages.
#[utoipa::path(get, path = "/revisions", tag = "revisions",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "How many (default 50)"),
        ("before" = Option<i64>, Query, description = "Only revisions older than this id"),
    ),
    responses(
        (status = 200, description = "Revisions newest first, each with its audit record", body = Vec<Object>),
        (status = 400, description = "Bad paging", body = ErrorBody),
        (status = 404, description = "DB-less mode: no revisions", body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(c): State<Shared>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let store = match store(&c) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let number = |k: &str| q.get(k).map(|v| v.parse::<i64>());
    let limit = match number("limit") {
        None => 50,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "query argument limit: must be from 1 to 1000",
            )
        }
    };
    let before = match number("before") {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "query argument before: not an integer",
            )
        }
    };
    // Filters on the audit fields; fetched in one page, filtered here (admin traffic).
    let wanted = |r: &Revision| {
        ["author", "action", "entity"]
            .iter()
            .all(|k| match q.get(*k) {
                None => true,
                Some(v) => match *k {
                    "author" => &r.author == v,
                    "action" => &r.action == v,
                    _ => &r.entity == v,
                },
            })
    };
    match store.revisions(limit, before).await {
        Ok(list) => Json(list.into_iter().filter(wanted).collect::<Vec<_>>()).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// A revision id from a path: anything that is not one names no revision (404, not 400: a
/// huge number is still just a revision that does not exist).
fn revision_id(s: &str) -> Option<i64> {
    s.parse().ok()
}

#[derive(Serialize, ToSchema)]
pub(crate) struct RevisionWithConfig {
    #[schema(value_type = Object)]
    revision: Revision,
    #[schema(value_type = Object)]
    config: gatehouse_model::Config,
}

#[utoipa::path(get, path = "/revisions/{id}", tag = "revisions",
    params(("id" = i64, Path, description = "The revision")),
    responses(
        (status = 200, description = "The revision and the whole config it holds", body = RevisionWithConfig),
        (status = 404, description = "No such revision, or DB-less mode", body = ErrorBody),
    ))]
pub(crate) async fn one(State(c): State<Shared>, Path(id): Path<String>) -> Response {
    let store = match store(&c) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(id) = revision_id(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no revision {id}"));
    };
    match store.revision(id).await {
        Ok(Some((revision, mut config))) => {
            c.view.redact(&mut config);
            Json(RevisionWithConfig { revision, config }).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no revision {id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Committed {
    /// The new revision.
    revision: i64,
}

/// Makes revision `id`'s config live again, as a new revision.
#[utoipa::path(post, path = "/revisions/{id}/rollback", tag = "revisions",
    params(("id" = i64, Path, description = "The revision to go back to")),
    responses(
        (status = 201, description = "Committed and live as a new revision", body = Committed),
        (status = 404, description = "No such revision, or DB-less mode", body = ErrorBody),
        (status = 409, description = "It no longer compiles (e.g. a plugin it used is gone), or another write won the race", body = ErrorBody),
    ))]
pub(crate) async fn rollback(
    State(c): State<Shared>,
    axum::Extension(who): axum::Extension<crate::auth::Who>,
    Path(id): Path<String>,
) -> Response {
    let store = match store(&c) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(id) = revision_id(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no revision {id}"));
    };
    let _serial = c.writes.lock().await;
    let target = match store.revision(id).await {
        Ok(Some((_, config))) => config,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no revision {id}")),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let (parent, current) = match store.latest().await {
        Ok(x) => x,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let problems = c.view.check(&target);
    if !problems.is_empty() {
        let fields = problems.into_iter().map(|e| (e.path, e.message)).collect();
        return (
            StatusCode::CONFLICT,
            Json(ErrorBody {
                error: format!("revision {id} no longer compiles"),
                fields,
            }),
        )
            .into_response();
    }
    let message = format!("rollback to revision {id}");
    let change = Change {
        author: &who.0,
        message: &message,
        action: "rollback",
        entity: "config",
        before: serde_json::to_value(&current).ok(),
        after: serde_json::to_value(&target).ok(),
    };
    let revision = match crate::write::commit_and_apply(&c, store, parent, target, change).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    (StatusCode::CREATED, Json(Committed { revision })).into_response()
}

/// The audit log: every write, newest first, with who, when, what, and the entity before
/// and after. The same records as `/revisions`, by the name operators look for.
#[utoipa::path(get, path = "/audit", tag = "revisions",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "How many (default 50)"),
        ("before" = Option<i64>, Query, description = "Only records older than this revision"),
        ("author" = Option<String>, Query, description = "Only this author's writes"),
        ("action" = Option<String>, Query, description = "create, update, delete, rollback"),
        ("entity" = Option<String>, Query, description = "e.g. routes/api"),
    ),
    responses(
        (status = 200, description = "Audit records newest first", body = Vec<Object>),
        (status = 400, description = "Bad paging", body = ErrorBody),
        (status = 404, description = "DB-less mode: no audit log", body = ErrorBody),
    ))]
pub(crate) async fn audit(
    state: State<Shared>,
    query: Query<BTreeMap<String, String>>,
) -> Response {
    list(state, query).await
}
