//! Identity private keys: generation, PKCS#8 import, signing and unwrapping,
//! and the passphrase-protected key file that keeps them at rest.
//!
//! A key file is a small JSON document (format in `docs/PROTOCOL.md §19`): the
//! public key in clear, so listing keys needs no passphrase, and the PKCS#8
//! DER of the private key under AES-256-GCM with a key derived from the
//! passphrase by Argon2id. The parameters travel in the file so they can be
//! raised later without breaking old files. The public key is bound to the
//! ciphertext as associated data, so swapping it in the file is detected.

use std::fmt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rsa::sha2::Sha256;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use super::CryptoError;
use super::identity::IdentityKey;
use super::private_file::write_private_file;
use super::wire::random_bytes;

/// Key sizes `generate` accepts; 3072 is the default (about 128-bit strength).
pub const ALLOWED_KEY_BITS: [usize; 3] = [2048, 3072, 4096];
pub const DEFAULT_KEY_BITS: usize = 3072;

/// How often `generate` reports progress while the primes are searched.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// An RSA identity private key with its validated public half.
///
/// No `Debug`, no `Clone`: the private key zeroizes itself on drop
/// (`rsa::PrivateKey` is `ZeroizeOnDrop`) and should exist once.
pub struct IdentityPrivateKey {
    private: rsa::PrivateKey,
    public: IdentityKey,
}

impl IdentityPrivateKey {
    /// Generates a new key of `bits` (2048, 3072 or 4096). Generation takes
    /// from a fraction of a second to several seconds, so it runs on a worker
    /// thread and `on_progress` is called with the elapsed time about every
    /// `PROGRESS_INTERVAL` until it finishes: enough for a CLI spinner.
    pub fn generate(
        bits: usize,
        mut on_progress: impl FnMut(Duration),
    ) -> Result<Self, CryptoError> {
        if !ALLOWED_KEY_BITS.contains(&bits) {
            return Err(CryptoError::KeySize { bits });
        }
        let started = Instant::now();
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let result = rsa::PrivateKey::new(&mut getrandom::SysRng, bits);
            // The receiver only goes away if the caller panicked.
            let _ = done_tx.send(result);
        });
        let private = loop {
            match done_rx.recv_timeout(PROGRESS_INTERVAL) {
                Ok(result) => break result.map_err(|_| CryptoError::KeyGeneration)?,
                Err(mpsc::RecvTimeoutError::Timeout) => on_progress(started.elapsed()),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(CryptoError::KeyGeneration);
                }
            }
        };
        Self::from_rsa(private)
    }

    /// Parses an unencrypted PKCS#8 DER private key and validates its public
    /// half like any other identity key (2048–4096 bits, e = 65537).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CryptoError> {
        let private =
            rsa::PrivateKey::from_pkcs8_der(der).map_err(|_| CryptoError::MalformedPrivateKey)?;
        Self::from_rsa(private)
    }

    /// Parses an unencrypted PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as
    /// written by `openssl genpkey`, for importing existing keys.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CryptoError> {
        const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
        const END: &str = "-----END PRIVATE KEY-----";
        let start = pem.find(BEGIN).ok_or(CryptoError::MalformedPrivateKey)? + BEGIN.len();
        let len = pem[start..]
            .find(END)
            .ok_or(CryptoError::MalformedPrivateKey)?;
        let body: Zeroizing<String> = Zeroizing::new(
            pem[start..start + len]
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect(),
        );
        let der = Zeroizing::new(
            BASE64
                .decode(body.as_bytes())
                .map_err(|_| CryptoError::MalformedPrivateKey)?,
        );
        Self::from_pkcs8_der(&der)
    }

    fn from_rsa(private: rsa::PrivateKey) -> Result<Self, CryptoError> {
        let spki = private
            .to_public_key()
            .to_public_key_der()
            .map_err(|_| CryptoError::MalformedKey)?;
        let public = IdentityKey::from_spki_der(spki.as_bytes())?;
        Ok(Self { private, public })
    }

    /// The PKCS#8 DER encoding of the private key, wiped when dropped.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let document = self
            .private
            .to_pkcs8_der()
            .map_err(|_| CryptoError::MalformedPrivateKey)?;
        Ok(document.to_bytes())
    }

    /// Unencrypted PKCS#8 PEM, for moving a key to other software. Prefer
    /// exporting the passphrase-protected key file.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, CryptoError> {
        let der = self.to_pkcs8_der()?;
        let body = Zeroizing::new(BASE64.encode(der.as_slice()));
        let mut pem = Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
        for line in body.as_bytes().chunks(64) {
            // Base64 output is ASCII, so every chunk is valid UTF-8.
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Ok(pem)
    }

    pub fn public(&self) -> &IdentityKey {
        &self.public
    }

    /// RSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt over `message`:
    /// what `IdentityKey::verify` and WebCrypto (`saltLength: 32`) check.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.private
            .pss_sign::<Sha256>(message)
            .map_err(|_| CryptoError::SigningFailed)
    }

    /// RSA-OAEP-SHA256 (MGF1-SHA-256, empty label) decryption of something
    /// wrapped for this key. Any failure is `OpenFailed`.
    pub fn unwrap_key(&self, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.private
            .oaep_decrypt::<Sha256>(wrapped)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::OpenFailed)
    }
}

