//! Identity public keys: parsing and validating SPKI, fingerprints, and
//! RSA-PSS-SHA256 signature checks.

use std::fmt;

use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::{Digest, Sha256};
use rsa::traits::PublicKeyParts;

use super::CryptoError;

/// Smallest and largest identity key accepted anywhere in hush.
pub const MIN_KEY_BITS: usize = 2048;
pub const MAX_KEY_BITS: usize = 4096;

/// A validated RSA identity public key together with its SPKI DER encoding,
/// which is what gets stored, sent and fingerprinted.
#[derive(Clone)]
pub struct IdentityKey {
    key: rsa::PublicKey,
    spki_der: Vec<u8>,
}

impl IdentityKey {
    /// Parses an SPKI DER public key and rejects anything but RSA keys of
    /// 2048 to 4096 bits with exponent 65537.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CryptoError> {
        let key =
            rsa::PublicKey::from_public_key_der(der).map_err(|_| CryptoError::MalformedKey)?;
        let bits = key.n().bit_width() as usize;
        if !(MIN_KEY_BITS..=MAX_KEY_BITS).contains(&bits) {
            return Err(CryptoError::KeySize { bits });
        }
        if key.e() != &rsa::BoxedUint::from(65537u32) {
            return Err(CryptoError::KeyExponent);
        }
        Ok(Self {
            key,
            spki_der: der.to_vec(),
        })
    }

    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    pub fn bits(&self) -> usize {
        self.key.n().bit_width() as usize
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_spki(&self.spki_der)
    }

    pub fn rsa(&self) -> &rsa::PublicKey {
        &self.key
    }

    /// Checks an RSA-PSS signature with SHA-256 and a 32-byte salt over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        self.key
            .pss_verify::<Sha256>(message, signature)
            .map_err(|_| CryptoError::BadSignature)
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IdentityKey({} bits, {})",
            self.bits(),
            self.fingerprint()
        )
    }
}

/// SHA-256 of a key's SPKI DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of_spki(spki_der: &[u8]) -> Self {
        Self(Sha256::digest(spki_der).into())
    }

    /// Lower-case hex, no separators: the form used on the wire.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Displays as sixteen groups of four hex digits, easy to read aloud.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        let groups: Vec<&str> = (0..hex.len()).step_by(4).map(|i| &hex[i..i + 4]).collect();
        f.write_str(&groups.join(" "))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}
