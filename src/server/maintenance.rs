//! Background work of a running server, driven by the database rather than
//! by requests, so that `hush admin` (another process) takes effect:
//!
//! - the session sweep: every `session_check_interval`, each open socket's
//!   token is checked against the `sessions` table; sockets whose session
//!   was revoked, expired, or belongs to a disabled or deleted account are
//!   closed with 4001;
//! - retention: with `retention` set, messages older than that are deleted
//!   at start and then every `retention_interval`, in small chunks so the
//!   log writer is never held up for long.

use std::time::Duration;

use tokio::sync::watch;

use super::hub::Hub;
use crate::config::ServerConfig;
use crate::store::{Store, now_ms};

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
        let hashes: Vec<[u8; 32]> = connected.iter().map(|(_, hash)| *hash).collect();
        let live = match store.live_tokens(&hashes).await {
            Ok(live) => live,
            Err(err) => {
                tracing::warn!(error = %err, "session sweep could not read the database; retrying later");
                continue;
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
