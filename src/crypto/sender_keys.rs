//! Per-room sender keys: a random AES-256 key per (room, sender, epoch),
//! wrapped for every member with RSA-OAEP-SHA256 and handed out in a signed
//! *sender-key distribution*, plus the sender-side state that decides when a
//! fresh key (the next epoch) is needed.
//!
//! Distribution layout, version 2 (all integers big-endian; table in
//! `docs/PROTOCOL.md §19`): `"HUSH" 0x02 0x02 | room_id i64 | sender_len u8 |
//! sender | device [16] | epoch u32 | count u16 | count × (name_len u8 |
//! name | fingerprint [32] | wrapped_len u16 | wrapped) | sig_len u16 |
//! sig`. The signature (RSA-PSS-SHA256 by the sender) covers every byte
//! before `sig_len`. Version 1, still read, has no device.
//!
//! What gets wrapped is `key [32] | room_id i64 | epoch u32 | device [16] |
//! sender` (version 1: no device), so a wrapped key lifted into someone
//! else's distribution, or another device's, does not unwrap as theirs.

use std::collections::BTreeSet;

use zeroize::Zeroizing;

use super::CryptoError;
use super::device::DeviceId;
use super::envelope::{self, OpenContext, Payload};
use super::identity::{Fingerprint, IdentityKey};
use super::keys::IdentityPrivateKey;
use super::wire::{BodyKind, FORMAT_VERSION, Reader, Writer, random_bytes};

/// A sender key is retired after this many messages even if membership
/// never changes (random 96-bit nonces stay far from collision well beyond).
pub const MAX_MESSAGES_PER_KEY: u64 = 1 << 24;

const SENDER_KEY_LEN: usize = 32;

/// One AES-256 sender key and the epoch it belongs to. No `Debug`; the key
/// bytes are wiped on drop.
#[derive(Clone)]
pub struct SenderKey {
    epoch: u32,
    key: Zeroizing<[u8; SENDER_KEY_LEN]>,
}

impl SenderKey {
    /// A fresh random key for `epoch`.
    pub fn generate(epoch: u32) -> Result<Self, CryptoError> {
        Ok(Self::from_bytes(epoch, random_bytes()?))
    }

    /// Rebuilds a key the client stored earlier.
    pub fn from_bytes(epoch: u32, key: [u8; SENDER_KEY_LEN]) -> Self {
        Self {
            epoch,
            key: Zeroizing::new(key),
        }
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The raw key, for the client's own (encrypted) storage.
    pub fn key_bytes(&self) -> &[u8; SENDER_KEY_LEN] {
        &self.key
    }
}

/// A room member a sender key is wrapped for.
#[derive(Debug, Clone, Copy)]
pub struct Recipient<'a> {
    pub username: &'a str,
    pub identity: &'a IdentityKey,
}

/// The clear fields of a distribution, readable before authenticating it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistributionHeader {
    pub version: u8,
    pub room_id: i64,
    pub sender: String,
    /// `DeviceId::LEGACY` for version 1.
    pub device: DeviceId,
    pub epoch: u32,
    pub recipients: Vec<(String, Fingerprint)>,
}

