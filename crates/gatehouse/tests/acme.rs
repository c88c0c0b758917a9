//! ACME against a real ACME server: Debian's pebble (Let's Encrypt's test CA) with its
//! challenge test server as DNS (every name is 127.0.0.1), started here on free ports. The
//! real binary orders a certificate with HTTP-01 and with TLS-ALPN-01, serves it without a
//! restart, keeps it in its data directory (or the store) and does not order it again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/tls_kit.rs"]
mod tls_kit;

use common::Origin;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// pebble and pebble-challtestsrv, on free ports.
struct Pebble {
    _dns: Proc,
    _pebble: Proc,
    directory: String,
    /// The CA pebble's own HTTPS chains to (what `acme.directory_ca` names).
    directory_ca: PathBuf,
    management: u16,
}

fn wait_for_port(port: u16, what: &str) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Pebble {
    /// pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`.
    fn start(dir: &Path, http_port: u16, tls_port: u16) -> Pebble {
        Pebble::start_with(dir, http_port, tls_port, 157_766_400)
    }

    /// ...issuing certificates valid for `validity` seconds.
    fn start_with(dir: &Path, http_port: u16, tls_port: u16, validity: u64) -> Pebble {
        for tool in ["pebble", "pebble-challtestsrv"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .output()
                    .unwrap()
                    .status
                    .success(),
                "{tool} is not installed (apt-get install pebble; scripts/test.sh does)"
            );
        }
        let ca = tls_kit::Ca::new("Pebble HTTPS CA");
        let own = ca.server(&["localhost", "127.0.0.1"]);
        let (cert, key, ca_file) = (
            dir.join("pebble.crt"),
            dir.join("pebble.key"),
            dir.join("pebble-ca.pem"),
        );
        std::fs::write(&cert, &own.cert).unwrap();
        std::fs::write(&key, &own.key).unwrap();
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let (acme, management, dns, dns_mgmt) =
            (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity,
        }});
        let config_file = dir.join("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let dns_proc = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let dns_proc = Proc(dns_proc);
        wait_for_port(dns_mgmt, "pebble-challtestsrv");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pebble = Proc(pebble);
        wait_for_port(acme, "pebble");
        Pebble {
            _dns: dns_proc,
            _pebble: pebble,
            directory: format!("https://127.0.0.1:{acme}/dir"),
            directory_ca: ca_file,
            management,
        }
    }

    /// The root pebble issues under (it makes a new one each start).
    fn root(&self, dir: &Path) -> PathBuf {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&self.directory_ca)
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir.join("issuer-root.pem");
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }
}

