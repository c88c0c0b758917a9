//! `google.api.http` path templates (`/v1/{name=shelves/*/books/*}`, `/v1/{book.id}`,
//! `/v1/files/**:download`), compiled once and matched segment by segment. Written here: the
//! grammar is small, and no maintained crate parses it apart from a whole transcoder.

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Literal(String),
    /// `*`: one segment.
    One,
    /// `**`: the rest (zero or more segments); only last.
    Rest,
}

/// A variable: the field it fills and the segments it spans.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Var {
    field: String,
    start: usize,
    /// Segments in the variable (`{x}` is one `*`).
    len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segs: Vec<Seg>,
    vars: Vec<Var>,
    verb: Option<String>,
}

impl Template {
    pub fn parse(t: &str) -> Result<Template, String> {
        let path = t
            .strip_prefix('/')
            .ok_or_else(|| format!("\"{t}\" must start with /"))?;
        // A verb follows the last `:` outside braces.
        let (path, verb) = match path.rfind(':') {
            Some(i) if !path[i..].contains('}') => (&path[..i], Some(path[i + 1..].to_owned())),
            _ => (path, None),
        };
        let mut segs = Vec::new();
        let mut vars = Vec::new();
        let mut rest = path;
        while !rest.is_empty() {
            if let Some(inner) = rest.strip_prefix('{') {
                let close = inner
                    .find('}')
                    .ok_or_else(|| format!("\"{t}\": unclosed {{"))?;
                let (field, pattern) = match inner[..close].split_once('=') {
                    Some((f, p)) => (f, p),
                    None => (&inner[..close], "*"),
                };
                if field.is_empty() {
                    return Err(format!("\"{t}\": a variable needs a field name"));
                }
                let start = segs.len();
                for p in pattern.split('/') {
                    segs.push(segment(p, t)?);
                }
                vars.push(Var {
                    field: field.to_owned(),
                    start,
                    len: segs.len() - start,
                });
                rest = &inner[close + 1..];
                rest = rest.strip_prefix('/').unwrap_or(rest);
                continue;
            }
            let (seg, tail) = rest.split_once('/').unwrap_or((rest, ""));
            segs.push(segment(seg, t)?);
            rest = tail;
        }
        if segs.iter().rev().skip(1).any(|s| *s == Seg::Rest) {
            return Err(format!("\"{t}\": ** may only come last"));
        }
        Ok(Template { segs, vars, verb })
    }

    /// The variables' values when `path` matches (percent-decoded, `**` spans joined by
    /// `/`); `None` when it does not.
    pub fn matches(&self, path: &str) -> Option<Vec<(&str, String)>> {
        let path = path.strip_prefix('/')?;
        let (path, verb) = match (&self.verb, path.rfind(':')) {
            (Some(_), Some(i)) => (&path[..i], Some(&path[i + 1..])),
            _ => (path, None),
        };
        if verb != self.verb.as_deref() {
            return None;
        }
        let parts: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        let mut spans = Vec::with_capacity(self.segs.len());
        let mut i = 0;
        for s in &self.segs {
            match s {
                Seg::Literal(l) => {
                    if parts.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                    spans.push((i, i + 1));
                    i += 1;
                }
                Seg::One => {
                    if parts.get(i).is_none_or(|p| p.is_empty()) {
                        return None;
                    }
                    spans.push((i, i + 1));
                    i += 1;
                }
                Seg::Rest => {
                    spans.push((i, parts.len()));
                    i = parts.len();
                }
            }
        }
        if i != parts.len() {
            return None;
        }
        let mut out = Vec::with_capacity(self.vars.len());
        for v in &self.vars {
            let from = spans.get(v.start)?.0;
            let to = spans.get(v.start + v.len - 1)?.1;
            let raw = parts.get(from..to)?.join("/");
            let value = percent_decode(&raw)?;
            out.push((v.field.as_str(), value));
        }
        Some(out)
    }

    /// The fields the path fills.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.vars.iter().map(|v| v.field.as_str())
    }
}

fn segment(s: &str, t: &str) -> Result<Seg, String> {
    Ok(match s {
        "*" => Seg::One,
        "**" => Seg::Rest,
        "" => return Err(format!("\"{t}\": empty path segment")),
        l if l.contains(['{', '}', '*']) => {
            return Err(format!("\"{t}\": bad segment \"{l}\""));
        }
        l => Seg::Literal(l.to_owned()),
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_and_capture() {
        let t = Template::parse("/v1/shelves/{shelf}/books/{book.id}").unwrap();
        assert_eq!(
            t.matches("/v1/shelves/main/books/42").unwrap(),
            vec![("shelf", "main".to_string()), ("book.id", "42".to_string())]
        );
        assert!(t.matches("/v1/shelves/main/books").is_none());
        assert!(t.matches("/v1/shelves/main/books/42/x").is_none());
        let t = Template::parse("/v1/{name=shelves/*/books/*}").unwrap();
        assert_eq!(
            t.matches("/v1/shelves/a/books/b").unwrap(),
            vec![("name", "shelves/a/books/b".to_string())]
        );
        let t = Template::parse("/v1/files/{path=**}:download").unwrap();
        assert_eq!(
            t.matches("/v1/files/a/b%20c:download").unwrap(),
            vec![("path", "a/b c".to_string())]
        );
        assert!(t.matches("/v1/files/a/b").is_none());
        assert!(Template::parse("v1").is_err());
        assert!(Template::parse("/v1/{x").is_err());
        assert!(Template::parse("/v1/**/x").is_err());
    }
}
