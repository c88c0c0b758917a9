//! Gatehouse's data plane: listeners, worker threads, the per-connection HTTP/1.1 and h2c
//! servers, config reload by snapshot swap, and graceful drain.
//!
//! Each worker is an OS thread with its own current-thread tokio runtime and its own
//! SO_REUSEPORT listener per address, so the kernel spreads connections and a request never
//! crosses threads (shared/reference/perf-levers.md: −7 % CPU against a multi-thread runtime).

pub mod accept;
pub mod body;
pub mod discovery;
pub mod errors;
pub mod framing;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod grpc_web;
pub mod h1;
pub mod headers;
pub mod idle;
pub mod listeners;
pub mod observe;
pub mod pipeline;

use arc_swap::ArcSwap;
use gatehouse_model::{Config, ConfigError};
use gatehouse_runtime::downstream::RequestBody;
use gatehouse_runtime::{upstream, NodeContext, Snapshot};
use http::Request;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use listeners::{ListenSpec, Listeners};

/// State every worker shares: the current snapshot and the node facts it was built with.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub node: NodeContext,
    /// Tokens the admin API issued for decision traces.
    pub debug_tokens: gatehouse_runtime::debug::DebugTokens,
    /// The listening sockets, changed by reloads.
    pub listeners: Listeners,
    /// The certificates TLS listeners serve: the serving snapshot's (with what ACME
    /// obtained), swapped with it.
    pub certificates: Arc<ArcSwap<gatehouse_runtime::tls::CertIndex>>,
    /// The ACME challenges this node answers now.
    pub challenges: Arc<gatehouse_runtime::tls::Challenges>,
    /// The certificates ACME obtained (PEM), served beside `certificates[]`.
    acme_certificates: std::sync::Mutex<Vec<gatehouse_model::Certificate>>,
    /// Targets found by DNS and etcd, and registered through the admin API.
    pub discovery: discovery::Discovery,
}

/// Settings fixed at start.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Overrides the config's `listen` (the CLI's `--listen`).
    pub listen: Vec<SocketAddr>,
    pub workers: usize,
    pub node_index: u32,
    /// The plugin kinds configs may use.
    pub registry: &'static gatehouse_plugin_api::Registry,
}

