//! Setting a message's fields from what an HTTP request carries: path variables and query
//! arguments as text (`book.id=42`, `genres=FICTION&genres=SCIENCE`), and a body field as
//! JSON. Errors name the field.

use super::BadRequest;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};

fn bad(field: &str, message: impl Into<String>) -> BadRequest {
    BadRequest {
        field: Some(field.to_owned()),
        message: message.into(),
    }
}

/// The field `name` of `desc`, by proto name or JSON name.
fn field(desc: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_name(name)
        .or_else(|| desc.get_field_by_json_name(name))
}

/// Checks at load that `path` (`book.id`) names fields that exist, through messages.
pub(super) fn check_path(desc: &MessageDescriptor, path: &str) -> Result<(), String> {
    let mut d = desc.clone();
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        let f = field(&d, p)
            .ok_or_else(|| format!("{} has no field \"{p}\" (in \"{path}\")", d.full_name()))?;
        if parts.peek().is_some() {
            match f.kind() {
                Kind::Message(m) if !f.is_list() && !f.is_map() => d = m,
                _ => return Err(format!("\"{p}\" in \"{path}\" is not a message field")),
            }
        }
    }
    Ok(())
}

/// The message that holds the last part of `path`, made on the way; and that field.
fn parent<'m>(
    msg: &'m mut DynamicMessage,
    path: &str,
) -> Result<(&'m mut DynamicMessage, FieldDescriptor), BadRequest> {
    let (head, last) = match path.rsplit_once('.') {
        Some((h, l)) => (Some(h), l),
        None => (None, path),
    };
    let mut m = msg;
    if let Some(head) = head {
        for p in head.split('.') {
            let f = field(&m.descriptor(), p)
                .ok_or_else(|| bad(path, format!("unknown field \"{p}\"")))?;
            let Kind::Message(_) = f.kind() else {
                return Err(bad(path, format!("\"{p}\" is not a message")));
            };
            if f.is_list() || f.is_map() {
                return Err(bad(path, format!("\"{p}\" is repeated")));
            }
            let slot = m.get_field_mut(&f);
            m = match slot {
                Value::Message(inner) => inner,
                _ => return Err(bad(path, format!("\"{p}\" is not a message"))),
            };
        }
    }
    let f = field(&m.descriptor(), last)
        .ok_or_else(|| bad(path, format!("unknown field \"{last}\"")))?;
    Ok((m, f))
}

/// Sets the field at `path` from text (a path variable or a query argument); a repeated
/// field gets the value appended.
pub(super) fn set_text(msg: &mut DynamicMessage, path: &str, text: &str) -> Result<(), BadRequest> {
    let (m, f) = parent(msg, path)?;
    let value = scalar(&f, text).map_err(|e| bad(path, e))?;
    if f.is_list() {
        if let Value::List(list) = m.get_field_mut(&f) {
            list.push(value);
        }
    } else if f.is_map() {
        return Err(bad(
            path,
            "map fields cannot be set from the path or the query",
        ));
    } else {
        m.set_field(&f, value);
    }
    Ok(())
}

/// Sets the field at `path` (the binding's `body`) from JSON.
pub(super) fn set_json(
    msg: &mut DynamicMessage,
    path: &str,
    json: &[u8],
) -> Result<(), BadRequest> {
    let (m, f) = parent(msg, path)?;
    match f.kind() {
        Kind::Message(desc) if !f.is_list() && !f.is_map() => {
            let inner = super::from_json(desc, json, Some(path))?;
            m.set_field(&f, Value::Message(inner));
        }
        _ => {
            // A scalar or repeated body: read it as that field of a one-field object.
            let mut wrapped = b"{\"".to_vec();
            wrapped.extend_from_slice(f.json_name().as_bytes());
            wrapped.extend_from_slice(b"\":");
            wrapped.extend_from_slice(json);
            wrapped.push(b'}');
            let parsed = super::from_json(m.descriptor(), &wrapped, None)?;
            m.set_field(&f, parsed.get_field(&f).into_owned());
        }
    }
    Ok(())
}

/// A scalar field's value from text.
fn scalar(f: &FieldDescriptor, text: &str) -> Result<Value, String> {
    let num = |what: &str| format!("\"{text}\" is not {what}");
    Ok(match f.kind() {
        Kind::String => Value::String(text.to_owned()),
        Kind::Bytes => {
            use base64::Engine;
            let b = base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
                .map_err(|_| num("base64"))?;
            Value::Bytes(b.into())
        }
        Kind::Bool => Value::Bool(match text {
            "true" => true,
            "false" => false,
            _ => return Err(num("true or false")),
        }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(text.parse().map_err(|_| num("an int32"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(text.parse().map_err(|_| num("an int64"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(text.parse().map_err(|_| num("a uint32"))?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(text.parse().map_err(|_| num("a uint64"))?),
        Kind::Float => Value::F32(text.parse().map_err(|_| num("a number"))?),
        Kind::Double => Value::F64(text.parse().map_err(|_| num("a number"))?),
        Kind::Enum(e) => match e.get_value_by_name(text) {
            Some(v) => Value::EnumNumber(v.number()),
            None => match text.parse::<i32>() {
                Ok(n) if e.get_value(n).is_some() => Value::EnumNumber(n),
                _ => {
                    let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
                    return Err(format!("\"{text}\" is not one of {}", names.join(", ")));
                }
            },
        },
        Kind::Message(_) => return Err("a message field cannot be set from text".into()),
    })
}
