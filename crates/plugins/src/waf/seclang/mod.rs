//! Reads SecLang, the rule language of ModSecurity and the OWASP CRS, into directives: rules
//! (variables, operator, actions, chained conditions), actions and markers, each with the
//! file and line it came from, so that a rule the engine cannot compile is named precisely.
//!
//! Written by hand: no maintained Rust crate reads SecLang (the candidates are bindings to
//! libmodsecurity, which bench/RESULTS.md measured at ~10 ms per request). The grammar is
//! ModSecurity's reference manual's, as the CRS uses it.

use std::fmt;

/// Where a directive starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A rule file that cannot be read, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub at: At,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

impl std::error::Error for ParseError {}

/// One variable of a rule's target list: `ARGS`, `ARGS:id`, `REQUEST_COOKIES:/^__utm/`,
/// `!ARGS:password` (excluded), `&ARGS` (the count of).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    pub selector: Option<Selector>,
    pub exclude: bool,
    pub count: bool,
}

/// Which members of a collection a variable names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Name(String),
    /// `/regex/`
    Regex(String),
}

/// `@rx pattern`, `!@pm a b c`; a bare pattern is `@rx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub negated: bool,
    pub param: String,
}

/// `name` or `name:value` (the value unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub name: String,
    pub value: Option<String>,
}

/// A `SecRule`, with the conditions chained to it (`chain`) in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub at: At,
    pub variables: Vec<Variable>,
    pub operator: Operator,
    pub actions: Vec<Action>,
    pub chained: Vec<Rule>,
}

impl Rule {
    /// The value of action `name` (the first, when it repeats).
    pub fn action(&self, name: &str) -> Option<&str> {
        self.actions
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.value.as_deref().unwrap_or(""))
    }

    /// The rule's `id`, if it has a well-formed one.
    pub fn id(&self) -> Option<u64> {
        self.action("id")?.parse().ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive {
    Rule(Rule),
    /// `SecAction`: actions that always run.
    Action {
        at: At,
        actions: Vec<Action>,
    },
    /// `SecMarker`: where `skipAfter` lands.
    Marker {
        at: At,
        name: String,
    },
    /// Any other directive (`SecComponentSignature`, `SecRuleRemoveById`...), with its
    /// arguments, for the compiler to take or refuse.
    Other {
        at: At,
        name: String,
        args: Vec<String>,
    },
}

/// Reads the directives of `text`, which came from `file`. Continuation lines (`\`) are
/// joined and comments skipped; a rule with `chain` takes the following rules as its
/// conditions.
pub fn parse(file: &str, text: &str) -> Result<Vec<Directive>, ParseError> {
    let mut out: Vec<Directive> = Vec::new();
    // The rule whose chain is still open, by index in `out`, and how deep it is.
    let mut open_chain: Option<usize> = None;
    for (line, directive) in logical_lines(text) {
        let at = At {
            file: file.to_owned(),
            line,
        };
        let err = |message: String| ParseError {
            at: at.clone(),
            message,
        };
        let words = split_words(&directive).map_err(err)?;
        let Some((name, args)) = words.split_first() else {
            continue;
        };
        let parsed = match name.as_str() {
            "SecRule" => Directive::Rule(rule(&at, args)?),
            "SecAction" => {
                let [acts] = args else {
                    return Err(err(format!(
                        "SecAction takes one argument (its actions), not {}",
                        args.len()
                    )));
                };
                Directive::Action {
                    actions: actions(acts).map_err(err)?,
                    at,
                }
            }
            "SecMarker" => {
                let [marker] = args else {
                    return Err(err("SecMarker takes one name".into()));
                };
                Directive::Marker {
                    at,
                    name: marker.clone(),
                }
            }
            _ => Directive::Other {
                at,
                name: name.clone(),
                args: args.to_vec(),
            },
        };
        match (open_chain, parsed) {
            (Some(i), Directive::Rule(r)) => {
                let continues = r.action("chain").is_some();
                if let Some(Directive::Rule(head)) = out.get_mut(i) {
                    head.chained.push(r);
                }
                if !continues {
                    open_chain = None;
                }
            }
            (Some(i), other) => {
                let head = match out.get(i) {
                    Some(Directive::Rule(h)) => h.at.to_string(),
                    _ => String::new(),
                };
                return Err(ParseError {
                    at: directive_at(&other),
                    message: format!("the rule at {head} says chain, but no rule follows"),
                });
            }
            (None, Directive::Rule(r)) => {
                if r.action("chain").is_some() {
                    open_chain = Some(out.len());
                }
                out.push(Directive::Rule(r));
            }
            (None, other) => out.push(other),
        }
    }
    if let Some(Directive::Rule(head)) = open_chain.and_then(|i| out.get(i)) {
        return Err(ParseError {
            at: head.at.clone(),
            message: "this rule says chain, but the file ends".into(),
        });
    }
    Ok(out)
}

fn directive_at(d: &Directive) -> At {
    match d {
        Directive::Rule(r) => r.at.clone(),
        Directive::Action { at, .. }
        | Directive::Marker { at, .. }
        | Directive::Other { at, .. } => at.clone(),
    }
}

/// The directives of `text` as (first line number, text), continuation lines joined.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if buf.is_empty() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            start = i + 1;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                buf.push_str(part);
                buf.push(' ');
            }
            None => {
                buf.push_str(line);
                out.push((start, std::mem::take(&mut buf)));
            }
        }
    }
    if !buf.trim().is_empty() {
        out.push((start, buf));
    }
    out
}

