//! The per-request state the pipeline's stages share: the connection's facts, what routing
//! chose, what plugins decided, and the observability record, in one place instead of values
//! carried beside the request.

use super::client::Client;
use super::finale::Finale;
use crate::framing::Findings;
use crate::observe::Exchange;
use bytes::Bytes;
use gatehouse_plugin_api::{Consumer, Hold, RequestHead, UpstreamRef};
use gatehouse_runtime::snapshot::{RouteEntry, ServiceEntry, Snapshot, UpstreamEntry};
use http::{Extensions, HeaderMap, HeaderValue};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Facts about the client connection, computed once per connection.
pub struct ConnInfo {
    pub client: SocketAddr,
    /// The client's address as plugins see it (IPv4-mapped IPv6 as IPv4).
    pub ip: IpAddr,
    /// `ip` as a header value (what `X-Forwarded-For` gets appended).
    pub client_ip: HeaderValue,
    pub h2: bool,
    /// Set on connections to TLS listeners.
    pub tls: Option<Box<TlsFacts>>,
    /// HTTP/1.1 only: what the framing watcher found, and how many requests came so far.
    framing: Option<Arc<Findings>>,
    requests: AtomicU64,
}

impl ConnInfo {
    pub fn new(client: SocketAddr, h2: bool, framing: Option<Arc<Findings>>) -> Self {
        let ip = client.ip().to_canonical();
        Self {
            client,
            ip,
            client_ip: HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            h2,
            tls: None,
            framing,
            requests: AtomicU64::new(0),
        }
    }

    /// The connection came over TLS, with these facts.
    pub fn with_tls(mut self, tls: TlsFacts) -> Self {
        self.tls = Some(Box::new(tls));
        self
    }

    /// How many requests came on this connection so far.
    pub fn requests_seen(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts this request; true when its head carried both Content-Length and
    /// Transfer-Encoding.
    pub(super) fn ambiguous_framing(&self) -> bool {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        self.framing.as_ref().is_some_and(|f| f.is_ambiguous(n))
    }
}

/// What the TLS handshake of a client connection settled.
pub struct TlsFacts {
    /// The server name the client asked for.
    pub sni: Option<Box<str>>,
    /// The verified client certificate's subject (`CN=alice,O=Example`), when the listener
    /// verifies client certificates and one was presented.
    pub client_subject: Option<HeaderValue>,
    /// The header the subject goes upstream in (the listener's `client_subject_header`).
    pub subject_header: Option<http::HeaderName>,
}

/// The request's state from its first stage to its last.
pub struct RequestState<'s> {
    /// The snapshot the request is served with, loaded once.
    pub snap: &'s Arc<Snapshot>,
    pub info: Arc<ConnInfo>,
    /// Who the client is (through trusted proxies).
    pub client: Client,
    pub request_id: HeaderValue,
    /// What observability records of the request (metrics, access log, spans, decision).
    pub rec: &'s mut Exchange,
    pub plugins: PluginState,
    /// Body filters and the `log` phase, for routes whose plugins have them.
    pub finale: Option<Finale>,
    /// Set for gRPC calls and transcoded routes: upstream answers are then marked
    /// (`grpc::FromUpstream`) so the gateway's own answers can be told from them. Other
    /// requests pay no extension allocation.
    pub mark_upstream: bool,
}

/// What routing chose for the request: entries borrowed from the request's snapshot.
pub struct Routed<'s> {
    pub index: usize,
    pub route: &'s RouteEntry,
    pub service: &'s ServiceEntry,
    /// Where the request goes: its service's upstream.
    pub upstream: &'s UpstreamEntry,
    /// The path and query to send upstream, when routing changed them.
    pub new_path: Option<String>,
    /// The consistent-hash key (empty unless the upstream hashes).
    pub hash_key: Vec<u8>,
    /// The client's Host (or its URI's authority), as it came.
    pub host: Option<HeaderValue>,
    /// The route's captures, kept only for routes whose plugins want the request's facts.
    pub captures: Vec<(Box<str>, Box<str>)>,
}

/// What the request's plugins decided, kept across phases.
#[derive(Default)]
pub struct PluginState {
    /// Set by an authentication plugin once it identified the caller.
    pub consumer: Option<Consumer>,
    /// Headers for the client's response, whatever produces it.
    pub response_headers: HeaderMap,
    /// Kept until the request has ended.
    pub holds: Vec<Hold>,
    /// The smallest request-body cap a plugin set.
    pub body_limit: Option<u64>,
    /// The plugins' typed per-request state (allocates only once something is put in).
    pub state: Extensions,
    /// The request body, read before `access` when a plugin of the route asked for it.
    pub body: Option<Bytes>,
    /// The body was over the cap and is passed on unread (`Needs::request_body_partial`).
    pub body_partial: bool,
    /// The upstream a plugin chose instead of the service's.
    pub upstream: Option<UpstreamRef>,
    /// The release variant a plugin gave the request.
    pub variant: Option<gatehouse_plugin_api::Variant>,
    /// A plugin asked for copies of this request's exchange.
    pub keep_copies: bool,
    /// The request head for the `response` phase, when a plugin of the route asked for it.
    pub head: Option<Box<RequestHead>>,
}
