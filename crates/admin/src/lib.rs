//! The admin REST API (axum) on the admin address: the running config's entities, `/status`,
//! Prometheus `/metrics`, and its own OpenAPI spec (`/openapi.json`, UI at `/docs`). While
//! the gateway runs from a file (DB-less mode) the file is the source of truth and the API is
//! read-only.

mod auth;
mod bans;
pub mod discovery;
mod metrics;
mod release;
mod revisions;
mod schema;
mod tls_listener;
mod write;

pub use auth::{hash_hex, new_token};

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gatehouse_model::{Config, ConfigError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

pub use metrics::Metrics;

/// Where the running config comes from.
#[derive(Clone)]
pub enum Source {
    /// DB-less mode: a YAML file, watched and reloaded; the API is read-only.
    File(std::path::PathBuf),
    /// A store (SQLite or PostgreSQL): the API writes to it.
    Store(Arc<gatehouse_store::Store>),
}

/// The running gateway as the admin API reads and drives it: one interface (implemented by
/// the node runner) instead of a closure per question.
pub trait GatewayView: Send + Sync + 'static {
    /// The config being served (the last one that compiled).
    fn config(&self) -> Config;
    /// Every problem compiling `config` would find; nothing is swapped.
    fn check(&self, config: &Config) -> Vec<ConfigError>;
    /// Compiles `config` and swaps it in; on error the running one keeps serving.
    fn apply(&self, config: Config) -> Result<(), Vec<ConfigError>>;
    /// The health of one upstream's targets on this node (`None`: no such upstream).
    fn health(&self, upstream: &str) -> Option<Vec<TargetHealth>>;
    /// Every configured circuit breaker.
    fn breakers(&self) -> Vec<BreakerStatus>;
    /// Fallback answers served, per route with a fallback: `(route, [cache, static,
    /// upstream])`.
    fn fallbacks(&self) -> Vec<(String, [u64; 3])>;
    /// Issues a decision-trace token valid for `ttl`: `(token, header to send it in)`;
    /// `None` when this gateway issues none.
    fn debug_token(&self, _ttl: std::time::Duration) -> Option<Result<(String, String), String>> {
        None
    }
    /// The data plane's metrics, read from the serving snapshot at each scrape.
    fn data_plane(&self) -> Vec<Box<dyn prometheus_client::collector::Collector>> {
        Vec::new()
    }
    /// Whether this node can serve traffic now; `Err` says why not.
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
    /// Makes `new` what is stored: secrets that are only checked become hashes, and a
    /// credential written back as read keeps its stored secret from `old`.
    fn seal(&self, _new: &mut Config, _old: &Config) -> Vec<ConfigError> {
        Vec::new()
    }
    /// Takes write-only secrets out of `config` before it is shown.
    fn redact(&self, _config: &mut Config) {}
    /// The certificates TLS listeners serve, with their expiry.
    fn certificates(&self) -> Vec<CertificateStatus> {
        Vec::new()
    }
    /// What the enabled plugin instance `name` at `scope` reports (see
    /// `Plugin::report`), if it does.
    fn plugin_report(&self, _name: &str, _scope: &str) -> Option<serde_json::Value> {
        None
    }
    /// Upstream `name`'s targets in use on this node, each with its `source` (`config`,
    /// `dns`, `etcd`, `registered`); `None`: read them from the config.
    fn targets(&self, _upstream: &str) -> Option<Vec<serde_json::Value>> {
        None
    }
    /// Registers (or heartbeats) a target on this node.
    fn register(&self, _r: &discovery::Registered) -> Result<(), String> {
        Err("this gateway takes no registrations".into())
    }
    /// Removes a registration on this node; whether there was one.
    fn deregister(&self, _upstream: &str, _address: &str) -> bool {
        false
    }
    /// Each discovery source's state (up, targets, last error), for `/status`.
    fn discovery(&self) -> Vec<serde_json::Value> {
        Vec::new()
    }
}

/// A served certificate, as `/status` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CertificateStatus {
    pub name: String,
    /// The server names it is chosen for.
    pub snis: Vec<String>,
    pub subject: String,
    /// When it stops being valid, Unix seconds.
    pub not_after: i64,
    /// Whole days left (negative once expired).
    pub expires_in_days: i64,
    pub default: bool,
}

