use super::*;

#[test]
fn serial_magnitude_strips_leading_zeros_only() {
    assert_eq!(serial_magnitude(&[0, 0x80, 1]), &[0x80, 1]);
    assert_eq!(serial_magnitude(&[0x01, 0]), &[0x01, 0]);
    assert_eq!(serial_magnitude(&[0, 0]), &[0]);
    assert_eq!(serial_magnitude(&[]), &[] as &[u8]);
}

#[test]
fn hash_algorithms_round_trip_their_oids() {
    for a in HashAlg::ALL {
        assert_eq!(HashAlg::from_oid(&a.oid()), Some(a));
    }
    assert_eq!(HashAlg::Sha1.digest(b"").len(), 20);
    assert_eq!(HashAlg::Sha512.digest(b"").len(), 64);
}

#[test]
fn garbage_is_malformed() {
    for bad in [&b""[..], b"\x30", b"\x30\x03\x02\x01\x01", b"hello world"] {
        assert!(
            matches!(parse_request(bad, 4), Err(OcspRequestError::Der(_))),
            "{bad:?}"
        );
    }
}
