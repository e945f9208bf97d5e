//! Robustness of the CSR parser: thousands of mutated CSRs (bit flips, truncations, length
//! bytes rewritten, random splices) must each give a typed error or a valid parse, never a
//! panic, and a mutated CSR that still parses must still carry a valid self-signature.

use ca_core::{csr, Error};
use rand::{Rng, SeedableRng};

fn sample_csr() -> Vec<u8> {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["a.test".to_string(), "b.test".to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "a.test");
    params.serialize_request(&kp).unwrap().der().to_vec()
}

#[test]
fn mutated_csrs_never_panic_and_never_pass_with_a_broken_signature() {
    let good = sample_csr();
    assert!(csr::parse_der(&good).is_ok());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x05ee_dc5e);
    let mut parsed_ok = 0;
    for i in 0..5000 {
        let mut m = good.clone();
        match i % 4 {
            0 => {
                let pos = rng.gen_range(0..m.len());
                m[pos] ^= 1 << rng.gen_range(0..8);
            }
            1 => m.truncate(rng.gen_range(0..m.len())),
            2 => {
                let pos = rng.gen_range(0..m.len());
                m[pos] = rng.gen();
            }
            _ => {
                let at = rng.gen_range(0..m.len());
                let junk: Vec<u8> = (0..rng.gen_range(1..64)).map(|_| rng.gen()).collect();
                m.splice(at..at, junk);
            }
        }
        let r = std::panic::catch_unwind(|| csr::parse_der(&m));
        let r =
            r.unwrap_or_else(|_| panic!("parser panicked on mutation {i}: {}", hex::encode(&m)));
        match r {
            Ok(req) => {
                // Only mutations outside the signed data can still parse (e.g. none): the key
                // and names must then be the original ones.
                parsed_ok += 1;
                assert_eq!(req.common_name.as_deref(), Some("a.test"));
            }
            Err(e) => assert!(
                matches!(
                    e,
                    Error::MalformedCsr(_)
                        | Error::CsrSignature
                        | Error::WeakKey(_)
                        | Error::NameNotAllowed { .. }
                ),
                "unexpected error class for mutation {i}: {e:?}"
            ),
        }
    }
    assert!(
        parsed_ok < 50,
        "{parsed_ok} mutated CSRs parsed; signature checks are not biting"
    );
}

#[test]
fn pem_input_is_accepted_and_wrong_pem_label_refused() {
    let good = sample_csr();
    let pem = ca_core::x509::pem_encode("CERTIFICATE REQUEST", &good);
    assert!(csr::parse_pem_or_der(pem.as_bytes()).is_ok());
    let wrong = ca_core::x509::pem_encode("CERTIFICATE", &good);
    assert!(
        matches!(csr::parse_pem_or_der(wrong.as_bytes()), Err(Error::MalformedCsr(m)) if m.contains("label"))
    );
}
