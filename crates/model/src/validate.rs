//! Checks a parsed [`Config`] for problems serde cannot see: references between entities,
//! duplicate names, address and path syntax, mutually exclusive fields.

use crate::{Balance, Config, ConfigError, HashOn, Predicate, Route, Scheme};
use std::collections::HashMap;
use std::net::SocketAddr;

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

/// Entity names appear in URLs of the admin API and in metrics labels, so they stay plain.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

/// Every problem in `config`, in file order.
pub fn validate(config: &Config) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    let mut err = |path: String, msg: String| errs.push(ConfigError::new(path, msg));

    for (i, l) in config.listen.iter().enumerate() {
        if let Err(e) = l.address.parse::<SocketAddr>() {
            err(
                format!("listen[{i}].address"),
                format!("{e}: expected ip:port such as 0.0.0.0:8080"),
            );
        }
    }
    if let Some(a) = &config.admin {
        if let Err(e) = a.address.parse::<SocketAddr>() {
            err(
                "admin.address".into(),
                format!("{e}: expected ip:port such as 127.0.0.1:9180"),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in a.tokens.iter().enumerate() {
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                err(
                    format!("admin.tokens[{i}].sha256"),
                    "must be 64 hex digits (gatehouse admin-token makes one)".into(),
                );
            }
            if !seen.insert(t.name.as_str()) {
                err(
                    format!("admin.tokens[{i}].name"),
                    format!("duplicate token name \"{}\"", t.name),
                );
            }
        }
    }
    if config.node.workers == Some(0) {
        err("node.workers".into(), "must be at least 1".into());
    }
    for (i, p) in config.node.trusted_proxies.iter().enumerate() {
        if let Err(e) = crate::parse_cidr(p) {
            err(format!("node.trusted_proxies[{i}]"), e);
        }
    }
    for (field, d) in [
        ("client_timeout", config.node.client_timeout),
        ("tunnel_idle_timeout", config.node.tunnel_idle_timeout),
    ] {
        if d.is_zero() {
            err(format!("node.{field}"), "must be more than 0".into());
        }
    }
    let h1 = &config.node.http1;
    for (field, size) in [
        ("max_request_line", h1.max_request_line),
        ("max_header_size", h1.max_header_size),
        ("max_head_size", h1.max_head_size),
    ] {
        if !(1024..=1024 * 1024).contains(&size.as_u64()) {
            err(
                format!("node.http1.{field}"),
                "must be between 1KiB and 1MiB".into(),
            );
        }
    }
    if h1.max_head_size < h1.max_request_line || h1.max_head_size < h1.max_header_size {
        err(
            "node.http1.max_head_size".into(),
            "must be at least max_request_line and max_header_size".into(),
        );
    }
    if config.node.cluster_size == 0 {
        err("node.cluster_size".into(), "must be at least 1".into());
    }
    crate::tls::validate(config, &mut err);

    let upstreams = names(
        config.upstreams.iter().map(|u| u.name.as_str()),
        "upstreams",
        &mut err,
    );
    let services = names(
        config.services.iter().map(|s| s.name.as_str()),
        "services",
        &mut err,
    );
    let routes = names(
        config.routes.iter().map(|r| r.name.as_str()),
        "routes",
        &mut err,
    );
    let consumers = names(
        config.consumers.iter().map(|c| c.username.as_str()),
        "consumers",
        &mut err,
    );

    for (i, u) in config.upstreams.iter().enumerate() {
        let p = format!("upstreams[{i}]");
        let mut seen = HashMap::new();
        for (j, t) in u.targets.iter().enumerate() {
            if let Err(m) = check_host_port(&t.address) {
                err(format!("{p}.targets[{j}].address"), m);
            }
            if let Some(first) = seen.insert(t.address.as_str(), j) {
                err(
                    format!("{p}.targets[{j}].address"),
                    format!(
                        "duplicate target \"{}\" (also at targets[{first}])",
                        t.address
                    ),
                );
            }
            if t.weight > 65535 {
                err(
                    format!("{p}.targets[{j}].weight"),
                    "must be between 0 and 65535".into(),
                );
            }
        }
        match (u.balance, u.hash_on, &u.hash_key) {
            (
                Balance::ConsistentHash,
                Some(HashOn::Header | HashOn::Cookie | HashOn::Query),
                None,
            ) => err(
                format!("{p}.hash_key"),
                "required when hash_on is header, cookie or query".into(),
            ),
            (Balance::ConsistentHash, _, _) => {}
            (_, Some(_), _) => err(
                format!("{p}.hash_on"),
                "only used with balance: consistent_hash".into(),
            ),
            (_, None, Some(_)) => err(
                format!("{p}.hash_key"),
                "only used with balance: consistent_hash".into(),
            ),
            _ => {}
        }
        if u.subset_size == Some(0) {
            err(format!("{p}.subset_size"), "must be at least 1".into());
        }
        let k = &u.keepalive;
        if k.max_connections == 0 {
            err(
                format!("{p}.keepalive.max_connections"),
                "must be at least 1".into(),
            );
        }
        if k.max_idle > k.max_connections {
            err(
                format!("{p}.keepalive.max_idle"),
                format!("must not exceed max_connections ({})", k.max_connections),
            );
        }
        if let Some(h) = &u.health {
            crate::resilience::check_health(h, &mut |f, m| err(format!("{p}.health.{f}"), m));
            let grpc = h
                .active
                .as_ref()
                .is_some_and(|a| a.kind == crate::CheckType::Grpc);
            if grpc && !u.protocol.is_h2() {
                err(
                    format!("{p}.health.active.type"),
                    "a grpc check speaks HTTP/2: the upstream needs protocol: h2 or h2c".into(),
                );
            }
        }
        if let Some(b) = &u.circuit_breaker {
            crate::resilience::check_breaker(b, &mut |f, m| {
                err(format!("{p}.circuit_breaker.{f}"), m)
            });
        }
    }

    crate::release::validate(config, &upstreams, &mut err);
    crate::discovery::validate(config, &mut err);
    for (i, s) in config.services.iter().enumerate() {
        let p = format!("services[{i}]");
        match (&s.upstream, &s.url) {
            (None, None) if s.blue_green.is_some() => {}
            (Some(_), Some(_)) => err(
                format!("{p}.url"),
                "give either upstream or url, not both".into(),
            ),
            (None, None) => err(p.clone(), "needs an upstream or a url".into()),
            (Some(u), None) if !upstreams.contains_key(u.as_str()) => err(
                format!("{p}.upstream"),
                format!("no upstream named \"{u}\""),
            ),
            (None, Some(url)) => {
                if let Err(m) = parse_service_url(url) {
                    err(format!("{p}.url"), m);
                }
            }
            _ => {}
        }
        if s.timeouts.connect.is_zero() {
            err(format!("{p}.timeouts.connect"), "must be above 0".into());
        }
        if s.timeouts.read.is_zero() {
            err(format!("{p}.timeouts.read"), "must be above 0".into());
        }
        if s.timeouts.total.is_some_and(|t| t.is_zero()) {
            err(format!("{p}.timeouts.total"), "must be above 0".into());
        }
        if s.retries > 10 {
            err(format!("{p}.retries"), "must be at most 10".into());
        }
        if let Some(r) = &s.retry {
            crate::resilience::check_retry(r, &mut |f, m| err(format!("{p}.retry.{f}"), m));
        }
    }

    for (i, r) in config.routes.iter().enumerate() {
        check_route(i, r, &services, &mut err);
        let p = format!("routes[{i}]");
        if r.retries.is_some_and(|n| n > 10) {
            err(format!("{p}.retries"), "must be at most 10".into());
        }
        if let Some(rp) = &r.retry {
            crate::resilience::check_retry(rp, &mut |f, m| err(format!("{p}.retry.{f}"), m));
        }
        if let Some(b) = &r.circuit_breaker {
            crate::resilience::check_breaker(b, &mut |f, m| {
                err(format!("{p}.circuit_breaker.{f}"), m)
            });
        }
        if let Some(u) = r.fallback.as_ref().and_then(|f| f.upstream.as_ref()) {
            if !upstreams.contains_key(u.as_str()) {
                err(
                    format!("{p}.fallback.upstream"),
                    format!("no upstream named \"{u}\""),
                );
            }
        }
        if let Some(o) = &r.observability {
            crate::observability::check_route(o, &mut |k, m| {
                err(format!("{p}.observability.{k}"), m)
            });
        }
        if let Some(f) = &r.fallback {
            crate::resilience::check_fallback(f, &mut |k, m| {
                let at = if k.is_empty() {
                    format!("{p}.fallback")
                } else {
                    format!("{p}.fallback.{k}")
                };
                err(at, m)
            });
        }
    }

    for (i, pl) in config.plugins.iter().enumerate() {
        let p = format!("plugins[{i}]");
        if let Some(r) = &pl.route {
            if !routes.contains_key(r.as_str()) {
                err(format!("{p}.route"), format!("no route named \"{r}\""));
            }
        }
        if let Some(s) = &pl.service {
            if !services.contains_key(s.as_str()) {
                err(format!("{p}.service"), format!("no service named \"{s}\""));
            }
        }
        if let Some(c) = &pl.consumer {
            if !consumers.contains_key(c.as_str()) {
                err(
                    format!("{p}.consumer"),
                    format!("no consumer named \"{c}\""),
                );
            }
        }
    }
    crate::observability::check(&config.observability, &mut |k, m| {
        err(format!("observability.{k}"), m)
    });
    errs
}

