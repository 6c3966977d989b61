//! How long the log writer's commits take. The store records them here and
//! `server::metrics` reads them for `GET /metrics`, so the store needs
//! nothing from the server.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::histogram::Histogram;

/// Upper bounds, in seconds, of the commit latency buckets.
pub const COMMIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

static COMMITS: Histogram<{ COMMIT_BUCKETS.len() + 1 }> = Histogram::new(&COMMIT_BUCKETS);
static DIRECT_COMMITS: AtomicU64 = AtomicU64::new(0);

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

/// As `time_commit`, for a commit the writer runs through SQLite's C API
/// on its own thread (`writer::direct`); these are also counted apart.
pub fn time_direct_commit<T>(commit: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = commit();
    COMMITS.observe(started.elapsed().as_secs_f64());
    DIRECT_COMMITS.fetch_add(1, Ordering::Relaxed);
    out
}

/// Commits made through SQLite's C API so far (a subset of all commits).
pub fn direct_commits() -> u64 {
    DIRECT_COMMITS.load(Ordering::Relaxed)
}

pub fn commit_times() -> CommitTimes {
    let (buckets, sum_seconds) = COMMITS.snapshot();
    CommitTimes {
        buckets,
        sum_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_puts_each_observation_in_one_bucket() {
        let h = Histogram::<{ COMMIT_BUCKETS.len() + 1 }>::new(&COMMIT_BUCKETS);
        h.observe(0.0001);
        h.observe(0.003);
        h.observe(10.0);
        let counts = h.snapshot().0;
        assert_eq!(counts.iter().sum::<u64>(), 3);
        assert_eq!(counts[0], 1);
        assert_eq!(counts[3], 1, "0.003 s falls in the 0.005 bucket");
        assert_eq!(counts[COMMIT_BUCKETS.len()], 1, "10 s is above every bound");
    }
}
