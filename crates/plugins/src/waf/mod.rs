//! The web application firewall: a native engine for the OWASP Core Rule Set's language
//! (SecLang), compiled at load, and the `waf` plugin that runs it on requests and responses.
//! bench/RESULTS.md ("Issue 22") and docs/plugins/waf.md say why a native engine:
//! libmodsecurity costs about 10 ms of CPU per clean 1 KiB JSON request.

mod actions;
pub mod body;
pub mod crs;
pub mod data;
mod deny_log;
pub mod engine;
pub mod eval;
pub mod macros;
pub mod operator;
pub mod pcre;
pub mod plugin;
pub mod rule;
pub mod ruleset;
pub mod seclang;
pub mod transform;
pub mod vars;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