/// Why a key file could not be read, written or opened.
#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("key file I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a hush key file: {0}")]
    Malformed(&'static str),
    #[error("key file version {0} is not supported by this hush")]
    UnsupportedVersion(u32),
    #[error("key file KDF parameters are outside the accepted range")]
    UnacceptableKdf,
    #[error("the passphrase must not be empty")]
    EmptyPassphrase,
    #[error("wrong passphrase (or the key file is damaged)")]
    WrongPassphrase,
    #[error(transparent)]
    Key(#[from] CryptoError),
}

/// Argon2id cost parameters. The defaults are OWASP's recommendation
/// (19 MiB, 2 passes, 1 lane); weaker ones are refused when writing *and*
/// reading, and absurdly large ones are refused when reading so a hostile
/// file cannot make us allocate gigabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl KdfParams {
    pub const MIN_MEMORY_KIB: u32 = 19 * 1024;
    pub const MAX_MEMORY_KIB: u32 = 1024 * 1024;
    pub const MIN_ITERATIONS: u32 = 2;
    pub const MAX_ITERATIONS: u32 = 64;
    pub const MAX_PARALLELISM: u32 = 16;

    fn is_acceptable(&self) -> bool {
        (Self::MIN_MEMORY_KIB..=Self::MAX_MEMORY_KIB).contains(&self.memory_kib)
            && (Self::MIN_ITERATIONS..=Self::MAX_ITERATIONS).contains(&self.iterations)
            && (1..=Self::MAX_PARALLELISM).contains(&self.parallelism)
    }

    fn derive(&self, passphrase: &str, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|_| KeyFileError::UnacceptableKdf)?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.as_bytes(), salt, key.as_mut())
            .map_err(|_| KeyFileError::UnacceptableKdf)?;
        Ok(key)
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

const KEY_FILE_FORMAT: &str = "hush-identity-key";
const KEY_FILE_VERSION: u32 = 1;
const KDF_NAME: &str = "argon2id";
const ARGON2_VERSION: u32 = 0x13;
const CIPHER_NAME: &str = "aes-256-gcm";
const KEY_FILE_AAD_LABEL: &[u8] = b"hush-keyfile-v1\0";
const SALT_LEN: usize = 16;

/// A passphrase-protected identity key, as stored on disk and exported.
#[derive(Clone)]
pub struct KeyFile {
    public: IdentityKey,
    kdf: KdfParams,
    salt: [u8; SALT_LEN],
    nonce: [u8; 12],
    ciphertext: Vec<u8>,
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyFile({:?})", self.public)
    }
}

