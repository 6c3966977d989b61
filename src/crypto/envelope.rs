//! Sealing and opening one message: the payload (text or a file) encrypted
//! with AES-256-GCM under the sender key of one device's chain, bound to
//! room, sender, device, epoch and counter, and signed with the sender's
//! identity key.
//!
//! Layout of version 2 (all integers big-endian; `docs/PROTOCOL.md §19` has
//! the table): `"HUSH" 0x02 0x01 | room_id i64 | sender_len u8 | sender |
//! device [16] | epoch u32 | counter u64 | nonce [12] | ct_len u32 |
//! ciphertext‖tag | sig_len u16 | sig`. Version 1, still read, has no
//! device. The AES-GCM associated data is every byte before the nonce; the
//! RSA-PSS signature covers every byte before `sig_len`.
//!
//! Opening checks, in order: framing and version, that the envelope names
//! the room and sender the server claims, the signature under the sender's
//! key, the replay tracker, then the AES-GCM tag. Only the first failure is
//! reported, and every failure after the signature looks the same
//! (`OpenFailed`) except a replay.

use std::collections::{BTreeMap, HashMap};

use aes_gcm::aead::{Aead, KeyInit, Payload as AeadPayload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::CryptoError;
use super::device::DeviceId;
use super::identity::IdentityKey;
use super::keys::IdentityPrivateKey;
use super::sender_keys::SenderKey;
use super::wire::{BodyKind, FORMAT_VERSION, Reader, Writer, random_bytes};

pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// The payload version this code writes and the highest it displays.
pub const PAYLOAD_VERSION: u64 = 1;

/// The largest `seq` a payload may name (`of`, `reply_to`): 2^53 − 1, the
/// largest integer every JSON reader (JavaScript's included) reads exactly.
pub const MAX_PAYLOAD_SEQ: i64 = (1 << 53) - 1;

/// The longest reaction, in bytes of UTF-8 (§21).
pub const MAX_EMOJI_BYTES: usize = 64;

/// What a message carries once decrypted, serialized as compact JSON
/// (`docs/PROTOCOL.md` §19 and §21):
/// `{"v":1,"t":"text","text":"…"}` (optionally `"reply_to":41`),
/// `{"v":1,"t":"file","name":"…","mime":"…","data":"<base64>"}`,
/// `{"v":1,"t":"edit","of":41,"text":"…"}`, `{"v":1,"t":"delete","of":41}`
/// or `{"v":1,"t":"react","of":41,"emoji":"👍"}`.
///
/// No `Debug`: it is plaintext. `Deserialize` is for the client's own
/// store; what other clients wrote is read with `from_bytes`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Payload {
    Text {
        text: String,
        /// The earlier message of the room this one answers (§21).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<i64>,
    },
    File {
        name: String,
        mime: String,
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<i64>,
    },
    /// The whole new text of the sender's own text message `of`.
    Edit { of: i64, text: String },
    /// Deletes the sender's own message `of` for everyone.
    Delete { of: i64 },
    /// The sender's reaction to message `of`; `""` takes it back.
    React { of: i64, emoji: String },
}

/// The exact shapes of version-1 payloads, read strictly.
#[derive(Deserialize)]
#[serde(tag = "t", rename_all = "lowercase", deny_unknown_fields)]
enum PayloadV1 {
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

/// What a decrypted, authenticated envelope holds for the reader.
#[derive(Clone, PartialEq, Eq)]
pub enum Content {
    Payload(Payload),
    /// A payload type or version this client does not know: genuine, but
    /// only a newer hush can display it.
    Unsupported,
}

impl Payload {
    pub fn text(text: impl Into<String>) -> Self {
        Payload::Text {
            text: text.into(),
            reply_to: None,
        }
    }

    pub fn file(name: impl Into<String>, mime: impl Into<String>, data: Vec<u8>) -> Self {
        Payload::File {
            name: name.into(),
            mime: mime.into(),
            data,
            reply_to: None,
        }
    }

