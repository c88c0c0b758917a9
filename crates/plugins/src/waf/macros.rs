//! SecLang macros (`%{tx.anomaly_score}`, `%{MATCHED_VAR_NAME}`, `%{rule.id}`) parsed at load
//! into templates, expanded per transaction.

use super::vars::{Coll, Sel};

/// A piece of a template.
#[derive(Debug, Clone)]
pub enum Part {
    Lit(Box<[u8]>),
    /// A member of a collection (`tx.foo`), or a single value (`MATCHED_VAR`).
    Var(Coll, Option<Box<[u8]>>),
    RuleId,
    RuleMsg,
}

/// A string with macros, compiled.
#[derive(Debug, Clone, Default)]
pub struct Template(pub Vec<Part>);

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("%{") {
            if start > 0 {
                parts.push(Part::Lit(rest.as_bytes()[..start].into()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("macro without a closing brace in {s:?}"))?;
            parts.push(part(&after[..end])?);
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.as_bytes().into()));
        }
        Ok(Template(parts))
    }

    /// The template when it has no macro.
    pub fn literal(&self) -> Option<&[u8]> {
        match self.0.as_slice() {
            [] => Some(b""),
            [Part::Lit(l)] => Some(l),
            _ => None,
        }
    }

    pub fn has_macros(&self) -> bool {
        self.literal().is_none()
    }
}

fn part(name: &str) -> Result<Part, String> {
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "rule.id" => return Ok(Part::RuleId),
        "rule.msg" => return Ok(Part::RuleMsg),
        _ => {}
    }
    let (coll, member) = match name.split_once('.') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    let c = Coll::named(coll).ok_or_else(|| format!("macro %{{{name}}}: unknown variable"))?;
    Ok(Part::Var(
        c,
        member.map(|m| m.to_ascii_lowercase().into_bytes().into()),
    ))
}

/// The selector a macro's member names.
pub fn member_sel(m: &Option<Box<[u8]>>) -> Sel {
    match m {
        Some(n) => Sel::Name(n.clone()),
        None => Sel::All,
    }
}
