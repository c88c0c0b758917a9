//! Config parsing and validation: any text is a config or a list of errors naming fields.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = gatehouse_model::parse_yaml(text) {
            let _ = gatehouse_model::validate(&config);
        }
    }
});