/// The gateway state workers, the admin view and reloads share.
impl Shared {
    /// Compiles `config` next to the serving snapshot (lending it pools and plugin state) and
    /// swaps it in; on error nothing changes.
    pub fn reload(&self, config: Config) -> Result<(), Vec<ConfigError>> {
        let current = self.snapshot.load();
        let listen_changed = config.listen != current.config.listen;
        let next = Snapshot::compile(config, Some(&current), self.node)?;
        if listen_changed && self.listeners.follows_config() {
            // Bound before the swap: a listener that cannot be had rejects the config.
            self.listeners
                .apply(&ListenSpec::from_config(&next.config))
                .map_err(|e| vec![e])?;
        }
        let certificates = self.with_acme(&next);
        next.telemetry.node.set_certificates(&certificates);
        self.snapshot.store(Arc::new(next));
        self.certificates.store(certificates);
        self.resync_all();
        self.snapshot.load().changes.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Compiles the serving config again and swaps it in, unless another reload swapped
    /// first (then that one's compile already took what this one would). For what changes
    /// without a config change but needs a compile (a discovered target's new colour).
    pub(crate) fn recompile(&self) {
        let current = self.snapshot.load_full();
        let next = match Snapshot::compile(current.config.clone(), Some(&current), self.node) {
            Ok(n) => Arc::new(n),
            Err(e) => {
                tracing::warn!(errors = ?e, "recompiling the serving config failed");
                return;
            }
        };
        let certificates = self.with_acme(&next);
        let was = self.snapshot.compare_and_swap(&current, next.clone());
        if !Arc::ptr_eq(&*was, &current) {
            return;
        }
        next.telemetry.node.set_certificates(&certificates);
        self.certificates.store(certificates);
        self.resync_all();
        self.snapshot.load().changes.send_modify(|n| *n += 1);
    }

    /// Serves `certs` (obtained by ACME) beside the config's certificates from now on.
    pub fn set_acme_certificates(&self, certs: Vec<gatehouse_model::Certificate>) {
        if let Ok(mut held) = self.acme_certificates.lock() {
            *held = certs;
        }
        let snap = self.snapshot.load();
        let index = self.with_acme(&snap);
        snap.telemetry.node.set_certificates(&index);
        self.certificates.store(index);
    }

    /// `snap`'s certificate index, with the ACME certificates added when there are any.
    fn with_acme(&self, snap: &Snapshot) -> Arc<gatehouse_runtime::tls::CertIndex> {
        let acme = match self.acme_certificates.lock() {
            Ok(a) if !a.is_empty() => a.clone(),
            _ => return snap.certificates.clone(),
        };
        let mut all = snap.config.certificates.clone();
        all.extend(acme);
        let mut errs = Vec::new();
        let index = gatehouse_runtime::tls::CertIndex::compile(&all, &mut errs);
        for e in errs {
            // An ACME certificate that does not load (its names clash with a configured
            // one's, say) is left out; the configured ones keep serving.
            tracing::warn!(error = %e, "an ACME certificate is not served");
        }
        Arc::new(index)
    }

    /// Replaces the targets of upstream `name` (address, weight) without compiling the
    /// config: what service discovery feeds. Targets that stay keep their pools, health and
    /// breakers; health checks restart on the new set. A reload rebuilds the upstream from
    /// the config again. `Err` (nothing changed) says which name or address is wrong.
    pub fn set_targets(&self, name: &str, targets: &[(&str, u32)]) -> Result<(), String> {
        let snap = self.snapshot.load();
        let Some(u) = snap.upstreams.get(name) else {
            return Err(format!("no upstream named \"{name}\""));
        };
        u.replace_targets(targets)
    }

    /// Each target of upstream `name` with its health, as this node sees it now.
    pub fn health_of(
        &self,
        name: &str,
    ) -> Option<Vec<(Box<str>, gatehouse_runtime::health::HealthView)>> {
        let snap = self.snapshot.load();
        let u = snap.upstreams.get(name)?;
        let now = gatehouse_runtime::health::now_ns();
        Some(
            u.targets()
                .targets
                .iter()
                .map(|t| (t.address.clone(), t.health.view(now)))
                .collect(),
        )
    }

    /// Every configured circuit breaker: `(scope, name, state, times opened)`, scope `route`
    /// (named by the route) or `target` (named `upstream/address`).
    pub fn breakers(&self) -> Vec<(&'static str, String, &'static str, u64)> {
        let snap = self.snapshot.load();
        let now = gatehouse_runtime::health::now_ns();
        let opened = |b: &gatehouse_runtime::breaker::Breaker| {
            b.opened.load(std::sync::atomic::Ordering::Relaxed)
        };
        let mut out = Vec::new();
        for r in &snap.routes {
            if let Some((p, b)) = r.breaker.as_deref() {
                out.push((
                    "route",
                    r.name.to_string(),
                    b.state(p, now).as_str(),
                    opened(b),
                ));
            }
        }
        let mut upstreams: Vec<_> = snap.upstreams.values().collect();
        upstreams.sort_by(|a, b| a.name.cmp(&b.name));
        for u in upstreams {
            if let Some(p) = &u.breaker {
                for t in &u.targets().targets {
                    let name = format!("{}/{}", u.name, t.address);
                    out.push((
                        "target",
                        name,
                        t.breaker.state(p, now).as_str(),
                        opened(&t.breaker),
                    ));
                }
            }
        }
        out
    }

    /// Fallback answers served per route with a fallback: `(route, [cache, static,
    /// upstream])`.
    pub fn fallbacks(&self) -> Vec<(String, [u64; 3])> {
        let snap = self.snapshot.load();
        snap.routes
            .iter()
            .filter_map(|r| {
                let f = r.fallback.as_ref()?;
                let n =
                    |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
                let counts = [
                    n(&f.served_cache),
                    n(&f.served_static),
                    n(&f.served_upstream),
                ];
                Some((r.name.to_string(), counts))
            })
            .collect()
    }

    /// Every problem compiling `config` would find, without swapping anything.
    pub fn check(&self, config: Config) -> Vec<ConfigError> {
        let current = self.snapshot.load();
        Snapshot::plan(config, Some(&current), self.node)
            .err()
            .unwrap_or_default()
    }
}

/// How long a stopping gateway waits for its access log and spans to be written out.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Gateway {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    done: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl Gateway {
    /// Compiles `config`, starts the workers and binds its listeners.
    pub fn start(config: Config, opts: &StartOptions) -> Result<Gateway, StartError> {
        let node = NodeContext {
            workers: opts.workers.max(1),
            node_index: opts.node_index,
            registry: opts.registry,
        };
        let specs = if opts.listen.is_empty() {
            ListenSpec::from_config(&config)
        } else {
            opts.listen.iter().map(|&a| ListenSpec::plain(a)).collect()
        };
        let snapshot = Snapshot::compile(config, None, node).map_err(StartError::Config)?;

        let (senders, receivers): (Vec<_>, Vec<_>) = (0..node.workers)
            .map(|_| mpsc::unbounded_channel::<listeners::Command>())
            .unzip();
        snapshot
            .telemetry
            .node
            .set_certificates(&snapshot.certificates);
        let certificates = Arc::new(ArcSwap::new(snapshot.certificates.clone()));
        let challenges = Arc::new(gatehouse_runtime::tls::Challenges::default());
        let resolver = Arc::new(gatehouse_runtime::tls::CertResolver {
            index: certificates.clone(),
            challenges: challenges.clone(),
        });
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            node,
            debug_tokens: Default::default(),
            listeners: Listeners::new(senders, !opts.listen.is_empty(), resolver),
            certificates,
            challenges,
            acme_certificates: Default::default(),
            discovery: Default::default(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut done = Vec::with_capacity(node.workers);
        for (w, commands) in receivers.into_iter().enumerate() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            done.push(rx);
            let shared = shared.clone();
            let stop_rx = stop_rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("gatehouse-worker-{w}"))
                .spawn(move || {
                    upstream::set_worker(w);
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(worker(shared, commands, stop_rx)),
                        Err(e) => tracing::error!(error = %e, "worker runtime did not start"),
                    }
                    let _ = tx.send(());
                });
            if let Err(e) = spawned {
                let _ = stop.send(true);
                return Err(StartError::Thread(e));
            }
        }
        if let Err(e) = shared.listeners.apply(&specs) {
            let _ = stop.send(true);
            return Err(StartError::Listen(e));
        }
        Ok(Gateway { shared, stop, done })
    }

    /// The addresses the data plane listens on now (with real ports when 0 was asked for).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.shared.listeners.addrs()
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Applies a new config: compiles it against the current snapshot (keeping pools and
    /// state of targets that stay) and swaps it in. On error the current config keeps serving.
    pub fn reload(&self, config: Config) -> Result<(), Vec<ConfigError>> {
        self.shared.reload(config)
    }

    /// Stops accepting, lets in-flight requests finish for up to the configured drain
    /// timeout, then stops the workers.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for d in self.done {
            let _ = d.await;
        }
        // Every answered request has queued its access log line and spans by now (the
        // workers are done): write them out before the process goes.
        let snap = self.shared.snapshot.load_full();
        let flushed = tokio::task::spawn_blocking(move || snap.telemetry.flush(FLUSH_TIMEOUT));
        let _ = flushed.await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration:\n{}", gatehouse_model::ConfigErrors(.0.clone()))]
    Config(Vec<ConfigError>),
    #[error("{0}")]
    Listen(ConfigError),
    #[error("cannot start a worker thread: {0}")]
    Thread(std::io::Error),
}

