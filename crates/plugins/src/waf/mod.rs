//! The web application firewall (issue 22), being built: so far the pieces of a native
//! engine for the OWASP Core Rule Set's language (SecLang): its reader, its transformations,
//! its operators compiled at load, and the translation of its PCRE patterns for `regex`.
//! Not yet wired to requests.
//! bench/RESULTS.md ("Issue 22 groundwork") says why a native engine: libmodsecurity costs
//! about 10 ms of CPU per clean 1 KiB JSON request.

pub mod operator;
pub mod pcre;
pub mod seclang;
pub mod transform;
