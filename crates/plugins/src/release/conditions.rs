//! The conditions release rules match requests by (`traffic-split`, `traffic-mirror`):
//! header, cookie and query values, client IP ranges, user ids (a list, or tail digits),
//! sticky percentages of users, and plain random percentages. A rule's conditions are ANDed.
//! Compiled once per instance; matching allocates nothing.

use gatehouse_plugin_api::{cookie, header_name, query_arg, FieldError, RequestCtx};
use http::HeaderName;
use regex::Regex;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::HashSet;

/// A condition on one header, cookie or query argument: exactly one of `equals`, `regex`,
/// `in`, `present`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    pub name: String,
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default, rename = "in")]
    pub one_of: Option<Vec<String>>,
    #[serde(default)]
    pub present: Option<bool>,
}

/// When a rule applies: every condition given must hold.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct When {
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    #[serde(default)]
    pub cookies: Vec<ValueMatch>,
    #[serde(default)]
    pub query: Vec<ValueMatch>,
    /// The client's address is in one of these (addresses or CIDR blocks).
    #[serde(default)]
    pub ip: Vec<String>,
    /// The user id (see `user_id`) is one of these.
    #[serde(default)]
    pub user_ids: Vec<String>,
    /// The user id ends with one of these digit strings (Douyu's tail-digit gray: `["0",
    /// "1"]` is a fifth of users with numeric ids).
    #[serde(default)]
    pub user_id_tail: Vec<String>,
    /// This share of users (0-100, two decimals), by a stable hash of the user id (or of
    /// the client IP when the request has no user id): the same user always gets the same
    /// answer, and raising the share keeps everyone who was in.
    #[serde(default)]
    pub percent: Option<f64>,
    /// This share of requests, at random (not sticky).
    #[serde(default)]
    pub random_percent: Option<f64>,
}

/// Where the user id is read: `header:NAME`, `query:NAME`, `cookie:NAME`, or `consumer`
/// (the authenticated consumer's username). For a JWT claim, have `jwt-auth` put it in a
/// header (`claims_to_headers: {uid: x-user-id}`: it removes a client's own value) and read
/// `header:x-user-id`.
#[derive(Debug, Clone)]
pub enum UserId {
    Header(HeaderName),
    Query(Box<str>),
    Cookie(Box<str>),
    Consumer,
}

impl UserId {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        let bad = || {
            FieldError::new(
                field,
                format!("\"{s}\": expected header:NAME, query:NAME, cookie:NAME or consumer"),
            )
        };
        if s == "consumer" {
            return Ok(UserId::Consumer);
        }
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        if name.is_empty() {
            return Err(bad());
        }
        match kind {
            "header" => header_name(name)
                .map(UserId::Header)
                .map_err(|m| FieldError::new(field, m)),
            "query" => Ok(UserId::Query(name.into())),
            "cookie" => Ok(UserId::Cookie(name.into())),
            _ => Err(bad()),
        }
    }

    /// The plugin's `user_id` setting, compiled; a bad one is added to `errs`.
    pub fn setting(given: Option<&str>, errs: &mut Vec<FieldError>) -> Option<UserId> {
        match given.map(|s| UserId::parse("user_id", s)) {
            Some(Ok(u)) => Some(u),
            Some(Err(e)) => {
                errs.push(e);
                None
            }
            None => None,
        }
    }

    /// This request's user id, if it has one.
    pub fn of<'a>(&self, ctx: &'a RequestCtx<'_>) -> Option<std::borrow::Cow<'a, str>> {
        use std::borrow::Cow;
        let v = match self {
            UserId::Header(h) => Cow::Borrowed(ctx.parts.headers.get(h)?.to_str().ok()?),
            UserId::Query(q) => query_arg(ctx.parts.uri.query(), q)?,
            UserId::Cookie(c) => Cow::Borrowed(cookie(&ctx.parts.headers, c)?),
            UserId::Consumer => Cow::Owned(ctx.consumer.as_ref()?.username.to_string()),
        };
        (!v.is_empty()).then_some(v)
    }
}

/// The bucket (0..10000) a key falls in: a stable hash, the same on every node, across
/// reloads and restarts.
pub fn bucket(salt: &str, key: &[u8]) -> u32 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(key, seed(salt));
    (h % 10_000) as u32
}

fn seed(salt: &str) -> u64 {
    match salt {
        "" => 0,
        s => xxhash_rust::xxh3::xxh3_64(s.as_bytes()),
    }
}

enum Test {
    Equals(Box<str>),
    Regex(Regex),
    In(HashSet<Box<str>>),
    Present(bool),
}

impl Test {
    fn holds(&self, v: Option<&str>) -> bool {
        match (self, v) {
            (Test::Present(p), v) => v.is_some() == *p,
            (_, None) => false,
            (Test::Equals(e), Some(v)) => **e == *v,
            (Test::Regex(r), Some(v)) => r.is_match(v),
            (Test::In(set), Some(v)) => set.contains(v),
        }
    }
}

/// A compiled [`When`].
pub struct Conditions {
    headers: Vec<(HeaderName, Test)>,
    cookies: Vec<(Box<str>, Test)>,
    query: Vec<(Box<str>, Test)>,
    ip: Vec<ipnet::IpNet>,
    user_ids: HashSet<Box<str>>,
    tails: Vec<Box<str>>,
    /// Buckets below this (of 10000) are in.
    percent: Option<u32>,
    random: Option<f64>,
    /// Whether matching needs the user id.
    pub needs_user: bool,
}

/// What a request is matched with besides its head: its user id and sticky key.
pub struct Subject<'a> {
    pub user: Option<&'a str>,
    /// What sticky percentages hash: the user id, else the client IP.
    pub key: &'a [u8],
}

