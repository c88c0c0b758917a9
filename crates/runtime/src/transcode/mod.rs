//! HTTP/JSON to gRPC transcoding, compiled at load from a route's `grpc_transcode`: the
//! descriptor set is decoded once (prost-reflect), every method's `google.api.http`
//! bindings (and the configured mappings) become templates, and a request is matched,
//! made a protobuf message, and its answer made JSON again with the standard gRPC-to-HTTP
//! status table.

mod fields;
mod template;

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use gatehouse_model::{GrpcTranscode, TranscodeMapping};
use http::{Method, StatusCode};
use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MethodDescriptor, SerializeOptions, Value,
};
use template::Template;

/// One HTTP binding of a gRPC method.
pub struct Binding {
    http_method: Method,
    template: Template,
    /// `*`, a field name, or none.
    body: Option<String>,
    method: MethodDescriptor,
    /// `/pkg.Service/Method`.
    pub grpc_path: http::uri::PathAndQuery,
}

impl Binding {
    /// Whether the method answers with a stream (made a JSON array).
    pub fn server_streaming(&self) -> bool {
        self.method.is_server_streaming()
    }
}

/// A route's transcoder.
pub struct Transcoder {
    bindings: Vec<Binding>,
    proto_names: bool,
    pub max_body: u64,
}

/// A request that cannot be made a message: 400, naming the field.
#[derive(Debug)]
pub struct BadRequest {
    pub field: Option<String>,
    pub message: String,
}

