//! `gatehouse explain METHOD URL`: compiles a config as the gateway would (without dialling
//! anything) and shows what it would do with one request.

use anyhow::{anyhow, Context};
use gatehouse_runtime::{NodeContext, Snapshot};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// The explanation as text or JSON.
pub fn render(e: &gatehouse_runtime::explain::Explanation, json: bool) -> anyhow::Result<String> {
    Ok(if json {
        serde_json::to_string_pretty(e)? + "\n"
    } else {
        e.to_string()
    })
}

/// What the gateway would do with the request.
pub fn explain(
    config: gatehouse_model::Config,
    method: &str,
    url: &str,
    headers: &[String],
) -> anyhow::Result<gatehouse_runtime::explain::Explanation> {
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| anyhow!("{method:?} is not an HTTP method"))?;
    let mut map = HeaderMap::new();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("-H {h:?}: expected `Name: value`"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("-H {h:?}: bad header name"))?;
        let value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("-H {h:?}: bad header value"))?;
        map.append(name, value);
    }
    let (host, path) = if url.starts_with('/') {
        let host = map
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (host, url.to_owned())
    } else {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL"))?;
        let host = uri.host().unwrap_or("").to_owned();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        (host, path)
    };
    let host = host
        .rsplit_once(':')
        .map_or(host.as_str(), |(h, _)| h)
        .to_ascii_lowercase();
    // One worker, node 0: explain shows the routing, not this host's subsetting.
    let node = NodeContext {
        workers: 1,
        node_index: 0,
        registry: gatehouse_plugins::registry(),
    };
    let snap = Snapshot::plan(config, None, node).map_err(|errs| {
        let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        anyhow!("the config does not compile:\n{}", lines.join("\n"))
    })?;
    Ok(gatehouse_runtime::explain::explain(
        snap.snapshot(),
        &method,
        &host,
        &path,
        &map,
    ))
}
