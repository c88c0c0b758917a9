//! A real DNS server owned by one test: `dnsmasq` (Debian's `dnsmasq-base`) answering only
//! from its own hosts file and SRV records, on a free loopback UDP/TCP port, with a short
//! TTL. The test rewrites the records (SIGHUP re-reads the hosts file), stops and restarts it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct DnsServer {
    pub port: u16,
    dir: std::path::PathBuf,
    /// `--srv-host` values: `_http._tcp.name,target,port,priority,weight`.
    srv: Vec<String>,
    ttl: u32,
    child: Option<Child>,
}

/// A port free for both UDP and TCP on 127.0.0.1.
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp port");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl DnsServer {
    /// Serves `hosts` (`ip name` lines) and `srv` records with answers valid for `ttl`
    /// seconds.
    pub async fn start(hosts: &str, srv: &[&str], ttl: u32) -> DnsServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("gatehouse-dns-{port}"));
        std::fs::create_dir_all(&dir).expect("dns dir");
        let mut d = DnsServer {
            port,
            dir,
            srv: srv.iter().map(|s| s.to_string()).collect(),
            ttl,
            child: None,
        };
        d.set_hosts(hosts);
        d.restart().await;
        d
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn hosts_file(&self) -> std::path::PathBuf {
        self.dir.join("hosts")
    }

    /// Replaces the A/AAAA records; a running server re-reads them at once.
    pub fn set_hosts(&mut self, hosts: &str) {
        std::fs::write(self.hosts_file(), hosts).expect("write hosts");
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-HUP", &c.id().to_string()])
                .status();
        }
    }

    /// Starts dnsmasq (again) on the same port.
    pub async fn restart(&mut self) {
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
        ])
        .args(["--listen-address=127.0.0.1", "--user=root"])
        .arg(format!("--port={}", self.port))
        .arg(format!("--local-ttl={}", self.ttl))
        .arg(format!("--addn-hosts={}", self.hosts_file().display()))
        .arg(format!("--pid-file={}", self.dir.join("pid").display()));
        for s in &self.srv {
            cmd.arg(format!("--srv-host={s}"));
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        match child {
            Ok(c) => self.child = Some(c),
            Err(e) => panic!(
                "cannot start dnsmasq ({e}); install it (apt-get install dnsmasq-base), \
                 as scripts/test.sh does"
            ),
        }
        // dnsmasq binds before it forks nothing (--no-daemon): a short wait for the socket.
        for _ in 0..50 {
            if std::net::UdpSocket::bind(("127.0.0.1", self.port)).is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("dnsmasq did not bind port {}", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
