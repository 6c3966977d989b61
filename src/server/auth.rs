//! Passwords, session tokens and login throttling.
//!
//! Password hashing is argon2id with the crate defaults (m=19456 KiB, t=2,
//! p=1: OWASP's recommendation). Each hash costs ~19 MiB and real CPU, so
//! hashes run in `spawn_blocking` behind a small semaphore, each slot
//! reusing one buffer (`argon_memory`), and a login for an unknown user
//! verifies against a dummy hash so it costs the same.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::argon_memory::Blocks;

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Clone)]
pub struct Passwords {
    slots: Arc<Semaphore>,
    memory: Arc<Blocks>,
    /// Hashes running or waiting for a slot.
    in_line: Arc<AtomicUsize>,
    /// Most hashes running or waiting; past it, callers are turned away.
    max_in_line: usize,
    dummy_hash: Arc<str>,
}

/// Every hashing slot is busy and the queue is full: retry shortly.
#[derive(Debug, thiserror::Error)]
#[error("password hashing is saturated")]
pub struct Saturated;

/// A place in the hashing line, given back on drop.
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Passwords {
    /// `slots` hashes at once, at most `queue` more waiting.
    pub fn new(slots: usize, queue: usize) -> Self {
        let memory = Arc::new(Blocks::default());
        let dummy_hash = memory
            .hash(b"hush dummy password for unknown users")
            .expect("argon2 with default parameters works");
        let slots = slots.max(1);
        Self {
            slots: Arc::new(Semaphore::new(slots)),
            memory,
            in_line: Arc::default(),
            max_in_line: slots.saturating_add(queue),
            dummy_hash: dummy_hash.into(),
        }
    }

    fn join_line(&self) -> Result<Place, Saturated> {
        let before = self.in_line.fetch_add(1, Ordering::AcqRel);
        let place = Place(Arc::clone(&self.in_line));
        if before >= self.max_in_line {
            return Err(Saturated);
        }
        Ok(place)
    }

    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        let _place = self.join_line()?;
        let _slot = self.slots.acquire().await?;
        let memory = self.memory.clone();
        tokio::task::spawn_blocking(move || memory.hash(password.as_bytes())).await?
    }

    /// True if `password` matches `stored`; with no stored hash (unknown
    /// user) it does the same work and returns false. Known and unknown
    /// users wait in the same line, so saturation reveals nothing either.
    pub async fn verify(
        &self,
        stored: Option<String>,
        password: String,
    ) -> Result<bool, Saturated> {
        let _place = self.join_line()?;
        let Ok(_slot) = self.slots.acquire().await else {
            return Ok(false);
        };
        let is_known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let memory = self.memory.clone();
        let matches =
            tokio::task::spawn_blocking(move || memory.verify(&hash, password.as_bytes()))
                .await
                .unwrap_or(false);
        Ok(is_known && matches)
    }
}

/// A fresh session token (32 random bytes, URL-safe base64) and its hash,
/// which is all the server keeps.
pub fn new_token() -> (String, [u8; 32]) {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("the OS random source works");
    (URL_SAFE_NO_PAD.encode(raw), Sha256::digest(raw).into())
}

/// Hash of a token as presented by a client; `None` if it is not even
/// shaped like one of ours.
pub fn token_hash(token: &str) -> Option<[u8; 32]> {
    let raw = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
    (raw.len() == 32).then(|| Sha256::digest(&raw).into())
}

/// Delays logins for an account after repeated failures: after
/// `free_failures`, each further failure doubles the wait (1 s, 2 s, 4 s …,
/// at most 15 minutes). Keyed by username, so an attacker spreading
/// attempts over many addresses is slowed just the same.
pub struct LoginThrottle {
    free_failures: u32,
    failures: Mutex<HashMap<String, Failures>>,
}

struct Failures {
    count: u32,
    blocked_until: Instant,
}

const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
const MAX_TRACKED: usize = 100_000;

impl LoginThrottle {
    pub fn new(free_failures: u32) -> Self {
        Self {
            free_failures,
            failures: Mutex::default(),
        }
    }

    /// `Err(wait)` while the account is in a delay period.
    pub fn check(&self, username: &str) -> Result<(), Duration> {
        let failures = self.failures.lock().expect("throttle lock poisoned");
        match failures.get(username) {
            Some(f) if f.blocked_until > Instant::now() => Err(f.blocked_until - Instant::now()),
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, username: &str) {
        let mut failures = self.failures.lock().expect("throttle lock poisoned");
        let now = Instant::now();
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, f| f.blocked_until > now);
        }
        let entry = failures.entry(username.to_owned()).or_insert(Failures {
            count: 0,
            blocked_until: now,
        });
        entry.count += 1;
        if entry.count >= self.free_failures {
            let doublings = (entry.count - self.free_failures).min(20);
            let delay = Duration::from_secs(1u64 << doublings).min(MAX_DELAY);
            entry.blocked_until = now + delay;
        }
    }

    pub fn record_success(&self, username: &str) {
        self.failures
            .lock()
            .expect("throttle lock poisoned")
            .remove(username);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_matches_the_issued_token_only() {
        let (token, hash) = new_token();
        assert_eq!(token_hash(&token), Some(hash));
        let (other, _) = new_token();
        assert_ne!(token_hash(&other), Some(hash));
        assert_eq!(token_hash("not a token"), None);
    }

    #[tokio::test]
    async fn hashing_past_the_queue_bound_is_refused_at_once() {
        let passwords = Passwords::new(1, 1);
        let a = passwords.verify(None, "one".into());
        let b = passwords.verify(None, "two".into());
        let (c, d) = {
            // Two are in line (one hashing, one waiting); a third is refused
            // without waiting.
            let mut a = Box::pin(a);
            let mut b = Box::pin(b);
            assert!(futures_util::poll!(&mut a).is_pending());
            assert!(futures_util::poll!(&mut b).is_pending());
            let refused = passwords.verify(None, "three".into()).await;
            (refused, (a.await, b.await))
        };
        assert!(c.is_err(), "the third attempt is refused");
        assert!(matches!(d, (Ok(false), Ok(false))));
        assert!(
            passwords.verify(None, "again".into()).await.is_ok(),
            "the line drained"
        );
    }

    #[test]
    fn throttle_delays_after_free_failures_and_resets_on_success() {
        let throttle = LoginThrottle::new(2);
        throttle.record_failure("alice");
        assert!(throttle.check("alice").is_ok());
        throttle.record_failure("alice");
        assert!(throttle.check("alice").is_err());
        assert!(throttle.check("bob").is_ok());
        throttle.record_success("alice");
        assert!(throttle.check("alice").is_ok());
    }
}
