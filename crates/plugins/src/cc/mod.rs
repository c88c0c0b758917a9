//! `cc-protect`: protection against application-layer floods (CC attacks). Per client
//! address, requests are counted in a window; past `rate`, the client must show a cookie that
//! only a browser running the challenge page's JavaScript sets; clients that keep getting
//! challenged (or pass `max_rate` even with the cookie) escalate into a ban. Known crawlers
//! are let through when their address's reverse DNS name is in their domains and resolves
//! back to the address, or when the address is in `allow_cidrs`.

mod crawlers;

use crate::strikes::{BanAfter, Strikes};
use bytes::Bytes;
use crawlers::{Crawler, Verifier};
use dashmap::DashMap;
use gatehouse_plugin_api::bans::{now_ms, Subject};
use gatehouse_plugin_api::{
    cookie, json_response, BuildEnv, FieldError, Flow, Later, Plugin, RequestCtx, TypedKind,
};
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Requests per `window` from one address before it is challenged.
    pub rate: u32,
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub window: Duration,
    /// Requests per `window` refused (429) even with the cookie (default: 10 × `rate`).
    #[serde(default)]
    pub max_rate: Option<u32>,
    /// The challenge cookie's name.
    #[serde(default = "cookie_name")]
    pub cookie: String,
    /// How long a solved challenge lasts.
    #[serde(default = "one_hour", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub cookie_ttl: Duration,
    /// The key cookies are signed with; give every node the same one (else each node's
    /// cookies hold on that node only, and a new one is drawn when the config changes).
    #[serde(default)]
    pub secret: Option<String>,
    /// Challenges (and refusals over `max_rate`) that make a ban.
    #[serde(default)]
    pub ban: Option<BanAfter>,
    /// Addresses never challenged (monitoring, partners, your own crawlers).
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
    /// Crawlers let through once verified by reverse DNS.
    #[serde(default)]
    pub crawlers: Vec<Crawler>,
    /// DNS servers (`ip:port`) for crawler verification; default: /etc/resolv.conf.
    #[serde(default)]
    pub resolvers: Vec<String>,
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn one_hour() -> Duration {
    Duration::from_secs(3600)
}
fn cookie_name() -> String {
    "gatehouse_cc".into()
}

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = "cc-protect";
    // In `rewrite` right after ip-restriction and the UA/referer lists: a flood is turned
    // away before anything else is spent on it.
    const PRIORITY: i32 = 2970;
    type Config = Config;

    fn build(&self, c: Config, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        let mut errs = Vec::new();
        if c.rate == 0 {
            errs.push(FieldError::new("rate", "must be > 0"));
        }
        if c.window.is_zero() {
            errs.push(FieldError::new("window", "must be > 0"));
        }
        let max_rate = c.max_rate.unwrap_or(c.rate.saturating_mul(10));
        if max_rate < c.rate {
            errs.push(FieldError::new("max_rate", "must be at least rate"));
        }
        let valid_cookie = !c.cookie.is_empty()
            && c.cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_cookie {
            errs.push(FieldError::new("cookie", "letters, digits, _ and - only"));
        }
        let strikes = Strikes::of(&c.ban, "cc", &mut errs);
        let mut allow = Vec::new();
        for (i, s) in c.allow_cidrs.iter().enumerate() {
            match s
                .parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(Into::into))
            {
                Ok(n) => allow.push(n),
                Err(_) => errs.push(FieldError::new(
                    format!("allow_cidrs[{i}]"),
                    format!("{s:?} is not an address or a CIDR"),
                )),
            }
        }
        let verifier = Verifier::new(&c.crawlers, &c.resolvers, &mut errs);
        let secret = match &c.secret {
            Some(s) if s.len() >= 16 => s.as_bytes().to_vec(),
            Some(_) => {
                errs.push(FieldError::new("secret", "at least 16 characters"));
                Vec::new()
            }
            None => {
                let mut k = vec![0u8; 32];
                if getrandom::fill(&mut k).is_err() {
                    errs.push(FieldError::new(
                        "secret",
                        "no randomness to draw one; set it",
                    ));
                }
                k
            }
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Arc::new(Cc(Arc::new(Inner {
            rate: c.rate,
            max_rate,
            window_ms: c.window.as_millis() as u64,
            cookie: c.cookie,
            cookie_ttl: c.cookie_ttl,
            secret,
            strikes,
            allow,
            verifier,
            counts: DashMap::default(),
        }))))
    }
}

struct Inner {
    rate: u32,
    max_rate: u32,
    window_ms: u64,
    cookie: String,
    cookie_ttl: Duration,
    secret: Vec<u8>,
    strikes: Option<Strikes>,
    allow: Vec<ipnet::IpNet>,
    verifier: Verifier,
    /// Address → (requests, window start in Unix ms).
    counts: DashMap<IpAddr, (u32, u64), foldhash::fast::RandomState>,
}

