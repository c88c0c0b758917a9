//! The steps of the relying party: sending a browser to log in (state, nonce, PKCE kept in a
//! sealed cookie), the callback that trades the code for tokens and checks the ID token,
//! logout, and bearer tokens. Each step that calls the provider is one `Flow::Wait`.

use super::{unix_now, Bearer, Inner, Session};
use base64::Engine;
use gatehouse_plugin_api::{json_response, Flow, Gateway, Later, RequestCtx};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use jsonwebtoken::Validation;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;

const CHALLENGE: &str = "Bearer realm=\"gatehouse\"";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A login in progress, in its own sealed cookie for ten minutes.
#[derive(Serialize, Deserialize)]
struct Login {
    state: String,
    nonce: String,
    verifier: String,
    return_to: String,
    exp: u64,
}

fn random() -> String {
    let mut b = [0u8; 32];
    let _ = getrandom::fill(&mut b);
    B64.encode(b)
}

fn unauthorized(why: &str) -> Response<bytes::Bytes> {
    let mut h = HeaderMap::new();
    h.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(CHALLENGE),
    );
    json_response(StatusCode::UNAUTHORIZED, why, h)
}

pub fn refuse(why: &str) -> Flow {
    Flow::Respond(unauthorized(why))
}

fn unavailable(why: String) -> Response<bytes::Bytes> {
    tracing::warn!(error = %why, "openid-connect: the provider could not be used");
    json_response(
        StatusCode::BAD_GATEWAY,
        "the identity provider is unavailable",
        HeaderMap::new(),
    )
}

fn redirect(to: &str, cookies: &[String]) -> Response<bytes::Bytes> {
    let mut resp = Response::new(bytes::Bytes::new());
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

impl Inner {
    fn cookie(&self, name: &str, value: &str, max_age: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}")
    }
}

/// Sends the browser to the provider's login, remembering where it was going.
pub fn login(me: Arc<Inner>, ctx: &mut RequestCtx<'_>) -> Flow {
    let return_to = ctx
        .parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let gw = ctx.gateway.detached();
    Flow::Wait(Box::pin(async move {
        let e = me.provider.endpoints(&*gw).await.map_err(unavailable)?;
        let login = Login {
            state: random(),
            nonce: random(),
            verifier: random(),
            return_to,
            exp: unix_now() + 600,
        };
        let challenge = B64.encode(super::super::sha256(login.verifier.as_bytes()));
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &me.client_id)
            .append_pair("redirect_uri", &me.redirect_uri)
            .append_pair("scope", &me.scopes)
            .append_pair("state", &login.state)
            .append_pair("nonce", &login.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let sealed = me
            .sealer
            .seal(&me.login_cookie, &login)
            .ok_or_else(|| unavailable("cannot seal the login cookie".into()))?;
        let sep = if e.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let to = format!("{}{sep}{query}", e.authorization_endpoint);
        Err(redirect(&to, &[me.cookie(&me.login_cookie, &sealed, 600)]))
    }))
}

/// The provider sent the browser back: check the state, trade the code, check the ID token,
/// start the session.
pub fn callback(me: Arc<Inner>, ctx: &mut RequestCtx<'_>) -> Flow {
    let q = ctx.parts.uri.query();
    let arg = |n: &str| gatehouse_plugin_api::query_arg(q, n).map(|v| v.into_owned());
    if let Some(err) = arg("error") {
        return refuse(&format!("the identity provider refused the login: {err}"));
    }
    let (Some(code), Some(state)) = (arg("code"), arg("state")) else {
        return refuse("the login callback has no code or state");
    };
    let login = gatehouse_plugin_api::cookie(&ctx.parts.headers, &me.login_cookie)
        .and_then(|c| me.sealer.open::<Login>(&me.login_cookie, c))
        .filter(|l| l.exp > unix_now());
    let Some(login) = login else {
        return refuse("no login in progress (or it expired): start again");
    };
    if !super::super::ct_eq(login.state.as_bytes(), state.as_bytes()) {
        return refuse("the login callback's state does not match");
    }
    let gw = ctx.gateway.detached();
    Flow::Wait(Box::pin(async move {
        let tokens = me
            .provider
            .exchange(&*gw, &code, &login.verifier, &me.redirect_uri)
            .await
            .map_err(|e| unauthorized(&format!("the code was not accepted: {e}")))?;
        let id_token = tokens["id_token"]
            .as_str()
            .ok_or_else(|| unauthorized("no ID token"))?;
        let claims = id_claims(&me, &*gw, id_token, &login.nonce).await?;
        let session = Session {
            exp: unix_now() + me.lifetime.as_secs(),
            claims: keep(&me, claims),
            access_token: tokens["access_token"].as_str().map(str::to_string),
            id_token: Some(id_token.to_string()),
        };
        let sealed = me
            .sealer
            .seal(&me.cookie, &session)
            .ok_or_else(|| unavailable("cannot seal the session".into()))?;
        Err(redirect(
            &login.return_to,
            &[
                me.cookie(&me.cookie, &sealed, me.lifetime.as_secs()),
                me.cookie(&me.login_cookie, "", 0),
            ],
        ))
    }))
}