impl Transcoder {
    /// Compiles `spec`; `Err` is `(field under grpc_transcode, message)`.
    pub fn compile(spec: &GrpcTranscode) -> Result<Transcoder, (String, String)> {
        let bytes = match (&spec.descriptor, &spec.descriptor_base64) {
            (Some(path), None) => std::fs::read(path).map_err(|e| {
                (
                    "descriptor".to_owned(),
                    format!("cannot read \"{path}\": {e}"),
                )
            })?,
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| ("descriptor_base64".to_owned(), format!("not base64: {e}")))?,
            _ => {
                return Err((
                    "descriptor".into(),
                    "exactly one of descriptor and descriptor_base64".into(),
                ))
            }
        };
        let field = if spec.descriptor.is_some() {
            "descriptor"
        } else {
            "descriptor_base64"
        };
        let pool = DescriptorPool::decode(bytes.as_slice()).map_err(|e| {
            (
                field.to_owned(),
                format!(
                    "not a FileDescriptorSet (protoc --include_imports --descriptor_set_out): {e}"
                ),
            )
        })?;
        let mut services = Vec::new();
        for (i, name) in spec.services.iter().enumerate() {
            match pool.get_service_by_name(name) {
                Some(s) => services.push(s),
                None => {
                    return Err((
                        format!("services[{i}]"),
                        format!("no service \"{name}\" in the descriptor set"),
                    ))
                }
            }
        }
        if services.is_empty() {
            services = pool.services().collect();
        }
        let http_ext = pool.get_extension_by_name("google.api.http");
        let mut bindings = Vec::new();
        for s in &services {
            for m in s.methods() {
                if let Some(ext) = &http_ext {
                    let options = m.options();
                    if options.has_extension(ext) {
                        if let Value::Message(rule) = &*options.get_extension(ext) {
                            annotated(&m, rule, &mut bindings).map_err(|e| {
                                (field.to_owned(), format!("{}: {e}", m.full_name()))
                            })?;
                        }
                    }
                }
            }
        }
        for (i, mapping) in spec.mappings.iter().enumerate() {
            bindings.push(mapped(&pool, mapping).map_err(|e| (format!("mappings[{i}]"), e))?);
        }
        if bindings.is_empty() {
            return Err((
                field.to_owned(),
                "no method has a google.api.http annotation, and there are no mappings".into(),
            ));
        }
        Ok(Transcoder {
            bindings,
            proto_names: spec.proto_field_names,
            max_body: spec.max_body.as_u64(),
        })
    }

    /// The binding for a request, and its path variables.
    pub fn find(&self, method: &Method, path: &str) -> Option<(&Binding, Vec<(&str, String)>)> {
        self.bindings.iter().find_map(|b| {
            if b.http_method != *method {
                return None;
            }
            b.template.matches(path).map(|vars| (b, vars))
        })
    }

    /// The gRPC request body (one frame) for a request to `b` with these path variables,
    /// query, and JSON body.
    pub fn request(
        &self,
        b: &Binding,
        vars: &[(&str, String)],
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Bytes, BadRequest> {
        let desc = b.method.input();
        let mut msg = DynamicMessage::new(desc.clone());
        let body = body.trim_ascii();
        match b.body.as_deref() {
            Some("*") if !body.is_empty() => msg = from_json(desc, body, None)?,
            Some(field) if field != "*" && !body.is_empty() => {
                fields::set_json(&mut msg, field, body)?
            }
            _ => {}
        }
        for (field, value) in vars {
            fields::set_text(&mut msg, field, value)?;
        }
        if b.body.as_deref() != Some("*") {
            for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
                if vars.iter().any(|(f, _)| *f == k) {
                    continue;
                }
                fields::set_text(&mut msg, &k, &v)?;
            }
        }
        let encoded = msg.encode_to_vec();
        let mut frame = BytesMut::with_capacity(5 + encoded.len());
        frame.put_u8(0);
        frame.put_u32(encoded.len() as u32);
        frame.put_slice(&encoded);
        Ok(frame.freeze())
    }

    /// The client's answer for the upstream's: its messages as JSON (an array for a
    /// stream) when `grpc_status` is 0, else the mapped HTTP status and
    /// `{"code", "message"}`.
    pub fn response(
        &self,
        b: &Binding,
        grpc_status: Option<u32>,
        grpc_message: &str,
        body: &[u8],
    ) -> (StatusCode, Bytes) {
        match grpc_status {
            Some(0) => {}
            Some(code) => return error(code, grpc_message),
            None => return error(2, "the upstream's answer has no grpc-status"),
        }
        let desc = b.method.output();
        let mut out = Vec::new();
        let mut rest = body;
        while rest.len() >= 5 {
            if rest[0] != 0 {
                return error(12, "compressed gRPC messages are not transcoded");
            }
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let Some(m) = rest.get(5..5 + len) else {
                return error(13, "truncated gRPC message");
            };
            match DynamicMessage::decode(desc.clone(), m) {
                Ok(msg) => out.push(msg),
                Err(e) => return error(13, &format!("undecodable answer: {e}")),
            }
            rest = &rest[5 + len..];
        }
        let options = SerializeOptions::new().use_proto_field_name(self.proto_names);
        let json = |m: &DynamicMessage| -> Result<Vec<u8>, String> {
            let mut buf = Vec::new();
            let mut ser = serde_json::Serializer::new(&mut buf);
            m.serialize_with_options(&mut ser, &options)
                .map_err(|e| e.to_string())?;
            Ok(buf)
        };
        let body = if b.server_streaming() {
            let mut buf = b"[".to_vec();
            for (i, m) in out.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                match json(m) {
                    Ok(j) => buf.extend(j),
                    Err(e) => return error(13, &e),
                }
            }
            buf.push(b']');
            buf
        } else {
            match out.first().map(json) {
                Some(Ok(j)) => j,
                Some(Err(e)) => return error(13, &e),
                None => return error(13, "no message in the answer"),
            }
        };
        (StatusCode::OK, Bytes::from(body))
    }
}