/// What the admin API reads from the running gateway, and what the gateway reports to it.
pub struct Control {
    started: Instant,
    source: Source,
    revision: AtomicU64,
    /// The gateway this API serves.
    view: Arc<dyn GatewayView>,
    writes: tokio::sync::Mutex<()>,
    /// Serving the on-disk last-known-good snapshot: the store could not be read at start.
    from_snapshot: std::sync::atomic::AtomicBool,
    tokens: Arc<auth::Tokens>,
    pub metrics: Metrics,
}

/// One circuit breaker's state.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BreakerStatus {
    /// `route` or `target`.
    pub scope: &'static str,
    /// The route's name, or `upstream/address` for a target.
    pub name: String,
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
    /// Times it opened since the gateway started.
    pub opened_total: u64,
}

/// One target's health as this node sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetHealth {
    pub address: String,
    /// `healthy`, `unhealthy` (failed its active probes) or `ejected` (passive checks).
    pub state: &'static str,
    /// For an ejected target: milliseconds until it is tried again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_for_ms: Option<u64>,
    /// Ejections in a row (each lasts longer).
    pub ejections: u32,
}

/// `/upstreams/{id}/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamHealth {
    pub upstream: String,
    /// The targets this node uses (after subsetting).
    pub targets: Vec<TargetHealth>,
}

impl Control {
    /// File mode: the API reads `view`; the revision starts at 1 for the file's config.
    pub fn new(source: Source, view: Arc<dyn GatewayView>) -> Self {
        Control::build(source, view, 1)
    }

    /// Store mode: writes are checked and applied through `view`; `revision` is the store's
    /// revision being served.
    pub fn with_store(
        store: Arc<gatehouse_store::Store>,
        view: Arc<dyn GatewayView>,
        revision: i64,
    ) -> Self {
        Control::build(Source::Store(store), view, revision)
    }

    fn build(source: Source, view: Arc<dyn GatewayView>, revision: i64) -> Self {
        let mut metrics = Metrics::new();
        metrics.revision.set(revision);
        for collector in view.data_plane() {
            metrics.register_collector(collector);
        }
        Control {
            started: Instant::now(),
            source,
            revision: AtomicU64::new(revision.max(0) as u64),
            view,
            writes: tokio::sync::Mutex::new(()),
            from_snapshot: std::sync::atomic::AtomicBool::new(false),
            tokens: Arc::new(auth::Tokens::new(&[])),
            metrics,
        }
    }

    /// The config being served as the API shows it: write-only secrets left out.
    pub(crate) fn shown_config(&self) -> Config {
        let mut config = self.view.config();
        self.view.redact(&mut config);
        config
    }

    /// An entity's JSON as the API shows it: consumers, certificates and upstreams without
    /// their write-only secrets.
    pub(crate) fn shown_entity(
        &self,
        kind: Kind,
        value: Option<serde_json::Value>,
    ) -> Option<serde_json::Value> {
        let value = value?;
        fn through<T: serde::de::DeserializeOwned + Serialize>(
            c: &Control,
            value: serde_json::Value,
            list: fn(&mut Config) -> &mut Vec<T>,
        ) -> Option<serde_json::Value> {
            let Ok(item) = serde_json::from_value::<T>(value.clone()) else {
                return Some(value);
            };
            let mut config = Config::default();
            list(&mut config).push(item);
            c.view.redact(&mut config);
            list(&mut config)
                .pop()
                .and_then(|i| serde_json::to_value(i).ok())
        }
        match kind {
            Kind::Consumers => through(self, value, |c| &mut c.consumers),
            Kind::Certificates => through(self, value, |c| &mut c.certificates),
            Kind::Upstreams => through(self, value, |c| &mut c.upstreams),
            _ => Some(value),
        }
    }

    /// Requires one of `tokens` on every call (viewers read, admins also write).
    pub fn with_tokens(mut self, tokens: &[gatehouse_model::AdminToken]) -> Self {
        self.tokens = Arc::new(auth::Tokens::new(tokens));
        self
    }

