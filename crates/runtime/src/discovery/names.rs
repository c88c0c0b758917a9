//! Static targets named by host name (`orders.internal:8080`): their addresses are resolved
//! in the background by the answer's TTL, so opening a connection never waits on DNS. A
//! connection opened before the first answer waits for it (bounded by the connect timeout)
//! rather than resolving on its own.

use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;

/// Re-resolve no sooner and no later than these after an answer, whatever its TTL.
pub const MIN_TTL: Duration = Duration::from_secs(1);
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// After a failed resolution, try again this soon.
const RETRY: Duration = Duration::from_secs(5);

/// A target's host name and the addresses it resolved to last.
#[derive(Debug)]
pub struct Resolved {
    pub host: Box<str>,
    pub port: u16,
    addrs: ArcSwap<Box<[SocketAddr]>>,
    next: AtomicUsize,
    /// Unix milliseconds after which the answer is stale; 0: never resolved.
    due_ms: AtomicU64,
    /// The last failure, while there is one.
    error: Mutex<Option<String>>,
    answered: Notify,
}

fn unix_ms() -> u64 {
    super::unix_ms(SystemTime::now())
}

impl Resolved {
    /// `None` for an address that is already a socket address.
    pub fn for_address(address: &str) -> Option<Arc<Resolved>> {
        if address.parse::<SocketAddr>().is_ok() {
            return None;
        }
        let (host, port) = address.rsplit_once(':')?;
        Some(Arc::new(Resolved {
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port: port.parse().ok()?,
            addrs: ArcSwap::from_pointee(Box::default()),
            next: AtomicUsize::new(0),
            due_ms: AtomicU64::new(0),
            error: Mutex::new(None),
            answered: Notify::new(),
        }))
    }

    /// The addresses to dial, in the order to try them: the last answer's, starting at the
    /// next in turn (so connections spread), or the first answer's once the background
    /// resolver has it (asked for at once), by `deadline`.
    pub async fn addresses_to_dial(
        &self,
        deadline: tokio::time::Instant,
    ) -> std::io::Result<Vec<SocketAddr>> {
        loop {
            let answered = self.answered.notified();
            let addrs = self.addrs.load();
            if !addrs.is_empty() {
                let start = self.next.fetch_add(1, Ordering::Relaxed) % addrs.len();
                let mut order = Vec::with_capacity(addrs.len());
                order.extend_from_slice(addrs.get(start..).unwrap_or_default());
                order.extend_from_slice(addrs.get(..start).unwrap_or_default());
                return Ok(order);
            }
            if let Some(e) = self.error.lock().ok().and_then(|e| e.clone()) {
                return Err(std::io::Error::new(std::io::ErrorKind::NotFound, e));
            }
            KICK.notify_one();
            if tokio::time::timeout_at(deadline, answered).await.is_err() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{} is not resolved yet", self.host),
                ));
            }
        }
    }

    /// Whether the answer is stale (or missing).
    pub fn is_due(&self, now_ms: u64) -> bool {
        self.due_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// The addresses resolved last, for the admin API.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.addrs.load().to_vec()
    }

    /// Resolves the name again with `resolver`; a failure keeps the last answer.
    pub async fn refresh(&self, resolver: &hickory_resolver::TokioResolver) {
        let outcome = resolver.lookup_ip(self.host.as_ref()).await;
        match outcome {
            Ok(ips) => {
                let ttl = ips
                    .valid_until()
                    .saturating_duration_since(Instant::now())
                    .clamp(MIN_TTL, MAX_TTL);
                let addrs: Box<[SocketAddr]> = ips
                    .iter()
                    .map(|ip| SocketAddr::new(ip, self.port))
                    .collect();
                if addrs.is_empty() {
                    self.failed("no addresses".into());
                    return;
                }
                if **self.addrs.load() != addrs {
                    tracing::debug!(host = %self.host, ?addrs, "target host name resolved");
                }
                self.addrs.store(Arc::new(addrs));
                if let Ok(mut e) = self.error.lock() {
                    *e = None;
                }
                self.due_ms
                    .store(unix_ms() + ttl.as_millis() as u64, Ordering::Relaxed);
            }
            Err(e) => self.failed(e.to_string()),
        }
        self.answered.notify_waiters();
    }

    fn failed(&self, e: String) {
        tracing::warn!(host = %self.host, error = %e, kept = self.addrs.load().len(),
            "cannot resolve a target's host name; keeping its last addresses");
        if self.addrs.load().is_empty() {
            if let Ok(mut slot) = self.error.lock() {
                *slot = Some(format!("cannot resolve {}: {e}", self.host));
            }
        }
        self.due_ms
            .store(unix_ms() + RETRY.as_millis() as u64, Ordering::Relaxed);
        self.answered.notify_waiters();
    }
}

/// Wakes the background resolver: a connection waits for a name's first answer.
pub static KICK: Notify = Notify::const_new();

/// Refreshes every name in `names` whose answer is stale, a few at a time.
pub async fn refresh_due(names: Vec<Arc<Resolved>>, resolver: &hickory_resolver::TokioResolver) {
    let now = unix_ms();
    let due: Vec<_> = names.into_iter().filter(|n| n.is_due(now)).collect();
    for chunk in due.chunks(16) {
        let all = chunk.iter().map(|n| n.refresh(resolver));
        futures_util::future::join_all(all).await;
    }
}
