//! The few HSM operations ceremonies need beyond ca-core's token API: opening a token with a
//! given PIN source, setting the user PIN as the security officer, and checking key protection.

use crate::error::Error;
use crate::plan::TokenRef;
use crate::transcript::{KeyFact, TokenId};
use ca_core::signer::pkcs11::{open_module, HsmConfig, PinSource, Token};
use ca_core::signer::{sha256_hex, KeyAlgorithm};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

/// Open a token (loads the module; does not log in).
pub fn open(token: &TokenRef, pin: PinSource) -> Result<Token, Error> {
    let config = HsmConfig {
        module: Some(token.module.clone()),
        token_label: token.label.clone(),
        pin,
        sessions: 1,
    };
    config.open().map_err(Error::core("opening the HSM token"))
}

/// Label and serial of an opened token (reads token info; no login).
pub fn identify(token: &Token) -> Result<TokenId, Error> {
    let serial = token
        .serial_number()
        .map_err(Error::core("reading the token serial number"))?;
    Ok(TokenId {
        label: token.label().to_string(),
        serial,
    })
}

/// Set the token's user PIN with C_InitPIN in a security officer session (PKCS#11 2.40
/// 5.6). The SO session is logged out before returning.
pub fn set_user_pin(
    token: &TokenRef,
    opened: &Token,
    so_pin: &PinSource,
    new_pin: &str,
) -> Result<(), Error> {
    let ctx = open_module(&token.module).map_err(Error::core("loading the PKCS#11 module"))?;
    let slot = opened.slot().map_err(Error::core("finding the token"))?;
    let session = ctx.open_rw_session(slot).map_err(|source| Error::Pkcs11 {
        op: "open session",
        source,
    })?;
    let so = so_pin
        .read()
        .map_err(Error::core("reading the security officer PIN"))?;
    session
        .login(UserType::So, Some(&AuthPin::from(so.as_str())))
        .map_err(|source| Error::Pkcs11 {
            op: "security officer login",
            source,
        })?;
    let result = session
        .init_pin(&AuthPin::from(new_pin))
        .map_err(|source| Error::Pkcs11 {
            op: "C_InitPIN",
            source,
        });
    let logout = session.logout().map_err(|source| Error::Pkcs11 {
        op: "security officer logout",
        source,
    });
    result.and(logout)
}

/// Generate a key pair in the token and check it is protected as a CA key must be: sensitive,
/// not extractable, always sensitive, never extractable (DESIGN invariant 1).
pub fn generate_protected_key(
    token: &Token,
    id: &TokenId,
    key_label: &str,
    alg: KeyAlgorithm,
) -> Result<(Vec<u8>, KeyFact), Error> {
    let spki = token
        .generate_key(key_label, alg)
        .map_err(Error::core("generating the key in the HSM"))?;
    let p = token
        .key_protection(key_label)
        .map_err(Error::core("reading the key's protection attributes"))?;
    if !(p.sensitive && !p.extractable && p.always_sensitive && p.never_extractable && p.persistent)
    {
        return Err(Error::KeyNotProtected {
            token: id.label.clone(),
            label: key_label.to_string(),
            protection: format!("{p:?}"),
        });
    }
    let fact = KeyFact {
        token: id.clone(),
        key_label: key_label.to_string(),
        algorithm: alg,
        spki_sha256: sha256_hex(&spki),
        sensitive: p.sensitive,
        extractable: p.extractable,
        always_sensitive: p.always_sensitive,
        never_extractable: p.never_extractable,
    };
    Ok((spki, fact))
}