    /// Whether the node serves its last-known-good snapshot instead of what the store holds.
    pub fn set_from_snapshot(&self, yes: bool) {
        self.from_snapshot.store(yes, Ordering::Release);
    }

    /// Store mode: revision `revision` is now served (written here or seen in the store).
    pub fn serving(&self, revision: i64) {
        self.revision
            .store(revision.max(0) as u64, Ordering::Release);
        self.metrics.revision.set(revision);
        self.metrics.reload(true);
    }

    /// A reload was tried: applied (a new revision) or rejected (the old one keeps serving).
    pub fn reloaded(&self, applied: bool) {
        if applied {
            let rev = self.revision.fetch_add(1, Ordering::AcqRel) + 1;
            self.metrics.revision.set(rev as i64);
        }
        self.metrics.reload(applied);
    }

    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }
}

pub(crate) type Shared = Arc<Control>;

/// The error body of every failed admin call.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    /// Per-field problems, by path (e.g. `routes.paths[0]`), for invalid input.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        error: message.into(),
        fields: BTreeMap::new(),
    };
    (status, Json(body)).into_response()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// The gateway's version.
    pub version: &'static str,
    /// Increases by one with every config that goes live.
    pub revision: u64,
    pub uptime_seconds: u64,
    /// `file` (DB-less mode) or `store`.
    pub mode: &'static str,
    pub store: StoreStatus,
    /// Every configured circuit breaker and its state.
    pub circuit_breakers: Vec<BreakerStatus>,
    /// The certificates served by SNI, soonest to expire first.
    pub certificates: Vec<CertificateStatus>,
    /// Each discovery source per upstream: `up`, `targets`, `error`, `since`.
    #[schema(value_type = Vec<Object>)]
    pub discovery: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StoreStatus {
    /// `file`, `sqlite` or `postgres`.
    pub kind: &'static str,
    /// The file's path, or the store's URL without credentials.
    pub location: String,
    pub healthy: bool,
    /// True while the node serves its on-disk last-known-good snapshot because the store
    /// could not be read when it started.
    pub from_snapshot: bool,
}

#[utoipa::path(get, path = "/status", tag = "status",
    responses((status = 200, description = "Version, config revision, uptime and store health", body = Status)))]
async fn status(State(c): State<Shared>) -> Json<Status> {
    let (mode, store) = match &c.source {
        Source::File(path) => (
            "file",
            StoreStatus {
                kind: "file",
                location: path.display().to_string(),
                healthy: true,
                from_snapshot: false,
            },
        ),
        Source::Store(s) => (
            "store",
            StoreStatus {
                kind: if s.url().starts_with("sqlite:") {
                    "sqlite"
                } else {
                    "postgres"
                },
                location: without_credentials(s.url()),
                healthy: s.latest_id().await.is_ok(),
                from_snapshot: c.from_snapshot.load(Ordering::Acquire),
            },
        ),
    };
    Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        revision: c.revision(),
        uptime_seconds: c.started.elapsed().as_secs(),
        mode,
        store,
        circuit_breakers: c.view.breakers(),
        certificates: {
            let mut certs = c.view.certificates();
            certs.sort_by_key(|c| c.not_after);
            certs
        },
        discovery: c.view.discovery(),
    })
}

/// `postgres://user:secret@host/db` → `postgres://host/db`.
fn without_credentials(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// `/ready`: whether this node serves traffic, for load-balancer health checks.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
    /// Why not, when not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    pub revision: u64,
}

#[utoipa::path(get, path = "/ready", tag = "status",
    description = "Needs no token, so load balancers can check a node: 200 when it has a config loaded and its listeners up, else 503.",
    responses(
        (status = 200, description = "This node serves traffic", body = Ready),
        (status = 503, description = "It does not, and why", body = Ready),
    ))]
async fn ready(State(c): State<Shared>) -> Response {
    let revision = c.revision();
    match c.view.ready() {
        Ok(()) => Json(Ready {
            ready: true,
            why: None,
            revision,
        })
        .into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Ready {
                ready: false,
                why: Some(why),
                revision,
            }),
        )
            .into_response(),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "status",
    responses((status = 200, description = "Prometheus metrics (OpenMetrics text)", content_type = "application/openmetrics-text", body = String)))]
