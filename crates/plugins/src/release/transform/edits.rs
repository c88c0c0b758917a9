//! The edits the transformers make, in Kong's order: remove, rename, set (replace or add),
//! add (only when absent), append. On headers, query arguments and JSON body fields, with
//! values from [`Template`]s.

use super::vars::{Template, Uses, Vars};
use gatehouse_plugin_api::{header_name, FieldError};
use http::{HeaderMap, HeaderName, HeaderValue};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// What one section (`headers`, `query` or `json`) does.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// Names to take out.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Old name → new name (the value moves).
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Name → value, replacing any value.
    #[serde(default)]
    pub set: BTreeMap<String, Value>,
    /// Name → value, only when the name is absent.
    #[serde(default)]
    pub add: BTreeMap<String, Value>,
    /// Name → value, added beside existing values (headers and query only).
    #[serde(default)]
    pub append: BTreeMap<String, Value>,
}

/// A value: a template for text, any other JSON value as it is (JSON bodies only).
#[derive(Debug, Clone)]
enum Val {
    Text(Template),
    Json(Value),
}

impl Val {
    fn render(&self, v: &Vars) -> Value {
        match self {
            Val::Text(t) => Value::String(t.render(v)),
            Val::Json(j) => j.clone(),
        }
    }

    fn text(&self, v: &Vars) -> String {
        match self {
            Val::Text(t) => t.render(v),
            Val::Json(j) => j.to_string(),
        }
    }
}

/// A compiled section over names of type `N`.
pub struct Edits<N> {
    remove: Vec<N>,
    rename: Vec<(N, N)>,
    set: Vec<(N, Val)>,
    add: Vec<(N, Val)>,
    append: Vec<(N, Val)>,
    /// What the values' templates read of the request.
    pub uses: Uses,
}

impl<N> Edits<N> {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
            && self.append.is_empty()
    }
}

/// Compiles `s` (config field `field`), names made by `name`; `json` allows non-text values
/// and no `append`.
pub fn compile<N>(
    field: &str,
    s: &Section,
    json: bool,
    name: impl Fn(&str) -> Result<N, String>,
    errs: &mut Vec<FieldError>,
) -> Edits<N> {
    let mut named =
        |at: String, n: &str| name(n).map_err(|m| errs.push(FieldError::new(at, m))).ok();
    let remove = s
        .remove
        .iter()
        .enumerate()
        .filter_map(|(i, n)| named(format!("{field}.remove[{i}]"), n))
        .collect();
    let rename = s
        .rename
        .iter()
        .filter_map(|(a, b)| {
            let at = format!("{field}.rename.{a}");
            Some((named(at.clone(), a)?, named(at, b)?))
        })
        .collect();
    let mut uses = Uses::default();
    let mut vals = |kind: &str, m: &BTreeMap<String, Value>, errs: &mut Vec<FieldError>| {
        let mut out = Vec::new();
        for (k, v) in m {
            let at = format!("{field}.{kind}.{k}");
            let text = match v {
                Value::String(t) => t.clone(),
                other if json => {
                    out_push(&mut out, &name, k, Val::Json(other.clone()), &at, errs);
                    continue;
                }
                other => other.to_string(),
            };
            match Template::parse(&at, &text) {
                Ok(t) => {
                    uses = uses.or(t.uses());
                    out_push(&mut out, &name, k, Val::Text(t), &at, errs);
                }
                Err(e) => errs.push(e),
            }
        }
        out
    };
    let set = vals("set", &s.set, errs);
    let add = vals("add", &s.add, errs);
    let append = vals("append", &s.append, errs);
    if json && !s.append.is_empty() {
        errs.push(FieldError::new(
            format!("{field}.append"),
            "JSON fields cannot be appended to; use set or add",
        ));
    }
    Edits {
        remove,
        rename,
        set,
        add,
        append,
        uses,
    }
}

fn out_push<N>(
    out: &mut Vec<(N, Val)>,
    name: &impl Fn(&str) -> Result<N, String>,
    k: &str,
    val: Val,
    at: &str,
    errs: &mut Vec<FieldError>,
) {
    match name(k) {
        Ok(n) => out.push((n, val)),
        Err(m) => errs.push(FieldError::new(at, m)),
    }
}

/// Header names, lower-cased and checked.
pub fn header(n: &str) -> Result<HeaderName, String> {
    header_name(n)
}

/// Query argument and JSON field names are taken as they are.
pub fn plain(n: &str) -> Result<Box<str>, String> {
    if n.is_empty() {
        return Err("a name cannot be empty".into());
    }
    Ok(n.into())
}

impl Edits<HeaderName> {
    pub fn apply(&self, h: &mut HeaderMap, v: &Vars) {
        for n in &self.remove {
            h.remove(n);
        }
        for (a, b) in &self.rename {
            let values: Vec<HeaderValue> = h.get_all(a).iter().cloned().collect();
            if !values.is_empty() {
                h.remove(a);
                h.remove(b);
                for value in values {
                    h.append(b.clone(), value);
                }
            }
        }
        let value = |val: &Val| HeaderValue::from_str(&val.text(v)).ok();
        for (n, val) in &self.set {
            if let Some(x) = value(val) {
                h.insert(n.clone(), x);
            }
        }
        for (n, val) in &self.add {
            if !h.contains_key(n) {
                if let Some(x) = value(val) {
                    h.insert(n.clone(), x);
                }
            }
        }
        for (n, val) in &self.append {
            if let Some(x) = value(val) {
                h.append(n.clone(), x);
            }
        }
    }
}

impl Edits<Box<str>> {
    /// Edits query arguments (decoded pairs, in order).
    pub fn apply_query(&self, q: &mut Vec<(String, String)>, v: &Vars) {
        q.retain(|(k, _)| !self.remove.iter().any(|r| **r == **k));
        for (a, b) in &self.rename {
            if q.iter().any(|(k, _)| **k == **a) {
                q.retain(|(k, _)| **k != **b);
                for (k, _) in q.iter_mut().filter(|(k, _)| **k == **a) {
                    *k = b.to_string();
                }
            }
        }
        for (n, val) in &self.set {
            q.retain(|(k, _)| **k != **n);
            q.push((n.to_string(), val.text(v)));
        }
        for (n, val) in &self.add {
            if !q.iter().any(|(k, _)| **k == **n) {
                q.push((n.to_string(), val.text(v)));
            }
        }
        for (n, val) in &self.append {
            q.push((n.to_string(), val.text(v)));
        }
    }

    /// Edits the top-level fields of a JSON object; `false` when `body` is no object.
    pub fn apply_json(&self, body: &mut Value, v: &Vars) -> bool {
        let Value::Object(m) = body else {
            return false;
        };
        for n in &self.remove {
            m.remove(&**n);
        }
        for (a, b) in &self.rename {
            if let Some(x) = m.remove(&**a) {
                m.insert(b.to_string(), x);
            }
        }
        for (n, val) in &self.set {
            m.insert(n.to_string(), val.render(v));
        }
        for (n, val) in &self.add {
            if !m.contains_key(&**n) {
                m.insert(n.to_string(), val.render(v));
            }
        }
        true
    }
}
