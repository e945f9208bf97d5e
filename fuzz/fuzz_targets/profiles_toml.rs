//! Fuzz profile configuration parsing and validation: it must never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = toml::from_str::<ca_core::profile::Profiles>(text) {
            let _ = p.validate();
        }
    }
});
