//! `gatehouse run` without a file: config comes from a store (SQLite by default, PostgreSQL
//! for several nodes) and changes through the admin API. Node settings come from flags. With
//! PostgreSQL, nodes hear of a new revision at once (LISTEN/NOTIFY); every node also checks
//! the store's revision every second, as a safety net for lost notifications.

use crate::node::{ConfigSource, NodeView};
use crate::{node_context, NodeFlags};
use anyhow::Context;
use gatehouse_admin::Control;
use gatehouse_model::Config;
use gatehouse_proxy::{Gateway, Shared, StartOptions};
use gatehouse_store::{Store, StoreError};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How often a node asks the store for a newer revision.
const POLL: Duration = Duration::from_secs(1);
/// How often a node reads the store's self-registrations.
const REGISTRATIONS_POLL: Duration = Duration::from_millis(500);

/// The stored entities with this node's settings: a store holds no node settings.
fn for_node(mut config: Config, flags: &NodeFlags) -> Config {
    config.listen.clear();
    config.admin = None;
    config.redis = flags.redis.clone();
    config
}

pub async fn run(url: String, flags: NodeFlags) -> anyhow::Result<()> {
    crate::upgrade::take_inherited();
    let admin_addr = flags
        .admin
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9180)));
    let tokens = flags.admin_tokens.clone().unwrap_or_default();
    gatehouse_admin::check_address(admin_addr, !tokens.is_empty())
        .map_err(|e| anyhow::anyhow!(e))?;
    let snapshot = flags.data_dir.join("last-known-good.json");
    let (store, revision, stored, from_snapshot) = match Store::open(&url).await {
        Ok(store) => {
            let (revision, stored) = store.latest().await?;
            (store, revision, stored, false)
        }
        Err(StoreError::Unreachable(why)) => {
            // Serve what this node last served; the store is followed once it answers.
            let (revision, stored) = read_snapshot(&snapshot).with_context(|| {
                format!("{why}, and there is no usable last-known-good snapshot")
            })?;
            tracing::warn!(store = %url, revision, snapshot = %snapshot.display(), error = %why,
                "store unreachable at start; serving the last-known-good snapshot");
            (Store::open_lazy(&url)?, revision, stored, true)
        }
        Err(e) => return Err(e.into()),
    };
    let store = Arc::new(store);
    let config = for_node(stored, &flags);
    let node = node_context(&config, flags.workers, flags.node_index);
    let listen = if flags.listen.is_empty() {
        vec![SocketAddr::from(([0, 0, 0, 0], 8080))]
    } else {
        flags.listen.clone()
    };
    let opts = StartOptions {
        listen,
        workers: node.workers,
        node_index: node.node_index,
        registry: gatehouse_plugins::registry(),
    };
    let gateway = Gateway::start(config, &opts)
        .with_context(|| format!("the config in {url} (revision {revision}) does not start"))?;
    gateway.shared().keep_discovered_in(&flags.data_dir);
    tokio::spawn(follow_registrations(
        store.clone(),
        gateway.shared().clone(),
    ));
    let admin = crate::node::AdminListen {
        address: admin_addr,
        metrics: flags.metrics,
        tls: flags.admin_tls.then(crate::node::default_admin_tls),
    };
    let flags = Arc::new(flags);
    let shared = gateway.shared().clone();
    let view = NodeView {
        shared: shared.clone(),
        for_node: Some({
            let flags = flags.clone();
            Box::new(move |c| for_node(c, &flags))
        }),
    };
    let control =
        Arc::new(Control::with_store(store.clone(), Arc::new(view), revision).with_tokens(&tokens));
    control.set_from_snapshot(from_snapshot);
    gateway
        .shared()
        .challenges
        .share_tokens(Arc::new(crate::acme::StoreTokens(store.clone())));
    tokio::spawn(crate::acme::run(
        gateway.shared().clone(),
        crate::acme::Storage::Store(store.clone()),
        crate::acme_holder(),
    ));
    let source = StoreSource {
        changes: store.changes(),
        store,
        url,
        flags,
        snapshot,
        snapshot_revision: if from_snapshot { revision } else { -1 },
        poll: tokio::time::interval(POLL),
        rejected: 0,
    };
    crate::node::serve(gateway, control, admin, node.workers, source).await
}

