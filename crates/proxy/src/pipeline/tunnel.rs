//! The tunnel after a 101: bytes copied both ways between the client and the upstream until
//! either side closes.

use crate::body::InFlight;
use crate::idle::{Activity, Tracked};
use gatehouse_plugin_api::Hold;
use gatehouse_runtime::h1::Upgraded;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// The client's side of an upgrade, as the server that read the request hands it over
/// once the 101 is written.
pub enum ClientUpgrade {
    Hyper(hyper::upgrade::OnUpgrade),
    Own(tokio::sync::oneshot::Receiver<crate::h1::Upgraded>),
    /// The own server's receiver was taken already (cannot happen: one request, one take).
    Gone,
}

impl ClientUpgrade {
    pub fn of<B>(req: &mut http::Request<B>) -> Self {
        match req.extensions_mut().remove::<crate::h1::PendingUpgrade>() {
            Some(pending) => pending
                .take()
                .map_or(ClientUpgrade::Gone, ClientUpgrade::Own),
            None => ClientUpgrade::Hyper(hyper::upgrade::on(req)),
        }
    }

    /// The client connection, and what the client sent past its request head (which goes
    /// upstream first).
    async fn connection(self) -> Result<(Box<dyn crate::h1::Io>, bytes::Bytes), String> {
        match self {
            ClientUpgrade::Hyper(on) => match on.await {
                Ok(up) => Ok((Box::new(TokioIo::new(up)), bytes::Bytes::new())),
                Err(e) => Err(e.to_string()),
            },
            ClientUpgrade::Own(rx) => match rx.await {
                Ok(up) => Ok((up.io, up.read_ahead)),
                Err(_) => Err("the 101 could not be written to the client".into()),
            },
            ClientUpgrade::Gone => Err("no client connection to upgrade".into()),
        }
    }
}

/// Copies bytes both ways between the client and the upstream after a 101.
pub async fn tunnel(
    down: ClientUpgrade,
    up: Upgraded,
    in_flight: InFlight,
    holds: Vec<Hold>,
    target: Box<str>,
    idle_timeout: Duration,
) {
    let (down, sent_ahead) = match down.connection().await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(%target, error = %e, "upgrade failed");
            return;
        }
    };
    let activity = Activity::new();
    let mut down = Tracked::new(down, activity.clone());
    let Upgraded {
        io: up,
        read_ahead,
        slot,
    } = up;
    // What the upstream sent right behind its 101 goes to the client first.
    if !read_ahead.is_empty() {
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut down, &read_ahead).await {
            tracing::debug!(%target, error = %e, "upgraded connection ended");
            return;
        }
    }
    let mut up = Tracked::new(up, activity.clone());
    // What the client sent right behind its request goes upstream first.
    if !sent_ahead.is_empty() {
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut up, &sent_ahead).await {
            tracing::debug!(%target, error = %e, "upgraded connection ended");
            return;
        }
    }
    // Both are views of the connections' read buffers (8 and 16 KiB): held for the tunnel's
    // life they were most of what an idle WebSocket cost.
    drop((read_ahead, sent_ahead));
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut down, &mut up) => {
            if let Err(e) = copied {
                tracing::debug!(%target, error = %e, "upgraded connection ended");
            }
        }
        _ = activity.idle_for(idle_timeout) => {
            tracing::debug!(%target, ?idle_timeout, "upgraded connection idle: closed");
        }
    }
    drop(slot);
    drop(in_flight);
    drop(holds);
}
