//! OpenSC's `pkcs11-spy` for tests: where it is installed, and reading its call log.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// Where distributions install OpenSC's PKCS#11 spy (`$PKCS11_SPY_MODULE` overrides).
const SPY_PATHS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/pkcs11-spy.so",
    "/usr/lib64/pkcs11/pkcs11-spy.so",
    "/usr/lib/pkcs11/pkcs11-spy.so",
    "/usr/local/lib/pkcs11/pkcs11-spy.so",
    "/opt/homebrew/lib/pkcs11/pkcs11-spy.so",
];

pub fn spy_module() -> PathBuf {
    if let Some(p) = std::env::var_os("PKCS11_SPY_MODULE") {
        return PathBuf::from(p);
    }
    SPY_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "OpenSC's pkcs11-spy.so not found in {SPY_PATHS:?}: install opensc \
                 (apt-get install opensc / dnf install opensc) or set PKCS11_SPY_MODULE"
            )
        })
}

/// PKCS#11 calls in the spy's log, by name (`N: C_Sign` lines).
pub fn calls(log: &Path, name: &str) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.split_once(": ")
                .is_some_and(|(n, f)| n.chars().all(|c| c.is_ascii_digit()) && f.trim() == name)
        })
        .count()
}

/// The PKCS#11 function names in the spy's log, in call order.
pub fn call_sequence(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (n, f) = l.split_once(": ")?;
            (n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() && f.trim().starts_with("C_"))
                .then(|| f.trim().to_string())
        })
        .collect()
}