/// Applies the store's self-registrations on this node, so every node of the store serves
/// the same registered targets. While the store is unreachable the node keeps what it has
/// (and drops registrations as their TTLs run out).
async fn follow_registrations(store: Arc<Store>, shared: Arc<Shared>) {
    let mut poll = tokio::time::interval(REGISTRATIONS_POLL);
    loop {
        poll.tick().await;
        let now = gatehouse_runtime::discovery::unix_ms(std::time::SystemTime::now());
        match store.registrations(now as i64).await {
            Ok(rows) => {
                let all = gatehouse_admin::discovery::decode_registrations(rows)
                    .iter()
                    .map(|r| gatehouse_runtime::discovery::Registration {
                        upstream: r.upstream.clone(),
                        target: crate::node::registered_target(r),
                        expires_ms: r.expires_ms,
                    })
                    .collect();
                shared.set_registrations(all);
            }
            Err(e) => tracing::debug!(error = %e, "cannot read registrations from the store"),
        }
    }
}

/// Store mode's config: the store's latest revision. PostgreSQL announces new revisions at
/// once; the poll is the safety net.
struct StoreSource {
    store: Arc<Store>,
    changes: Option<tokio::sync::mpsc::Receiver<i64>>,
    url: String,
    flags: Arc<NodeFlags>,
    /// The last-known-good file, and the revision it holds.
    snapshot: std::path::PathBuf,
    snapshot_revision: i64,
    poll: tokio::time::Interval,
    /// A revision this node rejected is not retried until a newer one comes.
    rejected: i64,
}

impl ConfigSource for StoreSource {
    fn describe(&self) -> String {
        format!("store {}", self.url)
    }

    async fn changed(&mut self) -> &'static str {
        let announced = async {
            match &mut self.changes {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(_) = announced => "store announced a revision",
            _ = self.poll.tick() => "store poll",
        }
    }

    async fn follow(&mut self, gateway: &Gateway, control: &Control, _why: &str) {
        let shared = gateway.shared();
        follow(
            &self.store,
            shared,
            control,
            &self.flags,
            &mut self.rejected,
        )
        .await;
        // Keep the snapshot in step with what is served (a write here, or another node's).
        let served = control.revision() as i64;
        if served != self.snapshot_revision {
            match write_snapshot(&self.snapshot, served, &shared.snapshot.load().config) {
                Ok(()) => self.snapshot_revision = served,
                Err(e) => tracing::warn!(error = %e, "cannot write the last-known-good snapshot"),
            }
        }
    }
}

/// Takes a newer revision from the store, if there is one (written by another node). A store
/// that cannot be reached keeps the node serving what it has.
async fn follow(
    store: &Store,
    shared: &Shared,
    control: &Control,
    flags: &NodeFlags,
    rejected: &mut i64,
) {
    let served = control.revision() as i64;
    match store.latest_id().await {
        // A revision this node rejected is not retried until a newer one comes.
        Ok(latest) if latest > served && latest != *rejected => match store.latest().await {
            Ok((revision, config)) => match shared.reload(for_node(config, flags)) {
                Ok(()) => {
                    control.set_from_snapshot(false);
                    control.serving(revision);
                    tracing::info!(revision, "configuration reloaded from the store");
                }
                Err(errors) => {
                    *rejected = revision;
                    control.metrics.reload(false);
                    for e in &errors {
                        tracing::error!(
                            revision,
                            "stored revision rejected, previous one still serving: {e}"
                        );
                    }
                }
            },
            Err(e) => tracing::warn!(error = %e, "cannot read the store; still serving"),
        },
        // The store answers and has nothing newer: what is served is what it holds.
        Ok(_) => control.set_from_snapshot(false),
        Err(e) => tracing::warn!(error = %e, "cannot reach the store; still serving"),
    }
}

/// The snapshot file: the revision and the config (entities) served.
#[derive(serde::Serialize, serde::Deserialize)]
struct LastKnownGood {
    revision: i64,
    config: Config,
}

fn read_snapshot(path: &Path) -> anyhow::Result<(i64, Config)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let s: LastKnownGood = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a snapshot", path.display()))?;
    Ok((s.revision, s.config))
}

/// Written to a temporary file and renamed, so a crash never leaves half a snapshot.
fn write_snapshot(path: &Path, revision: i64, config: &Config) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut stored = config.clone();
    stored.listen.clear();
    let text = serde_json::to_string(&LastKnownGood {
        revision,
        config: stored,
    })?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
