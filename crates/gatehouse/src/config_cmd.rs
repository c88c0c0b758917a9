//! `gatehouse config ...`: commands that talk to a running gateway's admin API (`--admin URL`
//! or `GATEHOUSE_ADMIN`; a token with `--token` or `GATEHOUSE_TOKEN`).

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Where the admin API is, and the token to show it.
pub struct AdminApi {
    pub url: String,
    pub token: Option<String>,
}

/// The running config as YAML: what a file for `gatehouse run -c` holds.
pub async fn export(admin: &AdminApi) -> anyhow::Result<String> {
    Ok(yaml_serde::to_string(&fetch_config(admin).await?)?)
}

/// The config a running gateway serves.
pub async fn fetch_config(admin: &AdminApi) -> anyhow::Result<gatehouse_model::Config> {
    let body = get(admin, "/config").await?;
    serde_json::from_slice(&body).context("the admin API's /config is not a config")
}

/// The targets upstream `name` uses on the running gateway, with where each came from.
pub async fn live_targets(
    admin: &AdminApi,
    name: &str,
) -> anyhow::Result<Vec<gatehouse_runtime::explain::TargetLine>> {
    let body = get(admin, &format!("/upstreams/{name}/targets?limit=1000")).await?;
    let page: serde_json::Value =
        serde_json::from_slice(&body).context("the admin API's targets page")?;
    let items = page
        .get("items")
        .and_then(|i| i.as_array())
        .cloned()
        .unwrap_or_default();
    Ok(items
        .into_iter()
        .filter(|t| t.get("in_use").and_then(|u| u.as_bool()).unwrap_or(true))
        .map(|t| gatehouse_runtime::explain::TargetLine {
            address: t["address"].as_str().unwrap_or_default().to_owned(),
            weight: t["weight"].as_u64().unwrap_or(1) as u32,
            source: t["source"].as_str().unwrap_or("config").to_owned(),
        })
        .collect())
}

/// What applying `file` to the running gateway would change.
pub async fn diff_file(
    admin: &AdminApi,
    file: &std::path::Path,
) -> anyhow::Result<crate::diff::Diff> {
    let wanted = crate::load(file, None).map_err(|e| anyhow!("{}:\n{e}", file.display()))?;
    let running = fetch_config(admin).await?;
    Ok(crate::diff::diff(&running, &wanted))
}

/// Applies `file` to the running gateway (store mode): shows the diff, warns when it touches
/// more than `max_share` of what exists, asks unless `yes`, then commits it as one revision.
pub async fn apply(
    admin: &AdminApi,
    file: &std::path::Path,
    yes: bool,
    max_share: f64,
) -> anyhow::Result<String> {
    let wanted = crate::load(file, None).map_err(|e| anyhow!("{}:\n{e}", file.display()))?;
    let running = fetch_config(admin).await?;
    let d = crate::diff::diff(&running, &wanted);
    print!("{d}");
    if d.is_empty() {
        return Ok("nothing to apply".into());
    }
    if d.disruption() > max_share {
        eprintln!(
            "WARNING: this change deletes or modifies {} of {} existing entities ({:.0} %, over \
             the {:.0} % threshold). Check the diff above.",
            d.updated + d.deleted,
            d.existing,
            100.0 * d.disruption(),
            100.0 * max_share
        );
    }
    if !yes {
        use std::io::Write;
        eprint!("apply it? [y/N] ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            anyhow::bail!("not applied");
        }
    }
    let body = serde_json::to_vec(&wanted)?;
    let reply = call_with(admin, http::Method::PUT, "/config", body).await?;
    let v: serde_json::Value = serde_json::from_slice(&reply)?;
    Ok(format!("applied as revision {}", v["revision"]))
}

/// The store's revisions, newest first, one line each.
pub async fn history(admin: &AdminApi, limit: u32) -> anyhow::Result<String> {
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
pub async fn rollback(admin: &AdminApi, rev: i64) -> anyhow::Result<i64> {
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

/// Switches blue-green service `service` (to side `to`, else the other one); says which
/// upstream serves now.
pub async fn switch(admin: &AdminApi, service: &str, to: Option<&str>) -> anyhow::Result<String> {
    let body = match to {
        Some(side @ ("blue" | "green")) => serde_json::json!({ "to": side }).to_string(),
        Some(other) => bail!("--to {other:?}: expected blue or green"),
        None => String::new(),
    };
    let path = format!("/services/{service}/switch");
    let resp = call_with(admin, http::Method::POST, &path, body.into_bytes()).await?;
    let v: serde_json::Value = serde_json::from_slice(&resp)?;
    let bg = &v["blue_green"];
    let active = bg["active"].as_str().unwrap_or("blue");
    let upstream = bg[active].as_str().unwrap_or("?");
    Ok(format!(
        "service {service} now sends to {active} (upstream {upstream})"
    ))
}

async fn get(admin: &AdminApi, path: &str) -> anyhow::Result<Bytes> {
    call(admin, http::Method::GET, path).await
}

async fn call(admin: &AdminApi, method: http::Method, path: &str) -> anyhow::Result<Bytes> {
    call_with(admin, method, path, Vec::new()).await
}

/// Calls `method path` on the admin API; a non-2xx answer is an error carrying its message.
async fn call_with(
    admin: &AdminApi,
    method: http::Method,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<Bytes> {
    let (token, admin) = (admin.token.as_deref(), admin.url.as_str());
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
    if let Some(token) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req.header(http::header::CONTENT_TYPE, "application/json");
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body)))?)
        .await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        let fields = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["fields"].as_object().cloned())
            .map(|f| {
                f.iter()
                    .map(|(k, v)| format!("\n  {k}: {}", v.as_str().unwrap_or_default()))
                    .collect::<String>()
            })
            .unwrap_or_default();
        if status == http::StatusCode::UNAUTHORIZED {
            let given = if token.is_some() {
                "the token given was not accepted"
            } else {
                "no token was given"
            };
            bail!(
                "admin API {path}: {status}: {message} ({given}: pass --token TOKEN or set \
                 GATEHOUSE_TOKEN; `gatehouse admin-token` makes one)"
            );
        }
        bail!("admin API {path}: {status}: {message}{fields}");
    }
    Ok(body)
}
