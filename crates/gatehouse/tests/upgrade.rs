//! Zero-downtime restart and binary upgrade of the real binary: under concurrent load, SIGUSR2
//! starts a new process that takes over the listening sockets; the old one drains and exits.
//! No request may fail and no connection may be reset, across a restart (same binary) and an
//! upgrade (a new file at the binary's path).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/running.rs"]
mod running;

use common::*;
use running::{Running, BIN};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    reset: AtomicU64,
    reconnects: AtomicU64,
}

/// One response on `s`: its status and whether the server said it closes.
async fn exchange(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<(u16, bool)> {
    s.write_all(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").await?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok((status, head.contains("connection: close")));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Requests back to back on keep-alive connections (a new one when the server closes one)
/// until `stop`; every failure is counted, resets apart.
async fn client(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut s = match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("connect: {e}");
                tally.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        tally.reconnects.fetch_add(1, Ordering::Relaxed);
        while !stop.load(Ordering::Relaxed) {
            match exchange(&mut s, &mut buf).await {
                Ok((200, close)) => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                    if close {
                        break;
                    }
                }
                Ok((status, _)) => {
                    eprintln!("status {status}");
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    eprintln!("request: {e}");
                    if e.kind() == std::io::ErrorKind::ConnectionReset {
                        tally.reset.fetch_add(1, Ordering::Relaxed);
                    }
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The pid the old process named when the new one took over.
fn new_pid(line: &str) -> i32 {
    line.split("pid=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pid in: {line}"))
}

fn signal(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Stops whichever process serves at the end, whatever happened.
struct Last(Arc<std::sync::Mutex<i32>>);

impl Drop for Last {
    fn drop(&mut self) {
        if let Ok(pid) = self.0.lock() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// Waits (bounded) until `pid` has exited.
async fn exited(pid: i32, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_and_binary_upgrade_under_load_fail_no_request() {
    let o = Origin::start("a").await;
    let dir = std::env::temp_dir().join(format!("gh-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("gatehouse");
    std::fs::copy(BIN, &bin).unwrap();
    let cfg = dir.join("gateway.yaml");
    std::fs::write(&cfg, upstream_yaml(&[o.addr], "") + ROUTE_ALL).unwrap();
    let port = free_port();
    let child = Command::new(&bin)
        .args([
            "run",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin",
            "127.0.0.1:0",
        ])
        .args(["--workers", "2", "-c"])
        .arg(&cfg)
        .env("GATEHOUSE_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let first = child.id() as i32;
    // The first process is the test's child; the ones after are its children, and then
    // orphans: the log pipe is inherited, so one reader sees every process's lines.
    let mut log = Running::watching(child);
    log.wait_for("gatehouse listening");
    let serving = Arc::new(std::sync::Mutex::new(first));
    let _last = Last(serving.clone());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..8)
        .map(|_| tokio::spawn(client(addr, stop.clone(), tally.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A restart (the same binary), then an upgrade (a new file at the binary's path).
    let mut old = first;
    for round in ["restart", "upgrade"] {
        if round == "upgrade" {
            let next = dir.join("gatehouse.new");
            std::fs::copy(BIN, &next).unwrap();
            std::fs::rename(&next, &bin).unwrap();
        }
        let before = tally.ok.load(Ordering::Relaxed);
        signal(old, "-USR2");
        let line = log.wait_for("the new process serves");
        let new = new_pid(&line);
        *serving.lock().unwrap() = new;
        assert!(
            exited(old, Duration::from_secs(20)).await,
            "{round}: the old process drained and exited"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = tally.ok.load(Ordering::Relaxed);
        assert!(alive(new), "{round}: the new process serves");
        assert!(
            after > before + 100,
            "{round}: requests went on ({before} → {after})"
        );
        old = new;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed, reset) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.reset.load(Ordering::Relaxed),
    );
    eprintln!(
        "{ok} requests, {failed} failed, {reset} reset, {} connections",
        tally.reconnects.load(Ordering::Relaxed)
    );
    assert_eq!(
        (failed, reset),
        (0, 0),
        "no request failed, no connection was reset"
    );
    signal(old, "-TERM");
    assert!(exited(old, Duration::from_secs(20)).await);
    let _ = std::fs::remove_dir_all(&dir);
}
