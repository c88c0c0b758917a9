//! The real `gatehouse` binary run by a test: started on port 0, its log read line by line
//! (addresses come from it), signalled, and killed when the test ends.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// A running `gatehouse run` with its stderr collected line by line.
pub struct Running {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub fn start(config: &Path) -> (Running, std::net::SocketAddr) {
        Running::start_with(Command::new(BIN), &["-c".as_ref(), config.as_os_str()], 2)
    }

    /// Started through `taskset -c CPU`: one core, one worker.
    pub fn start_pinned(config: &Path, cpu: &str) -> (Running, std::net::SocketAddr) {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", cpu, BIN]);
        Running::start_with(cmd, &["-c".as_ref(), config.as_os_str()], 1)
    }

    /// Store mode: config in the store at `url`, the node's snapshot under `data`.
    pub fn start_store(url: &str, data: &Path) -> (Running, std::net::SocketAddr) {
        Running::start_store_with(url, data, &[])
    }

    pub fn start_store_with(
        url: &str,
        data: &Path,
        extra: &[&std::ffi::OsStr],
    ) -> (Running, std::net::SocketAddr) {
        let mut args = vec![
            "--store".as_ref(),
            url.as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
        ];
        args.extend_from_slice(extra);
        Running::start_with(Command::new(BIN), &args, 2)
    }

    pub fn start_with(
        cmd: Command,
        source: &[&std::ffi::OsStr],
        workers: usize,
    ) -> (Running, std::net::SocketAddr) {
        Running::start_with_admin(cmd, source, workers, "127.0.0.1:0")
    }

    /// [`Running::start_with`] with the admin API on `admin`.
    pub fn start_with_admin(
        mut cmd: Command,
        source: &[&std::ffi::OsStr],
        workers: usize,
        admin: &str,
    ) -> (Running, std::net::SocketAddr) {
        let child = cmd
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                admin,
                "--workers",
            ])
            .arg(workers.to_string())
            .args(source)
            .env("GATEHOUSE_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut r = Running::watching(child);
        let line = r.wait_for("gatehouse listening");
        let addr = line
            .split("address=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no address in: {line}"));
        (r, addr)
    }

    /// A started gateway whose log (stderr, piped) is read line by line.
    pub fn watching(mut child: Child) -> Running {
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// A line with `needle` logged already (before the node said it listens, say), or the
    /// next one.
    pub fn logged(&mut self, needle: &str) -> String {
        match self.seen.iter().find(|l| l.contains(needle)) {
            Some(line) => line.clone(),
            None => self.wait_for(needle),
        }
    }

    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
        }
        panic!(
            "never logged {needle:?}; log so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// Where the admin API listens, from its log line.
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.seen
            .iter()
            .find(|l| l.contains("admin API listening"))
            .and_then(|l| l.split("address=").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no admin address in:\n{}", self.seen.join("\n")))
    }

    /// Waits (up to 10 s) for the process to exit, as after SIGTERM.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
