//! Peers' identity keys as this client trusts them.
//!
//! Keys come from the server, which is not trusted: every key is checked
//! against the local pin store (trust on first use). A new key reached by
//! rotation statements each signed by the previous key is followed with a
//! notice; any other change blocks the peer until `hush keys trust`.
//!
//! To check signatures on old messages the directory also accepts a peer's
//! earlier keys, but only those joined to the pinned key by valid rotation
//! statements (or pinned by us before).

use std::collections::HashMap;

use anyhow::Context;

use super::api::Api;
use crate::crypto::identity::IdentityKey;
use crate::crypto::statements;
use crate::crypto::trust::{KeyCheck, RotationLink, TrustStore};
use crate::protocol::{KeysResponse, b64};

/// What this client knows of one peer.
#[derive(Clone)]
pub struct Peer {
    /// The key to encrypt to and to expect new signatures from; `None`
    /// while the peer is blocked.
    pub usable: Option<IdentityKey>,
    /// Every key whose signatures this client accepts from the peer, newest first.
    pub verifying: Vec<IdentityKey>,
    pub is_verified: bool,
    /// The key the server now offers, when it differs from the pin without
    /// a valid rotation.
    pub blocked_key: Option<IdentityKey>,
}

/// A notice for the user about a peer's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyNotice {
    FirstSeen { user: String, fingerprint: String },
    Rotated { user: String, fingerprint: String },
    Changed { user: String, fingerprint: String },
}

impl std::fmt::Display for KeyNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::FirstSeen { user, fingerprint } => {
                write!(f, "pinned {user}'s key {fingerprint} (first use)")
            }
            Self::Rotated { user, fingerprint } => {
                write!(
                    f,
                    "{user} rotated their key (signed by the old one); now {fingerprint}"
                )
            }
            Self::Changed { user, fingerprint } => write!(
                f,
                "WARNING: {user}'s key changed to {fingerprint} WITHOUT a rotation signed by their old key. \
                 Nothing will be sent to {user} until you check it with them and run `hush keys trust {user}`."
            ),
        }
    }
}

pub struct Directory {
    api: Api,
    trust: TrustStore,
    peers: HashMap<String, Peer>,
    notices: Vec<KeyNotice>,
    is_dirty: bool,
}

impl Directory {
    pub fn new(api: Api, trust: TrustStore) -> Self {
        Self {
            api,
            trust,
            peers: HashMap::new(),
            notices: Vec::new(),
            is_dirty: false,
        }
    }

    pub fn trust_store(&self) -> &TrustStore {
        &self.trust
    }

    pub fn trust_store_mut(&mut self) -> &mut TrustStore {
        self.is_dirty = true;
        &mut self.trust
    }

    /// Whether pins changed since the store was loaded (so it needs saving).
    pub fn is_dirty(&self) -> bool {
        self.is_dirty
    }

    /// Notices gathered since the last call.
    pub fn take_notices(&mut self) -> Vec<KeyNotice> {
        std::mem::take(&mut self.notices)
    }

    /// Forgets cached peers so the next lookup asks the server again (after
    /// a `key` entry says someone's key changed).
    pub fn invalidate(&mut self, user: &str) {
        self.peers.remove(user);
    }

    /// The peer's keys, fetched from the server once and checked against the pins.
    pub async fn peer(&mut self, user: &str) -> anyhow::Result<Peer> {
        if let Some(peer) = self.peers.get(user) {
            return Ok(peer.clone());
        }
        let published = self
            .api
            .keys_of(user)
            .await
            .with_context(|| format!("looking up {user}'s key"))?;
        let peer = self.check(user, &published)?;
        self.peers.insert(user.to_owned(), peer.clone());
        Ok(peer)
    }

    fn check(&mut self, user: &str, published: &KeysResponse) -> anyhow::Result<Peer> {
        let history: Vec<(IdentityKey, Option<Vec<u8>>)> = published
            .history
            .iter()
            .map(|k| {
                let der = b64::decode(&k.public_key).context("key is not base64")?;
                let key = IdentityKey::from_spki_der(&der).context("server sent an invalid key")?;
                let signature = k
                    .rotation_signature
                    .as_deref()
                    .map(b64::decode)
                    .transpose()?;
                Ok((key, signature))
            })
            .collect::<anyhow::Result<_>>()?;
        let current = history
            .last()
            .map(|(k, _)| k.clone())
            .context("server sent an empty key history")?;
        let links: Vec<RotationLink> = history
            .iter()
            .filter_map(|(key, sig)| {
                sig.as_ref().map(|s| RotationLink {
                    new_spki_der: key.spki_der().to_vec(),
                    signature: s.clone(),
                })
            })
            .collect();
        let fingerprint = current.fingerprint().to_string();
        match self.trust.observe(user, &current, &links) {
            KeyCheck::Unchanged => {}
            KeyCheck::FirstSeen => {
                self.is_dirty = true;
                self.notices.push(KeyNotice::FirstSeen {
                    user: user.into(),
                    fingerprint,
                });
            }
            KeyCheck::Rotated { .. } => {
                self.is_dirty = true;
                self.notices.push(KeyNotice::Rotated {
                    user: user.into(),
                    fingerprint,
                });
            }
            KeyCheck::Changed => {
                self.is_dirty = true;
                self.notices.push(KeyNotice::Changed {
                    user: user.into(),
                    fingerprint,
                });
            }
        }
        let trust = self
            .trust
            .peer(user)
            .context("a peer just observed is pinned")?;
        let pinned = trust.pinned.clone();
        Ok(Peer {
            usable: self.trust.usable_key(user).cloned(),
            verifying: verifying_keys(user, &pinned, &history, &trust.previous),
            is_verified: trust.is_verified,
            blocked_key: trust.offered.clone(),
        })
    }
}

/// The pinned key, then every earlier key in the published history that is
/// linked to it by valid rotation statements, or that we pinned ourselves.
fn verifying_keys(
    user: &str,
    pinned: &IdentityKey,
    history: &[(IdentityKey, Option<Vec<u8>>)],
    pinned_before: &[crate::crypto::identity::Fingerprint],
) -> Vec<IdentityKey> {
    let mut keys = vec![pinned.clone()];
    let Some(mut index) = history
        .iter()
        .position(|(k, _)| k.spki_der() == pinned.spki_der())
    else {
        return keys;
    };
    // Walk back while each key's rotation statement verifies under its predecessor.
    while index > 0 {
        let (newer, signature) = &history[index];
        let (older, _) = &history[index - 1];
        let Some(signature) = signature else { break };
        let statement = statements::key_rotation(user, &older.fingerprint().0, newer.spki_der());
        if older.verify(&statement, signature).is_err() {
            break;
        }
        keys.push(older.clone());
        index -= 1;
    }
    for (key, _) in history {
        if pinned_before.contains(&key.fingerprint())
            && !keys.iter().any(|k| k.spki_der() == key.spki_der())
        {
            keys.push(key.clone());
        }
    }
    keys
}
