//! Release plugins: `traffic-split` (canary, gray, A/B, colouring), `traffic-mirror` (copies
//! with response diffing), and the request and response transformers.

pub mod conditions;
pub mod traffic_mirror;
pub mod traffic_split;
pub mod transform;
