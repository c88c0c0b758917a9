//! Durations in config: humantime's grammar (`500ms`, `5s`, `2m`, `1h`, `1d`, combined as
//! `1h30m`, units also spelled out: `5 seconds`), each field bounded by a sane maximum so that
//! a typo (`100000h`) is an error, not a setting. Used as `deserialize_with` with the
//! field's maximum in seconds.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// How a duration is written, for error messages.
const FORM: &str = "write a number and a unit, e.g. 500ms, 5s, 2m, 1h";

fn parse<E: serde::de::Error>(text: &str, max_secs: u64) -> Result<Duration, E> {
    let d = humantime::parse_duration(text)
        .map_err(|e| E::custom(format!("invalid duration {text:?} ({e}): {FORM}")))?;
    let max = Duration::from_secs(max_secs);
    if d > max {
        return Err(E::custom(format!(
            "{text:?} is more than this setting's most ({})",
            humantime::format_duration(max)
        )));
    }
    Ok(d)
}

/// Reads a duration's text; a bare number gets the form in its error, not "expected a string".
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a duration: {FORM}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Text, E> {
                Err(E::custom(format!(
                    "{v} has no unit: write {v}s, {v}ms or {v}m"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Text, E> {
                Err(E::custom(format!("{v} is not a duration: {FORM}")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Text, E> {
                Err(E::custom(format!("{v} has no unit: {FORM}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration of at most `MAX` seconds.
pub fn at_most<'de, const MAX: u64, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse(&Text::deserialize(d)?.0, MAX)
}

/// An optional duration of at most `MAX` seconds.
pub fn opt_at_most<'de, const MAX: u64, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    match Option::<Text>::deserialize(d)? {
        Some(text) => parse(&text.0, MAX).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Duration, String> {
        parse::<serde::de::value::Error>(text, 3600).map_err(|e| e.to_string())
    }

    #[test]
    fn the_grammar_is_humantimes_and_errors_show_the_form_and_the_bound() {
        assert_eq!(read("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(read("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(read("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(read("5 seconds").unwrap(), Duration::from_secs(5));
        let e = read("5").unwrap_err();
        assert!(e.contains("e.g. 500ms, 5s, 2m, 1h"), "{e}");
        let e = read("100000h").unwrap_err();
        assert_eq!(e, "\"100000h\" is more than this setting's most (1h)");
    }
}
