//! How connections to upstream targets are opened and what they are: the [`Connector`] a
//! target dials through and the [`Stream`] both HTTP clients (our HTTP/1.1 one, hyper's h2c)
//! and tunnels run over: plain TCP, or TLS (SNI, ALPN) over it.

use gatehouse_model::UpstreamTls;
use rustls::pki_types::ServerName;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// How a target is dialled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Connector {
    /// Plain TCP, with Nagle off (requests are written whole).
    #[default]
    Tcp,
    /// TLS over TCP.
    Tls(Arc<Tls>),
}

/// An upstream's TLS client settings, compiled.
pub struct Tls {
    config: Arc<rustls::ClientConfig>,
    /// What it was compiled from: two connectors are the same when this is (so a reload
    /// keeps the pools of targets whose TLS settings stay).
    spec: (Option<UpstreamTls>, bool),
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("sni", &self.sni()).finish()
    }
}

impl PartialEq for Tls {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl Eq for Tls {}

impl Tls {
    /// The connector of an upstream with `scheme: https` and these settings; `h2` offers
    /// HTTP/2 by ALPN. `Err` names the setting at fault.
    pub fn new(tls: Option<&UpstreamTls>, h2: bool) -> Result<Self, (&'static str, String)> {
        let config = crate::tls::client::client_config(tls, h2)?;
        if tls.is_some_and(|t| !t.verify) {
            tracing::warn!("an upstream has tls.verify off: its certificates are not checked");
        }
        Ok(Self {
            config,
            spec: (tls.cloned(), h2),
        })
    }

    fn sni(&self) -> Option<&str> {
        self.spec.0.as_ref().and_then(|t| t.sni.as_deref())
    }
}

impl Connector {
    /// A connection to `address` (`host:port`, the name TLS checks) at `at`, its resolved
    /// socket address (resolution happens elsewhere, never here).
    pub async fn connect(&self, at: SocketAddr, address: &str) -> io::Result<Stream> {
        let tcp = TcpStream::connect(at).await?;
        let _ = tcp.set_nodelay(true);
        match self {
            Connector::Tcp => Ok(Stream::Tcp(tcp)),
            Connector::Tls(tls) => {
                let name: ServerName<'static> = crate::tls::client::server_name(tls.sni(), address)
                    .map_err(|m| io::Error::new(io::ErrorKind::InvalidInput, m))?;
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let stream = connector.connect(name, tcp).await.map_err(|e| {
                    // Say what TLS found wrong (an unknown issuer, a name mismatch): this is
                    // what the 502's log line shows.
                    io::Error::new(e.kind(), format!("TLS handshake: {e}"))
                })?;
                Ok(Stream::Tls(Box::new(stream)))
            }
        }
    }
}

/// An open connection to a target.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether the target closed the connection (or sent bytes nobody asked for) while it was
    /// idle. Costs no system call unless the socket reported readiness.
    pub fn is_closed(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self {
            Stream::Tcp(tcp) => match tcp.poll_read_ready(&mut cx) {
                Poll::Pending => false,
                Poll::Ready(Err(_)) => true,
                // Readiness can be left over from the last read; a non-blocking read tells.
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    !matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            Stream::Tls(tls) => {
                if tls.get_ref().0.poll_read_ready(&mut cx).is_pending() {
                    return false;
                }
                // TLS 1.3 servers send session tickets after the handshake: let rustls read
                // what arrived. Still pending after that: open. Data or EOF: not reusable.
                let mut probe = [0u8; 1];
                let mut buf = ReadBuf::new(&mut probe);
                !Pin::new(&mut **tls)
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
        }
    }
}

impl Stream {
    /// Read and write halves borrowed from this stream, for writing a request body while
    /// reading the response head (no allocation, no lock for TCP).
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Tls(s) => {
                // TLS state is one object: its halves share it behind tokio's lock.
                let (r, w) = tokio::io::split(&mut **s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }
}

type TlsRef<'a> = &'a mut TlsStream<TcpStream>;

pub enum ReadHalf<'a> {
    Tcp(tokio::net::tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<TlsRef<'a>>),
}

pub enum WriteHalf<'a> {
    Tcp(tokio::net::tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<TlsRef<'a>>),
}

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}
