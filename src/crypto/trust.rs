//! Trust on first use: which identity key this client has pinned for each
//! peer. A peer's first key is pinned when first seen. A different key later
//! is accepted automatically only if a chain of rotation statements
//! (`statements::key_rotation`, each signed by the previous key) leads from
//! the pinned key to it; otherwise the peer is *blocked* (messages from it
//! should not be trusted) until the user calls `trust` explicitly. A
//! rotation also clears "verified": the safety number the users compared
//! was for the old key.
//!
//! Stored as `trust.json` in the key store directory (format in
//! `docs/PROTOCOL.md §19`). Pure logic plus load/save; no network.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::identity::{Fingerprint, IdentityKey};
use super::private_file::write_private_file;
use super::statements;

/// Suggested file name inside the key store directory.
pub const TRUST_FILE_NAME: &str = "trust.json";
const TRUST_FILE_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum TrustError {
    #[error("trust store I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("trust store is not valid: {0}")]
    Malformed(String),
    #[error("no key is pinned for {0}")]
    UnknownPeer(String),
    #[error("that fingerprint is not the key pinned for {0}")]
    FingerprintMismatch(String),
    #[error("{0}'s key changed without a valid rotation; trust the new key first")]
    Blocked(String),
}

/// One step of a key rotation as published by the server: the new key and
/// the previous key's signature over `statements::key_rotation`.
#[derive(Debug, Clone)]
pub struct RotationLink {
    pub new_spki_der: Vec<u8>,
    pub signature: Vec<u8>,
}

/// What `observe` concluded about a peer's current key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// Never seen before; now pinned (unverified).
    FirstSeen,
    /// The pinned key.
    Unchanged,
    /// A new key reached through `steps` valid rotation statements; now pinned.
    Rotated { steps: usize },
    /// A new key with no valid rotation chain (or the peer was already
    /// blocked): the peer stays blocked until `trust` is called.
    Changed,
}

/// What the store knows about one peer.
#[derive(Debug, Clone)]
pub struct PeerTrust {
    pub pinned: IdentityKey,
    pub is_verified: bool,
    /// The unlinked key that blocked this peer, if blocked.
    pub offered: Option<IdentityKey>,
    /// Fingerprints of keys pinned before, oldest first.
    pub previous: Vec<Fingerprint>,
}

impl PeerTrust {
    pub fn is_blocked(&self) -> bool {
        self.offered.is_some()
    }

    fn pin(key: &IdentityKey) -> Self {
        Self {
            pinned: key.clone(),
            is_verified: false,
            offered: None,
            previous: Vec::new(),
        }
    }

    fn replace_pin(&mut self, key: &IdentityKey) {
        self.previous.push(self.pinned.fingerprint());
        self.pinned = key.clone();
        self.is_verified = false;
        self.offered = None;
    }
}

/// All pinned peers of one local user.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    peers: BTreeMap<String, PeerTrust>,
}