/// Shares the ban list through the serving config's Redis (when it has one): every 500 ms,
/// and at once after a ban is added or lifted on this node.
async fn sync_bans(shared: Arc<Shared>) {
    let bans = gatehouse_plugin_api::bans::bans();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = bans.changed() => {}
        }
        let snap = shared.snapshot.load_full();
        match bans.sync_round(snap.redis.as_deref()).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "ban list: Redis sync failed; this node enforces what it knows");
            }
            Err(_) => {}
        }
    }
}

async fn worker(
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<listeners::Command>,
    mut stop: watch::Receiver<bool>,
) {
    // Every connection task holds a clone of `alive`; when all are gone, `drained` yields.
    let (alive, mut drained) = mpsc::channel::<()>(1);
    let mut accepting = std::collections::HashMap::new();
    let sweeper = tokio::spawn(sweep_idle(shared.clone()));
    // One worker probes for the whole node.
    let checks = (upstream::worker() == 0).then(|| tokio::spawn(health_checks(shared.clone())));
    let discovery = (upstream::worker() == 0).then(|| tokio::spawn(discovery::run(shared.clone())));
    let bans = (upstream::worker() == 0).then(|| tokio::spawn(sync_bans(shared.clone())));
    while !*stop.borrow_and_update() {
        tokio::select! {
            command = commands.recv() => match command {
                Some(listeners::Command::Add { id, socket, accepting: how }) => {
                    let l = match TcpListener::from_std(socket) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "listener could not join the runtime");
                            continue;
                        }
                    };
                    let (shared, stop, alive) = (shared.clone(), stop.clone(), alive.clone());
                    let task = tokio::spawn(accept_loop(l, how, shared, stop, alive));
                    accepting.entry(id).or_insert_with(Vec::new).push(task);
                }
                Some(listeners::Command::Remove(id)) => {
                    for task in accepting.remove(&id).into_iter().flatten() {
                        task.abort(); // the socket closes with its task
                    }
                }
                None => break,
            },
            changed = stop.changed() => if changed.is_err() { break },
        }
    }
    for t in accepting.values().flatten() {
        t.abort();
    }
    for t in accepting.into_values().flatten() {
        let _ = t.await; // listeners are closed once their task is gone
    }
    drop(alive);
    let drain = shared.snapshot.load().drain_timeout;
    if tokio::time::timeout(drain, drained.recv()).await.is_err() {
        tracing::warn!(?drain, "drain timeout: closing connections still open");
    }
    sweeper.abort();
    if let Some(d) = discovery {
        d.abort();
    }
    if let Some(b) = bans {
        b.abort();
    }
    if let Some(c) = checks {
        c.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    accepting: listeners::Accepting,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (shared, stop, alive) = (shared.clone(), stop.clone(), alive.clone());
        let accepting = accepting.clone();
        tokio::spawn(serve(stream, peer, accepting, shared, stop, alive));
    }
}

