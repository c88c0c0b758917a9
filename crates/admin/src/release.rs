//! Release endpoints: switching a blue-green service (`POST /services/{id}/switch`, one
//! atomic, audited revision), and what a plugin instance reports (`GET
//! /plugins/{id}/report`, e.g. traffic-mirror's differences).

use crate::write::{self, Rejected};
use crate::{auth, error, ErrorBody, Kind, Shared};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gatehouse_model::{Config, Service, Side};
use serde::Deserialize;

/// `POST /services/{id}/switch`: which side to make active (default: the other one).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchTo {
    /// `blue` or `green`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub to: Option<Side>,
}

/// Makes the other side (or `to`) of service `id`'s blue-green pair active.
pub(crate) fn switch(
    config: &mut Config,
    id: &str,
    body: &[u8],
) -> Result<(String, Option<Service>, Option<Service>), Rejected> {
    let ask: SwitchTo = match body.iter().all(u8::is_ascii_whitespace) {
        true => SwitchTo::default(),
        false => serde_json::from_slice(body).map_err(|e| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("body: {e} (expected {{\"to\": \"blue\"|\"green\"}})"),
            ))
        })?,
    };
    let Some(service) = config.services.iter_mut().find(|s| s.name == id) else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("no service named {id:?}"),
        )));
    };
    let before = service.clone();
    let Some(bg) = service.blue_green.as_mut() else {
        return Err(Box::new(error(
            StatusCode::CONFLICT,
            format!("service {id:?} has no blue_green upstreams to switch between"),
        )));
    };
    bg.active = ask.to.unwrap_or(bg.active.other());
    Ok((id.to_owned(), Some(before), Some(service.clone())))
}

#[utoipa::path(post, path = "/services/{id}/switch", tag = "services",
    params(("id" = String, Path, description = "The service's name")),
    request_body(content = SwitchTo, description = "Optional: `{\"to\": \"green\"}`; without it the other side becomes active"),
    responses(
        (status = 200, description = "Switched and live: the service", body = Object),
        (status = 400, description = "The body is not `{\"to\": \"blue\"|\"green\"}`, or the switched config does not validate", body = ErrorBody),
        (status = 404, description = "No such service", body = ErrorBody),
        (status = 405, description = "Read-only (the gateway runs from a file)", body = ErrorBody),
        (status = 409, description = "The service has no blue_green pair, or another write won the race", body = ErrorBody),
    ))]
pub(crate) async fn switch_service(
    State(c): State<Shared>,
    axum::Extension(who): axum::Extension<auth::Who>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    write::write(&c, Kind::Services, write::Op::Switch(id), &body, &who.0).await
}

#[utoipa::path(get, path = "/plugins/{id}/report", tag = "plugins",
    params(("id" = String, Path, description = "The instance's id, `name:scope` (e.g. `traffic-mirror:route=api`)")),
    responses(
        (status = 200, description = "What the instance reports on this node (traffic-mirror: copies and the latest differences)", body = Object),
        (status = 404, description = "No such instance, or it reports nothing", body = ErrorBody),
    ))]
pub(crate) async fn plugin_report(State(c): State<Shared>, Path(id): Path<String>) -> Response {
    let Some((name, scope)) = id.split_once(':') else {
        return error(
            StatusCode::NOT_FOUND,
            format!("{id:?} is not a plugin id (name:scope)"),
        );
    };
    match c.view.plugin_report(name, scope) {
        Some(r) => Json(r).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no enabled plugin {id:?} with a report"),
        ),
    }
}
