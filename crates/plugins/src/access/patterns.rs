//! A list of exact strings and regexes (written `~regex`, as route paths write them),
//! compiled once: exact entries in a hash set, regexes in one `RegexSet`, so a match is one
//! probe and one linear-time scan whatever the list's length.

use gatehouse_plugin_api::FieldError;
use regex::RegexSet;
use std::collections::HashSet;

#[derive(Debug, Default)]
pub struct Patterns {
    exact: HashSet<Box<str>>,
    regex: Option<RegexSet>,
}

impl Patterns {
    /// Compiles `list` (config field `field`); a bad regex is named by its index.
    pub fn compile(field: &str, list: &[String]) -> Result<Self, Vec<FieldError>> {
        let mut exact = HashSet::new();
        let mut regexes = Vec::new();
        let mut errs = Vec::new();
        for (i, p) in list.iter().enumerate() {
            match p.strip_prefix('~') {
                Some(re) => match regex::Regex::new(re) {
                    Ok(_) => regexes.push(re.to_string()),
                    Err(e) => errs.push(FieldError::new(
                        format!("{field}[{i}]"),
                        format!("not a valid regex: {e}"),
                    )),
                },
                None => {
                    exact.insert(p.as_str().into());
                }
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let regex = match regexes.is_empty() {
            true => None,
            false => Some(
                RegexSet::new(&regexes).map_err(|e| vec![FieldError::new(field, e.to_string())])?,
            ),
        };
        Ok(Self { exact, regex })
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.regex.is_none()
    }

    pub fn matches(&self, s: &str) -> bool {
        self.exact.contains(s) || self.regex.as_ref().is_some_and(|r| r.is_match(s))
    }
}

/// An allow list and a deny list over one request value (a header).
pub struct AllowDeny {
    pub allow: Patterns,
    pub deny: Patterns,
}

/// What a list decided about a value.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Denied,
    NotAllowed,
}

impl AllowDeny {
    pub fn compile(allow: &[String], deny: &[String]) -> Result<Self, Vec<FieldError>> {
        let mut errs = Vec::new();
        let allow = Patterns::compile("allow", allow).map_err(|e| errs.extend(e));
        let deny = Patterns::compile("deny", deny).map_err(|e| errs.extend(e));
        match (allow, deny) {
            (Ok(allow), Ok(deny)) if !allow.is_empty() || !deny.is_empty() => {
                Ok(Self { allow, deny })
            }
            (Ok(_), Ok(_)) => Err(vec![FieldError::new("", "set allow, deny or both")]),
            _ => Err(errs),
        }
    }

    /// Deny wins; then, with an allow list, only what it lists passes.
    pub fn judge(&self, value: &str) -> Verdict {
        if self.deny.matches(value) {
            Verdict::Denied
        } else if !self.allow.is_empty() && !self.allow.matches(value) {
            Verdict::NotAllowed
        } else {
            Verdict::Pass
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_regex_entries_match_and_bad_regexes_are_named() {
        let l = AllowDeny::compile(
            &["curl/8.0".into(), "~^Mozilla/".into()],
            &["~(?i)bot".into()],
        )
        .unwrap();
        assert_eq!(l.judge("curl/8.0"), Verdict::Pass);
        assert_eq!(l.judge("Mozilla/5.0"), Verdict::Pass);
        assert_eq!(l.judge("Mozilla/5.0 Googlebot"), Verdict::Denied);
        assert_eq!(l.judge("wget"), Verdict::NotAllowed);
        let e = AllowDeny::compile(&[], &["ok".into(), "~(".into()])
            .err()
            .unwrap();
        assert_eq!(e[0].path, "deny[1]");
        assert!(AllowDeny::compile(&[], &[]).is_err());
    }
}
