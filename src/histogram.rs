//! A process-wide latency histogram of atomics, for `GET /metrics`: the
//! store's commit times and the cross-node delivery lag use it.

use std::sync::atomic::{AtomicU64, Ordering};

/// `N` buckets: one per upper bound (in seconds) and a last one for +Inf,
/// so `N` is `bounds.len() + 1`.
pub struct Histogram<const N: usize> {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket.
    buckets: [AtomicU64; N],
    sum_nanos: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub const fn new(bounds: &'static [f64]) -> Self {
        assert!(bounds.len() + 1 == N, "one bucket per bound, and +Inf");
        Self {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        let at = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.buckets[at].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// Non-cumulative counts per bucket (the last is +Inf) and the total
    /// of every observation, in seconds.
    pub fn snapshot(&self) -> ([u64; N], f64) {
        (
            std::array::from_fn(|at| self.buckets[at].load(Ordering::Relaxed)),
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    #[test]
    fn each_observation_lands_in_one_bucket() {
        const BOUNDS: [f64; 3] = [0.001, 0.005, 0.01];
        let h = Histogram::<4>::new(&BOUNDS);
        h.observe(0.0001);
        h.observe(0.003);
        h.observe(10.0);
        h.observe(-1.0);
        let (counts, sum) = h.snapshot();
        assert_eq!(counts, [2, 1, 0, 1], "0.003 s falls in the 0.005 bucket");
        assert!((sum - 10.0031).abs() < 1e-6, "{sum}");
    }
}
