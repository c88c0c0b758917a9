//! SecLang's operators compiled once, at load: `@rx` (a translated `regex`), `@pm` and
//! `@pmFromFile` (Aho-Corasick), the string and number comparisons, `@detectSQLi` and
//! `@detectXSS` (libinjection's tokenizers, through libinjectionrs), and the encoding
//! validations. A parameter with a macro (`@within %{tx.allowed_methods}`) is kept as a
//! template for the engine to expand per transaction.

use super::pcre;
use super::seclang::Operator;
use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex::bytes::Regex;
use std::path::Path;

/// A compiled operator; `negated` inverts its verdict.
#[derive(Debug)]
pub struct Compiled {
    pub test: Test,
    pub negated: bool,
}

#[derive(Debug)]
pub enum Test {
    Rx(Regex),
    /// Any of these phrases, case-insensitively.
    Pm(AhoCorasick),
    Streq(Vec<u8>),
    Contains(Vec<u8>),
    BeginsWith(Vec<u8>),
    EndsWith(Vec<u8>),
    /// The value is one of the space-separated words of the parameter (CRS uses it
    /// with `|`-delimited lists, which are then substrings of the parameter).
    Within(Vec<u8>),
    Number(Cmp, i64),
    DetectSqli,
    DetectXss,
    ValidateUrlEncoding,
    ValidateUtf8Encoding,
    /// The allowed byte values.
    ValidateByteRange(Box<[bool; 256]>),
    IpMatch(Vec<ipnet::IpNet>),
    UnconditionalMatch,
    /// A parameter with `%{...}`: expanded per transaction, then compared.
    Expand {
        op: Box<str>,
        template: Box<str>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ge,
    Gt,
    Le,
    Lt,
}

/// Compiles `op`; `data_dir` is where `@pmFromFile` files are. `Err` says why not (an
/// operator this engine does not have, a pattern `regex` refuses after translation).
pub fn compile(op: &Operator, data_dir: &Path) -> Result<Compiled, String> {
    compile_with(op, &|f| {
        let path = data_dir.join(f);
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    })
}

/// Compiles `op`, reading `@pmFromFile`'s files with `data` (by the name the rule gives).
pub fn compile_with(
    op: &Operator,
    data: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Compiled, String> {
    let param = op.param.as_str();
    let bytes = || param.as_bytes().to_vec();
    let test = if param.contains("%{") && !matches!(op.name.as_str(), "rx" | "pm" | "pmFromFile") {
        Test::Expand {
            op: op.name.as_str().into(),
            template: param.into(),
        }
    } else {
        match op.name.as_str() {
            "rx" => Test::Rx(
                regex::bytes::RegexBuilder::new(&pcre::translate(param))
                    .size_limit(64 << 20)
                    .build()
                    .map_err(|e| format!("@rx: {}", e.to_string().lines().last().unwrap_or("")))?,
            ),
            "pm" => Test::Pm(phrases(param.split_whitespace())?),
            "pmFromFile" => {
                let mut words = Vec::new();
                for f in param.split_whitespace() {
                    let text = data(f).map_err(|e| format!("@pmFromFile {e}"))?;
                    words.extend(
                        text.lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty() && !l.starts_with('#'))
                            .map(str::to_owned),
                    );
                }
                Test::Pm(phrases(words.iter().map(String::as_str))?)
            }
            "streq" => Test::Streq(bytes()),
            "contains" => Test::Contains(bytes()),
            "beginsWith" => Test::BeginsWith(bytes()),
            "endsWith" => Test::EndsWith(bytes()),
            "within" => Test::Within(bytes()),
            "eq" | "ge" | "gt" | "le" | "lt" => {
                let n = param
                    .trim()
                    .parse()
                    .map_err(|_| format!("@{}: {param:?} is not a number", op.name))?;
                let cmp = match op.name.as_str() {
                    "eq" => Cmp::Eq,
                    "ge" => Cmp::Ge,
                    "gt" => Cmp::Gt,
                    "le" => Cmp::Le,
                    _ => Cmp::Lt,
                };
                Test::Number(cmp, n)
            }
            "detectSQLi" => Test::DetectSqli,
            "detectXSS" => Test::DetectXss,
            "validateUrlEncoding" => Test::ValidateUrlEncoding,
            "validateUtf8Encoding" => Test::ValidateUtf8Encoding,
            "validateByteRange" => Test::ValidateByteRange(byte_ranges(param)?),
            "ipMatch" => Test::IpMatch(
                param
                    .split(',')
                    .map(|p| {
                        let p = p.trim();
                        p.parse::<ipnet::IpNet>()
                            .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                            .map_err(|_| format!("@ipMatch: {p:?} is not an address or CIDR"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            "unconditionalMatch" => Test::UnconditionalMatch,
            other => return Err(format!("@{other} is not supported by this engine")),
        }
    };
    Ok(Compiled {
        test,
        negated: op.negated,
    })
}

fn phrases<'a>(words: impl Iterator<Item = &'a str>) -> Result<AhoCorasick, String> {
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostFirst)
        .kind(Some(AhoCorasickKind::DFA))
        .build(words)
        .or_else(|_| {
            AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(Vec::<&str>::new())
        })
        .map_err(|e| format!("@pm: {e}"))
}

/// `9,10,13,32-126`: the allowed byte values.
fn byte_ranges(param: &str) -> Result<Box<[bool; 256]>, String> {
    let mut ok = Box::new([false; 256]);
    for part in param.split(',') {
        let part = part.trim();
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u8, u8) = match (a.trim().parse(), b.trim().parse()) {
            (Ok(a), Ok(b)) if a <= b => (a, b),
            _ => {
                return Err(format!(
                    "@validateByteRange: {part:?} is not a byte or a range"
                ))
            }
        };
        for v in a..=b {
            ok[usize::from(v)] = true;
        }
    }
    Ok(ok)
}

impl Compiled {
    /// Whether the operator matches `value` (its verdict, negation applied). An `Expand`
    /// operator never matches here: the engine expands it first.
    pub fn matches(&self, value: &[u8]) -> bool {
        self.test.matches(value) != self.negated
    }
}

impl Test {
    fn matches(&self, v: &[u8]) -> bool {
        match self {
            Test::Rx(re) => re.is_match(v),
            Test::Pm(ac) => ac.is_match(v),
            Test::Streq(s) => v == s.as_slice(),
            Test::Contains(s) => memchr::memmem::find(v, s).is_some(),
            Test::BeginsWith(s) => v.starts_with(s),
            Test::EndsWith(s) => v.ends_with(s),
            Test::Within(s) => !v.is_empty() && memchr::memmem::find(s, v).is_some(),
            Test::Number(cmp, n) => {
                let x: i64 = std::str::from_utf8(v)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0);
                match cmp {
                    Cmp::Eq => x == *n,
                    Cmp::Ge => x >= *n,
                    Cmp::Gt => x > *n,
                    Cmp::Le => x <= *n,
                    Cmp::Lt => x < *n,
                }
            }
            Test::DetectSqli => libinjectionrs::detect_sqli(v).is_injection(),
            Test::DetectXss => libinjectionrs::detect_xss(v).is_injection(),
            Test::ValidateUrlEncoding => !valid_url_encoding(v),
            Test::ValidateUtf8Encoding => std::str::from_utf8(v).is_err(),
            Test::ValidateByteRange(ok) => v.iter().any(|b| !ok[usize::from(*b)]),
            Test::IpMatch(nets) => std::str::from_utf8(v)
                .ok()
                .and_then(|t| t.trim().parse::<std::net::IpAddr>().ok())
                .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
            Test::UnconditionalMatch => true,
            Test::Expand { .. } => false,
        }
    }
}

/// Every `%` starts two hex digits.
fn valid_url_encoding(v: &[u8]) -> bool {
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' {
            let ok = v
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !ok {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