    /// This payload (a text or a file) as a reply to `seq`; other payloads
    /// are returned as they are.
    pub fn replying_to(mut self, seq: i64) -> Self {
        if let Payload::Text { reply_to, .. } | Payload::File { reply_to, .. } = &mut self {
            *reply_to = Some(seq);
        }
        self
    }

    /// The message a relation (edit, delete, react) refers to.
    pub fn relation_target(&self) -> Option<i64> {
        match self {
            Payload::Edit { of, .. } | Payload::Delete { of } | Payload::React { of, .. } => {
                Some(*of)
            }
            Payload::Text { .. } | Payload::File { .. } => None,
        }
    }

    /// The message a text or file answers, as written by its sender (not
    /// checked against the reply's position: the reader does that).
    pub fn reply_to(&self) -> Option<i64> {
        match self {
            Payload::Text { reply_to, .. } | Payload::File { reply_to, .. } => *reply_to,
            _ => None,
        }
    }

    /// The exact plaintext bytes that get encrypted (payload version 1).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        #[derive(Serialize)]
        struct Versioned<'a> {
            v: u64,
            #[serde(flatten)]
            payload: &'a Payload,
        }
        let versioned = Versioned {
            v: PAYLOAD_VERSION,
            payload: self,
        };
        Zeroizing::new(serde_json::to_vec(&versioned).expect("payload always serializes"))
    }

    /// The plaintext of a version-1 envelope: exactly the old shape (only
    /// meaningful for a text or a file without `reply_to`).
    pub fn to_bytes_v1(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(serde_json::to_vec(self).expect("payload always serializes"))
    }

    /// Reads a version-1 envelope's plaintext: unknown types and members fail.
    pub fn from_bytes_v1(bytes: &[u8]) -> Result<Self, CryptoError> {
        match serde_json::from_slice(bytes).map_err(|_| CryptoError::OpenFailed)? {
            PayloadV1::Text { text } => Ok(Payload::text(text)),
            PayloadV1::File { name, mime, data } => Ok(Payload::file(name, mime, data)),
        }
    }

    /// Reads a version-2 envelope's plaintext by §19's and §21's rules:
    /// duplicate member names fail; unknown members are ignored; missing or
    /// mistyped known members fail, except `reply_to`, which is ignored
    /// unless it is a usable seq; an unknown type or a newer payload version
    /// is `Unsupported`, not an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Content, CryptoError> {
        if has_duplicate_keys(bytes) {
            return Err(CryptoError::OpenFailed);
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|_| CryptoError::OpenFailed)?;
        let object = value.as_object().ok_or(CryptoError::OpenFailed)?;
        let version = match object.get("v") {
            None => 1,
            Some(v) => v
                .as_u64()
                .filter(|v| *v >= 1)
                .ok_or(CryptoError::OpenFailed)?,
        };
        let kind = object
            .get("t")
            .and_then(|t| t.as_str())
            .ok_or(CryptoError::OpenFailed)?;
        if version > PAYLOAD_VERSION {
            return Ok(Content::Unsupported);
        }
        let string = |name: &str| -> Result<String, CryptoError> {
            object
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or(CryptoError::OpenFailed)
        };
        let of = || {
            object
                .get("of")
                .and_then(payload_seq)
                .ok_or(CryptoError::OpenFailed)
        };
        let reply_to = object.get("reply_to").and_then(payload_seq);
        #[derive(Deserialize)]
        struct File {
            name: String,
            mime: String,
            #[serde(with = "base64_bytes")]
            data: Vec<u8>,
        }
        let payload = match kind {
            "text" => Payload::Text {
                text: string("text")?,
                reply_to,
            },
            "file" => {
                let File { name, mime, data } =
                    serde_json::from_value(value.clone()).map_err(|_| CryptoError::OpenFailed)?;
                Payload::File {
                    name,
                    mime,
                    data,
                    reply_to,
                }
            }
            "edit" => Payload::Edit {
                of: of()?,
                text: string("text")?,
            },
            "delete" => Payload::Delete { of: of()? },
            "react" => {
                let emoji = string("emoji")?;
                if !is_valid_reaction(&emoji) {
                    return Err(CryptoError::OpenFailed);
                }
                Payload::React { of: of()?, emoji }
            }
            _ => return Ok(Content::Unsupported),
        };
        Ok(Content::Payload(payload))
    }
}

