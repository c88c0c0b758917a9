//! A real `etcd` owned by one test (Debian's `etcd-server`), on free loopback ports with its
//! own data directory, that the test can kill and restart on the same ports and data; keys
//! are written with the real `etcdctl`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdServer {
    pub client_port: u16,
    peer_port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
    /// Serving HTTPS with this certificate and key (PEM), verified with `ca` (PEM).
    tls: Option<(String, String, String)>,
    /// `user:password` etcdctl logs in with, once authentication is on.
    login: Option<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl EtcdServer {
    pub async fn start() -> EtcdServer {
        Self::start_with(None).await
    }

    /// Serves HTTPS with `cert` and `key` (PEM, for 127.0.0.1), which `ca` (PEM) issued.
    pub async fn start_tls(cert: &str, key: &str, ca: &str) -> EtcdServer {
        Self::start_with(Some((cert.into(), key.into(), ca.into()))).await
    }

    async fn start_with(tls: Option<(String, String, String)>) -> EtcdServer {
        let client_port = free_port();
        let peer_port = free_port();
        let dir = std::env::temp_dir().join(format!("gatehouse-etcd-{client_port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd dir");
        if let Some((cert, key, ca)) = &tls {
            std::fs::write(dir.join("cert.pem"), cert).unwrap();
            std::fs::write(dir.join("key.pem"), key).unwrap();
            std::fs::write(dir.join("ca.pem"), ca).unwrap();
        }
        let mut e = EtcdServer {
            client_port,
            peer_port,
            dir,
            child: None,
            tls,
            login: None,
        };
        e.restart().await;
        e
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Turns authentication on: a `root` user (for etcdctl from now on) and `user` with
    /// `password`, who may only read keys under `prefix`.
    pub fn enable_auth(&mut self, user: &str, password: &str, prefix: &str) {
        for args in [
            vec!["user", "add", "root:rootpw"],
            vec!["role", "add", "reader"],
            vec![
                "role",
                "grant-permission",
                "reader",
                "read",
                prefix,
                "--prefix=true",
            ],
            vec!["user", "add", &format!("{user}:{password}")],
            vec!["user", "grant-role", user, "reader"],
            vec!["auth", "enable"],
        ] {
            if let Err(e) = self.ctl(&args) {
                panic!("etcdctl {args:?}: {e}");
            }
        }
        self.login = Some("root:rootpw".into());
    }

    /// Starts etcd (again) on the same ports and data, and waits until it answers.
    pub async fn restart(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new("etcd");
        if self.tls.is_some() {
            cmd.arg("--cert-file")
                .arg(self.dir.join("cert.pem"))
                .arg("--key-file")
                .arg(self.dir.join("key.pem"));
        }
        let child = cmd
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--name", "test"])
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(c) => self.child = Some(c),
            Err(e) => panic!(
                "cannot start etcd ({e}); install it (apt-get install etcd-server etcd-client), \
                 as scripts/test.sh does"
            ),
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.ctl(&["endpoint", "health"]).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("etcd on port {} did not answer", self.client_port);
    }

    /// Kills etcd (SIGKILL: no goodbye to watchers).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `etcdctl ARGS` against this server; its stdout, or stderr as the error.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint(), "--dial-timeout", "1s"]);
        if self.tls.is_some() {
            cmd.arg("--cacert").arg(self.dir.join("ca.pem"));
        }
        if let Some(login) = &self.login {
            cmd.args(["--user", login]);
        }
        let out = cmd
            .args(args)
            .output()
            .map_err(|e| format!("cannot run etcdctl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn put(&self, key: &str, value: &str) {
        if let Err(e) = self.ctl(&["put", key, value]) {
            panic!("etcdctl put {key}: {e}");
        }
    }

    pub fn del(&self, key: &str) {
        if let Err(e) = self.ctl(&["del", key]) {
            panic!("etcdctl del {key}: {e}");
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
