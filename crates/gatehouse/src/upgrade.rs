//! Zero-downtime restart and binary upgrade. On SIGUSR2 the node starts the binary at its
//! own path again (a new build there is an upgrade; the same one, a restart) with the same
//! arguments, handing it every listening socket (the systemd `LISTEN_FDS` protocol, with
//! `LISTEN_FDNAMES` telling data-plane sockets from the admin API's). The new process takes
//! the sockets instead of binding, says it is ready on a pipe, and only then does the old
//! one stop accepting and drain. The sockets are never closed in between, so no connection
//! waiting in a listen queue is refused or reset. Under systemd (`Type=notify`,
//! `NotifyAccess=all`) the new process also tells systemd it is the main process now.
//!
//! By hand because no crate does the whole exchange; the crates it stands on do the unsafe
//! parts: `listenfd` takes inherited descriptors, `command-fds` places them in the child.

use anyhow::Context;
use std::io::BufRead;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::Duration;

/// The descriptor number of the pipe the new process says `ready` on.
const READY_FD: &str = "GATEHOUSE_READY_FD";
/// How long a new process may take to start listening before the upgrade is given up.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Inherited sockets of the admin API and the open metrics listener, until bound.
static ADMIN: Mutex<Vec<(String, TcpListener)>> = Mutex::new(Vec::new());

/// Takes the sockets this process inherited: data-plane ones go to the listeners, the admin
/// API's wait for [`admin_socket`]. Called once at start, before anything binds.
pub fn take_inherited() {
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    let mut data = Vec::new();
    for i in 0..fds.len() {
        match fds.take_tcp_listener(i) {
            Ok(Some(l)) => match names.get(i).map(String::as_str) {
                Some(name @ ("admin" | "metrics")) => {
                    if let Ok(mut admin) = ADMIN.lock() {
                        admin.push((name.to_owned(), l));
                    }
                }
                _ => data.push(l),
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(fd = i + 3, error = %e, "an inherited descriptor is not a TCP listener")
            }
        }
    }
    if !data.is_empty() {
        gatehouse_proxy::listeners::inherit(data);
    }
    // Not for the processes this one starts: they get their own.
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
}

/// A listener for the admin API (`name`: `admin` or `metrics`) on `addr`: the inherited one
/// when there is one, else newly bound.
pub fn admin_socket(name: &str, addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    if let Ok(mut admin) = ADMIN.lock() {
        let at = admin.iter().position(|(n, l)| {
            n == name && (addr.port() == 0 || l.local_addr().is_ok_and(|a| a == addr))
        });
        if let Some(at) = at {
            let (_, l) = admin.remove(at);
            l.set_nonblocking(true)?;
            return Ok(l);
        }
    }
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Tells whoever started this process that it serves: the old process of an upgrade (on
/// its pipe) and systemd (`READY=1`, and `MAINPID` so that systemd follows this process).
pub fn tell_ready() {
    if let Ok(fd) = std::env::var(READY_FD) {
        std::env::remove_var(READY_FD);
        // The pipe is opened anew through /proc: no unsafe descriptor adoption needed.
        match std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{fd}"))
        {
            Ok(mut pipe) => {
                let _ = std::io::Write::write_all(&mut pipe, b"ready\n");
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not tell the old process this one is ready")
            }
        }
    }
    sd_notify(&format!("READY=1\nMAINPID={}\n", std::process::id()));
}

/// A systemd notification, when systemd asked for them (`NOTIFY_SOCKET`).
fn sd_notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|a| socket.send_to_addr(message.as_bytes(), &a))
        }
        None => socket.send_to(message.as_bytes(), &path),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "systemd notification failed");
    }
}

/// The binary to start: this one's path, which may hold a newer build by now (Linux marks
/// the running, replaced file "(deleted)").
fn own_path() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe().context("cannot find this binary's path")?;
    let s = exe.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(path) => path.into(),
        None => exe,
    })
}

/// Starts the new process with `sockets` (name, socket) and waits until it serves; its pid.
/// On any failure the new process is stopped and this one goes on serving.
pub async fn hand_over(sockets: Vec<(&'static str, TcpListener)>) -> anyhow::Result<u32> {
    use command_fds::{CommandFdExt, FdMapping};
    let exe = own_path()?;
    let n = sockets.len();
    let names: Vec<&str> = sockets.iter().map(|(n, _)| *n).collect();
    let (reader, writer) = std::io::pipe().context("cannot make the readiness pipe")?;
    let mut mappings: Vec<FdMapping> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, (_, s))| FdMapping {
            parent_fd: OwnedFd::from(s),
            child_fd: 3 + i as i32,
        })
        .collect();
    mappings.push(FdMapping {
        parent_fd: OwnedFd::from(writer),
        child_fd: 3 + n as i32,
    });
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", n.to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .env(READY_FD, (3 + n).to_string());
    cmd.fd_mappings(mappings)
        .context("cannot place the sockets for the new process")?;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    // The command owns this side's copies of the pipe's writer: gone, a child that dies
    // before it is ready ends the wait below at once.
    drop(cmd);
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(reader)
            .read_line(&mut line)
            .map(|_| line)
    });
    match tokio::time::timeout(READY_WITHIN, ready).await {
        Ok(Ok(Ok(line))) if line.trim() == "ready" => Ok(child.id()),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the new process did not become ready")
        }
    }
}
