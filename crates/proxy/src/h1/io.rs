//! The client connections the own HTTP/1.1 server runs on: split into a read side (lent to
//! a request's body) and a write side (the responses), and put back together for an upgrade.

use std::future::Future;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A client connection the server can split.
pub trait Split: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    type R: AsyncRead + Unpin + Send + Sync + 'static;
    type W: AsyncWrite + Unpin + Send + 'static;

    fn split(self) -> (Self::R, Self::W);
    fn unsplit(r: Self::R, w: Self::W) -> Option<Self>;
    /// Resolves once the read side has bytes, without a buffer to read them into: an idle
    /// connection holds none. Where the stream cannot tell (TLS), at once.
    fn readable(r: &Self::R) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Resolves when the client has closed the connection (or reset it) while a request
    /// runs, so that the request is abandoned as hyper abandons it; never, once the client
    /// sends a pipelined request, or where the stream cannot tell without reading (TLS).
    fn closed(r: &mut Self::R) -> impl Future<Output = ()> + Send;
}

impl Split for TcpStream {
    type R = tokio::net::tcp::OwnedReadHalf;
    type W = tokio::net::tcp::OwnedWriteHalf;

    fn split(self) -> (Self::R, Self::W) {
        self.into_split()
    }

    fn unsplit(r: Self::R, w: Self::W) -> Option<Self> {
        r.reunite(w).ok()
    }

    fn readable(r: &Self::R) -> impl Future<Output = std::io::Result<()>> + Send {
        r.readable()
    }

    async fn closed(r: &mut Self::R) {
        let mut b = [0u8; 1];
        if let Ok(1..) = r.peek(&mut b).await {
            std::future::pending::<()>().await;
        }
    }
}

type Tls = tokio_rustls::server::TlsStream<TcpStream>;

impl Split for Tls {
    type R = tokio::io::ReadHalf<Tls>;
    type W = tokio::io::WriteHalf<Tls>;

    fn split(self) -> (Self::R, Self::W) {
        tokio::io::split(self)
    }

    fn unsplit(r: Self::R, w: Self::W) -> Option<Self> {
        Some(r.unsplit(w))
    }

    fn readable(_: &Self::R) -> impl Future<Output = std::io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }

    fn closed(_: &mut Self::R) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// A connection handed to a tunnel after a 101.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
