//! Gatehouse's runtime: the configuration compiled into an immutable [`Snapshot`] that every
//! request reads (router, services, upstreams with their balancers and connection pools).

pub mod router;

pub use router::{RequestView, RouteMatch, Router};
pub mod access_log;
pub mod balance;
pub mod breaker;
pub mod connector;
pub mod consumers;
pub mod debug;
pub mod discovery;
pub mod downstream;
pub mod explain;
pub mod fallback;
pub mod h1;
pub mod health;
pub mod path;
pub mod plugins;
pub mod retry;
pub mod snapshot;
pub mod tee;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod transcode;
pub mod upstream;
pub mod window;

pub use snapshot::{parse_config, parse_config_for_node, NodeContext, Snapshot};