async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    accepting: listeners::Accepting,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    // Counted on the snapshot's node statistics, which every snapshot shares.
    let node = shared.snapshot.load().telemetry.node.clone();
    node.downstream_accepted
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    node.downstream_connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Held for the connection's life: counted open, and the worker's drain waits for it.
    let held = (OpenConnection(node.clone()), alive);
    let peer = if accepting.proxy_protocol {
        match accept::proxy_header(&mut stream, peer).await {
            Ok(client) => client,
            Err(e) => {
                tracing::info!(%peer, error = %e, "connection closed at accept");
                return;
            }
        }
    } else {
        peer
    };
    let Some(config) = accepting.tls else {
        // A client that opens a connection and sends nothing is let go at the client
        // timeout, like one idle between requests.
        let wait = shared.snapshot.load().config.node.client_timeout;
        let h2 = match tokio::time::timeout(wait, accept::is_h2c(&stream)).await {
            Ok(Ok(h2)) => h2,
            _ => return,
        };
        return serve_http(stream, peer, h2, None, shared, stop, held).await;
    };
    let subject_header = accepting.client_subject_header.as_ref();
    // Boxed: a handshake's state is large and over once the connection serves.
    let handshake = Box::pin(accept::tls(
        stream,
        config,
        accepting.handshake_timeout,
        subject_header,
    ));
    match handshake.await {
        Ok((tls, h2, facts)) => {
            node.tls_handshakes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            serve_http(tls, peer, h2, Some(facts), shared, stop, held).await
        }
        Err(accept::ACME_VALIDATION) => {
            tracing::info!(%peer, "answered an ACME TLS-ALPN-01 validation");
        }
        Err(reason) => {
            node.tls_failed(reason);
            tracing::debug!(%peer, reason, "TLS handshake failed");
        }
    }
}

