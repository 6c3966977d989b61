//! Sealing and opening one message: the payload (text or a file) encrypted
//! with AES-256-GCM under the sender's current sender key, bound to room,
//! sender, epoch and counter, and signed with the sender's identity key.
//!
//! Layout (all integers big-endian; `docs/PROTOCOL.md §19` has the table):
//! `"HUSH" 0x01 0x01 | room_id i64 | sender_len u8 | sender | epoch u32 |
//! counter u64 | nonce [12] | ct_len u32 | ciphertext‖tag | sig_len u16 | sig`.
//! The AES-GCM associated data is every byte before the nonce; the RSA-PSS
//! signature covers every byte before `sig_len`.
//!
//! Opening checks, in order: framing and version, that the envelope names
//! the room and sender the server claims, the signature under the sender's
//! pinned key, the replay tracker, then the AES-GCM tag. Only the first
//! failure is reported, and every failure after the signature looks the same
//! (`OpenFailed`) except a replay.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, KeyInit, Payload as AeadPayload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::CryptoError;
use super::identity::IdentityKey;
use super::keys::IdentityPrivateKey;
use super::sender_keys::SenderKey;
use super::wire::{BodyKind, Reader, Writer, random_bytes};

pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// What a message carries once decrypted, serialized as compact JSON:
/// `{"t":"text","text":"…"}` or
/// `{"t":"file","name":"…","mime":"…","data":"<base64>"}`.
///
/// No `Debug`: it is plaintext.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase", deny_unknown_fields)]
pub enum Payload {
    Text {
        text: String,
    },
    File {
        name: String,
        mime: String,
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
}

impl Payload {
    pub fn text(text: impl Into<String>) -> Self {
        Payload::Text { text: text.into() }
    }

    pub fn file(name: impl Into<String>, mime: impl Into<String>, data: Vec<u8>) -> Self {
        Payload::File {
            name: name.into(),
            mime: mime.into(),
            data,
        }
    }

    /// The exact plaintext bytes that get encrypted.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(serde_json::to_vec(self).expect("payload always serializes"))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        serde_json::from_slice(bytes).map_err(|_| CryptoError::OpenFailed)
    }
}

/// The clear, unauthenticated fields of a message envelope. Read them with
/// `peek` to find the right sender key; trust them only after `open`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHeader {
    pub room_id: i64,
    pub sender: String,
    pub epoch: u32,
    pub counter: u64,
}

/// Who the server says sent an envelope, where, and the key we pinned for
/// that sender.
pub struct OpenContext<'a> {
    pub room_id: i64,
    pub sender: &'a str,
    pub sender_identity: &'a IdentityKey,
}

/// A message that opened: authenticated header and decrypted payload.
pub struct OpenedMessage {
    pub header: EnvelopeHeader,
    pub payload: Payload,
}

/// Seals `payload` as message number `counter` from `sender` in `room_id`
/// under `sender_key`, with a fresh random nonce. The caller keeps counters
/// strictly increasing per (room, sender, epoch); `SenderKeyState` does that.
pub fn seal(
    room_id: i64,
    sender: &str,
    sender_key: &SenderKey,
    counter: u64,
    payload: &Payload,
    signer: &IdentityPrivateKey,
) -> Result<Vec<u8>, CryptoError> {
    let nonce = random_bytes::<NONCE_LEN>()?;
    seal_with_nonce(
        room_id, sender, sender_key, counter, &nonce, payload, signer,
    )
}

/// `seal` with a caller-chosen nonce. Only for test vectors: a nonce must
/// never repeat under one sender key.
pub(crate) fn seal_with_nonce(
    room_id: i64,
    sender: &str,
    sender_key: &SenderKey,
    counter: u64,
    nonce: &[u8; NONCE_LEN],
    payload: &Payload,
    signer: &IdentityPrivateKey,
) -> Result<Vec<u8>, CryptoError> {
    let mut body = Writer::new(BodyKind::Message);
    body.i64(room_id);
    body.username(sender)?;
    body.u32(sender_key.epoch());
    body.u64(counter);
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*sender_key.key_bytes()));
    let plaintext = payload.to_bytes();
    let ciphertext = cipher
        .encrypt(
            &Nonce::from(*nonce),
            AeadPayload {
                msg: &plaintext,
                aad: body.as_slice(),
            },
        )
        .map_err(|_| CryptoError::TooLarge)?;
    body.raw(nonce);
    body.bytes_u32(&ciphertext)?;
    let signature = signer.sign(body.as_slice())?;
    body.bytes_u16(&signature)?;
    Ok(body.into_bytes())
}

/// Reads the header without checking anything but the framing, so the
/// caller can look up the sender's key for `epoch`.
pub fn peek(body: &[u8]) -> Result<EnvelopeHeader, CryptoError> {
    Ok(ParsedEnvelope::parse(body)?.header)
}

