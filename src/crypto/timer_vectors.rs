//! Test vectors for timer statements (`tests/vectors/timer.json`, body kind
//! `0x04`, PROTOCOL.md §21), in the manner of `vectors`: the signed bytes are
//! compared exactly, the (randomized) RSA-PSS signatures are verified, and
//! each rejection case must fail with the named error.
//!
//! `HUSH_REGEN_VECTORS=1 cargo test --lib crypto::timer_vectors` rewrites
//! the file (new random signatures) and then checks what it wrote.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use super::CryptoError;
use super::identity::IdentityKey;
use super::room_timer::{self, TimerStatement};
use super::test_support::fixture_key;

#[derive(Serialize, Deserialize)]
struct TimerVectors {
    description: String,
    valid: Vec<ValidCase>,
    rejected: Vec<RejectedCase>,
}

#[derive(Serialize, Deserialize)]
struct ValidCase {
    /// Whose key signed it: `tests/fixtures/keys/<fixture>.pem`.
    fixture: String,
    room: i64,
    sender: String,
    duration_secs: u32,
    after: u64,
    /// Bytes `0 .. 27+n`: what the signature covers.
    signed_hex: String,
    statement_b64: String,
}

#[derive(Serialize, Deserialize)]
struct RejectedCase {
    description: String,
    /// The key to verify under.
    fixture: String,
    statement_b64: String,
    error: String,
}

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/timer.json")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn error_name(error: &CryptoError) -> &'static str {
    match error {
        CryptoError::OpenFailed => "OpenFailed",
        CryptoError::BadSignature => "BadSignature",
        CryptoError::UnknownVersion { .. } => "UnknownVersion",
        CryptoError::NotHush => "NotHush",
        _ => "Other",
    }
}

fn public(fixture: &str) -> IdentityKey {
    fixture_key(fixture).public().clone()
}

fn build() -> TimerVectors {
    let cases = [
        ("alice", 42, "alice", 86_400, 41),
        ("bob", 7, "bob", 0, 1),
        (
            "carol",
            9_007_199_254_740_993,
            "carol.x-1_z",
            2_419_200,
            123_456_789,
        ),
    ];
    let valid: Vec<ValidCase> = cases
        .iter()
        .map(|&(fixture, room, sender, duration_secs, after)| {
            let statement = TimerStatement {
                room,
                sender: sender.into(),
                duration_secs,
                after,
            };
            let body = room_timer::sign(&statement, &fixture_key(fixture)).unwrap();
            ValidCase {
                fixture: fixture.into(),
                room,
                sender: sender.into(),
                duration_secs,
                after,
                signed_hex: hex(&room_timer::build(&statement).unwrap()),
                statement_b64: BASE64.encode(body),
            }
        })
        .collect();
    let good = BASE64.decode(&valid[0].statement_b64).unwrap();
    let signed_len = valid[0].signed_hex.len() / 2;
    let mut rejected = Vec::new();
    let mut reject = |description: &str, fixture: &str, body: Vec<u8>, error: &str| {
        rejected.push(RejectedCase {
            description: description.into(),
            fixture: fixture.into(),
            statement_b64: BASE64.encode(body),
            error: error.into(),
        });
    };
    reject(
        "verified under another key",
        "bob",
        good.clone(),
        "BadSignature",
    );
    let mut longer = good.clone();
    longer[signed_len - 9] ^= 0x01; // the duration's last byte
    reject(
        "duration changed after signing",
        "alice",
        longer,
        "BadSignature",
    );
    let mut trailing = good.clone();
    trailing.push(0);
    reject("a trailing byte", "alice", trailing, "OpenFailed");
    reject(
        "truncated signature",
        "alice",
        good[..good.len() - 1].to_vec(),
        "OpenFailed",
    );
    let mut v1 = good.clone();
    v1[4] = 0x01;
    reject("format version 1", "alice", v1, "OpenFailed");
    let mut v3 = good.clone();
    v3[4] = 0x03;
    reject("format version 3", "alice", v3, "UnknownVersion");
    let mut message = good.clone();
    message[5] = 0x01;
    reject("kind 0x01 (a message)", "alice", message, "OpenFailed");
    let mut not_hush = good.clone();
    not_hush[0] = b'X';
    reject("no HUSH magic", "alice", not_hush, "NotHush");
    let mut bad_name = good;
    bad_name[15] = b'A';
    reject(
        "an invalid username (upper case)",
        "alice",
        bad_name,
        "OpenFailed",
    );
    TimerVectors {
        description: "Timer statements (body kind 0x04, PROTOCOL.md §21): \"HUSH\" 0x02 0x04, \
                      room i64, n u8, sender, duration u32 (seconds, 0 = off), after u64, \
                      s u16, RSA-PSS-SHA256 (salt 32) signature over bytes 0..27+n. All \
                      integers big-endian. Keys are tests/fixtures/keys/<fixture>.pem. \
                      signed_hex is exact; signatures are randomized, so verify them."
            .into(),
        valid,
        rejected,
    }
}

#[test]
fn timer_statement_vectors_hold() {
    if std::env::var("HUSH_REGEN_VECTORS").is_ok_and(|value| value == "1") {
        let mut text = serde_json::to_string_pretty(&build()).unwrap();
        text.push('\n');
        std::fs::write(path(), text).unwrap();
    }
    let text = std::fs::read_to_string(path())
        .expect("tests/vectors/timer.json missing; run with HUSH_REGEN_VECTORS=1");
    let vectors: TimerVectors = serde_json::from_str(&text).unwrap();
    assert!(!vectors.valid.is_empty() && !vectors.rejected.is_empty());
    for case in &vectors.valid {
        let statement = TimerStatement {
            room: case.room,
            sender: case.sender.clone(),
            duration_secs: case.duration_secs,
            after: case.after,
        };
        let signed = room_timer::build(&statement).unwrap();
        assert_eq!(hex(&signed), case.signed_hex, "{}", case.sender);
        let body = BASE64.decode(&case.statement_b64).unwrap();
        assert!(body.starts_with(&signed));
        assert_eq!(
            room_timer::verify(&body, &public(&case.fixture)),
            Ok(statement)
        );
    }
    for case in &vectors.rejected {
        let body = BASE64.decode(&case.statement_b64).unwrap();
        let result = room_timer::verify(&body, &public(&case.fixture));
        let error = result.expect_err(&case.description);
        assert_eq!(error_name(&error), case.error, "{}", case.description);
    }
}