/// A seq named in a payload (`of`, `reply_to`): a JSON number that is an
/// integer from 1 to 2^53 − 1, however it is written (`41`, `41.0` and
/// `4.1e1` are the same number to every JSON reader).
fn payload_seq(value: &serde_json::Value) -> Option<i64> {
    if let Some(n) = value.as_i64() {
        return (1..=MAX_PAYLOAD_SEQ).contains(&n).then_some(n);
    }
    let n = value.as_f64()?;
    let is_seq = n.fract() == 0.0 && n >= 1.0 && n <= MAX_PAYLOAD_SEQ as f64;
    is_seq.then_some(n as i64)
}

/// Whether `emoji` may be a reaction: `""` (taking one back), or 1 to 64
/// bytes of UTF-8 with no control character (Unicode category Cc). Any
/// other string is accepted: hush does not keep a list of emoji.
pub fn is_valid_reaction(emoji: &str) -> bool {
    emoji.len() <= MAX_EMOJI_BYTES && !emoji.chars().any(char::is_control)
}

/// Whether any JSON object in `bytes` names a member twice. `serde_json`
/// keeps the last one silently, so two readers could disagree on what a
/// signed message says; §19 rejects such payloads instead.
pub(crate) fn has_duplicate_keys(bytes: &[u8]) -> bool {
    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use std::collections::HashSet;

    struct Unique;
    impl<'de> DeserializeSeed<'de> for Unique {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(Unique)
        }
    }
    impl<'de> Visitor<'de> for Unique {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Unique)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key) {
                    return Err(de::Error::custom("duplicate member"));
                }
                map.next_value_seed(Unique)?;
            }
            Ok(())
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    Unique.deserialize(&mut deserializer).is_err()
}

/// A file name from a message, made safe to show and to save: the part after
/// the last `/` or `\`, control characters replaced, at most 255 bytes, and
/// `attachment` if nothing is left (§19).
pub fn safe_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut out = String::new();
    for c in base.chars() {
        let c = if c.is_control() { '_' } else { c };
        if out.len() + c.len_utf8() > 255 {
            break;
        }
        out.push(c);
    }
    if out.is_empty() || out == "." || out == ".." {
        "attachment".to_owned()
    } else {
        out
    }
}

/// The clear, unauthenticated fields of a message envelope. Read them with
/// `peek` to find the right sender key; trust them only after `open`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHeader {
    pub version: u8,
    pub room_id: i64,
    pub sender: String,
    /// `DeviceId::LEGACY` for version 1.
    pub device: DeviceId,
    pub epoch: u32,
    pub counter: u64,
}

/// Who the server says sent an envelope, where, and the key we accept for
/// that sender at this point of the log.
pub struct OpenContext<'a> {
    pub room_id: i64,
    pub sender: &'a str,
    pub sender_identity: &'a IdentityKey,
}

/// A message that opened: authenticated header and decrypted content.
pub struct OpenedMessage {
    pub header: EnvelopeHeader,
    pub content: Content,
    /// A later message of the same chain was opened before this one.
    pub is_late: bool,
}

/// Seals `payload` as message number `counter` of `device`'s chain from
/// `sender` in `room_id` under `sender_key`, with a fresh random nonce. The
/// caller keeps counters unique per chain; `SenderKeyState` does that.
pub fn seal(
    room_id: i64,
    sender: &str,
    device: &DeviceId,
    sender_key: &SenderKey,
    counter: u64,
    payload: &Payload,
    signer: &IdentityPrivateKey,
) -> Result<Vec<u8>, CryptoError> {
    let plaintext = payload.to_bytes();
    seal_plaintext(
        room_id, sender, device, sender_key, counter, &plaintext, signer,
    )
}

