//! The node's deny list: IPs, CIDRs, consumers and keys banned until a time, fed by the WAF,
//! by rate-limit violations, by CC protection and by the admin API. Checks read a
//! copy-on-write snapshot (no lock on the request path). With the node's Redis configured,
//! the list is the hash `gatehouse:bans` there, so every node enforces every node's bans: the
//! gateway's sync task ([`Bans::sync_round`], on one worker) writes changes through and reads
//! the hash back every half second, and at once after a change.

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a ban applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// One address or a CIDR.
    Net(ipnet::IpNet),
    Consumer(String),
    /// A credential or any key a plugin names (an API key, a rate-limit key).
    Key(String),
}

impl Subject {
    /// `ip:203.0.113.7`, `cidr:10.0.0.0/8`, `consumer:alice`, `key:k-123`.
    pub fn parse(s: &str) -> Result<Subject, String> {
        let (kind, v) = s.split_once(':').ok_or_else(|| {
            format!("{s:?}: write ip:ADDRESS, cidr:NET, consumer:NAME or key:KEY")
        })?;
        let bad_net = |_| format!("{s:?}: {v:?} is not an address or a CIDR");
        match kind {
            "ip" | "cidr" => v
                .parse::<ipnet::IpNet>()
                .or_else(|_| v.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map(|n| Subject::Net(n.trunc()))
                .map_err(bad_net),
            "consumer" if !v.is_empty() => Ok(Subject::Consumer(v.to_owned())),
            "key" if !v.is_empty() => Ok(Subject::Key(v.to_owned())),
            _ => Err(format!(
                "{s:?}: the kind is ip, cidr, consumer or key, with a value after the colon"
            )),
        }
    }

    pub fn ip(ip: IpAddr) -> Subject {
        Subject::Net(ipnet::IpNet::from(ip))
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Net(n) if n.prefix_len() == n.max_prefix_len() => write!(f, "ip:{}", n.addr()),
            Subject::Net(n) => write!(f, "cidr:{n}"),
            Subject::Consumer(c) => write!(f, "consumer:{c}"),
            Subject::Key(k) => write!(f, "key:{k}"),
        }
    }
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ban {
    /// `ip:...`, `cidr:...`, `consumer:...` or `key:...`.
    pub subject: String,
    /// Unix milliseconds.
    pub until_ms: u64,
    pub reason: String,
    /// `admin`, `waf`, `rate-limit`, `cc`.
    pub source: String,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What checks read.
#[derive(Default)]
struct Index {
    ips: HashMap<IpAddr, Ban>,
    nets: Vec<(ipnet::IpNet, Ban)>,
    names: HashMap<Subject, Ban>,
}

enum Change {
    Put(Ban),
    Lift(String),
}

pub struct Bans {
    index: ArcSwap<Index>,
    all: Mutex<HashMap<String, Ban>>,
    /// Changes not yet written to Redis.
    pending: Mutex<Vec<Change>>,
    changed: tokio::sync::Notify,
}

/// The node's deny list.
pub fn bans() -> &'static Bans {
    static B: OnceLock<Bans> = OnceLock::new();
    B.get_or_init(|| Bans {
        index: ArcSwap::from_pointee(Index::default()),
        all: Mutex::new(HashMap::new()),
        pending: Mutex::new(Vec::new()),
        changed: tokio::sync::Notify::new(),
    })
}

const REDIS_KEY: &str = "gatehouse:bans";

impl Bans {
    /// The ban on `ip` (an address ban, or a CIDR holding it), if one is in force.
    pub fn ip(&self, ip: IpAddr) -> Option<Ban> {
        let idx = self.index.load();
        if idx.ips.is_empty() && idx.nets.is_empty() {
            return None;
        }
        let now = now_ms();
        idx.ips
            .get(&ip)
            .or_else(|| {
                idx.nets
                    .iter()
                    .find(|(n, _)| n.contains(&ip))
                    .map(|(_, b)| b)
            })
            .filter(|b| b.until_ms > now)
            .cloned()
    }

    /// The ban on a consumer or key, if one is in force.
    pub fn named(&self, s: &Subject) -> Option<Ban> {
        let idx = self.index.load();
        if idx.names.is_empty() {
            return None;
        }
        idx.names.get(s).filter(|b| b.until_ms > now_ms()).cloned()
    }

