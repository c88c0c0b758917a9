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

/// A duration of at most `MAX` seconds.
pub fn at_most<'de, const MAX: u64, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse(&String::deserialize(d)?, MAX)
}

/// An optional duration of at most `MAX` seconds.
pub fn opt_at_most<'de, const MAX: u64, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(text) => parse(&text, MAX).map(Some),
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
