//! `gatehouse config ...`: commands that talk to a running gateway's admin API (`--admin URL`
//! or `GATEHOUSE_ADMIN`, token from `GATEHOUSE_TOKEN`).

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// The running config as YAML: what a file for `gatehouse run -c` holds.
pub async fn export(admin: &str) -> anyhow::Result<String> {
    Ok(yaml_serde::to_string(&fetch_config(admin).await?)?)
}

/// The config a running gateway serves.
pub async fn fetch_config(admin: &str) -> anyhow::Result<gatehouse_model::Config> {
    let body = get(admin, "/config").await?;
    serde_json::from_slice(&body).context("the admin API's /config is not a config")
}

/// The store's revisions, newest first, one line each.
pub async fn history(admin: &str, limit: u32) -> anyhow::Result<String> {
    let body = call(
        admin,
        http::Method::GET,
        &format!("/revisions?limit={limit}"),
    )
    .await?;
    let list: Vec<gatehouse_store::Revision> =
        serde_json::from_slice(&body).context("the admin API's /revisions is not a list")?;
    let mut out = format!(
        "{:>6}  {:<20}  {:<12}  {:<9}  {}\n",
        "REV", "WHEN (UTC)", "AUTHOR", "ACTION", "ENTITY"
    );
    for r in list {
        let when =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.created_at.max(0) as u64);
        out += &format!(
            "{:>6}  {:<20}  {:<12}  {:<9}  {}\n",
            r.id,
            humantime::format_rfc3339_seconds(when).to_string(),
            r.author,
            r.action,
            r.entity
        );
    }
    Ok(out)
}

/// Makes revision `rev` live again, as a new revision; returns that revision.
pub async fn rollback(admin: &str, rev: i64) -> anyhow::Result<i64> {
    let body = call(
        admin,
        http::Method::POST,
        &format!("/revisions/{rev}/rollback"),
    )
    .await?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    v["revision"]
        .as_i64()
        .ok_or_else(|| anyhow!("the admin API did not say which revision it made"))
}

async fn get(admin: &str, path: &str) -> anyhow::Result<Bytes> {
    call(admin, http::Method::GET, path).await
}

/// Calls `method path` on the admin API; a non-2xx answer is an error carrying its message.
async fn call(admin: &str, method: http::Method, path: &str) -> anyhow::Result<Bytes> {
    let uri: http::Uri = admin
        .parse()
        .with_context(|| format!("--admin {admin:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--admin {admin:?}: only http:// admin URLs are supported");
    }
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("--admin {admin:?} has no host"))?
        .clone();
    let addr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .with_context(|| format!("cannot reach the admin API at {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", uri.path().trim_end_matches('/')))
        .header(http::header::HOST, authority.as_str());
    if let Ok(token) = std::env::var("GATEHOUSE_TOKEN") {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new())?)
        .await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("admin API {path}: {status}: {message}");
    }
    Ok(body)
}
