//! The tunnel after a 101: bytes copied both ways between the client and the upstream until
//! either side closes.

use crate::body::InFlight;
use crate::idle::{Activity, Tracked};
use gatehouse_plugin_api::Hold;
use gatehouse_runtime::h1::Upgraded;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// Copies bytes both ways between the client and the upstream after a 101.
pub async fn tunnel(
    down: hyper::upgrade::OnUpgrade,
    up: Upgraded,
    in_flight: InFlight,
    holds: Vec<Hold>,
    target: Box<str>,
    idle_timeout: Duration,
) {
    let down = match down.await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(%target, error = %e, "upgrade failed");
            return;
        }
    };
    let activity = Activity::new();
    let mut down = Tracked::new(TokioIo::new(down), activity.clone());
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