/// Only the claims the plugin uses go into the cookie, to keep it small.
fn keep(me: &Inner, claims: Map<String, Value>) -> Map<String, Value> {
    claims
        .into_iter()
        .filter(|(k, _)| {
            k == "sub"
                || me.claims_to_headers.iter().any(|(c, _)| c == k)
                || me.consumer_claim.as_deref() == Some(k.as_str())
        })
        .collect()
}

/// The ID token's claims, once its signature, issuer, audience, expiry and nonce check out.
async fn id_claims(
    me: &Inner,
    gw: &dyn Gateway,
    token: &str,
    nonce: &str,
) -> Result<Map<String, Value>, Response<bytes::Bytes>> {
    let claims = verify_jwt(me, gw, token, std::slice::from_ref(&me.client_id)).await?;
    if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
        return Err(unauthorized(
            "the ID token's nonce does not match the login",
        ));
    }
    Ok(claims)
}

/// A JWT signed by the provider, for one of `audience`.
async fn verify_jwt(
    me: &Inner,
    gw: &dyn Gateway,
    token: &str,
    audience: &[String],
) -> Result<Map<String, Value>, Response<bytes::Bytes>> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|_| unauthorized("the token is malformed"))?;
    let e = me.provider.endpoints(gw).await.map_err(unavailable)?;
    let key = me
        .provider
        .key(gw, header.kid.as_deref())
        .await
        .map_err(|e| unauthorized(&e))?;
    if !key.allows(header.alg) {
        return Err(unauthorized("the token's algorithm does not match its key"));
    }
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[&e.issuer]);
    v.set_audience(audience);
    v.leeway = 5;
    jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v)
        .map(|d| d.claims)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            unauthorized(match e.kind() {
                K::ExpiredSignature => "the token has expired",
                K::InvalidAudience => "the token is not for this audience",
                K::InvalidIssuer => "the token is not from this provider",
                K::InvalidSignature => "invalid signature",
                _ => "the token is malformed",
            })
        })
}

/// Ends the session here, then at the provider when it offers that.
pub fn logout(me: Arc<Inner>, ctx: &mut RequestCtx<'_>) -> Flow {
    let id_token = gatehouse_plugin_api::cookie(&ctx.parts.headers, &me.cookie)
        .and_then(|c| me.sealer.open::<Session>(&me.cookie, c))
        .and_then(|s| s.id_token);
    let gw = ctx.gateway.detached();
    Flow::Wait(Box::pin(async move {
        let cleared = [me.cookie(&me.cookie, "", 0)];
        let after = me.post_logout.clone().unwrap_or_else(|| "/".into());
        let end = me
            .provider
            .endpoints(&*gw)
            .await
            .ok()
            .and_then(|e| e.end_session_endpoint.clone());
        let to = match end {
            Some(end) => {
                let mut q = form_urlencoded::Serializer::new(String::new());
                q.append_pair("client_id", &me.client_id);
                if let Some(t) = &id_token {
                    q.append_pair("id_token_hint", t);
                }
                if let Some(p) = &me.post_logout {
                    q.append_pair("post_logout_redirect_uri", p);
                }
                format!("{end}?{}", q.finish())
            }
            None => after,
        };
        Err(redirect(&to, &cleared))
    }))
}

/// The token of `Authorization: Bearer`, when there is one.
pub fn bearer_token(ctx: &RequestCtx<'_>) -> Option<String> {
    let v = ctx
        .parts
        .headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_string())
}

/// An API caller's bearer token, by the provider's keys or its introspection.
pub fn bearer(me: Arc<Inner>, ctx: &mut RequestCtx<'_>, token: String) -> Flow {
    if token.len() > 8192 {
        return refuse("the token is too large");
    }
    let gw = ctx.gateway.detached();
    let consumers = ctx.gateway.shared_consumers();
    Flow::Wait(Box::pin(async move {
        let claims = match me.bearer {
            Bearer::Introspection => me
                .provider
                .introspect(&*gw, &token)
                .await
                .map_err(unavailable)?
                .and_then(|v| v.as_object().cloned())
                .ok_or_else(|| unauthorized("the token is not active"))?,
            _ => verify_jwt(&me, &*gw, &token, &me.audience).await?,
        };
        let (upstream_headers, consumer) = me
            .identity(&consumers, &claims, Some(&token))
            .map_err(unauthorized)?;
        Ok(Later {
            consumer,
            upstream_headers,
            ..Later::default()
        })
    }))
}
