//! Allow and deny plugins: by consumer group (`acl`), client address (`ip-restriction`),
//! `User-Agent` and `Referer` (`ua-restriction`, `referer-restriction`), and `cors`, which
//! decides which browser origins may call; plus the exact-or-regex lists they share.

pub mod acl;
pub mod bans;
pub mod cors;
pub mod header_restriction;
pub mod ip_restriction;
pub mod patterns;
pub mod referer_restriction;
pub mod ua_restriction;

use gatehouse_plugin_api::{json_response, Flow};
use http::{HeaderMap, StatusCode};

/// The answer a restriction plugin refuses with.
pub fn refuse(status: StatusCode, message: &str) -> Flow {
    Flow::Respond(json_response(status, message, HeaderMap::new()))
}
