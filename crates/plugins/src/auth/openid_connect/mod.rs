//! `openid-connect`: the gateway as an OpenID Connect relying party. Browsers log in with
//! the authorization-code flow and PKCE and then carry a session cookie only the gateway can
//! read (sealed: encrypted and authenticated); APIs send bearer tokens, checked against the
//! provider's keys (JWT) or by introspection. Claims go upstream as headers and may name the
//! consumer. Every call to the provider is a sub-request through the gateway's pools.

mod flow;
mod provider;
mod sealed;

use gatehouse_plugin_api::{
    header_name, BuildEnv, Consumer, ConsumerIndex, FieldError, Flow, Plugin, RequestCtx, TypedKind,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use provider::Provider;
use schemars::JsonSchema;
use sealed::Sealer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The provider's discovery document, `http://host[:port]/.well-known/openid-configuration`.
    pub discovery: String,
    pub client_id: String,
    pub client_secret: String,
    /// Where the provider sends the browser back (a URL of this gateway, on a route with
    /// this plugin); its path is answered by the plugin.
    pub redirect_uri: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The key material sealing session cookies (at least 32 bytes); every node of a
    /// cluster needs the same.
    pub session_secret: String,
    #[serde(default = "default_cookie")]
    pub session_cookie: String,
    #[serde(default = "one_hour", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub session_lifetime: Duration,
    /// A path of this gateway that ends the session (and the provider's, when it offers).
    #[serde(default)]
    pub logout_path: Option<String>,
    #[serde(default)]
    pub post_logout_redirect_uri: Option<String>,
    /// A request with neither session nor bearer token: `auth` sends a browser (GET/HEAD) to
    /// log in, `deny` answers 401 (for APIs).
    #[serde(default)]
    pub unauth_action: UnauthAction,
    /// How `Authorization: Bearer` tokens are checked: `jwt` (signature by the provider's
    /// keys, issuer, audience), `introspection` (asked of the provider), or `none` (ignored).
    #[serde(default)]
    pub bearer: Bearer,
    /// Audiences a bearer JWT may have; default: the client id.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Claims sent upstream as request headers: `{sub: X-User-Id, email: X-User-Email}`.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Send the access token upstream in this header.
    #[serde(default)]
    pub access_token_header: Option<String>,
    /// The claim whose value is the consumer's username.
    #[serde(default)]
    pub consumer_claim: Option<String>,
    #[serde(default)]
    pub anonymous: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnauthAction {
    #[default]
    Auth,
    Deny,
}

#[derive(Debug, Default, Deserialize, JsonSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Bearer {
    #[default]
    Jwt,
    Introspection,
    None,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into(), "email".into()]
}
fn default_cookie() -> String {
    "gatehouse_session".into()
}
fn one_hour() -> Duration {
    Duration::from_secs(3600)
}

pub struct Kind;

impl TypedKind for Kind {
    const NAME: &'static str = "openid-connect";
    const PRIORITY: i32 = 1050;
    const AUTHENTICATES: bool = true;
    type Config = Config;

    fn build(&self, c: Config, env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        build(c, env)
    }
}

