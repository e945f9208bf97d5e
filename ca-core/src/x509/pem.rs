//! PEM (RFC 7468): one encoder, one parser.
//!
//! The encoder writes what RFC 7468 3 asks of generators: 64-character base64 lines, LF line
//! ends, no headers. The parser is the lax one RFC 7468 3 allows parsers to be (whitespace
//! anywhere in the base64 text, explanatory text around blocks), as OpenSSL and rustls are, and
//! strict where it matters: the END label must repeat the BEGIN label, the base64 must be
//! canonical, and a block without its END line is an error.

use base64::Engine;

const BEGIN: &[u8] = b"-----BEGIN ";
const DASHES: &[u8] = b"-----";

pub use crate::error::PemError;

/// PEM text for DER: `-----BEGIN {label}-----`, base64 in 64-character lines,
/// `-----END {label}-----`, LF line ends. `label` is one of RFC 7468's labels
/// (`CERTIFICATE`, `PUBLIC KEY`, `X509 CRL`, ...).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 34);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // base64 output is ASCII, so every 64-byte chunk is a char boundary.
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// The DER of the first PEM block of `text`, which must be labelled `label`. For files that hold
/// one object (a certificate, a public key): a file whose first block is something else is
/// refused, not searched.
pub fn pem_decode(text: &[u8], label: &str) -> Result<Vec<u8>, PemError> {
    let mut blocks = Blocks { rest: text };
    match blocks.next() {
        None => Err(PemError::NoBlock {
            expected: label.to_string(),
        }),
        Some(block) => {
            let block = block?;
            if block.label != label.as_bytes() {
                return Err(PemError::WrongLabel {
                    found: String::from_utf8_lossy(block.label).into_owned(),
                    expected: label.to_string(),
                });
            }
            block.decode()
        }
    }
}

/// The DER of every PEM block of `text` labelled `label`, in order; blocks with other labels are
/// skipped (a certificate file may also hold its key), but must be complete. No block with the
/// label is an empty list: the caller says whether that is an error.
pub fn pem_decode_all(text: &[u8], label: &str) -> Result<Vec<Vec<u8>>, PemError> {
    let mut out = Vec::new();
    for block in (Blocks { rest: text }) {
        let block = block?;
        if block.label == label.as_bytes() {
            out.push(block.decode()?);
        }
    }
    Ok(out)
}

/// One `BEGIN`/`END` block, not yet decoded.
struct Block<'a> {
    label: &'a [u8],
    body: &'a [u8],
}

impl Block<'_> {
    fn decode(&self) -> Result<Vec<u8>, PemError> {
        let b64: Vec<u8> = self
            .body
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| PemError::Base64 {
                label: String::from_utf8_lossy(self.label).into_owned(),
                reason: e.to_string(),
            })
    }
}

/// The blocks of a PEM text, in order; an incomplete block ends the iteration with an error.
struct Blocks<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Blocks<'a> {
    type Item = Result<Block<'a>, PemError>;

    fn next(&mut self) -> Option<Self::Item> {
        let start = find(self.rest, BEGIN)? + BEGIN.len();
        let after_begin = &self.rest[start..];
        let incomplete = |label: &[u8]| PemError::Incomplete {
            label: String::from_utf8_lossy(label).into_owned(),
        };
        // The label runs to the closing dashes of the BEGIN line, on that line.
        let line_end = after_begin
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')
            .unwrap_or(after_begin.len());
        let Some(label_len) = find(&after_begin[..line_end], DASHES) else {
            self.rest = &[];
            return Some(Err(incomplete(&after_begin[..line_end])));
        };
        let label = &after_begin[..label_len];
        let body_start = label_len + DASHES.len();
        let mut end_line = b"-----END ".to_vec();
        end_line.extend_from_slice(label);
        end_line.extend_from_slice(DASHES);
        let Some(body_len) = find(&after_begin[body_start..], &end_line) else {
            self.rest = &[];
            return Some(Err(incomplete(label)));
        };
        let body = &after_begin[body_start..body_start + body_len];
        if find(body, BEGIN).is_some() {
            // A BEGIN line before this block's END: the block was cut off.
            self.rest = &[];
            return Some(Err(incomplete(label)));
        }
        self.rest = &after_begin[body_start + body_len + end_line.len()..];
        Some(Ok(Block { label, body }))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
