use super::*;
use chrono::{Duration, TimeZone, Utc};
use der::{Decode, Encode};

/// RFC 5280 4.1.2.2 and X.690 8.3.2: the contents of a positive, non-zero, minimally encoded
/// INTEGER of at most 20 octets.
fn conforming_serial(s: &[u8]) -> bool {
    let minimal = match s {
        [] => false,
        [0, next, ..] => next & 0x80 != 0,
        _ => true,
    };
    minimal && s.len() <= 20 && s[0] & 0x80 == 0 && s.iter().any(|b| *b != 0)
}

#[test]
fn serials_are_positive_minimal_and_sixteen_octets() {
    for _ in 0..2000 {
        let s = random_serial();
        assert_eq!(s.len(), SERIAL_LEN);
        assert!(conforming_serial(&s), "{s:02x?}");
        assert!(s[0] != 0 && s[0] & 0x80 == 0, "{s:02x?}");
        // DER round trip: the INTEGER keeps exactly these contents (no sign octet added).
        let int = der::asn1::Int::new(&s).unwrap();
        let back = der::asn1::Int::from_der(&int.to_der().unwrap()).unwrap();
        assert_eq!(back.as_bytes(), s.as_slice());
        // rcgen writes it as given.
        assert_eq!(rcgen::SerialNumber::from_slice(&s).as_ref(), s.as_slice());
    }
}

#[test]
fn the_serial_check_of_these_tests_refuses_each_bad_class() {
    for (bad, why) in [
        (vec![], "empty"),
        (vec![0x00], "zero"),
        (vec![0x00, 0x00], "zero, not minimal"),
        (vec![0x80, 0x01], "negative"),
        (vec![0x00, 0x01], "leading zero octet"),
        (vec![0x01; 21], "over 20 octets"),
    ] {
        assert!(!conforming_serial(&bad), "{why}");
    }
    assert!(conforming_serial(&[0x00, 0x80]));
    assert!(conforming_serial(&[0x7f; 20]));
}

/// CA/B BR 7.1 asks for 64 bits of CSPRNG output. Over many draws every one of the 127 bits
/// below the sign bit varies, each is set about half the time (within 6 sigma), and no serial
/// repeats: far more than 64 bits are random.
#[test]
fn serials_carry_more_than_64_random_bits() {
    const DRAWS: usize = 4096;
    let mut ones = [0usize; SERIAL_LEN * 8];
    let mut seen = std::collections::HashSet::new();
    for _ in 0..DRAWS {
        let s = random_serial();
        for (i, count) in ones.iter_mut().enumerate() {
            *count += usize::from(s[i / 8] >> (7 - i % 8) & 1);
        }
        assert!(seen.insert(s), "a serial repeated");
    }
    assert_eq!(ones[0], 0, "the sign bit is always clear");
    // sigma = sqrt(DRAWS)/2 = 32; the first octet's bits lean slightly to 1 (zero is redrawn).
    let (lo, hi) = (DRAWS / 2 - 6 * 32, DRAWS / 2 + 6 * 32);
    let random_bits = ones[1..].iter().filter(|n| (lo..=hi).contains(*n)).count();
    assert_eq!(random_bits, SERIAL_LEN * 8 - 1, "{ones:?}");
    assert!(random_bits >= 64);
}

fn sample_der() -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(vec!["pem.test".to_string()]).unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

#[test]
fn pem_round_trips_and_matches_an_independent_codec() {
    let der = sample_der();
    let text = pem_encode("CERTIFICATE", &der);
    // RFC 7468 3: 64-character lines, LF.
    assert!(text.lines().all(|l| l.len() <= 64));
    assert!(text.ends_with("-----END CERTIFICATE-----\n"));
    assert_eq!(pem_decode(text.as_bytes(), "CERTIFICATE").unwrap(), der);
    // der's strict RFC 7468 codec agrees in both directions.
    assert_eq!(
        der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &der).unwrap(),
        text
    );
    assert_eq!(der::pem::decode_vec(text.as_bytes()).unwrap().1, der);
    // And so does rustls' parser.
    use rustls::pki_types::pem::PemObject;
    let theirs = rustls::pki_types::CertificateDer::from_pem_slice(text.as_bytes()).unwrap();
    assert_eq!(theirs.as_ref(), der.as_slice());
    for len in [0, 1, 2, 3, 47, 48, 49, 95, 96, 97] {
        let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let text = pem_encode("PUBLIC KEY", &bytes);
        assert_eq!(pem_decode(text.as_bytes(), "PUBLIC KEY").unwrap(), bytes);
        if len > 0 {
            // der's decoder refuses an empty body; ours reads it as empty DER.
            assert_eq!(der::pem::decode_vec(text.as_bytes()).unwrap().1, bytes);
        }
    }
}

