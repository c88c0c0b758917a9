//! Admin writes in store mode: create, replace and delete entities. Every write goes the way
//! a file reload goes (validate → compile → swap) and is committed as a store revision in
//! between, so an invalid write changes nothing and a committed one is what runs.

use crate::schema::Body;
use crate::{error, Control, Kind, Source};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gatehouse_model::{Config, ConfigError};
use gatehouse_store::{Change, StoreError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;

/// What a write does to one entity.
pub(crate) enum Op {
    /// POST: the entity must not exist yet.
    Create,
    /// PUT /kind/{id}: create or replace.
    Put(String),
    /// PATCH /kind/{id}: a JSON merge patch (RFC 7386) of an existing entity.
    Patch(String),
    Delete(String),
    /// POST /upstreams/{id}/targets: add one target (its address must be new).
    AddTarget(String),
    /// DELETE /upstreams/{id}/targets/{address}.
    RemoveTarget(String, String),
    /// POST /services/{id}/switch: the other side of a blue-green service (or the side
    /// the body names) becomes active.
    Switch(String),
}

/// An answer that ends a write early (boxed: a `Response` is large).
pub(crate) type Rejected = Box<Response>;

/// An entity's id, and what it was before and is after a change.
type Before<T> = (String, Option<T>, Option<T>);

/// The error body with per-field problems.
fn invalid(status: StatusCode, message: String, fields: BTreeMap<String, String>) -> Response {
    (
        status,
        Json(crate::ErrorBody {
            error: message,
            fields,
        }),
    )
        .into_response()
}

/// Parses `body` as one entity: first against the schema the spec publishes, then into the
/// model, naming the field that is wrong (`routes.paths[0]`).
fn parse<T: DeserializeOwned>(kind: Kind, body: &[u8]) -> Result<T, Rejected> {
    parse_as(Body::Entity(kind), kind.plural(), kind.singular(), body)
}

/// [`parse`] for any body: `of` picks the schema, `prefix` starts the field paths, `what`
/// names the thing in the error.
fn parse_as<T: DeserializeOwned>(
    of: Body,
    prefix: &str,
    what: &str,
    body: &[u8],
) -> Result<T, Rejected> {
    let reject = |fields: BTreeMap<String, String>| {
        Box::new(invalid(
            StatusCode::BAD_REQUEST,
            format!("invalid {what}"),
            fields,
        ))
    };
    let value = json_body(body).map_err(&reject)?;
    let broken = crate::schema::violations(of, &value);
    if !broken.is_empty() {
        return Err(reject(broken));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." {
            prefix.to_string()
        } else {
            format!("{prefix}.{path}")
        };
        reject(BTreeMap::from([(key, e.inner().to_string())]))
    })
}

/// The body as JSON, or the field map that says it is not.
fn json_body(body: &[u8]) -> Result<serde_json::Value, BTreeMap<String, String>> {
    serde_json::from_slice(body)
        .map_err(|e| BTreeMap::from([("body".to_owned(), format!("not JSON: {e}"))]))
}