impl Conditions {
    pub fn compile(field: &str, w: &When) -> Result<Self, Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut tests = |kind: &str, list: &[ValueMatch]| value_tests(field, kind, list, &mut errs);
        let raw_headers = tests("headers", &w.headers);
        let cookies = tests("cookies", &w.cookies)
            .into_iter()
            .map(|(n, t)| (n.into(), t))
            .collect();
        let query = tests("query", &w.query)
            .into_iter()
            .map(|(n, t)| (n.into(), t))
            .collect();
        let mut headers = Vec::new();
        for (i, (n, t)) in raw_headers.into_iter().enumerate() {
            match header_name(&n) {
                Ok(h) => headers.push((h, t)),
                Err(m) => errs.push(FieldError::new(format!("{field}.headers[{i}].name"), m)),
            }
        }
        let mut ip = Vec::new();
        for (i, c) in w.ip.iter().enumerate() {
            let parsed = c
                .parse::<ipnet::IpNet>()
                .map(|n| n.trunc())
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) => ip.push(n),
                Err(_) => errs.push(FieldError::new(
                    format!("{field}.ip[{i}]"),
                    format!("\"{c}\" is not an IP address or CIDR block"),
                )),
            }
        }
        for (i, t) in w.user_id_tail.iter().enumerate() {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                errs.push(FieldError::new(
                    format!("{field}.user_id_tail[{i}]"),
                    format!("\"{t}\" is not a string of digits"),
                ));
            }
        }
        let share = |name: &str, p: Option<f64>, errs: &mut Vec<FieldError>| {
            let p = p?;
            if !(0.0..=100.0).contains(&p) {
                errs.push(FieldError::new(
                    format!("{field}.{name}"),
                    "must be between 0 and 100",
                ));
                return None;
            }
            Some(p)
        };
        let percent = share("percent", w.percent, &mut errs).map(|p| (p * 100.0).round() as u32);
        let random = share("random_percent", w.random_percent, &mut errs).map(|p| p / 100.0);
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Conditions {
            needs_user: !w.user_ids.is_empty() || !w.user_id_tail.is_empty(),
            headers,
            cookies,
            query,
            ip,
            user_ids: w.user_ids.iter().map(|s| s.as_str().into()).collect(),
            tails: w.user_id_tail.iter().map(|s| s.as_str().into()).collect(),
            percent,
            random,
        })
    }

    /// Whether every condition holds for the request.
    pub fn holds(&self, ctx: &RequestCtx<'_>, who: &Subject<'_>) -> bool {
        let h = &ctx.parts.headers;
        self.headers
            .iter()
            .all(|(n, t)| t.holds(h.get(n).and_then(|v| v.to_str().ok())))
            && self.cookies.iter().all(|(n, t)| t.holds(cookie(h, n)))
            && self
                .query
                .iter()
                .all(|(n, t)| t.holds(query_arg(ctx.parts.uri.query(), n).as_deref()))
            && (self.ip.is_empty() || self.ip.iter().any(|n| n.contains(&ctx.client_ip)))
            && (self.user_ids.is_empty() || who.user.is_some_and(|u| self.user_ids.contains(u)))
            && (self.tails.is_empty()
                || who
                    .user
                    .is_some_and(|u| self.tails.iter().any(|t| u.ends_with(&**t))))
            && self.percent.is_none_or(|p| bucket("", who.key) < p)
            && self.random.is_none_or(|r| fastrand::f64() < r)
    }
}

/// The tests of a list of header, cookie or query conditions (`{field}.{kind}`); bad ones are
/// added to `errs`.
fn value_tests(
    field: &str,
    kind: &str,
    list: &[ValueMatch],
    errs: &mut Vec<FieldError>,
) -> Vec<(String, Test)> {
    let mut out = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let at = format!("{field}.{kind}[{i}]");
        let given = [
            m.equals.is_some(),
            m.regex.is_some(),
            m.one_of.is_some(),
            m.present.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            errs.push(FieldError::new(
                at,
                "give exactly one of equals, regex, in, present",
            ));
            continue;
        }
        let test = if let Some(e) = &m.equals {
            Test::Equals(e.as_str().into())
        } else if let Some(r) = &m.regex {
            match Regex::new(r) {
                Ok(r) => Test::Regex(r),
                Err(e) => {
                    errs.push(FieldError::new(
                        format!("{at}.regex"),
                        format!("not a valid regex: {e}"),
                    ));
                    continue;
                }
            }
        } else if let Some(l) = &m.one_of {
            Test::In(l.iter().map(|s| s.as_str().into()).collect())
        } else {
            Test::Present(m.present.unwrap_or(true))
        };
        out.push((m.name.clone(), test));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket("", b"user-42"), bucket("", b"user-42"));
        let mut under = 0;
        for i in 0..20_000 {
            if bucket("", format!("u{i}").as_bytes()) < 1000 {
                under += 1;
            }
        }
        assert!((1800..2200).contains(&under), "{under}");
        assert_ne!(bucket("a", b"x"), bucket("b", b"x"));
    }

    #[test]
    fn bad_conditions_are_named() {
        let w: When = serde_json::from_value(serde_json::json!({
            "headers": [{"name": "x", "equals": "a", "regex": "b"}],
            "ip": ["nope"],
            "user_id_tail": ["1a"],
            "percent": 120,
            "query": [{"name": "q", "regex": "("}]
        }))
        .unwrap();
        let errs = match Conditions::compile("rules[0].when", &w) {
            Err(e) => e,
            Ok(_) => panic!("accepted"),
        };
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "rules[0].when.headers[0]",
                "rules[0].when.query[0].regex",
                "rules[0].when.ip[0]",
                "rules[0].when.user_id_tail[0]",
                "rules[0].when.percent"
            ]
        );
    }
}
