//! The data plane's listening sockets: bound on every worker (SO_REUSEPORT), and changed on
//! reload without a restart. Sockets handed over by the process this one replaces (or by
//! systemd's socket activation) are taken for their address instead of binding anew, and
//! every socket can be handed over in turn (`Listeners::handover`). A reload binds what is new on every worker first, and only when
//! all of it is bound tells the workers to start accepting on it and to stop accepting on
//! what was removed (connections already accepted there finish as they would).

use gatehouse_model::{Config, ConfigError, ListenTls};
use gatehouse_runtime::tls::CertResolver;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Where the node listens when neither the config nor the command line says.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";

/// The listen backlog of every data-plane socket.
const BACKLOG: i32 = 4096;

/// One listening address and how its connections start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    pub address: SocketAddr,
    /// Connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// HTTPS: its TLS settings.
    pub tls: Option<ListenTls>,
}

impl ListenSpec {
    /// A plain HTTP listener on `address`.
    pub fn plain(address: SocketAddr) -> Self {
        Self {
            address,
            proxy_protocol: false,
            tls: None,
        }
    }
}

/// How a listener's connections start, as its workers accept them.
#[derive(Clone)]
pub struct Accepting {
    pub proxy_protocol: bool,
    /// The TLS server config (certificates by SNI from the node's index).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long a handshake may take.
    pub handshake_timeout: std::time::Duration,
    /// Where the verified client certificate's subject goes upstream.
    pub client_subject_header: Option<http::HeaderName>,
}

impl ListenSpec {
    /// The config's `listen` list, or the default address when it is empty. Addresses that do
    /// not parse were refused by validation already.
    pub fn from_config(config: &Config) -> Vec<ListenSpec> {
        if config.listen.is_empty() {
            return DEFAULT_LISTEN
                .parse()
                .into_iter()
                .map(ListenSpec::plain)
                .collect();
        }
        config
            .listen
            .iter()
            .filter_map(|l| {
                Some(ListenSpec {
                    address: l.address.parse().ok()?,
                    proxy_protocol: l.proxy_protocol,
                    tls: l.tls.clone(),
                })
            })
            .collect()
    }
}

/// What a worker is told to do with its listeners.
pub enum Command {
    /// Accept on this socket (this worker's copy of listener `id`).
    Add {
        id: u64,
        socket: std::net::TcpListener,
        accepting: Accepting,
    },
    /// Stop accepting on listener `id`.
    Remove(u64),
}

struct Active {
    spec: ListenSpec,
    /// The bound address (a real port where the spec asked for port 0).
    bound: SocketAddr,
    id: u64,
    /// Copies of the workers' sockets, for a new process to take over.
    sockets: Vec<std::net::TcpListener>,
}

/// Listening sockets inherited at start, until a listener on their address claims them.
static INHERITED: Mutex<Vec<std::net::TcpListener>> = Mutex::new(Vec::new());

/// Offers sockets this process inherited to the listeners about to be bound.
pub fn inherit(sockets: Vec<std::net::TcpListener>) {
    if let Ok(mut pool) = INHERITED.lock() {
        pool.extend(sockets);
    }
}

/// The inherited sockets bound to `addr` (never for port 0: that asks for a fresh port).
fn claim(addr: SocketAddr) -> Vec<std::net::TcpListener> {
    let Ok(mut pool) = INHERITED.lock() else {
        return Vec::new();
    };
    if addr.port() == 0 || pool.is_empty() {
        return Vec::new();
    }
    let (mine, rest) = std::mem::take(&mut *pool)
        .into_iter()
        .partition(|l| l.local_addr().is_ok_and(|a| a == addr));
    *pool = rest;
    mine
}

/// The node's listeners, as the workers run them.
pub struct Listeners {
    workers: Vec<mpsc::UnboundedSender<Command>>,
    active: Mutex<(u64, Vec<Active>)>,
    /// Set by the command line (`--listen`): the config's `listen` is then ignored.
    fixed: bool,
    /// What TLS listeners choose certificates with.
    resolver: Arc<CertResolver>,
}

impl Listeners {
    pub fn new(
        workers: Vec<mpsc::UnboundedSender<Command>>,
        fixed: bool,
        resolver: Arc<CertResolver>,
    ) -> Self {
        Self {
            workers,
            active: Mutex::new((0, Vec::new())),
            fixed,
            resolver,
        }
    }