impl TrustStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks `key` for `username` against the pin, following `rotations`
    /// (the peer's published rotation history, oldest first; links from
    /// before our pin are skipped) and updates the store.
    pub fn observe(
        &mut self,
        username: &str,
        key: &IdentityKey,
        rotations: &[RotationLink],
    ) -> KeyCheck {
        let Some(peer) = self.peers.get_mut(username) else {
            self.peers.insert(username.to_owned(), PeerTrust::pin(key));
            return KeyCheck::FirstSeen;
        };
        if peer.pinned.spki_der() == key.spki_der() {
            return if peer.is_blocked() {
                KeyCheck::Changed
            } else {
                KeyCheck::Unchanged
            };
        }
        match rotation_steps(username, &peer.pinned, rotations, key) {
            Some(steps) => {
                peer.replace_pin(key);
                KeyCheck::Rotated { steps }
            }
            None => {
                peer.offered = Some(key.clone());
                KeyCheck::Changed
            }
        }
    }

    /// The user explicitly accepts `key` for `username` (after checking it
    /// out of band): pins it, unverified, and unblocks the peer.
    pub fn trust(&mut self, username: &str, key: &IdentityKey) {
        match self.peers.get_mut(username) {
            Some(peer) if peer.pinned.spki_der() == key.spki_der() => peer.offered = None,
            Some(peer) => peer.replace_pin(key),
            None => {
                self.peers.insert(username.to_owned(), PeerTrust::pin(key));
            }
        }
    }

    /// Records that the users compared safety numbers computed from the key
    /// with `fingerprint`, which must be the pinned, unblocked key.
    pub fn mark_verified(
        &mut self,
        username: &str,
        fingerprint: &Fingerprint,
    ) -> Result<(), TrustError> {
        let peer = self
            .peers
            .get_mut(username)
            .ok_or_else(|| TrustError::UnknownPeer(username.to_owned()))?;
        if peer.is_blocked() {
            return Err(TrustError::Blocked(username.to_owned()));
        }
        if peer.pinned.fingerprint() != *fingerprint {
            return Err(TrustError::FingerprintMismatch(username.to_owned()));
        }
        peer.is_verified = true;
        Ok(())
    }

    pub fn peer(&self, username: &str) -> Option<&PeerTrust> {
        self.peers.get(username)
    }

    /// The key to check this peer's signatures with, unless it is blocked.
    pub fn usable_key(&self, username: &str) -> Option<&IdentityKey> {
        self.peers
            .get(username)
            .filter(|peer| !peer.is_blocked())
            .map(|peer| &peer.pinned)
    }

    pub fn peers(&self) -> impl Iterator<Item = (&str, &PeerTrust)> {
        self.peers.iter().map(|(name, peer)| (name.as_str(), peer))
    }

    /// Reads the store; a missing file is an empty store.
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_json(&text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self::new()),
            Err(error) => Err(error.into()),
        }
    }

    /// Writes the store atomically, mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), TrustError> {
        write_private_file(path, self.to_json().as_bytes())?;
        Ok(())
    }

    pub fn to_json(&self) -> String {
        let file = TrustFile {
            version: TRUST_FILE_VERSION,
            peers: self
                .peers
                .iter()
                .map(|(name, peer)| {
                    let record = PeerRecord {
                        key: BASE64.encode(peer.pinned.spki_der()),
                        fingerprint: peer.pinned.fingerprint().to_hex(),
                        verified: peer.is_verified,
                        offered_key: peer
                            .offered
                            .as_ref()
                            .map(|key| BASE64.encode(key.spki_der())),
                        previous_fingerprints: peer
                            .previous
                            .iter()
                            .map(Fingerprint::to_hex)
                            .collect(),
                    };
                    (name.clone(), record)
                })
                .collect(),
        };
        let mut text = serde_json::to_string_pretty(&file).expect("plain structs serialize");
        text.push('\n');
        text
    }

    pub fn from_json(text: &str) -> Result<Self, TrustError> {
        let file: TrustFile =
            serde_json::from_str(text).map_err(|error| TrustError::Malformed(error.to_string()))?;
        if file.version != TRUST_FILE_VERSION {
            return Err(TrustError::Malformed(format!("version {}", file.version)));
        }
        let mut peers = BTreeMap::new();
        for (name, record) in file.peers {
            let pinned = parse_key(&record.key)?;
            if pinned.fingerprint().to_hex() != record.fingerprint {
                return Err(TrustError::Malformed(format!("fingerprint of {name}")));
            }
            let offered = record.offered_key.as_deref().map(parse_key).transpose()?;
            let previous = record
                .previous_fingerprints
                .iter()
                .map(|hex| parse_fingerprint(hex))
                .collect::<Result<_, _>>()?;
            peers.insert(
                name,
                PeerTrust {
                    pinned,
                    is_verified: record.verified,
                    offered,
                    previous,
                },
            );
        }
        Ok(Self { peers })
    }
}

/// Follows rotation statements from `pinned` to `target`; the number of
/// steps if the chain is unbroken and every signature verifies.
fn rotation_steps(
    username: &str,
    pinned: &IdentityKey,
    rotations: &[RotationLink],
    target: &IdentityKey,
) -> Option<usize> {
    let mut current = pinned.clone();
    let mut steps = 0;
    for link in rotations {
        let statement =
            statements::key_rotation(username, &current.fingerprint().0, &link.new_spki_der);
        if current.verify(&statement, &link.signature).is_err() {
            if steps == 0 {
                continue; // history from before our pin
            }
            return None;
        }
        current = IdentityKey::from_spki_der(&link.new_spki_der).ok()?;
        steps += 1;
        if current.spki_der() == target.spki_der() {
            return Some(steps);
        }
    }
    None
}

fn parse_key(base64: &str) -> Result<IdentityKey, TrustError> {
    let der = BASE64
        .decode(base64)
        .map_err(|_| TrustError::Malformed("key is not base64".into()))?;
    IdentityKey::from_spki_der(&der).map_err(|error| TrustError::Malformed(error.to_string()))
}

