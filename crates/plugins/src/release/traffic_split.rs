//! `traffic-split`: ordered release rules, the first match wins (canary, gray, A/B). A
//! rule's conditions (headers, cookies, query, IP ranges, user ids and their tail digits,
//! sticky or random percentages) pick its action: another upstream (or several, weighted,
//! sticky per user), another service, a new path, a redirect, a colour. Every request is
//! labelled with its variant (the rule's name) in metrics and the access log.

use super::conditions::{bucket, Conditions, Subject, UserId, When};
use gatehouse_plugin_api::{
    header_name, json_response, BuildEnv, FieldError, Flow, Plugin, RequestCtx, ServiceRef,
    TypedKind, UpstreamRef, Variant,
};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Uri};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;

/// Release rules for a route or service.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the user id is read: `header:NAME`, `query:NAME`, `cookie:NAME` or `consumer`.
    /// Sticky percentages hash it (the client IP when a request has none).
    #[serde(default)]
    pub user_id: Option<String>,
    /// A response header that names the request's variant (e.g. `X-Gatehouse-Variant`).
    #[serde(default)]
    pub variant_header: Option<String>,
    /// Tried in order; the first whose `when` holds acts.
    pub rules: Vec<Rule>,
    /// What requests no rule matched get (default: the route's service, as variant
    /// `default`).
    #[serde(default)]
    pub default: Option<Action>,
}

/// A rule: its conditions and what it does.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The variant's name, in metrics, the access log and `variant_header`.
    pub name: String,
    #[serde(default)]
    pub when: When,
    #[serde(flatten)]
    pub action: Action,
}

/// What a matched rule does: send elsewhere (`upstream`, `upstreams` or `service`), and/or
/// `rewrite` the path, and/or `color` the request; or `redirect` the client.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct Action {
    /// For `default` only: the variant's name (default `default`).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub upstream: Option<String>,
    /// Several upstreams by weight; a user (or client IP) always gets the same one.
    #[serde(default)]
    pub upstreams: Vec<Weighted>,
    #[serde(default)]
    pub service: Option<String>,
    /// The path to send upstream instead (the query stays), e.g. Douyu's `/source` → `/ab1`.
    #[serde(default)]
    pub rewrite: Option<String>,
    #[serde(default)]
    pub redirect: Option<Redirect>,
    /// Colour the request (full-link gray): the colour header is set, passed upstream, and
    /// the request goes to targets labelled with this colour when its upstream has some.
    #[serde(default)]
    pub color: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Weighted {
    pub upstream: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// An absolute URL or a path; the request's query is added when it has none.
    pub url: String,
    /// 301, 302 (default), 307 or 308.
    #[serde(default = "found")]
    pub status: u16,
}

