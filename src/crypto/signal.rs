//! Ephemeral signals: read receipts and typing indicators (PROTOCOL §21).
//!
//! A signal is exactly a version-2 message envelope with kind byte `0x03`,
//! sealed under the sending device's current sender key for the room and
//! signed by its identity key: the layout, associated data and signature
//! are `envelope`'s (this module reuses its code). Because the kind byte is
//! in the associated data and under the signature, a signal can never be
//! taken for a message or the reverse.
//!
//! What differs is the counter: it is the sealer's clock in Unix
//! milliseconds, strictly increasing per sealer (`SignalClock`), and a
//! reader accepts a signal only if its counter is above the last one it
//! accepted from that (room, sender, device) (`Freshness`) and, for typing
//! only, within ten minutes of its own clock. Receipts are exempt from the
//! window so that the receipts the server keeps still count after a long
//! absence: a replayed old receipt can only claim a lower seq, and readers
//! merge receipts as a maximum. Signals never touch the message replay set.

use std::collections::HashMap;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::CryptoError;
use super::device::DeviceId;
use super::envelope::{
    self, Chain, EnvelopeHeader, NONCE_LEN, OpenContext, ParsedEnvelope, has_duplicate_keys,
};
use super::keys::IdentityPrivateKey;
use super::sender_keys::SenderKey;
use super::wire::{BodyKind, FORMAT_VERSION, random_bytes};

/// How far a typing signal's clock may be from the reader's, either way:
/// ten minutes, so the server cannot hold one back and replay it later.
/// Receipts are exempt (see the module docs).
pub const MAX_SKEW_MS: u64 = 10 * 60 * 1000;

/// The payload version this code writes and reads.
pub const SIGNAL_PAYLOAD_VERSION: u64 = 1;

/// What a signal says. Not plaintext worth hiding from logs in the same way
/// as a message, but still kept out of `Debug` output by habit: it reveals
/// reading behaviour.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `delivered`: the highest seq this device received and stored;
    /// `read`: the highest seq the user has seen (absent when the user
    /// turned read receipts off).
    Receipt { delivered: u64, read: Option<u64> },
    /// `true` while the user types (repeated every 3 s), `false` to stop.
    Typing { typing: bool },
}

impl Signal {
    /// The frame's `kind` field for this signal.
    pub fn kind(&self) -> &'static str {
        match self {
            Signal::Receipt { .. } => "receipt",
            Signal::Typing { .. } => "typing",
        }
    }

    /// The exact plaintext: `{"v":1,"t":"receipt","delivered":57,"read":55}`
    /// or `{"v":1,"t":"typing","typing":true}`.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let json = match self {
            Signal::Receipt { delivered, read } => match read {
                Some(read) => {
                    format!(r#"{{"v":1,"t":"receipt","delivered":{delivered},"read":{read}}}"#)
                }
                None => format!(r#"{{"v":1,"t":"receipt","delivered":{delivered}}}"#),
            },
            Signal::Typing { typing } => format!(r#"{{"v":1,"t":"typing","typing":{typing}}}"#),
        };
        Zeroizing::new(json.into_bytes())
    }

    /// Reads a plaintext. Anything but a well-formed version-1 `receipt`
    /// or `typing` fails: a reader drops such signals silently (§21), so
    /// unlike messages there is no "unsupported" outcome to show.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if has_duplicate_keys(bytes) {
            return Err(CryptoError::OpenFailed);
        }
        #[derive(Deserialize)]
        #[serde(tag = "t", rename_all = "lowercase")]
        enum Wire {
            Receipt { delivered: u64, read: Option<u64> },
            Typing { typing: bool },
        }
        #[derive(Deserialize)]
        struct Versioned {
            v: u64,
            #[serde(flatten)]
            signal: Wire,
        }
        let value: Versioned =
            serde_json::from_slice(bytes).map_err(|_| CryptoError::OpenFailed)?;
        if value.v != SIGNAL_PAYLOAD_VERSION {
            return Err(CryptoError::OpenFailed);
        }
        Ok(match value.signal {
            Wire::Receipt { delivered, read } => Signal::Receipt { delivered, read },
            Wire::Typing { typing } => Signal::Typing { typing },
        })
    }
}

/// Hands out signal counters: the clock in Unix milliseconds, made strictly
/// greater than the previous one (one sealer per room and device: keep one
/// clock per room, or one for all rooms, which is stricter and just as good).
#[derive(Debug, Default)]
pub struct SignalClock {
    last: u64,
}

