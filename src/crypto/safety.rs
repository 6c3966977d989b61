//! What people compare to know they hold each other's real keys: a key's
//! fingerprint (shown with `Fingerprint`'s Display, sixteen groups of four
//! hex digits) and a *safety number* for a pair of users, sixty digits in
//! twelve groups of five that both sides compute identically.
//!
//! Safety number: SHA-512 over `"hush-safety-v1" 0x00` followed by the two
//! `(name_len u8 | name | fingerprint [32])` records sorted by username
//! bytes; group `i` (0..12) is the big-endian 40-bit integer in digest
//! bytes `5i .. 5i+5`, modulo 100000, zero-padded to five digits. (2^40 fits
//! a JavaScript number exactly, so the browser needs no BigInt.)

use std::fmt;

use rsa::sha2::{Digest, Sha512};

use super::identity::{Fingerprint, IdentityKey};

const SAFETY_LABEL: &[u8] = b"hush-safety-v1\0";
pub const SAFETY_GROUPS: usize = 12;

/// Twelve five-digit groups. Equal on both sides iff both see the same two
/// (username, key) pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SafetyNumber([u32; SAFETY_GROUPS]);

impl SafetyNumber {
    /// The number for two users; argument order does not matter.
    pub fn between(first: (&str, &Fingerprint), second: (&str, &Fingerprint)) -> Self {
        let (low, high) = if first.0.as_bytes() <= second.0.as_bytes() {
            (first, second)
        } else {
            (second, first)
        };
        let mut hasher = Sha512::new();
        hasher.update(SAFETY_LABEL);
        for (username, fingerprint) in [low, high] {
            // Usernames are 3 to 32 bytes (`wire::is_valid_username`).
            hasher.update([u8::try_from(username.len()).unwrap_or(u8::MAX)]);
            hasher.update(username.as_bytes());
            hasher.update(fingerprint.0);
        }
        let digest = hasher.finalize();
        let mut groups = [0u32; SAFETY_GROUPS];
        for (i, group) in groups.iter_mut().enumerate() {
            let value = digest[5 * i..5 * i + 5]
                .iter()
                .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte));
            *group = (value % 100_000) as u32;
        }
        Self(groups)
    }

    /// Convenience over two identity keys.
    pub fn for_keys(first: (&str, &IdentityKey), second: (&str, &IdentityKey)) -> Self {
        Self::between(
            (first.0, &first.1.fingerprint()),
            (second.0, &second.1.fingerprint()),
        )
    }

    pub fn groups(&self) -> [u32; SAFETY_GROUPS] {
        self.0
    }

    /// Three lines of four groups, the layout shown on screen.
    pub fn to_lines(&self) -> [String; 3] {
        let line = |row: usize| {
            self.0[row * 4..row * 4 + 4]
                .iter()
                .map(|group| format!("{group:05}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        [line(0), line(1), line(2)]
    }
}

/// Twelve groups separated by single spaces.
impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: Vec<String> = self.0.iter().map(|group| format!("{group:05}")).collect();
        f.write_str(&text.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_support::fixture_key;

    #[test]
    fn safety_number_is_symmetric() {
        let alice = fixture_key("alice");
        let bob = fixture_key("bob");
        let ab = SafetyNumber::for_keys(("alice", alice.public()), ("bob", bob.public()));
        let ba = SafetyNumber::for_keys(("bob", bob.public()), ("alice", alice.public()));
        assert_eq!(ab, ba);
        assert_eq!(ab.to_string().len(), 12 * 5 + 11);
        assert!(ab.groups().iter().all(|group| *group < 100_000));
        assert_eq!(ab.to_lines().join(" "), ab.to_string());
    }

    #[test]
    fn safety_number_changes_with_either_key_or_name() {
        let alice = fixture_key("alice");
        let bob = fixture_key("bob");
        let mallory = fixture_key("mallory");
        let genuine = SafetyNumber::for_keys(("alice", alice.public()), ("bob", bob.public()));
        let mitm = SafetyNumber::for_keys(("alice", alice.public()), ("bob", mallory.public()));
        let renamed = SafetyNumber::for_keys(("alice", alice.public()), ("bobby", bob.public()));
        assert_ne!(genuine, mitm);
        assert_ne!(genuine, renamed);
    }
}