/// Applies `op` to `list`: returns what the entity was before and is after.
fn change_list<T: DeserializeOwned + Serialize + Clone>(
    kind: Kind,
    list: &mut Vec<T>,
    id_of: impl Fn(&T) -> String,
    op: &Op,
    body: &[u8],
) -> Result<Before<T>, Rejected> {
    let position = |list: &Vec<T>, id: &str| list.iter().position(|x| id_of(x) == id);
    match op {
        Op::AddTarget(id) | Op::RemoveTarget(id, _) => Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("no {} named {id:?} has targets", kind.singular()),
        ))),
        Op::Switch(id) => Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("no {} named {id:?} can be switched", kind.singular()),
        ))),
        Op::Delete(id) => match position(list, id) {
            Some(i) => Ok((id.clone(), Some(list.remove(i)), None)),
            None => Err(Box::new(error(
                StatusCode::NOT_FOUND,
                format!("no {} named {id:?}", kind.singular()),
            ))),
        },
        Op::Create => {
            let item: T = parse(kind, body)?;
            let id = id_of(&item);
            if position(list, &id).is_some() {
                return Err(Box::new(error(
                    StatusCode::CONFLICT,
                    format!("a {} named {id:?} already exists", kind.singular()),
                )));
            }
            list.push(item.clone());
            Ok((id, None, Some(item)))
        }
        Op::Patch(id) => {
            let Some(i) = position(list, id) else {
                return Err(Box::new(error(
                    StatusCode::NOT_FOUND,
                    format!("no {} named {id:?}", kind.singular()),
                )));
            };
            let merged = merge_patch(kind, &list[i], body)?;
            let item: T = parse(kind, &merged)?;
            if id_of(&item) != *id {
                return Err(Box::new(error(
                    StatusCode::BAD_REQUEST,
                    format!("a patch cannot rename a {}: use PUT", kind.singular()),
                )));
            }
            let before = std::mem::replace(&mut list[i], item.clone());
            Ok((id.clone(), Some(before), Some(item)))
        }
        Op::Put(id) => {
            let item: T = parse(kind, body)?;
            if id_of(&item) != *id {
                return Err(Box::new(error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the body names {} {:?}, the path {id:?}",
                        kind.singular(),
                        id_of(&item)
                    ),
                )));
            }
            match position(list, id) {
                Some(i) => {
                    let before = std::mem::replace(&mut list[i], item.clone());
                    Ok((id.clone(), Some(before), Some(item)))
                }
                None => {
                    list.push(item.clone());
                    Ok((id.clone(), None, Some(item)))
                }
            }
        }
    }
}

/// `current` with the JSON merge patch in `body` applied (RFC 7386: an object merges key by
/// key, `null` removes a key, anything else replaces), as the body of a PUT.
fn merge_patch<T: Serialize>(kind: Kind, current: &T, body: &[u8]) -> Result<Vec<u8>, Rejected> {
    let patch = json_body(body).map_err(|fields| {
        Box::new(invalid(
            StatusCode::BAD_REQUEST,
            format!("invalid {} patch", kind.singular()),
            fields,
        ))
    })?;
    let mut doc = serde_json::to_value(current)
        .map_err(|e| Box::new(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())))?;
    json_patch::merge(&mut doc, &patch);
    serde_json::to_vec(&doc)
        .map_err(|e| Box::new(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())))
}

type Changed = (String, Option<serde_json::Value>, Option<serde_json::Value>);

fn apply_op(config: &mut Config, kind: Kind, op: &Op, body: &[u8]) -> Result<Changed, Rejected> {
    fn json<T: Serialize>(r: (String, Option<T>, Option<T>)) -> Changed {
        let v = |x: Option<T>| x.and_then(|x| serde_json::to_value(x).ok());
        (r.0, v(r.1), v(r.2))
    }
    if let (Kind::Upstreams, Op::AddTarget(id) | Op::RemoveTarget(id, _)) = (kind, op) {
        return change_targets(config, id, op, body).map(json);
    }
    if let (Kind::Services, Op::Switch(id)) = (kind, op) {
        return crate::release::switch(config, id, body).map(json);
    }
    Ok(match kind {
        Kind::Routes => json(change_list(
            kind,
            &mut config.routes,
            |r| r.name.clone(),
            op,
            body,
        )?),
        Kind::Services => json(change_list(
            kind,
            &mut config.services,
            |s| s.name.clone(),
            op,
            body,
        )?),
        Kind::Upstreams => json(change_list(
            kind,
            &mut config.upstreams,
            |u| u.name.clone(),
            op,
            body,
        )?),
        Kind::Consumers => json(change_list(
            kind,
            &mut config.consumers,
            |c| c.username.clone(),
            op,
            body,
        )?),
        Kind::Plugins => json(change_list(
            kind,
            &mut config.plugins,
            crate::plugin_id,
            op,
            body,
        )?),
        Kind::Certificates => json(change_list(
            kind,
            &mut config.certificates,
            |c| c.name.clone(),
            op,
            body,
        )?),
    })
}

