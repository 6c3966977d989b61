//! The exact bytes that identity keys sign outside of messages. Each starts
//! with its own domain-separation label so a signature made for one purpose
//! can never be replayed as another. Documented byte by byte in
//! `docs/PROTOCOL.md`.

/// Signed by a new user's key to prove it holds the private half:
/// `"hush-register-v1" 0x00 username 0x00 challenge`.
pub fn registration_proof(username: &str, challenge: &[u8]) -> Vec<u8> {
    labelled(b"hush-register-v1", &[username.as_bytes(), challenge])
}

/// Signed by a user's current key to hand over to a new one:
/// `"hush-rotate-v1" 0x00 username 0x00 sha256(old SPKI) 0x00 new SPKI DER`.
pub fn key_rotation(username: &str, old_fingerprint: &[u8; 32], new_spki_der: &[u8]) -> Vec<u8> {
    labelled(
        b"hush-rotate-v1",
        &[username.as_bytes(), old_fingerprint, new_spki_der],
    )
}

fn labelled(label: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out = label.to_vec();
    for part in parts {
        out.push(0);
        out.extend_from_slice(part);
    }
    out
}