/// Seals a plaintext given as bytes (a payload of a type `Payload` does not
/// model), in the current format version, with a fresh nonce. For clients
/// that write newer payload types, and for tests of how older readers take
/// them.
pub fn seal_plaintext(
    room_id: i64,
    sender: &str,
    device: &DeviceId,
    sender_key: &SenderKey,
    counter: u64,
    plaintext: &[u8],
    signer: &IdentityPrivateKey,
) -> Result<Vec<u8>, CryptoError> {
    let nonce = random_bytes::<NONCE_LEN>()?;
    let chain = Chain {
        version: FORMAT_VERSION,
        room_id,
        sender,
        device,
    };
    seal_raw(&chain, sender_key, counter, &nonce, plaintext, signer)
}

/// Where a body goes: format version, room, sender and device.
pub(crate) struct Chain<'a> {
    pub version: u8,
    pub room_id: i64,
    pub sender: &'a str,
    pub device: &'a DeviceId,
}

/// Seals `plaintext` as given, with a caller-chosen nonce. Test vectors use
/// it directly (a nonce must never repeat under one sender key).
pub(crate) fn seal_raw(
    chain: &Chain<'_>,
    sender_key: &SenderKey,
    counter: u64,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    signer: &IdentityPrivateKey,
) -> Result<Vec<u8>, CryptoError> {
    seal_raw_kind(
        BodyKind::Message,
        chain,
        sender_key,
        counter,
        nonce,
        plaintext,
        signer,
    )
}

/// `seal_raw` for any body with the message envelope's layout: messages
/// (kind `0x01`) and signals (kind `0x03`, `signal`). The kind byte is in
/// the associated data and under the signature, so one is never taken for
/// the other.
pub(crate) fn seal_raw_kind(
    kind: BodyKind,
    chain: &Chain<'_>,
    sender_key: &SenderKey,
    counter: u64,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    signer: &IdentityPrivateKey,
) -> Result<Vec<u8>, CryptoError> {
    let mut body = Writer::with_version(chain.version, kind);
    body.i64(chain.room_id);
    body.username(chain.sender)?;
    if chain.version >= 2 {
        if chain.device.is_legacy() {
            return Err(CryptoError::OpenFailed);
        }
        body.device(chain.device);
    }
    body.u32(sender_key.epoch());
    body.u64(counter);
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*sender_key.key_bytes()));
    let ciphertext = cipher
        .encrypt(
            &Nonce::from(*nonce),
            AeadPayload {
                msg: plaintext,
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
/// caller can look up the sender key for the chain.
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
    replay.check(header)?;
    if header.epoch != sender_key.epoch() {
        return Err(CryptoError::OpenFailed);
    }
    let plaintext = decrypt(body, &parsed, sender_key)?;
    let content = if header.version >= 2 {
        Payload::from_bytes(&plaintext)?
    } else {
        Content::Payload(Payload::from_bytes_v1(&plaintext)?)
    };
    let is_late = replay.record(header);
    Ok(OpenedMessage {
        header: parsed.header,
        content,
        is_late,
    })
}

/// The AES-GCM plaintext of a parsed envelope-layout body under
/// `sender_key`; any failure is `OpenFailed`.
pub(crate) fn decrypt(
    body: &[u8],
    parsed: &ParsedEnvelope<'_>,
    sender_key: &SenderKey,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*sender_key.key_bytes()));
    cipher
        .decrypt(
            &Nonce::from(parsed.nonce),
            AeadPayload {
                msg: parsed.ciphertext,
                aad: &body[..parsed.aad_len],
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::OpenFailed)
}

/// Whether `signer` made this envelope's signature, whatever else is wrong
/// with it (to tell a retired key's signature from a stranger's).
pub fn is_signed_by(body: &[u8], signer: &IdentityKey) -> bool {
    ParsedEnvelope::parse(body).is_ok_and(|parsed| {
        signer
            .verify(&body[..parsed.signed_len], parsed.signature)
            .is_ok()
    })
}

/// An envelope split into its fields, nothing checked but the framing.
pub(crate) struct ParsedEnvelope<'a> {
    pub header: EnvelopeHeader,
    pub aad_len: usize,
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: &'a [u8],
    pub signed_len: usize,
    pub signature: &'a [u8],
}

