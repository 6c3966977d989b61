//! Background work of a running server, driven by the database rather than
//! by requests, so that `hush admin` (another process) takes effect:
//!
//! - the session sweep: every `session_check_interval`, each open socket's
//!   token is checked against the `sessions` table; sockets whose session
//!   was revoked, expired, or belongs to a disabled or deleted account are
//!   closed with 4001;
//! - retention: with `retention` set, messages older than that are deleted
//!   at start and then every `retention_interval`, in small chunks so the
//!   log writer is never held up for long;
//! - expiry: every `expiry_interval`, messages whose disappearing time has
//!   passed become `expired` tombstones, in chunks like retention;
//! - scrubbing: after any erasure (a `send` with `erase`, or expiry) the
//!   write-ahead log is checkpointed and truncated, so that with
//!   `secure_delete` the erased ciphertext leaves both the database file
//!   and the WAL within about a second. The WAL then grows again until
//!   its first checkpoint (see `store::wal_reserve` for why it is not
//!   reserved again here).

use std::time::Duration;

use tokio::sync::watch;

use super::hub::Hub;
use crate::config::ServerConfig;
use crate::store::{Store, UserId, now_ms};

/// Messages turned into tombstones per statement, and statements per run.
const EXPIRE_CHUNK: u32 = 2000;
/// A checkpoint that could not finish (a long read held the old pages) is
/// tried again after this long.
const CHECKPOINT_RETRY: Duration = Duration::from_millis(250);
/// Give up scrubbing one erasure after this many tries; the next erasure,
/// or SQLite's own checkpoints, carry on.
const CHECKPOINT_TRIES: usize = 40;

/// Messages deleted per statement, and statements per retention run.
const PRUNE_CHUNK: u32 = 2000;
const MAX_CHUNKS_PER_RUN: usize = 10_000;

pub async fn sweep_sessions(
    store: Store,
    hub: Hub,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => return,
            _ = tick.tick() => {}
        }
        let connected = hub.connected_tokens();
        if connected.is_empty() {
            continue;
        }
        close_dead_sessions(&store, &hub, connected).await;
    }
}

/// Closes the sockets among `connected` whose session no longer exists.
pub async fn close_dead_sessions(store: &Store, hub: &Hub, connected: Vec<(UserId, [u8; 32])>) {
    let hashes: Vec<[u8; 32]> = connected.iter().map(|(_, hash)| *hash).collect();
    let live = match store.live_tokens(&hashes).await {
        Ok(live) => live,
        Err(err) => {
            tracing::warn!(error = %err, "session sweep could not read the database; retrying later");
            return;
        }
    };
    for (user, hash) in connected.iter().filter(|(_, hash)| !live.contains(hash)) {
        tracing::info!(
            user = user.0,
            "closing sockets of a session that no longer exists"
        );
        hub.revoke(*user, hash);
    }
}

pub async fn retention(
    store: Store,
    config: std::sync::Arc<ServerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(keep) = config.retention else { return };
    let mut tick = tokio::time::interval(config.retention_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => return,
            _ = tick.tick() => {}
        }
        let cutoff = now_ms() - keep.as_millis() as i64;
        let mut pruned = 0u64;
        for _ in 0..MAX_CHUNKS_PER_RUN {
            if *stop.borrow() {
                return;
            }
            match store.prune_messages_before(cutoff, PRUNE_CHUNK).await {
                Ok(n) => {
                    pruned += n;
                    if n < u64::from(PRUNE_CHUNK) {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "retention could not prune; retrying at the next run");
                    break;
                }
            }
        }
        if pruned > 0 {
            tracing::info!(pruned, cutoff, "retention deleted old messages");
        }
    }
}

pub async fn expire(store: Store, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        let mut expired = 0u64;
        for _ in 0..MAX_CHUNKS_PER_RUN {
            if *stop.borrow() {
                return;
            }
            match store.expire_messages(now, EXPIRE_CHUNK).await {
                Ok(n) => {
                    expired += n;
                    if n < u64::from(EXPIRE_CHUNK) {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "could not expire messages; retrying at the next run");
                    break;
                }
            }
        }
        if expired > 0 {
            tracing::debug!(expired, "disappearing messages expired");
            store.erased();
        }
    }
}

/// Checkpoints (TRUNCATE) the write-ahead log a short `delay` after each
/// erasure, so that erased ciphertext leaves the WAL and the database file.
/// Erasures within `delay` of each other share one checkpoint. It costs one
/// copy of the WAL's pages into the database plus its fsyncs, during which
/// the log writer waits: measured on the 2-core test machine (loaded),
/// synchronous=FULL, 600-byte rows: 16 ms with a 0.1 MiB WAL, 22 ms with
/// 3.3 MiB, 260 ms with 20 MiB. Only the first checkpoint after a quiet
/// spell meets a large WAL; later ones copy what the last `delay` wrote.
pub async fn scrub(store: Store, delay: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => return,
            _ = store.next_erasure() => {}
        }
        tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => return,
            _ = tokio::time::sleep(delay) => {}
        }
        for _ in 0..CHECKPOINT_TRIES {
            let started = std::time::Instant::now();
            match store.checkpoint_truncate().await {
                Ok(true) => {
                    tracing::debug!(
                        micros = started.elapsed().as_micros() as u64,
                        "write-ahead log checkpointed after an erasure"
                    );
                    break;
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "checkpoint after an erasure failed; retrying");
                }
            }
            tokio::select! {
                _ = stop.wait_for(|stopping| *stopping) => return,
                _ = tokio::time::sleep(CHECKPOINT_RETRY) => {}
            }
        }
    }
}
