//! Which messages of one step reached every client in time: the yardstick
//! of `overload`'s recovery. Each message is known by its scheduled send
//! time (µs), which is unique within a step because senders tick at
//! distinct phases of the same period.
//!
//! A message's verdict is final once its send time is more than `within`
//! in the past: any delivery after that is late anyway. A sender that is
//! stuck behind its own backlog has not yet registered its later ticks,
//! so the verdicts stop at the oldest tick not yet registered by every
//! sender; otherwise a stuck sender's silence would look like health.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default, Clone, Copy)]
struct Verdict {
    /// Clients that received the message within `within`.
    on_time: u32,
    /// The sender could not send it (no connection, or the send failed).
    is_missed: bool,
}

pub struct OnTime {
    clients: u32,
    within_us: u64,
    /// Send time of each sender's latest registered tick; 0 before its first.
    progress_us: Vec<AtomicU64>,
    /// A std mutex: every section is a map update, never held across an await.
    messages: Mutex<BTreeMap<u64, Verdict>>,
}

impl OnTime {
    pub fn new(clients: usize, senders: usize, within: Duration) -> Self {
        Self {
            clients: u32::try_from(clients).expect("fewer than 2^32 clients"),
            within_us: within.as_micros() as u64,
            progress_us: (0..senders).map(|_| AtomicU64::new(0)).collect(),
            messages: Mutex::new(BTreeMap::new()),
        }
    }

    /// Called by sender `sender` for every tick, before it sends.
    pub fn will_send(&self, sender: usize, at_us: u64) {
        self.messages
            .lock()
            .expect("on-time lock")
            .entry(at_us)
            .or_default();
        if let Some(progress) = self.progress_us.get(sender) {
            progress.fetch_max(at_us, Ordering::AcqRel);
        }
    }

    /// The tick `at_us` was not sent: it can never reach every client.
    pub fn missed(&self, sender: usize, at_us: u64) {
        self.will_send(sender, at_us);
        if let Some(verdict) = self.messages.lock().expect("on-time lock").get_mut(&at_us) {
            verdict.is_missed = true;
        }
    }

    /// One client received the message sent at `at_us` after `latency_us`.
    pub fn delivered(&self, at_us: u64, latency_us: u64) {
        if latency_us > self.within_us {
            return;
        }
        if let Some(verdict) = self.messages.lock().expect("on-time lock").get_mut(&at_us) {
            verdict.on_time += 1;
        }
    }

    /// Looking at every message whose verdict is final at `now_us`: the
    /// send time of the first message of the unbroken run of messages that
    /// reached every client in time and ends with the newest final one,
    /// and that newest send time. `None` if the newest final message
    /// missed a client, or none is final yet.
    pub fn good_run(&self, now_us: u64) -> Option<(u64, u64)> {
        let registered = self
            .progress_us
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        let horizon = now_us.saturating_sub(self.within_us).min(registered);
        let messages = self.messages.lock().expect("on-time lock");
        let mut run = messages
            .range(..=horizon)
            .rev()
            .take_while(|(_, v)| !v.is_missed && v.on_time >= self.clients)
            .map(|(at, _)| *at);
        let newest = run.next()?;
        let first = run.last().unwrap_or(newest);
        Some((first, newest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;

    fn two_clients() -> OnTime {
        OnTime::new(2, 1, Duration::from_millis(50))
    }

    #[test]
    fn a_run_starts_after_the_last_message_that_missed_a_client() {
        let on_time = two_clients();
        for at in [100, 200, 300, 400] {
            on_time.will_send(0, at * MS);
            on_time.delivered(at * MS, 5 * MS);
        }
        // The 200 ms message reached only one client in time.
        for at in [100, 300, 400] {
            on_time.delivered(at * MS, 5 * MS);
        }
        on_time.delivered(200 * MS, 80 * MS);
        assert_eq!(on_time.good_run(1000 * MS), Some((300 * MS, 400 * MS)));
    }

    #[test]
    fn a_late_newest_message_means_no_run() {
        let on_time = two_clients();
        on_time.will_send(0, 100 * MS);
        on_time.delivered(100 * MS, 5 * MS);
        on_time.delivered(100 * MS, 51 * MS);
        assert_eq!(on_time.good_run(1000 * MS), None);
    }

    #[test]
    fn a_message_without_a_verdict_yet_is_not_judged() {
        let on_time = two_clients();
        on_time.will_send(0, 100 * MS);
        on_time.delivered(100 * MS, 5 * MS);
        on_time.delivered(100 * MS, 5 * MS);
        on_time.will_send(0, 200 * MS);
        // At 220 ms the second message may still arrive in time.
        assert_eq!(on_time.good_run(220 * MS), Some((100 * MS, 100 * MS)));
    }

    #[test]
    fn a_missed_tick_breaks_the_run() {
        let on_time = two_clients();
        on_time.missed(0, 100 * MS);
        assert_eq!(on_time.good_run(1000 * MS), None);
    }

    #[test]
    fn verdicts_wait_for_a_sender_stuck_behind_its_backlog() {
        let on_time = OnTime::new(1, 2, Duration::from_millis(50));
        on_time.will_send(1, 100 * MS);
        on_time.delivered(100 * MS, 5 * MS);
        assert_eq!(on_time.good_run(1000 * MS), None, "sender 0 has not ticked");
        on_time.will_send(0, 150 * MS);
        assert_eq!(on_time.good_run(1000 * MS), Some((100 * MS, 100 * MS)));
        // Sender 1 moves on: the 150 ms message, never delivered, is judged.
        on_time.will_send(1, 200 * MS);
        assert_eq!(on_time.good_run(1000 * MS), None);
    }
}
