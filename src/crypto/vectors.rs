//! Test vectors in `tests/vectors/*.json` for independent implementations
//! (the browser client): fixed inputs, expected outputs, and rejection cases
//! with the error each must produce.
//!
//! RSA-PSS and RSA-OAEP are randomized, so the files store one produced
//! signature / wrapped key; checkers verify or unwrap them rather than
//! reproduce them. Everything deterministic (fingerprints, safety numbers,
//! AES-GCM under a fixed nonce, the signed bytes) is compared exactly.
//!
//! `cargo test --lib crypto::vectors` checks the committed files;
//! `HUSH_REGEN_VECTORS=1 cargo test --lib crypto::vectors` rewrites them
//! (new random signatures) and then checks what it wrote.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::CryptoError;
use super::device::DeviceId;
use super::envelope::{self, Chain, Content, OpenContext, Payload, ReplayTracker};
use super::identity::IdentityKey;
use super::keys::IdentityPrivateKey;
use super::safety::SafetyNumber;
use super::sender_keys::{self, Recipient, SenderKey};
use super::signal::{self, Freshness, Signal};
use super::test_support::fixture_key;

const ROOM_ID: i64 = 42;
const EPOCH: u32 = 3;
const SENDER_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const DEVICE_HEX: &str = "d0d1d2d3d4d5d6d7d8d9dadbdcdddedf";

/// The device of a version's bodies: none (legacy) in version 1.
fn device(version: u8) -> DeviceId {
    if version >= 2 {
        DeviceId::from_hex(DEVICE_HEX).unwrap()
    } else {
        DeviceId::LEGACY
    }
}

fn device_hex(version: u8) -> Option<String> {
    (version >= 2).then(|| DEVICE_HEX.to_owned())
}

/// The committed file for a version: `NAME.json` for the current one,
/// `NAME_v1.json` for the history still read.
fn file_name(base: &str, version: u8) -> String {
    if version >= 2 {
        format!("{base}.json")
    } else {
        format!("{base}_v{version}.json")
    }
}

fn one() -> u8 {
    1
}

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn regenerating() -> bool {
    std::env::var("HUSH_REGEN_VECTORS").is_ok_and(|value| value == "1")
}

/// Writes the vectors when regenerating, then reads the committed file.
fn write_or_read<T: Serialize + DeserializeOwned>(name: &str, build: impl FnOnce() -> T) -> T {
    let path = vectors_dir().join(name);
    if regenerating() {
        std::fs::create_dir_all(vectors_dir()).unwrap();
        let mut text = serde_json::to_string_pretty(&build()).unwrap();
        text.push('\n');
        std::fs::write(&path, text).unwrap();
    }
    read(name)
}

fn read<T: DeserializeOwned>(name: &str) -> T {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing; run with HUSH_REGEN_VECTORS=1", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    BASE64.decode(text).unwrap()
}

fn sender_key() -> SenderKey {
    SenderKey::from_bytes(EPOCH, unhex(SENDER_KEY_HEX).try_into().unwrap())
}

fn identity(spki_b64: &str) -> IdentityKey {
    IdentityKey::from_spki_der(&unb64(spki_b64)).unwrap()
}

/// The name an implementation reports for each failure.
fn error_name(error: &CryptoError) -> &'static str {
    match error {
        CryptoError::OpenFailed => "OpenFailed",
        CryptoError::BadSignature => "BadSignature",
        CryptoError::WrongRoom => "WrongRoom",
        CryptoError::WrongSender => "WrongSender",
        CryptoError::UnknownVersion { .. } => "UnknownVersion",
        CryptoError::UnknownKind { .. } => "UnknownKind",
        CryptoError::NotHush => "NotHush",
        CryptoError::Replay => "Replay",
        CryptoError::Stale => "Stale",
        CryptoError::NotARecipient => "NotARecipient",
        _ => "Other",
    }
}

// ---------------------------------------------------------------- fingerprint

#[derive(Serialize, Deserialize)]
struct FingerprintVectors {
    description: String,
    cases: Vec<FingerprintCase>,
}

#[derive(Serialize, Deserialize)]
struct FingerprintCase {
    fixture: String,
    spki_der_b64: String,
    fingerprint_hex: String,
    fingerprint_display: String,
}

#[test]
fn fingerprint_vectors_hold() {
    let vectors = write_or_read("fingerprint.json", || FingerprintVectors {
        description: "fingerprint = SHA-256(SPKI DER); display = lower-case hex in 16 groups \
                      of 4 separated by spaces. Keys are tests/fixtures/keys/<fixture>.pem."
            .into(),
        cases: ["alice", "bob", "carol", "dave", "mallory"]
            .iter()
            .map(|name| {
                let key = fixture_key(name);
                let public = key.public();
                FingerprintCase {
                    fixture: (*name).into(),
                    spki_der_b64: b64(public.spki_der()),
                    fingerprint_hex: public.fingerprint().to_hex(),
                    fingerprint_display: public.fingerprint().to_string(),
                }
            })
            .collect(),
    });
    assert!(!vectors.cases.is_empty());
    for case in &vectors.cases {
        let key = identity(&case.spki_der_b64);
        assert_eq!(
            key.spki_der(),
            fixture_key(&case.fixture).public().spki_der()
        );
        assert_eq!(key.fingerprint().to_hex(), case.fingerprint_hex);
        assert_eq!(key.fingerprint().to_string(), case.fingerprint_display);
    }
}

// -------------------------------------------------------------- safety number

#[derive(Serialize, Deserialize)]
struct SafetyVectors {
    description: String,
    cases: Vec<SafetyCase>,
}

#[derive(Serialize, Deserialize)]
struct SafetyCase {
    first_username: String,
    first_fingerprint_hex: String,
    second_username: String,
    second_fingerprint_hex: String,
    safety_number: String,
}

#[test]
fn safety_number_vectors_hold() {
    let vectors = write_or_read("safety_number.json", || {
        let pairs = [
            ("alice", "alice", "bob", "bob"),
            ("bob", "bob", "alice", "alice"),
            ("carol", "carol", "dave", "dave"),
            ("bob", "bob", "bob.x", "mallory"),
            ("alice", "alice", "bob", "mallory"),
        ];
        SafetyVectors {
            description: "SHA-512(\"hush-safety-v1\" 0x00 || for each of the two users sorted by \
                          username bytes: len(username) u8 || username || fingerprint[32]); group i \
                          (0..12) = big-endian 40-bit integer of digest bytes 5i..5i+5 mod 100000, \
                          zero-padded to 5 digits, joined by single spaces."
                .into(),
            cases: pairs
                .iter()
                .map(|(first, first_fixture, second, second_fixture)| {
                    let a = fixture_key(first_fixture).public().fingerprint();
                    let b = fixture_key(second_fixture).public().fingerprint();
                    SafetyCase {
                        first_username: (*first).into(),
                        first_fingerprint_hex: a.to_hex(),
                        second_username: (*second).into(),
                        second_fingerprint_hex: b.to_hex(),
                        safety_number: SafetyNumber::between((first, &a), (second, &b))
                            .to_string(),
                    }
                })
                .collect(),
        }
    });
    for case in &vectors.cases {
        let fingerprint = |hex: &str| super::identity::Fingerprint(unhex(hex).try_into().unwrap());
        let a = fingerprint(&case.first_fingerprint_hex);
        let b = fingerprint(&case.second_fingerprint_hex);
        let forward =
            SafetyNumber::between((&case.first_username, &a), (&case.second_username, &b));
        let backward =
            SafetyNumber::between((&case.second_username, &b), (&case.first_username, &a));
        assert_eq!(forward.to_string(), case.safety_number);
        assert_eq!(backward.to_string(), case.safety_number);
    }
}

