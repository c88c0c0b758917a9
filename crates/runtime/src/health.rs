//! Target health: active probes on a timer and passive outlier detection from real traffic.
//! The verdicts live in each target's [`TargetHealth`] (atomics, kept across reloads with the
//! target), so the request path reads health with two loads and no lock.

use crate::upstream::{clock, TargetState};
use crate::window::Window;
use bytes::Bytes;
use gatehouse_model::{ActiveCheck, AllDown, CheckType, Health, PassiveCheck, UpstreamProtocol};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a probe waits for a host-named target's first resolution.
pub(crate) const PROBE_DIAL_LIMIT: Duration = Duration::from_secs(10);
use tokio::net::TcpStream;

/// One target's health, shared by every snapshot that keeps the target.
#[derive(Default)]
pub struct TargetHealth {
    /// Set by active probes: failed `unhealthy_threshold` times in a row.
    probe_down: AtomicBool,
    probe_ok_streak: AtomicU32,
    probe_fail_streak: AtomicU32,
    /// Passive: failures in a row, and the failure window.
    fail_streak: AtomicU32,
    window: Window,
    /// Passive: ejected until this clock time (ns); stays set after it passes, so the next
    /// ejection can tell whether it follows closely (and lasts longer).
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    /// The last attempt on this target failed (no connection, reset, timeout): the log says
    /// once when a target starts failing and once when it answers again, not per attempt.
    failing: AtomicBool,
}

/// What `/upstreams/{name}/health` shows of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthView {
    /// `healthy`, `unhealthy` (active probes) or `ejected` (passive checks).
    pub state: &'static str,
    /// For an ejected target: how much longer, in milliseconds.
    pub ejected_for_ms: Option<u64>,
    pub ejections: u32,
}

impl TargetHealth {
    /// May requests go to this target at `now_ns`?
    #[inline]
    pub fn available(&self, now_ns: u64) -> bool {
        !self.probe_down.load(Ordering::Relaxed)
            && self.ejected_until.load(Ordering::Relaxed) <= now_ns
    }

    fn ejected(&self, now_ns: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ns
    }

    pub fn view(&self, now_ns: u64) -> HealthView {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let (state, left) = if self.probe_down.load(Ordering::Relaxed) {
            ("unhealthy", None)
        } else if until > now_ns {
            ("ejected", Some((until - now_ns) / 1_000_000))
        } else {
            ("healthy", None)
        };
        HealthView {
            state,
            ejected_for_ms: left,
            ejections: self.ejections.load(Ordering::Relaxed),
        }
    }

    /// Records a failed attempt; true when the target was not failing before (worth a log line).
    pub fn note_failure(&self) -> bool {
        !self.failing.load(Ordering::Relaxed) && !self.failing.swap(true, Ordering::Relaxed)
    }

