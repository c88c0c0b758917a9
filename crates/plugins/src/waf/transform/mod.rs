//! SecLang's transformations (`t:urlDecodeUni`, `t:lowercase`...), the ones the OWASP CRS
//! uses, with ModSecurity's semantics: what a value is turned into before an operator looks
//! at it, so that encodings and obfuscation do not hide a payload. Bytes in, bytes out:
//! request data need not be UTF-8.

use base64::Engine as _;
use std::borrow::Cow;

/// One transformation, compiled from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transform {
    Base64Decode,
    CmdLine,
    CompressWhitespace,
    CssDecode,
    HexEncode,
    HtmlEntityDecode,
    JsDecode,
    Length,
    Lowercase,
    NormalizePath,
    NormalizePathWin,
    RemoveNulls,
    RemoveWhitespace,
    ReplaceComments,
    Sha1,
    UrlDecode,
    UrlDecodeUni,
    Utf8ToUnicode,
}

impl Transform {
    /// The transformation named `name` (as in `t:name`); `None` for an unknown one, and for
    /// `none`, which is no transformation but the reset of the chain before it.
    pub fn named(name: &str) -> Option<Transform> {
        use Transform::*;
        Some(match name {
            "base64Decode" => Base64Decode,
            "cmdLine" => CmdLine,
            "compressWhitespace" => CompressWhitespace,
            "cssDecode" => CssDecode,
            "hexEncode" => HexEncode,
            "htmlEntityDecode" => HtmlEntityDecode,
            "jsDecode" => JsDecode,
            "length" => Length,
            "lowercase" => Lowercase,
            "normalisePath" | "normalizePath" => NormalizePath,
            "normalisePathWin" | "normalizePathWin" => NormalizePathWin,
            "removeNulls" => RemoveNulls,
            "removeWhitespace" => RemoveWhitespace,
            "replaceComments" => ReplaceComments,
            "sha1" => Sha1,
            "urlDecode" => UrlDecode,
            "urlDecodeUni" => UrlDecodeUni,
            "utf8toUnicode" => Utf8ToUnicode,
            _ => return None,
        })
    }

    /// `input` transformed; borrowed when nothing changed (the common case on clean
    /// traffic, which then costs no copy).
    pub fn apply<'a>(self, input: &'a [u8]) -> Cow<'a, [u8]> {
        use Transform::*;
        match self {
            Lowercase if !input.iter().any(u8::is_ascii_uppercase) => Cow::Borrowed(input),
            Lowercase => Cow::Owned(input.to_ascii_lowercase()),
            UrlDecode | UrlDecodeUni if !input.iter().any(|b| *b == b'%' || *b == b'+') => {
                Cow::Borrowed(input)
            }
            UrlDecode => Cow::Owned(url_decode(input, false)),
            UrlDecodeUni => Cow::Owned(url_decode(input, true)),
            RemoveNulls if !input.contains(&0) => Cow::Borrowed(input),
            RemoveNulls => Cow::Owned(input.iter().copied().filter(|b| *b != 0).collect()),
            RemoveWhitespace => {
                Cow::Owned(input.iter().copied().filter(|b| !is_space(*b)).collect())
            }
            CompressWhitespace => Cow::Owned(compress_whitespace(input)),
            HtmlEntityDecode if !input.contains(&b'&') => Cow::Borrowed(input),
            HtmlEntityDecode => Cow::Owned(html_entity_decode(input)),
            JsDecode if !input.contains(&b'\\') => Cow::Borrowed(input),
            JsDecode => Cow::Owned(js_decode(input)),
            CssDecode if !input.contains(&b'\\') => Cow::Borrowed(input),
            CssDecode => Cow::Owned(css_decode(input)),
            CmdLine => Cow::Owned(cmd_line(input)),
            ReplaceComments if !input.windows(2).any(|w| w == b"/*") => Cow::Borrowed(input),
            ReplaceComments => Cow::Owned(replace_comments(input)),
            NormalizePath => Cow::Owned(normalize_path(input)),
            NormalizePathWin => {
                let slashed: Vec<u8> = input
                    .iter()
                    .map(|b| if *b == b'\\' { b'/' } else { *b })
                    .collect();
                Cow::Owned(normalize_path(&slashed))
            }
            Utf8ToUnicode if input.is_ascii() => Cow::Borrowed(input),
            Utf8ToUnicode => Cow::Owned(utf8_to_unicode(input)),
            HexEncode => Cow::Owned(hex(input)),
            Length => Cow::Owned(input.len().to_string().into_bytes()),
            Sha1 => {
                use sha1::Digest;
                Cow::Owned(sha1::Sha1::digest(input).to_vec())
            }
            Base64Decode => Cow::Owned(base64_decode(input)),
        }
    }
}

