//! Response diffing for `traffic-mirror`: the mirror's answer against the primary's, by
//! status, chosen headers and body; JSON bodies compared as JSON, with fields to ignore
//! (timestamps, ids), other bodies byte for byte. What differs is named by path.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};
use serde_json::Value;

/// What is compared, compiled.
pub struct DiffSpec {
    pub headers: Vec<HeaderName>,
    /// Field names ignored wherever they are (`updated_at`).
    names: Vec<Box<str>>,
    /// JSON pointers ignored (`/data/id`).
    pointers: Vec<Box<str>>,
}

/// One side of the comparison.
pub struct Answer<'a> {
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
    pub body: Option<&'a Bytes>,
}

/// At most this many differences are named per exchange.
const MAX_NAMED: usize = 10;

impl DiffSpec {
    pub fn new(headers: Vec<HeaderName>, ignore: &[String]) -> Self {
        let (pointers, names) = ignore.iter().partition::<Vec<_>, _>(|f| f.starts_with('/'));
        Self {
            headers,
            names: names.into_iter().map(|s| s.as_str().into()).collect(),
            pointers: pointers.into_iter().map(|s| s.as_str().into()).collect(),
        }
    }

    /// What differs between the primary's answer and the mirror's; empty when they match.
    pub fn compare(&self, primary: &Answer<'_>, mirror: &Answer<'_>) -> Vec<String> {
        let mut out = Vec::new();
        if primary.status != mirror.status {
            out.push(format!(
                "status: {} != {}",
                primary.status.as_u16(),
                mirror.status.as_u16()
            ));
        }
        for h in &self.headers {
            let (a, b) = (primary.headers.get(h), mirror.headers.get(h));
            if a != b {
                let show = |v: Option<&http::HeaderValue>| {
                    v.map_or("(none)".into(), |v| {
                        String::from_utf8_lossy(v.as_bytes()).into_owned()
                    })
                };
                out.push(format!("header {h}: {} != {}", show(a), show(b)));
            }
        }
        match (primary.body, mirror.body) {
            (Some(a), Some(b)) => self.bodies(a, b, &mut out),
            (None, _) => {}
            (Some(_), None) => out.push("body: the mirror's was not read".into()),
        }
        out
    }

    fn bodies(&self, a: &Bytes, b: &Bytes, out: &mut Vec<String>) {
        if a == b {
            return;
        }
        let parse = |x: &Bytes| serde_json::from_slice::<Value>(x).ok();
        match (parse(a), parse(b)) {
            (Some(mut x), Some(mut y)) => {
                for p in &self.pointers {
                    remove_pointer(&mut x, p);
                    remove_pointer(&mut y, p);
                }
                json_diff("", &x, &y, &self.names, out);
            }
            _ => out.push(format!(
                "body: {} bytes != {} bytes (not JSON)",
                a.len(),
                b.len()
            )),
        }
    }
}

fn remove_pointer(v: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match v.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.remove(&last);
        }
        Some(Value::Array(a)) => {
            if let Ok(i) = last.parse::<usize>() {
                if i < a.len() {
                    a[i] = Value::Null;
                }
            }
        }
        _ => {}
    }
}

/// Names the paths (`/items/0/price`) where `a` and `b` differ, skipping fields called one of
/// `ignore`.
fn json_diff(at: &str, a: &Value, b: &Value, ignore: &[Box<str>], out: &mut Vec<String>) {
    if out.len() >= MAX_NAMED {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys = x.keys().chain(y.keys().filter(|k| !x.contains_key(*k)));
            for k in keys {
                if ignore.iter().any(|i| **i == **k) {
                    continue;
                }
                let path = format!("{at}/{k}");
                match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) => json_diff(&path, v, w, ignore, out),
                    (Some(_), None) => out.push(format!("{path}: missing in the mirror's")),
                    (None, _) => out.push(format!("{path}: only in the mirror's")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                out.push(format!("{at}: {} items != {}", x.len(), y.len()));
                return;
            }
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                json_diff(&format!("{at}/{i}"), v, w, ignore, out);
            }
        }
        (x, y) if x != y => {
            let path = if at.is_empty() { "/" } else { at };
            out.push(format!("{path}: {} != {}", short(x), short(y)));
        }
        _ => {}
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn answer<'a>(status: u16, headers: &'a HeaderMap, body: &'a Bytes) -> Answer<'a> {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: Some(body),
        }
    }

    #[test]
    fn json_bodies_are_compared_as_json_without_ignored_fields() {
        let spec = DiffSpec::new(
            vec![HeaderName::from_static("content-type")],
            &["ts".into(), "/data/id".into()],
        );
        let h = HeaderMap::new();
        let a = Bytes::from(r#"{"data":{"id":1,"price":10,"tags":["a"]},"ts":1}"#);
        let b = Bytes::from(r#"{"ts":2,"data":{"tags":["a"],"price":10,"id":2}}"#);
        assert!(spec
            .compare(&answer(200, &h, &a), &answer(200, &h, &b))
            .is_empty());
        let c = Bytes::from(r#"{"ts":2,"data":{"tags":["b"],"price":11,"id":2},"x":1}"#);
        let d = spec.compare(&answer(200, &h, &a), &answer(201, &h, &c));
        assert_eq!(
            d,
            [
                "status: 200 != 201",
                "/data/price: 10 != 11",
                "/data/tags/0: \"a\" != \"b\"",
                "/x: only in the mirror's"
            ]
        );
        let mut ct = HeaderMap::new();
        ct.insert("content-type", "text/plain".parse().unwrap());
        let t = Bytes::from("plain");
        let d = spec.compare(&answer(200, &h, &t), &answer(200, &ct, &a));
        assert_eq!(d[0], "header content-type: (none) != text/plain");
        assert!(d[1].starts_with("body: 5 bytes"), "{d:?}");
    }
}