/// Wraps `key` for each recipient (the sender should be one of them, so
/// its other devices can read its own messages) and signs the result, as
/// the distribution of `device`'s chain.
pub fn seal_distribution(
    room_id: i64,
    sender: &str,
    device: &DeviceId,
    key: &SenderKey,
    recipients: &[Recipient<'_>],
    signer: &IdentityPrivateKey,
) -> Result<Vec<u8>, CryptoError> {
    seal_distribution_as(
        FORMAT_VERSION,
        room_id,
        sender,
        device,
        key,
        recipients,
        signer,
    )
}

/// `seal_distribution` in a given format version: version 1 only for test
/// vectors of the history clients still read.
pub(crate) fn seal_distribution_as(
    version: u8,
    room_id: i64,
    sender: &str,
    device: &DeviceId,
    key: &SenderKey,
    recipients: &[Recipient<'_>],
    signer: &IdentityPrivateKey,
) -> Result<Vec<u8>, CryptoError> {
    let count = u16::try_from(recipients.len()).map_err(|_| CryptoError::TooLarge)?;
    let mut seen = BTreeSet::new();
    if !recipients.iter().all(|r| seen.insert(r.username)) {
        return Err(CryptoError::InvalidUsername);
    }
    let device = if version >= 2 {
        if device.is_legacy() {
            return Err(CryptoError::OpenFailed);
        }
        *device
    } else {
        DeviceId::LEGACY
    };
    let mut body = Writer::with_version(version, BodyKind::SenderKeyDistribution);
    body.i64(room_id);
    body.username(sender)?;
    if version >= 2 {
        body.device(&device);
    }
    body.u32(key.epoch());
    body.u16(count);
    let plaintext = wrapped_plaintext(room_id, sender, &device, key);
    for recipient in recipients {
        body.username(recipient.username)?;
        body.raw(&recipient.identity.fingerprint().0);
        let wrapped = recipient
            .identity
            .rsa()
            .oaep_encrypt::<rsa::sha2::Sha256>(&plaintext)
            .map_err(|_| CryptoError::TooLarge)?;
        body.bytes_u16(&wrapped)?;
    }
    let signature = signer.sign(body.as_slice())?;
    body.bytes_u16(&signature)?;
    Ok(body.into_bytes())
}

/// Reads a distribution's header without authenticating it.
pub fn peek_distribution(body: &[u8]) -> Result<DistributionHeader, CryptoError> {
    Ok(ParsedDistribution::parse(body)?.header)
}

/// Checks a distribution (version, room and sender binding, signature),
/// finds the entry for `me` under my current key, and unwraps it.
/// `NotARecipient` if there is no entry for this user and key.
pub fn open_distribution(
    body: &[u8],
    context: &OpenContext<'_>,
    me: &str,
    my_key: &IdentityPrivateKey,
) -> Result<SenderKey, CryptoError> {
    let parsed = ParsedDistribution::parse(body)?;
    let header = &parsed.header;
    if header.room_id != context.room_id {
        return Err(CryptoError::WrongRoom);
    }
    if header.sender != context.sender {
        return Err(CryptoError::WrongSender);
    }
    context
        .sender_identity
        .verify(&body[..parsed.signed_len], parsed.signature)?;
    let my_fingerprint = my_key.public().fingerprint();
    let wrapped = header
        .recipients
        .iter()
        .zip(&parsed.wrapped)
        .find(|((name, fingerprint), _)| name == me && *fingerprint == my_fingerprint)
        .map(|(_, wrapped)| *wrapped)
        .ok_or(CryptoError::NotARecipient)?;
    unwrap_sender_key(
        wrapped,
        header.room_id,
        &header.sender,
        &header.device,
        header.epoch,
        my_key,
    )
}

/// Unwraps one wrapped key and checks it was made for this room, sender,
/// device (`LEGACY` for version 1) and epoch. Any failure is `OpenFailed`.
pub fn unwrap_sender_key(
    wrapped: &[u8],
    room_id: i64,
    sender: &str,
    device: &DeviceId,
    epoch: u32,
    my_key: &IdentityPrivateKey,
) -> Result<SenderKey, CryptoError> {
    let plaintext = my_key.unwrap_key(wrapped)?;
    let expected_context = wrap_context(room_id, sender, device, epoch);
    if plaintext.len() != SENDER_KEY_LEN + expected_context.len()
        || plaintext[SENDER_KEY_LEN..] != *expected_context
    {
        return Err(CryptoError::OpenFailed);
    }
    let mut key = [0u8; SENDER_KEY_LEN];
    key.copy_from_slice(&plaintext[..SENDER_KEY_LEN]);
    let sender_key = SenderKey::from_bytes(epoch, key);
    zeroize::Zeroize::zeroize(&mut key);
    Ok(sender_key)
}

/// `key | room_id i64 | epoch u32 | device | sender`: at most 92 bytes,
/// well under the 190 bytes OAEP-SHA256 allows with a 2048-bit key.
fn wrapped_plaintext(
    room_id: i64,
    sender: &str,
    device: &DeviceId,
    key: &SenderKey,
) -> Zeroizing<Vec<u8>> {
    let context = wrap_context(room_id, sender, device, key.epoch());
    // Sized up front so no reallocation leaves a copy of the key behind.
    let mut out = Zeroizing::new(Vec::with_capacity(SENDER_KEY_LEN + context.len()));
    out.extend_from_slice(key.key_bytes());
    out.extend_from_slice(&context);
    out
}

/// The part of the wrapped plaintext after the key, binding it to its
/// distribution. The legacy device (version 1) adds no bytes.
fn wrap_context(room_id: i64, sender: &str, device: &DeviceId, epoch: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(28 + sender.len());
    out.extend_from_slice(&room_id.to_be_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
    if !device.is_legacy() {
        out.extend_from_slice(&device.0);
    }
    out.extend_from_slice(sender.as_bytes());
    out
}

/// Whether `signer` made this distribution's signature, whatever else is
/// wrong with it.
pub fn is_signed_by(body: &[u8], signer: &IdentityKey) -> bool {
    ParsedDistribution::parse(body).is_ok_and(|parsed| {
        signer
            .verify(&body[..parsed.signed_len], parsed.signature)
            .is_ok()
    })
}

struct ParsedDistribution<'a> {
    header: DistributionHeader,
    wrapped: Vec<&'a [u8]>,
    signed_len: usize,
    signature: &'a [u8],
}

impl<'a> ParsedDistribution<'a> {
    fn parse(body: &'a [u8]) -> Result<Self, CryptoError> {
        let mut reader = Reader::new(body, BodyKind::SenderKeyDistribution)?;
        let version = reader.version();
        let room_id = reader.i64()?;
        let sender = reader.username()?;
        let device = reader.device()?;
        let epoch = reader.u32()?;
        let count = reader.u16()? as usize;
        let mut recipients = Vec::with_capacity(count);
        let mut wrapped = Vec::with_capacity(count);
        for _ in 0..count {
            let name = reader.username()?;
            let fingerprint = Fingerprint(reader.array()?);
            recipients.push((name, fingerprint));
            wrapped.push(reader.bytes_u16()?);
        }
        let signed_len = reader.position();
        let signature = reader.bytes_u16()?;
        reader.finish()?;
        Ok(Self {
            header: DistributionHeader {
                version,
                room_id,
                sender,
                device,
                epoch,
                recipients,
            },
            wrapped,
            signed_len,
            signature,
        })
    }
}

/// Why `SenderKeyState` wants a new sender key before the next message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationReason {
    /// No key was made yet in this room (or since the client restarted).
    NoKeyYet,
    /// Someone who holds the current key is no longer a member.
    MemberLeft { username: String },
    /// Someone joined: a fresh key keeps them from reading messages sent
    /// before they were given one.
    MemberJoined { username: String },
    /// A member's identity key changed; the old key may be compromised.
    MemberKeyChanged { username: String },
    /// The current key has sealed `MAX_MESSAGES_PER_KEY` messages.
    KeyWornOut,
    /// The room's messages disappear and the current key's distribution is
    /// older than half the duration: it will expire soon, and a reader who
    /// syncs after that could not read what follows under this key (§21).
    DistributionAging,
}

/// The sending side of one room for one device of a user: the current
/// sender key, who it was distributed to, and the next message counter.
pub struct SenderKeyState {
    room_id: i64,
    sender: String,
    device: DeviceId,
    last_epoch: u32,
    current: Option<CurrentKey>,
}

struct CurrentKey {
    key: SenderKey,
    members: BTreeSet<(String, [u8; 32])>,
    next_counter: u64,
}

impl SenderKeyState {
    /// A room where this user never sent anything: the first key is epoch 1.
    pub fn new(room_id: i64, sender: &str, device: DeviceId) -> Self {
        Self::resume_after(room_id, sender, device, 0)
    }

    /// After a restart: `last_epoch` is the highest epoch this device has
    /// distributed in the room (found in the log). The next key uses a
    /// higher one, so counters never restart within an epoch.
    pub fn resume_after(room_id: i64, sender: &str, device: DeviceId, last_epoch: u32) -> Self {
        Self {
            room_id,
            sender: sender.to_owned(),
            device,
            last_epoch,
            current: None,
        }
    }

    /// After a restart, with the client's own latest key recovered from its
    /// distribution in the log: `members` are that distribution's
    /// recipients and `next_counter` is one above the highest counter this
    /// user sent under it. Avoids a needless rotation on every start.
    pub fn resume_with_key(
        room_id: i64,
        sender: &str,
        device: DeviceId,
        key: SenderKey,
        members: &[(String, Fingerprint)],
        next_counter: u64,
    ) -> Self {
        Self {
            room_id,
            sender: sender.to_owned(),
            device,
            last_epoch: key.epoch(),
            current: Some(CurrentKey {
                key,
                members: members
                    .iter()
                    .map(|(name, fp)| (name.clone(), fp.0))
                    .collect(),
                next_counter,
            }),
        }
    }

    /// The epoch of the current key (or of the last one, if none is held).
    pub fn epoch(&self) -> u32 {
        self.last_epoch
    }

    pub fn current_key(&self) -> Option<&SenderKey> {
        self.current.as_ref().map(|current| &current.key)
    }

    /// Whether a new key must be made and distributed before sending to
    /// the room whose members (including this user) are `members`.
    pub fn rotation_needed(&self, members: &[Recipient<'_>]) -> Option<RotationReason> {
        let Some(current) = &self.current else {
            return Some(RotationReason::NoKeyYet);
        };
        let wanted = member_set(members);
        for (username, fingerprint) in &current.members {
            if !wanted.contains(&(username.clone(), *fingerprint)) {
                let still_member = wanted.iter().any(|(name, _)| name == username);
                let username = username.clone();
                return Some(if still_member {
                    RotationReason::MemberKeyChanged { username }
                } else {
                    RotationReason::MemberLeft { username }
                });
            }
        }
        if let Some((username, _)) = wanted.difference(&current.members).next() {
            return Some(RotationReason::MemberJoined {
                username: username.clone(),
            });
        }
        if current.next_counter >= MAX_MESSAGES_PER_KEY {
            return Some(RotationReason::KeyWornOut);
        }
        None
    }

    /// Makes the next epoch's key and returns its signed distribution for
    /// `members`, to be posted to the room's log before any message under it.
    pub fn rotate(
        &mut self,
        members: &[Recipient<'_>],
        signer: &IdentityPrivateKey,
    ) -> Result<Vec<u8>, CryptoError> {
        let epoch = self
            .last_epoch
            .checked_add(1)
            .ok_or(CryptoError::SenderKeyExhausted)?;
        let key = SenderKey::generate(epoch)?;
        let body = seal_distribution(
            self.room_id,
            &self.sender,
            &self.device,
            &key,
            members,
            signer,
        )?;
        self.last_epoch = epoch;
        self.current = Some(CurrentKey {
            key,
            members: member_set(members),
            next_counter: 0,
        });
        Ok(body)
    }

    /// Seals the next message under the current key. Call `rotation_needed`
    /// first; this fails with `SenderKeyExhausted` if there is no usable key.
    pub fn seal(
        &mut self,
        payload: &Payload,
        signer: &IdentityPrivateKey,
    ) -> Result<Vec<u8>, CryptoError> {
        let current = self
            .current
            .as_mut()
            .filter(|current| current.next_counter < MAX_MESSAGES_PER_KEY)
            .ok_or(CryptoError::SenderKeyExhausted)?;
        let counter = current.next_counter;
        let body = envelope::seal(
            self.room_id,
            &self.sender,
            &self.device,
            &current.key,
            counter,
            payload,
            signer,
        )?;
        current.next_counter += 1;
        Ok(body)
    }
}

fn member_set(members: &[Recipient<'_>]) -> BTreeSet<(String, [u8; 32])> {
    members
        .iter()
        .map(|member| (member.username.to_owned(), member.identity.fingerprint().0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::envelope::ReplayTracker;
    use crate::crypto::test_support::fixture_key;

    const ROOM: i64 = 7;
    const DEVICE: DeviceId = DeviceId([3; 16]);

    fn context(identity: &IdentityKey) -> OpenContext<'_> {
        OpenContext {
            room_id: ROOM,
            sender: "alice",
            sender_identity: identity,
        }
    }

    #[test]
    fn each_recipient_unwraps_the_same_key() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let bob = fixture_key("bob");
        let key = SenderKey::generate(4)?;
        let recipients = [
            Recipient {
                username: "alice",
                identity: alice.public(),
            },
            Recipient {
                username: "bob",
                identity: bob.public(),
            },
        ];
        let body = seal_distribution(ROOM, "alice", &DEVICE, &key, &recipients, &alice)?;
        for (name, private) in [("alice", &alice), ("bob", &bob)] {
            let unwrapped = open_distribution(&body, &context(alice.public()), name, private)?;
            assert_eq!(unwrapped.epoch(), 4);
            assert_eq!(unwrapped.key_bytes(), key.key_bytes());
        }
        let header = peek_distribution(&body)?;
        assert_eq!(header.recipients.len(), 2);
        assert_eq!(
            header.recipients[1],
            ("bob".into(), bob.public().fingerprint())
        );
        Ok(())
    }

    #[test]
    fn wrong_recipient_cannot_unwrap() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let bob = fixture_key("bob");
        let carol = fixture_key("carol");
        let key = SenderKey::generate(1)?;
        let recipients = [Recipient {
            username: "bob",
            identity: bob.public(),
        }];
        let body = seal_distribution(ROOM, "alice", &DEVICE, &key, &recipients, &alice)?;
        // Carol is not listed.
        assert_eq!(
            open_distribution(&body, &context(alice.public()), "carol", &carol).err(),
            Some(CryptoError::NotARecipient)
        );
        // Carol claiming Bob's name still has the wrong key fingerprint.
        assert_eq!(
            open_distribution(&body, &context(alice.public()), "bob", &carol).err(),
            Some(CryptoError::NotARecipient)
        );
        // And Bob's wrapped key does not unwrap with Carol's private key.
        let parsed = ParsedDistribution::parse(&body)?;
        assert_eq!(
            unwrap_sender_key(parsed.wrapped[0], ROOM, "alice", &DEVICE, 1, &carol).err(),
            Some(CryptoError::OpenFailed)
        );
        Ok(())
    }

    #[test]
    fn wrapped_key_is_bound_to_room_sender_device_and_epoch() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let bob = fixture_key("bob");
        let key = SenderKey::generate(2)?;
        let recipients = [Recipient {
            username: "bob",
            identity: bob.public(),
        }];
        let body = seal_distribution(ROOM, "alice", &DEVICE, &key, &recipients, &alice)?;
        let parsed = ParsedDistribution::parse(&body)?;
        let wrapped = parsed.wrapped[0];
        assert!(unwrap_sender_key(wrapped, ROOM, "alice", &DEVICE, 2, &bob).is_ok());
        let other_device = DeviceId([4; 16]);
        for (room, sender, device, epoch) in [
            (ROOM + 1, "alice", &DEVICE, 2),
            (ROOM, "mallory", &DEVICE, 2),
            (ROOM, "alice", &DEVICE, 3),
            (ROOM, "alice", &other_device, 2),
            (ROOM, "alice", &DeviceId::LEGACY, 2),
        ] {
            assert_eq!(
                unwrap_sender_key(wrapped, room, sender, device, epoch, &bob).err(),
                Some(CryptoError::OpenFailed)
            );
        }
        Ok(())
    }

    #[test]
    fn flipping_any_single_byte_of_a_distribution_fails() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let bob = fixture_key("bob");
        let key = SenderKey::generate(1)?;
        let recipients = [Recipient {
            username: "bob",
            identity: bob.public(),
        }];
        let body = seal_distribution(ROOM, "alice", &DEVICE, &key, &recipients, &alice)?;
        // Flips in the signed part fail the signature check before any RSA
        // decryption, so this loop stays fast.
        for position in 0..body.len() {
            let mut tampered = body.clone();
            tampered[position] ^= 0x80;
            assert!(
                open_distribution(&tampered, &context(alice.public()), "bob", &bob).is_err(),
                "flipped byte {position} still opened"
            );
        }
        Ok(())
    }

    #[test]
    fn distribution_binding_and_version_errors() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let bob = fixture_key("bob");
        let key = SenderKey::generate(1)?;
        let recipients = [Recipient {
            username: "bob",
            identity: bob.public(),
        }];
        let body = seal_distribution(ROOM, "alice", &DEVICE, &key, &recipients, &alice)?;
        let wrong_room = OpenContext {
            room_id: ROOM + 1,
            ..context(alice.public())
        };
        assert_eq!(
            open_distribution(&body, &wrong_room, "bob", &bob).err(),
            Some(CryptoError::WrongRoom)
        );
        let wrong_sender = OpenContext {
            sender: "mallory",
            ..context(alice.public())
        };
        assert_eq!(
            open_distribution(&body, &wrong_sender, "bob", &bob).err(),
            Some(CryptoError::WrongSender)
        );
        let mut newer = body.clone();
        newer[4] = 9;
        assert_eq!(
            open_distribution(&newer, &context(alice.public()), "bob", &bob).err(),
            Some(CryptoError::UnknownVersion { version: 9 })
        );
        assert_eq!(peek_distribution(&body)?.device, DEVICE);
        // A distribution is not a message and vice versa.
        assert_eq!(envelope::peek(&body).err(), Some(CryptoError::OpenFailed));
        Ok(())
    }

    #[test]
    fn state_rotates_on_first_use_and_on_membership_changes() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let bob = fixture_key("bob");
        let carol = fixture_key("carol");
        let mallory = fixture_key("mallory");
        let a = Recipient {
            username: "alice",
            identity: alice.public(),
        };
        let b = Recipient {
            username: "bob",
            identity: bob.public(),
        };
        let c = Recipient {
            username: "carol",
            identity: carol.public(),
        };
        let mut state = SenderKeyState::new(ROOM, "alice", DEVICE);
        assert_eq!(
            state.rotation_needed(&[a, b, c]),
            Some(RotationReason::NoKeyYet)
        );
        assert!(state.seal(&Payload::text("too early"), &alice).is_err());

        let distribution = state.rotate(&[a, b, c], &alice)?;
        assert_eq!(state.epoch(), 1);
        assert_eq!(state.rotation_needed(&[a, b, c]), None);
        let bobs_key = open_distribution(&distribution, &context(alice.public()), "bob", &bob)?;

        let mut replay = ReplayTracker::new();
        for text in ["one", "two"] {
            let body = state.seal(&Payload::text(text), &alice)?;
            let opened = envelope::open(&body, &context(alice.public()), &bobs_key, &mut replay)?;
            assert!(opened.content == envelope::Content::Payload(Payload::text(text)));
        }

        assert_eq!(
            state.rotation_needed(&[a, b]),
            Some(RotationReason::MemberLeft {
                username: "carol".into()
            })
        );
        let d = Recipient {
            username: "dave",
            identity: mallory.public(),
        };
        assert_eq!(
            state.rotation_needed(&[a, b, c, d]),
            Some(RotationReason::MemberJoined {
                username: "dave".into()
            })
        );
        let bob_new_key = Recipient {
            username: "bob",
            identity: mallory.public(),
        };
        assert_eq!(
            state.rotation_needed(&[a, bob_new_key, c]),
            Some(RotationReason::MemberKeyChanged {
                username: "bob".into()
            })
        );

        let distribution = state.rotate(&[a, b], &alice)?;
        assert_eq!(state.epoch(), 2);
        assert_eq!(
            open_distribution(&distribution, &context(alice.public()), "carol", &carol).err(),
            Some(CryptoError::NotARecipient)
        );
        let body = state.seal(&Payload::text("after carol left"), &alice)?;
        assert_eq!(envelope::peek(&body)?.epoch, 2);
        assert_eq!(envelope::peek(&body)?.counter, 0);
        Ok(())
    }

    #[test]
    fn resumed_state_continues_with_a_higher_epoch() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let a = Recipient {
            username: "alice",
            identity: alice.public(),
        };
        let mut state = SenderKeyState::resume_after(ROOM, "alice", DEVICE, 41);
        assert_eq!(state.rotation_needed(&[a]), Some(RotationReason::NoKeyYet));
        state.rotate(&[a], &alice)?;
        assert_eq!(state.current_key().map(SenderKey::epoch), Some(42));
        let mut last = SenderKeyState::resume_after(ROOM, "alice", DEVICE, u32::MAX);
        assert_eq!(
            last.rotate(&[a], &alice).err(),
            Some(CryptoError::SenderKeyExhausted)
        );
        Ok(())
    }

    #[test]
    fn version_one_distributions_still_open_on_the_legacy_device() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let bob = fixture_key("bob");
        let key = SenderKey::generate(5)?;
        let recipients = [Recipient {
            username: "bob",
            identity: bob.public(),
        }];
        let body = seal_distribution_as(1, ROOM, "alice", &DEVICE, &key, &recipients, &alice)?;
        let header = peek_distribution(&body)?;
        assert_eq!((header.version, header.device), (1, DeviceId::LEGACY));
        let opened = open_distribution(&body, &context(alice.public()), "bob", &bob)?;
        assert_eq!(opened.key_bytes(), key.key_bytes());
        Ok(())
    }
}