/// `gatehouse run` with its log read line by line.
struct Gateway {
    _child: Proc,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Gateway {
    fn start(args: &[&std::ffi::OsStr]) -> Gateway {
        let mut child = Command::new(BIN)
            .arg("run")
            .args(args)
            .args(["--admin", "127.0.0.1:0", "--workers", "1"])
            .env("GATEHOUSE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Gateway {
            _child: Proc(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `text` (up to `within`).
    fn wait_for(&mut self, text: &str, within: Duration) -> String {
        let t = Instant::now();
        loop {
            if let Some(l) = self.seen.iter().find(|l| l.contains(text)) {
                return l.clone();
            }
            let left = within.saturating_sub(t.elapsed());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("no \"{text}\" in:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }
}

/// GET `path` over HTTPS from `site` on `port`, verified against `root`: the HTTP status.
fn https_get(site: &str, port: u16, root: &Path, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(root)
        .args(["--resolve", &format!("{site}:{port}:127.0.0.1")])
        .arg(format!("https://{site}:{port}{path}"))
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gatehouse-acme-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(
    http: u16,
    tls: u16,
    pebble: &Pebble,
    origin: SocketAddr,
    challenge: &str,
    site: &str,
) -> String {
    format!(
        r#"
listen:
  - address: "127.0.0.1:{http}"
  - address: "127.0.0.1:{tls}"
    tls: {{}}
acme:
  directory: "{}"
  directory_ca: "{}"
  email: ops@example.test
  challenge: {challenge}
  certificates:
    - {{name: site, domains: [{site}]}}
upstreams:
  - {{name: o, targets: [{{address: "{origin}"}}]}}
services:
  - {{name: s, upstream: o}}
routes:
  - {{name: all, paths: ["/*"], service: s}}
"#,
        pebble.directory,
        pebble.directory_ca.display()
    )
}

async fn obtains_serves_and_keeps(challenge: &str, site: &str) {
    let origin = Origin::start("o").await;
    let dir = temp_dir(challenge);
    let (http, tls) = (free_port(), free_port());
    let pebble = Pebble::start(&dir, http, tls);
    let file = dir.join("gateway.yaml");
    std::fs::write(
        &file,
        config(http, tls, &pebble, origin.addr, challenge, site),
    )
    .unwrap();
    let data = dir.join("data");
    let args = [
        "-c".as_ref(),
        file.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ];
    let mut gw = Gateway::start(&args);
    gw.wait_for("ordering an ACME certificate", Duration::from_secs(20));
    gw.wait_for(
        "ACME certificate obtained and stored",
        Duration::from_secs(60),
    );
    let root = pebble.root(&dir);
    // Served without a restart, chained to pebble's root, for the domain.
    let t = Instant::now();
    loop {
        let got = https_get(site, tls, &root, "/hello");
        if got == "200" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{got}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(data.join("acme").join("cert_site.json").exists());
    drop(gw);

    // Restarted: the stored certificate serves at once, and nothing is ordered again.
    let mut gw = Gateway::start(&args);
    gw.wait_for("listening", Duration::from_secs(10));
    let t = Instant::now();
    while https_get(site, tls, &root, "/again") != "200" {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    gw.drain();
    assert!(
        !gw.seen
            .iter()
            .any(|l| l.contains("ordering an ACME certificate")),
        "ordered again:\n{}",
        gw.seen.join("\n")
    );
    drop(gw);
    drop(pebble);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_obtained_over_http_01_served_and_kept() {
    obtains_serves_and_keeps("http-01", "www.example.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_obtained_over_tls_alpn_01() {
    obtains_serves_and_keeps("tls-alpn-01", "alpn.example.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_renewed_before_it_expires_without_a_restart() {
    let origin = Origin::start("o").await;
    let dir = temp_dir("renew");
    let (http, tls) = (free_port(), free_port());
    // Certificates of 15 s: renewed a third of their life ahead, about 10 s in.
    let pebble = Pebble::start_with(&dir, http, tls, 15);
    let file = dir.join("gateway.yaml");
    let site = "renew.example.test";
    std::fs::write(
        &file,
        config(http, tls, &pebble, origin.addr, "http-01", site),
    )
    .unwrap();
    let data = dir.join("data");
    let mut gw = Gateway::start(&[
        "-c".as_ref(),
        file.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    gw.wait_for(
        "ACME certificate obtained and stored",
        Duration::from_secs(60),
    );
    let first = std::fs::read_to_string(data.join("acme/cert_site.json")).unwrap();
    gw.wait_for("renewing an ACME certificate", Duration::from_secs(30));
    let t = Instant::now();
    loop {
        let now = std::fs::read_to_string(data.join("acme/cert_site.json")).unwrap();
        if now != first {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "not renewed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let root = pebble.root(&dir);
    let t = Instant::now();
    while https_get(site, tls, &root, "/") != "200" {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

impl Gateway {
    /// Where its admin API listens (from its log).
    fn admin(&mut self) -> SocketAddr {
        let line = self.wait_for("admin API listening", Duration::from_secs(10));
        line.split("address=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line}"))
    }
}

/// Two nodes of one store, behind one address (SO_REUSEPORT shares the port between them,
/// as a load balancer would): one node orders, the CA's validation may reach either (HTTP-01
/// answers are published in the store), and both serve the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_of_a_store_order_once_and_both_serve() {
    let origin = Origin::start("o").await;
    let dir = temp_dir("store");
    let http = free_port();
    let pebble = Pebble::start(&dir, http, free_port());
    let url = format!("sqlite://{}/g.db", dir.display());
    let listen = format!("127.0.0.1:{http}");
    let node = |name: &str| {
        let data = dir.join(name);
        Gateway::start(&[
            "--store".as_ref(),
            url.as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--listen".as_ref(),
            listen.as_ref(),
        ])
    };
    let mut a = node("a");
    let admin_a = a.admin();
    let mut b = node("b");
    let admin_b = b.admin();
    let yaml = config(
        http,
        free_port(),
        &pebble,
        origin.addr,
        "http-01",
        "shared.example.test",
    );
    let config: serde_json::Value = yaml_serde::from_str(&yaml).unwrap();
    let mut c = common::Client::connect(admin_a).await;
    let r = c.send("PUT", "/config", config.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let serving = |admin: SocketAddr| async move {
        let status = common::get(admin, "/status").await.json();
        status["certificates"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == "site"))
    };
    let t = Instant::now();
    while !(serving(admin_a).await && serving(admin_b).await) {
        let _ = Duration::ZERO;
        if t.elapsed() > Duration::from_secs(60) {
            a.drain();
            b.drain();
            panic!(
                "not served by both nodes:\n{}\n---\n{}",
                a.seen.join("\n"),
                b.seen.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.drain();
    b.drain();
    let orders = a
        .seen
        .iter()
        .chain(&b.seen)
        .filter(|l| l.contains("ordering an ACME certificate"))
        .count();
    assert_eq!(
        orders,
        1,
        "{}\n---\n{}",
        a.seen.join("\n"),
        b.seen.join("\n")
    );
    drop((a, b, pebble));
    let _ = std::fs::remove_dir_all(&dir);
}
