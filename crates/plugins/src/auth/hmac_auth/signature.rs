//! The `Authorization` header of a signed request, in the two forms gateways use, and the
//! string each form signs:
//!
//! - APISIX (draft-cavage style): `Signature keyId="k",algorithm="hmac-sha256",headers="@request-target date",signature="..."`,
//!   signing `keyId\n`, then per signed header `METHOD /path?query\n` for `@request-target`
//!   or `name: value\n`.
//! - Kong: `hmac username="k", algorithm="hmac-sha256", headers="date request-line", signature="..."`,
//!   signing one line per header joined by `\n`: `METHOD /path?query HTTP/1.1` for
//!   `request-line`, else `name: value`.

use http::request::Parts;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Apisix,
    Kong,
}

/// What the client's `Authorization` header says.
#[derive(Debug)]
pub struct Signed<'a> {
    pub style: Style,
    pub key_id: &'a str,
    pub algorithm: &'a str,
    /// Lower-cased names of the signed headers, in signing order.
    pub headers: Vec<String>,
    pub signature: &'a str,
}

/// Parses `value`; `Err` says what is wrong (for the 401).
pub fn parse(value: &str) -> Result<Signed<'_>, String> {
    let value = value.trim();
    let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
    let style = if scheme.eq_ignore_ascii_case("signature") {
        Style::Apisix
    } else if scheme.eq_ignore_ascii_case("hmac") {
        Style::Kong
    } else {
        return Err("the Authorization header is not a Signature or hmac signature".into());
    };
    let mut key_id = None;
    let mut algorithm = None;
    let mut headers = None;
    let mut signature = None;
    for param in split_params(params) {
        let (name, v) = param.split_once('=').ok_or_else(|| {
            format!("the Authorization header has a parameter without a value: {param:?}")
        })?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(|| format!("the Authorization header's {} is not quoted", name.trim()))?;
        match name.trim() {
            "keyId" | "username" => key_id = Some(v),
            "algorithm" => algorithm = Some(v),
            "headers" => headers = Some(v),
            "signature" => signature = Some(v),
            _ => {}
        }
    }
    let missing = |what: &str| format!("the Authorization header has no {what}");
    Ok(Signed {
        style,
        key_id: key_id.ok_or_else(|| {
            missing(if style == Style::Kong {
                "username"
            } else {
                "keyId"
            })
        })?,
        algorithm: algorithm.ok_or_else(|| missing("algorithm"))?,
        headers: headers
            .unwrap_or("")
            .split_ascii_whitespace()
            .map(str::to_ascii_lowercase)
            .collect(),
        signature: signature.ok_or_else(|| missing("signature"))?,
    })
}

/// Splits `a="x", b="y,z"` at the commas outside quotes.
fn split_params(s: &str) -> impl Iterator<Item = &str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().map(str::trim).filter(|p| !p.is_empty())
}

/// The string the client signed; `Err` names a signed header the request lacks.
pub fn signing_string(s: &Signed<'_>, parts: &Parts) -> Result<String, String> {
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut lines: Vec<String> = Vec::with_capacity(s.headers.len() + 1);
    if s.style == Style::Apisix {
        lines.push(s.key_id.to_string());
    }
    for h in &s.headers {
        let line = match h.as_str() {
            "@request-target" => format!("{} {target}", parts.method),
            "request-line" => format!("{} {target} {:?}", parts.method, parts.version),
            name => {
                let values: Vec<&str> = parts
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                if values.is_empty() {
                    return Err(format!("the signed header {name} is not in the request"));
                }
                format!("{name}: {}", values.join(", "))
            }
        };
        lines.push(line);
    }
    Ok(match s.style {
        Style::Apisix => lines.iter().map(|l| format!("{l}\n")).collect(),
        Style::Kong => lines.join("\n"),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn both_styles_parse_and_bad_headers_say_why() {
        let s = parse(r#"Signature keyId="john-key",algorithm="hmac-sha256",headers="@request-target date",signature="abc=""#).unwrap();
        assert_eq!(
            (s.style, s.key_id, s.algorithm, s.signature),
            (Style::Apisix, "john-key", "hmac-sha256", "abc=")
        );
        assert_eq!(s.headers, ["@request-target", "date"]);
        let s = parse(r#"hmac username="bob", algorithm="hmac-sha1", headers="date request-line", signature="x""#).unwrap();
        assert_eq!((s.style, s.key_id), (Style::Kong, "bob"));
        for (bad, why) in [
            ("Bearer x", "not a Signature or hmac"),
            (r#"Signature keyId=john"#, "not quoted"),
            (
                r#"Signature algorithm="hmac-sha256",signature="x""#,
                "no keyId",
            ),
            (
                r#"hmac algorithm="hmac-sha256",signature="x""#,
                "no username",
            ),
            (
                r#"Signature keyId="k",algorithm="hmac-sha256""#,
                "no signature",
            ),
            ("Signature keyId", "without a value"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn the_signing_strings_are_each_gateways() {
        let mut parts = http::Request::get("/get?a=1")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        parts
            .headers
            .insert("date", "Fri, 06 Sep 2024 06:41:29 GMT".parse().unwrap());
        let s = parse(r#"Signature keyId="john-key",algorithm="hmac-sha256",headers="@request-target date",signature="x""#).unwrap();
        assert_eq!(
            signing_string(&s, &parts).unwrap(),
            "john-key\nGET /get?a=1\ndate: Fri, 06 Sep 2024 06:41:29 GMT\n"
        );
        let s = parse(r#"hmac username="bob", algorithm="hmac-sha256", headers="date request-line", signature="x""#).unwrap();
        assert_eq!(
            signing_string(&s, &parts).unwrap(),
            "date: Fri, 06 Sep 2024 06:41:29 GMT\nGET /get?a=1 HTTP/1.1"
        );
        let s = parse(
            r#"hmac username="bob", algorithm="hmac-sha256", headers="x-missing", signature="x""#,
        )
        .unwrap();
        assert!(signing_string(&s, &parts)
            .unwrap_err()
            .contains("x-missing"));
    }
}