// ------------------------------------------------------------------- envelope

#[derive(Serialize, Deserialize)]
struct EnvelopeVectors {
    description: String,
    #[serde(default = "one")]
    format_version: u8,
    /// Absent for version 1 (no device id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_id_hex: Option<String>,
    sender_fixture: String,
    sender_spki_der_b64: String,
    room_id: i64,
    sender: String,
    epoch: u32,
    sender_key_hex: String,
    accept: Vec<EnvelopeAcceptCase>,
    /// Envelopes that open after others of their chain, in log order.
    #[serde(default)]
    reorder: Vec<EnvelopeReorderCase>,
    reject: Vec<EnvelopeRejectCase>,
}

#[derive(Serialize, Deserialize)]
struct EnvelopeAcceptCase {
    name: String,
    counter: u64,
    nonce_hex: String,
    /// The exact plaintext bytes (UTF-8 JSON).
    payload_json: String,
    /// AES-GCM associated data: every envelope byte before the nonce.
    aad_hex: String,
    /// AES-256-GCM output, ciphertext followed by the 16-byte tag.
    ciphertext_and_tag_b64: String,
    /// Envelope bytes covered by the signature (everything before sig_len).
    signed_len: usize,
    envelope_b64: String,
}

#[derive(Serialize, Deserialize)]
struct EnvelopeReorderCase {
    name: String,
    /// Opened (successfully) first with the same replay tracker.
    open_first_b64: Vec<String>,
    envelope_b64: String,
    /// A higher counter of the chain was opened before it.
    late: bool,
}

#[derive(Serialize, Deserialize)]
struct EnvelopeRejectCase {
    name: String,
    envelope_b64: String,
    /// What the server claims and what we pinned.
    room_id: i64,
    sender: String,
    sender_spki_der_b64: String,
    sender_key_hex: String,
    /// Envelopes opened (successfully) first with the same replay tracker.
    open_first_b64: Vec<String>,
    expect: String,
}

struct BuiltEnvelope {
    body: Vec<u8>,
    aad_len: usize,
    signed_len: usize,
}

fn build_envelope(version: u8, counter: u64, nonce: &[u8; 12], plaintext: &[u8]) -> BuiltEnvelope {
    let device = device(version);
    let chain = Chain {
        version,
        room_id: ROOM_ID,
        sender: "alice",
        device: &device,
    };
    let body = envelope::seal_raw(
        &chain,
        &sender_key(),
        counter,
        nonce,
        plaintext,
        &fixture_key("alice"),
    )
    .unwrap();
    let device_len = if version >= 2 { 16 } else { 0 };
    let aad_len = 6 + 8 + 1 + "alice".len() + device_len + 4 + 8;
    let ct_len = u32::from_be_bytes(body[aad_len + 12..aad_len + 16].try_into().unwrap()) as usize;
    let signed_len = aad_len + 12 + 4 + ct_len;
    BuiltEnvelope {
        body,
        aad_len,
        signed_len,
    }
}

fn resign(body: &[u8], signed_len: usize, signer: &IdentityPrivateKey) -> Vec<u8> {
    let mut out = body[..signed_len].to_vec();
    let signature = signer.sign(&out).unwrap();
    out.extend_from_slice(&(signature.len() as u16).to_be_bytes());
    out.extend_from_slice(&signature);
    out
}

fn payload_bytes(version: u8, payload: &Payload) -> Vec<u8> {
    if version >= 2 {
        payload.to_bytes().to_vec()
    } else {
        payload.to_bytes_v1().to_vec()
    }
}