/// Serves HTTP on an accepted connection (plain or TLS): HTTP/1.1 with upgrades, or HTTP/2.
async fn serve_http<IO>(
    stream: IO,
    peer: SocketAddr,
    h2: bool,
    tls: Option<pipeline::TlsFacts>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    held: (OpenConnection, mpsc::Sender<()>),
) where
    IO: h1::Split,
{
    let (client_timeout, limits, http1) = {
        let snap = shared.snapshot.load();
        let node = &snap.config.node;
        (node.client_timeout, node.http2.clone(), node.http1.clone())
    };
    let own = !h2 && http1.server == gatehouse_model::Http1Server::Own;
    // hyper's HTTP/1 server hides how a request was framed: a watcher on its bytes tells.
    let findings = (!h2 && !own).then(|| Arc::new(framing::Findings::default()));
    let mut info = pipeline::ConnInfo::new(peer, h2, findings.clone());
    if let Some(facts) = tls {
        info = info.with_tls(facts);
    }
    let info = Arc::new(info);
    if own {
        let settings = h1::Settings {
            limits: h1::Limits {
                max_request_line: http1.max_request_line.as_u64() as usize,
                max_header: http1.max_header_size.as_u64() as usize,
                max_head: http1.max_head_size.as_u64() as usize,
            },
            client_timeout,
        };
        // The connection's life goes on in a task of its own, and this one (with the accept
        // stage's state) ends.
        tokio::spawn(h1::serve(stream, info, shared, stop, settings, held));
        return;
    }
    let conn_info = info.clone();
    if let Some(findings) = findings {
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
            let (shared, info) = (shared.clone(), info.clone());
            let req = req.map(RequestBody::Hyper);
            async move { Ok::<_, std::convert::Infallible>(pipeline::handle(shared, info, req).await) }
        });
        let io = TokioIo::new(framing::Watched::new(stream, findings));
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .writev(false)
            .timer(TokioTimer::new())
            .header_read_timeout(client_timeout)
            .serve_connection(io, svc)
            .with_upgrades();
        // Boxed, like the h2 connection below: the task of an own-server connection (the
        // default) should not be as large as hyper's connection futures.
        Box::pin(drive(
            conn,
            &mut stop,
            std::future::pending(),
            client_timeout,
        ))
        .await;
    } else {
        // HTTP/2 spawns each stream's future as a task, which moves it whole: boxed, what
        // moves is a pointer (memmove was the top symbol of the h2 profile).
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
            let (shared, info) = (shared.clone(), info.clone());
            let req = req.map(RequestBody::Hyper);
            async move {
                let answer = Box::pin(pipeline::handle(shared, info, req)).await;
                Ok::<_, std::convert::Infallible>(answer)
            }
        });
        let activity = idle::Activity::new();
        let io = TokioIo::new(idle::Tracked::new(stream, activity.clone()));
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(limits.max_header_list_size.as_u64().min(u32::MAX as u64) as u32)
            .max_pending_accept_reset_streams(limits.max_pending_reset_streams)
            .max_local_error_reset_streams(Some(limits.max_error_reset_streams))
            .keep_alive_interval(Some(limits.ping_interval))
            .keep_alive_timeout(limits.ping_timeout)
            .serve_connection(io, svc);
        let idle = h2_idle(activity, conn_info, client_timeout);
        Box::pin(drive(conn, &mut stop, idle, client_timeout)).await;
    }
}