async fn metrics(State(c): State<Shared>) -> Response {
    c.metrics.breakers(&c.view.breakers());
    c.metrics.fallbacks(&c.view.fallbacks());
    match c.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `POST /debug/tokens`: how long the token lives.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DebugTokenAsk {
    /// e.g. `10m`; default 10 minutes, at most 24 hours.
    #[serde(default)]
    ttl: Option<String>,
}

/// A decision-trace token.
#[derive(Debug, Serialize, ToSchema)]
struct DebugToken {
    token: String,
    /// Send the token in this request header to get the decision trace back in the
    /// `x-gatehouse-decision` response header.
    header: String,
    expires_in_seconds: u64,
}

#[utoipa::path(post, path = "/debug/tokens", tag = "status",
    request_body(content = Option<DebugTokenAsk>, description = "Optional: {\"ttl\": \"10m\"}"),
    responses(
        (status = 201, description = "A token for decision traces", body = DebugToken),
        (status = 400, description = "`ttl` is not a duration", body = ErrorBody),
        (status = 403, description = "Viewer tokens may not issue debug tokens", body = ErrorBody),
    ))]
async fn debug_token(State(c): State<Shared>, body: axum::body::Bytes) -> Response {
    let ask: DebugTokenAsk = if body.iter().all(u8::is_ascii_whitespace) {
        DebugTokenAsk { ttl: None }
    } else {
        // An object only: serde would also take a struct's fields as an array.
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v @ serde_json::Value::Object(_)) => match serde_json::from_value(v) {
                Ok(a) => a,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
            },
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "body: expected a JSON object such as {\"ttl\": \"10m\"}",
                )
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
        }
    };
    let ttl = match ask.ttl.as_deref().map(humantime::parse_duration) {
        None => std::time::Duration::from_secs(600),
        Some(Ok(d)) if !d.is_zero() && d <= std::time::Duration::from_secs(86400) => d,
        Some(Ok(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ttl: must be more than 0 and at most 24h",
            )
        }
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("ttl: {e}")),
    };
    let Some(issued) = c.view.debug_token(ttl) else {
        return error(StatusCode::NOT_FOUND, "this gateway issues no debug tokens");
    };
    match issued {
        Ok((token, header)) => (
            StatusCode::CREATED,
            Json(DebugToken {
                token,
                header,
                expires_in_seconds: ttl.as_secs(),
            }),
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[utoipa::path(put, path = "/config", tag = "config",
    request_body(content = Object, description = "A whole config, as the YAML file holds it; its node settings are ignored"),
    responses(
        (status = 200, description = "Committed as one revision and live: {revision}", body = Object),
        (status = 400, description = "Invalid: `fields` names each problem by path", body = ErrorBody),
        (status = 405, description = "Read-only (the gateway runs from a file)", body = ErrorBody),
        (status = 409, description = "Another write won the race", body = ErrorBody),
    ))]
async fn put_config(
    State(c): State<Shared>,
    axum::Extension(who): axum::Extension<auth::Who>,
    body: axum::body::Bytes,
) -> Response {
    write::replace_all(&c, &body, &who.0).await
}

#[utoipa::path(get, path = "/config", tag = "config",
    responses((status = 200, description = "The whole config being served, as the YAML file holds it (JSON)", body = Object)))]
async fn config(State(c): State<Shared>) -> Response {
    let mut config = c.shown_config();
    // Token hashes stay on the node.
    if let Some(a) = &mut config.admin {
        a.tokens.clear();
    }
    Json(config).into_response()
}