/// What a value holds that some transformation would change, found in one pass, so that a
/// chain that cannot change it is known without running it (on clean traffic, most).
pub mod features {
    pub const UPPER: u16 = 1;
    pub const PERCENT_PLUS: u16 = 1 << 1;
    pub const NUL: u16 = 1 << 2;
    pub const AMP: u16 = 1 << 3;
    pub const BACKSLASH: u16 = 1 << 4;
    pub const SLASH: u16 = 1 << 5;
    pub const NON_ASCII: u16 = 1 << 6;
    pub const SPACE: u16 = 1 << 7;
    /// Whitespace other than one lone space: a tab, a newline, two spaces in a row.
    pub const ODD_SPACE: u16 = 1 << 8;
    /// What cmdLine drops or turns into a space: `\ " ' ^ , ;`.
    pub const SHELL: u16 = 1 << 9;
    pub const DOT: u16 = 1 << 10;

    pub fn of(v: &[u8]) -> u16 {
        let mut f = 0;
        let mut prev_space = false;
        for &b in v {
            f |= match b {
                b'A'..=b'Z' => UPPER,
                b'%' | b'+' => PERCENT_PLUS,
                0 => NUL,
                b'&' => AMP,
                b'\\' => BACKSLASH | SHELL,
                b'/' => SLASH,
                b'"' | b'\'' | b'^' | b',' | b';' => SHELL,
                b'.' => DOT,
                b' ' if prev_space => SPACE | ODD_SPACE,
                b' ' => SPACE,
                b'\t' | b'\n' | 0x0b | 0x0c | b'\r' => SPACE | ODD_SPACE,
                0x80.. => NON_ASCII,
                _ => 0,
            };
            prev_space = b == b' ';
        }
        if v.first() == Some(&b' ') || v.last() == Some(&b' ') {
            f |= ODD_SPACE;
        }
        f
    }
}

impl Transform {
    /// Whether this transformation leaves a value with features `f` as it is.
    pub fn keeps(self, f: u16) -> bool {
        use features::*;
        use Transform::*;
        let none = |mask: u16| f & mask == 0;
        match self {
            Lowercase => none(UPPER),
            UrlDecode | UrlDecodeUni => none(PERCENT_PLUS),
            RemoveNulls => none(NUL),
            HtmlEntityDecode => none(AMP),
            JsDecode | CssDecode => none(BACKSLASH),
            ReplaceComments => none(SLASH),
            Utf8ToUnicode => none(NON_ASCII),
            RemoveWhitespace => none(SPACE | NON_ASCII),
            CompressWhitespace => none(ODD_SPACE | NON_ASCII),
            CmdLine => none(UPPER | SHELL | SPACE | NON_ASCII),
            NormalizePath => none(SLASH | DOT),
            NormalizePathWin => none(SLASH | DOT | BACKSLASH),
            HexEncode | Length | Sha1 | Base64Decode => false,
        }
    }
}

/// ModSecurity's whitespace: space, \t \n \v \f \r, and the non-breaking space 0xa0.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0)
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Hex digits (already checked) as a number.
fn hex_number(digits: &[u8]) -> u32 {
    digits
        .iter()
        .fold(0u32, |a, b| a << 4 | u32::from(hex_val(*b).unwrap_or(0)))
}

/// The byte an escaped code point stands for, as ModSecurity decodes without a unicode
/// map: full-width ASCII (U+FF01..U+FF5E) as its ASCII form, anything else its low byte.
fn code_byte(code: u32) -> u8 {
    if (0xff01..=0xff5e).contains(&code) {
        (code - 0xff01 + 0x21) as u8
    } else {
        (code & 0xff) as u8
    }
}