/// Counts a client connection as open until dropped.
struct OpenConnection(Arc<gatehouse_runtime::telemetry::NodeStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0
            .downstream_connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A served connection that can be asked to finish gracefully. hyper-util's
/// `GracefulConnection` would do, but it is not implemented for the HTTP/1 connection with
/// upgrades that WebSocket needs.
trait Graceful: std::future::Future<Output = Result<(), hyper::Error>> {
    fn finish_gracefully(self: std::pin::Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn finish_gracefully(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn finish_gracefully(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Serves `conn` to its end; on shutdown lets it finish what is in flight, then close. Once
/// `idle` resolves it is asked to finish too, and closed if it has not within `grace` (an
/// HTTP/2 client that does not answer the GOAWAY's ping would keep it open).
async fn drive<C: Graceful>(
    conn: C,
    stop: &mut watch::Receiver<bool>,
    idle: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => log_conn_end(r),
        _ = stopped(stop) => {
            conn.as_mut().finish_gracefully();
            log_conn_end(conn.await);
        }
        _ = idle => {
            conn.as_mut().finish_gracefully();
            if let Ok(r) = tokio::time::timeout(grace, conn.as_mut()).await {
                log_conn_end(r);
            }
        }
    }
}

/// Resolves when an h2c client connection should close: no request within `timeout` of
/// opening (a slow or absent first HEADERS), or no byte from either side for `timeout`.
/// Closing is graceful (GOAWAY): streams in flight finish.
async fn h2_idle(activity: Arc<idle::Activity>, info: Arc<pipeline::ConnInfo>, timeout: Duration) {
    tokio::time::sleep(timeout).await;
    if info.requests_seen() == 0 {
        tracing::debug!(client = %info.client, "h2c connection sent no request in time");
        return;
    }
    activity.idle_for(timeout).await;
}

/// Resolves once shutdown was asked for (or the gateway handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn log_conn_end(r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// Closes this worker's idle upstream connections that outlived their idle timeout.
async fn sweep_idle(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let snap = shared.snapshot.load();
        for t in snap.targets() {
            t.sweep_idle();
        }
    }
}

/// Runs the active health checks of the serving snapshot's upstreams, restarting them when
/// the targets change: a reload swaps the snapshot, or one upstream's targets are replaced.
/// Both tell the snapshot's change channel, so nothing polls. Verdicts live in the targets,
/// so targets that stay keep theirs; checks a reload removed have their verdicts cleared.
async fn health_checks(shared: Arc<Shared>) {
    let mut changes = shared.snapshot.load().changes.subscribe();
    loop {
        changes.mark_unchanged();
        let snap = shared.snapshot.load_full();
        let mut probes = tokio::task::JoinSet::new();
        for u in snap.upstreams.values() {
            let active = u.health.as_ref().and_then(|h| h.active.clone());
            let passive = u.health.as_ref().is_some_and(|h| h.passive.is_some());
            let targets = u.targets().targets.clone();
            for t in &targets {
                t.health.reset(active.is_some(), passive);
            }
            if let Some(check) = active {
                let name: Arc<str> = u.name.as_ref().into();
                probes.spawn(gatehouse_runtime::health::run_active(name, targets, check));
            }
        }
        drop(snap);
        if changes.changed().await.is_err() {
            return;
        }
        // Dropping the set aborts the old probes.
    }
}
