//! The WAF's deny log: one JSON line per decision (blocked, or detected in `detect` mode),
//! naming the rules, the matched variable, a truncated matched value and the anomaly score.
//! Written by a thread of its own so that a slow disk never stalls a request; when it falls
//! behind, lines are dropped and counted.

use super::eval::Hit;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

/// One decision.
#[derive(serde::Serialize)]
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub route: &'a str,
    pub client: IpAddr,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub method: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub uri: &'a str,
    pub phase: &'static str,
    pub action: &'static str,
    pub status: u16,
    pub score: i64,
    pub rules: &'a [Hit],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_error: Option<&'a str>,
}

impl Entry<'_> {
    pub fn json(&self) -> String {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            time: String,
            waf: &'a Entry<'a>,
        }
        let time = httpdate::fmt_http_date(std::time::SystemTime::now());
        serde_json::to_string(&Line { time, waf: self }).unwrap_or_default()
    }
}

pub struct DenyLog {
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

impl DenyLog {
    /// Opens `path` for appending (created if missing) and starts its writer.
    pub fn open(path: &Path) -> std::io::Result<DenyLog> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = sync_channel::<String>(4096);
        let dropped = Arc::new(AtomicU64::new(0));
        std::thread::Builder::new()
            .name("waf-deny-log".into())
            .spawn(move || {
                // Ends when the instance (and so the sender) is dropped on a reload.
                while let Ok(mut line) = rx.recv() {
                    line.push('\n');
                    if let Err(e) = file.write_all(line.as_bytes()) {
                        tracing::warn!(target: "gatehouse::waf", error = %e, "deny log write failed");
                    }
                }
            })?;
        Ok(DenyLog { tx, dropped })
    }

    pub fn write(&self, e: &Entry<'_>) {
        match self.tx.try_send(e.json()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}
