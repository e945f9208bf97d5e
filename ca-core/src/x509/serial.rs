//! Certificate serial numbers.

use rand::RngCore;

/// Length in octets of every serial this CA and its ceremonies assign.
pub const SERIAL_LEN: usize = 16;

/// A fresh certificate serial number: the contents of a DER INTEGER, [`SERIAL_LEN`] octets.
///
/// The one rule, for leaves, CA certificates and ceremonies alike:
/// - 16 octets from the operating system's CSPRNG (`getrandom`), with only the top bit cleared
///   and an all-zero first octet redrawn: 127 bits minus a 1/128 rejection, far above the
///   64 bits of CSPRNG output CA/B Forum Baseline Requirements 7.1 asks for;
/// - positive (top bit clear) and non-zero, RFC 5280 4.1.2.2;
/// - DER-minimal (first octet neither 0x00 nor sign-extended), so the encoded INTEGER is
///   exactly 16 content octets, within the 20 octets RFC 5280 4.1.2.2 allows.
///
/// Uniqueness is the store's job (an insert that refuses a known serial); a collision of 127
/// random bits means the random source is broken.
///
/// Panics only if the operating system's random source fails (rand's `OsRng`); Linux's
/// `getrandom(2)` does not fail once the kernel pool is seeded, and no serial is better than a
/// predictable one.
pub fn random_serial() -> Vec<u8> {
    let mut s = [0u8; SERIAL_LEN];
    loop {
        rand::rngs::OsRng.fill_bytes(&mut s);
        s[0] &= 0x7f;
        if s[0] != 0 {
            return s.to_vec();
        }
    }
}
