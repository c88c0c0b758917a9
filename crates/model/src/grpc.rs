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