impl SignalClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter for a signal sealed at `now_ms`.
    pub fn next(&mut self, now_ms: u64) -> u64 {
        self.last = now_ms.max(self.last.saturating_add(1));
        self.last
    }
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seals `signal` from `device` of `sender` in `room_id` under the device's
/// current `sender_key`, with a fresh nonce. `counter` comes from a
/// `SignalClock`.
pub fn seal(
    room_id: i64,
    sender: &str,
    device: &DeviceId,
    sender_key: &SenderKey,
    counter: u64,
    signal: &Signal,
    signer: &IdentityPrivateKey,
) -> Result<Vec<u8>, CryptoError> {
    let nonce = random_bytes::<NONCE_LEN>()?;
    seal_raw(
        room_id,
        sender,
        device,
        sender_key,
        counter,
        &nonce,
        &signal.to_bytes(),
        signer,
    )
}

/// `seal` with a caller-chosen nonce and plaintext, for test vectors.
#[allow(clippy::too_many_arguments)]
pub(crate) fn seal_raw(
    room_id: i64,
    sender: &str,
    device: &DeviceId,
    sender_key: &SenderKey,
    counter: u64,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    signer: &IdentityPrivateKey,
) -> Result<Vec<u8>, CryptoError> {
    let chain = Chain {
        version: FORMAT_VERSION,
        room_id,
        sender,
        device,
    };
    envelope::seal_raw_kind(
        BodyKind::Signal,
        &chain,
        sender_key,
        counter,
        nonce,
        plaintext,
        signer,
    )
}

/// The clear fields of a signal (to find the sender key); trust them only
/// after `open`.
pub fn peek(body: &[u8]) -> Result<EnvelopeHeader, CryptoError> {
    let parsed = parse(body)?;
    Ok(parsed.header)
}

fn parse(body: &[u8]) -> Result<ParsedEnvelope<'_>, CryptoError> {
    let parsed = ParsedEnvelope::parse_kind(body, BodyKind::Signal)?;
    // Signals exist only in format version 2.
    if parsed.header.version != FORMAT_VERSION {
        return Err(CryptoError::OpenFailed);
    }
    Ok(parsed)
}

/// A signal that opened.
pub struct OpenedSignal {
    pub header: EnvelopeHeader,
    pub signal: Signal,
}

/// Opens a signal at the reader's time `now_ms`. Checks, in order:
/// framing (`OpenFailed`, `UnknownVersion`), room (`WrongRoom`), sender
/// (`WrongSender`), signature (`BadSignature`), replay (`Replay` if the
/// counter is not above the last accepted from this device), then the
/// key's epoch, the AES-GCM tag and the payload (`OpenFailed`), and last,
/// for a typing signal only, the window (`Stale` if more than ten minutes
/// from `now_ms`; receipts have none). Only a full success moves
/// `freshness`.
pub fn open(
    body: &[u8],
    context: &OpenContext<'_>,
    sender_key: &SenderKey,
    now_ms: u64,
    freshness: &mut Freshness,
) -> Result<OpenedSignal, CryptoError> {
    let parsed = parse(body)?;
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
    freshness.check(header)?;
    if header.epoch != sender_key.epoch() {
        return Err(CryptoError::OpenFailed);
    }
    let plaintext = envelope::decrypt(body, &parsed, sender_key)?;
    let signal = Signal::from_bytes(&plaintext)?;
    // The type is known only now. A replayed old receipt is harmless
    // (readers keep the maximum), a replayed "is typing" is not.
    if matches!(signal, Signal::Typing { .. }) && header.counter.abs_diff(now_ms) > MAX_SKEW_MS {
        return Err(CryptoError::Stale);
    }
    freshness.record(header);
    Ok(OpenedSignal {
        header: parsed.header,
        signal,
    })
}

/// Per (room, sender, device): the highest signal counter accepted.
/// Kept in memory only: after a restart the ten-minute window alone stops
/// old typing signals, which is all their short life needs (old receipts
/// may come again, and are merged as a maximum).
#[derive(Debug, Default)]
pub struct Freshness {
    last: HashMap<(i64, String, DeviceId), u64>,
}

impl Freshness {
    pub fn new() -> Self {
        Self::default()
    }

    fn check(&self, header: &EnvelopeHeader) -> Result<(), CryptoError> {
        let key = (header.room_id, header.sender.clone(), header.device);
        if self
            .last
            .get(&key)
            .is_some_and(|last| header.counter <= *last)
        {
            return Err(CryptoError::Replay);
        }
        Ok(())
    }

    fn record(&mut self, header: &EnvelopeHeader) {
        let key = (header.room_id, header.sender.clone(), header.device);
        let last = self.last.entry(key).or_insert(header.counter);
        *last = (*last).max(header.counter);
    }