/// A page of entities.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page {
    /// Entities as in the YAML file.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
    /// How many match the filters, over all pages.
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
}

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Pagination plus filters: any other query argument must equal the entity's field of that
/// name (`/routes?service=users`, `/plugins?name=rate-limit&route=api`).
fn page(items: Vec<serde_json::Value>, query: &BTreeMap<String, String>) -> Result<Page, String> {
    let number = |key: &str, default: usize| match query.get(key) {
        None => Ok(default),
        // Integers too large for usize are still integers: they saturate (an offset past the
        // end is an empty page, a limit over 1000 is refused below).
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(v.parse::<usize>().unwrap_or(usize::MAX))
        }
        Some(v) => Err(format!(
            "query argument {key}: not a non-negative integer: {v:?}"
        )),
    };
    let offset = number("offset", 0)?;
    let limit = number("limit", DEFAULT_LIMIT)?;
    if limit == 0 || limit > MAX_LIMIT {
        return Err(format!(
            "query argument limit: must be from 1 to {MAX_LIMIT}"
        ));
    }
    let filters: Vec<(&String, &String)> = query
        .iter()
        .filter(|(k, _)| *k != "offset" && *k != "limit")
        .collect();
    let matching: Vec<serde_json::Value> = items
        .into_iter()
        .filter(|item| {
            filters
                .iter()
                .all(|(k, v)| item.get(k.as_str()).and_then(|f| f.as_str()) == Some(v.as_str()))
        })
        .collect();
    let total = matching.len();
    Ok(Page {
        items: matching.into_iter().skip(offset).take(limit).collect(),
        total,
        offset,
        limit,
    })
}

/// A plugin instance's id: its kind and scope, which are unique together, e.g.
/// `rate-limit:route=api` or `cors:global`.
pub(crate) fn plugin_id(p: &gatehouse_model::PluginInstance) -> String {
    format!("{}:{}", p.name, p.scope())
}

/// The entities of one kind, each with the id it is fetched by.
fn entities(config: &Config, kind: Kind) -> Vec<(String, serde_json::Value)> {
    fn by<T: Serialize>(
        items: &[T],
        id: impl Fn(&T) -> String,
    ) -> Vec<(String, serde_json::Value)> {
        items
            .iter()
            .filter_map(|i| Some((id(i), serde_json::to_value(i).ok()?)))
            .collect()
    }
    match kind {
        Kind::Routes => by(&config.routes, |r| r.name.clone()),
        Kind::Services => by(&config.services, |s| s.name.clone()),
        Kind::Upstreams => by(&config.upstreams, |u| u.name.clone()),
        Kind::Consumers => by(&config.consumers, |c| c.username.clone()),
        Kind::Certificates => by(&config.certificates, |c| c.name.clone()),
        Kind::Plugins => config
            .plugins
            .iter()
            .filter_map(|p| {
                let mut v = serde_json::to_value(p).ok()?;
                let id = plugin_id(p);
                if let Some(o) = v.as_object_mut() {
                    o.insert("id".into(), id.clone().into());
                }
                Some((id, v))
            })
            .collect(),
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Routes,
    Services,
    Upstreams,
    Consumers,
    Plugins,
    Certificates,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Routes => "routes",
            Kind::Services => "services",
            Kind::Upstreams => "upstreams",
            Kind::Consumers => "consumers",
            Kind::Plugins => "plugins",
            Kind::Certificates => "certificates",
        }
    }

    fn singular(self) -> &'static str {
        match self {
            Kind::Routes => "route",
            Kind::Services => "service",
            Kind::Upstreams => "upstream",
            Kind::Consumers => "consumer",
            Kind::Plugins => "plugin instance",
            Kind::Certificates => "certificate",
        }
    }
}