fn hex2(a: u8, b: u8) -> Option<u8> {
    Some(hex_val(a)? << 4 | hex_val(b)?)
}

/// `%XX` and `+`; with `uni`, IIS's `%uXXXX` too: full-width ASCII (U+FF01..U+FF5E) to its
/// ASCII form, anything else to its low byte (ModSecurity without a unicode map). Invalid
/// sequences stay as they are.
fn url_decode(s: &[u8], uni: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if uni && matches!(s.get(i + 1), Some(b'u' | b'U')) => {
                let code = s
                    .get(i + 2..i + 6)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .map(hex_number);
                match code {
                    Some(c) => {
                        out.push(code_byte(c));
                        i += 6;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'%' => match (s.get(i + 1), s.get(i + 2)) {
                (Some(a), Some(b)) if hex2(*a, *b).is_some() => {
                    out.push(hex2(*a, *b).unwrap_or(b'%'));
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn compress_whitespace(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut in_space = false;
    for &b in s {
        if is_space(b) {
            if !in_space {
                out.push(b' ');
            }
            in_space = true;
        } else {
            out.push(b);
            in_space = false;
        }
    }
    out
}

/// `&#DDD;`, `&#xHH;` (the `;` optional, as browsers take it), `&quot;` `&amp;` `&lt;`
/// `&gt;` `&nbsp;`. A code point past 0xff gives its low byte, as ModSecurity does.
fn html_entity_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'&' {
            out.push(s[i]);
            i += 1;
            continue;
        }
        let rest = &s[i + 1..];
        let (value, used) = if let Some(num) = rest.strip_prefix(b"#") {
            let (hex, digits) = match num.first() {
                Some(b'x' | b'X') => (true, &num[1..]),
                _ => (false, num),
            };
            let n = digits
                .iter()
                .take_while(|b| {
                    if hex {
                        b.is_ascii_hexdigit()
                    } else {
                        b.is_ascii_digit()
                    }
                })
                .count();
            let text = std::str::from_utf8(&digits[..n]).unwrap_or("");
            let code = u32::from_str_radix(text, if hex { 16 } else { 10 }).ok();
            let prefix = 1 + usize::from(hex);
            match code.filter(|_| n > 0) {
                Some(c) => (Some((c & 0xff) as u8), prefix + n),
                None => (None, 0),
            }
        } else {
            let named: &[(&[u8], u8)] = &[
                (b"quot", b'"'),
                (b"amp", b'&'),
                (b"lt", b'<'),
                (b"gt", b'>'),
                (b"nbsp", 0xa0),
            ];
            named
                .iter()
                .find(|(n, _)| rest.len() >= n.len() && rest[..n.len()].eq_ignore_ascii_case(n))
                .map_or((None, 0), |(n, v)| (Some(*v), n.len()))
        };
        match value {
            Some(v) => {
                out.push(v);
                i += 1 + used;
                if s.get(i) == Some(&b';') {
                    i += 1;
                }
            }
            None => {
                out.push(b'&');
                i += 1;
            }
        }
    }
    out
}

/// JavaScript escapes: `\uHHHH` (full-width ASCII to ASCII, else the low byte), `\xHH`,
/// octal `\OOO`, and `\n` `\t` and friends; any other `\c` is `c`.
fn js_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' || i + 1 >= s.len() {
            out.push(s[i]);
            i += 1;
            continue;
        }
        let c = s[i + 1];
        let hex_run = |from: usize, n: usize| {
            s.get(from..from + n)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .map(hex_number)
        };
        match c {
            b'u' => match hex_run(i + 2, 4) {
                Some(code) => {
                    out.push(code_byte(code));
                    i += 6;
                }
                None => {
                    out.push(b'u');
                    i += 2;
                }
            },
            b'x' => match hex_run(i + 2, 2) {
                Some(code) => {
                    out.push(code as u8);
                    i += 4;
                }
                None => {
                    out.push(b'x');
                    i += 2;
                }
            },
            b'0'..=b'7' => {
                let n = s[i + 1..]
                    .iter()
                    .take(3)
                    .take_while(|b| (b'0'..=b'7').contains(b))
                    .count();
                let code = s[i + 1..i + 1 + n]
                    .iter()
                    .fold(0u32, |a, b| a * 8 + u32::from(b - b'0'));
                out.push((code & 0xff) as u8);
                i += 1 + n;
            }
            _ => {
                out.push(match c {
                    b'a' => 0x07,
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'v' => 0x0b,
                    other => other,
                });
                i += 2;
            }
        }
    }
    out
}

/// CSS escapes: `\` and 1-6 hex digits (one optional whitespace after; the low byte of the
/// code point, full-width ASCII to ASCII), `\` before a newline removed, `\c` is `c`.
fn css_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' {
            out.push(s[i]);
            i += 1;
            continue;
        }
        let n = s[i + 1..]
            .iter()
            .take(6)
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if n > 0 {
            let code = hex_number(&s[i + 1..i + 1 + n]);
            out.push(code_byte(code));
            i += 1 + n;
            if s.get(i).is_some_and(|b| is_space(*b)) {
                i += 1;
            }
        } else {
            match s.get(i + 1) {
                Some(b'\n') => i += 2,
                Some(c) => {
                    out.push(*c);
                    i += 2;
                }
                None => i += 1,
            }
        }
    }
    out
}