impl KeyFile {
    /// Encrypts `key` under `passphrase` with the default Argon2id costs.
    pub fn seal(key: &IdentityPrivateKey, passphrase: &str) -> Result<Self, KeyFileError> {
        Self::seal_with_params(key, passphrase, KdfParams::default())
    }

    /// Encrypts `key` under `passphrase` with the given (at least default) costs.
    /// A fresh salt and nonce are drawn every time, so re-sealing the same key
    /// never reuses a (key, nonce) pair.
    pub fn seal_with_params(
        key: &IdentityPrivateKey,
        passphrase: &str,
        kdf: KdfParams,
    ) -> Result<Self, KeyFileError> {
        if passphrase.is_empty() {
            return Err(KeyFileError::EmptyPassphrase);
        }
        if !kdf.is_acceptable() {
            return Err(KeyFileError::UnacceptableKdf);
        }
        let salt = random_bytes::<SALT_LEN>()?;
        let nonce = random_bytes::<12>()?;
        let wrapping_key = kdf.derive(passphrase, &salt)?;
        let der = key.to_pkcs8_der()?;
        let public = key.public().clone();
        let aad = key_file_aad(&public);
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*wrapping_key));
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: der.as_slice(),
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::TooLarge)?;
        Ok(Self {
            public,
            kdf,
            salt,
            nonce,
            ciphertext,
        })
    }

    /// Decrypts the private key. A wrong passphrase and a tampered file both
    /// fail the AES-GCM tag and give `WrongPassphrase`.
    pub fn open(&self, passphrase: &str) -> Result<IdentityPrivateKey, KeyFileError> {
        let wrapping_key = self.kdf.derive(passphrase, &self.salt)?;
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*wrapping_key));
        let aad = key_file_aad(&self.public);
        let der = Zeroizing::new(
            cipher
                .decrypt(
                    &Nonce::from(self.nonce),
                    Payload {
                        msg: &self.ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| KeyFileError::WrongPassphrase)?,
        );
        let key = IdentityPrivateKey::from_pkcs8_der(&der)?;
        if key.public().spki_der() != self.public.spki_der() {
            return Err(KeyFileError::Malformed(
                "public key does not match the private key",
            ));
        }
        Ok(key)
    }

    /// Re-encrypts under a new passphrase (fresh salt and nonce).
    pub fn change_passphrase(&self, old: &str, new: &str) -> Result<Self, KeyFileError> {
        Self::seal_with_params(&self.open(old)?, new, self.kdf)
    }

    /// The public key, readable without the passphrase.
    pub fn public_key(&self) -> &IdentityKey {
        &self.public
    }

    pub fn kdf_params(&self) -> KdfParams {
        self.kdf
    }

    /// The JSON text of the file (also the export format).
    pub fn to_json(&self) -> String {
        let json = KeyFileJson {
            format: KEY_FILE_FORMAT.to_owned(),
            version: KEY_FILE_VERSION,
            public_key: BASE64.encode(self.public.spki_der()),
            fingerprint: self.public.fingerprint().to_hex(),
            kdf: KdfJson {
                name: KDF_NAME.to_owned(),
                version: ARGON2_VERSION,
                memory_kib: self.kdf.memory_kib,
                iterations: self.kdf.iterations,
                parallelism: self.kdf.parallelism,
                salt: BASE64.encode(self.salt),
            },
            cipher: CipherJson {
                name: CIPHER_NAME.to_owned(),
                nonce: BASE64.encode(self.nonce),
            },
            ciphertext: BASE64.encode(&self.ciphertext),
        };
        let mut text = serde_json::to_string_pretty(&json).expect("plain structs serialize");
        text.push('\n');
        text
    }

    /// Parses and validates key file JSON (also the import format).
    pub fn from_json(text: &str) -> Result<Self, KeyFileError> {
        let json: KeyFileJson =
            serde_json::from_str(text).map_err(|_| KeyFileError::Malformed("invalid JSON"))?;
        if json.format != KEY_FILE_FORMAT {
            return Err(KeyFileError::Malformed("unknown format name"));
        }
        if json.version != KEY_FILE_VERSION {
            return Err(KeyFileError::UnsupportedVersion(json.version));
        }
        if json.kdf.name != KDF_NAME || json.kdf.version != ARGON2_VERSION {
            return Err(KeyFileError::UnacceptableKdf);
        }
        if json.cipher.name != CIPHER_NAME {
            return Err(KeyFileError::Malformed("unknown cipher"));
        }
        let kdf = KdfParams {
            memory_kib: json.kdf.memory_kib,
            iterations: json.kdf.iterations,
            parallelism: json.kdf.parallelism,
        };
        if !kdf.is_acceptable() {
            return Err(KeyFileError::UnacceptableKdf);
        }
        let public = IdentityKey::from_spki_der(&decode_base64(&json.public_key)?)?;
        if public.fingerprint().to_hex() != json.fingerprint {
            return Err(KeyFileError::Malformed(
                "fingerprint does not match the public key",
            ));
        }
        Ok(Self {
            public,
            kdf,
            salt: decode_array(&json.kdf.salt)?,
            nonce: decode_array(&json.cipher.nonce)?,
            ciphertext: decode_base64(&json.ciphertext)?,
        })
    }

    /// Writes the file with mode 0600 (atomically replacing any old one).
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        write_private_file(path, self.to_json().as_bytes())?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        Self::from_json(&std::fs::read_to_string(path)?)
    }
}

