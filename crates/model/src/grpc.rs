//! gRPC in the config: status codes by their spec names (for retry conditions).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A gRPC status code, by its name in the gRPC spec in snake case (`unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// Its number on the wire (`grpc-status`).
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A route that speaks HTTP/JSON to its clients and gRPC to its upstream: each request is
/// mapped to a gRPC method by the methods' `google.api.http` annotations or `mappings`, its
/// JSON (with path parameters and query arguments) made the request message, and the answer
/// made JSON again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcTranscode {
    /// The path of a `FileDescriptorSet` file (`protoc --include_imports
    /// --descriptor_set_out=...`). Exactly one of `descriptor` and `descriptor_base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor: Option<String>,
    /// The same set inline, base64: what a store-mode gateway keeps in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor_base64: Option<String>,
    /// The services served, by full name (`pkg.Service`). Empty: every service in the set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Mappings beside the annotations (for methods that have none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mappings: Vec<TranscodeMapping>,
    /// Answer with the proto field names (`page_size`) rather than lowerCamelCase
    /// (`pageSize`); requests accept both.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proto_field_names: bool,
    /// The largest JSON request body and gRPC answer read.
    #[serde(default = "default_transcode_max")]
    #[schemars(with = "String")]
    pub max_body: bytesize::ByteSize,
}

fn default_transcode_max() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(4)
}

/// One HTTP mapping of a gRPC method, as a `google.api.http` annotation would give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TranscodeMapping {
    /// `pkg.Service/Method`.
    pub method: String,
    /// The HTTP method and path template (`/v1/{name=shelves/*}`): exactly one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub put: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Where the JSON body goes: `*` (the whole request message) or one field's name.
    /// None: no body; fields come from the path and the query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}
