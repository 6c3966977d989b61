//! Entry points for the fuzz targets in `fuzz/`: one per parser that reads
//! bytes someone else chose. Each takes arbitrary bytes, must never panic,
//! and checks what can be checked without a secret (a parse that succeeds
//! round-trips). `tests/fuzz_corpus.rs` runs the committed seed corpus through
//! the same functions, so a crash the fuzzer once found stays fixed.

use crate::crypto::envelope::{self, Content, Payload};
use crate::crypto::identity::IdentityKey;
use crate::crypto::keys::{IdentityPrivateKey, KeyFile};
use crate::crypto::sender_keys;
use crate::crypto::wire::{self, BodyKind};
use crate::protocol::{ClientFrame, Incoming};

/// A WebSocket text frame as the server reads it: the whole frame, then (on
/// failure) the `id` the server tries to echo back.
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match serde_json::from_str::<Incoming>(text) {
        Ok(incoming) => {
            let again = serde_json::to_string(&incoming.frame).expect("frames serialize");
            let reparsed: ClientFrame =
                serde_json::from_str(&again).expect("a serialized frame parses");
            assert_eq!(format!("{:?}", incoming.frame), format!("{reparsed:?}"));
        }
        Err(_) => {
            let _ = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned));
        }
    }
}

/// A log body as a client reads it from the server before anything is
/// authenticated: the framing prefix, then the envelope or distribution
/// header it claims to be.
pub fn log_body(data: &[u8]) {
    match wire::body_kind(data) {
        Ok(BodyKind::Message) => {
            if let Ok(header) = envelope::peek(data) {
                assert!(wire::is_valid_username(&header.sender));
            }
        }
        Ok(BodyKind::SenderKeyDistribution) => {
            if let Ok(header) = sender_keys::peek_distribution(data) {
                assert!(wire::is_valid_username(&header.sender));
            }
        }
        Ok(BodyKind::Signal) => {
            if let Ok(header) = crate::crypto::signal::peek(data) {
                assert!(wire::is_valid_username(&header.sender));
            }
        }
        Ok(BodyKind::Timer) | Err(_) => {}
    }
    let _ = envelope::peek(data);
    let _ = sender_keys::peek_distribution(data);
}

/// A decrypted message payload: another client chose these bytes.
pub fn payload(data: &[u8]) {
    if let Ok(Content::Payload(payload)) = Payload::from_bytes(data) {
        let again = Payload::from_bytes(&payload.to_bytes()).expect("a payload round-trips");
        assert!(again == Content::Payload(payload));
    }
    if let Ok(payload) = Payload::from_bytes_v1(data) {
        let again = Payload::from_bytes_v1(&payload.to_bytes_v1()).expect("a payload round-trips");
        assert!(again == payload);
    }
}

/// An identity public key as the server receives it at registration or key
/// rotation (SPKI DER).
pub fn public_key(data: &[u8]) {
    if let Ok(key) = IdentityKey::from_spki_der(data) {
        assert_eq!(key.spki_der(), data);
        assert!((2048..=4096).contains(&key.bits()));
        let reparsed = IdentityKey::from_spki_der(key.spki_der()).expect("accepted once");
        assert!(reparsed.fingerprint() == key.fingerprint());
    }
}

/// A key file or export bundle given to `hush keys import`, and the
/// private-key encodings behind it. Never derives a key from a passphrase:
/// that is argon2's cost, not a parser.
pub fn key_file(data: &[u8]) {
    let _ = IdentityPrivateKey::from_pkcs8_der(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = IdentityPrivateKey::from_pkcs8_pem(text);
    if let Ok(file) = KeyFile::from_json(text) {
        let again = KeyFile::from_json(&file.to_json()).expect("a key file round-trips");
        assert_eq!(again.to_json(), file.to_json());
    }
}
