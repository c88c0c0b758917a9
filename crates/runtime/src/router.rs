//! The route table, compiled once per config: host → path → predicates, with lookups that do
//! not scan the route list (hash maps, a radix tree, segment-boundary prefix probes).
//!
//! Precedence, in order (documented in docs/configuration.md):
//! 1. host: exact host, then wildcard hosts from the longest suffix, then routes with no host;
//! 2. path kind within a host: exact > `{param}` template > prefix (longest first) > regex;
//! 3. among routes whose path matched equally: higher `priority`, then more predicates
//!    (methods/headers/query/cookies), then the order in the file.
//!
//! A route whose predicates reject the request is skipped and the next candidate is tried, down
//! through the path kinds and host tables.

use gatehouse_model::{ConfigError, Predicate, Route};
use http::{HeaderMap, Method};
use regex::{Regex, RegexSet};

/// The route tables' maps. foldhash instead of std's SipHash: the keys are the config's own
/// hosts and paths, so a client choosing what to look up cannot build collision chains, and
/// lookups are on every request.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// What a request is matched on; borrowed from the request, nothing copied.
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Host without port, any case.
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// The result of a lookup: which route, and what its path pattern captured.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteMatch<'r, 'p> {
    /// Index into the config's `routes`.
    pub route: usize,
    /// How many bytes at the start of the path the pattern matched literally (what
    /// `strip_prefix` removes): the whole path for exact, the static prefix for a template,
    /// the prefix for a prefix route, the matched part for a regex.
    pub matched_len: usize,
    /// `{param}` captures (template routes) or named groups (regex routes).
    pub params: Vec<(&'r str, &'p str)>,
}

impl RouteMatch<'_, '_> {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

#[derive(Clone)]
struct Candidate {
    route: u32,
    /// For template routes: the route's own param names in the order of the template (names
    /// differ between routes that share a template).
    names: Box<[Box<str>]>,
    /// For template routes: the length of the static part before the first parameter.
    static_len: usize,
}

#[derive(Default)]
struct HostTable {
    exact: HashMap<Box<str>, Vec<Candidate>>,
    templates: matchit::Router<Vec<Candidate>>,
    /// The canonical templates, while the table is built (emptied by `finish`).
    template_keys: HashMap<String, ()>,
    has_templates: bool,
    prefixes: HashMap<Box<str>, Vec<Candidate>>,
    regex_patterns: Vec<String>,
    regex_routes: Vec<(Regex, Candidate)>,
    regex_set: Option<RegexSet>,
}

/// One route's non-path conditions, compiled.
struct Predicates {
    /// Bit per standard method; 0 means any method.
    methods: u16,
    headers: Vec<Cond>,
    query: Vec<Cond>,
    cookies: Vec<Cond>,
    count: usize,
    priority: i32,
}

struct Cond {
    name: Box<str>,
    header: Option<http::HeaderName>,
    test: Test,
}

enum Test {
    Equals(Box<str>),
    Regex(Regex),
    Present(bool),
}

impl Test {
    fn check(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Test::Present(want), v) => v.is_some() == *want,
            (Test::Equals(e), Some(v)) => **e == *v,
            (Test::Regex(r), Some(v)) => r.is_match(v),
            (_, None) => false,
        }
    }
}

pub struct Router {
    exact_hosts: HashMap<Box<str>, HostTable>,
    /// Keyed by the suffix including its dot: `*.example.com` → `.example.com`.
    wildcard_hosts: HashMap<Box<str>, HostTable>,
    any_host: HostTable,
    predicates: Vec<Predicates>,
}

const METHOD_BITS: &[(&str, u16)] = &[
    ("GET", 1),
    ("HEAD", 2),
    ("POST", 4),
    ("PUT", 8),
    ("DELETE", 16),
    ("PATCH", 32),
    ("OPTIONS", 64),
    ("TRACE", 128),
    ("CONNECT", 256),
];

fn method_bit(m: &Method) -> u16 {
    match *m {
        Method::GET => 1,
        Method::HEAD => 2,
        Method::POST => 4,
        Method::PUT => 8,
        Method::DELETE => 16,
        Method::PATCH => 32,
        Method::OPTIONS => 64,
        Method::TRACE => 128,
        Method::CONNECT => 256,
        _ => 0,
    }
}