/// Splits a directive into words: runs of non-space, or double-quoted strings in which
/// `\"` is a quote (other escapes stay as written: they belong to the regex).
fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' if chars.peek() == Some(&'"') => {
                        chars.next();
                        word.push('"');
                    }
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => word.push(c),
                }
            }
            if !closed {
                return Err("a quoted argument is not closed".into());
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
    Ok(words)
}

fn rule(at: &At, args: &[String]) -> Result<Rule, ParseError> {
    let err = |message: String| ParseError {
        at: at.clone(),
        message,
    };
    let (vars, op, acts) = match args {
        [v, o] => (v, o, None),
        [v, o, a] => (v, o, Some(a)),
        _ => {
            return Err(err(format!(
                "SecRule takes variables, an operator and actions, not {} arguments",
                args.len()
            )))
        }
    };
    Ok(Rule {
        at: at.clone(),
        variables: variables(vars).map_err(err)?,
        operator: operator(op),
        actions: match acts {
            Some(a) => actions(a).map_err(err)?,
            None => Vec::new(),
        },
        chained: Vec::new(),
    })
}

fn is_xml(cur: &str) -> bool {
    cur.trim_start_matches(['!', '&'])
        .eq_ignore_ascii_case("XML:")
}

/// `ARGS|!ARGS:x|&TX:y|REQUEST_COOKIES:/re|gex/`: split on `|` outside a `/regex/`.
fn variables(s: &str) -> Result<Vec<Variable>, String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut in_regex = false;
    let mut prev = '\0';
    for c in s.chars() {
        match c {
            // XML's selector is an XPath (`XML:/*`), never a regex.
            '/' if (cur.ends_with(':') && !is_xml(&cur)) || (in_regex && prev != '\\') => {
                in_regex = !in_regex;
                cur.push(c);
            }
            '|' if !in_regex => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
        prev = c;
    }
    parts.push(cur);
    parts
        .into_iter()
        .map(|p| {
            let p = p.trim();
            let (exclude, p) = p.strip_prefix('!').map_or((false, p), |r| (true, r));
            let (count, p) = p.strip_prefix('&').map_or((false, p), |r| (true, r));
            let (name, selector) = match p.split_once(':') {
                Some((n, sel)) => (n, Some(selector(sel))),
                None => (p, None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("{p:?} is not a variable"));
            }
            Ok(Variable {
                name: name.to_ascii_uppercase(),
                selector,
                exclude,
                count,
            })
        })
        .collect()
}

fn selector(s: &str) -> Selector {
    let s = s.trim_matches('\'');
    match s.strip_prefix('/').and_then(|r| r.strip_suffix('/')) {
        Some(re) => Selector::Regex(re.to_owned()),
        None => Selector::Name(s.to_owned()),
    }
}

fn operator(s: &str) -> Operator {
    let (negated, rest) = s.strip_prefix('!').map_or((false, s), |r| (true, r));
    match rest.strip_prefix('@') {
        Some(op) => {
            let (name, param) = op.split_once(' ').unwrap_or((op, ""));
            Operator {
                name: name.to_owned(),
                negated,
                param: param.to_owned(),
            }
        }
        None => Operator {
            name: "rx".into(),
            negated,
            param: rest.to_owned(),
        },
    }
}

/// `id:1,phase:2,t:none,msg:'a, b',setvar:'tx.x=+%{tx.y}'`: split on commas outside
/// single quotes; a value's quotes are taken off.
fn actions(s: &str) -> Result<Vec<Action>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut prev = '\0';
    for c in s.chars() {
        match c {
            '\'' if prev != '\\' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
        prev = c;
    }
    if quoted {
        return Err("a quoted action value is not closed".into());
    }
    out.push(cur);
    Ok(out
        .into_iter()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .map(|a| match a.split_once(':') {
            Some((n, v)) => Action {
                name: n.trim().to_owned(),
                value: Some(v.trim().trim_matches('\'').to_owned()),
            },
            None => Action {
                name: a,
                value: None,
            },
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