/// Opens an envelope: see the module docs for the order of checks. On
/// success the counter is recorded in `replay`, so the same envelope never
/// opens twice.
pub fn open(
    body: &[u8],
    context: &OpenContext<'_>,
    sender_key: &SenderKey,
    replay: &mut ReplayTracker,
) -> Result<OpenedMessage, CryptoError> {
    let parsed = ParsedEnvelope::parse(body)?;
    let header = parsed.header;
    if header.room_id != context.room_id {
        return Err(CryptoError::WrongRoom);
    }
    if header.sender != context.sender {
        return Err(CryptoError::WrongSender);
    }
    context
        .sender_identity
        .verify(&body[..parsed.signed_len], parsed.signature)?;
    replay.check(&header)?;
    if header.epoch != sender_key.epoch() {
        return Err(CryptoError::OpenFailed);
    }
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*sender_key.key_bytes()));
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(
                &Nonce::from(parsed.nonce),
                AeadPayload {
                    msg: parsed.ciphertext,
                    aad: &body[..parsed.aad_len],
                },
            )
            .map_err(|_| CryptoError::OpenFailed)?,
    );
    let payload = Payload::from_bytes(&plaintext)?;
    replay.record(&header);
    Ok(OpenedMessage { header, payload })
}

struct ParsedEnvelope<'a> {
    header: EnvelopeHeader,
    aad_len: usize,
    nonce: [u8; NONCE_LEN],
    ciphertext: &'a [u8],
    signed_len: usize,
    signature: &'a [u8],
}

impl<'a> ParsedEnvelope<'a> {
    fn parse(body: &'a [u8]) -> Result<Self, CryptoError> {
        let mut reader = Reader::new(body, BodyKind::Message)?;
        let room_id = reader.i64()?;
        let sender = reader.username()?;
        let epoch = reader.u32()?;
        let counter = reader.u64()?;
        let aad_len = reader.position();
        let nonce = reader.array::<NONCE_LEN>()?;
        let ciphertext = reader.bytes_u32()?;
        if ciphertext.len() < TAG_LEN {
            return Err(CryptoError::OpenFailed);
        }
        let signed_len = reader.position();
        let signature = reader.bytes_u16()?;
        reader.finish()?;
        Ok(Self {
            header: EnvelopeHeader {
                room_id,
                sender,
                epoch,
                counter,
            },
            aad_len,
            nonce,
            ciphertext,
            signed_len,
            signature,
        })
    }
}

/// Remembers the highest counter opened per (room, sender, epoch) and
/// rejects anything not strictly above it. Kept by the client for as long
/// as it keeps the sender keys; a fresh tracker replaying a room's log in
/// order accepts every genuine message once.
#[derive(Debug, Default)]
pub struct ReplayTracker {
    highest: HashMap<(i64, String, u32), u64>,
}

impl ReplayTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// `Err(Replay)` if `header.counter` is not above the highest seen.
    pub fn check(&self, header: &EnvelopeHeader) -> Result<(), CryptoError> {
        match self.highest_seen(header.room_id, &header.sender, header.epoch) {
            Some(highest) if header.counter <= highest => Err(CryptoError::Replay),
            _ => Ok(()),
        }
    }

    /// Records an opened envelope's counter.
    pub fn record(&mut self, header: &EnvelopeHeader) {
        let slot = self
            .highest
            .entry((header.room_id, header.sender.clone(), header.epoch))
            .or_insert(header.counter);
        *slot = (*slot).max(header.counter);
    }

    pub fn highest_seen(&self, room_id: i64, sender: &str, epoch: u32) -> Option<u64> {
        self.highest
            .get(&(room_id, sender.to_owned(), epoch))
            .copied()
    }
}