fn list(c: &Control, kind: Kind, query: &BTreeMap<String, String>) -> Response {
    let items = entities(&c.shown_config(), kind)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    match page(items, query) {
        Ok(p) => Json(p).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

fn one(c: &Control, kind: Kind, id: &str) -> Response {
    match entities(&c.shown_config(), kind)
        .into_iter()
        .find(|(i, _)| i == id)
    {
        Some((_, v)) => Json(v).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no {} named {id:?}", kind.singular()),
        ),
    }
}

/// The list and get-one handlers of one entity kind, with their OpenAPI descriptions.
macro_rules! entity_handlers {
    ($list:ident, $one:ident, $create:ident, $put:ident, $patch:ident, $delete:ident, $kind:expr, $path:literal, $one_path:literal, $tag:literal, $id:literal) => {
        #[utoipa::path(patch, path = $one_path, tag = $tag,
            params(("id" = String, Path, description = $id)),
            request_body(content = Object, description = "A JSON merge patch (RFC 7386): the fields to change; `null` removes an optional one. The name cannot change."),
            responses(
                (status = 200, description = "Changed and live", body = Object),
                (status = 400, description = "Invalid: `fields` names each problem by path", body = ErrorBody),
                (status = 404, description = "No such entity", body = ErrorBody),
                (status = 405, description = "Read-only (the gateway runs from a file)", body = ErrorBody),
                (status = 409, description = "Another write won the race", body = ErrorBody),
            ))]
        async fn $patch(
            State(c): State<Shared>,
            axum::Extension(who): axum::Extension<auth::Who>,
            Path(id): Path<String>,
            body: axum::body::Bytes,
        ) -> Response {
            write::write(&c, $kind, write::Op::Patch(id), &body, &who.0).await
        }

        #[utoipa::path(post, path = $path, tag = $tag,
            request_body(content = Object, description = "The entity, as one item of its list in the YAML file"),
            responses(
                (status = 201, description = "Created and live", body = Object),
                (status = 400, description = "Invalid: `fields` names each problem by path", body = ErrorBody),
                (status = 405, description = "Read-only (the gateway runs from a file)", body = ErrorBody),
                (status = 409, description = "The name is taken, or another write won the race", body = ErrorBody),
            ))]
        async fn $create(
            State(c): State<Shared>,
            axum::Extension(who): axum::Extension<auth::Who>,
            body: axum::body::Bytes,
        ) -> Response {
            write::write(&c, $kind, write::Op::Create, &body, &who.0).await
        }

        #[utoipa::path(put, path = $one_path, tag = $tag,
            params(("id" = String, Path, description = $id)),
            request_body(content = Object, description = "The entity; its name must be the path's"),
            responses(
                (status = 200, description = "Replaced and live", body = Object),
                (status = 201, description = "Created and live", body = Object),
                (status = 400, description = "Invalid: `fields` names each problem by path", body = ErrorBody),
                (status = 405, description = "Read-only (the gateway runs from a file)", body = ErrorBody),
                (status = 409, description = "Another write won the race", body = ErrorBody),
            ))]
        async fn $put(
            State(c): State<Shared>,
            axum::Extension(who): axum::Extension<auth::Who>,
            Path(id): Path<String>,
            body: axum::body::Bytes,
        ) -> Response {
            write::write(&c, $kind, write::Op::Put(id), &body, &who.0).await
        }

        #[utoipa::path(delete, path = $one_path, tag = $tag,
            params(("id" = String, Path, description = $id)),
            responses(
                (status = 204, description = "Deleted"),
                (status = 404, description = "No such entity", body = ErrorBody),
                (status = 405, description = "Read-only (the gateway runs from a file)", body = ErrorBody),
                (status = 409, description = "Others still refer to it (`fields` says where)", body = ErrorBody),
            ))]
        async fn $delete(
            State(c): State<Shared>,
            axum::Extension(who): axum::Extension<auth::Who>,
            Path(id): Path<String>,
        ) -> Response {
            write::write(&c, $kind, write::Op::Delete(id), &[], &who.0).await
        }

        #[utoipa::path(get, path = $path, tag = $tag,
            params(
                ("offset" = Option<usize>, Query, description = "Entities to skip (default 0)"),
                ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "Page size, 1 to 1000 (default 100)"),
            ),
            responses(
                (status = 200, description = "A page of entities; other query arguments filter on equal fields", body = Page),
                (status = 400, description = "Bad pagination", body = ErrorBody),
            ))]
        async fn $list(
            State(c): State<Shared>,
            Query(q): Query<BTreeMap<String, String>>,
        ) -> Response {
            list(&c, $kind, &q)
        }

        #[utoipa::path(get, path = $one_path, tag = $tag,
            params(("id" = String, Path, description = $id)),
            responses(
                (status = 200, description = "The entity, as in the YAML file", body = Object),
                (status = 404, description = "No such entity", body = ErrorBody),
            ))]
        async fn $one(State(c): State<Shared>, Path(id): Path<String>) -> Response {
            one(&c, $kind, &id)
        }
    };
}