impl<'a> ParsedEnvelope<'a> {
    fn parse(body: &'a [u8]) -> Result<Self, CryptoError> {
        Self::parse_kind(body, BodyKind::Message)
    }

    /// Parses a body of the envelope layout with the given kind byte.
    pub(crate) fn parse_kind(body: &'a [u8], kind: BodyKind) -> Result<Self, CryptoError> {
        let mut reader = Reader::new(body, kind)?;
        let version = reader.version();
        let room_id = reader.i64()?;
        let sender = reader.username()?;
        let device = reader.device()?;
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
                version,
                room_id,
                sender,
                device,
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

/// One chain: (room, sender, device, epoch).
type ChainKey = (i64, String, DeviceId, u32);

/// The counters opened per chain, as ranges: a replay is a counter opened
/// before, wherever it sits in the log; a counter below the highest is
/// accepted (honest clients can have a message stored after a later one)
/// and reported as late. Kept by the client for as long as it keeps the
/// sender keys; a fresh tracker replaying a room's log accepts every
/// genuine message once.
#[derive(Debug, Default)]
pub struct ReplayTracker {
    opened: HashMap<ChainKey, CounterSet>,
}

impl ReplayTracker {
    pub fn new() -> Self {
        Self::default()
    }

    fn chain(header: &EnvelopeHeader) -> ChainKey {
        (
            header.room_id,
            header.sender.clone(),
            header.device,
            header.epoch,
        )
    }

    /// `Err(Replay)` if this chain's counter was opened before.
    pub fn check(&self, header: &EnvelopeHeader) -> Result<(), CryptoError> {
        match self.opened.get(&Self::chain(header)) {
            Some(set) if set.contains(header.counter) => Err(CryptoError::Replay),
            _ => Ok(()),
        }
    }

    /// Records an opened envelope's counter; true if a higher one of the
    /// chain was opened before (the message is late).
    pub fn record(&mut self, header: &EnvelopeHeader) -> bool {
        let set = self.opened.entry(Self::chain(header)).or_default();
        let is_late = set.highest().is_some_and(|h| h > header.counter);
        set.insert(header.counter);
        is_late
    }

    pub fn highest_seen(
        &self,
        room_id: i64,
        sender: &str,
        device: DeviceId,
        epoch: u32,
    ) -> Option<u64> {
        self.opened
            .get(&(room_id, sender.to_owned(), device, epoch))
            .and_then(CounterSet::highest)
    }

    /// Every chain's opened counters, for the client's own (encrypted)
    /// store: `restore` gives back a tracker that judges the next envelopes
    /// exactly as this one would.
    pub fn chains(&self) -> Vec<SavedChain> {
        let mut chains: Vec<SavedChain> = self
            .opened
            .iter()
            .map(|((room_id, sender, device, epoch), set)| SavedChain {
                room_id: *room_id,
                sender: sender.clone(),
                device: device.to_hex(),
                epoch: *epoch,
                ranges: set.ranges.iter().map(|(s, e)| (*s, *e)).collect(),
            })
            .collect();
        chains.sort_by(|a, b| {
            (a.room_id, &a.sender, &a.device, a.epoch)
                .cmp(&(b.room_id, &b.sender, &b.device, b.epoch))
        });
        chains
    }

    /// A tracker from what `chains` returned; `None` if a chain is malformed.
    pub fn restore(chains: &[SavedChain]) -> Option<Self> {
        let mut opened = HashMap::new();
        for chain in chains {
            let device = DeviceId::from_hex(&chain.device)?;
            let mut set = CounterSet::default();
            for &(start, end) in &chain.ranges {
                if start > end {
                    return None;
                }
                set.ranges.insert(start, end);
            }
            opened.insert(
                (chain.room_id, chain.sender.clone(), device, chain.epoch),
                set,
            );
        }
        Some(Self { opened })
    }
}

/// One chain's opened counters as inclusive ranges (see `ReplayTracker::chains`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedChain {
    pub room_id: i64,
    pub sender: String,
    /// The device id in hex.
    pub device: String,
    pub epoch: u32,
    pub ranges: Vec<(u64, u64)>,
}

/// A set of `u64` as disjoint inclusive ranges keyed by their start: an
/// ordinary chain (0, 1, 2, …) is one range however long it is.
#[derive(Debug, Default)]
struct CounterSet {
    ranges: BTreeMap<u64, u64>,
}

impl CounterSet {
    fn contains(&self, n: u64) -> bool {
        self.ranges
            .range(..=n)
            .next_back()
            .is_some_and(|(_, end)| n <= *end)
    }

