//! A first native detector set beside libinjection's tokenizers: evasions normalised, then
//! signatures for traversal, command injection and web shells. A prototype to measure on
//! the corpus, not the plugin.

use regex::RegexSet;
use std::sync::OnceLock;

/// Decodes what hides a payload: URL encoding (twice), overlong UTF-8 slashes, HTML
/// entities, null bytes, SQL comments; lower case.
pub fn normalise(s: &str) -> Vec<String> {
    let mut forms = vec![s.to_owned()];
    let mut cur = s.as_bytes().to_vec();
    for _ in 0..2 {
        let next: Vec<u8> = percent_encoding::percent_decode(&cur).collect();
        if next == cur {
            break;
        }
        cur = next;
        forms.push(overlong(&cur));
    }
    let mut out = Vec::new();
    for f in forms {
        let f = entities(&f)
            .replace('\0', "")
            .to_lowercase()
            .replace("/**/", " ");
        out.push(f);
    }
    out
}

/// `%c0%af` and `%c1%9c` (overlong `/` and `\`) as the characters old decoders made of them.
fn overlong(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (0xc0, Some(0xaf)) => {
                out.push(b'/');
                i += 2;
            }
            (0xc1, Some(0x9c)) => {
                out.push(b'\\');
                i += 2;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `&lt;`, `&#97;`, `&#x61;` and friends decoded.
fn entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail.find(';').filter(|e| *e < 10);
        let decoded = end.and_then(|e| {
            let name = &tail[1..e];
            let c = match name {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "amp" => Some('&'),
                n if n.starts_with("#x") => u32::from_str_radix(&n[2..], 16)
                    .ok()
                    .and_then(char::from_u32),
                n if n.starts_with('#') => n[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            }?;
            Some((c, e + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &tail[len..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn signatures() -> &'static [(&'static str, RegexSet)] {
    static SETS: OnceLock<Vec<(&'static str, RegexSet)>> = OnceLock::new();
    SETS.get_or_init(|| {
        let set = |p: &[&str]| RegexSet::new(p).unwrap_or_else(|_| RegexSet::empty());
        vec![
            (
                "traversal",
                set(&[
                    r"(?:\.\.[/\\]){2,}",
                    r"^\s*/?(?:etc/(?:passwd|shadow|hosts)|web-inf/web\.xml|proc/self/\w+)",
                    r"\.\.[/\\]+(?:[\w.-]+[/\\])*(?:etc|windows|web-inf|proc|var|boot\.ini)",
                    r"^(?:php|expect|file|data|zip|phar)://",
                    r"^https?://[^\s]+\?$",
                ][..]),
            ),
            (
                "rce",
                set(&[
                    r"(?:[;&|\n]|\$\()\s*(?:cat|ls|id|whoami|uname|wget|curl|nc|bash|sh|python\d?|perl|ping|rm|echo|powershell|type|cmd(?:\.exe)?|system)\b",
                    r"`\s*(?:id|whoami|uname|cat|ls|wget|curl|nc|bash|sh|ping|rm)\b[^`]{0,40}`",
                    r"\$\{jndi:",
                    r"\(\)\s*\{\s*:;\s*\}\s*;",
                    r"\$\{?ifs\}?",
                    r"\{\{\s*\d+\s*\*\s*\d+\s*\}\}|\$\{\s*\d+\s*\*\s*\d+\s*\}|<%=",
                    r"/dev/tcp/",
                ][..]),
            ),
            (
                "webshell",
                set(&[
                    r"<\?(?:php|=)",
                    r"\b(?:eval|assert|system|passthru|shell_exec|exec|popen|proc_open|base64_decode|gzinflate|str_rot13|file_put_contents)\s*\(",
                    r"runtime\.getruntime\(\)\.exec|process\.start\(",
                    r"\b(?:c99shell|r57shell|b374k|wso\.php)\b",
                    r#"<script\s+language\s*=\s*["']?php"#,
                    r"\$_(?:get|post|request|cookie)\[",
                ][..]),
            ),
        ]
    })
}

/// The family of the first signature `s` matches in any of its normalised forms.
pub fn detect(s: &str) -> Option<&'static str> {
    for f in normalise(s) {
        if libinjectionrs::detect_sqli(f.as_bytes()).is_injection() {
            return Some("sqli");
        }
        if libinjectionrs::detect_xss(f.as_bytes()).is_injection() {
            return Some("xss");
        }
        for (family, set) in signatures() {
            if set.is_match(&f) {
                return Some(family);
            }
        }
    }
    None
}
