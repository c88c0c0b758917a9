//! What the gateway does to a client's headers on their way upstream: hop-by-hop fields
//! out (and every field `Connection` names), X-Forwarded-For extended, Host checked.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse_proxy::fuzzing::headers(data);
});