fn found() -> u16 {
    302
}

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = "traffic-split";
    // After authentication (the user id may be the consumer) and limits.
    const PRIORITY: i32 = 500;
    type Config = Config;

    fn build(&self, c: Config, env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        let mut errs = Vec::new();
        let user_id = UserId::setting(c.user_id.as_deref(), &mut errs);
        let variant_header = c
            .variant_header
            .as_deref()
            .map(header_name)
            .transpose()
            .map_err(|m| errs.push(FieldError::new("variant_header", m)))
            .ok()
            .flatten();
        if c.rules.is_empty() {
            errs.push(FieldError::new("rules", "needs at least one rule"));
        }
        let mut rules = Vec::with_capacity(c.rules.len());
        for (i, r) in c.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            if r.name.is_empty() || r.action.name.is_some() {
                errs.push(FieldError::new(
                    format!("{at}.name"),
                    "a rule needs a name (its variant), and no action name",
                ));
            }
            if c.rules[..i].iter().any(|x| x.name == r.name) {
                errs.push(FieldError::new(
                    format!("{at}.name"),
                    format!("\"{}\" names another rule already", r.name),
                ));
            }
            let when = Conditions::compile(&format!("{at}.when"), &r.when)
                .map_err(|e| errs.extend(e))
                .ok();
            let act = compile_action(&at, &r.action, env, &mut errs);
            if when.as_ref().is_some_and(|w| w.needs_user) && user_id.is_none() {
                errs.push(FieldError::new(
                    format!("{at}.when"),
                    "user_ids and user_id_tail need the plugin's user_id (where the id is read)",
                ));
            }
            if let (Some(when), Some(act)) = (when, act) {
                rules.push(Compiled {
                    when,
                    act,
                    variant: Variant {
                        name: r.name.as_str().into(),
                        header: variant_header.clone(),
                    },
                });
            }
        }
        let default = c
            .default
            .as_ref()
            .and_then(|d| compile_action("default", d, env, &mut errs))
            .unwrap_or_default();
        let default_name = c.default.as_ref().and_then(|d| d.name.as_deref());
        let default_variant = Variant {
            name: default_name.unwrap_or("default").into(),
            header: variant_header,
        };
        if rules.iter().any(|r| r.variant.name == default_variant.name) {
            errs.push(FieldError::new(
                "default.name",
                format!("\"{}\" names a rule already", default_variant.name),
            ));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Arc::new(TrafficSplit {
            user_id,
            rules,
            default,
            default_variant,
        }))
    }
}

/// What an action does, compiled.
#[derive(Default)]
struct Act {
    /// Upstreams and their cumulative weights (one entry: no choice to make).
    upstreams: Vec<(UpstreamRef, u64)>,
    service: Option<ServiceRef>,
    rewrite: Option<Box<str>>,
    redirect: Option<(Box<str>, StatusCode)>,
    color: Option<(HeaderName, HeaderValue)>,
}

fn compile_action(at: &str, a: &Action, env: &BuildEnv, errs: &mut Vec<FieldError>) -> Option<Act> {
    let before = errs.len();
    let mut act = Act::default();
    let destinations = [
        a.upstream.is_some(),
        !a.upstreams.is_empty(),
        a.service.is_some(),
    ];
    if destinations.iter().filter(|d| **d).count() > 1 {
        errs.push(FieldError::new(
            at,
            "give at most one of upstream, upstreams, service",
        ));
    }
    if let Some(u) = &a.upstream {
        match env.upstream(u) {
            Ok(r) => act.upstreams.push((r, 1)),
            Err(m) => errs.push(FieldError::new(format!("{at}.upstream"), m)),
        }
    }
    let mut total = 0u64;
    for (i, w) in a.upstreams.iter().enumerate() {
        if w.weight == 0 {
            errs.push(FieldError::new(
                format!("{at}.upstreams[{i}].weight"),
                "must be at least 1",
            ));
        }
        total += u64::from(w.weight);
        match env.upstream(&w.upstream) {
            Ok(r) => act.upstreams.push((r, total)),
            Err(m) => errs.push(FieldError::new(format!("{at}.upstreams[{i}].upstream"), m)),
        }
    }
    if let Some(s) = &a.service {
        match env.service(s) {
            Ok(r) => act.service = Some(r),
            Err(m) => errs.push(FieldError::new(format!("{at}.service"), m)),
        }
    }
    if let Some(p) = &a.rewrite {
        if !p.starts_with('/') || PathAndQuery::try_from(p.as_str()).is_err() || p.contains('?') {
            errs.push(FieldError::new(
                format!("{at}.rewrite"),
                "must be a path starting with / (without a query)",
            ));
        }
        act.rewrite = Some(p.as_str().into());
    }
    if let Some(r) = &a.redirect {
        if destinations.iter().any(|d| *d) || a.rewrite.is_some() {
            errs.push(FieldError::new(
                format!("{at}.redirect"),
                "a redirect answers the client: it takes no upstream, service or rewrite",
            ));
        }
        if !matches!(r.status, 301 | 302 | 307 | 308) {
            errs.push(FieldError::new(
                format!("{at}.redirect.status"),
                "must be 301, 302, 307 or 308",
            ));
        }
        if HeaderValue::from_str(&r.url).is_err() || r.url.is_empty() {
            errs.push(FieldError::new(
                format!("{at}.redirect.url"),
                "must be a URL or path usable in a Location header",
            ));
        }
        let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND);
        act.redirect = Some((r.url.as_str().into(), status));
    }
    if let Some(c) = &a.color {
        match HeaderValue::from_str(c) {
            Ok(v) if !c.is_empty() => act.color = Some((env.color_header(), v)),
            _ => errs.push(FieldError::new(
                format!("{at}.color"),
                "must be non-empty visible text",
            )),
        }
    }
    (errs.len() == before).then_some(act)
}

