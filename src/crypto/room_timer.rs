//! Timer statements (body kind `0x04`, PROTOCOL.md §21): a member's signed
//! "messages in room R disappear after D seconds, as of seq A". Unlike
//! every other body, the server reads this one (it must know the duration
//! to expire the log) and checks its signature; readers check it again
//! under the keys they accepted for its sender.
//!
//! ```text
//! "HUSH" 0x02 0x04 | room i64 | n u8 | sender (n bytes) | duration u32
//! | after u64 | s u16 | RSA-PSS-SHA256 signature over everything before s
//! ```

use super::CryptoError;
use super::identity::IdentityKey;
use super::keys::IdentityPrivateKey;
use super::wire::{BodyKind, FORMAT_VERSION, Reader, Writer};

/// Longest duration a statement may set: 4 weeks.
pub const MAX_DURATION_SECS: u32 = 28 * 24 * 3600;

/// The fields of a timer statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerStatement {
    pub room: i64,
    pub sender: String,
    /// Seconds after which messages disappear; 0 turns the timer off.
    pub duration_secs: u32,
    /// The room's newest seq the setter had seen.
    pub after: u64,
}

/// A parsed statement and where its signature is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedTimer {
    pub statement: TimerStatement,
    /// Length of the signed prefix (`27 + n`).
    pub signed_len: usize,
    pub signature: Vec<u8>,
}

/// The signed part of a statement: every byte before the signature length.
pub fn build(statement: &TimerStatement) -> Result<Vec<u8>, CryptoError> {
    let mut writer = Writer::with_version(FORMAT_VERSION, BodyKind::Timer);
    writer.i64(statement.room);
    writer.username(&statement.sender)?;
    writer.u32(statement.duration_secs);
    writer.u64(statement.after);
    Ok(writer.into_bytes())
}

/// The whole statement, signed by `key` (the sender's identity key).
pub fn sign(statement: &TimerStatement, key: &IdentityPrivateKey) -> Result<Vec<u8>, CryptoError> {
    let mut body = build(statement)?;
    let signature = key.sign(&body)?;
    let len = u16::try_from(signature.len()).map_err(|_| CryptoError::TooLarge)?;
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(&signature);
    Ok(body)
}

/// Reads a statement's framing and fields without checking the signature.
/// Anything malformed (another kind or version, a bad username, a short or
/// long body) is `OpenFailed`, or `NotHush` / `UnknownVersion` for the
/// prefix.
pub fn parse(body: &[u8]) -> Result<ParsedTimer, CryptoError> {
    let mut reader = Reader::new(body, BodyKind::Timer)?;
    if reader.version() != FORMAT_VERSION {
        return Err(CryptoError::OpenFailed);
    }
    let room = reader.i64()?;
    let sender = reader.username()?;
    let duration_secs = reader.u32()?;
    let after = reader.u64()?;
    let signed_len = reader.position();
    let signature = reader.bytes_u16()?.to_vec();
    reader.finish()?;
    Ok(ParsedTimer {
        statement: TimerStatement {
            room,
            sender,
            duration_secs,
            after,
        },
        signed_len,
        signature,
    })
}

/// Parses a statement and checks its signature under `key`.
pub fn verify(body: &[u8], key: &IdentityKey) -> Result<TimerStatement, CryptoError> {
    let parsed = parse(body)?;
    key.verify(&body[..parsed.signed_len], &parsed.signature)?;
    Ok(parsed.statement)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_support::fixture_key;

    fn statement() -> TimerStatement {
        TimerStatement {
            room: 7,
            sender: "alice".into(),
            duration_secs: 86_400,
            after: 41,
        }
    }

    #[test]
    fn a_signed_statement_verifies_and_parses_back() {
        let alice = fixture_key("alice");
        let body = sign(&statement(), &alice).unwrap();
        assert_eq!(&body[..6], b"HUSH\x02\x04");
        assert_eq!(verify(&body, alice.public()), Ok(statement()));
        assert_eq!(parse(&body).unwrap().signed_len, 27 + 5);
    }

    #[test]
    fn another_key_a_flipped_byte_or_trailing_bytes_fail() {
        let alice = fixture_key("alice");
        let body = sign(&statement(), &alice).unwrap();
        assert_eq!(
            verify(&body, fixture_key("bob").public()),
            Err(CryptoError::BadSignature)
        );
        for at in 6..body.len() {
            let mut bad = body.clone();
            bad[at] ^= 1;
            assert!(verify(&bad, alice.public()).is_err(), "byte {at}");
        }
        let mut long = body.clone();
        long.push(0);
        assert_eq!(parse(&long), Err(CryptoError::OpenFailed));
        assert_eq!(parse(&body[..body.len() - 1]), Err(CryptoError::OpenFailed));
        let mut v1 = body;
        v1[4] = 1;
        assert_eq!(parse(&v1), Err(CryptoError::OpenFailed));
    }
}
