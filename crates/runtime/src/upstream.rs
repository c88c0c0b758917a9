//! Upstream targets and their keep-alive connection pools: one idle list per worker thread (no
//! shared lock on the hot path), with per-target caps on total and idle connections.
//!
//! We keep our own pool instead of hyper-util's legacy client: shared/reference/perf-levers.md
//! measured that as the largest single CPU saving (−11 %), and it lets a pool outlive a config
//! reload for targets that stay. HTTP/1.1 connections are our own (`crate::h1`); h2c ones are
//! hyper's `client::conn::http2`, which multiplexes.

use crate::downstream::RequestBody;
use crate::h1;
use bytes::Bytes;
use gatehouse_model::{Keepalive, UpstreamProtocol};
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::cell::Cell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as worker `i`; pools keep one idle list per worker.
pub fn set_worker(i: usize) {
    WORKER.with(|w| w.set(i));
}

pub fn worker() -> usize {
    WORKER.with(|w| w.get())
}

/// The body sent upstream: the client's streamed body, or bytes the gateway made.
pub enum ProxyBody {
    Incoming(RequestBody),
    Bytes(Option<Bytes>),
    /// The client's body with a size limit (a plugin's): past `left` bytes it fails, which
    /// aborts the upstream exchange. And/or counted into `seen` as it streams (a chunked
    /// body, for metrics and the access log). `fault` tells the pipeline whose fault a failed
    /// exchange was: over the limit (413), or a body the client broke (400), not the
    /// upstream's (502).
    Limited {
        body: RequestBody,
        left: u64,
        fault: Arc<BodyFault>,
        seen: Option<Arc<AtomicU64>>,
    },
    /// A body the gateway converts as it streams (gRPC-Web's base64 text).
    Boxed(http_body_util::combinators::BoxBody<Bytes, BoxError>),
    /// A body copied as it streams, so that a retry can send it again (`crate::tee`).
    Tee {
        inner: Box<ProxyBody>,
        copy: Arc<crate::tee::TeeCopy>,
    },
}

/// What went wrong with the client's body while it streamed upstream, if anything.
#[derive(Debug, Default)]
pub struct BodyFault(AtomicU8);

/// See [`BodyFault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Over a plugin's size limit.
    OverLimit,
    /// The client's body could not be read: malformed chunking, or the client went away.
    Broken,
}

impl BodyFault {
    fn set(&self, f: ClientFault) {
        let v = match f {
            ClientFault::OverLimit => 1,
            ClientFault::Broken => 2,
        };
        self.0.store(v, Ordering::Release);
    }

    pub fn get(&self) -> Option<ClientFault> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(ClientFault::OverLimit),
            2 => Some(ClientFault::Broken),
            _ => None,
        }
    }
}