pub struct Cc(Arc<Inner>);

/// Entries beyond which ended windows are swept out.
const SWEEP_AT: usize = 200_000;

impl Inner {
    fn count(&self, ip: IpAddr) -> u32 {
        let now = now_ms();
        if self.counts.len() > SWEEP_AT {
            let w = self.window_ms;
            self.counts
                .retain(|_, (_, start)| now.saturating_sub(*start) < w);
        }
        let mut e = self.counts.entry(ip).or_insert((0, now));
        if now.saturating_sub(e.1) >= self.window_ms {
            *e = (0, now);
        }
        e.0 = e.0.saturating_add(1);
        e.0
    }

    /// `EXPIRY.MAC`: the address and the expiry, signed.
    fn token(&self, ip: IpAddr, exp: u64) -> String {
        let mut m = match Hmac::<sha2::Sha256>::new_from_slice(&self.secret) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        m.update(ip.to_string().as_bytes());
        m.update(b"|");
        m.update(exp.to_string().as_bytes());
        let mac = m.finalize().into_bytes();
        let hex: String = mac[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{exp}.{hex}")
    }

    fn solved(&self, headers: &HeaderMap, ip: IpAddr) -> bool {
        let Some(v) = cookie(headers, &self.cookie) else {
            return false;
        };
        let Some((exp, _)) = v.split_once('.') else {
            return false;
        };
        let Ok(exp) = exp.parse::<u64>() else {
            return false;
        };
        use subtle::ConstantTimeEq;
        exp > now_ms() / 1000 && bool::from(self.token(ip, exp).as_bytes().ct_eq(v.as_bytes()))
    }

    fn strike(&self, ip: IpAddr, why: &str) {
        if let Some(s) = &self.strikes {
            s.strike(Subject::ip(ip), why);
        }
    }

    /// The page whose script sets the cookie and loads the page again.
    fn challenge(&self, ip: IpAddr) -> Response<Bytes> {
        self.strike(ip, "CC challenges not answered");
        let exp = now_ms() / 1000 + self.cookie_ttl.as_secs();
        let token = self.token(ip, exp);
        // The token is split so that the page must be run, not just read, to get it whole.
        let (a, b) = token.split_at(token.len() / 2);
        let page = CHALLENGE
            .replace("{name}", &self.cookie)
            .replace("{b}", &b.chars().rev().collect::<String>())
            .replace("{a}", a)
            .replace("{ttl}", &self.cookie_ttl.as_secs().to_string());
        let mut r = Response::new(Bytes::from(page));
        *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let h = r.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        r
    }
}

const CHALLENGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>One moment…</title></head>
<body><p id="m">Checking your browser…</p>
<noscript><p>This site needs JavaScript to let you in during heavy traffic.</p></noscript>
<script>
(function () {
  var b = "{b}".split("").reverse().join("");
  document.cookie = "{name}=" + "{a}" + b + "; path=/; max-age={ttl}; SameSite=Lax";
  location.reload();
})();
</script></body></html>
"#;

impl Plugin for Cc {
    fn rewrite(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let me = &self.0;
        let ip = ctx.client_ip;
        if me.allow.iter().any(|n| n.contains(&ip)) {
            return Flow::Continue;
        }
        // What this plugin bans it refuses itself, whatever the `bans` plugin's place.
        if me.strikes.is_some() {
            if let Some(b) = gatehouse_plugin_api::bans::bans().ip(ip) {
                return crate::access::bans::refuse(&b);
            }
        }
        let n = me.count(ip);
        if n <= me.rate {
            return Flow::Continue;
        }
        if me.solved(&ctx.parts.headers, ip) {
            if n <= me.max_rate {
                return Flow::Continue;
            }
            me.strike(ip, "requests over max_rate");
            let mut h = HeaderMap::new();
            let left = me.window_ms.div_ceil(1000).max(1);
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(left));
            return Flow::Respond(json_response(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests",
                h,
            ));
        }
        let Some(crawler) = me.verifier.claimed(&ctx.parts.headers) else {
            return Flow::Respond(me.challenge(ip));
        };
        match me.verifier.known(ip, crawler) {
            Some(true) => Flow::Continue,
            Some(false) => Flow::Respond(me.challenge(ip)),
            None => {
                let inner = self.0.clone();
                Flow::Wait(Box::pin(async move {
                    if inner.verifier.verify(ip, crawler).await {
                        Ok(Later::default())
                    } else {
                        Err(inner.challenge(ip))
                    }
                }))
            }
        }
    }
}