fn parse_fingerprint(hex: &str) -> Result<Fingerprint, TrustError> {
    let malformed = || TrustError::Malformed("fingerprint is not 64 hex digits".into());
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(malformed());
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| malformed())?;
    }
    Ok(Fingerprint(bytes))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    version: u32,
    peers: BTreeMap<String, PeerRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerRecord {
    key: String,
    fingerprint: String,
    verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offered_key: Option<String>,
    #[serde(default)]
    previous_fingerprints: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::IdentityPrivateKey;
    use crate::crypto::test_support::fixture_key;

    fn rotate(username: &str, old: &IdentityPrivateKey, new: &IdentityPrivateKey) -> RotationLink {
        let statement = statements::key_rotation(
            username,
            &old.public().fingerprint().0,
            new.public().spki_der(),
        );
        RotationLink {
            new_spki_der: new.public().spki_der().to_vec(),
            signature: old.sign(&statement).unwrap(),
        }
    }

    #[test]
    fn first_key_is_pinned_and_then_unchanged() {
        let bob = fixture_key("bob");
        let mut store = TrustStore::new();
        assert_eq!(store.observe("bob", bob.public(), &[]), KeyCheck::FirstSeen);
        assert_eq!(store.observe("bob", bob.public(), &[]), KeyCheck::Unchanged);
        assert!(store.usable_key("bob").is_some());
        assert!(!store.peer("bob").unwrap().is_verified);
    }

    #[test]
    fn rotation_chain_moves_the_pin() {
        let (k1, k2, k3) = (
            fixture_key("bob"),
            fixture_key("carol"),
            fixture_key("dave"),
        );
        let mut store = TrustStore::new();
        store.observe("bob", k1.public(), &[]);
        store
            .mark_verified("bob", &k1.public().fingerprint())
            .unwrap();
        let chain = [rotate("bob", &k1, &k2), rotate("bob", &k2, &k3)];
        assert_eq!(
            store.observe("bob", k3.public(), &chain),
            KeyCheck::Rotated { steps: 2 }
        );
        let peer = store.peer("bob").unwrap();
        assert_eq!(peer.pinned.fingerprint(), k3.public().fingerprint());
        assert!(!peer.is_verified, "verification was for the old key");
        assert_eq!(peer.previous, vec![k1.public().fingerprint()]);
        // Later lookups that still carry the whole history skip old links.
        assert_eq!(
            store.observe("bob", k3.public(), &chain),
            KeyCheck::Unchanged
        );
    }

    #[test]
    fn chain_already_partly_followed_skips_earlier_links() {
        let (k1, k2, k3) = (
            fixture_key("bob"),
            fixture_key("carol"),
            fixture_key("dave"),
        );
        let mut store = TrustStore::new();
        store.observe("bob", k2.public(), &[]);
        let chain = [rotate("bob", &k1, &k2), rotate("bob", &k2, &k3)];
        assert_eq!(
            store.observe("bob", k3.public(), &chain),
            KeyCheck::Rotated { steps: 1 }
        );
    }

    #[test]
    fn unlinked_new_key_blocks_until_trusted() {
        let bob = fixture_key("bob");
        let mallory = fixture_key("mallory");
        let mut store = TrustStore::new();
        store.observe("bob", bob.public(), &[]);
        // A statement signed by mallory herself does not link from bob's key.
        let forged = rotate("bob", &mallory, &mallory);
        assert_eq!(
            store.observe("bob", mallory.public(), &[forged]),
            KeyCheck::Changed
        );
        assert!(store.usable_key("bob").is_none());
        // Switching back to the old key does not silently clear the warning.
        assert_eq!(store.observe("bob", bob.public(), &[]), KeyCheck::Changed);
        assert!(matches!(
            store.mark_verified("bob", &bob.public().fingerprint()),
            Err(TrustError::Blocked(_))
        ));
        store.trust("bob", mallory.public());
        assert_eq!(
            store.usable_key("bob").map(IdentityKey::fingerprint),
            Some(mallory.public().fingerprint())
        );
        assert_eq!(
            store.observe("bob", mallory.public(), &[]),
            KeyCheck::Unchanged
        );
    }

    #[test]
    fn rotation_statement_for_another_user_does_not_link() {
        let (k1, k2) = (fixture_key("bob"), fixture_key("carol"));
        let mut store = TrustStore::new();
        store.observe("bob", k1.public(), &[]);
        let for_someone_else = rotate("bobby", &k1, &k2);
        assert_eq!(
            store.observe("bob", k2.public(), &[for_someone_else]),
            KeyCheck::Changed
        );
    }

    #[test]
    fn mark_verified_needs_the_pinned_fingerprint() {
        let bob = fixture_key("bob");
        let mallory = fixture_key("mallory");
        let mut store = TrustStore::new();
        assert!(matches!(
            store.mark_verified("bob", &bob.public().fingerprint()),
            Err(TrustError::UnknownPeer(_))
        ));
        store.observe("bob", bob.public(), &[]);
        assert!(matches!(
            store.mark_verified("bob", &mallory.public().fingerprint()),
            Err(TrustError::FingerprintMismatch(_))
        ));
        store
            .mark_verified("bob", &bob.public().fingerprint())
            .unwrap();
        assert!(store.peer("bob").unwrap().is_verified);
    }

    #[test]
    fn store_survives_save_and_load() -> anyhow::Result<()> {
        let (bob, carol, mallory) = (
            fixture_key("bob"),
            fixture_key("carol"),
            fixture_key("mallory"),
        );
        let mut store = TrustStore::new();
        store.observe("bob", bob.public(), &[]);
        store.mark_verified("bob", &bob.public().fingerprint())?;
        store.observe("carol", carol.public(), &[]);
        store.observe("carol", mallory.public(), &[]);
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(TRUST_FILE_NAME);
        assert_eq!(TrustStore::load(&path)?.peers().count(), 0);
        store.save(&path)?;
        let loaded = TrustStore::load(&path)?;
        assert!(loaded.peer("bob").unwrap().is_verified);
        assert!(loaded.peer("carol").unwrap().is_blocked());
        assert_eq!(loaded.to_json(), store.to_json());
        Ok(())
    }
}
