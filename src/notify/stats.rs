//! Counters of the channel and of cross-node delivery, read by
//! `server::metrics` for `GET /metrics` (process-wide atomics, like
//! `store::commit_timing`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::histogram::Histogram;

/// Upper bounds, in seconds, of the cross-node lag buckets.
pub const LAG_BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Self(AtomicU64::new(0))
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Payloads sent on the channel.
pub static PAYLOADS_SENT: Counter = Counter::new();
/// Payloads that could not be sent (the notices in them were dropped; the
/// catch-up read covers them).
pub static SEND_FAILURES: Counter = Counter::new();
/// Payloads received from other nodes.
pub static PAYLOADS_RECEIVED: Counter = Counter::new();
/// Notices received from other nodes.
pub static NOTICES_RECEIVED: Counter = Counter::new();
/// Times the listener connected again after losing its connection.
pub static LISTENER_RECONNECTS: Counter = Counter::new();
/// 1 while the listener is connected (a gauge kept as a counter cell).
pub static LISTENER_UP: Counter = Counter::new();
/// Entries committed by another node and delivered by this one.
pub static REMOTE_ENTRIES: Counter = Counter::new();
/// Reads of the store to fill a gap (a notice or own commit ahead of what
/// was delivered, or the catch-up finding a room behind).
pub static GAP_READS: Counter = Counter::new();
/// Rooms the periodic catch-up found behind the store.
pub static CATCHUP_BEHIND: Counter = Counter::new();

pub fn set_listener_up(up: bool) {
    LISTENER_UP.0.store(u64::from(up), Ordering::Relaxed);
}

static LAG: Histogram<{ LAG_BUCKETS.len() + 1 }> = Histogram::new(&LAG_BUCKETS);

/// Records one remote entry delivered `seconds` after its commit timestamp.
pub fn observe_lag(seconds: f64) {
    LAG.observe(seconds);
}

/// Non-cumulative counts per bucket (the last is +Inf) and the total.
pub fn lag() -> ([u64; LAG_BUCKETS.len() + 1], f64) {
    LAG.snapshot()
}