fn key_file_aad(public: &IdentityKey) -> Vec<u8> {
    let mut aad = KEY_FILE_AAD_LABEL.to_vec();
    aad.extend_from_slice(public.spki_der());
    aad
}

fn decode_base64(text: &str) -> Result<Vec<u8>, KeyFileError> {
    BASE64
        .decode(text)
        .map_err(|_| KeyFileError::Malformed("invalid base64"))
}

fn decode_array<const N: usize>(text: &str) -> Result<[u8; N], KeyFileError> {
    decode_base64(text)?
        .try_into()
        .map_err(|_| KeyFileError::Malformed("field has the wrong length"))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileJson {
    format: String,
    version: u32,
    public_key: String,
    fingerprint: String,
    kdf: KdfJson,
    cipher: CipherJson,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KdfJson {
    name: String,
    version: u32,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    salt: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CipherJson {
    name: String,
    nonce: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_support::fixture_key;

    #[test]
    fn key_file_round_trips_with_the_right_passphrase() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let file = KeyFile::seal(&alice, "correct horse")?;
        let reread = KeyFile::from_json(&file.to_json())?;
        assert_eq!(reread.public_key().spki_der(), alice.public().spki_der());
        let opened = reread.open("correct horse")?;
        assert_eq!(opened.public().spki_der(), alice.public().spki_der());
        assert_eq!(*opened.to_pkcs8_der()?, *alice.to_pkcs8_der()?);
        Ok(())
    }

    #[test]
    fn key_file_with_wrong_passphrase_is_rejected() -> anyhow::Result<()> {
        let file = KeyFile::seal(&fixture_key("bob"), "right")?;
        assert!(matches!(
            file.open("wrong"),
            Err(KeyFileError::WrongPassphrase)
        ));
        assert!(matches!(file.open(""), Err(KeyFileError::WrongPassphrase)));
        Ok(())
    }

    #[test]
    fn key_file_with_swapped_public_key_does_not_open() -> anyhow::Result<()> {
        let file = KeyFile::seal(&fixture_key("alice"), "pw")?;
        let mallory_spki = BASE64.encode(fixture_key("mallory").public().spki_der());
        let mut json: serde_json::Value = serde_json::from_str(&file.to_json())?;
        json["public_key"] = mallory_spki.into();
        json["fingerprint"] = fixture_key("mallory")
            .public()
            .fingerprint()
            .to_hex()
            .into();
        let tampered = KeyFile::from_json(&json.to_string())?;
        assert!(matches!(
            tampered.open("pw"),
            Err(KeyFileError::WrongPassphrase)
        ));
        Ok(())
    }

    #[test]
    fn weak_or_huge_kdf_parameters_are_refused() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let weak = KdfParams {
            memory_kib: 4096,
            ..KdfParams::default()
        };
        assert!(matches!(
            KeyFile::seal_with_params(&alice, "pw", weak),
            Err(KeyFileError::UnacceptableKdf)
        ));
        let file = KeyFile::seal(&alice, "pw")?;
        let mut json: serde_json::Value = serde_json::from_str(&file.to_json())?;
        json["kdf"]["memory_kib"] = (64u64 * 1024 * 1024).into();
        assert!(matches!(
            KeyFile::from_json(&json.to_string()),
            Err(KeyFileError::UnacceptableKdf)
        ));
        assert!(matches!(
            KeyFile::seal(&alice, ""),
            Err(KeyFileError::EmptyPassphrase)
        ));
        Ok(())
    }

    #[test]
    fn unknown_key_file_version_is_rejected() -> anyhow::Result<()> {
        let file = KeyFile::seal(&fixture_key("alice"), "pw")?;
        let mut json: serde_json::Value = serde_json::from_str(&file.to_json())?;
        json["version"] = 2.into();
        assert!(matches!(
            KeyFile::from_json(&json.to_string()),
            Err(KeyFileError::UnsupportedVersion(2))
        ));
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_written_with_mode_0600() -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("alice.key.json");
        let file = KeyFile::seal(&fixture_key("alice"), "pw")?;
        file.save(&path)?;
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = KeyFile::load(&path)?;
        assert_eq!(
            loaded.public_key().fingerprint(),
            file.public_key().fingerprint()
        );
        assert!(loaded.open("pw").is_ok());
        Ok(())
    }

    #[test]
    fn passphrase_change_keeps_the_key() -> anyhow::Result<()> {
        let file = KeyFile::seal(&fixture_key("carol"), "old")?;
        let changed = file.change_passphrase("old", "new")?;
        assert!(matches!(
            changed.open("old"),
            Err(KeyFileError::WrongPassphrase)
        ));
        assert_eq!(
            changed.open("new")?.public().fingerprint(),
            file.public_key().fingerprint()
        );
        Ok(())
    }

    #[test]
    fn pem_export_round_trips() -> anyhow::Result<()> {
        let dave = fixture_key("dave");
        let pem = dave.to_pkcs8_pem()?;
        let back = IdentityPrivateKey::from_pkcs8_pem(&pem)?;
        assert_eq!(back.public().spki_der(), dave.public().spki_der());
        assert!(IdentityPrivateKey::from_pkcs8_pem("not a key").is_err());
        Ok(())
    }

    #[test]
    fn signatures_verify_with_the_public_key() -> anyhow::Result<()> {
        let alice = fixture_key("alice");
        let signature = alice.sign(b"hello")?;
        alice.public().verify(b"hello", &signature)?;
        assert_eq!(
            alice.public().verify(b"hellO", &signature),
            Err(CryptoError::BadSignature)
        );
        Ok(())
    }

    #[test]
    fn weak_fixture_key_is_refused() {
        let pem = std::fs::read_to_string(crate::crypto::test_support::fixture_path("weak-1024"))
            .expect("fixture exists");
        assert!(matches!(
            IdentityPrivateKey::from_pkcs8_pem(&pem),
            Err(CryptoError::KeySize { bits: 1024 })
        ));
    }

    /// The one place a test generates an RSA key: generation itself.
    #[test]
    fn generated_key_has_the_requested_size_and_reports_progress() -> anyhow::Result<()> {
        let mut ticks = 0u32;
        let key = IdentityPrivateKey::generate(2048, |_| ticks += 1)?;
        assert_eq!(key.public().bits(), 2048);
        let signature = key.sign(b"x")?;
        key.public().verify(b"x", &signature)?;
        // Ticks depend on speed; only check the callback type-checks and runs.
        let _ = ticks;
        assert!(matches!(
            IdentityPrivateKey::generate(1024, |_| {}),
            Err(CryptoError::KeySize { bits: 1024 })
        ));
        Ok(())
    }
}
