//! argon2id with reused working memory.
//!
//! Each hash needs ~19 MiB of blocks. Allocating them afresh per hash
//! leaves glibc holding a 19 MiB arena per worker thread that ever hashed
//! (~460 MB resident after 50 logins in `hush-bench idle`). Here every
//! hashing slot reuses one buffer, so the memory held is at most
//! `slots × 19 MiB`, whatever the number of logins.

use std::sync::Mutex;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;

/// Buffers of the default parameters' size, one per slot in use.
#[derive(Default)]
pub struct Blocks(Mutex<Vec<Vec<Block>>>);

impl Blocks {
    /// Runs `f` with a buffer of `count` blocks. Only buffers of the
    /// default size are kept for reuse.
    fn with<R>(&self, count: usize, f: impl FnOnce(&mut [Block]) -> R) -> R {
        let default_count = Params::DEFAULT.block_count();
        let mut blocks = if count == default_count {
            self.0.lock().expect("argon2 memory lock poisoned").pop()
        } else {
            None
        }
        .unwrap_or_else(|| vec![Block::new(); count]);
        let result = f(&mut blocks);
        if count == default_count {
            self.0
                .lock()
                .expect("argon2 memory lock poisoned")
                .push(blocks);
        }
        result
    }

    /// A PHC string (argon2id, default parameters, 16-byte random salt).
    pub fn hash(&self, password: &[u8]) -> anyhow::Result<String> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let params = Params::DEFAULT;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        self.with(params.block_count(), |blocks| {
            argon.hash_password_into_with_memory(password, &salt, &mut out, blocks)
        })
        .map_err(|e| anyhow::anyhow!("argon2 failed: {e}"))?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params)
                .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?,
            salt: Some(Salt::new(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?),
            hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("output: {e}"))?),
        };
        Ok(phc.to_string())
    }

    /// Whether `password` matches the PHC string `stored` (any argon2
    /// variant and parameters it names), compared in constant time.
    pub fn verify(&self, stored: &str, password: &[u8]) -> bool {
        let Ok(parsed) = PasswordHash::new(stored) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
            return false;
        };
        let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
            return false;
        };
        let version = match parsed.version {
            Some(v) => match Version::try_from(v) {
                Ok(v) => v,
                Err(_) => return false,
            },
            None => Version::default(),
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return false;
        };
        let count = params.block_count();
        let argon = Argon2::new(algorithm, version, params);
        let mut out = vec![0u8; expected.len()];
        let computed = self.with(count, |blocks| {
            argon.hash_password_into_with_memory(password, salt.as_ref(), &mut out, blocks)
        });
        computed.is_ok() && bool::from(out.ct_eq(expected.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    use super::*;

    #[test]
    fn hashes_verify_both_ways_with_the_stock_argon2_code() {
        let blocks = Blocks::default();
        let ours = blocks.hash(b"correct horse").expect("hashing works");
        let parsed = PasswordHash::new(&ours).expect("a PHC string");
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        assert!(blocks.verify(&ours, b"correct horse"));
        assert!(!blocks.verify(&ours, b"wrong horse"));

        let stock = Argon2::default()
            .hash_password(b"battery staple")
            .expect("hashing works")
            .to_string();
        assert!(blocks.verify(&stock, b"battery staple"));
        assert!(!blocks.verify(&stock, b"battery stapler"));
        assert!(!blocks.verify("not a hash", b"battery staple"));
        assert_eq!(blocks.0.lock().expect("not poisoned").len(), 1);
    }
}
