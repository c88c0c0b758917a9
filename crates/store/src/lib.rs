//! Config stores: SQLite (embedded default) and PostgreSQL (several nodes, one config), one
//! code path through sqlx's `Any` driver. The store keeps revisions: each committed change is
//! the whole config after it plus the audit record of the change (who, when, what, before and
//! after), so history, diff and rollback need nothing else.

use gatehouse_model::Config;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Unreachable(String),
    #[error(
        "the store at {url} was written by a newer gatehouse (its schema has migration {version}, \
         which this version does not know); upgrade gatehouse, or point it at another store"
    )]
    TooNew { url: String, version: i64 },
    #[error("revision {0} is not the latest any more: someone else committed first; retry")]
    Conflict(i64),
    #[error("store: {0}")]
    Other(String),
}

fn other(e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(e.to_string())
}

/// One committed change.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Revision {
    pub id: i64,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
    pub author: String,
    pub message: String,
    /// `create`, `update`, `delete`, `apply`, `rollback`...
    pub action: String,
    /// What changed, e.g. `routes/api`, or `config` for a whole-config change.
    pub entity: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// What a writer records with a change.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub author: &'a str,
    pub message: &'a str,
    pub action: &'a str,
    pub entity: &'a str,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

pub struct Store {
    pool: AnyPool,
    url: String,
    postgres: bool,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The PostgreSQL channel that announces each new revision (payload: its id).
const CHANNEL: &str = "gatehouse_config";

impl Store {
    /// Opens (creating it for SQLite) the store at `url` (`sqlite://PATH` or
    /// `postgres://...`) and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let connect_url = connect_url(url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(3))
            .connect(&connect_url)
            .await
            .map_err(|e| StoreError::Unreachable(format!("cannot open the store {url}: {e}")))?;
        match MIGRATOR.run(&pool).await {
            Ok(()) => {}
            Err(sqlx::migrate::MigrateError::VersionMissing(version)) => {
                return Err(StoreError::TooNew {
                    url: url.to_owned(),
                    version,
                })
            }
            Err(e) => return Err(StoreError::Other(format!("migrating {url}: {e}"))),
        }
        Ok(Store {
            pool,
            url: url.to_owned(),
            postgres: !url.starts_with("sqlite://"),
        })
    }