fn build_envelope_vectors(version: u8) -> EnvelopeVectors {
    let alice = fixture_key("alice");
    let alice_spki = b64(alice.public().spki_der());
    let text = Payload::text("Hello, Bob! 👋");
    let file = Payload::file("note.txt", "text/plain", b"hush\n".to_vec());
    let nonce_a: [u8; 12] = unhex("a0a1a2a3a4a5a6a7a8a9aaab").try_into().unwrap();
    let nonce_b: [u8; 12] = unhex("b0b1b2b3b4b5b6b7b8b9babb").try_into().unwrap();
    let nonce_c: [u8; 12] = unhex("c0c1c2c3c4c5c6c7c8c9cacb").try_into().unwrap();
    let accepted = [
        ("text message", 17, nonce_a, &text),
        ("file attachment", 18, nonce_b, &file),
    ];
    let mut accept = Vec::new();
    let mut built = Vec::new();
    for (name, counter, nonce, payload) in accepted {
        let plaintext = payload_bytes(version, payload);
        let envelope = build_envelope(version, counter, &nonce, &plaintext);
        accept.push(EnvelopeAcceptCase {
            name: name.into(),
            counter,
            nonce_hex: hex(&nonce),
            payload_json: String::from_utf8(plaintext).unwrap(),
            aad_hex: hex(&envelope.body[..envelope.aad_len]),
            ciphertext_and_tag_b64: b64(&envelope.body[envelope.aad_len + 16..envelope.signed_len]),
            signed_len: envelope.signed_len,
            envelope_b64: b64(&envelope.body),
        });
        built.push(envelope);
    }
    let good = &built[0];
    let flipped = |position: usize| {
        let mut body = good.body.clone();
        body[position] ^= 0x01;
        body
    };
    let first_ct_byte = good.aad_len + 16;
    let last_tag_byte = good.signed_len - 1;
    let last_sig_byte = good.body.len() - 1;
    let case = |name: &str, body: Vec<u8>, expect: &str| EnvelopeRejectCase {
        name: name.into(),
        envelope_b64: b64(&body),
        room_id: ROOM_ID,
        sender: "alice".into(),
        sender_spki_der_b64: alice_spki.clone(),
        sender_key_hex: SENDER_KEY_HEX.into(),
        open_first_b64: Vec::new(),
        expect: expect.into(),
    };
    let bob = fixture_key("bob");
    let mut wrong_version = good.body.clone();
    wrong_version[4] = 0x03;
    let mut wrong_kind = good.body.clone();
    wrong_kind[5] = 0x07;
    let mut wrong_magic = good.body.clone();
    wrong_magic[0] = b'X';
    let same_counter_resealed = build_envelope(
        version,
        17,
        &nonce_c,
        &payload_bytes(version, &Payload::text("replayed counter")),
    );
    let mut reject = vec![
        case(
            "flipped ciphertext byte",
            flipped(first_ct_byte),
            "BadSignature",
        ),
        case("flipped tag byte", flipped(last_tag_byte), "BadSignature"),
        case(
            "flipped signature byte",
            flipped(last_sig_byte),
            "BadSignature",
        ),
        case(
            "flipped ciphertext byte, re-signed by the sender (AEAD must catch it)",
            resign(&flipped(first_ct_byte), good.signed_len, &alice),
            "OpenFailed",
        ),
        case(
            "flipped tag byte, re-signed by the sender (AEAD must catch it)",
            resign(&flipped(last_tag_byte), good.signed_len, &alice),
            "OpenFailed",
        ),
        EnvelopeRejectCase {
            room_id: ROOM_ID + 1,
            ..case("server claims another room", good.body.clone(), "WrongRoom")
        },
        EnvelopeRejectCase {
            sender: "bob".into(),
            sender_spki_der_b64: b64(bob.public().spki_der()),
            ..case(
                "server claims another sender",
                good.body.clone(),
                "WrongSender",
            )
        },
        EnvelopeRejectCase {
            sender_spki_der_b64: b64(bob.public().spki_der()),
            ..case(
                "pinned key for alice is not the signer (bob fixture)",
                good.body.clone(),
                "BadSignature",
            )
        },
        EnvelopeRejectCase {
            sender_key_hex: hex(&[0x55; 32]),
            ..case("wrong sender key", good.body.clone(), "OpenFailed")
        },
        case("unknown version byte 0x03", wrong_version, "UnknownVersion"),
        case("unknown kind byte 0x07", wrong_kind, "UnknownKind"),
        case("wrong magic", wrong_magic, "NotHush"),
        EnvelopeRejectCase {
            open_first_b64: vec![b64(&good.body)],
            ..case("same envelope opened twice", good.body.clone(), "Replay")
        },
        EnvelopeRejectCase {
            open_first_b64: vec![b64(&built[1].body), b64(&good.body)],
            ..case(
                "same envelope again after a later one",
                good.body.clone(),
                "Replay",
            )
        },
        EnvelopeRejectCase {
            open_first_b64: vec![b64(&good.body)],
            ..case(
                "another envelope reusing counter 17 of the chain",
                same_counter_resealed.body.clone(),
                "Replay",
            )
        },
    ];
    if version >= 2 {
        let device_at = 6 + 8 + 1 + "alice".len();
        let mut legacy_device = good.body.clone();
        legacy_device[device_at..device_at + 16].fill(0);
        reject.push(case(
            "version 2 with the all-zero (legacy) device id",
            legacy_device,
            "OpenFailed",
        ));
    }
    let reorder = vec![EnvelopeReorderCase {
        name: "counter 17 after counter 18 (an honest resend stored late)".into(),
        open_first_b64: vec![b64(&built[1].body)],
        envelope_b64: b64(&good.body),
        late: true,
    }];
    EnvelopeVectors {
        description: format!(
            "Message envelopes, format version {version} (docs/PROTOCOL.md §19). Seal with \
             sender_key (and device_id_hex, version 2) and the given nonce: the AAD, ciphertext \
             and the first signed_len envelope bytes must match exactly; the RSA-PSS-SHA256 \
             (salt 32) signature is one valid sample and must verify under \
             sender_spki_der_b64. Reorder cases: after opening open_first_b64 with one replay \
             tracker, envelope_b64 must open, marked late. Reject cases: open with the given \
             claims and key (after opening open_first_b64 with the same replay tracker) and \
             expect the named error."
        ),
        format_version: version,
        device_id_hex: device_hex(version),
        sender_fixture: "alice".into(),
        sender_spki_der_b64: alice_spki,
        room_id: ROOM_ID,
        sender: "alice".into(),
        epoch: EPOCH,
        sender_key_hex: SENDER_KEY_HEX.into(),
        accept,
        reorder,
        reject,
    }
}

fn check_envelope_vectors(version: u8) {
    let vectors = write_or_read(&file_name("envelope", version), || {
        build_envelope_vectors(version)
    });
    assert_eq!(vectors.format_version, version);
    assert_eq!(vectors.device_id_hex, device_hex(version));
    let alice = identity(&vectors.sender_spki_der_b64);
    assert_eq!(
        alice.spki_der(),
        fixture_key(&vectors.sender_fixture).public().spki_der()
    );
    let key = SenderKey::from_bytes(
        vectors.epoch,
        unhex(&vectors.sender_key_hex).try_into().unwrap(),
    );
    let context = OpenContext {
        room_id: vectors.room_id,
        sender: &vectors.sender,
        sender_identity: &alice,
    };
    for case in &vectors.accept {
        let stored = unb64(&case.envelope_b64);
        let nonce: [u8; 12] = unhex(&case.nonce_hex).try_into().unwrap();
        let rebuilt = build_envelope(version, case.counter, &nonce, case.payload_json.as_bytes());
        assert_eq!(rebuilt.signed_len, case.signed_len, "{}", case.name);
        assert_eq!(hex(&rebuilt.body[..rebuilt.aad_len]), case.aad_hex);
        assert_eq!(
            b64(&rebuilt.body[rebuilt.aad_len + 16..rebuilt.signed_len]),
            case.ciphertext_and_tag_b64
        );
        assert_eq!(rebuilt.body[..case.signed_len], stored[..case.signed_len]);
        let opened = envelope::open(&stored, &context, &key, &mut ReplayTracker::new())
            .unwrap_or_else(|error| panic!("{}: {error}", case.name));
        let Content::Payload(payload) = opened.content else {
            panic!("{}: unsupported", case.name)
        };
        assert_eq!(
            payload_bytes(version, &payload),
            case.payload_json.as_bytes(),
            "{}",
            case.name
        );
        assert_eq!(opened.header.counter, case.counter);
        assert_eq!(opened.header.device, device(version));
    }
    assert!(!vectors.reorder.is_empty());
    for case in &vectors.reorder {
        let mut replay = ReplayTracker::new();
        for earlier in &case.open_first_b64 {
            envelope::open(&unb64(earlier), &context, &key, &mut replay).unwrap();
        }
        let opened = envelope::open(&unb64(&case.envelope_b64), &context, &key, &mut replay)
            .unwrap_or_else(|error| panic!("{}: {error}", case.name));
        assert_eq!(opened.is_late, case.late, "{}", case.name);
    }
    assert!(vectors.reject.len() >= 7);
    for case in &vectors.reject {
        let pinned = identity(&case.sender_spki_der_b64);
        let key = SenderKey::from_bytes(
            vectors.epoch,
            unhex(&case.sender_key_hex).try_into().unwrap(),
        );
        let context = OpenContext {
            room_id: case.room_id,
            sender: &case.sender,
            sender_identity: &pinned,
        };
        let mut replay = ReplayTracker::new();
        for earlier in &case.open_first_b64 {
            envelope::open(&unb64(earlier), &context, &key, &mut replay).unwrap();
        }
        let error = envelope::open(&unb64(&case.envelope_b64), &context, &key, &mut replay)
            .err()
            .unwrap_or_else(|| panic!("{} opened", case.name));
        assert_eq!(error_name(&error), case.expect, "{}", case.name);
    }
}

#[test]
fn envelope_vectors_hold() {
    check_envelope_vectors(2);
}

