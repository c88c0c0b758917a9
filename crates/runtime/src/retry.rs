//! Retry policies compiled for a route: conditions, methods, backoff with jitter, and the
//! per-service retry budget that keeps retries from turning an outage into a storm.

use crate::window::Window;
use gatehouse_model::{RetryEvent, RetryOn, RetryPolicy, IDEMPOTENT};
use http::{HeaderName, Method, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// The window a budget looks back over.
const BUDGET_WINDOW_NS: u64 = 10_000_000_000;
const BUDGET_WINDOW_SECS: f64 = 10.0;

/// A service's retry budget: requests and retries over the last 10 s (Finagle's and
/// linkerd's design). Shared by the service's routes, kept across reloads.
#[derive(Default)]
pub struct Budget {
    window: Window,
}

impl Budget {
    /// Retries and original requests in the window (tests and status).
    pub fn counts(&self, now_ns: u64) -> (u64, u64) {
        let [requests, retries, _] = self.window.sum(now_ns, BUDGET_WINDOW_NS).0;
        (requests, retries)
    }
}

/// What a route retries, compiled.
pub struct Retry {
    /// Extra attempts after the first.
    pub attempts: u32,
    on_connect: bool,
    on_reset: bool,
    on_timeout: bool,
    statuses: Box<[u16]>,
    /// gRPC statuses (in an answer's head) retried.
    grpc: Box<[u8]>,
    methods: Box<[Method]>,
    pub per_try: Option<Duration>,
    backoff: Duration,
    max_backoff: Duration,
    ratio: f64,
    min_per_second: u32,
    pub max_body: u64,
    pub deadline_header: Option<HeaderName>,
    pub budget: Arc<Budget>,
    /// Whether retries draw from the budget: with an explicit policy. The default policy
    /// only retries connect failures (nothing was sent), and a plain route should not pay a
    /// shared counter per request for that.
    budgeted: bool,
}

/// How a request may be retried, decided once per request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allowed {
    /// After a failure before anything was sent (connect failure).
    pub before_send: bool,
    /// After the request was sent (reset, timeout, status): idempotent methods only.
    pub after_send: bool,
}

impl Retry {
    /// `explicit`: the route or service configured `retry` (else `p` is the default).
    pub fn new(attempts: u32, p: &RetryPolicy, explicit: bool, budget: Arc<Budget>) -> Self {
        let has = |e: RetryEvent| p.on.contains(&RetryOn::Event(e));
        Self {
            attempts,
            on_connect: has(RetryEvent::ConnectFailure),
            on_reset: has(RetryEvent::Reset),
            on_timeout: has(RetryEvent::Timeout),
            statuses: p
                .on
                .iter()
                .filter_map(|o| match o {
                    RetryOn::Status(s) => Some(*s),
                    RetryOn::Event(_) => None,
                })
                .collect(),
            grpc: p.grpc_status.iter().map(|c| c.code()).collect(),
            methods: p
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            per_try: p.per_try_timeout,
            backoff: p.backoff,
            max_backoff: p.max_backoff,
            ratio: p.budget_ratio,
            min_per_second: p.budget_min_per_second,
            max_body: p.max_body,
            deadline_header: (!p.deadline_header.is_empty())
                .then(|| {
                    HeaderName::from_bytes(p.deadline_header.to_ascii_lowercase().as_bytes()).ok()
                })
                .flatten(),
            budget,
            budgeted: explicit,
        }
    }

    /// What this policy allows for `method`; `grpc`: the request is a gRPC call, which a
    /// listed POST may retry after it was sent.
    pub fn allowed(&self, method: &Method, grpc: bool) -> Allowed {
        if self.attempts == 0 {
            return Allowed::default();
        }
        if grpc {
            return Allowed {
                before_send: self.on_connect,
                after_send: self.methods.contains(method)
                    && (self.on_reset || self.on_timeout || !self.grpc.is_empty()),
            };
        }
        // A request that never reached a target is safe to send elsewhere whatever its method
        // (nginx and Envoy do the same); `methods` decides only what was sent.
        let idempotent = IDEMPOTENT.contains(&method.as_str());
        Allowed {
            before_send: self.on_connect,
            after_send: idempotent
                && self.methods.contains(method)
                && (self.on_reset || self.on_timeout || !self.statuses.is_empty()),
        }
    }

    pub fn on_reset(&self) -> bool {
        self.on_reset
    }

    pub fn on_timeout(&self) -> bool {
        self.on_timeout
    }