/// Adds or removes one target of upstream `id` (Kong's `/upstreams/{id}/targets`): the
/// upstream before and after, so the change is audited and validated as an upstream update.
fn change_targets(
    config: &mut Config,
    id: &str,
    op: &Op,
    body: &[u8],
) -> Result<Before<gatehouse_model::Upstream>, Rejected> {
    let Some(upstream) = config.upstreams.iter_mut().find(|u| u.name == id) else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("no upstream named {id:?}"),
        )));
    };
    let before = upstream.clone();
    match op {
        Op::AddTarget(_) => {
            let target: gatehouse_model::Target =
                parse_as(Body::Target, "targets", "target", body)?;
            if upstream.targets.iter().any(|t| t.address == target.address) {
                return Err(Box::new(error(
                    StatusCode::CONFLICT,
                    format!("upstream {id:?} already has a target {:?}", target.address),
                )));
            }
            upstream.targets.push(target);
        }
        Op::RemoveTarget(_, address) => {
            let Some(i) = upstream.targets.iter().position(|t| t.address == *address) else {
                return Err(Box::new(error(
                    StatusCode::NOT_FOUND,
                    format!("upstream {id:?} has no target {address:?}"),
                )));
            };
            upstream.targets.remove(i);
        }
        _ => {}
    }
    Ok((id.to_owned(), Some(before), Some(upstream.clone())))
}