    fn highest(&self) -> Option<u64> {
        self.ranges.values().next_back().copied()
    }

    fn insert(&mut self, n: u64) {
        if self.contains(n) {
            return;
        }
        let mut start = n;
        let mut end = n;
        if let Some((&s, &e)) = self.ranges.range(..n).next_back()
            && e.checked_add(1) == Some(n)
        {
            start = s;
            self.ranges.remove(&s);
        }
        if let Some(next) = n.checked_add(1)
            && let Some(e) = self.ranges.remove(&next)
        {
            end = e;
        }
        self.ranges.insert(start, end);
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
    const DEVICE: DeviceId = DeviceId([7; 16]);

    fn sealed_text(key: &SenderKey, counter: u64) -> Vec<u8> {
        seal(
            ROOM,
            "alice",
            &DEVICE,
            key,
            counter,
            &Payload::text("hi bob"),
            &fixture_key("alice"),
        )
        .unwrap()
    }

    fn sealed_plaintext(key: &SenderKey, version: u8, plaintext: &[u8]) -> Vec<u8> {
        let chain = Chain {
            version,
            room_id: ROOM,
            sender: "alice",
            device: if version >= 2 {
                &DEVICE
            } else {
                &DeviceId::LEGACY
            },
        };
        seal_raw(
            &chain,
            key,
            0,
            &[9; NONCE_LEN],
            plaintext,
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

    fn opened_payload(opened: &OpenedMessage) -> &Payload {
        match &opened.content {
            Content::Payload(payload) => payload,
            Content::Unsupported => panic!("expected a payload"),
        }
    }

    #[test]
    fn sealed_text_and_file_open_again() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(3)?;
        let mut replay = ReplayTracker::new();
        let text = sealed_text(&key, 1);
        let opened = open(&text, &context(alice.public()), &key, &mut replay)?;
        assert!(*opened_payload(&opened) == Payload::text("hi bob"));
        assert_eq!(
            opened.header,
            EnvelopeHeader {
                version: 2,
                room_id: ROOM,
                sender: "alice".into(),
                device: DEVICE,
                epoch: 3,
                counter: 1
            }
        );
        let file = Payload::file("cat.png", "image/png", vec![0, 1, 2, 255]);
        let body = seal(ROOM, "alice", &DEVICE, &key, 2, &file, &alice)?;
        assert_eq!(peek(&body)?.counter, 2);
        let opened = open(&body, &context(alice.public()), &key, &mut replay)?;
        assert!(*opened_payload(&opened) == file);
        Ok(())
    }

    #[test]
    fn version_one_envelopes_still_open_on_the_legacy_device() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(1)?;
        let body = sealed_plaintext(&key, 1, &Payload::text("old").to_bytes_v1());
        let opened = open(
            &body,
            &context(alice.public()),
            &key,
            &mut ReplayTracker::new(),
        )?;
        assert_eq!(opened.header.version, 1);
        assert_eq!(opened.header.device, DeviceId::LEGACY);
        assert!(*opened_payload(&opened) == Payload::text("old"));
        // Version 1 keeps its strict payload rules.
        let body = sealed_plaintext(&key, 1, &Payload::text("old").to_bytes());
        let result = open(
            &body,
            &context(alice.public()),
            &key,
            &mut ReplayTracker::new(),
        );
        assert_eq!(result.err(), Some(CryptoError::OpenFailed));
        Ok(())
    }

    #[test]
    fn a_version_two_envelope_cannot_claim_the_legacy_device() -> anyhow::Result<()> {
        let key = SenderKey::generate(1)?;
        let mut body = sealed_text(&key, 0);
        let device_at = 6 + 8 + 1 + "alice".len();
        body[device_at..device_at + 16].fill(0);
        assert_eq!(peek(&body).err(), Some(CryptoError::OpenFailed));
        Ok(())
    }

    #[test]
    fn payload_json_is_the_documented_shape() {
        let text = Payload::text("hé");
        assert_eq!(
            String::from_utf8(text.to_bytes().to_vec()).unwrap(),
            r#"{"v":1,"t":"text","text":"hé"}"#
        );
        let file = Payload::file("a.txt", "text/plain", b"hi".to_vec());
        assert_eq!(
            String::from_utf8(file.to_bytes().to_vec()).unwrap(),
            r#"{"v":1,"t":"file","name":"a.txt","mime":"text/plain","data":"aGk="}"#
        );
        assert_eq!(
            String::from_utf8(text.to_bytes_v1().to_vec()).unwrap(),
            r#"{"t":"text","text":"hé"}"#
        );
    }

    #[test]
    fn version_two_payloads_follow_the_forward_compatible_rules() {
        let read = |json: &str| Payload::from_bytes(json.as_bytes());
        // Unknown types and newer payload versions are genuine but unsupported.
        for unsupported in [
            r#"{"v":1,"t":"reaction","emoji":"👍","to":3}"#,
            r#"{"v":2,"t":"text","text":"x"}"#,
            r#"{"t":"video","url":"x"}"#,
        ] {
            assert!(
                matches!(read(unsupported), Ok(Content::Unsupported)),
                "{unsupported}"
            );
        }
        // Unknown members of a known type are ignored; v defaults to 1.
        for fine in [
            r#"{"v":1,"t":"text","text":"x","mood":7}"#,
            r#"{"v":1,"t":"text","text":"x","reply_to":"7"}"#,
            r#"{"t":"text","text":"x"}"#,
        ] {
            assert!(
                read(fine).ok() == Some(Content::Payload(Payload::text("x"))),
                "{fine}"
            );
        }
        // Malformed, mistyped or ambiguous payloads fail.
        for bad in [
            r#"{"v":1,"t":"text","text":"x","text":"y"}"#,
            r#"{"v":1,"t":"text","text":"x","meta":{"a":1,"a":2}}"#,
            r#"{"v":1,"t":"text"}"#,
            r#"{"v":1,"t":"text","text":5}"#,
            r#"{"v":0,"t":"text","text":"x"}"#,
            r#"{"v":"1","t":"text","text":"x"}"#,
            r#"{"v":1,"text":"x"}"#,
            r#"["t","text"]"#,
            r#"{"v":1,"t":"file","name":"a","mime":"b","data":"not base64!"}"#,
            "not json",
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn version_one_payloads_reject_unknown_kinds_and_fields() {
        for bad in [
            r#"{"t":"video","url":"x"}"#,
            r#"{"t":"text","text":"x","extra":1}"#,
            r#"{"text":"x"}"#,
            r#"{"t":"file","name":"a","mime":"b","data":"not base64!"}"#,
        ] {
            assert!(Payload::from_bytes_v1(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unsupported_payload_opens_as_unsupported() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(1)?;
        let body = sealed_plaintext(&key, 2, br#"{"v":1,"t":"poll","q":"lunch?"}"#);
        let opened = open(
            &body,
            &context(alice.public()),
            &key,
            &mut ReplayTracker::new(),
        )?;
        assert!(opened.content == Content::Unsupported);
        Ok(())
    }

    #[test]
    fn file_names_are_made_safe() {
        assert_eq!(safe_file_name("cat.png"), "cat.png");
        assert_eq!(safe_file_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_file_name("C:\\Users\\x\\evil.exe"), "evil.exe");
        assert_eq!(safe_file_name("a\u{0}b\nc"), "a_b_c");
        assert_eq!(safe_file_name(""), "attachment");
        assert_eq!(safe_file_name("dir/"), "attachment");
        assert_eq!(safe_file_name(".."), "attachment");
        assert_eq!(safe_file_name(&"é".repeat(200)).len(), 254);
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
    fn unknown_version_magic_and_kind_are_told_apart() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(1)?;
        let mut body = sealed_text(&key, 1);
        body[4] = 3;
        assert_eq!(
            peek(&body).err(),
            Some(CryptoError::UnknownVersion { version: 3 })
        );
        assert_eq!(
            open(
                &body,
                &context(alice.public()),
                &key,
                &mut ReplayTracker::new()
            )
            .err(),
            Some(CryptoError::UnknownVersion { version: 3 })
        );
        body[4] = 2;
        body[5] = 9;
        assert_eq!(
            peek(&body).err(),
            Some(CryptoError::UnknownKind { kind: 9 })
        );
        body[0] = b'X';
        assert_eq!(peek(&body).err(), Some(CryptoError::NotHush));
        Ok(())
    }

    #[test]
    fn a_repeated_counter_is_a_replay_wherever_it_comes() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(1)?;
        let mut replay = ReplayTracker::new();
        let fifth = sealed_text(&key, 5);
        open(&fifth, &context(alice.public()), &key, &mut replay)?;
        assert_eq!(
            open(&fifth, &context(alice.public()), &key, &mut replay).err(),
            Some(CryptoError::Replay)
        );
        // Another envelope reusing the counter is a replay too.
        assert_eq!(
            open(
                &sealed_text(&key, 5),
                &context(alice.public()),
                &key,
                &mut replay
            )
            .err(),
            Some(CryptoError::Replay)
        );
        Ok(())
    }

    #[test]
    fn honest_reordering_opens_and_is_marked_late() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(1)?;
        let mut replay = ReplayTracker::new();
        let ctx = context(alice.public());
        let order = [0u64, 1, 4, 2, 5, 3];
        let mut late = Vec::new();
        for counter in order {
            let opened = open(&sealed_text(&key, counter), &ctx, &key, &mut replay)?;
            late.push(opened.is_late);
        }
        assert_eq!(late, [false, false, false, true, false, true]);
        assert_eq!(replay.highest_seen(ROOM, "alice", DEVICE, 1), Some(5));
        for counter in order {
            assert_eq!(
                open(&sealed_text(&key, counter), &ctx, &key, &mut replay).err(),
                Some(CryptoError::Replay),
                "counter {counter} again"
            );
        }
        Ok(())
    }

    #[test]
    fn devices_are_separate_chains() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(1)?;
        let mut replay = ReplayTracker::new();
        let other = DeviceId([8; 16]);
        let from_other = seal(ROOM, "alice", &other, &key, 0, &Payload::text("b"), &alice)?;
        open(
            &sealed_text(&key, 0),
            &context(alice.public()),
            &key,
            &mut replay,
        )?;
        open(&from_other, &context(alice.public()), &key, &mut replay)?;
        Ok(())
    }

    #[test]
    fn counter_sets_merge_ranges() {
        let mut set = CounterSet::default();
        for n in [5, 3, 4, 10, 0, 1, 2, u64::MAX] {
            set.insert(n);
        }
        assert_eq!(
            set.ranges.iter().map(|(s, e)| (*s, *e)).collect::<Vec<_>>(),
            [(0, 5), (10, 10), (u64::MAX, u64::MAX)]
        );
        assert!(set.contains(4) && set.contains(10) && !set.contains(6) && !set.contains(11));
        assert_eq!(set.highest(), Some(u64::MAX));
    }

    #[test]
    fn failed_open_does_not_advance_the_replay_tracker() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let key = SenderKey::generate(1)?;
        let mut replay = ReplayTracker::new();
        let body = sealed_text(&key, 9);
        let other_key = SenderKey::generate(1)?;
        assert!(open(&body, &context(alice.public()), &other_key, &mut replay).is_err());
        assert_eq!(replay.highest_seen(ROOM, "alice", DEVICE, 1), None);
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
