//! Debug tokens: short-lived secrets the admin API issues, which a request presents in the
//! debug header to get the gateway's decision trace back. Only checked when a request carries
//! the header, so other requests never touch this.

use std::sync::RwLock;
use std::time::{Duration, Instant};

/// Most tokens alive at once; issuing past it retires the oldest.
const MAX_LIVE: usize = 64;
/// Longest life a token may be given.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Default)]
pub struct DebugTokens {
    live: RwLock<Vec<(String, Instant)>>,
}

impl DebugTokens {
    /// A new random token valid for `ttl` (capped at [`MAX_TTL`]).
    pub fn issue(&self, ttl: Duration) -> Result<String, String> {
        let mut raw = [0u8; 24];
        getrandom::fill(&mut raw).map_err(|e| format!("no randomness: {e}"))?;
        let token = format!("ghd_{}", crate::trace::hex(&raw));
        let now = Instant::now();
        let mut live = self
            .live
            .write()
            .map_err(|_| "token store poisoned".to_string())?;
        live.retain(|(_, until)| *until > now);
        if live.len() >= MAX_LIVE {
            live.remove(0);
        }
        live.push((token.clone(), now + ttl.min(MAX_TTL)));
        Ok(token)
    }

    /// Whether `presented` is a live token (compared in constant time).
    pub fn check(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let now = Instant::now();
        let Ok(live) = self.live.read() else {
            return false;
        };
        let mut ok = false;
        for (t, until) in live.iter() {
            if *until > now && t.len() == presented.len() {
                ok |= bool::from(t.as_bytes().ct_eq(presented));
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_and_only_issued_ones_pass() {
        let t = DebugTokens::default();
        let a = t.issue(Duration::from_secs(60)).unwrap_or_default();
        let b = t.issue(Duration::from_millis(1)).unwrap_or_default();
        assert!(t.check(a.as_bytes()));
        assert!(!t.check(b"ghd_nope"));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!t.check(b.as_bytes()), "expired");
        assert!(t.check(a.as_bytes()));
    }
}