    /// How connections of `spec` (listener `i`) start; `Err` when its TLS settings do not
    /// build.
    fn accepting(&self, i: usize, spec: &ListenSpec) -> Result<Accepting, ConfigError> {
        let mut a = Accepting {
            proxy_protocol: spec.proxy_protocol,
            tls: None,
            handshake_timeout: std::time::Duration::ZERO,
            client_subject_header: None,
        };
        if let Some(tls) = &spec.tls {
            let config = gatehouse_runtime::tls::server::server_config(tls, self.resolver.clone())
                .map_err(|(field, m)| ConfigError::new(format!("listen[{i}].tls.{field}"), m))?;
            a.tls = Some(Arc::new(config));
            a.handshake_timeout = tls.handshake_timeout;
            a.client_subject_header = tls
                .client_subject_header
                .as_deref()
                .and_then(|h| http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok());
        }
        Ok(a)
    }

    /// Whether the config's `listen` decides (not the command line).
    pub fn follows_config(&self) -> bool {
        !self.fixed
    }

    /// The addresses listened on now, in the order they were configured.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        match self.active.lock() {
            Ok(a) => a.1.iter().map(|a| a.bound).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Makes `specs` the listeners: binds those not listened on yet, on every worker, then
    /// starts them and stops the ones no longer listed. When a bind fails nothing changes,
    /// and the error names the address (`listen[i].address`).
    pub fn apply(&self, specs: &[ListenSpec]) -> Result<(), ConfigError> {
        let Ok(mut guard) = self.active.lock() else {
            return Err(ConfigError::new("listen", "listener state unavailable"));
        };
        let (next_id, active) = &mut *guard;
        let mut bound = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            if active.iter().any(|a| a.spec == *spec) {
                continue;
            }
            let accepting = self.accepting(i, spec)?;
            let sockets = self.bind_on_workers(spec.address).map_err(|e| {
                ConfigError::new(
                    format!("listen[{i}].address"),
                    format!("cannot listen on {}: {e}", spec.address),
                )
            })?;
            bound.push((spec.clone(), accepting, sockets));
        }
        for (spec, accepting, (addr, sockets)) in bound {
            *next_id += 1;
            let kept = sockets.iter().filter_map(|s| s.try_clone().ok()).collect();
            // One socket per worker; inherited ones beyond that go round the workers.
            for (k, socket) in sockets.into_iter().enumerate() {
                let Some(w) = self.workers.get(k % self.workers.len().max(1)) else {
                    break;
                };
                let _ = w.send(Command::Add {
                    id: *next_id,
                    socket,
                    accepting: accepting.clone(),
                });
            }
            tracing::info!(
                address = %addr,
                proxy_protocol = spec.proxy_protocol,
                tls = spec.tls.is_some(),
                "listening"
            );
            active.push(Active {
                spec,
                bound: addr,
                id: *next_id,
                sockets: kept,
            });
        }
        active.retain(|a| {
            let keep = specs.contains(&a.spec);
            if !keep {
                for w in &self.workers {
                    let _ = w.send(Command::Remove(a.id));
                }
                tracing::info!(address = %a.bound, "stopped listening");
            }
            keep
        });
        active.sort_by_key(|a| specs.iter().position(|s| *s == a.spec));
        Ok(())
    }

    /// Every listening socket, copied, for a process that takes over from this one: while
    /// either holds them they stay open, and connections waiting in their queues are
    /// accepted by whichever accepts first.
    pub fn handover(&self) -> Vec<std::net::TcpListener> {
        match self.active.lock() {
            Ok(a) => {
                a.1.iter()
                    .flat_map(|a| a.sockets.iter().filter_map(|s| s.try_clone().ok()))
                    .collect()
            }
            Err(_) => Vec::new(),
        }
    }

    /// One socket per worker on `addr`; the first fixes the port when `addr` asks for 0.
    /// Inherited sockets on `addr` come first; with fewer of them than workers, the rest
    /// join their SO_REUSEPORT group (or share one, when it has none, as systemd's may not).
    fn bind_on_workers(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
        let mut sockets = claim(addr);
        if !sockets.is_empty() {
            for s in &sockets {
                s.set_nonblocking(true)?;
            }
            let n = sockets.len();
            for k in n..self.workers.len() {
                let more = match bind_reuseport(addr) {
                    Ok(l) => l,
                    Err(_) => sockets[k % n].try_clone()?,
                };
                sockets.push(more);
            }
            tracing::info!(address = %addr, inherited = n, "took over listening sockets");
            return Ok((addr, sockets));
        }
        let mut actual = addr;
        for _ in 0..self.workers.len().max(1) {
            let l = bind_reuseport(actual)?;
            actual = l.local_addr()?;
            sockets.push(l);
        }
        Ok((actual, sockets))
    }
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
