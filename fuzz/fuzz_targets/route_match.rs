//! Route matching and path normalisation: a fixed table of every route kind (exact,
//! prefix, RESTful template, regex, host wildcard, header and method conditions) against
//! any method, host, path and query.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse_proxy::fuzzing::route(data);
});
