//! Gatehouse's built-in plugins and the registry of them. Adding a plugin is one new file
//! (or folder) here and one line in [`registry`].

use gatehouse_plugin_api::Registry;
use std::sync::OnceLock;

pub mod access;
pub mod adaptive_shed;
pub mod auth;
pub mod cc;
pub mod concurrency_limit;
mod cpu;
pub mod key;
pub mod rate_limit;
pub mod release;
pub mod request_size_limit;
pub mod strikes;
pub mod waf;

#[cfg(test)]
mod test_support;

/// Every plugin kind the gateway ships, by name.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        Registry::new(&[
            &rate_limit::Kind,
            &concurrency_limit::Kind,
            &request_size_limit::Kind,
            &waf::plugin::Kind,
            &adaptive_shed::Kind,
            &auth::key_auth::Kind,
            &auth::basic_auth::Kind,
            &auth::jwt_auth::Kind,
            &auth::hmac_auth::Kind,
            &auth::forward_auth::Kind,
            &auth::openid_connect::Kind,
            &access::acl::Kind,
            &cc::Kind,
            &access::bans::Kind,
            &access::ip_restriction::Kind,
            &access::ua_restriction::Kind,
            &access::referer_restriction::Kind,
            &access::cors::Kind,
            &release::traffic_split::Kind,
            &release::traffic_mirror::Kind,
            &release::transform::RequestKind,
            &release::transform::ResponseKind,
        ])
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    #[test]
    fn names_are_unique_and_schemas_are_objects() {
        let mut names: Vec<_> = super::registry().kinds().map(|k| k.name()).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len(), "duplicate plugin names");
        for k in super::registry().kinds() {
            let schema = k.schema();
            assert_eq!(schema["type"], "object", "{}", k.name());
            assert!(schema["properties"].is_object(), "{}", k.name());
        }
    }
}
