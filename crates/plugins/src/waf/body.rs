//! The request body processors: URL-encoded forms, JSON, multipart and XML turned into the
//! collections the rules read (`ARGS_POST`, `FILES`, `XML`), and a body that does not parse
//! into `REQBODY_ERROR`, which the plugin's policy turns into a block or a pass.

use super::data::{form_args, Data, Item};
use super::vars::Coll;

/// The most members a body yields; beyond it the body is an error (a body of a million tiny
/// fields is a way to make every rule's work a million times larger).
const MAX_ITEMS: usize = 10_000;

#[derive(Debug, Default, Clone)]
pub struct Parsed {
    /// `URLENCODED`, `JSON`, `XML`, `MULTIPART`, or empty (the raw body only).
    pub processor: &'static str,
    pub args: Vec<Item>,
    /// Uploads: the form field's name, the file's name.
    pub files: Vec<(Item, usize)>,
    pub part_headers: Vec<Item>,
    pub xml: Vec<Item>,
    pub error: Option<String>,
    pub multipart_strict: bool,
    pub unmatched_boundary: bool,
    pub raw: Box<[u8]>,
}

/// The processor the request's `Content-Type` calls for.
pub fn processor_for(content_type: Option<&str>) -> &'static str {
    let Some(ct) = content_type else { return "" };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-www-form-urlencoded" => "URLENCODED",
        "multipart/form-data" => "MULTIPART",
        m if m == "application/json" || m.ends_with("+json") => "JSON",
        m if m == "text/xml" || m == "application/xml" || m.ends_with("+xml") => "XML",
        _ => "",
    }
}

/// Parses `body` with `processor`; `content_type` gives multipart its boundary.
pub fn parse(processor: &'static str, body: &[u8], content_type: Option<&str>) -> Parsed {
    let mut p = Parsed {
        processor,
        raw: body.into(),
        ..Parsed::default()
    };
    let result = match processor {
        "URLENCODED" => {
            p.args = form_args(body);
            Ok(())
        }
        "JSON" => json(body, &mut p.args),
        "XML" => xml(body, &mut p.xml),
        "MULTIPART" => multipart(body, content_type.unwrap_or(""), &mut p),
        _ => Ok(()),
    };
    let too_many = p.args.len() + p.files.len() + p.xml.len() > MAX_ITEMS;
    if let Err(e) = result {
        p.error = Some(e);
    } else if too_many {
        p.error = Some(format!("more than {MAX_ITEMS} fields"));
    }
    p
}

impl Parsed {
    /// Puts everything but `ARGS_POST` into `d`.
    pub fn fill(&self, d: &mut Data) {
        let files = self.files.iter().map(|(i, _)| i.clone());
        d.push_all(Coll::Files, files);
        let sizes = self.files.iter().map(|(i, n)| Item {
            name: i.name.clone(),
            value: n.to_string().into_bytes().into(),
        });
        d.push_all(Coll::FilesSizes, sizes);
        let total: usize = self.files.iter().map(|(_, n)| n).sum();
        d.set(Coll::FilesCombinedSize, total.to_string().into_bytes());
        d.push_all(
            Coll::MultipartPartHeaders,
            self.part_headers.iter().cloned(),
        );
        d.set(Coll::MultipartStrictError, flag(self.multipart_strict));
        d.set(
            Coll::MultipartUnmatchedBoundary,
            flag(self.unmatched_boundary),
        );
        d.push_all(Coll::Xml, self.xml.iter().cloned());
        d.set(Coll::RequestBody, self.raw.clone());
        d.set(
            Coll::RequestBodyLength,
            self.raw.len().to_string().into_bytes(),
        );
        d.set(Coll::ReqbodyProcessor, self.processor.as_bytes());
        d.set(Coll::ReqbodyError, flag(self.error.is_some()));
        let msg = self.error.as_deref().unwrap_or("");
        d.set(Coll::ReqbodyErrorMsg, msg.as_bytes());
    }
}

fn flag(on: bool) -> &'static [u8] {
    if on {
        b"1"
    } else {
        b"0"
    }
}

/// JSON as `json.a.b` names (array members by index), as libmodsecurity names them. Depth
/// is bounded by serde_json's recursion limit (128), which makes deeper bodies an error.
fn json(body: &[u8], out: &mut Vec<Item>) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("JSON: {e}"))?;
    let mut name = b"json".to_vec();
    flatten(&v, &mut name, out);
    Ok(())
}

fn flatten(v: &serde_json::Value, name: &mut Vec<u8>, out: &mut Vec<Item>) {
    use serde_json::Value;
    if out.len() > MAX_ITEMS {
        return;
    }
    let mut child = |key: &[u8], v: &Value, name: &mut Vec<u8>| {
        let len = name.len();
        name.push(b'.');
        name.extend_from_slice(key);
        flatten(v, name, out);
        name.truncate(len);
    };
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                child(k.as_bytes(), v, name);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                child(i.to_string().as_bytes(), v, name);
            }
        }
        leaf => {
            let value: Box<[u8]> = match leaf {
                Value::String(s) => s.as_bytes().into(),
                Value::Null => Box::default(),
                other => other.to_string().into_bytes().into(),
            };
            out.push(Item {
                name: name.as_slice().into(),
                value,
            });
        }
    }
}

