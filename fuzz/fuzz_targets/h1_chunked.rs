//! The own server's request body decoder over chunked (and Content-Length) framing: any
//! bytes decode, fail cleanly, or run out; the data decoded is never more than was sent.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse_proxy::fuzzing::chunked(data);
});