#[test]
fn pem_parser_is_lax_about_layout() {
    let der = sample_der();
    let text = pem_encode("CERTIFICATE", &der);
    let crlf = text.replace('\n', "\r\n");
    let b64 = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    let one_line = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----");
    let narrow: String = b64
        .as_bytes()
        .chunks(76)
        .map(|c| format!("  {}\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let wide = format!("-----BEGIN CERTIFICATE-----\n{narrow}-----END CERTIFICATE-----\n");
    let explained = format!("Subject: CN=pem.test\n{text}trailing words\n");
    for ok in [crlf, one_line, wide, explained] {
        assert_eq!(
            pem_decode(ok.as_bytes(), "CERTIFICATE").unwrap(),
            der,
            "{ok}"
        );
    }
}

#[test]
fn pem_decode_all_keeps_order_and_skips_other_labels() {
    let (a, b) = (sample_der(), sample_der());
    let text = pem_encode("CERTIFICATE", &a)
        + &pem_encode("PRIVATE KEY", &[1, 2, 3])
        + "between blocks\n"
        + &pem_encode("CERTIFICATE", &b);
    assert_eq!(
        pem_decode_all(text.as_bytes(), "CERTIFICATE").unwrap(),
        vec![a.clone(), b]
    );
    assert!(pem_decode_all(b"no pem here", "CERTIFICATE")
        .unwrap()
        .is_empty());
    // pem_decode reads the first block only.
    assert_eq!(pem_decode(text.as_bytes(), "CERTIFICATE").unwrap(), a);
}

#[test]
fn pem_refusals_name_the_class() {
    let good = pem_encode("CERTIFICATE", &[0x30, 0x03, 0x02, 0x01, 0x01]);
    let key_first = pem_encode("PUBLIC KEY", &[1]) + &good;
    let mismatched = good.replace("END CERTIFICATE", "END PUBLIC KEY");
    let unterminated = good.replace("-----END CERTIFICATE-----\n", "");
    let cut = unterminated.clone() + &good;
    let bad_char = good.replace("MAMCAQE", "MAM*AQE");
    let bad_padding = good.replace("MAMCAQE=", "MAMCAQE");
    let non_canonical = good.replace("MAMCAQE=", "MAMCAQF=");
    let unclosed_begin = "-----BEGIN CERTIFICATE\nMAMCAQE=\n-----END CERTIFICATE-----\n";
    let cert = || "CERTIFICATE".to_string();
    let incomplete = || PemError::Incomplete { label: cert() };
    let rows: Vec<(&[u8], PemError)> = vec![
        (b"", PemError::NoBlock { expected: cert() }),
        (b"MAMCAQE=", PemError::NoBlock { expected: cert() }),
        (
            key_first.as_bytes(),
            PemError::WrongLabel {
                found: "PUBLIC KEY".into(),
                expected: cert(),
            },
        ),
        (mismatched.as_bytes(), incomplete()),
        (unterminated.as_bytes(), incomplete()),
        (cut.as_bytes(), incomplete()),
        (
            unclosed_begin.as_bytes(),
            PemError::Incomplete {
                label: "CERTIFICATE".into(),
            },
        ),
    ];
    for (text, want) in rows {
        assert_eq!(
            pem_decode(text, "CERTIFICATE").unwrap_err(),
            want,
            "{}",
            String::from_utf8_lossy(text)
        );
    }
    for text in [bad_char, bad_padding, non_canonical] {
        assert!(
            matches!(
                pem_decode(text.as_bytes(), "CERTIFICATE"),
                Err(PemError::Base64 { ref label, .. }) if label == "CERTIFICATE"
            ),
            "{text}"
        );
        assert!(pem_decode_all(text.as_bytes(), "CERTIFICATE").is_err());
    }
    // A broken block of another label is still an error in a list: nothing is silently lost.
    let broken_key = good.clone() + "-----BEGIN PRIVATE KEY-----\nAAAA\n";
    assert_eq!(
        pem_decode_all(broken_key.as_bytes(), "CERTIFICATE").unwrap_err(),
        PemError::Incomplete {
            label: "PRIVATE KEY".into()
        }
    );
}

#[test]
fn key_identifier_is_rfc7093_method_1_and_rcgen_writes_it() {
    use sha2::Digest;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let id = key_identifier(&spki).unwrap();
    assert_eq!(id.len(), 20);
    assert_eq!(id, sha2::Sha256::digest(key.public_key_raw())[..20]);
    let mut params = rcgen::CertificateParams::new(vec!["ski.test".to_string()]).unwrap();
    // rcgen writes a subjectKeyIdentifier in CA certificates.
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_identifier_method = key_id_method(&spki).unwrap();
    let der = params.self_signed(&key).unwrap().der().to_vec();
    let cert = x509_cert::Certificate::from_der(&der).unwrap();
    let (_, ski) = cert
        .tbs_certificate
        .get::<x509_cert::ext::pkix::SubjectKeyIdentifier>()
        .unwrap()
        .unwrap();
    assert_eq!(ski.0.as_bytes(), id.as_slice());
    assert!(key_identifier(b"\x30\x00").is_err());
}

#[test]
fn validity_reads_the_certificate_window() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["v.test".to_string()]).unwrap();
    let nb = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    let na = Utc.with_ymd_and_hms(2051, 6, 7, 8, 9, 10).unwrap();
    params.not_before = crate::clock::to_offset(nb);
    params.not_after = crate::clock::to_offset(na);
    let der = params.self_signed(&key).unwrap().der().to_vec();
    assert_eq!(validity(&der).unwrap(), (nb, na));
    assert!(validity(&der[..der.len() - 1]).is_err());
}

#[test]
fn issuance_window_backdates_and_stays_inside_the_issuer() {
    let t = |h: i64| Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::hours(h);
    let issuer = (t(0), t(1000));
    let (backdate, life) = (Duration::minutes(5), Duration::hours(24));
    // Plain case: backdated, full lifetime.
    assert_eq!(
        issuance_window(t(10), backdate, life, issuer).unwrap(),
        (t(10) - backdate, t(34))
    );
    // Backdating stops at the issuer's notBefore.
    assert_eq!(
        issuance_window(t(0), backdate, life, issuer).unwrap(),
        (t(0), t(24))
    );
    // The lifetime stops at the issuer's notAfter.
    assert_eq!(
        issuance_window(t(990), backdate, life, issuer).unwrap(),
        (t(990) - backdate, t(1000))
    );
    // An expired issuer issues nothing, at its notAfter already.
    for now in [t(1000), t(2000)] {
        assert!(matches!(
            issuance_window(now, backdate, life, issuer),
            Err(crate::Error::IssuerExpired { not_after }) if not_after == t(1000)
        ));
    }
}