/// Commits `config` as the revision after `parent` and makes it live: the one way every
/// admin write (entity, whole config, rollback) ends. `Err`: the answer to give (409 when
/// another write won the race, 503 when the store is down).
pub(crate) async fn commit_and_apply(
    c: &Control,
    store: &gatehouse_store::Store,
    parent: i64,
    config: Config,
    change: Change<'_>,
) -> Result<i64, Response> {
    let revision = match store.commit(parent, &config, change).await {
        Ok(r) => r,
        Err(e @ StoreError::Conflict(_)) => return Err(error(StatusCode::CONFLICT, e.to_string())),
        Err(e) => return Err(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    };
    match c.view.apply(config) {
        Ok(()) => c.serving(revision),
        // Validated before the commit, so this is a bug, not bad input: say so loudly.
        Err(errors) => tracing::error!(revision, ?errors, "a committed revision did not compile"),
    }
    Ok(revision)
}

/// What the audit log says a write did: `update routes/r`, `add target a:1 to upstreams/u`,
/// `switch services/shop to green`.
fn audit_message(op: &Op, action: &str, entity: &str, after: Option<&serde_json::Value>) -> String {
    match op {
        Op::AddTarget(_) => {
            let address = after
                .and_then(|u| {
                    u.get("targets")?
                        .as_array()?
                        .last()?
                        .get("address")
                        .cloned()
                })
                .unwrap_or_default();
            format!("add target {address} to {entity}")
        }
        Op::RemoveTarget(_, address) => format!("remove target {address:?} from {entity}"),
        Op::Switch(_) => {
            let active = after
                .and_then(|s| s.get("blue_green")?.get("active")?.as_str())
                .unwrap_or("?");
            format!("switch {entity} to {active}")
        }
        _ => format!("{action} {entity}"),
    }
}

/// Runs one write: in a store, validated, committed, then live.
pub(crate) async fn write(c: &Control, kind: Kind, op: Op, body: &[u8], who: &str) -> Response {
    let Source::Store(store) = &c.source else {
        return crate::read_only().await;
    };
    // One write at a time on this node; the store's revision check covers other nodes.
    let _serial = c.writes.lock().await;
    let (parent, mut config) = match store.latest().await {
        Ok(x) => x,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let previous = config.clone();
    let (id, before, after) = match apply_op(&mut config, kind, &op, body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let mut errors = c.view.seal(&mut config, &previous);
    // What is stored, and what the audit log and the answer show: sealed, then redacted.
    let after = match (kind, &after) {
        (Kind::Consumers, Some(_)) => entity_json(&config, kind, &id),
        _ => after,
    };
    let (before, after) = (c.shown_entity(kind, before), c.shown_entity(kind, after));
    if errors.is_empty() {
        errors = c.view.check(&config);
    }
    if !errors.is_empty() {
        // Problems of the entity written are named relative to it (`routes.paths[0]`);
        // others (a route left pointing at a deleted service) keep their full path.
        let index = entity_index(&config, kind, &id);
        let status = if matches!(op, Op::Delete(_) | Op::RemoveTarget(..)) {
            // Deleting something others point at.
            StatusCode::CONFLICT
        } else {
            StatusCode::BAD_REQUEST
        };
        let message = match (&op, referrers(&config, &errors)) {
            (Op::Delete(_), users) if !users.is_empty() => format!(
                "{} {id:?} is still used by {}",
                kind.singular(),
                users.join(", ")
            ),
            _ => format!("the change to {} {id:?} does not validate", kind.singular()),
        };
        return invalid(status, message, fields_of(&errors, kind, index));
    }
    let action = match (&before, &after) {
        (None, Some(_)) => "create",
        (Some(_), Some(_)) => "update",
        _ => "delete",
    };
    let entity = format!("{}/{id}", kind.plural());
    let message = audit_message(&op, action, &entity, after.as_ref());
    let change = Change {
        author: who,
        message: &message,
        action,
        entity: &entity,
        before,
        after: after.clone(),
    };
    if let Err(r) = commit_and_apply(c, store, parent, config, change).await {
        return r;
    }
    match op {
        Op::AddTarget(_) => {
            // The target as created: the upstream's last.
            let target = after
                .as_ref()
                .and_then(|u| u.get("targets")?.as_array()?.last().cloned());
            return (StatusCode::CREATED, Json(target)).into_response();
        }
        Op::RemoveTarget(..) => return StatusCode::NO_CONTENT.into_response(),
        _ => {}
    }
    let status = if action == "create" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    match after {
        Some(v) => (status, Json(v)).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// Where the entity `id` of `kind` sits in its list.
fn entity_index(config: &Config, kind: Kind, id: &str) -> Option<usize> {
    match kind {
        Kind::Routes => config.routes.iter().position(|r| r.name == id),
        Kind::Services => config.services.iter().position(|s| s.name == id),
        Kind::Upstreams => config.upstreams.iter().position(|u| u.name == id),
        Kind::Consumers => config.consumers.iter().position(|c| c.username == id),
        Kind::Plugins => config
            .plugins
            .iter()
            .position(|p| crate::plugin_id(p) == id),
        Kind::Certificates => config.certificates.iter().position(|c| c.name == id),
    }
}

/// The entities the errors' paths point into (`routes[2].service` → `route "api"`): who still
/// refers to what a delete removed.
fn referrers(config: &Config, errors: &[ConfigError]) -> Vec<String> {
    let mut out: Vec<String> = errors
        .iter()
        .filter_map(|e| {
            let (list, rest) = e.path.split_once('[')?;
            let i: usize = rest.split_once(']')?.0.parse().ok()?;
            let name = match list {
                "routes" => format!("route {:?}", config.routes.get(i)?.name),
                "services" => format!("service {:?}", config.services.get(i)?.name),
                "upstreams" => format!("upstream {:?}", config.upstreams.get(i)?.name),
                "consumers" => format!("consumer {:?}", config.consumers.get(i)?.username),
                "plugins" => format!("plugin {:?}", crate::plugin_id(config.plugins.get(i)?)),
                _ => return None,
            };
            Some(name)
        })
        .collect();
    out.dedup();
    out
}

fn fields_of(errors: &[ConfigError], kind: Kind, index: Option<usize>) -> BTreeMap<String, String> {
    let own = index.map(|i| format!("{}[{i}]", kind.plural()));
    errors
        .iter()
        .map(|e| {
            let path = match own.as_deref().and_then(|p| e.path.strip_prefix(p)) {
                Some(rest) => format!("{}{rest}", kind.plural()),
                None => e.path.clone(),
            };
            (path, e.message.clone())
        })
        .collect()
}

/// Replaces every entity at once (`gatehouse config apply`): one revision for the whole
/// change. Node settings in the body (listen, admin, node, redis) are ignored: a store holds
/// entities only.
pub(crate) async fn replace_all(c: &Control, body: &[u8], who: &str) -> Response {
    let Source::Store(store) = &c.source else {
        return crate::read_only().await;
    };
    let value = match json_body(body) {
        Ok(v) => v,
        Err(fields) => return invalid(StatusCode::BAD_REQUEST, "invalid config".into(), fields),
    };
    let broken = crate::schema::violations(Body::Config, &value);
    if !broken.is_empty() {
        return invalid(StatusCode::BAD_REQUEST, "invalid config".into(), broken);
    }
    let new: Config = match serde_path_to_error::deserialize(value) {
        Ok(c) => c,
        Err(e) => {
            let mut fields = BTreeMap::new();
            fields.insert(e.path().to_string(), e.inner().to_string());
            return invalid(StatusCode::BAD_REQUEST, "invalid config".into(), fields);
        }
    };
    let entities = Config {
        routes: new.routes,
        services: new.services,
        upstreams: new.upstreams,
        consumers: new.consumers,
        plugins: new.plugins,
        // Cluster-wide: every node serves the same certificates (and one orders ACME ones).
        certificates: new.certificates,
        acme: new.acme,
        ..Config::default()
    };
    let _serial = c.writes.lock().await;
    let (parent, current) = match store.latest().await {
        Ok(x) => x,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let mut entities = entities;
    let mut errors = c.view.seal(&mut entities, &current);
    if errors.is_empty() {
        errors = c.view.check(&entities);
    }
    if !errors.is_empty() {
        let fields = errors.into_iter().map(|e| (e.path, e.message)).collect();
        return invalid(
            StatusCode::BAD_REQUEST,
            "the config does not validate".into(),
            fields,
        );
    }
    let change = Change {
        author: who,
        message: "apply a whole config",
        action: "apply",
        entity: "config",
        before: serde_json::to_value(shown(c, current)).ok(),
        after: serde_json::to_value(shown(c, entities.clone())).ok(),
    };
    let revision = match commit_and_apply(c, store, parent, entities, change).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    (
        StatusCode::OK,
        Json(serde_json::json!({ "revision": revision })),
    )
        .into_response()
}

/// `config` without write-only secrets (for the audit log).
fn shown(c: &Control, mut config: Config) -> Config {
    c.view.redact(&mut config);
    config
}

/// Entity `id` of `config` as JSON.
fn entity_json(config: &Config, kind: Kind, id: &str) -> Option<serde_json::Value> {
    let i = entity_index(config, kind, id)?;
    match kind {
        Kind::Routes => serde_json::to_value(config.routes.get(i)?).ok(),
        Kind::Services => serde_json::to_value(config.services.get(i)?).ok(),
        Kind::Upstreams => serde_json::to_value(config.upstreams.get(i)?).ok(),
        Kind::Consumers => serde_json::to_value(config.consumers.get(i)?).ok(),
        Kind::Plugins => serde_json::to_value(config.plugins.get(i)?).ok(),
        Kind::Certificates => serde_json::to_value(config.certificates.get(i)?).ok(),
    }
}
