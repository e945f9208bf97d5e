//! Fuzz the PKCS#10 parser (DER and PEM): it must never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ca_core::csr::parse_pem_or_der(data);
});