fn build(c: Config, env: &BuildEnv) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
    let mut errs = Vec::new();
    let to = env
        .url(&c.discovery)
        .map_err(|e| errs.push(FieldError::new("discovery", e)))
        .ok();
    let sealer = Sealer::new(&c.session_secret)
        .map_err(|e| errs.push(FieldError::new("session_secret", e)))
        .ok();
    let callback = match c.redirect_uri.parse::<http::Uri>() {
        Ok(u) if u.scheme().is_some() && u.host().is_some() => Some(u.path().to_string()),
        _ => {
            errs.push(FieldError::new(
                "redirect_uri",
                "must be an absolute URL of this gateway",
            ));
            None
        }
    };
    if !c.scopes.iter().any(|s| s == "openid") {
        errs.push(FieldError::new("scopes", "must include openid"));
    }
    let mut headers = Vec::new();
    for (claim, h) in &c.claims_to_headers {
        match header_name(h) {
            Ok(n) => headers.push((claim.clone(), n)),
            Err(e) => errs.push(FieldError::new(format!("claims_to_headers.{claim}"), e)),
        }
    }
    let token_header = c.access_token_header.as_deref().and_then(|h| {
        header_name(h)
            .map_err(|e| errs.push(FieldError::new("access_token_header", e)))
            .ok()
    });
    if let Some(p) = &c.logout_path {
        if !p.starts_with('/') {
            errs.push(FieldError::new("logout_path", "must start with /"));
        }
    }
    let (Some(to), Some(sealer), Some(callback), true) = (to, sealer, callback, errs.is_empty())
    else {
        return Err(errs);
    };
    let audience = match c.audience.is_empty() {
        true => vec![c.client_id.clone()],
        false => c.audience,
    };
    Ok(Arc::new(Oidc(Arc::new(Inner {
        provider: Provider::new(to, &c.discovery, c.client_id.clone(), c.client_secret),
        sealer,
        client_id: c.client_id,
        secure: c.redirect_uri.starts_with("https://"),
        redirect_uri: c.redirect_uri,
        callback,
        scopes: c.scopes.join(" "),
        cookie: c.session_cookie.clone(),
        login_cookie: format!("{}_login", c.session_cookie),
        lifetime: c.session_lifetime,
        logout_path: c.logout_path,
        post_logout: c.post_logout_redirect_uri,
        unauth: c.unauth_action,
        bearer: c.bearer,
        audience,
        claims_to_headers: headers,
        token_header,
        consumer_claim: c.consumer_claim,
        anonymous: c.anonymous,
    }))))
}

pub struct Oidc(Arc<Inner>);

pub(crate) struct Inner {
    provider: Provider,
    sealer: Sealer,
    client_id: String,
    redirect_uri: String,
    /// The path of `redirect_uri`.
    callback: String,
    scopes: String,
    cookie: String,
    login_cookie: String,
    lifetime: Duration,
    secure: bool,
    logout_path: Option<String>,
    post_logout: Option<String>,
    unauth: UnauthAction,
    bearer: Bearer,
    audience: Vec<String>,
    claims_to_headers: Vec<(String, HeaderName)>,
    token_header: Option<HeaderName>,
    consumer_claim: Option<String>,
    anonymous: Option<String>,
}

/// What the session cookie holds.
#[derive(Serialize, Deserialize)]
pub(crate) struct Session {
    /// Unix seconds after which the session is over.
    exp: u64,
    claims: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Inner {
    /// The upstream headers and consumer an identity (claims, access token) gives.
    fn identity(
        &self,
        consumers: &ConsumerIndex,
        claims: &Map<String, Value>,
        access_token: Option<&str>,
    ) -> Result<(HeaderMap, Option<Consumer>), &'static str> {
        let mut h = HeaderMap::new();
        for (claim, name) in &self.claims_to_headers {
            let text = match claims.get(claim) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => continue,
                Some(v) => v.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&text) {
                h.insert(name.clone(), v);
            }
        }
        if let (Some(name), Some(t)) = (&self.token_header, access_token) {
            if let Ok(v) = HeaderValue::from_str(t) {
                h.insert(name.clone(), v);
            }
        }
        let consumer = match &self.consumer_claim {
            None => None,
            Some(c) => {
                let name = claims
                    .get(c)
                    .and_then(Value::as_str)
                    .ok_or("the identity does not name a consumer")?;
                Some(
                    consumers
                        .by_username(name)
                        .cloned()
                        .ok_or("the consumer the identity names does not exist")?,
                )
            }
        };
        Ok((h, consumer))
    }

    /// Headers set by the plugin that a client must not set itself.
    fn strip_claimed(&self, headers: &mut HeaderMap) {
        for (_, n) in &self.claims_to_headers {
            headers.remove(n);
        }
        if let Some(n) = &self.token_header {
            headers.remove(n);
        }
    }

    /// Takes the plugin's own cookies (the session, a login in progress) out of the request
    /// that goes upstream: they are the gateway's, and the session holds the tokens.
    fn strip_own_cookies(&self, headers: &mut HeaderMap) {
        let ours = |pair: &str| {
            let name = pair.trim().split_once('=').map_or(pair.trim(), |(k, _)| k);
            name == self.cookie || name == self.login_cookie
        };
        let values: Vec<HeaderValue> = headers
            .get_all(http::header::COOKIE)
            .iter()
            .cloned()
            .collect();
        if !values
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(';').any(ours)))
        {
            return;
        }
        headers.remove(http::header::COOKIE);
        for v in values {
            let Ok(text) = v.to_str() else {
                headers.append(http::header::COOKIE, v);
                continue;
            };
            let kept: Vec<&str> = text
                .split(';')
                .map(str::trim)
                .filter(|p| !ours(p))
                .collect();
            if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
                if !kept.is_empty() {
                    headers.append(http::header::COOKIE, v);
                }
            }
        }
    }
}

