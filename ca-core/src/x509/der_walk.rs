//! Walking DER without decoding it: one element at a time, borrowed from the input. The CRL
//! check (`crl_check.rs`), which counts a CRL's entries without decoding them, and the OCSP
//! read-back (`ocsp/responder/single.rs`), which finds one serial's answer in a group
//! response, both read this way; the CRL encoder (`crl/encode.rs`) writes with the same tags.

/// INTEGER.
pub(crate) const INTEGER: u8 = 0x02;
/// BIT STRING.
pub(crate) const BIT_STRING: u8 = 0x03;
/// OCTET STRING.
#[cfg_attr(not(feature = "store"), allow(dead_code))]
pub(crate) const OCTET_STRING: u8 = 0x04;
/// ENUMERATED.
#[cfg_attr(not(feature = "store"), allow(dead_code))]
pub(crate) const ENUMERATED: u8 = 0x0a;
/// UTCTime.
pub(crate) const UTC_TIME: u8 = 0x17;
/// GeneralizedTime.
pub(crate) const GENERALIZED_TIME: u8 = 0x18;
/// SEQUENCE (constructed).
pub(crate) const SEQUENCE: u8 = 0x30;
/// `[0]` constructed (EXPLICIT `[0]`: a CRL's extensions, OCSP's responseBytes, ...).
pub(crate) const CTX0: u8 = 0xa0;

/// One DER element.
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    /// The whole element (header and contents).
    pub(crate) whole: &'a [u8],
    pub(crate) contents: &'a [u8],
    /// What follows it.
    pub(crate) after: &'a [u8],
}

/// The first element of `b`. Single-byte tags and definite lengths of at most four bytes
/// (DER); `None` for anything else or for a length that runs past the input.
pub(crate) fn tlv(b: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, rest) = b.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        (
            bytes.iter().fold(0usize, |l, b| (l << 8) | usize::from(*b)),
            rest,
        )
    };
    if rest.len() < len {
        return None;
    }
    let header = b.len() - rest.len();
    let (contents, after) = rest.split_at(len);
    Some(Tlv {
        tag,
        whole: &b[..header + len],
        contents,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_indefinite_and_multi_octet_tags_are_refused() {
        assert!(tlv(&[0x30, 0x03, 0x02, 0x01]).is_none());
        assert!(tlv(&[0x30, 0x80, 0x00, 0x00]).is_none());
        assert!(tlv(&[0x30]).is_none());
        assert!(tlv(&[0x1f, 0x01, 0x00]).is_none());
        let t = tlv(&[0x30, 0x81, 0x01, 0x05, 0x02, 0x00]).unwrap();
        assert_eq!((t.tag, t.contents, t.whole.len()), (0x30, &[0x05][..], 4));
        assert_eq!(t.after, [0x02, 0x00]);
    }
}
