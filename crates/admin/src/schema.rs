//! Puts the config model's own JSON Schemas (schemars, derived on the model's types) into the
//! OpenAPI spec as the bodies of entity and config calls, so that clients and fuzzers see the
//! fields, types and name patterns the API really accepts.
//!
//! The model crate already derives `JsonSchema` for `gatehouse plugins schema` and has no
//! reason to know about utoipa; OpenAPI 3.1 speaks JSON Schema 2020-12, so the generated
//! schemas go in as they are, their `$ref`s pointed at `#/components/schemas/`.

use crate::Kind;
use gatehouse_model::{Config, Consumer, PluginInstance, Route, Service, Target, Upstream};
use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use jsonschema::Validator;
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The schema of a plugin instance as read back, with its id.
const PLUGIN_READ: &str = "PluginInstanceWithId";

/// The spec as JSON with the model's schemas in `components.schemas` and referenced from the
/// request and response bodies of `/config` and of each entity kind.
pub(crate) fn with_model_schemas(spec: &utoipa::openapi::OpenApi) -> Value {
    let mut spec = serde_json::to_value(spec).unwrap_or_else(|_| json!({}));
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = settings.into_generator();
    let kinds = [
        ("/config", None, generator.subschema_for::<Config>()),
        (
            "/routes",
            Some("/routes/{id}"),
            generator.subschema_for::<Route>(),
        ),
        (
            "/services",
            Some("/services/{id}"),
            generator.subschema_for::<Service>(),
        ),
        (
            "/upstreams",
            Some("/upstreams/{id}"),
            generator.subschema_for::<Upstream>(),
        ),
        (
            "/consumers",
            Some("/consumers/{id}"),
            generator.subschema_for::<Consumer>(),
        ),
        (
            "/plugins",
            Some("/plugins/{id}"),
            generator.subschema_for::<PluginInstance>(),
        ),
    ];
    let mut definitions = generator.take_definitions(true);
    // Plugin instances are read with their `id` (`kind:scope`), which is derived, not written.
    if let Some(mut read) = definitions.get("PluginInstance").cloned() {
        if let Some(props) = read.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert(
                "id".into(),
                json!({"type": "string", "readOnly": true,
                       "description": "The instance's kind and scope, e.g. `rate-limit:route=api`"}),
            );
        }
        definitions.insert(PLUGIN_READ.into(), read);
    }
    let schemas = spec
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut);
    match schemas {
        Some(schemas) => {
            for (name, schema) in definitions {
                schemas.entry(name).or_insert(schema);
            }
        }
        None => {
            if let Some(root) = spec.as_object_mut() {
                let components = root
                    .entry("components")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Some(c) = components.as_object_mut() {
                    c.insert("schemas".into(), Value::Object(definitions));
                }
            }
        }
    }
    let target = generator.subschema_for::<Target>().to_value();
    if let Some(paths) = spec.get_mut("paths") {
        let body = "/~1upstreams~1{id}~1targets/post/requestBody/content/application~1json/schema";
        let created =
            "/~1upstreams~1{id}~1targets/post/responses/201/content/application~1json/schema";
        let listed =
            "/~1upstreams~1{id}~1targets/get/responses/200/content/application~1json/schema";
        for (at, value) in [
            (body, target.clone()),
            (created, target.clone()),
            (
                listed,
                json!({
                    "allOf": [{"$ref": "#/components/schemas/Page"}],
                    "properties": {"items": {"type": "array", "items": target}},
                }),
            ),
        ] {
            if let Some(s) = paths.pointer_mut(at) {
                *s = value;
            }
        }
    }
    let Some(paths) = spec.get_mut("paths") else {
        return spec;
    };
    for (list, one, schema) in kinds {
        let schema = schema.to_value();
        let read = if list == "/plugins" {
            json!({"$ref": format!("#/components/schemas/{PLUGIN_READ}")})
        } else {
            schema.clone()
        };
        let mut set = |path: &str, method: &str, at: &str, value: Value| {
            let pointer = format!("/{}/{method}{at}", escape(path));
            if let Some(s) = paths.pointer_mut(&pointer) {
                *s = value;
            }
        };
        const BODY: &str = "/requestBody/content/application~1json/schema";
        let answer = |status: &str| format!("/responses/{status}/content/application~1json/schema");
        match one {
            // What is written is what is read; PUT /config answers `{revision}`.
            None => {
                set(list, "put", BODY, schema.clone());
                set(list, "get", &answer("200"), schema);
            }
            Some(one) => {
                set(list, "post", BODY, schema.clone());
                set(list, "post", &answer("201"), schema.clone());
                set(one, "put", BODY, schema.clone());
                set(one, "put", &answer("200"), schema.clone());
                set(one, "put", &answer("201"), schema.clone());
                set(one, "get", &answer("200"), read.clone());
                set(
                    list,
                    "get",
                    &answer("200"),
                    json!({
                        "allOf": [{"$ref": "#/components/schemas/Page"}],
                        "properties": {"items": {"type": "array", "items": read}},
                    }),
                );
            }
        }
    }
    spec
}

