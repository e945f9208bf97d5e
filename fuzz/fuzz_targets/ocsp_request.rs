//! Fuzz the OCSP request parser: it must never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ca_core::ocsp::parse_request(data, 16);
});
