//! Cryptography shared by the server and the clients.
//!
//! The server only ever uses the public half: it parses identity keys and
//! checks signatures on registration proofs and key rotations. Everything that
//! touches a private key or a plaintext is client-side.

pub mod identity;
pub mod statements;

use thiserror::Error;

/// Why a cryptographic operation failed. Deliberately coarse: an envelope that
/// does not open says so, never which step failed.
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
}
