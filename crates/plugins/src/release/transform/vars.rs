//! Values with variables for the transformers: `{client_ip}`, `{consumer}`, `{request_id}`,
//! `{route}`, `{service}`, `{capture.NAME}` (route captures), `{header.NAME}`,
//! `{query.NAME}`; parsed once when the plugin is built.

use gatehouse_plugin_api::{FieldError, RequestCtx};

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(Box<str>),
    ClientIp,
    Consumer,
    RequestId,
    Route,
    Service,
    Capture(Box<str>),
    Header(http::HeaderName),
    Query(Box<str>),
}

/// A value template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Piece>);

impl Template {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        let mut out = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            let Some(len) = rest[open..].find('}') else {
                break;
            };
            if open > 0 {
                out.push(Piece::Text(rest[..open].into()));
            }
            let name = &rest[open + 1..open + len];
            let bad = || FieldError::new(field, format!("unknown variable {{{name}}}"));
            out.push(match name {
                "client_ip" => Piece::ClientIp,
                "consumer" => Piece::Consumer,
                "request_id" => Piece::RequestId,
                "route" => Piece::Route,
                "service" => Piece::Service,
                n => match n.split_once('.') {
                    Some(("capture", c)) if !c.is_empty() => Piece::Capture(c.into()),
                    Some(("query", q)) if !q.is_empty() => Piece::Query(q.into()),
                    Some(("header", h)) => Piece::Header(
                        gatehouse_plugin_api::header_name(h)
                            .map_err(|m| FieldError::new(field, m))?,
                    ),
                    _ => return Err(bad()),
                },
            });
            rest = &rest[open + len + 1..];
        }
        if !rest.is_empty() {
            out.push(Piece::Text(rest.into()));
        }
        Ok(Template(out))
    }

    /// What rendering reads of the request.
    pub fn uses(&self) -> Uses {
        let any = |f: fn(&Piece) -> bool| self.0.iter().any(f);
        Uses {
            facts: any(|p| matches!(p, Piece::RequestId | Piece::Capture(_))),
            headers: any(|p| matches!(p, Piece::Header(_))),
            query: any(|p| matches!(p, Piece::Query(_))),
        }
    }

    pub fn render(&self, v: &Vars) -> String {
        let mut s = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => s.push_str(t),
                Piece::ClientIp => s.push_str(&v.client_ip),
                Piece::Consumer => s.push_str(v.consumer.as_deref().unwrap_or("")),
                Piece::RequestId => s.push_str(&v.request_id),
                Piece::Route => s.push_str(&v.route),
                Piece::Service => s.push_str(&v.service),
                Piece::Capture(c) => s.push_str(v.capture(c)),
                Piece::Header(h) => s.push_str(v.header(h)),
                Piece::Query(q) => s.push_str(v.query(q)),
            }
        }
        s
    }
}

/// What an instance's templates read of the request, so a request's variables copy only that
/// (no header map cloned per request for templates that never name a header).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Uses {
    pub facts: bool,
    pub headers: bool,
    pub query: bool,
}

impl Uses {
    pub fn or(self, o: Uses) -> Uses {
        Uses {
            facts: self.facts || o.facts,
            headers: self.headers || o.headers,
            query: self.query || o.query,
        }
    }
}

/// The request's variables, taken when a transformer runs (owned, so the response side can
/// keep them until the response).
#[derive(Debug, Clone, Default)]
pub struct Vars {
    client_ip: String,
    consumer: Option<String>,
    request_id: String,
    route: String,
    service: String,
    captures: Vec<(Box<str>, Box<str>)>,
    headers: http::HeaderMap,
    query: Vec<(String, String)>,
}

impl Vars {
    pub fn of(ctx: &RequestCtx<'_>, uses: Uses) -> Self {
        let facts = ctx.facts();
        Vars {
            client_ip: ctx.client_ip.to_string(),
            consumer: ctx.consumer.as_ref().map(|c| c.username.to_string()),
            request_id: facts
                .and_then(|f| f.request_id.as_ref())
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            route: ctx.route.to_owned(),
            service: ctx.service.to_owned(),
            captures: facts.map(|f| f.captures.clone()).unwrap_or_default(),
            headers: match uses.headers {
                true => ctx.parts.headers.clone(),
                false => http::HeaderMap::new(),
            },
            query: ctx
                .parts
                .uri
                .query()
                .filter(|_| uses.query)
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        }
    }

    fn capture(&self, name: &str) -> &str {
        self.captures
            .iter()
            .find(|(n, _)| &**n == name)
            .map_or("", |(_, v)| v)
    }

    fn header(&self, h: &http::HeaderName) -> &str {
        self.headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn query(&self, q: &str) -> &str {
        self.query
            .iter()
            .find(|(k, _)| k == q)
            .map_or("", |(_, v)| v)
    }
}