/// Serde helper: `Vec<u8>` as a standard base64 string.
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        BASE64.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_support::fixture_key;

    const ROOM: i64 = 42;

    fn sealed_text(key: &SenderKey, counter: u64) -> Vec<u8> {
        seal(
            ROOM,
            "alice",
            key,
            counter,
            &Payload::text("hi bob"),
            &fixture_key("alice"),
        )
        .unwrap()
    }

    fn context(identity: &IdentityKey) -> OpenContext<'_> {
        OpenContext {
            room_id: ROOM,
            sender: "alice",
            sender_identity: identity,
        }
    }

    #[test]
    fn sealed_text_and_file_open_again() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(3)?;
        let mut replay = ReplayTracker::new();
        let text = sealed_text(&key, 1);
        let opened = open(&text, &context(alice.public()), &key, &mut replay)?;
        assert!(opened.payload == Payload::text("hi bob"));
        assert_eq!(
            opened.header,
            EnvelopeHeader {
                room_id: ROOM,
                sender: "alice".into(),
                epoch: 3,
                counter: 1
            }
        );
        let file = Payload::file("cat.png", "image/png", vec![0, 1, 2, 255]);
        let body = seal(ROOM, "alice", &key, 2, &file, &alice)?;
        assert_eq!(peek(&body)?.counter, 2);
        let opened = open(&body, &context(alice.public()), &key, &mut replay)?;
        assert!(opened.payload == file);
        Ok(())
    }

    #[test]
    fn payload_json_is_the_documented_shape() {
        let text = Payload::text("hé");
        assert_eq!(
            String::from_utf8(text.to_bytes().to_vec()).unwrap(),
            r#"{"t":"text","text":"hé"}"#
        );
        let file = Payload::file("a.txt", "text/plain", b"hi".to_vec());
        assert_eq!(
            String::from_utf8(file.to_bytes().to_vec()).unwrap(),
            r#"{"t":"file","name":"a.txt","mime":"text/plain","data":"aGk="}"#
        );
    }

    #[test]
    fn unknown_payload_kinds_and_fields_are_rejected() {
        for bad in [
            r#"{"t":"video","url":"x"}"#,
            r#"{"t":"text","text":"x","extra":1}"#,
            r#"{"text":"x"}"#,
            r#"{"t":"file","name":"a","mime":"b","data":"not base64!"}"#,
        ] {
            assert!(Payload::from_bytes(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn flipping_any_single_byte_makes_the_envelope_fail() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(1)?;
        let body = sealed_text(&key, 7);
        for position in 0..body.len() {
            let mut tampered = body.clone();
            tampered[position] ^= 0x01;
            let result = open(
                &tampered,
                &context(alice.public()),
                &key,
                &mut ReplayTracker::new(),
            );
            assert!(result.is_err(), "flipped byte {position} still opened");
        }
        Ok(())
    }

    #[test]
    fn truncated_or_extended_envelopes_fail() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(1)?;
        let body = sealed_text(&key, 1);
        for len in 0..body.len() {
            assert!(
                open(
                    &body[..len],
                    &context(alice.public()),
                    &key,
                    &mut ReplayTracker::new()
                )
                .is_err()
            );
        }
        let mut longer = body.clone();
        longer.push(0);
        assert_eq!(
            open(
                &longer,
                &context(alice.public()),
                &key,
                &mut ReplayTracker::new()
            )
            .err(),
            Some(CryptoError::OpenFailed)
        );
        Ok(())
    }

    #[test]
    fn binding_errors_are_reported_distinctly() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let bob = fixture_key("bob");
        let key = SenderKey::generate(1)?;
        let body = sealed_text(&key, 1);
        let mut replay = ReplayTracker::new();
        let wrong_room = OpenContext {
            room_id: ROOM + 1,
            ..context(alice.public())
        };
        assert_eq!(
            open(&body, &wrong_room, &key, &mut replay).err(),
            Some(CryptoError::WrongRoom)
        );
        let wrong_sender = OpenContext {
            sender: "bob",
            sender_identity: bob.public(),
            ..context(alice.public())
        };
        assert_eq!(
            open(&body, &wrong_sender, &key, &mut replay).err(),
            Some(CryptoError::WrongSender)
        );
        let wrong_identity = context(bob.public());
        assert_eq!(
            open(&body, &wrong_identity, &key, &mut replay).err(),
            Some(CryptoError::BadSignature)
        );
        let other_key = SenderKey::generate(1)?;
        assert_eq!(
            open(&body, &context(alice.public()), &other_key, &mut replay).err(),
            Some(CryptoError::OpenFailed)
        );
        Ok(())
    }

    #[test]
    fn unknown_version_is_rejected() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(1)?;
        let mut body = sealed_text(&key, 1);
        body[4] = 2;
        assert_eq!(
            peek(&body).err(),
            Some(CryptoError::UnknownVersion { version: 2 })
        );
        assert_eq!(
            open(
                &body,
                &context(alice.public()),
                &key,
                &mut ReplayTracker::new()
            )
            .err(),
            Some(CryptoError::UnknownVersion { version: 2 })
        );
        Ok(())
    }

    #[test]
    fn replayed_or_older_counter_is_rejected() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(1)?;
        let mut replay = ReplayTracker::new();
        let fifth = sealed_text(&key, 5);
        let fourth = sealed_text(&key, 4);
        open(&fifth, &context(alice.public()), &key, &mut replay)?;
        assert_eq!(
            open(&fifth, &context(alice.public()), &key, &mut replay).err(),
            Some(CryptoError::Replay)
        );
        assert_eq!(
            open(&fourth, &context(alice.public()), &key, &mut replay).err(),
            Some(CryptoError::Replay)
        );
        assert_eq!(replay.highest_seen(ROOM, "alice", 1), Some(5));
        open(
            &sealed_text(&key, 6),
            &context(alice.public()),
            &key,
            &mut replay,
        )?;
        Ok(())
    }

    #[test]
    fn failed_open_does_not_advance_the_replay_tracker() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(1)?;
        let mut replay = ReplayTracker::new();
        let body = sealed_text(&key, 9);
        let other_key = SenderKey::generate(1)?;
        assert!(open(&body, &context(alice.public()), &other_key, &mut replay).is_err());
        assert_eq!(replay.highest_seen(ROOM, "alice", 1), None);
        Ok(())
    }

    #[test]
    fn two_seals_of_the_same_message_differ() -> anyhow::Result<()> {
        let key = SenderKey::generate(1)?;
        let first = peek_nonce(&sealed_text(&key, 1));
        let second = peek_nonce(&sealed_text(&key, 1));
        assert_ne!(first, second, "nonces are fresh per seal");
        Ok(())
    }

    fn peek_nonce(body: &[u8]) -> [u8; NONCE_LEN] {
        ParsedEnvelope::parse(body).unwrap().nonce
    }
}