fn names<'a>(
    items: impl Iterator<Item = &'a str>,
    section: &str,
    err: &mut impl FnMut(String, String),
) -> HashMap<&'a str, usize> {
    let mut seen = HashMap::new();
    let field = if section == "consumers" {
        "username"
    } else {
        "name"
    };
    for (i, name) in items.enumerate() {
        if !is_valid_name(name) {
            err(
                format!("{section}[{i}].{field}"),
                "must be 1-128 characters of letters, digits, '-', '_', '.', '~'".into(),
            );
        }
        if let Some(first) = seen.insert(name, i) {
            seen.insert(name, first);
            err(
                format!("{section}[{i}].{field}"),
                format!("duplicate name \"{name}\" (first at {section}[{first}])"),
            );
        }
    }
    seen
}

fn check_route(
    i: usize,
    r: &Route,
    services: &HashMap<&str, usize>,
    err: &mut impl FnMut(String, String),
) {
    let p = format!("routes[{i}]");
    if !services.contains_key(r.service.as_str()) {
        err(
            format!("{p}.service"),
            format!("no service named \"{}\"", r.service),
        );
    }
    for (j, h) in r.hosts.iter().enumerate() {
        if let Err(m) = check_host_pattern(h) {
            err(format!("{p}.hosts[{j}]"), m);
        }
    }
    for (j, path) in r.paths.iter().enumerate() {
        if let Err(m) = check_path_pattern(path) {
            err(format!("{p}.paths[{j}]"), m);
        }
    }
    for (j, m) in r.methods.iter().enumerate() {
        if !METHODS.contains(&m.as_str()) {
            err(
                format!("{p}.methods[{j}]"),
                format!(
                    "unknown method \"{m}\", expected one of {}",
                    METHODS.join(", ")
                ),
            );
        }
    }
    for (kind, preds) in [
        ("headers", &r.headers),
        ("query", &r.query),
        ("cookies", &r.cookies),
    ] {
        for (j, pr) in preds.iter().enumerate() {
            check_predicate(&format!("{p}.{kind}[{j}]"), kind, pr, err);
        }
    }
    if let Some(rw) = &r.rewrite {
        if !rw.starts_with('/') {
            err(format!("{p}.rewrite"), "must start with '/'".into());
        }
        for name in template_params(rw) {
            let known = name == "*"
                || r.paths.iter().all(|path| match path.strip_prefix('~') {
                    Some(re) => regex_group_names(re).any(|n| n == name),
                    None => template_params(path).any(|n| n == name),
                });
            if !known {
                err(
                    format!("{p}.rewrite"),
                    format!("parameter {{{name}}} is not captured by every path of this route"),
                );
            }
        }
        if r.strip_prefix {
            err(
                format!("{p}.strip_prefix"),
                "cannot be combined with rewrite (the rewrite gives the whole path)".into(),
            );
        }
    }
}