/// JSON into a message of `desc`, with the field path of a problem.
pub(crate) fn from_json(
    desc: prost_reflect::MessageDescriptor,
    body: &[u8],
    prefix: Option<&str>,
) -> Result<DynamicMessage, BadRequest> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(&mut de, &mut track);
    let options = DeserializeOptions::new();
    match DynamicMessage::deserialize_with_options(desc, tracked, &options) {
        Ok(m) => de.end().map(|()| m).map_err(|e| BadRequest {
            field: None,
            message: format!("invalid JSON: {e}"),
        }),
        Err(e) => {
            let path = track.path().to_string();
            let field = match (prefix, path.as_str()) {
                (Some(p), "." | "") => Some(p.to_owned()),
                (Some(p), inner) => Some(format!("{p}.{inner}")),
                (None, "." | "") => None,
                (None, inner) => Some(inner.to_owned()),
            };
            Err(BadRequest {
                field,
                message: e.to_string(),
            })
        }
    }
}

/// The client's answer for a failed call: the standard gRPC-to-HTTP table.
fn error(code: u32, message: &str) -> (StatusCode, Bytes) {
    let status = match code {
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    };
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Bytes::from(body + "\n"),
    )
}

/// The bindings of one `google.api.http` rule (and its additional bindings).
fn annotated(
    m: &MethodDescriptor,
    rule: &DynamicMessage,
    out: &mut Vec<Binding>,
) -> Result<(), String> {
    let text = |name: &str| match rule.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let mut pattern = None;
    for (name, method) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if let Some(t) = text(name) {
            pattern = Some((method, t));
        }
    }
    if let Some(Value::Message(custom)) = rule.get_field_by_name("custom").as_deref() {
        let kind = custom.get_field_by_name("kind");
        let path = custom.get_field_by_name("path");
        if let (Some(Value::String(k)), Some(Value::String(p))) = (kind.as_deref(), path.as_deref())
        {
            if !k.is_empty() {
                let method = Method::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
                pattern = Some((method, p.clone()));
            }
        }
    }
    if let Some((http_method, t)) = pattern {
        out.push(binding(m, http_method, &t, text("body"))?);
    }
    if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").as_deref() {
        for r in more {
            if let Value::Message(r) = r {
                annotated(m, r, out)?;
            }
        }
    }
    Ok(())
}

fn mapped(pool: &DescriptorPool, m: &TranscodeMapping) -> Result<Binding, String> {
    let (service, name) = m
        .method
        .rsplit_once('/')
        .ok_or_else(|| format!("method \"{}\" must be pkg.Service/Method", m.method))?;
    let method = pool
        .get_service_by_name(service)
        .and_then(|s| s.methods().find(|x| x.name() == name))
        .ok_or_else(|| format!("no method \"{}\" in the descriptor set", m.method))?;
    let patterns: Vec<(Method, &String)> = [
        (Method::GET, &m.get),
        (Method::PUT, &m.put),
        (Method::POST, &m.post),
        (Method::DELETE, &m.delete),
        (Method::PATCH, &m.patch),
    ]
    .into_iter()
    .filter_map(|(hm, t)| t.as_ref().map(|t| (hm, t)))
    .collect();
    let [(http_method, t)] = patterns.as_slice() else {
        return Err("needs exactly one of get, put, post, delete, patch".into());
    };
    binding(&method, http_method.clone(), t, m.body.clone())
}

fn binding(
    m: &MethodDescriptor,
    http_method: Method,
    template: &str,
    body: Option<String>,
) -> Result<Binding, String> {
    if m.is_client_streaming() {
        return Err("client-streaming methods cannot be transcoded".into());
    }
    let template = Template::parse(template)?;
    let input = m.input();
    for f in template.fields() {
        fields::check_path(&input, f)?;
    }
    if let Some(b) = body.as_deref().filter(|b| *b != "*") {
        fields::check_path(&input, b)?;
    }
    let grpc_path = format!("/{}/{}", m.parent_service().full_name(), m.name())
        .parse()
        .map_err(|e| format!("{e}"))?;
    Ok(Binding {
        http_method,
        template,
        body,
        method: m.clone(),
        grpc_path,
    })
}
