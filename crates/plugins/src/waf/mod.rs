//! The web application firewall (issue 22), being built: so far the reader of the OWASP
//! Core Rule Set's language (SecLang) and its transformations, which the native rule engine
//! will compile at load.
//! bench/RESULTS.md ("Issue 22 groundwork") says why a native engine: libmodsecurity costs
//! about 10 ms of CPU per clean 1 KiB JSON request.

pub mod pcre;
pub mod seclang;
pub mod transform;
