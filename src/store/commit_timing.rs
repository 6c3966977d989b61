//! How long the log writer's commits take. The store records them here and
//! `server::metrics` reads them for `GET /metrics`, so the store needs
//! nothing from the server.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Upper bounds, in seconds, of the commit latency buckets.
pub const COMMIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

struct Histogram {
    /// Non-cumulative counts per bucket; the last one is +Inf.
    buckets: [AtomicU64; COMMIT_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; COMMIT_BUCKETS.len() + 1],
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, seconds: f64) {
        let at = COMMIT_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(COMMIT_BUCKETS.len());
        self.buckets[at].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> CommitTimes {
        CommitTimes {
            buckets: std::array::from_fn(|at| self.buckets[at].load(Ordering::Relaxed)),
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

static COMMITS: Histogram = Histogram::new();

/// The commits so far: non-cumulative counts per bucket of `COMMIT_BUCKETS`
/// (the last is +Inf), and their total time.
pub struct CommitTimes {
    pub buckets: [u64; COMMIT_BUCKETS.len() + 1],
    pub sum_seconds: f64,
}

/// Runs a database commit and records how long it took.
pub async fn time_commit<T>(commit: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = commit.await;
    COMMITS.observe(started.elapsed().as_secs_f64());
    out
}

pub fn commit_times() -> CommitTimes {
    COMMITS.snapshot()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_puts_each_observation_in_one_bucket() {
        let h = Histogram::new();
        h.observe(0.0001);
        h.observe(0.003);
        h.observe(10.0);
        let counts = h.snapshot().buckets;
        assert_eq!(counts.iter().sum::<u64>(), 3);
        assert_eq!(counts[0], 1);
        assert_eq!(counts[3], 1, "0.003 s falls in the 0.005 bucket");
        assert_eq!(counts[COMMIT_BUCKETS.len()], 1, "10 s is above every bound");
    }
}