struct Compiled {
    when: Conditions,
    act: Act,
    variant: Variant,
}

pub struct TrafficSplit {
    user_id: Option<UserId>,
    rules: Vec<Compiled>,
    default: Act,
    default_variant: Variant,
}

impl Plugin for TrafficSplit {
    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let user = self.user_id.as_ref().and_then(|u| u.of(ctx));
        let ip = ip_key(ctx.client_ip);
        let key: &[u8] = match &user {
            Some(u) => u.as_bytes(),
            None => ip.as_ref(),
        };
        let who = Subject {
            user: user.as_deref(),
            key,
        };
        let (act, variant) = match self.rules.iter().find(|r| r.when.holds(ctx, &who)) {
            Some(r) => (&r.act, &r.variant),
            None => (&self.default, &self.default_variant),
        };
        let sticky = bucket(&variant.name, key);
        let key_owned = (!act.upstreams.is_empty()).then_some(sticky);
        drop(user);
        ctx.set_variant(variant);
        act.apply(ctx, key_owned)
    }

    fn variants(&self) -> Vec<Arc<str>> {
        self.rules
            .iter()
            .map(|r| r.variant.name.clone())
            .chain(std::iter::once(self.default_variant.name.clone()))
            .collect()
    }
}

impl Act {
    fn apply(&self, ctx: &mut RequestCtx<'_>, sticky: Option<u32>) -> Flow {
        if let Some((url, status)) = &self.redirect {
            return redirect(ctx, url, *status);
        }
        if let Some(total) = self.upstreams.last().map(|(_, t)| *t) {
            // The bucket spreads users over 0..10000; scaled onto the weights, the same
            // user keeps their upstream while the weights stay.
            let at = u64::from(sticky.unwrap_or(0)) * total / 10_000;
            if let Some((u, _)) = self.upstreams.iter().find(|(_, cum)| at < *cum) {
                ctx.set_upstream(u);
            }
        }
        if let Some(s) = &self.service {
            ctx.set_service(s);
        }
        if let Some(path) = &self.rewrite {
            set_path(&mut ctx.parts.uri, path);
        }
        if let Some((name, value)) = &self.color {
            ctx.parts.headers.insert(name.clone(), value.clone());
        }
        Flow::Continue
    }
}

/// A client address as a sticky key, without a string per request.
pub(super) fn ip_key(ip: std::net::IpAddr) -> IpKey {
    match ip {
        std::net::IpAddr::V4(v4) => IpKey::V4(v4.octets()),
        std::net::IpAddr::V6(v6) => IpKey::V6(v6.octets()),
    }
}

