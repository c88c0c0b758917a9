//! The own HTTP/1.1 server's request head parser: any bytes give a head, "more", or a
//! refusal with a 4xx status; never a panic. A parsed head's framing is one of the three
//! the server reads, and never both Content-Length and Transfer-Encoding.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse_proxy::fuzzing::head(data);
});
