//! Consumers (who calls the gateway, with the credentials they prove it with) and the headers
//! that tell an upstream who the caller was.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    #[schemars(regex(pattern = r"^[A-Za-z0-9._~-]{1,128}$"))]
    pub username: String,
    /// The caller's id in another system (a user id): sent upstream as `X-Consumer-Id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_id: Option<String>,
    /// Free labels, for operators (listing, filtering); the gateway gives them no meaning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// What the `acl` plugin allows or denies by, sent upstream as `X-Consumer-Groups`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// How the consumer proves who it is: each item names the plugin kind that checks it
    /// (`{type: key-auth, key: ...}`); the rest of the item is that kind's shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<CredentialSpec>,
}

/// One credential of a consumer: `type` is the plugin kind that checks it, the other fields
/// are that kind's (checked when the config is compiled, where the kinds are known).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CredentialSpec {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl CredentialSpec {
    /// The kind's fields as one JSON object (what the kind parses).
    pub fn fields_value(&self) -> serde_json::Value {
        serde_json::Value::Object(self.fields.clone())
    }
}

/// Header names for the identified caller; an empty name leaves that header out. The
/// defaults are Kong's names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerHeaders {
    pub username: String,
    /// The consumer's `custom_id`, or its username when it has none.
    pub id: String,
    /// The consumer's groups, comma-separated.
    pub groups: String,
    /// Which credential identified the caller (its label, never a secret).
    pub credential: String,
    /// `true` when the request was let through as the `anonymous` consumer.
    pub anonymous: String,
}

impl Default for ConsumerHeaders {
    fn default() -> Self {
        Self {
            username: "X-Consumer-Username".into(),
            id: "X-Consumer-Id".into(),
            groups: "X-Consumer-Groups".into(),
            credential: "X-Credential-Identifier".into(),
            anonymous: "X-Anonymous-Consumer".into(),
        }
    }
}
