//! Test-only helpers: loading the committed fixture keys from
//! `tests/fixtures/keys/` (tests never generate RSA keys).

use std::path::PathBuf;

use super::keys::IdentityPrivateKey;

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(format!("{name}.pem"))
}

/// One of `alice`, `bob`, `carol`, `dave`, `mallory` (RSA-2048, test-only).
pub fn fixture_key(name: &str) -> IdentityPrivateKey {
    let pem = std::fs::read_to_string(fixture_path(name)).expect("fixture key exists");
    IdentityPrivateKey::from_pkcs8_pem(&pem).expect("fixture key parses")
}