entity_handlers!(
    list_routes,
    get_route,
    create_route,
    put_route,
    patch_route,
    delete_route,
    Kind::Routes,
    "/routes",
    "/routes/{id}",
    "routes",
    "The route's name"
);
entity_handlers!(
    list_services,
    get_service,
    create_service,
    put_service,
    patch_service,
    delete_service,
    Kind::Services,
    "/services",
    "/services/{id}",
    "services",
    "The service's name"
);
entity_handlers!(
    list_upstreams,
    get_upstream,
    create_upstream,
    put_upstream,
    patch_upstream,
    delete_upstream,
    Kind::Upstreams,
    "/upstreams",
    "/upstreams/{id}",
    "upstreams",
    "The upstream's name"
);
entity_handlers!(
    list_consumers,
    get_consumer,
    create_consumer,
    put_consumer,
    patch_consumer,
    delete_consumer,
    Kind::Consumers,
    "/consumers",
    "/consumers/{id}",
    "consumers",
    "The consumer's username"
);
entity_handlers!(
    list_plugins,
    get_plugin,
    create_plugin,
    put_plugin,
    patch_plugin,
    delete_plugin,
    Kind::Plugins,
    "/plugins",
    "/plugins/{id}",
    "plugins",
    "The instance's kind and scope, e.g. `rate-limit:route=api` or `cors:global`"
);

entity_handlers!(
    list_certificates,
    get_certificate,
    create_certificate,
    put_certificate,
    patch_certificate,
    delete_certificate,
    Kind::Certificates,
    "/certificates",
    "/certificates/{id}",
    "certificates",
    "The certificate's name"
);

#[utoipa::path(get, path = "/upstreams/{id}/health", tag = "upstreams",
    params(("id" = String, Path, description = "The upstream's name")),
    responses(
        (status = 200, description = "Each target's health on this node", body = UpstreamHealth),
        (status = 404, description = "No such upstream", body = ErrorBody),
    ))]
async fn upstream_health(State(c): State<Shared>, Path(id): Path<String>) -> Response {
    match c.view.health(&id) {
        Some(targets) => Json(UpstreamHealth {
            upstream: id,
            targets,
        })
        .into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no upstream named {id:?}")),
    }
}

#[utoipa::path(post, path = "/upstreams/{id}/targets", tag = "upstreams",
    params(("id" = String, Path, description = "The upstream's name")),
    request_body(content = Object, description = "One target: `{address, weight}`"),
    responses(
        (status = 201, description = "Added and live", body = Object),
        (status = 400, description = "Invalid: `fields` names each problem by path", body = ErrorBody),
        (status = 404, description = "No such upstream", body = ErrorBody),
        (status = 405, description = "Read-only (the gateway runs from a file)", body = ErrorBody),
        (status = 409, description = "The address is already a target, or another write won the race", body = ErrorBody),
    ))]
async fn add_target(
    State(c): State<Shared>,
    axum::Extension(who): axum::Extension<auth::Who>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    write::write(&c, Kind::Upstreams, write::Op::AddTarget(id), &body, &who.0).await
}

#[utoipa::path(delete, path = "/upstreams/{id}/targets/{address}", tag = "upstreams",
    params(
        ("id" = String, Path, description = "The upstream's name"),
        ("address" = String, Path, description = "The target's `host:port`"),
    ),
    responses(
        (status = 204, description = "Removed (a registration, or a configured target)"),
        (status = 404, description = "No such upstream or target", body = ErrorBody),
        (status = 405, description = "Read-only (the gateway runs from a file)", body = ErrorBody),
        (status = 409, description = "The upstream would be left invalid (`fields` says why)", body = ErrorBody),
    ))]
async fn remove_target(
    State(c): State<Shared>,
    axum::Extension(who): axum::Extension<auth::Who>,
    Path((id, address)): Path<(String, String)>,
) -> Response {
    // A registered target goes with its registration; a configured one by a new revision.
    if let Some(answer) = discovery::deregister(&c, &id, &address).await {
        return answer;
    }
    let op = write::Op::RemoveTarget(id, address);
    write::write(&c, Kind::Upstreams, op, &[], &who.0).await
}