    /// Records an answer; true when the target was failing before. A load, and a write only
    /// on the change, so that answers do not bounce the cache line between cores.
    #[inline]
    pub fn note_answer(&self) -> bool {
        self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed)
    }

    /// Forgets verdicts of checks that are no longer configured.
    pub fn reset(&self, active: bool, passive: bool) {
        if !active {
            self.probe_down.store(false, Ordering::Relaxed);
            self.probe_ok_streak.store(0, Ordering::Relaxed);
            self.probe_fail_streak.store(0, Ordering::Relaxed);
        }
        if !passive {
            self.ejected_until.store(0, Ordering::Relaxed);
            self.fail_streak.store(0, Ordering::Relaxed);
        }
    }

    /// Records one active probe's result; returns the new verdict when it changed.
    pub fn probed(&self, ok: bool, check: &ActiveCheck, now_ns: u64) -> Option<bool> {
        if ok {
            self.probe_fail_streak.store(0, Ordering::Relaxed);
            let n = self.probe_ok_streak.fetch_add(1, Ordering::Relaxed) + 1;
            let down = self.probe_down.load(Ordering::Relaxed);
            let ejected = self.ejected(now_ns);
            if (down || ejected) && n >= check.healthy_threshold {
                // A target the probes find healthy again is re-admitted, ejected or not
                // (Envoy's successful_active_health_check_uneject_host).
                self.probe_down.store(false, Ordering::Relaxed);
                if ejected {
                    self.ejected_until.store(now_ns, Ordering::Relaxed);
                }
                self.fail_streak.store(0, Ordering::Relaxed);
                self.window.clear();
                return Some(true);
            }
        } else {
            self.probe_ok_streak.store(0, Ordering::Relaxed);
            let n = self.probe_fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.probe_down.load(Ordering::Relaxed) && n >= check.unhealthy_threshold {
                self.probe_down.store(true, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }
}

/// An upstream's health checks, compiled.
#[derive(Clone)]
pub struct HealthPolicy {
    pub active: Option<Arc<ActiveCheck>>,
    pub passive: Option<Passive>,
    pub all_down: AllDown,
}

/// Passive checks with durations in clock nanoseconds.
#[derive(Clone)]
pub struct Passive {
    consecutive: u32,
    failure_statuses: Box<[u16]>,
    ratio: Option<f64>,
    window_ns: u64,
    min_requests: u64,
    base_ns: u64,
    max_ns: u64,
    max_percent: u64,
}

impl HealthPolicy {
    pub fn new(h: &Health) -> Self {
        Self {
            active: h.active.clone().map(Arc::new),
            passive: h.passive.as_ref().map(Passive::new),
            all_down: h.all_down,
        }
    }
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

impl Passive {
    fn new(p: &PassiveCheck) -> Self {
        Self {
            consecutive: p.consecutive_failures,
            failure_statuses: p.failure_statuses.clone().into_boxed_slice(),
            ratio: p.failure_ratio,
            window_ns: ns(p.window),
            min_requests: u64::from(p.min_requests),
            base_ns: ns(p.base_ejection),
            max_ns: ns(p.max_ejection),
            max_percent: u64::from(p.max_ejection_percent),
        }
    }

    /// Whether an upstream answer with `status` counts as a failure.
    pub fn is_failure(&self, status: StatusCode) -> bool {
        self.failure_statuses.contains(&status.as_u16())
    }

    /// Records one request's outcome on `targets[idx]`; ejects the target when it failed
    /// too often, unless that would eject more than `max_ejection_percent` of `targets`.
    /// Returns how long the target was ejected for, if it was.
    pub fn report(
        &self,
        targets: &[Arc<TargetState>],
        idx: usize,
        failed: bool,
        now_ns: u64,
    ) -> Option<Duration> {
        let t = &targets.get(idx)?.health;
        if !failed {
            t.fail_streak.store(0, Ordering::Relaxed);
            if self.ratio.is_some() {
                t.window.add(now_ns, self.window_ns, [1, 0, 0]);
            }
            return None;
        }
        let streak = t.fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let mut eject = self.consecutive > 0 && streak >= self.consecutive;
        if let Some(ratio) = self.ratio {
            t.window.add(now_ns, self.window_ns, [1, 1, 0]);
            let [total, failures, _] = t.window.sum(now_ns, self.window_ns).0;
            eject |= total >= self.min_requests && failures as f64 >= ratio * total as f64;
        }
        if !eject || t.ejected(now_ns) {
            return None;
        }
        let ejected = targets.iter().filter(|o| o.health.ejected(now_ns)).count() as u64;
        if (ejected + 1) * 100 > self.max_percent * targets.len() as u64 {
            return None;
        }
        // An ejection soon after the last one lasts one base time longer.
        let last = t.ejected_until.load(Ordering::Relaxed);
        let n = if last != 0 && now_ns.saturating_sub(last) < self.max_ns {
            t.ejections.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            t.ejections.store(1, Ordering::Relaxed);
            1
        };
        let length = self.base_ns.saturating_mul(u64::from(n)).min(self.max_ns);
        t.ejected_until
            .store(now_ns.saturating_add(length), Ordering::Relaxed);
        t.fail_streak.store(0, Ordering::Relaxed);
        t.window.clear();
        Some(Duration::from_nanos(length))
    }
}

/// Sets a target aside for a while after a failed connect, without any health checks
/// configured (nginx's `max_fails=1 fail_timeout=10s`): the requests that follow go straight
/// to the others instead of each paying a failed connect first.
pub struct SetAside {
    length_ns: u64,
    /// Clock time until which some target may be set aside, 0 when none is: the pick reads
    /// this one word and looks at targets' health only while it is set.
    until: AtomicU64,
}

impl SetAside {
    /// `None` for a zero length (turned off). `targets` carries what was set aside before a
    /// reload, so the new snapshot keeps avoiding it.
    pub fn new(length: Duration, targets: &[Arc<TargetState>]) -> Option<Self> {
        if length.is_zero() {
            return None;
        }
        let until = targets
            .iter()
            .map(|t| t.health.ejected_until.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        Some(Self {
            length_ns: ns(length),
            until: AtomicU64::new(until),
        })
    }

    /// Whether a target may be set aside now; clears the mark once its time has passed.
    #[inline]
    pub fn active(&self, now: impl FnOnce() -> u64) -> bool {
        let until = self.until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if now() < until {
            return true;
        }
        let _ = self
            .until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }

    /// Sets `targets[idx]` aside after its connect failed, unless it already is or no other
    /// target would be left to take requests (a single target is never set aside: failing
    /// fast would only turn a slow answer into none). Returns the length when it did.
    pub fn report(
        &self,
        targets: &[Arc<TargetState>],
        idx: usize,
        now_ns: u64,
    ) -> Option<Duration> {
        let t = &targets.get(idx)?.health;
        if !t.available(now_ns) {
            return None;
        }
        let others_up = targets
            .iter()
            .enumerate()
            .any(|(i, o)| i != idx && o.health.available(now_ns));
        if !others_up {
            return None;
        }
        let until = now_ns.saturating_add(self.length_ns);
        t.ejected_until.fetch_max(until, Ordering::Relaxed);
        self.until.fetch_max(until, Ordering::Relaxed);
        Some(Duration::from_nanos(self.length_ns))
    }
}

/// The clock the health checks read, in the nanoseconds [`TargetHealth`] stores.
pub fn now_ns() -> u64 {
    clock(Instant::now())
}

/// Probes every target of an upstream until dropped (aborted on reload).
pub async fn run_active(
    upstream: Arc<str>,
    targets: Vec<Arc<TargetState>>,
    check: Arc<ActiveCheck>,
) {
    let mut set = tokio::task::JoinSet::new();
    for t in targets {
        set.spawn(probe_loop(upstream.clone(), t, check.clone()));
    }
    while set.join_next().await.is_some() {}
}

async fn probe_loop(upstream: Arc<str>, target: Arc<TargetState>, check: Arc<ActiveCheck>) {
    let interval = check.interval;
    // Spread the first probes over one interval, then ±10 % on every round, so that nodes
    // (and targets) do not probe in lock-step.
    tokio::time::sleep(interval.mul_f64(fastrand::f64())).await;
    loop {
        let ok = probe(&target, &check).await;
        match target.health.probed(ok.is_ok(), &check, now_ns()) {
            Some(true) => {
                tracing::info!(%upstream, target = %target.address, "target healthy again (active check)");
            }
            Some(false) => {
                let why = ok.err().unwrap_or_default();
                tracing::warn!(%upstream, target = %target.address, %why, "target unhealthy (active check)");
            }
            None => {}
        }
        tokio::time::sleep(interval.mul_f64(0.9 + 0.2 * fastrand::f64())).await;
    }
}

/// The most of a probe answer's body read for `body_contains`.
const PROBE_BODY_LIMIT: usize = 64 * 1024;

/// One probe: Ok when the target passes, else why not.
pub async fn probe(target: &TargetState, check: &ActiveCheck) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, probe_inner(target, check)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

async fn probe_inner(target: &TargetState, check: &ActiveCheck) -> Result<(), String> {
    if check.kind == CheckType::Grpc {
        return grpc::probe(target, check).await;
    }
    if check.kind == CheckType::Tcp {
        let deadline = tokio::time::Instant::now() + PROBE_DIAL_LIMIT;
        let at = target
            .socket_addr(deadline)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        TcpStream::connect(at)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        return Ok(());
    }
    // Through the target's own connector: an https target is probed over TLS, with the
    // verification its requests get.
    let deadline = tokio::time::Instant::now() + PROBE_DIAL_LIMIT;
    let stream = target
        .dial(deadline)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let io = TokioIo::new(stream);
    let host = check.host.as_deref().unwrap_or(&target.address);
    let mut req =
        Request::get(&check.path).header(http::header::USER_AGENT, "gatehouse-health-check");
    let resp = match target.protocol {
        UpstreamProtocol::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            req = req
                .header(http::header::HOST, host)
                .header(http::header::CONNECTION, "close");
            let req = req
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("request: {e}"))?;
            sender.send_request(req).await
        }
        UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            let uri = format!("http://{host}{}", check.path);
            let req = Request::get(uri)
                .header(http::header::USER_AGENT, "gatehouse-health-check")
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("request: {e}"))?;
            sender.send_request(req).await
        }
    }
    .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let expected = if check.expected_statuses.is_empty() {
        (200..400).contains(&status)
    } else {
        check.expected_statuses.contains(&status)
    };
    if !expected {
        return Err(format!("status {status}"));
    }
    let Some(needle) = &check.body_contains else {
        return Ok(());
    };
    let mut body = resp.into_body();
    let mut seen = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            seen.extend_from_slice(&data);
            if memchr::memmem::find(&seen, needle.as_bytes()).is_some() {
                return Ok(());
            }
            if seen.len() >= PROBE_BODY_LIMIT {
                break;
            }
        }
    }
    Err(format!("body does not contain {needle:?}"))
}

mod grpc;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
