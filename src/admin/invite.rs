//! Invite codes for the `invite` registration mode.
//!
//! A code is 32 random bytes, shown once as URL-safe base64 (43
//! characters). The database keeps the first 8 bytes as a lookup key and
//! the SHA-256 of all 32, so a copy of the database holds no usable code,
//! and the hash is compared in constant time (`store::admin`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::store::admin::InviteProof;

const CODE_BYTES: usize = 32;
const LOOKUP_BYTES: usize = 8;

/// A parsed invite code: what the store needs to find and check it.
pub struct InviteCode {
    lookup: [u8; LOOKUP_BYTES],
    hash: [u8; 32],
}

impl InviteCode {
    /// A fresh code: the text to hand out, and its parsed form.
    pub fn generate() -> (String, Self) {
        let mut raw = [0u8; CODE_BYTES];
        getrandom::fill(&mut raw).expect("the OS random source works");
        let text = URL_SAFE_NO_PAD.encode(raw);
        (text, Self::from_raw(&raw))
    }

    /// `None` unless `text` is shaped like a code we make.
    pub fn parse(text: &str) -> Option<Self> {
        let raw = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
        (raw.len() == CODE_BYTES).then(|| Self::from_raw(&raw))
    }

    fn from_raw(raw: &[u8]) -> Self {
        let mut lookup = [0u8; LOOKUP_BYTES];
        lookup.copy_from_slice(&raw[..LOOKUP_BYTES]);
        Self {
            lookup,
            hash: Sha256::digest(raw).into(),
        }
    }

    pub fn proof(&self) -> InviteProof<'_> {
        InviteProof {
            lookup: &self.lookup,
            code_hash: &self.hash,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_code_parses_back_to_the_same_lookup_and_hash() {
        let (text, code) = InviteCode::generate();
        assert_eq!(text.len(), 43);
        let parsed = InviteCode::parse(&text).expect("our own code parses");
        assert_eq!(parsed.lookup, code.lookup);
        assert_eq!(parsed.hash, code.hash);
        let (other, _) = InviteCode::generate();
        assert_ne!(InviteCode::parse(&other).map(|c| c.hash), Some(code.hash));
    }

    #[test]
    fn malformed_codes_are_refused() {
        assert!(InviteCode::parse("").is_none());
        assert!(InviteCode::parse("not a code").is_none());
        assert!(InviteCode::parse(&URL_SAFE_NO_PAD.encode([0u8; 31])).is_none());
    }
}