fn check_predicate(path: &str, kind: &str, pr: &Predicate, err: &mut impl FnMut(String, String)) {
    if pr.name.is_empty() {
        err(format!("{path}.name"), "must not be empty".into());
    } else if kind == "headers" && http_token(&pr.name).is_err() {
        err(
            format!("{path}.name"),
            format!("\"{}\" is not a valid header name", pr.name),
        );
    }
    let set = [
        pr.equals.is_some(),
        pr.regex.is_some(),
        pr.present.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        err(
            path.to_owned(),
            "needs exactly one of equals, regex, present".into(),
        );
    }
}

fn http_token(s: &str) -> Result<(), ()> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(())
    }
}

/// Names of `{param}` segments in a path template, `*` for a `{*}`.
pub(crate) fn template_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
}

/// Names of `(?P<name>...)` / `(?<name>...)` groups in a regex, found syntactically (the
/// regex itself is compiled, and its errors reported, when the router is built).
fn regex_group_names(re: &str) -> impl Iterator<Item = &str> {
    re.split("(?")
        .skip(1)
        .filter_map(|rest| rest.strip_prefix("P<").or_else(|| rest.strip_prefix('<')))
        .filter_map(|rest| rest.split_once('>').map(|(name, _)| name))
}

fn check_host_pattern(h: &str) -> Result<(), String> {
    let bare = h.strip_prefix("*.").unwrap_or(h);
    if bare.is_empty() {
        return Err("must not be empty".into());
    }
    if bare.contains('*') {
        return Err("a wildcard is only allowed as the first label, as in *.example.com".into());
    }
    if !bare
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(format!(
            "\"{h}\" is not a host name (no port, scheme or path)"
        ));
    }
    Ok(())
}

