//! One node runner for both modes: the admin API over the running gateway ([`NodeView`]),
//! signals, following the config source (a watched file, or a store), and the drain at the
//! end. The modes differ only in their [`ConfigSource`].

use anyhow::Context;
use gatehouse_admin::{BreakerStatus, Control, GatewayView, TargetHealth};
use gatehouse_model::{Config, ConfigError};
use gatehouse_proxy::{Gateway, Shared};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// The running gateway as the admin API sees it. In store mode a config from the store gets
/// this node's settings (`for_node`) before it is checked or applied.
pub(crate) struct NodeView {
    pub shared: Arc<Shared>,
    pub for_node: Option<Box<dyn Fn(Config) -> Config + Send + Sync>>,
}

impl NodeView {
    fn node_config(&self, config: Config) -> Config {
        match &self.for_node {
            Some(f) => f(config),
            None => config,
        }
    }
}

impl GatewayView for NodeView {
    fn config(&self) -> Config {
        self.shared.snapshot.load().config.clone()
    }

    fn seal(&self, new: &mut Config, old: &Config) -> Vec<ConfigError> {
        gatehouse_runtime::tls::keep_keys(new, old);
        gatehouse_runtime::discovery::keep_passwords(new, old);
        gatehouse_runtime::consumers::seal(new, old, self.shared.node.registry)
    }

    fn redact(&self, config: &mut Config) {
        gatehouse_runtime::tls::redact(config);
        gatehouse_runtime::discovery::redact(config);
        gatehouse_runtime::consumers::redact(config, self.shared.node.registry)
    }

    fn certificates(&self) -> Vec<gatehouse_admin::CertificateStatus> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.shared
            .certificates
            .load()
            .infos
            .iter()
            .map(|c| gatehouse_admin::CertificateStatus {
                name: c.name.clone(),
                snis: c.snis.clone(),
                subject: c.subject.clone(),
                not_after: c.not_after,
                expires_in_days: (c.not_after - now).div_euclid(86_400),
                default: c.default,
            })
            .collect()
    }

    fn plugin_report(&self, name: &str, scope: &str) -> Option<serde_json::Value> {
        let snap = self.shared.snapshot.load();
        snap.plugins
            .iter()
            .find(|(k, s, _)| &**k == name && &**s == scope)
            .and_then(|(_, _, p)| p.report())
    }

    fn check(&self, config: &Config) -> Vec<ConfigError> {
        self.shared.check(self.node_config(config.clone()))
    }

    fn apply(&self, config: Config) -> Result<(), Vec<ConfigError>> {
        self.shared.reload(self.node_config(config))
    }

    fn targets(&self, upstream: &str) -> Option<Vec<serde_json::Value>> {
        self.shared.targets_of(upstream)
    }

    fn register(&self, r: &gatehouse_admin::discovery::Registered) -> Result<(), String> {
        self.shared
            .register(&r.upstream, registered_target(r), r.expires_ms)
            .map(|_| ())
    }

    fn deregister(&self, upstream: &str, address: &str) -> bool {
        self.shared.deregister(upstream, address)
    }

    fn discovery(&self) -> Vec<serde_json::Value> {
        self.shared
            .discovery
            .state
            .status()
            .into_iter()
            .filter_map(|s| serde_json::to_value(s).ok())
            .collect()
    }

    fn health(&self, upstream: &str) -> Option<Vec<TargetHealth>> {
        let targets = self.shared.health_of(upstream)?;
        Some(
            targets
                .into_iter()
                .map(|(address, v)| TargetHealth {
                    address: address.into(),
                    state: v.state,
                    ejected_for_ms: v.ejected_for_ms,
                    ejections: v.ejections,
                })
                .collect(),
        )
    }

    fn breakers(&self) -> Vec<BreakerStatus> {
        self.shared
            .breakers()
            .into_iter()
            .map(|(scope, name, state, opened_total)| BreakerStatus {
                scope,
                name,
                state,
                opened_total,
            })
            .collect()
    }

    fn fallbacks(&self) -> Vec<(String, [u64; 3])> {
        self.shared.fallbacks()
    }

    fn debug_token(&self, ttl: Duration) -> Option<Result<(String, String), String>> {
        let issued = self.shared.debug_tokens.issue(ttl).map(|token| {
            let header = self.shared.snapshot.load().debug_header.to_string();
            (token, header)
        });
        Some(issued)
    }

    fn ready(&self) -> Result<(), String> {
        if self.shared.listeners.addrs().is_empty() {
            return Err("no listener is up".into());
        }
        Ok(())
    }

    fn data_plane(&self) -> Vec<Box<dyn prometheus_client::collector::Collector>> {
        let shared = self.shared.clone();
        let snapshot =
            gatehouse_runtime::telemetry::SnapshotCollector(move || shared.snapshot.load_full());
        let discovery =
            gatehouse_runtime::discovery::Collector(self.shared.discovery.state.clone());
        vec![Box::new(snapshot), Box::new(discovery)]
    }
}

/// A registration as the node's discovery state holds it.
pub(crate) fn registered_target(
    r: &gatehouse_admin::discovery::Registered,
) -> gatehouse_runtime::discovery::Found {
    gatehouse_runtime::discovery::Found {
        address: r.address.clone(),
        weight: r.weight,
        labels: r.labels.clone(),
        metadata: r.metadata.clone(),
        origin: gatehouse_runtime::discovery::Origin::Registered,
        from: None,
    }
}