/// A path as one JSON-pointer token.
fn escape(path: &str) -> String {
    path.replace('~', "~0").replace('/', "~1")
}

/// Validators for the bodies of writes, built once from the same schemas the spec publishes.
struct Bodies {
    config: Validator,
    routes: Validator,
    services: Validator,
    upstreams: Validator,
    consumers: Validator,
    plugins: Validator,
    certificates: Validator,
    targets: Validator,
}

/// Which published schema a body must fit.
#[derive(Clone, Copy)]
pub(crate) enum Body {
    Config,
    Entity(Kind),
    Target,
}

static BODIES: OnceLock<Option<Bodies>> = OnceLock::new();

fn bodies() -> Option<&'static Bodies> {
    BODIES
        .get_or_init(|| {
            fn build<T: JsonSchema>() -> Option<Validator> {
                let schema = schemars::schema_for!(T).to_value();
                jsonschema::validator_for(&schema)
                    .map_err(|e| tracing::error!(%e, "a model schema does not compile"))
                    .ok()
            }
            Some(Bodies {
                config: build::<Config>()?,
                routes: build::<Route>()?,
                services: build::<Service>()?,
                upstreams: build::<Upstream>()?,
                consumers: build::<Consumer>()?,
                plugins: build::<PluginInstance>()?,
                certificates: build::<gatehouse_model::Certificate>()?,
                targets: build::<Target>()?,
            })
        })
        .as_ref()
}

/// Where `body` breaks the published schema `of`, as `(field path, why)` with paths as the
/// model names them (`routes.paths[0]`, `targets.weight`).
///
/// serde alone is laxer than the spec: a derived struct also accepts a JSON array of its
/// fields, so `"node": [null, null]` would parse. Checking the schema first makes the API
/// accept exactly what it documents.
pub(crate) fn violations(of: Body, body: &Value) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let Some(b) = bodies() else {
        return found;
    };
    let (validator, prefix) = match of {
        Body::Config => (&b.config, ""),
        Body::Entity(Kind::Routes) => (&b.routes, "routes"),
        Body::Entity(Kind::Services) => (&b.services, "services"),
        Body::Entity(Kind::Upstreams) => (&b.upstreams, "upstreams"),
        Body::Entity(Kind::Consumers) => (&b.consumers, "consumers"),
        Body::Entity(Kind::Plugins) => (&b.plugins, "plugins"),
        Body::Entity(Kind::Certificates) => (&b.certificates, "certificates"),
        Body::Target => (&b.targets, "targets"),
    };
    for e in validator.iter_errors(body) {
        let mut path = prefix.to_owned();
        for segment in e.instance_path().iter() {
            match segment {
                LocationSegment::Property(p) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&p);
                }
                LocationSegment::Index(i) => path.push_str(&format!("[{i}]")),
            }
        }
        // An unknown key is named by its own path, as the model's parser names it.
        if let ValidationErrorKind::AdditionalProperties { unexpected } = e.kind() {
            for key in unexpected {
                let at = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                found.insert(at, format!("unknown field `{key}`"));
            }
            continue;
        }
        if path.is_empty() {
            path.push('.');
        }
        found
            .entry(path)
            .and_modify(|m: &mut String| {
                m.push_str("; ");
                m.push_str(&e.to_string());
            })
            .or_insert_with(|| e.to_string());
    }
    found
}