/// Checks the syntax of a route path pattern; regexes are compiled (and reported) when the
/// router is built.
pub fn check_path_pattern(path: &str) -> Result<(), String> {
    if let Some(re) = path.strip_prefix('~') {
        if re.is_empty() {
            return Err("empty regex".into());
        }
        return Ok(());
    }
    if !path.starts_with('/') {
        return Err("must start with '/' (or '~' for a regex)".into());
    }
    if let Some(star) = path.find('*') {
        if star != path.len() - 1 || !path.ends_with("/*") {
            return Err("'*' is only allowed as the last segment, as in /api/*".into());
        }
    }
    let mut params: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        if seg.contains('{') || seg.contains('}') {
            let name = seg
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .ok_or_else(|| {
                    format!("segment \"{seg}\": a parameter must be a whole segment, as in /users/{{id}}")
                })?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "parameter name \"{name}\" must be letters, digits or '_'"
                ));
            }
            if params.contains(&name) {
                return Err(format!("parameter {{{name}}} appears twice"));
            }
            params.push(name);
        }
    }
    if !params.is_empty() && path.ends_with("/*") {
        return Err("a path is either a {param} template or a /* prefix, not both".into());
    }
    Ok(())
}

/// Checks a target address is `host:port` (a port 1-65535, a non-empty host).
pub fn check_host_port(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("\"{addr}\" has no port; expected host:port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("\"{addr}\" has no host; expected host:port"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("\"{port}\" is not a port (1-65535)")),
    }
}

/// A service `url`, split into the target `host:port` and the path prefix (no trailing `/`).
pub fn parse_service_url(url: &str) -> Result<(String, String), String> {
    parse_service_url_with_scheme(url).map(|(_, hostport, path)| (hostport, path))
}

/// [`parse_service_url`], with the scheme it names (`http://` or `https://`).
pub fn parse_service_url_with_scheme(url: &str) -> Result<(Scheme, String, String), String> {
    let (scheme, rest, port) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest, 80)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest, 443)
    } else {
        return Err("must start with http:// or https://".to_string());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') || path.contains('?') || path.contains('#') {
        return Err("must be http(s)://host[:port][/path], without user, query or fragment".into());
    }
    let hostport = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'))
    {
        authority.to_owned()
    } else {
        format!("{authority}:{port}")
    };
    check_host_port(&hostport)?;
    Ok((scheme, hostport, path.trim_end_matches('/').to_owned()))
}
