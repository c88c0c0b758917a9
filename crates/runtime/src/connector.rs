//! How connections to upstream targets are opened and what they are: the [`Connector`] a
//! target dials through and the [`Stream`] both HTTP clients (our HTTP/1.1 one, hyper's h2c)
//! and tunnels run over. Plain TCP today; TLS (SNI, ALPN) joins as one more variant of each,
//! so the pool, the clients and the pipeline do not change.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How a target is dialled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Connector {
    /// Plain TCP, with Nagle off (requests are written whole).
    #[default]
    Tcp,
}

impl Connector {
    /// A connection to `address` (`host:port`), through `resolved` when it is a literal
    /// socket address (no resolver on the hot path).
    pub async fn connect(self, resolved: Option<SocketAddr>, address: &str) -> io::Result<Stream> {
        let tcp = match resolved {
            Some(a) => TcpStream::connect(a).await?,
            None => TcpStream::connect(address).await?,
        };
        let _ = tcp.set_nodelay(true);
        match self {
            Connector::Tcp => Ok(Stream::Tcp(tcp)),
        }
    }
}

/// An open connection to a target.
pub enum Stream {
    Tcp(TcpStream),
}

impl Stream {
    /// Whether the target closed the connection (or sent bytes nobody asked for) while it was
    /// idle. Costs no system call unless the socket reported readiness.
    pub fn is_closed(&self) -> bool {
        match self {
            Stream::Tcp(tcp) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                match tcp.poll_read_ready(&mut cx) {
                    Poll::Pending => false,
                    Poll::Ready(Err(_)) => true,
                    // Readiness can be left over from the last read; a non-blocking read tells.
                    Poll::Ready(Ok(())) => {
                        let mut probe = [0u8; 1];
                        !matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                    }
                }
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
        }
    }
}

pub enum ReadHalf<'a> {
    Tcp(tokio::net::tcp::ReadHalf<'a>),
}

pub enum WriteHalf<'a> {
    Tcp(tokio::net::tcp::WriteHalf<'a>),
}

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(s) => Pin::new(s).poll_read(cx, buf),
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
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_shutdown(cx),
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
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
        }
    }
}