/// A request body went over its limit while it streamed.
#[derive(Debug, thiserror::Error)]
#[error("request body over its size limit")]
pub struct BodyTooLarge;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Bytes(None)
    }

    /// The client's body, limited to `limit` bytes when a plugin asked for a limit, and
    /// watched for faults when `fault` is given (a limit, or a chunked body).
    pub fn client(
        body: RequestBody,
        limit: Option<u64>,
        seen: Option<Arc<AtomicU64>>,
        fault: Option<Arc<BodyFault>>,
    ) -> Self {
        match fault {
            None => ProxyBody::Incoming(body),
            Some(fault) => ProxyBody::Limited {
                body,
                left: limit.unwrap_or(u64::MAX),
                fault,
                seen,
            },
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ProxyBody::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Limited {
                body,
                left,
                fault,
                seen,
            } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if len > *left {
                        fault.set(ClientFault::OverLimit);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *left -= len;
                    if let Some(s) = seen {
                        s.fetch_add(len, Ordering::Relaxed);
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    fault.set(ClientFault::Broken);
                    Poll::Ready(Some(Err(e)))
                }
                other => other.map_err(Into::into),
            },
            ProxyBody::Boxed(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Tee { inner, copy } => {
                let r = Pin::new(&mut **inner).poll_frame(cx);
                match &r {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(d) = frame.data_ref() {
                            copy.data(d);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => copy.end(false),
                    Poll::Ready(None) => copy.end(true),
                    Poll::Pending => {}
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Incoming(b) | ProxyBody::Limited { body: b, .. } => b.is_end_stream(),
            ProxyBody::Bytes(b) => b.is_none(),
            ProxyBody::Boxed(b) => b.is_end_stream(),
            ProxyBody::Tee { inner, copy } => {
                // The sender stops polling once told the body ended: the copy is whole then.
                let end = inner.is_end_stream();
                if end {
                    copy.end(true);
                }
                end
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Incoming(b) | ProxyBody::Limited { body: b, .. } => b.size_hint(),
            ProxyBody::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Tee { inner, .. } => inner.size_hint(),
            ProxyBody::Boxed(b) => b.size_hint(),
        }
    }
}

/// A connection ready to carry a request.
pub enum Sender {
    /// Gatehouse's own HTTP/1.1 connection (`crate::h1`); `None` once an exchange took it
    /// (its response body gives it back to the pool).
    H1(Option<Box<h1::Conn>>),
    H2(http2::SendRequest<ProxyBody>),
}

/// An exchange that failed; it gives the request back when it never reached the target, so it
/// can go out on another connection.
pub struct SendError {
    error: BoxError,
    request: Option<http::Request<ProxyBody>>,
}

impl SendError {
    pub fn take_message(&mut self) -> Option<http::Request<ProxyBody>> {
        self.request.take()
    }

    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }
}

impl Sender {
    fn is_closed(&mut self) -> bool {
        match self {
            Sender::H1(c) => c.as_mut().is_none_or(|c| c.is_closed()),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// Whether the connection can take a request now (an HTTP/2 connection may first have to
    /// wait for a stream).
    pub async fn ready(&mut self) -> bool {
        match self {
            Sender::H1(c) => c.as_mut().is_some_and(|c| !c.is_closed()),
            Sender::H2(s) => s.ready().await.is_ok(),
        }
    }

    /// Sends a request and waits for the response head; on failure the error gives the
    /// request back when it was never sent (so it can go out on another connection).
    pub async fn send(
        &mut self,
        req: http::Request<ProxyBody>,
    ) -> Result<http::Response<UpBody>, SendError> {
        match self {
            Sender::H1(c) => {
                let Some(conn) = c.take() else {
                    return Err(SendError {
                        error: "connection already used".into(),
                        request: Some(req),
                    });
                };
                conn.send(req)
                    .await
                    .map(|r| r.map(UpBody::H1))
                    .map_err(|f| SendError {
                        error: Box::new(f.error),
                        request: f.request,
                    })
            }
            // Boxed: hyper's h2 send has a large state that HTTP/1.1 requests need not carry.
            Sender::H2(s) => Box::pin(s.try_send_request(req))
                .await
                .map(|r| r.map(UpBody::H2))
                .map_err(|mut e| SendError {
                    request: e.take_message(),
                    error: Box::new(e.into_error()),
                }),
        }
    }
}

/// An upstream's response body.
pub enum UpBody {
    H1(h1::Body),
    H2(Incoming),
}

impl UpBody {
    /// The connection to pool again, once an HTTP/1.1 body ended cleanly.
    pub fn take_reusable(&mut self) -> Option<Sender> {
        match self {
            UpBody::H1(b) => b.take_reusable().map(|c| Sender::H1(Some(c))),
            UpBody::H2(_) => None,
        }
    }

    /// After a 101 from an HTTP/1.1 upstream: its connection, for the tunnel.
    pub fn take_upgrade(&mut self) -> Option<h1::Upgraded> {
        match self {
            UpBody::H1(b) => b.take_upgrade(),
            UpBody::H2(_) => None,
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::H1(b) => Pin::new(b).poll_frame(cx),
            UpBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::H1(b) => b.is_end_stream(),
            UpBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::H1(b) => b.size_hint(),
            UpBody::H2(b) => b.size_hint(),
        }
    }
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {0} timed out")]
    Timeout(Box<str>),
    #[error("connecting to {0}: {1}")]
    Io(Box<str>, std::io::Error),
    #[error("handshake with {0}: {1}")]
    Handshake(Box<str>, hyper::Error),
    #[error("{0} is at its connection limit ({1})")]
    Limit(Box<str>, usize),
}

impl ConnectError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ConnectError::Timeout(_) | ConnectError::Limit(..))
    }
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// One upstream target: its address, load counters and connection pool. Shared by every
/// snapshot in which the target (same upstream, address, protocol, keep-alive settings) stays,
/// so a reload keeps its connections and statistics.
pub struct TargetState {
    pub address: Box<str>,
    /// `Host` header value for requests that do not preserve the client's host.
    pub authority: HeaderValue,
    socket_addr: Option<SocketAddr>,
    /// For a target named by host name: its addresses, resolved in the background.
    pub name: Option<Arc<crate::discovery::names::Resolved>>,
    /// How connections to it are opened.
    pub connector: crate::connector::Connector,
    pub protocol: UpstreamProtocol,
    pub keepalive: Keepalive,
    /// Requests in flight (least_conn, ewma).
    pub active: AtomicUsize,
    /// Latency EWMA in nanoseconds, as f64 bits; and when it was last updated.
    ewma_ns: AtomicU64,
    ewma_at: AtomicU64,
    idle: Box<[Mutex<Vec<Idle>>]>,
    idle_cap: usize,
    /// Open connections, busy or idle, over all workers.
    open: Arc<AtomicUsize>,
    freed: Arc<Notify>,
    /// Connections opened since start (observability and tests of reuse).
    pub connects: AtomicU64,
    /// Requests that found an idle connection, per worker (so workers share no cache line).
    hits: Box<[PaddedCount]>,
    /// Active and passive health verdicts.
    pub health: crate::health::TargetHealth,
    /// This target's circuit breaker (used when its upstream configures one).
    pub breaker: crate::breaker::Breaker,
}

#[derive(Default)]
#[repr(align(128))]
struct PaddedCount(AtomicU64);

/// Nanoseconds since the first call, at `at`; 0 is reserved for "never".
pub fn clock(at: Instant) -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(|| at - Duration::from_nanos(1));
    at.saturating_duration_since(*start).as_nanos().max(1) as u64
}

/// How fast old latency samples fade: Finagle's and linkerd's choice.
const EWMA_DECAY_NS: f64 = 10e9;

impl TargetState {
    pub fn new(
        address: &str,
        protocol: UpstreamProtocol,
        keepalive: Keepalive,
        workers: usize,
    ) -> Result<Self, String> {
        let authority = HeaderValue::from_str(address)
            .map_err(|_| format!("\"{address}\" is not a valid host:port"))?;
        let workers = workers.max(1);
        Ok(Self {
            address: address.into(),
            authority,
            socket_addr: address.parse().ok(),
            name: crate::discovery::names::Resolved::for_address(address),
            connector: crate::connector::Connector::Tcp,
            protocol,
            keepalive,
            active: AtomicUsize::new(0),
            ewma_ns: AtomicU64::new(0f64.to_bits()),
            ewma_at: AtomicU64::new(0),
            idle: (0..workers).map(|_| Mutex::new(Vec::new())).collect(),
            idle_cap: keepalive.max_idle.div_ceil(workers),
            open: Arc::new(AtomicUsize::new(0)),
            freed: Arc::new(Notify::new()),
            connects: AtomicU64::new(0),
            hits: (0..workers).map(|_| PaddedCount::default()).collect(),
            health: Default::default(),
            breaker: Default::default(),
        })
    }

    /// Dials through `connector` (TLS for `https` upstreams) instead of plain TCP.
    pub fn with_connector(mut self, connector: crate::connector::Connector) -> Self {
        if matches!(connector, crate::connector::Connector::Tls(_)) {
            // The Host an https target expects leaves out the default port.
            if let Some(host) = self.address.strip_suffix(":443") {
                if let Ok(v) = HeaderValue::from_str(host) {
                    self.authority = v;
                }
            }
        }
        self.connector = connector;
        self
    }

    /// Counts a request served on a pooled connection.
    #[inline]
    pub fn count_hit(&self) {
        if let Some(c) = self.hits.get(worker()) {
            // Only this worker writes its slot.
            c.0.store(c.0.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// Requests served on pooled connections, over all workers.
    pub fn pool_hits(&self) -> u64 {
        self.hits.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn ewma(&self) -> f64 {
        f64::from_bits(self.ewma_ns.load(Ordering::Relaxed))
    }

    /// Folds one response latency into the EWMA; racing updates may lose a sample, which an
    /// average tolerates. `at` is when the sample was taken (the caller has the time already).
    pub fn record_latency(&self, latency: Duration, at: Instant) {
        let now = clock(at);
        let then = self.ewma_at.swap(now, Ordering::Relaxed);
        let sample = latency.as_nanos() as f64;
        let old = self.ewma();
        let new = if then == 0 {
            sample
        } else {
            let w = (-((now.saturating_sub(then)) as f64) / EWMA_DECAY_NS).exp();
            old * w + sample * (1.0 - w)
        };
        self.ewma_ns.store(new.to_bits(), Ordering::Relaxed);
    }

    /// An idle connection of this worker, most recently used first.
    pub fn take_idle(&self) -> Option<Sender> {
        let slot = self.idle.get(worker()).or_else(|| self.idle.first())?;
        let mut list = slot.lock().ok()?;
        self.pop_usable(&mut list)
    }

    /// The most recently returned live connection of `list`, dropping stale ones on the way.
    fn pop_usable(&self, list: &mut Vec<Idle>) -> Option<Sender> {
        while let Some(mut idle) = list.pop() {
            if idle.sender.is_closed() || idle.since.elapsed() > self.keepalive.idle_timeout {
                continue;
            }
            if let Sender::H2(s) = &idle.sender {
                // HTTP/2 multiplexes: hand out a clone and keep the connection listed.
                let clone = Sender::H2(s.clone());
                list.push(idle);
                return Some(clone);
            }
            return Some(idle.sender);
        }
        None
    }

    /// Returns a connection whose exchange finished; dropped (closed) past the idle cap.
    pub fn put_idle(&self, mut sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let Some(slot) = self.idle.get(worker()).or_else(|| self.idle.first()) else {
            return;
        };
        if let Ok(mut list) = slot.lock() {
            if matches!(sender, Sender::H2(_)) && list.iter_mut().any(|i| !i.sender.is_closed()) {
                return;
            }
            if list.len() < self.idle_cap {
                list.push(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
        }
        if self.open.load(Ordering::Relaxed) >= self.keepalive.max_connections {
            // Someone may be waiting at the cap for exactly this connection.
            self.freed.notify_one();
        }
    }

    /// Closes this worker's connections idle longer than the idle timeout.
    pub fn sweep_idle(&self) {
        if let Some(Ok(mut list)) = self.idle.get(worker()).map(|s| s.lock()) {
            let timeout = self.keepalive.idle_timeout;
            list.retain_mut(|i| !i.sender.is_closed() && i.since.elapsed() <= timeout);
        }
    }

    /// Takes an idle connection from any worker's list: used only at the connection cap,
    /// where another worker's idle connection beats waiting for one to close.
    pub fn steal_idle(&self) -> Option<Sender> {
        let own = worker();
        for (i, slot) in self.idle.iter().enumerate() {
            if i == own {
                continue;
            }
            let Ok(mut list) = slot.lock() else { continue };
            if let Some(s) = self.pop_usable(&mut list) {
                return Some(s);
            }
        }
        None
    }

    /// Waits until a connection is returned idle or closed (when at the cap), or `deadline`.
    pub async fn wait_for_free(&self, deadline: tokio::time::Instant) -> bool {
        tokio::time::timeout_at(deadline, self.freed.notified())
            .await
            .is_ok()
    }

    /// A new stream to the target (TCP, or TLS over it) at its literal address, or at its
    /// host name's last resolved one (waiting for the first answer until `deadline`).
    pub async fn dial(
        &self,
        deadline: tokio::time::Instant,
    ) -> std::io::Result<crate::connector::Stream> {
        let Some(name) = &self.name else {
            let at = self.socket_addr(deadline).await?;
            return self.connector.connect(at, &self.address).await;
        };
        // A name may resolve to several addresses (`localhost`: ::1 and 127.0.0.1), not all
        // listening: try each in turn, as getaddrinfo users do.
        let mut last = None;
        for at in name.addresses_to_dial(deadline).await? {
            match self.connector.connect(at, &self.address).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no address to dial")))
    }

    /// The socket address to dial: the literal one, or the host name's last resolved one.
    pub async fn socket_addr(&self, deadline: tokio::time::Instant) -> std::io::Result<SocketAddr> {
        Ok(match (self.socket_addr, &self.name) {
            (Some(a), _) => a,
            (None, Some(n)) => {
                let addrs = n.addresses_to_dial(deadline).await?;
                addrs.first().copied().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
                })?
            }
            (None, None) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{} is not host:port", self.address),
                ))
            }
        })
    }

    /// Opens a new connection within `timeout`; fails at once with [`ConnectError::Limit`]
    /// when `max_connections` are open.
    pub async fn connect(&self, timeout: Duration) -> Result<Sender, ConnectError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let open = self.open.load(Ordering::Acquire);
            if open >= self.keepalive.max_connections {
                return Err(ConnectError::Limit(
                    self.address.clone(),
                    self.keepalive.max_connections,
                ));
            }
            if self
                .open
                .compare_exchange(open, open + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
        }
        let slot = SlotGuard {
            open: self.open.clone(),
            freed: self.freed.clone(),
        };
        let stream = tokio::time::timeout_at(deadline, self.dial(deadline))
            .await
            .map_err(|_| ConnectError::Timeout(self.address.clone()))?
            .map_err(|e| ConnectError::Io(self.address.clone(), e))?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        match self.protocol {
            UpstreamProtocol::Http1 => Ok(Sender::H1(Some(Box::new(h1::Conn::new(
                stream,
                Box::new(slot),
            ))))),
            UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
                let addr = self.address.clone();
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| ConnectError::Handshake(addr.clone(), e))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(target = %addr, error = %e, "upstream connection ended");
                    }
                    drop(slot);
                });
                Ok(Sender::H2(sender))
            }
        }
    }
}

/// Gives the connection's slot back when the connection ends, waking one waiter.
struct SlotGuard {
    open: Arc<AtomicUsize>,
    freed: Arc<Notify>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_one();
    }
}