    pub fn retries_status(&self, status: StatusCode) -> bool {
        self.statuses.contains(&status.as_u16())
    }

    /// Whether an answer with `status` and `headers` is retried: its status, or the gRPC
    /// status in its head.
    pub fn retries_answer(&self, status: StatusCode, headers: &http::HeaderMap) -> bool {
        self.retries_status(status)
            || (!self.grpc.is_empty()
                && headers
                    .get("grpc-status")
                    .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse::<u8>().ok())
                    .is_some_and(|c| self.grpc.contains(&c)))
    }

    /// Whether this policy has a budget to count requests into.
    pub fn budgeted(&self) -> bool {
        self.budgeted && self.attempts > 0
    }

    /// Counts an original request into the budget.
    pub fn count_request(&self, now_ns: u64) {
        if self.budgeted {
            self.budget.window.add(now_ns, BUDGET_WINDOW_NS, [1, 0, 0]);
        }
    }

    /// Takes one retry from the budget if it has one: retries in the window stay under
    /// `budget_ratio` × requests + `budget_min_per_second` × 10 s.
    pub fn take_budget(&self, now_ns: u64) -> bool {
        if !self.budgeted {
            return true;
        }
        let (requests, retries) = self.budget.counts(now_ns);
        let allowed =
            self.ratio * requests as f64 + f64::from(self.min_per_second) * BUDGET_WINDOW_SECS;
        if (retries as f64) < allowed {
            self.budget.window.add(now_ns, BUDGET_WINDOW_NS, [0, 1, 0]);
            true
        } else {
            false
        }
    }

    /// The pause before retry number `n` (1-based): exponential, capped, full jitter.
    pub fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(1u32 << n.saturating_sub(1).min(16));
        exp.min(self.max_backoff).mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Retry {
        let p: RetryPolicy = yaml_serde::from_str(yaml).unwrap();
        Retry::new(2, &p, true, Arc::default())
    }

    #[test]
    fn every_method_is_retried_before_sending_and_only_listed_idempotent_ones_after() {
        let r = policy("{on: [connect_failure, reset, 503]}");
        let get = r.allowed(&Method::GET, false);
        assert_eq!((get.before_send, get.after_send), (true, true));
        // Before: a POST whose connection was refused got 502; nothing was sent, so it goes
        // to another target.
        let post = r.allowed(&Method::POST, false);
        assert_eq!((post.before_send, post.after_send), (true, false));
        let r = policy("{on: [connect_failure, reset, 503], methods: [GET, POST]}");
        let post = r.allowed(&Method::POST, false);
        assert_eq!(
            (post.before_send, post.after_send),
            (true, false),
            "never after sending"
        );
        assert!(r.retries_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!r.retries_status(StatusCode::INTERNAL_SERVER_ERROR));
        let r = policy("{on: [connect_failure, reset], methods: [POST]}");
        assert!(!r.allowed(&Method::GET, false).after_send, "GET not listed");
        // gRPC calls are POSTs: retried after sending when POST is listed.
        let r = policy("{on: [connect_failure], grpc_status: [unavailable], methods: [POST]}");
        assert!(r.allowed(&Method::POST, true).after_send);
        assert!(!r.allowed(&Method::POST, false).after_send);
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert!(r.retries_answer(StatusCode::OK, &h));
        h.insert("grpc-status", http::HeaderValue::from_static("13"));
        assert!(!r.retries_answer(StatusCode::OK, &h));
    }

    #[test]
    fn the_budget_lets_retries_add_a_ratio_of_requests_plus_a_floor() {
        let r = policy("{budget_ratio: 0.2, budget_min_per_second: 0}");
        let now = 1_000_000_000;
        for _ in 0..100 {
            r.count_request(now);
        }
        let granted = (0..100).filter(|_| r.take_budget(now)).count();
        assert_eq!(granted, 20);
        // The floor: 1 per second over the 10 s window, even with no requests.
        let r = policy("{budget_ratio: 0.2, budget_min_per_second: 1}");
        assert_eq!((0..100).filter(|_| r.take_budget(now)).count(), 10);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let r = policy("{backoff: 10ms, max_backoff: 35ms}");
        for _ in 0..100 {
            assert!(r.backoff(1) <= Duration::from_millis(10));
            assert!(r.backoff(2) <= Duration::from_millis(20));
            assert!(r.backoff(5) <= Duration::from_millis(35));
        }
    }
}
