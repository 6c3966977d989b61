//! Runs every input of the fuzz targets' seed corpus (`fuzz/corpus/`)
//! through the same entry points the fuzzer uses, so the targets build with
//! the crate and anything the fuzzer once found (added to the corpus) stays
//! fixed. The real fuzzing is `cargo +nightly fuzz run TARGET`: see
//! `fuzz/README.md`.

use std::fs;
use std::path::{Path, PathBuf};

use hush::crypto::envelope;
use hush::crypto::identity::IdentityKey;
use hush::crypto::keys::KeyFile;
use hush::crypto::sender_keys;
use hush::fuzzing;
use hush::protocol::Incoming;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} has no seeds", dir.display());
    inputs
}

fn named<'a>(inputs: &'a [(PathBuf, Vec<u8>)], name: &str) -> &'a [u8] {
    &inputs
        .iter()
        .find(|(path, _)| path.file_name().unwrap() == name)
        .unwrap_or_else(|| panic!("seed {name} missing"))
        .1
}

#[test]
fn client_frames() {
    let inputs = corpus("client_frame");
    for (_, data) in &inputs {
        fuzzing::client_frame(data);
    }
    for good in ["auth", "send", "sync", "history", "who", "ping"] {
        let text = std::str::from_utf8(named(&inputs, good)).unwrap();
        assert!(serde_json::from_str::<Incoming>(text).is_ok(), "{good}");
    }
    for bad in ["unknown_type", "wrong_types", "truncated", "nested"] {
        let text = std::str::from_utf8(named(&inputs, bad)).unwrap();
        assert!(serde_json::from_str::<Incoming>(text).is_err(), "{bad}");
    }
}

#[test]
fn log_bodies() {
    let inputs = corpus("log_body");
    for (_, data) in &inputs {
        fuzzing::log_body(data);
    }
    let header = envelope::peek(named(&inputs, "envelope_0")).unwrap();
    assert_eq!(header.sender, "alice");
    let distribution = sender_keys::peek_distribution(named(&inputs, "distribution")).unwrap();
    assert_eq!(distribution.sender, header.sender);
}

#[test]
fn payloads() {
    let inputs = corpus("payload");
    for (_, data) in &inputs {
        fuzzing::payload(data);
    }
    assert!(envelope::Payload::from_bytes(named(&inputs, "file")).is_ok());
}

#[test]
fn public_keys() {
    let inputs = corpus("public_key");
    for (_, data) in &inputs {
        fuzzing::public_key(data);
    }
    assert!(IdentityKey::from_spki_der(named(&inputs, "alice")).is_ok());
    assert!(IdentityKey::from_spki_der(named(&inputs, "truncated")).is_err());
}

#[test]
fn key_files() {
    let inputs = corpus("key_file");
    for (_, data) in &inputs {
        fuzzing::key_file(data);
    }
    let text = std::str::from_utf8(named(&inputs, "key_file.json")).unwrap();
    assert!(KeyFile::from_json(text).is_ok());
}