pub(super) enum IpKey {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl AsRef<[u8]> for IpKey {
    fn as_ref(&self) -> &[u8] {
        match self {
            IpKey::V4(b) => b,
            IpKey::V6(b) => b,
        }
    }
}

/// The URI with its path replaced and its query kept.
fn set_path(uri: &mut Uri, path: &str) {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = PathAndQuery::try_from(pq).ok();
    if let Ok(u) = Uri::from_parts(parts) {
        *uri = u;
    }
}

fn redirect(ctx: &RequestCtx<'_>, url: &str, status: StatusCode) -> Flow {
    let location = match ctx.parts.uri.query() {
        Some(q) if !url.contains('?') => format!("{url}?{q}"),
        _ => url.to_owned(),
    };
    let Ok(location) = HeaderValue::from_str(&location) else {
        return Flow::Respond(json_response(
            StatusCode::BAD_REQUEST,
            "the request's query cannot go in a redirect",
            HeaderMap::new(),
        ));
    };
    let mut resp = Response::new(bytes::Bytes::new());
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::LOCATION, location);
    Flow::Respond(resp)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::{get, AccessNow};
    use gatehouse_plugin_api::testing::env_with_upstreams;
    use gatehouse_plugin_api::PluginKind;

    fn build(config: serde_json::Value) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        let env = env_with_upstreams(&["v1", "v2", "v3"]).with_services(["other"]);
        PluginKind::build(&Kind, &config, &env)
    }

    fn split(config: serde_json::Value) -> Arc<dyn Plugin> {
        build(config).unwrap_or_else(|e| panic!("{e:?}"))
    }

    /// The variant and upstream a request got.
    fn run(p: &dyn Plugin, req: &mut crate::test_support::Req) -> (String, Option<String>) {
        req.access_now(p).unwrap();
        let v = req.variant.as_ref().unwrap().name.to_string();
        (v, req.upstream.take().map(|u| u.name().to_owned()))
    }

    #[test]
    fn the_first_matching_rule_wins_and_the_rest_get_the_default() {
        let p = split(serde_json::json!({
            "user_id": "header:x-uid",
            "rules": [
                {"name": "list", "when": {"user_ids": ["7", "8"]}, "upstream": "v2"},
                {"name": "tail", "when": {"user_id_tail": ["3"]}, "upstream": "v3"},
                {"name": "office", "when": {"ip": ["10.0.0.0/8"]}, "upstream": "v2"},
                {"name": "beta", "when": {"headers": [{"name": "x-beta", "in": ["1", "yes"]}],
                  "cookies": [{"name": "grp", "regex": "^b"}]}, "upstream": "v3"},
            ],
        }));
        let cases = [
            (get("/").header("x-uid", "8"), "list", Some("v2")),
            (get("/").header("x-uid", "1233"), "tail", Some("v3")),
            (get("/").header("x-uid", "1231"), "default", None),
            (
                get("/").from_ip("10.2.3.4".parse().unwrap()),
                "office",
                Some("v2"),
            ),
            (
                get("/")
                    .header("x-beta", "yes")
                    .header("cookie", "a=1; grp=beta"),
                "beta",
                Some("v3"),
            ),
            (get("/").header("x-beta", "yes"), "default", None),
        ];
        for (mut req, variant, upstream) in cases {
            let (v, u) = run(&*p, &mut req);
            assert_eq!((v.as_str(), u.as_deref()), (variant, upstream));
        }
    }

    #[test]
    fn sticky_percentages_keep_users_when_the_share_grows() {
        let at = |share: f64| {
            split(serde_json::json!({
                "user_id": "query:uid",
                "rules": [{"name": "canary", "when": {"percent": share}, "upstream": "v2"}],
            }))
        };
        let (ten, twenty) = (at(10.0), at(20.0));
        let (mut in10, mut in20) = (0, 0);
        for i in 0..20_000 {
            let uri = format!("/x?uid={i}");
            let a = run(&*ten, &mut get(&uri)).0 == "canary";
            let b = run(&*twenty, &mut get(&uri)).0 == "canary";
            assert!(!a || b, "user {i} left the canary when the share grew");
            in10 += a as u32;
            in20 += b as u32;
        }
        assert!((1800..=2200).contains(&in10), "10 %: {in10} of 20000");
        assert!((3800..=4200).contains(&in20), "20 %: {in20} of 20000");
    }

    #[test]
    fn weighted_upstreams_are_sticky_per_user() {
        let p = split(serde_json::json!({
            "user_id": "header:x-uid",
            "rules": [{"name": "ab", "upstreams": [{"upstream": "v1", "weight": 1},
                                                   {"upstream": "v2", "weight": 3}]}],
        }));
        let mut v2 = 0;
        for i in 0..4000 {
            let first = run(&*p, &mut get("/").header("x-uid", &i.to_string())).1;
            let again = run(&*p, &mut get("/").header("x-uid", &i.to_string())).1;
            assert_eq!(first, again);
            v2 += (first.as_deref() == Some("v2")) as u32;
        }
        assert!((2800..=3200).contains(&v2), "{v2}");
    }

    #[test]
    fn rewrite_redirect_service_and_color_actions() {
        let p = split(serde_json::json!({
            "variant_header": "X-Variant",
            "rules": [
                {"name": "ab1", "when": {"query": [{"name": "ab", "equals": "1"}]}, "rewrite": "/ab1"},
                {"name": "moved", "when": {"query": [{"name": "ab", "equals": "2"}]},
                 "redirect": {"url": "https://new.example.com/x", "status": 308}},
                {"name": "svc", "when": {"query": [{"name": "ab", "equals": "3"}]}, "service": "other"},
                {"name": "gray", "when": {"query": [{"name": "ab", "equals": "4"}]}, "color": "gray"},
            ],
        }));
        let mut r = get("/source?ab=1");
        run(&*p, &mut r);
        assert_eq!(r.parts.uri.to_string(), "/ab1?ab=1");
        let resp = get("/s?ab=2").access_now(&*p).unwrap_err();
        assert_eq!(resp.status(), 308);
        assert_eq!(resp.headers()["location"], "https://new.example.com/x?ab=2");
        let mut r = get("/s?ab=3");
        run(&*p, &mut r);
        let chosen = r
            .state
            .get::<gatehouse_plugin_api::ServiceChoice>()
            .unwrap();
        assert_eq!(chosen.0.name(), "other");
        let mut r = get("/s?ab=4");
        let (v, _) = run(&*p, &mut r);
        assert_eq!(v, "gray");
        assert_eq!(r.parts.headers["x-gatehouse-color"], "gray");
        let header = r.variant.as_ref().unwrap().header.clone();
        assert_eq!(header.unwrap().as_str(), "x-variant");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let errs = build(serde_json::json!({
            "rules": [
                {"name": "a", "when": {"user_ids": ["1"]}, "upstream": "nope"},
                {"name": "a", "upstream": "v1", "service": "other"},
                {"name": "c", "redirect": {"url": "/x", "status": 200}},
                {"name": "d", "rewrite": "x"},
            ],
            "bogus": 1,
        }))
        .err()
        .unwrap();
        assert_eq!(errs[0].path, "bogus", "{errs:?}");
        let errs = build(serde_json::json!({"rules": [{"name": "d", "extra": true}]}))
            .err()
            .unwrap();
        assert_eq!(errs[0].path, "rules[0]");
        assert!(
            errs[0].message.contains("unknown field `extra`"),
            "{errs:?}"
        );
        let errs = build(serde_json::json!({
            "rules": [
                {"name": "a", "when": {"user_ids": ["1"]}, "upstream": "nope"},
                {"name": "a", "upstream": "v1", "service": "other"},
                {"name": "c", "redirect": {"url": "/x", "status": 200}},
                {"name": "d", "rewrite": "x"},
            ],
        }))
        .err()
        .unwrap();
        let got: Vec<String> = errs
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        assert_eq!(
            got,
            [
                "rules[0].upstream: no upstream named \"nope\"",
                "rules[0].when: user_ids and user_id_tail need the plugin's user_id (where the id is read)",
                "rules[1].name: \"a\" names another rule already",
                "rules[1]: give at most one of upstream, upstreams, service",
                "rules[2].redirect.status: must be 301, 302, 307 or 308",
                "rules[3].rewrite: must be a path starting with / (without a query)",
            ]
        );
    }
}
