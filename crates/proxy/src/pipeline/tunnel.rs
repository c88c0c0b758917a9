//! The tunnel after a 101: bytes copied both ways between the client and the upstream until
//! either side closes.

use crate::body::InFlight;
use gatehouse_plugin_api::Hold;
use gatehouse_runtime::h1::Upgraded;
use hyper_util::rt::TokioIo;

/// Copies bytes both ways between the client and the upstream after a 101.
pub async fn tunnel(
    down: hyper::upgrade::OnUpgrade,
    up: Upgraded,
    in_flight: InFlight,
    holds: Vec<Hold>,
    target: Box<str>,
) {
    let down = match down.await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(%target, error = %e, "upgrade failed");
            return;
        }
    };
    let mut down = TokioIo::new(down);
    let Upgraded {
        io: mut up,
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
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(%target, error = %e, "upgraded connection ended");
    }
    drop(slot);
    drop(in_flight);
    drop(holds);
}
