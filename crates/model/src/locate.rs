//! Finds the line and column of a field path (`routes[2].paths[0]`) in a YAML text. The
//! item-by-item parse reads each item from a parsed tree, which has no positions left, so
//! for an error this reads the file once more through yaml_serde's own deserializer, steps
//! along the path with seeds that skip everything else, and lets yaml_serde place an error at
//! the node the path ends on. Written here because no YAML crate maps a path to a position;
//! it runs only for errors.

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// One step of a path: a map key or a list index.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The steps of a field path. A label after an index (`plugins[1] (rate-limit).config`) is
/// not part of the path.
fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let part = part.split(" (").next().unwrap_or(part);
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            if i > 0 {
                out.push(Step::Key(&rest[..i]));
            }
            rest = &rest[i..];
            while let Some(r) = rest.strip_prefix('[') {
                let Some((n, tail)) = r.split_once(']') else {
                    break;
                };
                match n.parse() {
                    Ok(n) => out.push(Step::Index(n)),
                    Err(_) => return out,
                }
                rest = tail;
            }
        } else if !rest.is_empty() {
            out.push(Step::Key(rest));
        }
    }
    out
}

/// `(line, column)`, both from 1, of what `path` names in `text`; of the nearest enclosing
/// node when the path ends at something missing (a required field).
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let steps = steps(path);
    let de = yaml_serde::Deserializer::from_str(text);
    match (Walk { steps: &steps }).deserialize(de) {
        Ok(()) => None,
        Err(e) => e.location().map(|l| (l.line(), l.column())),
    }
}

/// Steps along `steps`, then fails at the node reached, so that the error carries its mark.
struct Walk<'p, 'a> {
    steps: &'p [Step<'a>],
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.steps.first() {
            None => d.deserialize_any(Here),
            Some(Step::Key(_)) => d.deserialize_map(self),
            Some(Step::Index(_)) => d.deserialize_seq(self),
        }
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the path's next step")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (Some(Step::Key(want)), rest) = (self.steps.first(), &self.steps[1..]) else {
            return Err(de::Error::custom("here"));
        };
        while let Some(key) = map.next_key::<Key>()? {
            if key.0.as_deref() == Some(*want) {
                return map.next_value_seed(Walk { steps: rest });
            }
            map.next_value::<IgnoredAny>()?;
        }
        // The key is missing: the map that lacks it is the place.
        Err(de::Error::custom("here"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (Some(Step::Index(want)), rest) = (self.steps.first(), &self.steps[1..]) else {
            return Err(de::Error::custom("here"));
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(de::Error::custom("here"));
            }
        }
        match seq.next_element_seed(Walk { steps: rest })? {
            Some(()) => Ok(()),
            None => Err(de::Error::custom("here")),
        }
    }
}

/// A map key as text when it is text.
struct Key(Option<String>);

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(Some(v.to_owned())))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Key, E> {
                Ok(Key(None))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
                Ok(Key(Some(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
                Ok(Key(Some(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Key, E> {
                Ok(Key(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
                Ok(Key(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Refuses whatever node it is given: the error is what carries the node's position.
struct Here;

impl<'de> Visitor<'de> for Here {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("nothing: this only marks a place")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const TEXT: &str = "\
upstreams:
  - name: u
    targets: [{address: \"a:1\"}, {address: \"b:2\"}]
routes:
  - {name: r1, paths: [\"/a\"], service: s}
  - name: r2
    paths:
      - /b
      - /c
    service: s
plugins:
  - {name: x, route: r2, config: {limit: \"10\"}}
";

    #[test]
    fn paths_land_on_their_nodes_and_missing_ones_on_the_enclosing_map() {
        assert_eq!(locate(TEXT, "routes[1].paths[1]"), Some((9, 9)));
        assert_eq!(locate(TEXT, "routes[0].service"), Some((5, 40)));
        assert_eq!(
            locate(TEXT, "upstreams[0].targets[1].address"),
            Some((3, 43))
        );
        assert_eq!(locate(TEXT, "plugins[0] (x).config.limit"), Some((12, 42)));
        // No such key: the map that lacks it.
        assert_eq!(locate(TEXT, "routes[1].hosts"), Some((6, 5)));
        assert_eq!(locate(TEXT, "nothing[3]"), Some((1, 1)));
    }

    #[test]
    fn steps_read_indices_and_skip_labels() {
        assert_eq!(
            steps("plugins[1] (rate-limit).config.a[2][3]"),
            vec![
                Step::Key("plugins"),
                Step::Index(1),
                Step::Key("config"),
                Step::Key("a"),
                Step::Index(2),
                Step::Index(3)
            ]
        );
    }
}
