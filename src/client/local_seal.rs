//! Sealing the client's own small files at rest (the saved session token,
//! the durable outbox): AES-256-GCM under a key derived from the identity's
//! private key, so whoever copies the key store without the passphrase can
//! read none of it.
//!
//! The key is `SHA-256("hush-local-v1" 0x00 purpose 0x00 PKCS#8 DER)`: the
//! private key is already a high-entropy secret, so one hash with a purpose
//! label is enough and no passphrase has to be asked for a second time.
//! Files are sealed under the current identity key; after `hush keys rotate`
//! they still open with a previous one. Sealed layout: `nonce [12] |
//! ciphertext‖tag`, with the purpose as associated data.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::keystore::Identity;
use crate::crypto::keys::IdentityPrivateKey;
use crate::crypto::wire::random_bytes;

const NONCE_LEN: usize = 12;

/// The keys one purpose's files are sealed under: the current identity's
/// first, then those of keys rotated away from. No `Debug`: they are secrets.
pub struct LocalKeys {
    purpose: String,
    keys: Vec<Zeroizing<[u8; 32]>>,
}

impl LocalKeys {
    pub fn new(identity: &Identity, purpose: &str) -> anyhow::Result<Self> {
        let keys = std::iter::once(&identity.current)
            .chain(&identity.previous)
            .map(|key| derive(key, purpose))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            purpose: purpose.to_owned(),
            keys,
        })
    }

    /// Encrypts `plaintext` under the current key with a fresh nonce.
    pub fn seal(&self, plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.seal_bound(plaintext, b"")
    }

    /// Decrypts what `seal` wrote with this identity (current or earlier
    /// key). `None` if no key opens it: damaged, or another identity's.
    pub fn open(&self, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        self.open_bound(sealed, b"")
    }

    /// Like `seal`, bound to `context` as well (e.g. the row a value sits
    /// in), so that it opens only with the same context: a sealed value
    /// moved to another place does not open there.
    pub fn seal_bound(&self, plaintext: &[u8], context: &[u8]) -> anyhow::Result<Vec<u8>> {
        let nonce = random_bytes::<NONCE_LEN>()?;
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*self.keys[0]));
        let aad = self.aad(context);
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing a local file failed"))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Opens what `seal_bound` wrote with the same `context`.
    pub fn open_bound(&self, sealed: &[u8], context: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let aad = self.aad(context);
        self.keys.iter().find_map(|key| {
            Aes256Gcm::new(&Key::<Aes256Gcm>::from(**key))
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &aad,
                    },
                )
                .ok()
                .map(Zeroizing::new)
        })
    }

    /// The associated data: the purpose alone (what `seal` always used),
    /// or the purpose, a zero byte and the context.
    fn aad(&self, context: &[u8]) -> Vec<u8> {
        let mut aad = self.purpose.as_bytes().to_vec();
        if !context.is_empty() {
            aad.push(0);
            aad.extend_from_slice(context);
        }
        aad
    }
}

fn derive(key: &IdentityPrivateKey, purpose: &str) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    let der = key.to_pkcs8_der()?;
    let mut hash = Sha256::new();
    hash.update(b"hush-local-v1\0");
    hash.update(purpose.as_bytes());
    hash.update(b"\0");
    hash.update(&der[..]);
    Ok(Zeroizing::new(hash.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_support::fixture_key;

    fn identity(name: &str) -> Identity {
        Identity {
            username: name.to_owned(),
            current: fixture_key(name),
            previous: Vec::new(),
        }
    }

    #[test]
    fn sealed_bytes_open_only_for_the_same_identity_and_purpose() {
        let alice = LocalKeys::new(&identity("alice"), "outbox").unwrap();
        let sealed = alice.seal(b"queued line").unwrap();
        assert_eq!(&alice.open(&sealed).unwrap()[..], b"queued line");
        assert!(!sealed.windows(11).any(|w| w == b"queued line"));
        let bob = LocalKeys::new(&identity("bob"), "outbox").unwrap();
        assert!(bob.open(&sealed).is_none());
        let other_purpose = LocalKeys::new(&identity("alice"), "session").unwrap();
        assert!(other_purpose.open(&sealed).is_none());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(alice.open(&flipped).is_none());
    }

    #[test]
    fn files_sealed_before_a_rotation_still_open() {
        let before = LocalKeys::new(&identity("alice"), "outbox").unwrap();
        let sealed = before.seal(b"x").unwrap();
        let rotated = Identity {
            username: "alice".into(),
            current: fixture_key("bob"),
            previous: vec![fixture_key("alice")],
        };
        let after = LocalKeys::new(&rotated, "outbox").unwrap();
        assert_eq!(&after.open(&sealed).unwrap()[..], b"x");
    }
}
