//! The OpenID provider as the gateway talks to it, always through sub-requests on its own
//! pools: discovery (fetched once, then kept), the token endpoint (code for tokens, with the
//! PKCE verifier), introspection of opaque access tokens, and its signing keys (a JWKS kept
//! and refreshed as `jwt-auth` keeps one).

use super::super::jwt_auth::keys::{Jwks, Key, Missing};
use arc_swap::ArcSwapOption;
use gatehouse_plugin_api::{Gateway, SubLimits, UpstreamRef};
use http::{header, HeaderValue, Method, Request};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// What discovery says, reduced to what the gateway uses.
#[derive(Debug, Deserialize)]
pub struct Endpoints {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
}

pub struct Provider {
    /// The discovery URL's origin: every call goes there.
    pub to: UpstreamRef,
    origin: String,
    discovery_path: String,
    endpoints: ArcSwapOption<Endpoints>,
    pub jwks: Arc<Jwks>,
    client_id: String,
    client_secret: String,
}

fn limits() -> SubLimits {
    SubLimits {
        timeout: Duration::from_secs(5),
        max_body: 256 * 1024,
    }
}

/// The path and query of `url` when it is on `origin`; `Err` says it is elsewhere.
fn path_on<'u>(origin: &str, url: &'u str) -> Result<&'u str, String> {
    url.strip_prefix(origin)
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| format!("{url} is not on the provider's own origin {origin}"))
}

impl Provider {
    pub fn new(to: UpstreamRef, discovery: &str, client_id: String, client_secret: String) -> Self {
        let origin = format!("http://{}", to.url_authority().unwrap_or_default());
        // The URL as written may leave out :80; calls go by path anyway.
        let discovery_path = discovery
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
            .unwrap_or_else(|| "/".into());
        let jwks = Arc::new(Jwks::new(
            to.clone(),
            Duration::from_secs(300),
            Duration::from_secs(10),
        ));
        Self {
            to,
            origin,
            discovery_path,
            endpoints: ArcSwapOption::empty(),
            jwks,
            client_id,
            client_secret,
        }
    }

    /// The provider's endpoints, fetched on first use.
    pub async fn endpoints(&self, gw: &dyn Gateway) -> Result<Arc<Endpoints>, String> {
        if let Some(e) = self.endpoints.load_full() {
            return Ok(e);
        }
        let req = get(&self.discovery_path);
        let resp = gw
            .subrequest(&self.to, req, limits())
            .await
            .map_err(|e| format!("discovery: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("discovery answered {}", resp.status()));
        }
        let e: Endpoints =
            serde_json::from_slice(resp.body()).map_err(|e| format!("discovery document: {e}"))?;
        for url in [&e.token_endpoint, &e.jwks_uri] {
            path_on(&self.origin, url)?;
        }
        let e = Arc::new(e);
        self.endpoints.store(Some(e.clone()));
        Ok(e)
    }

    /// Client authentication as `client_secret_basic`.
    fn basic(&self) -> Option<HeaderValue> {
        use base64::Engine;
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let raw = format!("{}:{}", enc(&self.client_id), enc(&self.client_secret));
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        HeaderValue::from_str(&format!("Basic {b64}")).ok()
    }

    async fn post_form(
        &self,
        gw: &dyn Gateway,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<serde_json::Value, String> {
        let path = path_on(&self.origin, url)?;
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut req = Request::new(bytes::Bytes::from(body));
        *req.method_mut() = Method::POST;
        if let Ok(uri) = path.parse() {
            *req.uri_mut() = uri;
        }
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(b) = self.basic() {
            h.insert(header::AUTHORIZATION, b);
        }
        let resp = gw
            .subrequest(&self.to, req, limits())
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let v: serde_json::Value =
            serde_json::from_slice(resp.body()).map_err(|_| format!("answered {status}"))?;
        if !status.is_success() {
            let err = v["error"].as_str().unwrap_or("error");
            return Err(format!("answered {status}: {err}"));
        }
        Ok(v)
    }

    /// Trades an authorization code (and its PKCE verifier) for tokens.
    pub async fn exchange(
        &self,
        gw: &dyn Gateway,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<serde_json::Value, String> {
        let e = self.endpoints(gw).await?;
        self.post_form(
            gw,
            &e.token_endpoint,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("code_verifier", verifier),
                ("redirect_uri", redirect_uri),
            ],
        )
        .await
    }

    /// What the provider says of an access token (RFC 7662): its claims when active.
    pub async fn introspect(
        &self,
        gw: &dyn Gateway,
        token: &str,
    ) -> Result<Option<serde_json::Value>, String> {
        let e = self.endpoints(gw).await?;
        let url = e
            .introspection_endpoint
            .as_deref()
            .ok_or("the provider has no introspection endpoint")?;
        let v = self
            .post_form(
                gw,
                url,
                &[("token", token), ("token_type_hint", "access_token")],
            )
            .await?;
        Ok(v["active"].as_bool().unwrap_or(false).then_some(v))
    }

    /// The signing key for `kid`, fetching the JWKS when it is not known yet.
    pub async fn key(&self, gw: &dyn Gateway, kid: Option<&str>) -> Result<Arc<Key>, String> {
        if let Some(k) = self.jwks.keys.load().find(kid) {
            return Ok(k);
        }
        let e = self.endpoints(gw).await?;
        let path = path_on(&self.origin, &e.jwks_uri)?;
        let fetch = self
            .jwks
            .may_fetch()
            .then(|| gw.subrequest(&self.to, get(path), limits()));
        self.jwks.key_for(kid, fetch).await.map_err(|m| match m {
            Missing::Unknown => "the token's key id is unknown".to_string(),
            Missing::Unavailable(e) => e,
        })
    }
}

fn get(path: &str) -> Request<bytes::Bytes> {
    let mut req = Request::new(bytes::Bytes::new());
    if let Ok(uri) = path.parse() {
        *req.uri_mut() = uri;
    }
    req.headers_mut()
        .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    req
}
