//! Real Redis deployments started by one test on free loopback ports: a Redis Cluster (three
//! primaries, each with a replica), a primary with a replica watched by a Sentinel, and a
//! Redis that only speaks TLS. Each can have its primary killed to watch a failover.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A redis-server on loopback that keeps nothing on disk, with `args` besides.
fn server(args: &[&str], dir: &PathBuf) -> Child {
    let mut all = vec!["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
    all.extend_from_slice(args);
    spawn(&all, dir)
}

fn spawn(args: &[&str], dir: &PathBuf) -> Child {
    Command::new("redis-server")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}); install it (apt-get install redis-server)")
        })
}

/// `redis-cli` against `port` (`extra` before the command, e.g. TLS flags): its output, or
/// `None` when it failed.
pub fn cli(port: u16, extra: &[&str], cmd: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(extra)
        .args(cmd)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.starts_with("Could not connect") && !text.starts_with("ERR"))
        .then_some(text)
}

fn wait(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} within {secs} s");
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gatehouse-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Processes by port, killed when dropped.
pub struct Nodes {
    pub procs: Vec<(u16, Option<Child>)>,
    pub dir: PathBuf,
}

impl Nodes {
    pub fn kill(&mut self, port: u16) {
        for (p, c) in &mut self.procs {
            if *p == port {
                if let Some(mut c) = c.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (_, c) in &mut self.procs {
            if let Some(mut c) = c.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct RedisCluster {
    pub nodes: Nodes,
}

impl RedisCluster {
    /// Three primaries and three replicas, `cluster-node-timeout` 1 s so a failover takes
    /// a couple of seconds.
    pub fn start() -> RedisCluster {
        let dir = temp("cluster");
        let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
        let procs = ports
            .iter()
            .map(|p| {
                let (port, conf) = (p.to_string(), format!("nodes-{p}.conf"));
                let args = [
                    "--port",
                    &port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "1000",
                ];
                (*p, Some(server(&args, &dir)))
            })
            .collect();
        let nodes = Nodes { procs, dir };
        for p in &ports {
            wait("a cluster node answers PING", 10, || {
                cli(*p, &[], &["PING"]).is_some()
            });
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes };
        c.wait_ok();
        // A replica that never synced would not stand for election (its data is too old).
        wait("every replica is in sync", 20, || {
            c.ports().iter().all(|p| {
                cli(*p, &[], &["INFO", "replication"]).is_some_and(|i| {
                    i.contains("role:master") || i.contains("master_link_status:up")
                })
            })
        });
        c
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .procs
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Every live node says the cluster is ok and sees three primaries.
    pub fn wait_ok(&self) {
        wait("the cluster is ok", 20, || {
            self.ports().iter().all(|p| {
                cli(*p, &[], &["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"))
            }) && self.primaries().len() == 3
        });
    }

    /// The live primaries' ports.
    pub fn primaries(&self) -> Vec<u16> {
        self.ports()
            .into_iter()
            .filter(|p| cli(*p, &[], &["ROLE"]).is_some_and(|r| r.starts_with("master")))
            .collect()
    }

    /// The primary serving `key`.
    pub fn primary_of(&self, key: &str) -> u16 {
        let slot: u16 = cli(self.ports()[0], &[], &["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.parse().ok())
            .expect("keyslot");
        *self
            .primaries()
            .iter()
            .find(|p| owns(**p, slot))
            .expect("a primary owns the slot")
    }

    /// Keys held by the live primaries, all together.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.primaries()
            .iter()
            .filter_map(|p| cli(*p, &[], &["KEYS", pattern]))
            .flat_map(|k| k.lines().map(str::to_string).collect::<Vec<_>>())
            .filter(|k| !k.is_empty())
            .collect()
    }
}

/// Whether the primary on `port` serves `slot` (from its own line of `CLUSTER NODES`).
fn owns(port: u16, slot: u16) -> bool {
    let Some(nodes) = cli(port, &[], &["CLUSTER", "NODES"]) else {
        return false;
    };
    nodes.lines().filter(|l| l.contains("myself")).any(|l| {
        l.split_whitespace().skip(8).any(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
        })
    })
}

pub struct RedisSentinel {
    pub nodes: Nodes,
    pub primary: u16,
    pub replica: u16,
    pub sentinel: u16,
}

impl RedisSentinel {
    /// A primary, its replica, and one sentinel (quorum 1) that fails over after 1 s.
    pub fn start() -> RedisSentinel {
        let dir = temp("sentinel");
        let (primary, replica, sentinel) = (free_port(), free_port(), free_port());
        let (p, r) = (primary.to_string(), replica.to_string());
        let mut procs = vec![(primary, Some(server(&["--port", &p], &dir)))];
        let replica_args = ["--port", &r, "--replicaof", "127.0.0.1", &p];
        procs.push((replica, Some(server(&replica_args, &dir))));
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel}\nbind 127.0.0.1\nsentinel monitor gh 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds gh 1000\nsentinel failover-timeout gh 5000\nlogfile sentinel.log\n"
            ),
        )
        .unwrap();
        let conf = conf.display().to_string();
        procs.push((sentinel, Some(spawn(&[&conf, "--sentinel"], &dir))));
        let s = RedisSentinel {
            nodes: Nodes { procs, dir },
            primary,
            replica,
            sentinel,
        };
        wait("the replica is in sync", 15, || {
            cli(replica, &[], &["INFO", "replication"])
                .is_some_and(|i| i.contains("master_link_status:up"))
        });
        wait("the sentinel sees the primary", 15, || {
            cli(
                sentinel,
                &[],
                &["SENTINEL", "get-master-addr-by-name", "gh"],
            )
            .is_some_and(|a| a.contains(&primary.to_string()))
        });
        // It learns of replicas from the primary's INFO (every 10 s) and then talks to them:
        // a failover before that finds nobody to promote.
        wait("the sentinel knows the replica and reaches it", 20, || {
            cli(sentinel, &[], &["SENTINEL", "replicas", "gh"]).is_some_and(|r| {
                let lines: Vec<&str> = r.lines().collect();
                let field = |name: &str| {
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1))
                        .copied()
                };
                field("port") == Some(replica.to_string().as_str())
                    && field("flags") == Some("slave")
                    && field("master-link-status") == Some("ok")
            })
        });
        s
    }

    pub fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/gh", self.sentinel)
    }