    /// The highest counter accepted from this device, if any.
    pub fn last_accepted(&self, room_id: i64, sender: &str, device: DeviceId) -> Option<u64> {
        self.last
            .get(&(room_id, sender.to_owned(), device))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::envelope::{Payload, ReplayTracker};
    use crate::crypto::identity::IdentityKey;
    use crate::crypto::test_support::fixture_key;

    const ROOM: i64 = 42;
    const DEVICE: DeviceId = DeviceId([7; 16]);
    const NOW: u64 = 1_795_683_333_414;

    fn context(identity: &IdentityKey) -> OpenContext<'_> {
        OpenContext {
            room_id: ROOM,
            sender: "alice",
            sender_identity: identity,
        }
    }

    fn sealed(key: &SenderKey, counter: u64, signal: &Signal) -> Vec<u8> {
        seal(
            ROOM,
            "alice",
            &DEVICE,
            key,
            counter,
            signal,
            &fixture_key("alice"),
        )
        .unwrap()
    }

    const RECEIPT: Signal = Signal::Receipt {
        delivered: 57,
        read: Some(55),
    };

    #[test]
    fn receipts_and_typing_open_again() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(3)?;
        let mut freshness = Freshness::new();
        for (offset, signal) in [
            RECEIPT,
            Signal::Receipt {
                delivered: 58,
                read: None,
            },
            Signal::Typing { typing: true },
            Signal::Typing { typing: false },
        ]
        .into_iter()
        .enumerate()
        {
            let counter = NOW + offset as u64;
            let body = sealed(&key, counter, &signal);
            assert_eq!(peek(&body)?.counter, counter);
            let opened = open(&body, &context(alice.public()), &key, NOW, &mut freshness)?;
            assert!(opened.signal == signal);
            assert_eq!(opened.header.device, DEVICE);
            assert_eq!(opened.header.epoch, 3);
        }
        assert_eq!(
            freshness.last_accepted(ROOM, "alice", DEVICE),
            Some(NOW + 3)
        );
        Ok(())
    }

    #[test]
    fn payloads_are_the_documented_json() {
        assert_eq!(
            &RECEIPT.to_bytes()[..],
            br#"{"v":1,"t":"receipt","delivered":57,"read":55}"#
        );
        assert_eq!(
            &Signal::Receipt {
                delivered: 57,
                read: None
            }
            .to_bytes()[..],
            br#"{"v":1,"t":"receipt","delivered":57}"#
        );
        assert_eq!(
            &Signal::Typing { typing: true }.to_bytes()[..],
            br#"{"v":1,"t":"typing","typing":true}"#
        );
        for bad in [
            r#"{"v":1,"t":"receipt"}"#,
            r#"{"v":1,"t":"receipt","delivered":-1}"#,
            r#"{"v":1,"t":"receipt","delivered":5,"delivered":6}"#,
            r#"{"v":1,"t":"typing","typing":"yes"}"#,
            r#"{"v":2,"t":"typing","typing":true}"#,
            r#"{"t":"typing","typing":true}"#,
            r#"{"v":1,"t":"text","text":"hi"}"#,
            r#"{"v":1,"t":"poke"}"#,
            "[]",
        ] {
            assert!(Signal::from_bytes(bad.as_bytes()).is_err(), "{bad}");
        }
        // Unknown members are ignored, as in message payloads.
        assert!(
            Signal::from_bytes(br#"{"v":1,"t":"typing","typing":false,"x":1}"#).ok()
                == Some(Signal::Typing { typing: false })
        );
    }

    #[test]
    fn the_clock_always_moves_forward() {
        let mut clock = SignalClock::new();
        assert_eq!(clock.next(1000), 1000);
        assert_eq!(clock.next(1000), 1001);
        assert_eq!(clock.next(900), 1002);
        assert_eq!(clock.next(5000), 5000);
    }

    #[test]
    fn a_signal_not_above_the_last_accepted_is_a_replay() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(1)?;
        let mut freshness = Freshness::new();
        let ctx = context(alice.public());
        let later = sealed(&key, NOW + 10, &RECEIPT);
        let earlier = sealed(&key, NOW + 5, &RECEIPT);
        open(&later, &ctx, &key, NOW, &mut freshness)?;
        for body in [&later, &earlier] {
            assert_eq!(
                open(body, &ctx, &key, NOW, &mut freshness).err(),
                Some(CryptoError::Replay)
            );
        }
        // Another device of the same user is tracked on its own.
        let other = seal(
            ROOM,
            "alice",
            &DeviceId([8; 16]),
            &key,
            NOW,
            &RECEIPT,
            &alice,
        )?;
        open(&other, &ctx, &key, NOW, &mut freshness)?;
        Ok(())
    }

    #[test]
    fn typing_more_than_ten_minutes_off_is_stale() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(1)?;
        let ctx = context(alice.public());
        let typing = Signal::Typing { typing: true };
        for counter in [NOW - MAX_SKEW_MS - 1, NOW + MAX_SKEW_MS + 1] {
            let mut freshness = Freshness::new();
            let body = sealed(&key, counter, &typing);
            assert_eq!(
                open(&body, &ctx, &key, NOW, &mut freshness).err(),
                Some(CryptoError::Stale)
            );
            assert_eq!(freshness.last_accepted(ROOM, "alice", DEVICE), None);
        }
        for counter in [NOW - MAX_SKEW_MS, NOW + MAX_SKEW_MS] {
            let body = sealed(&key, counter, &typing);
            open(&body, &ctx, &key, NOW, &mut Freshness::new())?;
        }
        Ok(())
    }

    #[test]
    fn an_old_receipt_opens_but_stays_a_replay_once_seen() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(1)?;
        let ctx = context(alice.public());
        let mut freshness = Freshness::new();
        // Kept by the server for a day: still opens (§21, kept receipts).
        let day_old = NOW - 24 * 60 * 60 * 1000;
        let body = sealed(&key, day_old, &RECEIPT);
        let opened = open(&body, &ctx, &key, NOW, &mut freshness)?;
        assert!(opened.signal == RECEIPT);
        assert_eq!(
            freshness.last_accepted(ROOM, "alice", DEVICE),
            Some(day_old)
        );
        // The per-device rule still holds for receipts.
        assert_eq!(
            open(&body, &ctx, &key, NOW, &mut freshness).err(),
            Some(CryptoError::Replay)
        );
        let older = sealed(&key, day_old - 1, &RECEIPT);
        assert_eq!(
            open(&older, &ctx, &key, NOW, &mut freshness).err(),
            Some(CryptoError::Replay)
        );
        // A typing signal of the same age is stale and moves nothing.
        let typing = sealed(&key, day_old + 1, &Signal::Typing { typing: true });
        assert_eq!(
            open(&typing, &ctx, &key, NOW, &mut freshness).err(),
            Some(CryptoError::Stale)
        );
        assert_eq!(
            freshness.last_accepted(ROOM, "alice", DEVICE),
            Some(day_old)
        );
        // A receipt from the future (a fast clock) opens too.
        let ahead = sealed(&key, NOW + 2 * MAX_SKEW_MS, &RECEIPT);
        open(&ahead, &ctx, &key, NOW, &mut freshness)?;
        Ok(())
    }

    #[test]
    fn signals_and_messages_never_pass_for_each_other() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(1)?;
        let ctx = context(alice.public());
        let signal = sealed(&key, NOW, &Signal::Typing { typing: true });
        let message = envelope::seal(
            ROOM,
            "alice",
            &DEVICE,
            &key,
            NOW,
            &Payload::text("hi"),
            &alice,
        )?;
        assert_eq!(
            envelope::open(&signal, &ctx, &key, &mut ReplayTracker::new()).err(),
            Some(CryptoError::OpenFailed)
        );
        assert_eq!(
            open(&message, &ctx, &key, NOW, &mut Freshness::new()).err(),
            Some(CryptoError::OpenFailed)
        );
        // Swapping the kind byte breaks the signature.
        let mut as_message = signal.clone();
        as_message[5] = 0x01;
        assert_eq!(
            envelope::open(&as_message, &ctx, &key, &mut ReplayTracker::new()).err(),
            Some(CryptoError::BadSignature)
        );
        Ok(())
    }

    #[test]
    fn flipping_any_byte_or_failing_a_binding_fails() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let bob = fixture_key("bob");
        let key = SenderKey::generate(1)?;
        let body = sealed(&key, NOW, &RECEIPT);
        for position in 0..body.len() {
            let mut tampered = body.clone();
            tampered[position] ^= 0x01;
            let result = open(
                &tampered,
                &context(alice.public()),
                &key,
                NOW,
                &mut Freshness::new(),
            );
            assert!(result.is_err(), "flipped byte {position} still opened");
        }
        let mut freshness = Freshness::new();
        let wrong_room = OpenContext {
            room_id: ROOM + 1,
            ..context(alice.public())
        };
        assert_eq!(
            open(&body, &wrong_room, &key, NOW, &mut freshness).err(),
            Some(CryptoError::WrongRoom)
        );
        let wrong_sender = OpenContext {
            sender: "bob",
            ..context(bob.public())
        };
        assert_eq!(
            open(&body, &wrong_sender, &key, NOW, &mut freshness).err(),
            Some(CryptoError::WrongSender)
        );
        assert_eq!(
            open(&body, &context(bob.public()), &key, NOW, &mut freshness).err(),
            Some(CryptoError::BadSignature)
        );
        let other_key = SenderKey::generate(1)?;
        assert_eq!(
            open(
                &body,
                &context(alice.public()),
                &other_key,
                NOW,
                &mut freshness
            )
            .err(),
            Some(CryptoError::OpenFailed)
        );
        // Failures did not move the tracker: the genuine signal still opens.
        open(&body, &context(alice.public()), &key, NOW, &mut freshness)?;
        Ok(())
    }
}