#[test]
fn version_one_envelope_vectors_hold() {
    check_envelope_vectors(1);
}

// -------------------------------------------------------------------- payload

#[derive(Serialize, Deserialize)]
struct PayloadVectors {
    description: String,
    cases: Vec<PayloadCase>,
}

#[derive(Serialize, Deserialize)]
struct PayloadCase {
    name: String,
    payload_json: String,
    /// `text` (then `text` holds it), `file`, `edit`, `delete`, `react`,
    /// `unsupported` or `OpenFailed`.
    expect: String,
    /// The text of a `text` or an `edit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    /// For `text` and `file`: the `reply_to` a reader keeps (absent: none,
    /// the member was missing or ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply_to: Option<i64>,
    /// For `edit`, `delete`, `react`: the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    of: Option<i64>,
    /// For `react`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    emoji: Option<String>,
}

fn build_payload_vectors() -> PayloadVectors {
    let case = |name: &str, json: &str, expect: &str, text: Option<&str>| PayloadCase {
        name: name.into(),
        payload_json: json.into(),
        expect: expect.into(),
        text: text.map(str::to_owned),
        reply_to: None,
        of: None,
        emoji: None,
    };
    let with =
        |mut case: PayloadCase, reply_to: Option<i64>, of: Option<i64>, emoji: Option<&str>| {
            case.reply_to = reply_to;
            case.of = of;
            case.emoji = emoji.map(str::to_owned);
            case
        };
    PayloadVectors {
        description: "Plaintext payload rules for format version 2 envelopes \
                      (docs/PROTOCOL.md §19, Plaintext payload): what a reader makes of each \
                      decrypted plaintext."
            .into(),
        cases: vec![
            case(
                "text",
                r#"{"v":1,"t":"text","text":"hi"}"#,
                "text",
                Some("hi"),
            ),
            case(
                "no v means 1",
                r#"{"t":"text","text":"hi"}"#,
                "text",
                Some("hi"),
            ),
            case(
                "unknown member ignored",
                r#"{"v":1,"t":"text","text":"hi","later":{"x":12}}"#,
                "text",
                Some("hi"),
            ),
            with(
                case(
                    "reply",
                    r#"{"v":1,"t":"text","text":"Yes, Friday.","reply_to":41}"#,
                    "text",
                    Some("Yes, Friday."),
                ),
                Some(41),
                None,
                None,
            ),
            with(
                case(
                    "reply with an integer written as a float",
                    r#"{"v":1,"t":"text","text":"ok","reply_to":41.0}"#,
                    "text",
                    Some("ok"),
                ),
                Some(41),
                None,
                None,
            ),
            with(
                case(
                    "file reply",
                    r#"{"v":1,"t":"file","name":"a.txt","mime":"text/plain","data":"aGk=","reply_to":7}"#,
                    "file",
                    None,
                ),
                Some(7),
                None,
                None,
            ),
            case(
                "reply_to a string, ignored",
                r#"{"v":1,"t":"text","text":"hi","reply_to":"41"}"#,
                "text",
                Some("hi"),
            ),
            case(
                "reply_to zero, ignored",
                r#"{"v":1,"t":"text","text":"hi","reply_to":0}"#,
                "text",
                Some("hi"),
            ),
            case(
                "reply_to negative, ignored",
                r#"{"v":1,"t":"text","text":"hi","reply_to":-3}"#,
                "text",
                Some("hi"),
            ),
            case(
                "reply_to a fraction, ignored",
                r#"{"v":1,"t":"text","text":"hi","reply_to":4.5}"#,
                "text",
                Some("hi"),
            ),
            case(
                "reply_to above 2^53-1, ignored",
                r#"{"v":1,"t":"text","text":"hi","reply_to":9007199254740993}"#,
                "text",
                Some("hi"),
            ),
            case(
                "reply_to null, ignored",
                r#"{"v":1,"t":"text","text":"hi","reply_to":null}"#,
                "text",
                Some("hi"),
            ),
            with(
                case(
                    "edit",
                    r#"{"v":1,"t":"edit","of":41,"text":"Friday 10:00, room 2"}"#,
                    "edit",
                    Some("Friday 10:00, room 2"),
                ),
                None,
                Some(41),
                None,
            ),
            with(
                case(
                    "edit with an unknown member",
                    r#"{"v":1,"t":"edit","of":2,"text":"x","why":"typo"}"#,
                    "edit",
                    Some("x"),
                ),
                None,
                Some(2),
                None,
            ),
            case(
                "edit without text",
                r#"{"v":1,"t":"edit","of":41}"#,
                "OpenFailed",
                None,
            ),
            case(
                "edit without of",
                r#"{"v":1,"t":"edit","text":"x"}"#,
                "OpenFailed",
                None,
            ),
            case(
                "edit of zero",
                r#"{"v":1,"t":"edit","of":0,"text":"x"}"#,
                "OpenFailed",
                None,
            ),
            case(
                "edit of a string",
                r#"{"v":1,"t":"edit","of":"41","text":"x"}"#,
                "OpenFailed",
                None,
            ),
            with(
                case("delete", r#"{"v":1,"t":"delete","of":41}"#, "delete", None),
                None,
                Some(41),
                None,
            ),
            case(
                "delete of a negative seq",
                r#"{"v":1,"t":"delete","of":-1}"#,
                "OpenFailed",
                None,
            ),
            case(
                "delete of a fraction",
                r#"{"v":1,"t":"delete","of":1.5}"#,
                "OpenFailed",
                None,
            ),
            with(
                case(
                    "react",
                    r#"{"v":1,"t":"react","of":41,"emoji":"👍"}"#,
                    "react",
                    None,
                ),
                None,
                Some(41),
                Some("👍"),
            ),
            with(
                case(
                    "react with a joined emoji",
                    r#"{"v":1,"t":"react","of":41,"emoji":"👩‍👩‍👧"}"#,
                    "react",
                    None,
                ),
                None,
                Some(41),
                Some("👩‍👩‍👧"),
            ),
            with(
                case(
                    "react taken back",
                    r#"{"v":1,"t":"react","of":41,"emoji":""}"#,
                    "react",
                    None,
                ),
                None,
                Some(41),
                Some(""),
            ),
            with(
                case(
                    "react of 64 bytes",
                    &format!(
                        r#"{{"v":1,"t":"react","of":41,"emoji":"{}"}}"#,
                        "é".repeat(32)
                    ),
                    "react",
                    None,
                ),
                None,
                Some(41),
                Some(&"é".repeat(32)),
            ),
            case(
                "react of 65 bytes",
                &format!(
                    r#"{{"v":1,"t":"react","of":41,"emoji":"{}x"}}"#,
                    "é".repeat(32)
                ),
                "OpenFailed",
                None,
            ),
            case(
                "react with a control character",
                r#"{"v":1,"t":"react","of":41,"emoji":"👍\n"}"#,
                "OpenFailed",
                None,
            ),
            case(
                "react with a C1 control character",
                r#"{"v":1,"t":"react","of":41,"emoji":"\u0085"}"#,
                "OpenFailed",
                None,
            ),
            case(
                "react without emoji",
                r#"{"v":1,"t":"react","of":41}"#,
                "OpenFailed",
                None,
            ),
            case(
                "react emoji not a string",
                r#"{"v":1,"t":"react","of":41,"emoji":1}"#,
                "OpenFailed",
                None,
            ),
            case(
                "unknown type poll",
                r#"{"v":1,"t":"poll","q":"lunch?","options":["a","b"]}"#,
                "unsupported",
                None,
            ),
            case(
                "empty text",
                r#"{"v":1,"t":"text","text":""}"#,
                "text",
                Some(""),
            ),
            case(
                "file",
                r#"{"v":1,"t":"file","name":"a.txt","mime":"text/plain","data":"aGk="}"#,
                "file",
                None,
            ),
            case(
                "image file with its size",
                r#"{"v":1,"t":"file","name":"a.png","mime":"image/png","data":"aGk=","width":640,"height":480}"#,
                "file",
                None,
            ),
            case(
                "file with a size that is no size, ignored",
                r#"{"v":1,"t":"file","name":"a.png","mime":"image/png","data":"aGk=","width":"wide","height":-1}"#,
                "file",
                None,
            ),
            case(
                "unknown type",
                r#"{"v":1,"t":"reaction","to":3,"emoji":"👍"}"#,
                "unsupported",
                None,
            ),
            case(
                "newer payload version",
                r#"{"v":2,"t":"text","text":"hi"}"#,
                "unsupported",
                None,
            ),
            case(
                "duplicate member",
                r#"{"v":1,"t":"text","text":"hi","text":"bye"}"#,
                "OpenFailed",
                None,
            ),
            case(
                "duplicate member in a nested object",
                r#"{"v":1,"t":"text","text":"hi","x":{"k":1,"k":2}}"#,
                "OpenFailed",
                None,
            ),
            case("missing text", r#"{"v":1,"t":"text"}"#, "OpenFailed", None),
            case(
                "text not a string",
                r#"{"v":1,"t":"text","text":1}"#,
                "OpenFailed",
                None,
            ),
            case(
                "v zero",
                r#"{"v":0,"t":"text","text":"hi"}"#,
                "OpenFailed",
                None,
            ),
            case(
                "v not an integer",
                r#"{"v":"1","t":"text","text":"hi"}"#,
                "OpenFailed",
                None,
            ),
            case("no type", r#"{"v":1,"text":"hi"}"#, "OpenFailed", None),
            case("not an object", r#"["text","hi"]"#, "OpenFailed", None),
            case(
                "file data not base64",
                r#"{"v":1,"t":"file","name":"a","mime":"b","data":"%%%"}"#,
                "OpenFailed",
                None,
            ),
        ],
    }
}

#[test]
fn payload_vectors_hold() {
    let vectors = write_or_read("payload.json", build_payload_vectors);
    assert!(vectors.cases.len() >= 10);
    for case in &vectors.cases {
        let result = Payload::from_bytes(case.payload_json.as_bytes());
        let got = match &result {
            Ok(Content::Payload(Payload::Text { .. })) => "text",
            Ok(Content::Payload(Payload::File { .. })) => "file",
            Ok(Content::Payload(Payload::Edit { .. })) => "edit",
            Ok(Content::Payload(Payload::Delete { .. })) => "delete",
            Ok(Content::Payload(Payload::React { .. })) => "react",
            Ok(Content::Unsupported) => "unsupported",
            Err(error) => error_name(error),
        };
        assert_eq!(got, case.expect, "{}", case.name);
        let Ok(Content::Payload(payload)) = &result else {
            continue;
        };
        let text = match payload {
            Payload::Text { text, .. } | Payload::Edit { text, .. } => Some(text),
            _ => None,
        };
        assert_eq!(text, case.text.as_ref(), "{}", case.name);
        assert_eq!(payload.reply_to(), case.reply_to, "{}", case.name);
        assert_eq!(payload.relation_target(), case.of, "{}", case.name);
        let emoji = match payload {
            Payload::React { emoji, .. } => Some(emoji),
            _ => None,
        };
        assert_eq!(emoji, case.emoji.as_ref(), "{}", case.name);
        // What a reader keeps writes back to the same meaning.
        let again = Payload::from_bytes(&payload.to_bytes()).unwrap();
        assert!(again == Content::Payload(payload.clone()), "{}", case.name);
    }
}

// ----------------------------------------------------------------- sender key

#[derive(Serialize, Deserialize)]
struct SenderKeyVectors {
    description: String,
    #[serde(default = "one")]
    format_version: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_id_hex: Option<String>,
    room_id: i64,
    sender: String,
    sender_fixture: String,
    sender_spki_der_b64: String,
    epoch: u32,
    sender_key_hex: String,
    /// What RSA-OAEP-SHA256 wraps: key || room_id i64 || epoch u32 ||
    /// device (version 2) || sender.
    wrapped_plaintext_hex: String,
    recipients: Vec<SenderKeyRecipient>,
    distribution_b64: String,
    signed_len: usize,
    reject: Vec<DistributionRejectCase>,
}

#[derive(Serialize, Deserialize)]
struct SenderKeyRecipient {
    username: String,
    fixture: String,
    fingerprint_hex: String,
    /// The same bytes as this recipient's entry in the distribution.
    wrapped_key_b64: String,
}

#[derive(Serialize, Deserialize)]
struct DistributionRejectCase {
    name: String,
    distribution_b64: String,
    room_id: i64,
    sender: String,
    sender_spki_der_b64: String,
    me: String,
    me_fixture: String,
    expect: String,
}

fn build_sender_key_vectors(version: u8) -> SenderKeyVectors {
    let alice = fixture_key("alice");
    let bob = fixture_key("bob");
    let alice_spki = b64(alice.public().spki_der());
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
    let body = sender_keys::seal_distribution_as(
        version,
        ROOM_ID,
        "alice",
        &device(version),
        &sender_key(),
        &recipients,
        &alice,
    )
    .unwrap();
    let (entries, signed_len) = distribution_entries(&body);
    let mut plaintext = unhex(SENDER_KEY_HEX);
    plaintext.extend_from_slice(&ROOM_ID.to_be_bytes());
    plaintext.extend_from_slice(&EPOCH.to_be_bytes());
    if version >= 2 {
        plaintext.extend_from_slice(&device(version).0);
    }
    plaintext.extend_from_slice(b"alice");

    // Bob's entry replaced by one wrapping a different room, re-signed:
    // the signature holds, the binding inside the wrapped key does not.
    let mut wrong_context = plaintext.clone();
    wrong_context[32..40].copy_from_slice(&(ROOM_ID + 1).to_be_bytes());
    let rewrapped = bob
        .public()
        .rsa()
        .oaep_encrypt::<rsa::sha2::Sha256>(&wrong_context)
        .unwrap();
    let (bob_offset, bob_len) = entries[1].2;
    let mut swapped = body[..bob_offset].to_vec();
    swapped.extend_from_slice(&rewrapped);
    swapped.extend_from_slice(&body[bob_offset + bob_len..signed_len]);
    let swapped = resign(&swapped, signed_len, &alice);

    let mut flipped_signature = body.clone();
    *flipped_signature.last_mut().unwrap() ^= 0x01;
    let mut wrong_version = body.clone();
    wrong_version[4] = 0x03;
    let case = |name: &str, body: &[u8], me: &str, expect: &str| DistributionRejectCase {
        name: name.into(),
        distribution_b64: b64(body),
        room_id: ROOM_ID,
        sender: "alice".into(),
        sender_spki_der_b64: alice_spki.clone(),
        me: me.into(),
        me_fixture: me.into(),
        expect: expect.into(),
    };
    let reject = vec![
        case("carol is not a recipient", &body, "carol", "NotARecipient"),
        DistributionRejectCase {
            me_fixture: "carol".into(),
            ..case("carol claiming bob's entry", &body, "bob", "NotARecipient")
        },
        case(
            "flipped signature byte",
            &flipped_signature,
            "bob",
            "BadSignature",
        ),
        case(
            "unknown version byte 0x03",
            &wrong_version,
            "bob",
            "UnknownVersion",
        ),
        DistributionRejectCase {
            room_id: ROOM_ID + 1,
            ..case("server claims another room", &body, "bob", "WrongRoom")
        },
        DistributionRejectCase {
            sender: "mallory".into(),
            ..case("server claims another sender", &body, "bob", "WrongSender")
        },
        case(
            "wrapped key bound to another room, re-signed by the sender",
            &swapped,
            "bob",
            "OpenFailed",
        ),
    ];
    SenderKeyVectors {
        description: format!(
            "Sender-key distribution, format version {version} (docs/PROTOCOL.md §19). Each \
             recipient fixture key must unwrap its wrapped_key_b64 (RSA-OAEP, SHA-256, \
             MGF1-SHA-256, empty label) to wrapped_plaintext_hex, and open distribution_b64 \
             (its signature by the sender verifies over the first signed_len bytes) to \
             sender_key_hex at epoch. Reject cases: open as `me` with me_fixture's private key \
             and expect the named error."
        ),
        format_version: version,
        device_id_hex: device_hex(version),
        room_id: ROOM_ID,
        sender: "alice".into(),
        sender_fixture: "alice".into(),
        sender_spki_der_b64: alice_spki.clone(),
        epoch: EPOCH,
        sender_key_hex: SENDER_KEY_HEX.into(),
        wrapped_plaintext_hex: hex(&plaintext),
        recipients: entries
            .iter()
            .map(|(name, fingerprint, (offset, len))| SenderKeyRecipient {
                username: name.clone(),
                fixture: name.clone(),
                fingerprint_hex: hex(fingerprint),
                wrapped_key_b64: b64(&body[*offset..offset + len]),
            })
            .collect(),
        distribution_b64: b64(&body),
        signed_len,
        reject,
    }
}

/// (name, fingerprint, (offset, len) of the wrapped key) per entry, and the
/// signed length: an independent walk over the documented layout.
#[allow(clippy::type_complexity)]
fn distribution_entries(body: &[u8]) -> (Vec<(String, [u8; 32], (usize, usize))>, usize) {
    let sender_len = body[14] as usize;
    let device_len = if body[4] >= 2 { 16 } else { 0 };
    let mut at = 15 + sender_len + device_len + 4;
    let count = u16::from_be_bytes([body[at], body[at + 1]]) as usize;
    at += 2;
    let mut entries = Vec::new();
    for _ in 0..count {
        let name_len = body[at] as usize;
        let name = String::from_utf8(body[at + 1..at + 1 + name_len].to_vec()).unwrap();
        at += 1 + name_len;
        let fingerprint: [u8; 32] = body[at..at + 32].try_into().unwrap();
        at += 32;
        let wrapped_len = u16::from_be_bytes([body[at], body[at + 1]]) as usize;
        at += 2;
        entries.push((name, fingerprint, (at, wrapped_len)));
        at += wrapped_len;
    }
    (entries, at)
}

#[test]
fn sender_key_vectors_hold() {
    check_sender_key_vectors(2);
}

#[test]
fn version_one_sender_key_vectors_hold() {
    check_sender_key_vectors(1);
}

fn check_sender_key_vectors(version: u8) {
    let vectors = write_or_read(&file_name("sender_key", version), || {
        build_sender_key_vectors(version)
    });
    assert_eq!(vectors.format_version, version);
    assert_eq!(vectors.device_id_hex, device_hex(version));
    let sender = identity(&vectors.sender_spki_der_b64);
    assert_eq!(
        sender.spki_der(),
        fixture_key(&vectors.sender_fixture).public().spki_der()
    );
    let body = unb64(&vectors.distribution_b64);
    let signature_at = vectors.signed_len + 2;
    sender
        .verify(&body[..vectors.signed_len], &body[signature_at..])
        .unwrap();
    let context = OpenContext {
        room_id: vectors.room_id,
        sender: &vectors.sender,
        sender_identity: &sender,
    };
    let expected_plaintext = unhex(&vectors.wrapped_plaintext_hex);
    assert_eq!(
        &expected_plaintext[..32],
        unhex(&vectors.sender_key_hex).as_slice()
    );
    let (entries, signed_len) = distribution_entries(&body);
    assert_eq!(signed_len, vectors.signed_len);
    assert_eq!(entries.len(), vectors.recipients.len());
    for (recipient, (name, fingerprint, (offset, len))) in vectors.recipients.iter().zip(&entries) {
        let private = fixture_key(&recipient.fixture);
        assert_eq!(&recipient.username, name);
        assert_eq!(
            private.public().fingerprint().to_hex(),
            recipient.fingerprint_hex
        );
        assert_eq!(hex(fingerprint), recipient.fingerprint_hex);
        let wrapped = unb64(&recipient.wrapped_key_b64);
        assert_eq!(wrapped, body[*offset..offset + len]);
        assert_eq!(*private.unwrap_key(&wrapped).unwrap(), expected_plaintext);
        let key =
            sender_keys::open_distribution(&body, &context, &recipient.username, &private).unwrap();
        assert_eq!(key.epoch(), vectors.epoch);
        assert_eq!(hex(key.key_bytes()), vectors.sender_key_hex);
    }
    for case in &vectors.reject {
        let pinned = identity(&case.sender_spki_der_b64);
        let context = OpenContext {
            room_id: case.room_id,
            sender: &case.sender,
            sender_identity: &pinned,
        };
        let error = sender_keys::open_distribution(
            &unb64(&case.distribution_b64),
            &context,
            &case.me,
            &fixture_key(&case.me_fixture),
        )
        .err()
        .unwrap_or_else(|| panic!("{} opened", case.name));
        assert_eq!(error_name(&error), case.expect, "{}", case.name);
    }
}

/// The envelope and sender-key vectors share room, sender, epoch and key:
/// Bob unwraps the distribution, then opens Alice's message with it.
/// Only reads (the tests above write), so it is skipped while regenerating.
#[test]
fn vectors_chain_from_distribution_to_message() {
    if regenerating() {
        return;
    }
    let distribution: SenderKeyVectors = read("sender_key.json");
    let messages: EnvelopeVectors = read("envelope.json");
    let alice = identity(&distribution.sender_spki_der_b64);
    let context = OpenContext {
        room_id: distribution.room_id,
        sender: &distribution.sender,
        sender_identity: &alice,
    };
    let key = sender_keys::open_distribution(
        &unb64(&distribution.distribution_b64),
        &context,
        "bob",
        &fixture_key("bob"),
    )
    .unwrap();
    let opened = envelope::open(
        &unb64(&messages.accept[0].envelope_b64),
        &context,
        &key,
        &mut ReplayTracker::new(),
    )
    .unwrap();
    let Content::Payload(payload) = opened.content else {
        panic!("the vector's payload is supported")
    };
    assert_eq!(
        String::from_utf8(payload.to_bytes().to_vec()).unwrap(),
        messages.accept[0].payload_json
    );
}

// --------------------------------------------------------------------- signal

/// The reader's clock for every signal vector (Unix ms).
const SIGNAL_NOW_MS: u64 = 1_795_683_333_414;

#[derive(Serialize, Deserialize)]
struct SignalVectors {
    description: String,
    format_version: u8,
    kind_byte: u8,
    device_id_hex: String,
    sender_fixture: String,
    sender_spki_der_b64: String,
    room_id: i64,
    sender: String,
    epoch: u32,
    sender_key_hex: String,
    /// The reader's clock when opening every case.
    now_ms: u64,
    max_skew_ms: u64,
    accept: Vec<SignalAcceptCase>,
    reject: Vec<SignalRejectCase>,
}

#[derive(Serialize, Deserialize)]
struct SignalAcceptCase {
    name: String,
    /// The frame's `kind`: `receipt` or `typing`.
    frame_kind: String,
    /// The sealer's clock in Unix ms.
    counter: u64,
    nonce_hex: String,
    payload_json: String,
    aad_hex: String,
    ciphertext_and_tag_b64: String,
    signed_len: usize,
    signal_b64: String,
    /// Opened (successfully) first with the same freshness tracker.
    open_first_b64: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct SignalRejectCase {
    name: String,
    signal_b64: String,
    room_id: i64,
    sender: String,
    sender_spki_der_b64: String,
    sender_key_hex: String,
    now_ms: u64,
    /// Opened (successfully) first with the same freshness tracker.
    open_first_b64: Vec<String>,
    expect: String,
}

fn signal_device() -> DeviceId {
    DeviceId::from_hex(DEVICE_HEX).unwrap()
}

fn build_signal(counter: u64, nonce: &[u8; 12], plaintext: &[u8]) -> BuiltEnvelope {
    let body = signal::seal_raw(
        ROOM_ID,
        "alice",
        &signal_device(),
        &sender_key(),
        counter,
        nonce,
        plaintext,
        &fixture_key("alice"),
    )
    .unwrap();
    let aad_len = 6 + 8 + 1 + "alice".len() + 16 + 4 + 8;
    let ct_len = u32::from_be_bytes(body[aad_len + 12..aad_len + 16].try_into().unwrap()) as usize;
    BuiltEnvelope {
        signed_len: aad_len + 12 + 4 + ct_len,
        body,
        aad_len,
    }
}

fn build_signal_vectors() -> SignalVectors {
    let alice = fixture_key("alice");
    let alice_spki = b64(alice.public().spki_der());
    let nonce = |byte: u8| -> [u8; 12] { [byte; 12] };
    let signals = [
        (
            "read receipt",
            SIGNAL_NOW_MS - 2_000,
            nonce(0xa1),
            Signal::Receipt {
                delivered: 57,
                read: Some(55),
            },
        ),
        (
            "delivered-only receipt (read receipts off)",
            SIGNAL_NOW_MS - 1_000,
            nonce(0xa2),
            Signal::Receipt {
                delivered: 58,
                read: None,
            },
        ),
        (
            "typing started",
            SIGNAL_NOW_MS,
            nonce(0xa3),
            Signal::Typing { typing: true },
        ),
        (
            "typing stopped",
            SIGNAL_NOW_MS + 1,
            nonce(0xa4),
            Signal::Typing { typing: false },
        ),
    ];
    let mut accept = Vec::new();
    let mut built: Vec<BuiltEnvelope> = Vec::new();
    for (name, counter, nonce, signal) in signals {
        let plaintext = signal.to_bytes();
        let sealed = build_signal(counter, &nonce, &plaintext);
        accept.push(SignalAcceptCase {
            name: name.into(),
            frame_kind: signal.kind().into(),
            counter,
            nonce_hex: hex(&nonce),
            payload_json: String::from_utf8(plaintext.to_vec()).unwrap(),
            aad_hex: hex(&sealed.body[..sealed.aad_len]),
            ciphertext_and_tag_b64: b64(&sealed.body[sealed.aad_len + 16..sealed.signed_len]),
            signed_len: sealed.signed_len,
            signal_b64: b64(&sealed.body),
            // Each opens after the ones before it: counters only go up.
            open_first_b64: built.iter().map(|b| b64(&b.body)).collect(),
        });
        built.push(sealed);
    }
    // A receipt the server kept for an hour (§21, kept receipts): receipts
    // have no freshness window. Opened with a fresh tracker (its counter
    // is below the ones above).
    {
        let counter = SIGNAL_NOW_MS - 6 * signal::MAX_SKEW_MS;
        let nonce = nonce(0xa5);
        let signal = Signal::Receipt {
            delivered: 40,
            read: Some(39),
        };
        let plaintext = signal.to_bytes();
        let sealed = build_signal(counter, &nonce, &plaintext);
        accept.push(SignalAcceptCase {
            name: "a receipt more than max_skew_ms old (receipts have no window)".into(),
            frame_kind: signal.kind().into(),
            counter,
            nonce_hex: hex(&nonce),
            payload_json: String::from_utf8(plaintext.to_vec()).unwrap(),
            aad_hex: hex(&sealed.body[..sealed.aad_len]),
            ciphertext_and_tag_b64: b64(&sealed.body[sealed.aad_len + 16..sealed.signed_len]),
            signed_len: sealed.signed_len,
            signal_b64: b64(&sealed.body),
            open_first_b64: Vec::new(),
        });
    }
    let good = &built[0];
    let case = |name: &str, body: &[u8], expect: &str| SignalRejectCase {
        name: name.into(),
        signal_b64: b64(body),
        room_id: ROOM_ID,
        sender: "alice".into(),
        sender_spki_der_b64: alice_spki.clone(),
        sender_key_hex: SENDER_KEY_HEX.into(),
        now_ms: SIGNAL_NOW_MS,
        open_first_b64: Vec::new(),
        expect: expect.into(),
    };
    let flipped = |position: usize| {
        let mut body = good.body.clone();
        body[position] ^= 0x01;
        body
    };
    let as_message = {
        let mut body = good.body.clone();
        body[5] = 0x01;
        body
    };
    let message_envelope = build_envelope(
        2,
        SIGNAL_NOW_MS,
        &nonce(0xb1),
        &Payload::text("a message, not a signal").to_bytes(),
    );
    let old = build_signal(
        SIGNAL_NOW_MS - signal::MAX_SKEW_MS - 1,
        &nonce(0xb2),
        &Signal::Typing { typing: true }.to_bytes(),
    );
    let future = build_signal(
        SIGNAL_NOW_MS + signal::MAX_SKEW_MS + 1,
        &nonce(0xb3),
        &Signal::Typing { typing: true }.to_bytes(),
    );
    let unknown_type = build_signal(
        SIGNAL_NOW_MS,
        &nonce(0xb4),
        br#"{"v":1,"t":"poke","who":"bob"}"#,
    );
    let bob = fixture_key("bob");
    let reject = vec![
        SignalRejectCase {
            open_first_b64: vec![b64(&good.body)],
            ..case("same signal opened twice", &good.body, "Replay")
        },
        SignalRejectCase {
            open_first_b64: vec![b64(&built[2].body)],
            ..case(
                "an older signal after a newer one of the same device",
                &good.body,
                "Replay",
            )
        },
        case(
            "typing more than max_skew_ms before the reader's clock",
            &old.body,
            "Stale",
        ),
        case(
            "typing more than max_skew_ms after the reader's clock",
            &future.body,
            "Stale",
        ),
        case(
            "a message envelope (kind 0x01) given as a signal",
            &message_envelope.body,
            "OpenFailed",
        ),
        case(
            "kind byte changed to 0x01 (not a signal; as a message its signature fails)",
            &as_message,
            "OpenFailed",
        ),
        case(
            "flipped ciphertext byte",
            &flipped(good.aad_len + 16),
            "BadSignature",
        ),
        case(
            "flipped ciphertext byte, re-signed (AEAD must catch it)",
            &resign(&flipped(good.aad_len + 16), good.signed_len, &alice),
            "OpenFailed",
        ),
        SignalRejectCase {
            room_id: ROOM_ID + 1,
            ..case("server claims another room", &good.body, "WrongRoom")
        },
        SignalRejectCase {
            sender: "bob".into(),
            sender_spki_der_b64: b64(bob.public().spki_der()),
            ..case("server claims another sender", &good.body, "WrongSender")
        },
        SignalRejectCase {
            sender_spki_der_b64: b64(bob.public().spki_der()),
            ..case(
                "pinned key for alice is not the signer",
                &good.body,
                "BadSignature",
            )
        },
        SignalRejectCase {
            sender_key_hex: hex(&[0x55; 32]),
            ..case("wrong sender key", &good.body, "OpenFailed")
        },
        case(
            "an unknown signal type (dropped silently)",
            &unknown_type.body,
            "OpenFailed",
        ),
    ];
    SignalVectors {
        description: "Signal envelopes (docs/PROTOCOL.md §21): the version-2 message envelope \
                      layout with kind byte 0x03; the counter is the sealer's clock in Unix ms. \
                      Seal with sender_key, device and the given nonce: the AAD, ciphertext and \
                      the first signed_len bytes must match exactly; the RSA-PSS signature is one \
                      valid sample. Accept cases open at now_ms after opening open_first_b64 with \
                      one freshness tracker (per room, sender, device: counter above the last \
                      accepted; for typing only, also at most max_skew_ms from now_ms, checked \
                      after the payload is read: receipts have no window). Reject cases: open \
                      with the given claims, key and clock (after open_first_b64) and expect \
                      the named error (Replay: not above the last accepted; Stale: a typing \
                      signal too far from the clock). Readers drop every rejected signal \
                      silently."
            .into(),
        format_version: 2,
        kind_byte: 0x03,
        device_id_hex: DEVICE_HEX.into(),
        sender_fixture: "alice".into(),
        sender_spki_der_b64: alice_spki,
        room_id: ROOM_ID,
        sender: "alice".into(),
        epoch: EPOCH,
        sender_key_hex: SENDER_KEY_HEX.into(),
        now_ms: SIGNAL_NOW_MS,
        max_skew_ms: signal::MAX_SKEW_MS,
        accept,
        reject,
    }
}

#[test]
fn signal_vectors_hold() {
    let vectors = write_or_read("signal.json", build_signal_vectors);
    assert_eq!(vectors.kind_byte, 0x03);
    assert_eq!(vectors.max_skew_ms, signal::MAX_SKEW_MS);
    let alice = identity(&vectors.sender_spki_der_b64);
    assert_eq!(
        alice.spki_der(),
        fixture_key(&vectors.sender_fixture).public().spki_der()
    );
    let key = SenderKey::from_bytes(
        vectors.epoch,
        unhex(&vectors.sender_key_hex).try_into().unwrap(),
    );
    let context = OpenContext {
        room_id: vectors.room_id,
        sender: &vectors.sender,
        sender_identity: &alice,
    };
    assert_eq!(vectors.accept.len(), 5);
    for case in &vectors.accept {
        let stored = unb64(&case.signal_b64);
        let nonce: [u8; 12] = unhex(&case.nonce_hex).try_into().unwrap();
        let rebuilt = build_signal(case.counter, &nonce, case.payload_json.as_bytes());
        assert_eq!(rebuilt.signed_len, case.signed_len, "{}", case.name);
        assert_eq!(hex(&rebuilt.body[..rebuilt.aad_len]), case.aad_hex);
        assert_eq!(stored[5], 0x03);
        assert_eq!(
            b64(&rebuilt.body[rebuilt.aad_len + 16..rebuilt.signed_len]),
            case.ciphertext_and_tag_b64
        );
        assert_eq!(rebuilt.body[..case.signed_len], stored[..case.signed_len]);
        let mut freshness = Freshness::new();
        for earlier in &case.open_first_b64 {
            signal::open(
                &unb64(earlier),
                &context,
                &key,
                vectors.now_ms,
                &mut freshness,
            )
            .unwrap();
        }
        let opened = signal::open(&stored, &context, &key, vectors.now_ms, &mut freshness)
            .unwrap_or_else(|error| panic!("{}: {error}", case.name));
        assert_eq!(
            &opened.signal.to_bytes()[..],
            case.payload_json.as_bytes(),
            "{}",
            case.name
        );
        assert_eq!(opened.signal.kind(), case.frame_kind);
        assert_eq!(opened.header.counter, case.counter);
    }
    assert!(vectors.reject.len() >= 10);
    for case in &vectors.reject {
        let pinned = identity(&case.sender_spki_der_b64);
        let key = SenderKey::from_bytes(
            vectors.epoch,
            unhex(&case.sender_key_hex).try_into().unwrap(),
        );
        let context = OpenContext {
            room_id: case.room_id,
            sender: &case.sender,
            sender_identity: &pinned,
        };
        let mut freshness = Freshness::new();
        for earlier in &case.open_first_b64 {
            signal::open(&unb64(earlier), &context, &key, case.now_ms, &mut freshness).unwrap();
        }
        let error = signal::open(
            &unb64(&case.signal_b64),
            &context,
            &key,
            case.now_ms,
            &mut freshness,
        )
        .err()
        .unwrap_or_else(|| panic!("{} opened", case.name));
        assert_eq!(error_name(&error), case.expect, "{}", case.name);
    }
}