/// Where a node's config comes from, as the runner follows it.
pub(crate) trait ConfigSource {
    /// What it is, for the log (`file gateway.yaml`, `store sqlite://...`).
    fn describe(&self) -> String;
    /// Resolves when the source may have changed, with what said so.
    async fn changed(&mut self) -> &'static str;
    /// Reads the source again and applies what changed; a rejected config leaves the running
    /// one serving.
    async fn follow(&mut self, gateway: &Gateway, control: &Control, why: &str);
}

/// Where the admin API listens, and how.
pub(crate) struct AdminListen {
    pub address: SocketAddr,
    /// `/metrics` and `/ready` with no token, apart from the API.
    pub metrics: Option<SocketAddr>,
    /// HTTPS, with the gateway's certificates.
    pub tls: Option<gatehouse_model::ListenTls>,
}

/// `--admin-tls`: HTTPS with every default.
pub(crate) fn default_admin_tls() -> gatehouse_model::ListenTls {
    gatehouse_model::ListenTls {
        min_version: Default::default(),
        cipher_suites: Vec::new(),
        http2: false,
        client_ca: None,
        client_certificate: Default::default(),
        client_subject_header: None,
        handshake_timeout: Duration::from_secs(10),
    }
}

/// Serves the admin API as `admin` says and follows `source` until SIGTERM or SIGINT, then
/// drains.
pub(crate) async fn serve(
    gateway: Gateway,
    control: Arc<Control>,
    admin: AdminListen,
    workers: usize,
    mut source: impl ConfigSource,
) -> anyhow::Result<()> {
    let AdminListen {
        address: admin,
        metrics: open,
        tls,
    } = admin;
    // `/metrics` and `/ready` with no token, apart from the admin API, when asked for.
    // Copies of the admin sockets, handed over with the data plane's on an upgrade.
    let mut admin_sockets: Vec<(&'static str, std::net::TcpListener)> = Vec::new();
    let open_task = match open {
        Some(addr) => {
            let listener = crate::upgrade::admin_socket("metrics", addr)
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            admin_sockets.extend(listener.try_clone().ok().map(|l| ("metrics", l)));
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tracing::info!(address = %listener.local_addr()?, "metrics and readiness listening");
            Some(tokio::spawn(gatehouse_admin::serve_open(
                listener,
                control.clone(),
                std::future::pending(),
            )))
        }
        None => None,
    };
    let admin_listener = crate::upgrade::admin_socket("admin", admin)
        .with_context(|| format!("cannot listen for the admin API on {admin}"))?;
    admin_sockets.extend(admin_listener.try_clone().ok().map(|l| ("admin", l)));
    let admin_listener = tokio::net::TcpListener::from_std(admin_listener)?;
    tracing::info!(
        address = %admin_listener.local_addr()?,
        https = tls.is_some(),
        "admin API listening"
    );
    let admin_task = match tls {
        Some(tls) => {
            let resolver = Arc::new(gatehouse_runtime::tls::CertResolver {
                index: gateway.shared().certificates.clone(),
                challenges: gateway.shared().challenges.clone(),
            });
            // HTTP/1.1 only: axum's server is given the stream as it is, without ALPN.
            let mut tls = tls;
            tls.http2 = false;
            let config = gatehouse_runtime::tls::server::server_config(&tls, resolver)
                .map_err(|(f, m)| anyhow::anyhow!("admin.tls.{f}: {m}"))?;
            tokio::spawn(gatehouse_admin::serve_tls(
                admin_listener,
                Arc::new(config),
                control.clone(),
                std::future::pending(),
            ))
        }
        None => tokio::spawn(gatehouse_admin::serve(
            admin_listener,
            control.clone(),
            std::future::pending(),
        )),
    };
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    // Logged once the source is followed, so whoever waits for this line can change it.
    let described = source.describe();
    for a in gateway.addrs() {
        tracing::info!(address = %a, workers, source = %described, "gatehouse listening");
    }
    crate::upgrade::tell_ready();
    loop {
        let why = tokio::select! {
            why = source.changed() => why,
            _ = hup.recv() => "SIGHUP",
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr2.recv() => {
                if hand_over(&gateway, &admin_sockets).await {
                    break;
                }
                continue;
            }
        };
        source.follow(&gateway, &control, why).await;
    }
    admin_task.abort();
    if let Some(t) = open_task {
        t.abort();
    }
    tracing::info!("shutting down: draining in-flight requests");
    gateway.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGUSR2: a new process takes over every listening socket; true once it serves (this one
/// then drains and exits), false when it failed (this one goes on serving).
async fn hand_over(gateway: &Gateway, admin: &[(&'static str, std::net::TcpListener)]) -> bool {
    let mut sockets: Vec<(&'static str, std::net::TcpListener)> = gateway
        .shared()
        .listeners
        .handover()
        .into_iter()
        .map(|s| ("data", s))
        .collect();
    sockets.extend(
        admin
            .iter()
            .filter_map(|(n, s)| s.try_clone().ok().map(|s| (*n, s))),
    );
    tracing::info!(
        sockets = sockets.len(),
        "SIGUSR2: starting a new process to take over"
    );
    match crate::upgrade::hand_over(sockets).await {
        Ok(pid) => {
            tracing::info!(
                pid,
                "the new process serves: this one stops accepting and drains"
            );
            true
        }
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "upgrade failed: this process goes on serving"
            );
            false
        }
    }
}