/// XML's text and attribute values (what the CRS's `XML:/*` and `XML://@*` read).
fn xml(body: &[u8], out: &mut Vec<Item>) -> Result<(), String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut buf = Vec::new();
    let mut depth = 0usize;
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Eof) if depth == 0 => return Ok(()),
            Ok(Event::Eof) => return Err("XML: the document ends inside an element".into()),
            Ok(Event::Start(e)) => {
                depth += 1;
                if depth > 128 {
                    return Err("XML: nested deeper than 128".into());
                }
                attributes(&e, out)?;
            }
            Ok(Event::Empty(e)) => attributes(&e, out)?,
            Ok(Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(Event::Text(t)) => {
                let text = t.into_inner();
                if !text.trim_ascii().is_empty() {
                    out.push(Item {
                        name: Box::default(),
                        value: text.as_ref().into(),
                    });
                }
            }
            Ok(Event::CData(t)) => out.push(Item {
                name: Box::default(),
                value: t.into_inner().as_ref().into(),
            }),
            Ok(_) => {}
            Err(e) => return Err(format!("XML: {e}")),
        }
        buf.clear();
    }
}

fn attributes(e: &quick_xml::events::BytesStart<'_>, out: &mut Vec<Item>) -> Result<(), String> {
    for a in e.attributes() {
        let a = a.map_err(|e| format!("XML: {e}"))?;
        out.push(Item {
            name: a.key.as_ref().into(),
            value: a.value.as_ref().into(),
        });
    }
    Ok(())
}

/// multipart/form-data, read strictly: written by hand because the WAF needs what lenient
/// parsers (multer) smooth over: a part without a name, a missing final boundary, a quote
/// out of place are themselves signs of an evasion (`MULTIPART_STRICT_ERROR`).
fn multipart(body: &[u8], content_type: &str, p: &mut Parsed) -> Result<(), String> {
    let boundary = content_type
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or("multipart: no boundary in Content-Type")?;
    let delim = format!("--{boundary}");
    let finder = memchr::memmem::Finder::new(delim.as_bytes());
    let starts: Vec<usize> = finder.find_iter(body).collect();
    let Some(&first) = starts.first() else {
        p.unmatched_boundary = true;
        return Err("multipart: no boundary in the body".into());
    };
    if first != 0 {
        p.multipart_strict = true;
    }
    let mut closed = false;
    for w in starts.windows(2) {
        let part = &body[w[0] + delim.len()..w[1]];
        if part.starts_with(b"--") {
            p.multipart_strict = true;
            continue;
        }
        one_part(part, p)?;
    }
    if let Some(&last) = starts.last() {
        closed = body[last + delim.len()..].starts_with(b"--");
    }
    if !closed {
        p.unmatched_boundary = true;
        p.multipart_strict = true;
        return Err("multipart: the final boundary is missing".into());
    }
    Ok(())
}

fn one_part(part: &[u8], p: &mut Parsed) -> Result<(), String> {
    let part = part
        .strip_prefix(b"\r\n")
        .ok_or("multipart: a boundary is not followed by CRLF")?;
    let split =
        memchr::memmem::find(part, b"\r\n\r\n").ok_or("multipart: a part's headers do not end")?;
    let (head, content) = (&part[..split], &part[split + 4..]);
    let content = content.strip_suffix(b"\r\n").unwrap_or_else(|| {
        p.multipart_strict = true;
        content
    });
    let mut name: Option<Vec<u8>> = None;
    let mut filename: Option<Vec<u8>> = None;
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr::memchr(b':', line) else {
            p.multipart_strict = true;
            continue;
        };
        let (hname, hvalue) = (&line[..colon], line[colon + 1..].trim_ascii());
        if hname.eq_ignore_ascii_case(b"content-disposition") {
            for param in hvalue.split(|b| *b == b';').skip(1) {
                let param = param.trim_ascii();
                let Some(eq) = memchr::memchr(b'=', param) else {
                    p.multipart_strict = true;
                    continue;
                };
                let (k, v) = (&param[..eq], &param[eq + 1..]);
                let quoted = v.len() >= 2 && v.starts_with(b"\"") && v.ends_with(b"\"");
                let v = if quoted { &v[1..v.len() - 1] } else { v };
                if !quoted || v.contains(&b'"') {
                    p.multipart_strict = true;
                }
                if k.eq_ignore_ascii_case(b"name") {
                    name = Some(v.to_vec());
                } else if k.eq_ignore_ascii_case(b"filename") {
                    filename = Some(v.to_vec());
                }
            }
        }
        p.part_headers.push(Item {
            name: name.clone().unwrap_or_default().into(),
            value: line.into(),
        });
    }
    let name = name.ok_or("multipart: a part has no name")?;
    match filename {
        Some(f) => p.files.push((
            Item {
                name: name.into(),
                value: f.into(),
            },
            content.len(),
        )),
        None => p.args.push(Item {
            name: name.into(),
            value: content.into(),
        }),
    }
    Ok(())
}
