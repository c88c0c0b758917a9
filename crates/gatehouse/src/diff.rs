//! Entity-level diff between two configs, for `gatehouse config diff` and `apply`: which
//! routes, services, upstreams, consumers and plugin instances would be created, deleted or
//! updated, and for updates which fields change.

use gatehouse_model::Config;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Debug, Default)]
pub struct Diff {
    pub lines: Vec<String>,
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    /// Entities in the running config, for the share of it a change touches.
    pub existing: usize,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.created + self.updated + self.deleted == 0
    }

    /// The share of existing entities the change deletes or modifies.
    pub fn disruption(&self) -> f64 {
        (self.updated + self.deleted) as f64 / self.existing.max(1) as f64
    }
}

fn by_id<T: Serialize>(
    items: &[T],
    id: impl Fn(&T) -> String,
) -> BTreeMap<String, serde_json::Value> {
    items
        .iter()
        .filter_map(|i| Some((id(i), serde_json::to_value(i).ok()?)))
        .collect()
}

/// Every entity of `c` as (kind, id) → JSON.
fn entities(c: &Config) -> Vec<(&'static str, BTreeMap<String, serde_json::Value>)> {
    vec![
        ("upstreams", by_id(&c.upstreams, |u| u.name.clone())),
        ("services", by_id(&c.services, |s| s.name.clone())),
        ("routes", by_id(&c.routes, |r| r.name.clone())),
        ("consumers", by_id(&c.consumers, |c| c.username.clone())),
        (
            "plugins",
            by_id(&c.plugins, |p| format!("{}:{}", p.name, p.scope())),
        ),
    ]
}

/// What changes going from `from` (running) to `to` (the file).
pub fn diff(from: &Config, to: &Config) -> Diff {
    let mut d = Diff::default();
    for ((kind, old), (_, new)) in entities(from).into_iter().zip(entities(to)) {
        d.existing += old.len();
        for (id, v) in &new {
            match old.get(id) {
                None => {
                    d.created += 1;
                    d.lines.push(format!("+ {kind}/{id}"));
                }
                Some(before) if before != v => {
                    d.updated += 1;
                    let mut line = format!("~ {kind}/{id}");
                    for (field, change) in fields(before, v) {
                        let _ = write!(line, "\n    {field}: {change}");
                    }
                    d.lines.push(line);
                }
                Some(_) => {}
            }
        }
        for id in old.keys().filter(|id| !new.contains_key(*id)) {
            d.deleted += 1;
            d.lines.push(format!("- {kind}/{id}"));
        }
    }
    d
}

/// Top-level fields that differ, as `old → new`.
fn fields(a: &serde_json::Value, b: &serde_json::Value) -> Vec<(String, String)> {
    let empty = serde_json::Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| v.map_or("(none)".into(), |v| v.to_string());
            (
                k.clone(),
                format!("{} → {}", show(a.get(k)), show(b.get(k))),
            )
        })
        .collect()
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for l in &self.lines {
            writeln!(f, "{l}")?;
        }
        writeln!(
            f,
            "{} to create, {} to update, {} to delete",
            self.created, self.updated, self.deleted
        )
    }
}