    /// Bans `subject` for `ttl` (a longer ban already in force stays).
    pub fn add(&self, subject: &Subject, ttl: Duration, reason: &str, source: &str) -> Ban {
        let ban = Ban {
            subject: subject.to_string(),
            until_ms: now_ms().saturating_add(ttl.as_millis() as u64),
            reason: reason.to_owned(),
            source: source.to_owned(),
        };
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = all.get(&ban.subject).filter(|o| o.until_ms >= ban.until_ms) {
            return old.clone();
        }
        all.insert(ban.subject.clone(), ban.clone());
        self.publish(&all);
        drop(all);
        self.send(Change::Put(ban.clone()));
        ban
    }

    /// Lifts the ban on `subject`; whether there was one.
    pub fn lift(&self, subject: &Subject) -> bool {
        let key = subject.to_string();
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let had = all.remove(&key).is_some_and(|b| b.until_ms > now_ms());
        self.publish(&all);
        drop(all);
        self.send(Change::Lift(key));
        had
    }

    /// The bans in force, soonest to end first.
    pub fn list(&self) -> Vec<Ban> {
        let now = now_ms();
        let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Ban> = all.values().filter(|b| b.until_ms > now).cloned().collect();
        out.sort_by(|a, b| (a.until_ms, &a.subject).cmp(&(b.until_ms, &b.subject)));
        out
    }

    fn publish(&self, all: &HashMap<String, Ban>) {
        let now = now_ms();
        let mut idx = Index::default();
        for b in all.values().filter(|b| b.until_ms > now) {
            match Subject::parse(&b.subject) {
                Ok(Subject::Net(n)) if n.prefix_len() == n.max_prefix_len() => {
                    idx.ips.insert(n.addr(), b.clone());
                }
                Ok(Subject::Net(n)) => idx.nets.push((n, b.clone())),
                Ok(s) => {
                    idx.names.insert(s, b.clone());
                }
                Err(_) => {}
            }
        }
        self.index.store(Arc::new(idx));
    }

    fn send(&self, c: Change) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(c);
        self.changed.notify_one();
    }

    /// Wakes when a ban was added or lifted on this node.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Writes this node's changes to `redis` (none: they stay the node's own) and reads the
    /// shared list back. A failed round keeps its changes for the next; meanwhile the node
    /// enforces what it knows.
    pub async fn sync_round(&self, redis: Option<&crate::RedisStore>) -> Result<(), String> {
        let changes = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let Some(redis) = redis else {
            return Ok(());
        };
        match tokio::time::timeout(Duration::from_secs(2), sync_once(redis, &changes)).await {
            Ok(Ok(shared)) => {
                self.replace(shared);
                Ok(())
            }
            failed => {
                let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let later = std::mem::replace(&mut *p, changes);
                p.extend(later);
                Err(match failed {
                    Ok(Err(e)) => e,
                    _ => "Redis did not answer within 2s".into(),
                })
            }
        }
    }

    /// Replaces the list with what Redis holds, and the changes made since the round began.
    fn replace(&self, mut from_redis: HashMap<String, Ban>) {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        for c in self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            match c {
                Change::Put(b) => {
                    from_redis.insert(b.subject.clone(), b.clone());
                }
                Change::Lift(s) => {
                    from_redis.remove(s);
                }
            }
        }
        *all = from_redis;
        self.publish(&all);
    }
}

async fn sync_once(
    redis: &crate::RedisStore,
    pending: &[Change],
) -> Result<HashMap<String, Ban>, String> {
    let mut conn = redis.connection().await?;
    let e = |e: redis::RedisError| e.to_string();
    for c in pending {
        let cmd = match c {
            Change::Put(b) => {
                let mut cmd = redis::cmd("HSET");
                let json = serde_json::to_string(b).unwrap_or_default();
                cmd.arg(REDIS_KEY).arg(&b.subject).arg(json);
                cmd
            }
            Change::Lift(s) => {
                let mut cmd = redis::cmd("HDEL");
                cmd.arg(REDIS_KEY).arg(s);
                cmd
            }
        };
        let _: redis::Value = cmd.query_async(&mut conn).await.map_err(e)?;
    }
    let raw: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(REDIS_KEY)
        .query_async(&mut conn)
        .await
        .map_err(e)?;
    let now = now_ms();
    let mut out = HashMap::new();
    let mut expired = Vec::new();
    for (k, v) in raw {
        match serde_json::from_str::<Ban>(&v) {
            Ok(b) if b.until_ms > now => {
                out.insert(k, b);
            }
            _ => expired.push(k),
        }
    }
    if !expired.is_empty() {
        let _: redis::Value = redis::cmd("HDEL")
            .arg(REDIS_KEY)
            .arg(&expired)
            .query_async(&mut conn)
            .await
            .map_err(e)?;
    }
    Ok(out)
}