    /// A store that could not be reached at start-up: connects on first use and assumes the
    /// schema it had when this node last served from it (its last-known-good snapshot came
    /// from there), so no migrations run.
    pub fn open_lazy(url: &str) -> Result<Store, StoreError> {
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(&connect_url(url)?)
            .map_err(other)?;
        Ok(Store {
            pool,
            url: url.to_owned(),
            postgres: !url.starts_with("sqlite://"),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The latest revision's id and config; `(0, empty)` for a new store.
    pub async fn latest(&self) -> Result<(i64, Config), StoreError> {
        let row = sqlx::query("SELECT id, config FROM revisions ORDER BY id DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(unreachable)?;
        match row {
            None => Ok((0, Config::default())),
            Some(r) => Ok((r.try_get("id").map_err(other)?, config_of(&r)?)),
        }
    }

    /// What is stored for ACME under `name` (a certificate, the account), if anything.
    pub async fn acme_get(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT data FROM acme WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(unreachable)?;
        match row {
            Some(r) => {
                let data: String = r.try_get("data").map_err(other)?;
                Ok((!data.is_empty()).then_some(data))
            }
            None => Ok(None),
        }
    }

    /// Takes the lease on `name` for `holder` until `until` (Unix seconds) when nobody else
    /// holds it now; true when taken (or already held by `holder`).
    pub async fn acme_lease(
        &self,
        name: &str,
        holder: &str,
        until: i64,
    ) -> Result<bool, StoreError> {
        let now = now_secs();
        let r = sqlx::query(
            "INSERT INTO acme (name, data, holder, lease_until) VALUES ($1, '', $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = $2, lease_until = $3 \
             WHERE acme.lease_until < $4 OR acme.holder = $2",
        )
        .bind(name)
        .bind(holder)
        .bind(until)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(unreachable)?;
        Ok(r.rows_affected() == 1)
    }

    /// Stores `data` under `name` and ends `holder`'s lease.
    pub async fn acme_put(&self, name: &str, holder: &str, data: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO acme (name, data, holder, lease_until) VALUES ($1, $2, $3, 0) \
             ON CONFLICT (name) DO UPDATE SET data = $2, holder = $3, lease_until = 0",
        )
        .bind(name)
        .bind(data)
        .bind(holder)
        .execute(&self.pool)
        .await
        .map_err(unreachable)?;
        Ok(())
    }

    /// Ends `holder`'s lease on `name` without storing anything (an order failed).
    pub async fn acme_release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE acme SET lease_until = 0 WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(unreachable)?;
        Ok(())
    }

    /// Registers (or heartbeats) `address` of `upstream` until `expires_ms` (Unix ms);
    /// `data` is the target's JSON. Not a config revision: heartbeats come every few seconds.
    pub async fn register(
        &self,
        upstream: &str,
        address: &str,
        data: &str,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO registrations (upstream, address, data, expires_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (upstream, address) DO UPDATE SET data = $3, expires_ms = $4",
        )
        .bind(upstream)
        .bind(address)
        .bind(data)
        .bind(expires_ms)
        .execute(&self.pool)
        .await
        .map_err(unreachable)?;
        Ok(())
    }

    /// Removes a registration; whether there was one.
    pub async fn deregister(&self, upstream: &str, address: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM registrations WHERE upstream = $1 AND address = $2")
            .bind(upstream)
            .bind(address)
            .execute(&self.pool)
            .await
            .map_err(unreachable)?;
        Ok(r.rows_affected() > 0)
    }

    /// The registrations live at `now_ms`: `(upstream, address, data, expires_ms)`. Those
    /// expired a minute ago or more are deleted on the way.
    pub async fn registrations(
        &self,
        now_ms: i64,
    ) -> Result<Vec<(String, String, String, i64)>, StoreError> {
        sqlx::query("DELETE FROM registrations WHERE expires_ms < $1")
            .bind(now_ms - 60_000)
            .execute(&self.pool)
            .await
            .map_err(unreachable)?;
        let rows = sqlx::query(
            "SELECT upstream, address, data, expires_ms FROM registrations \
             WHERE expires_ms > $1 ORDER BY upstream, address",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(unreachable)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("upstream").map_err(other)?,
                    r.try_get("address").map_err(other)?,
                    r.try_get("data").map_err(other)?,
                    r.try_get("expires_ms").map_err(other)?,
                ))
            })
            .collect()
    }

    /// The latest revision id alone (cheap: for polling).
    pub async fn latest_id(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) AS id FROM revisions")
            .fetch_one(&self.pool)
            .await
            .map_err(unreachable)?;
        row.try_get("id").map_err(other)
    }

    /// Commits `config` as the revision after `parent`, which must still be the latest.
    pub async fn commit(
        &self,
        parent: i64,
        config: &Config,
        change: Change<'_>,
    ) -> Result<i64, StoreError> {
        let id = parent + 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
        let result = sqlx::query(
            "INSERT INTO revisions (id, created_at, author, message, action, entity, before_json, \
             after_json, config) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(now)
        .bind(change.author)
        .bind(change.message)
        .bind(change.action)
        .bind(change.entity)
        .bind(json(&change.before))
        .bind(json(&change.after))
        .bind(serde_json::to_string(config).map_err(other)?)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => {
                if self.postgres {
                    // Other nodes hear of it at once; if this is lost, their poll finds it.
                    let notify = sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(CHANNEL)
                        .bind(id.to_string())
                        .execute(&self.pool)
                        .await;
                    if let Err(e) = notify {
                        tracing::warn!(error = %e, revision = id, "cannot announce the revision");
                    }
                }
                Ok(id)
            }
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Conflict(parent))
            }
            Err(e) => Err(unreachable(e)),
        }
    }

    /// PostgreSQL: revision ids as other nodes commit them (LISTEN/NOTIFY), reconnecting by
    /// itself. None for SQLite, whose only writer is this node.
    pub fn changes(&self) -> Option<tokio::sync::mpsc::Receiver<i64>> {
        if !self.postgres {
            return None;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let url = self.url.clone();
        tokio::spawn(async move {
            loop {
                match listen(&url, &tx).await {
                    // The receiver is gone: the node stopped following.
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "store notifications lost; retrying (the poll covers the gap)");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Some(rx)
    }

    /// Revisions newest first, without their configs.
    pub async fn revisions(
        &self,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<Revision>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, created_at, author, message, action, entity, before_json, after_json \
             FROM revisions WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unreachable)?;
        rows.iter().map(revision_of).collect()
    }

    /// One revision and the config it holds.
    pub async fn revision(&self, id: i64) -> Result<Option<(Revision, Config)>, StoreError> {
        let row = sqlx::query(
            "SELECT id, created_at, author, message, action, entity, before_json, after_json, \
             config FROM revisions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(unreachable)?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some((revision_of(&r)?, config_of(&r)?))),
        }
    }
}

/// Forwards notifications until the receiver goes away (Ok) or the connection fails (Err).
async fn listen(url: &str, tx: &tokio::sync::mpsc::Sender<i64>) -> Result<(), sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    loop {
        let n = listener.recv().await?;
        if let Ok(id) = n.payload().parse::<i64>() {
            if tx.send(id).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// The URL sqlx connects to: SQLite files are created (with their directory) when missing.
fn connect_url(url: &str) -> Result<String, StoreError> {
    sqlx::any::install_default_drivers();
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = std::path::Path::new(path.split('?').next().unwrap_or(path));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unreachable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        Ok(if url.contains('?') {
            url.to_owned()
        } else {
            format!("{url}?mode=rwc")
        })
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(url.to_owned())
    } else {
        Err(StoreError::Other(format!(
            "--store {url:?}: expected sqlite://PATH or postgres://..."
        )))
    }
}

fn unreachable(e: sqlx::Error) -> StoreError {
    StoreError::Unreachable(e.to_string())
}

fn config_of(r: &AnyRow) -> Result<Config, StoreError> {
    let text: String = r.try_get("config").map_err(other)?;
    serde_json::from_str(&text).map_err(|e| other(format!("a stored config does not parse: {e}")))
}

fn revision_of(r: &AnyRow) -> Result<Revision, StoreError> {
    let json = |col: &str| -> Result<Option<serde_json::Value>, StoreError> {
        let text: Option<String> = r.try_get(col).map_err(other)?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    };
    Ok(Revision {
        id: r.try_get("id").map_err(other)?,
        created_at: r.try_get("created_at").map_err(other)?,
        author: r.try_get("author").map_err(other)?,
        message: r.try_get("message").map_err(other)?,
        action: r.try_get("action").map_err(other)?,
        entity: r.try_get("entity").map_err(other)?,
        before: json("before_json")?,
        after: json("after_json")?,
    })
}

#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