#[derive(OpenApi)]
#[openapi(info(
    title = "Gatehouse admin API",
    description = "The running gateway's config entities, status and metrics. Entities have the fields they have in the YAML file."
))]
struct ApiDoc;

/// Writes while the file is the source of truth.
pub(crate) async fn read_only() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "the admin API is read-only while the gateway runs from a config file (DB-less mode): \
         edit the file instead",
    )
}

/// The admin API's router and OpenAPI spec.
pub fn router(control: Arc<Control>) -> axum::Router {
    let tokens = control.tokens.clone();
    let (router, spec) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(status))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .routes(routes!(debug_token))
        .routes(routes!(config, put_config))
        .routes(routes!(list_routes, create_route))
        .routes(routes!(get_route, put_route, patch_route, delete_route))
        .routes(routes!(list_services, create_service))
        .routes(routes!(
            get_service,
            put_service,
            patch_service,
            delete_service
        ))
        .routes(routes!(list_upstreams, create_upstream))
        .routes(routes!(
            get_upstream,
            put_upstream,
            patch_upstream,
            delete_upstream
        ))
        .routes(routes!(discovery::list_targets, add_target))
        .routes(routes!(remove_target, discovery::register_target))
        .routes(routes!(release::switch_service))
        .routes(routes!(release::plugin_report))
        .routes(routes!(upstream_health))
        .routes(routes!(list_consumers, create_consumer))
        .routes(routes!(
            get_consumer,
            put_consumer,
            patch_consumer,
            delete_consumer
        ))
        .routes(routes!(list_plugins, create_plugin))
        .routes(routes!(get_plugin, put_plugin, patch_plugin, delete_plugin))
        .routes(routes!(list_certificates, create_certificate))
        .routes(routes!(
            get_certificate,
            put_certificate,
            patch_certificate,
            delete_certificate
        ))
        .routes(routes!(bans::list, bans::add))
        .routes(routes!(bans::lift))
        .routes(routes!(revisions::list))
        .routes(routes!(revisions::audit))
        .routes(routes!(revisions::one))
        .routes(routes!(revisions::rollback))
        .with_state(control)
        .split_for_parts();
    let spec = schema::with_model_schemas(&spec);
    let spec_json = Arc::new(spec.clone());
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let spec = spec_json.clone();
                async move { Json(spec.as_ref().clone()) }
            }),
        )
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .external_url_unchecked("/docs/openapi.json", spec),
        )
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this method is not supported on this path (see /openapi.json)",
            )
        })
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such admin endpoint") })
        .layer(axum::middleware::from_fn_with_state(tokens, auth::check))
}

/// Serves the admin API over plain HTTP on `listener` until `shutdown` resolves. Off
/// loopback, calls with tokens are refused (they would cross the network in clear).
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: Arc<Control>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let loopback = listener.local_addr()?.ip().is_loopback();
    control.tokens.set_plain_off_loopback(!loopback);
    axum::serve(listener, router(control))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves the admin API over HTTPS with `tls` on `listener` until `shutdown` resolves.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    control: Arc<Control>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tls_listener::TlsListener::new(listener, tls)?;
    axum::serve(listener, router(control))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves only `/metrics` and `/ready`, with no token, on `listener`: for Prometheus and
/// load balancers, which rarely carry one, on an address apart from the admin API.
pub async fn serve_open(
    listener: tokio::net::TcpListener,
    control: Arc<Control>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/ready", axum::routing::get(ready))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "this address serves only /metrics and /ready",
            )
        })
        .with_state(control);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Refuses admin addresses that are not loopback unless admin tokens are configured:
/// without them anyone who can reach the address could read and change the whole config.
pub fn check_address(addr: SocketAddr, has_tokens: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || has_tokens {
        Ok(())
    } else {
        Err(format!(
            "admin API on {addr}: a non-loopback address needs admin tokens \
             (admin.tokens in the file, or --admin-tokens FILE; gatehouse admin-token makes \
             one); or use a loopback address such as 127.0.0.1:9180"
        ))
    }
}

#[cfg(test)]
mod tests;