fn compile_cond(
    path: &str,
    p: &Predicate,
    is_header: bool,
    errs: &mut Vec<ConfigError>,
) -> Option<Cond> {
    let test = match (&p.equals, &p.regex, p.present) {
        (Some(e), _, _) => Test::Equals(e.as_str().into()),
        (_, Some(r), _) => match Regex::new(r) {
            Ok(re) => Test::Regex(re),
            Err(e) => {
                errs.push(ConfigError::new(
                    format!("{path}.regex"),
                    format!("regex does not compile: {}", one_line(&e.to_string())),
                ));
                return None;
            }
        },
        (_, _, Some(b)) => Test::Present(b),
        _ => return None,
    };
    let header = if is_header {
        http::HeaderName::from_bytes(p.name.to_ascii_lowercase().as_bytes()).ok()
    } else {
        None
    };
    Some(Cond {
        name: p.name.as_str().into(),
        header,
        test,
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `/users/{id}/posts/{post}` → (`/users/{p0}/posts/{p1}`, [id, post], len of `/users/`).
fn canonical_template(path: &str) -> (String, Vec<Box<str>>, usize) {
    let mut out = String::with_capacity(path.len());
    let mut names = Vec::new();
    let mut static_len = None;
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let consumed = path.len() - rest.len();
        static_len.get_or_insert(consumed + open);
        out.push_str(&rest[..open]);
        out.push_str(&format!("{{p{}}}", names.len()));
        names.push(rest[open + 1..open + close].into());
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    (out, names, static_len.unwrap_or(path.len()))
}

impl Router {
    /// Compiles the routes; errors name the route field (`routes[2].paths[0]: ...`).
    pub fn build(routes: &[Route]) -> Result<Router, Vec<ConfigError>> {
        let mut errs = Vec::new();
        let mut router = Router {
            exact_hosts: HashMap::default(),
            wildcard_hosts: HashMap::default(),
            any_host: HostTable::default(),
            predicates: Vec::with_capacity(routes.len()),
        };
        for (i, r) in routes.iter().enumerate() {
            let p = format!("routes[{i}]");
            let mut methods = 0;
            for m in &r.methods {
                if let Some((_, bit)) = METHOD_BITS.iter().find(|(n, _)| n == m) {
                    methods |= bit;
                }
            }
            let mut conds = |kind: &str, list: &[Predicate]| -> Vec<Cond> {
                list.iter()
                    .enumerate()
                    .filter_map(|(j, pr)| {
                        compile_cond(
                            &format!("{p}.{kind}[{j}]"),
                            pr,
                            kind == "headers",
                            &mut errs,
                        )
                    })
                    .collect()
            };
            let headers = conds("headers", &r.headers);
            let query = conds("query", &r.query);
            let cookies = conds("cookies", &r.cookies);
            router.predicates.push(Predicates {
                methods,
                count: usize::from(methods != 0) + headers.len() + query.len() + cookies.len(),
                headers,
                query,
                cookies,
                priority: r.priority,
            });

            let hosts: Vec<Option<&str>> = if r.hosts.is_empty() {
                vec![None]
            } else {
                r.hosts.iter().map(|h| Some(h.as_str())).collect()
            };
            let default_paths = ["/*".to_owned()];
            let paths = if r.paths.is_empty() {
                &default_paths[..]
            } else {
                &r.paths[..]
            };
            for host in &hosts {
                let table = match host {
                    None => &mut router.any_host,
                    Some(h) => match h.strip_prefix('*') {
                        Some(suffix) => router
                            .wildcard_hosts
                            .entry(suffix.to_ascii_lowercase().into())
                            .or_default(),
                        None => router
                            .exact_hosts
                            .entry(h.to_ascii_lowercase().into())
                            .or_default(),
                    },
                };
                for (j, path) in paths.iter().enumerate() {
                    if let Err(e) = table.add(i, path) {
                        errs.push(ConfigError::new(format!("{p}.paths[{j}]"), e));
                    }
                }
            }
        }
        let preds = &router.predicates;
        for table in std::iter::once(&mut router.any_host)
            .chain(router.exact_hosts.values_mut())
            .chain(router.wildcard_hosts.values_mut())
        {
            if let Err(e) = table.finish(preds) {
                errs.push(e);
            }
        }
        if errs.is_empty() {
            Ok(router)
        } else {
            Err(errs)
        }
    }

    /// Finds the route for a request, or `None` (the caller answers 404).
    pub fn find<'r, 'p>(&'r self, req: &RequestView<'p>) -> Option<RouteMatch<'r, 'p>> {
        let lower;
        let host = if req.host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = req.host.to_ascii_lowercase();
            lower.as_str()
        } else {
            req.host
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if let Some(t) = self.exact_hosts.get(host) {
            if let Some(m) = t.find(self, req) {
                return Some(m);
            }
        }
        if !self.wildcard_hosts.is_empty() {
            // Longest suffix first: probe `.b.example.com`, then `.example.com`, then `.com`.
            let mut at = 0;
            while let Some(dot) = host[at..].find('.') {
                let suffix = &host[at + dot..];
                if let Some(t) = self.wildcard_hosts.get(suffix) {
                    if let Some(m) = t.find(self, req) {
                        return Some(m);
                    }
                }
                at += dot + 1;
            }
        }
        self.any_host.find(self, req)
    }

    fn accepts(&self, route: u32, req: &RequestView<'_>) -> bool {
        let Some(p) = self.predicates.get(route as usize) else {
            return false;
        };
        if p.methods != 0 && p.methods & method_bit(req.method) == 0 {
            return false;
        }
        p.headers.iter().all(|c| {
            let v = c
                .header
                .as_ref()
                .and_then(|h| req.headers.get(h))
                .and_then(|v| v.to_str().ok());
            c.test.check(v)
        }) && p
            .query
            .iter()
            .all(|c| c.test.check(query_arg(req.query, &c.name).as_deref()))
            && p.cookies
                .iter()
                .all(|c| c.test.check(cookie(req.headers, &c.name)))
    }
}

impl HostTable {
    fn add(&mut self, route: usize, path: &str) -> Result<(), String> {
        let route = u32::try_from(route).map_err(|_| "too many routes".to_string())?;
        let plain = Candidate {
            route,
            names: Box::new([]),
            static_len: 0,
        };
        if let Some(re) = path.strip_prefix('~') {
            let compiled = Regex::new(re)
                .map_err(|e| format!("regex does not compile: {}", one_line(&e.to_string())))?;
            self.regex_patterns.push(re.to_owned());
            self.regex_routes.push((compiled, plain));
        } else if let Some(prefix) = path.strip_suffix("/*") {
            self.prefixes.entry(prefix.into()).or_default().push(plain);
        } else if path.contains('{') {
            let (key, names, static_len) = canonical_template(path);
            let cand = Candidate {
                route,
                names: names.into_boxed_slice(),
                static_len,
            };
            if self.template_keys.contains_key(&key) {
                if let Ok(m) = self.templates.at_mut(&template_probe(&key)) {
                    m.value.push(cand);
                }
            } else {
                self.templates
                    .insert(key.clone(), vec![cand])
                    .map_err(|e| format!("conflicts with another route's path: {e}"))?;
                self.template_keys.insert(key, ());
            }
        } else {
            self.exact.entry(path.into()).or_default().push(plain);
        }
        Ok(())
    }

    fn finish(&mut self, preds: &[Predicates]) -> Result<(), ConfigError> {
        let order = |c: &Candidate| {
            let p = preds.get(c.route as usize);
            (
                std::cmp::Reverse(p.map_or(0, |p| p.priority)),
                std::cmp::Reverse(p.map_or(0, |p| p.count)),
                c.route,
            )
        };
        for list in self.exact.values_mut().chain(self.prefixes.values_mut()) {
            list.sort_by_key(order);
        }
        for key in self.template_keys.keys() {
            if let Ok(m) = self.templates.at_mut(&template_probe(key)) {
                m.value.sort_by_key(order);
                m.value.shrink_to_fit();
            }
        }
        // Built once, then only read: the spare room vectors and maps grew with is given
        // back (at 100 000 routes it was most of the table's memory).
        self.has_templates = !self.template_keys.is_empty();
        self.template_keys = HashMap::default();
        self.templates.shrink_to_fit();
        for list in self.exact.values_mut().chain(self.prefixes.values_mut()) {
            list.shrink_to_fit();
        }
        self.exact.shrink_to_fit();
        self.prefixes.shrink_to_fit();
        if !self.regex_routes.is_empty() {
            let mut idx: Vec<usize> = (0..self.regex_routes.len()).collect();
            idx.sort_by_key(|&i| order(&self.regex_routes[i].1));
            let mut routes = std::mem::take(&mut self.regex_routes);
            let mut patterns = std::mem::take(&mut self.regex_patterns);
            let mut slots: Vec<Option<(Regex, Candidate)>> = routes.drain(..).map(Some).collect();
            let mut pslots: Vec<Option<String>> = patterns.drain(..).map(Some).collect();
            for i in idx {
                if let (Some(r), Some(p)) = (slots[i].take(), pslots[i].take()) {
                    self.regex_routes.push(r);
                    self.regex_patterns.push(p);
                }
            }
            let set = RegexSet::new(&self.regex_patterns).map_err(|e| {
                ConfigError::new("routes", format!("regex set does not compile: {e}"))
            })?;
            self.regex_set = Some(set);
        }
        Ok(())
    }

    fn find<'r, 'p>(
        &'r self,
        router: &'r Router,
        req: &RequestView<'p>,
    ) -> Option<RouteMatch<'r, 'p>> {
        let path = req.path;
        if let Some(list) = self.exact.get(path) {
            if let Some(c) = list.iter().find(|c| router.accepts(c.route, req)) {
                return Some(RouteMatch {
                    route: c.route as usize,
                    matched_len: path.len(),
                    params: Vec::new(),
                });
            }
        }
        if self.has_templates {
            if let Ok(m) = self.templates.at(path) {
                if let Some(c) = m.value.iter().find(|c| router.accepts(c.route, req)) {
                    let params = c
                        .names
                        .iter()
                        .map(|n| &**n)
                        .zip(m.params.iter().map(|(_, v)| v))
                        .collect();
                    return Some(RouteMatch {
                        route: c.route as usize,
                        matched_len: c.static_len.min(path.len()),
                        params,
                    });
                }
            }
        }
        if !self.prefixes.is_empty() {
            // Probe the path, then each shorter prefix ending at a segment boundary:
            // `/a/b/c` → `/a/b/c`, `/a/b`, `/a`, `` (the last is `/*`).
            let trimmed = path.strip_suffix('/').unwrap_or(path);
            let mut end = trimmed.len();
            loop {
                let key = &trimmed[..end];
                if let Some(list) = self.prefixes.get(key) {
                    if let Some(c) = list.iter().find(|c| router.accepts(c.route, req)) {
                        return Some(RouteMatch {
                            route: c.route as usize,
                            matched_len: end,
                            params: Vec::new(),
                        });
                    }
                }
                if end == 0 {
                    break;
                }
                end = key.rfind('/').unwrap_or(0);
            }
        }
        if let Some(set) = &self.regex_set {
            for i in set.matches(path).iter() {
                let Some((re, c)) = self.regex_routes.get(i) else {
                    continue;
                };
                if !router.accepts(c.route, req) {
                    continue;
                }
                let caps = re.captures(path)?;
                let matched_len = caps
                    .get(0)
                    .map_or(0, |m| if m.start() == 0 { m.end() } else { 0 });
                let params = re
                    .capture_names()
                    .flatten()
                    .filter_map(|n| caps.name(n).map(|v| (n, v.as_str())))
                    .collect();
                return Some(RouteMatch {
                    route: c.route as usize,
                    matched_len,
                    params,
                });
            }
        }
        None
    }
}

/// A concrete path that matches a canonical template exactly, to reach its leaf in matchit.
fn template_probe(key: &str) -> String {
    let (mut out, mut rest) = (String::with_capacity(key.len()), key);
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        out.push('x');
        match rest[open..].find('}') {
            Some(close) => rest = &rest[open + close + 1..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

pub use gatehouse_plugin_api::{cookie, query_arg};

#[cfg(test)]
mod tests;
