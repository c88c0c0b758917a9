//! Request path normalisation before routing (RFC 3986 §6.2.2 and §5.2.4), so that a path
//! routes and goes upstream in one form only: `/public/../admin` and `/public/%2e%2e/admin`
//! are `/admin`, and cannot slip past the plugins of the route they really reach.
//!
//! The policy, as `docs/configuration.md` documents it:
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, other escapes
//!   keep their meaning with their hex in upper case; a malformed escape is refused;
//! - `.` and `..` segments are removed; `..` never climbs above the root;
//! - empty segments (`//`) are merged, before dot segments are resolved;
//! - an encoded slash or backslash (`%2F`, `%5C`), or a raw backslash, is refused unless
//!   `node.encoded_slashes: keep`, which routes and forwards them as they came;
//! - an encoded NUL (`%00`) is always refused.
//!
//! Written by hand: the URL crates normalise whole URLs and always decode or always keep
//! escapes, and none has the slash policy; this is one pass over the bytes, and the common
//! path (nothing to do) returns without allocating.

use gatehouse_model::EncodedSlashes;
use std::borrow::Cow;

/// Why a request path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `%2F`, `%5C` or `\` under `encoded_slashes: reject`.
    EncodedSlash,
    /// `%00`.
    Nul,
}

impl PathError {
    pub fn as_str(self) -> &'static str {
        match self {
            PathError::BadEscape => "malformed percent-encoding",
            PathError::EncodedSlash => "encoded slash or backslash",
            PathError::Nul => "encoded NUL",
        }
    }
}

/// The normal form of `path` (an absolute path, without the query). Borrowed when it is
/// already normal. A path that does not start with `/` (`*`) is left as it is.
pub fn normalize(path: &str, slashes: EncodedSlashes) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') || is_plain(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path, slashes)?;
    let out = remove_dot_segments(&decoded);
    if out == path {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(out))
}

/// True when nothing in `path` can change: no escape, no backslash, no empty or dot segment.
fn is_plain(path: &str) -> bool {
    let mut prev = 0u8;
    for &c in path.as_bytes() {
        if c == b'%' || c == b'\\' || (prev == b'/' && (c == b'/' || c == b'.')) {
            return false;
        }
        prev = c;
    }
    true
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes escapes of unreserved characters; upper-cases the hex of the others.
fn decode_unreserved(path: &str, slashes: EncodedSlashes) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' && slashes == EncodedSlashes::Reject {
            return Err(PathError::EncodedSlash);
        }
        if c != b'%' {
            // The input is a &str, so copying up to the next '%' keeps UTF-8 whole.
            let next = b[i..]
                .iter()
                .position(|&x| x == b'%')
                .map_or(b.len(), |p| i + p);
            let run = &path[i..next];
            if slashes == EncodedSlashes::Reject && run.contains('\\') {
                return Err(PathError::EncodedSlash);
            }
            out.push_str(run);
            i = next;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape);
        };
        let byte = hi << 4 | lo;
        match byte {
            0 => return Err(PathError::Nul),
            b'/' | b'\\' if slashes == EncodedSlashes::Reject => {
                return Err(PathError::EncodedSlash)
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
            }
        }
        i += 3;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on an absolute path, with empty segments merged.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    let rest = path.strip_prefix('/').unwrap_or(path);
    let mut parts = rest.split('/').peekable();
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
        // A path that ends in a dot segment or a slash names a directory: keep the slash.
        trailing = last && matches!(seg, "" | "." | "..");
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use EncodedSlashes::{Keep, Reject};

    /// Hostile and ordinary paths, and what routing and the upstream see.
    const CASES: &[(&str, Result<&str, PathError>)] = &[
        ("/", Ok("/")),
        ("/a/b", Ok("/a/b")),
        ("/a/b/", Ok("/a/b/")),
        ("/.well-known/x", Ok("/.well-known/x")),
        ("/public/../admin", Ok("/admin")),
        ("/public/./admin", Ok("/public/admin")),
        ("/public/%2e%2e/admin", Ok("/admin")),
        ("/public/%2E%2E/admin", Ok("/admin")),
        ("/public/.%2e/admin", Ok("/admin")),
        ("/public/%2e./admin", Ok("/admin")),
        ("/public/%2e/admin", Ok("/public/admin")),
        ("/../../etc/passwd", Ok("/etc/passwd")),
        ("/api/../../../base/../secret", Ok("/secret")),
        ("/a/b/..", Ok("/a/")),
        ("/a/b/.", Ok("/a/b/")),
        ("/..", Ok("/")),
        ("//admin", Ok("/admin")),
        ("/public//../admin", Ok("/admin")),
        ("/a///b//", Ok("/a/b/")),
        ("/%61dmin", Ok("/admin")),
        ("/a%7eb", Ok("/a~b")),
        ("/a%20b", Ok("/a%20b")),
        ("/a%3fb", Ok("/a%3Fb")),
        ("/caf%C3%A9", Ok("/caf%C3%A9")),
        ("/public/..%2fadmin", Err(PathError::EncodedSlash)),
        ("/public/..%2Fadmin", Err(PathError::EncodedSlash)),
        ("/public/..%5cadmin", Err(PathError::EncodedSlash)),
        ("/public/..\\admin", Err(PathError::EncodedSlash)),
        ("/a%00b", Err(PathError::Nul)),
        ("/a%zzb", Err(PathError::BadEscape)),
        ("/a%2", Err(PathError::BadEscape)),
        ("/a%", Err(PathError::BadEscape)),
        ("*", Ok("*")),
    ];

    #[test]
    fn hostile_paths_are_normalised_or_refused() {
        for (path, want) in CASES {
            let got = normalize(path, Reject).map(|c| c.into_owned());
            assert_eq!(got, want.map(str::to_owned), "{path}");
        }
    }

    #[test]
    fn plain_paths_are_not_copied() {
        for p in ["/", "/a/b", "/a/b/", "/users/42", "/a.b/c.d"] {
            assert!(matches!(normalize(p, Reject), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn kept_encoded_slashes_stay_encoded_and_do_not_split_segments() {
        let got = normalize("/repos/a%2fb/../c", Keep).unwrap();
        assert_eq!(got, "/repos/c");
        assert_eq!(
            normalize("/public/..%2Fadmin", Keep).unwrap(),
            "/public/..%2Fadmin"
        );
        assert_eq!(normalize("/a%00", Keep), Err(PathError::Nul));
    }
}
