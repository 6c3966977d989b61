//! Cryptography shared by the server and the clients.
//!
//! The server only ever uses the public half: it parses identity keys and
//! checks signatures on registration proofs and key rotations. Everything that
//! touches a private key or a plaintext is client-side: `keys` (identity
//! private keys at rest), `envelope` (one message), `sender_keys` (per-room
//! sender keys and their distribution), `safety` (numbers people compare) and
//! `trust` (which peer keys this client has pinned). `docs/PROTOCOL.md §19`
//! describes every format byte by byte.

pub mod device;
pub mod envelope;
pub mod identity;
pub mod keys;
pub mod private_file;
pub mod room_timer;
pub mod safety;
pub mod sender_keys;
pub mod signal;
pub mod statements;
pub mod trust;
pub mod wire;

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod timer_vectors;
#[cfg(test)]
mod vectors;

use thiserror::Error;

/// Why a cryptographic operation failed. Deliberately coarse: an envelope that
/// does not open says so, never which step failed. The few distinct variants
/// exist because the UI shows them differently (an unknown version asks the
/// user to upgrade, a replay or a wrong room hints at a misbehaving server).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("not a valid RSA public key (SPKI DER expected)")]
    MalformedKey,
    #[error("RSA key of {bits} bits is not accepted (2048 to 4096 bits)")]
    KeySize { bits: usize },
    #[error("RSA public exponent must be 65537")]
    KeyExponent,
    #[error("signature does not verify")]
    BadSignature,
    #[error("not a valid RSA private key (PKCS#8 expected)")]
    MalformedPrivateKey,
    #[error("RSA key generation failed")]
    KeyGeneration,
    #[error("the operating system random number generator failed")]
    Rng,
    #[error("signing failed")]
    SigningFailed,
    #[error("the envelope did not open")]
    OpenFailed,
    #[error("unknown format version {version}; a newer hush may be needed")]
    UnknownVersion { version: u8 },
    #[error("not a hush message")]
    NotHush,
    #[error("unknown body kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("the envelope belongs to a different room")]
    WrongRoom,
    #[error("the envelope was sent by a different user than claimed")]
    WrongSender,
    #[error("the envelope repeats one already opened (replay)")]
    Replay,
    #[error("the typing signal is more than ten minutes away from this clock")]
    Stale,
    #[error("this sender-key distribution holds no key for us")]
    NotARecipient,
    #[error("invalid username")]
    InvalidUsername,
    #[error("too large to seal")]
    TooLarge,
    #[error("this sender key has been used for too many messages; rotate it")]
    SenderKeyExhausted,
}