    /// The port the sentinel names as primary now.
    pub fn current_primary(&self) -> Option<u16> {
        cli(
            self.sentinel,
            &[],
            &["SENTINEL", "get-master-addr-by-name", "gh"],
        )?
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
    }

    /// Kills the primary and waits until the sentinel has promoted the replica.
    pub fn fail_over(&mut self) {
        let old = self.primary;
        self.nodes.kill(old);
        let replica = self.replica;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(self.current_primary() == Some(replica)
            && cli(replica, &[], &["ROLE"]).is_some_and(|r| r.starts_with("master")))
        {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.nodes.dir.join("sentinel.log"));
                panic!("the sentinel did not promote the replica in 30 s:\n{log:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.primary = replica;
    }
}

pub struct RedisTls {
    pub nodes: Nodes,
    pub port: u16,
    pub ca: PathBuf,
}

impl RedisTls {
    /// A Redis that accepts only TLS, with a certificate for 127.0.0.1 from a CA made here.
    pub fn start() -> RedisTls {
        let dir = temp("tls");
        let sh = |args: &[&str]| {
            let ok = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "openssl {args:?}");
        };
        sh(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=gatehouse test CA",
        ]);
        sh(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "redis.key",
            "-out",
            "redis.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        sh(&[
            "x509",
            "-req",
            "-in",
            "redis.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "redis.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ]);
        let port = free_port();
        let tls_port = port.to_string();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            "redis.pem",
            "--tls-key-file",
            "redis.key",
            "--tls-ca-cert-file",
            "ca.pem",
            "--tls-auth-clients",
            "no",
        ];
        let child = server(&args, &dir);
        let ca = dir.join("ca.pem");
        let t = RedisTls {
            nodes: Nodes {
                procs: vec![(port, Some(child))],
                dir,
            },
            port,
            ca,
        };
        wait("the TLS Redis answers", 10, || t.query(&["PING"]).is_some());
        t
    }

    pub fn url(&self) -> String {
        format!(
            "rediss://127.0.0.1:{}/0?ca={}",
            self.port,
            self.ca.display()
        )
    }

    pub fn query(&self, cmd: &[&str]) -> Option<String> {
        let ca = self.ca.display().to_string();
        cli(self.port, &["--tls", "--cacert", &ca], cmd)
    }
}