impl Plugin for Oidc {
    fn access(&self, ctx: &mut RequestCtx<'_>) -> Flow {
        let me = &self.0;
        me.strip_claimed(&mut ctx.parts.headers);
        let path = ctx.parts.uri.path();
        if path == me.callback {
            return flow::callback(me.clone(), ctx);
        }
        if me.logout_path.as_deref() == Some(path) {
            return flow::logout(me.clone(), ctx);
        }
        if me.bearer != Bearer::None {
            if let Some(token) = flow::bearer_token(ctx) {
                return flow::bearer(me.clone(), ctx, token);
            }
        }
        if let Some(session) = gatehouse_plugin_api::cookie(&ctx.parts.headers, &me.cookie)
            .and_then(|c| me.sealer.open::<Session>(&me.cookie, c))
            .filter(|s| s.exp > unix_now())
        {
            return match me.identity(
                ctx.consumers(),
                &session.claims,
                session.access_token.as_deref(),
            ) {
                Ok((headers, consumer)) => {
                    me.strip_own_cookies(&mut ctx.parts.headers);
                    gatehouse_plugin_api::set_all(&mut ctx.parts.headers, headers);
                    if let Some(c) = consumer {
                        ctx.authenticate(&c);
                    }
                    Flow::Continue
                }
                Err(why) => flow::refuse(why),
            };
        }
        let browser = matches!(ctx.parts.method, http::Method::GET | http::Method::HEAD);
        match (me.unauth, browser) {
            (UnauthAction::Auth, true) => flow::login(me.clone(), ctx),
            _ => flow::refuse("no session and no bearer token"),
        }
    }

    fn anonymous(&self) -> Option<&str> {
        self.0.anonymous.as_deref()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn inner() -> Arc<Inner> {
        let env = BuildEnv::default();
        Arc::new(Inner {
            provider: Provider::new(
                env.url("http://127.0.0.1:9/x").unwrap(),
                "http://127.0.0.1:9/x",
                "c".into(),
                "s".into(),
            ),
            sealer: Sealer::new("0123456789abcdef0123456789abcdef").unwrap(),
            client_id: "c".into(),
            redirect_uri: "https://gw.test/callback".into(),
            callback: "/callback".into(),
            scopes: "openid".into(),
            cookie: "gatehouse_session".into(),
            login_cookie: "gatehouse_session_login".into(),
            lifetime: Duration::from_secs(60),
            secure: true,
            logout_path: None,
            post_logout: None,
            unauth: UnauthAction::Auth,
            bearer: Bearer::Jwt,
            audience: vec!["c".into()],
            claims_to_headers: Vec::new(),
            token_header: None,
            consumer_claim: None,
            anonymous: None,
        })
    }

    #[test]
    fn the_gateways_cookies_are_taken_out_and_the_others_kept() {
        let me = inner();
        let mut h = HeaderMap::new();
        h.append(
            "cookie",
            "theme=dark; gatehouse_session=abc".parse().unwrap(),
        );
        h.append("cookie", "gatehouse_session_login=x".parse().unwrap());
        me.strip_own_cookies(&mut h);
        let left: Vec<&str> = h
            .get_all("cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(left, ["theme=dark"]);
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; b=2".parse().unwrap());
        me.strip_own_cookies(&mut h);
        assert_eq!(h["cookie"], "a=1; b=2", "untouched when none is ours");
        assert!(me.secure);
    }
}
