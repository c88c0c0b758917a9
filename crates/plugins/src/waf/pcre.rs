//! Turns the CRS's PCRE patterns into patterns Rust's `regex` crate reads the same way.
//! PCRE is lenient where `regex` is strict (a `{` that is no count is a literal; `[` inside a
//! class is a literal; `-` after `\w` in a class is a literal; `\<` is `<`), and one of those
//! is worse than an error: `regex` reads `\<` and `\>` as word boundaries, so a pattern that
//! compiles could silently mean something else. Possessive quantifiers (`++`) become plain
//! ones: `regex` never backtracks, so what they guard against does not arise.
//!
//! By hand: no crate translates PCRE to `regex`'s syntax. What cannot be translated (look-
//! around, backreferences) is left for `regex` to refuse, and the engine reports the rule.

use std::borrow::Cow;

/// `pattern` in `regex`'s syntax; borrowed when nothing needed changing.
pub fn translate(pattern: &str) -> Cow<'_, str> {
    let b = pattern.as_bytes();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut changed = false;
    let mut i = 0;
    // Inside a character class, and where it started (a `]` right after the opening
    // `[` or `[^` is a literal).
    let mut class_start: Option<usize> = None;
    while i < b.len() {
        let c = b[i];
        match (c, class_start) {
            (b'\\', _) if i + 1 < b.len() => {
                let next = b[i + 1];
                match (next, class_start) {
                    (b'<' | b'>', _) => {
                        out.push(next as char);
                        changed = true;
                    }
                    (b'w' | b'd' | b's' | b'W' | b'D' | b'S', Some(_))
                        if b.get(i + 2) == Some(&b'-') && b.get(i + 3) != Some(&b']') =>
                    {
                        // `[\w-.]`: PCRE's `-` after a shorthand is a literal.
                        out.push('\\');
                        out.push(next as char);
                        out.push_str("\\-");
                        changed = true;
                        i += 3;
                        continue;
                    }
                    _ => {
                        out.push('\\');
                        // Copy the escaped character whole (it may be multi-byte).
                        let ch = pattern[i + 1..].chars().next().unwrap_or('\\');
                        out.push(ch);
                        i += 1 + ch.len_utf8();
                        continue;
                    }
                }
                i += 2;
            }
            (b'[', None) => {
                out.push('[');
                i += 1;
                if b.get(i) == Some(&b'^') {
                    out.push('^');
                    i += 1;
                }
                class_start = Some(i);
                if b.get(i) == Some(&b']') {
                    out.push_str("\\]");
                    changed = true;
                    i += 1;
                }
            }
            (b'[', Some(_)) if b.get(i + 1) != Some(&b':') => {
                out.push_str("\\[");
                changed = true;
                i += 1;
            }
            (b'[', Some(_)) => {
                // A POSIX class `[:alpha:]`: copy through its closing `:]`.
                let end = pattern[i..].find(":]").map_or(b.len(), |e| i + e + 2);
                out.push_str(&pattern[i..end]);
                i = end;
            }
            (b']', Some(_)) => {
                out.push(']');
                class_start = None;
                i += 1;
            }
            (b'{', None) if !is_count(&b[i..]) => {
                out.push_str("\\{");
                changed = true;
                i += 1;
            }
            (b'+', None) if b.get(i + 1) == Some(&b'+') && i > 0 && is_quantified(b, i) => {
                out.push('+');
                changed = true;
                i += 2;
            }
            _ => {
                let ch = pattern[i..].chars().next().unwrap_or(' ');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(pattern)
    }
}

/// Whether `s` (starting at a `{`) is a counted repetition: `{n}`, `{n,}` or `{n,m}`.
fn is_count(s: &[u8]) -> bool {
    let Some(end) = s.iter().position(|c| *c == b'}') else {
        return false;
    };
    let inner = &s[1..end];
    let (a, b) = match inner.iter().position(|c| *c == b',') {
        Some(p) => (&inner[..p], Some(&inner[p + 1..])),
        None => (inner, None),
    };
    !a.is_empty()
        && a.iter().all(u8::is_ascii_digit)
        && b.is_none_or(|b| b.iter().all(u8::is_ascii_digit))
}

/// Whether the `+` at `i` follows something it repeats, making `++` possessive (not `a+`
/// followed by a literal, which `\+` would have been).
fn is_quantified(b: &[u8], i: usize) -> bool {
    !matches!(b.get(i.wrapping_sub(1)), Some(b'(' | b'|') | None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::translate;

    #[test]
    fn pcre_leniencies_become_regex_syntax() {
        let cases: &[(&str, &str)] = &[
            (r"(?:;|\{|\|)\s*(?:{|\s*\()", r"(?:;|\{|\|)\s*(?:\{|\s*\()"),
            (r"^\(\s*\)\s+{", r"^\(\s*\)\s+\{"),
            (r"{{.*?}}", r"\{\{.*?}}"),
            (r"a{2,5}b{3}c{1,}", r"a{2,5}b{3}c{1,}"),
            (r#"[\'\" ?[=<>]+"#, r#"[\'\" ?\[=<>]+"#),
            (r"[^:\(\)\&\|\!\<\>\~]*", r"[^:\(\)\&\|\!<>\~]*"),
            (r"\<script\>", r"<script>"),
            (r"[\w-.]+", r"[\w\-.]+"),
            (r"[\w-]", r"[\w-]"),
            (r"[^?\w\s=.,;)(]++\s", r"[^?\w\s=.,;)(]+\s"),
            (r"[]a]", r"[\]a]"),
            (r"[[:alpha:]]+", r"[[:alpha:]]+"),
            (r"(?i)caf\é", r"(?i)caf\é"),
        ];
        for (pcre, want) in cases {
            assert_eq!(translate(pcre), *want, "{pcre}");
        }
        assert!(matches!(translate(r"^a+b$"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn translated_patterns_match_as_pcre_would() {
        let re = |p: &str| regex::Regex::new(&translate(p)).unwrap();
        assert!(re(r"\<script\>").is_match("x<script>y"));
        assert!(!re(r"\<script\>").is_match("script"));
        assert!(re(r"{{.*?}}").is_match("{{7*7}}"));
        assert!(re(r#"[\'\" ?[=<>]+"#).is_match("[["));
    }
}