/// What a Windows or Unix shell would run: `\ " ' ^` deleted, spaces before `/` and `(`
/// deleted, `,` and `;` made spaces, whitespace compressed, lower case.
fn cmd_line(s: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(s.len());
    let mut space = false;
    for &b in s {
        match b {
            b'\\' | b'"' | b'\'' | b'^' => {}
            b if is_space(b) || b == b',' || b == b';' => space = true,
            b'/' | b'(' => {
                // A space before these goes.
                space = false;
                out.push(b);
            }
            b => {
                if space && !out.is_empty() {
                    out.push(b' ');
                }
                space = false;
                out.push(b.to_ascii_lowercase());
            }
        }
    }
    out
}

/// `/* ... */` made one space; an unterminated comment runs to the end.
fn replace_comments(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with(b"/*") {
            out.push(b' ');
            match s[i + 2..].windows(2).position(|w| w == b"*/") {
                Some(p) => i += 2 + p + 2,
                None => break,
            }
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// `//` collapsed, `./` removed, `dir/../` resolved (`../` past the start kept, so that a
/// traversal stays visible).
fn normalize_path(s: &[u8]) -> Vec<u8> {
    let absolute = s.first() == Some(&b'/');
    let trailing = s.last() == Some(&b'/');
    let mut parts: Vec<&[u8]> = Vec::new();
    for seg in s.split(|b| *b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => match parts.last() {
                Some(last) if *last != b".." => {
                    parts.pop();
                }
                _ => parts.push(seg),
            },
            _ => parts.push(seg),
        }
    }
    let mut out = Vec::with_capacity(s.len());
    if absolute {
        out.push(b'/');
    }
    out.extend(parts.join(&b'/'));
    if trailing && !parts.is_empty() {
        out.push(b'/');
    }
    out
}

/// Non-ASCII UTF-8 characters as `%uHHHH`; invalid bytes as they are.
fn utf8_to_unicode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 2);
    for chunk in s.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_ascii() {
                out.push(c as u8);
            } else {
                out.extend(format!("%u{:04x}", u32::from(c)).into_bytes());
            }
        }
        out.extend_from_slice(chunk.invalid());
    }
    out
}

fn hex(s: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    s.iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .collect()
}

/// Base64 up to the first character that is not of it (ModSecurity decodes what it can),
/// padding or not.
fn base64_decode(s: &[u8]) -> Vec<u8> {
    use base64::engine::{
        general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig,
    };
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let mut text: Vec<u8> = s
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        .copied()
        .filter(|b| *b != b'=')
        .collect();
    if text.len() % 4 == 1 {
        // One character alone encodes no byte.
        text.pop();
    }
    LENIENT.decode(&text).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
