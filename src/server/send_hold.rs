//! Holding senders back while fan-out cannot keep up.
//!
//! The writer's bounded queue slows senders when storage is the limit. When
//! delivery is the limit (one message goes to a hundred sockets, and the
//! server's CPU or the clients cannot take them as fast as they come),
//! storing every message a sender offers would only queue it for every
//! recipient until their queues overflow; each of them would then be cut
//! off and replay the whole backlog. So the hub flags a connection whose
//! queue is more than a quarter full as backed up, and when at least half
//! of a message's recipient connections (and at least eight) are backed up,
//! sessions stop admitting new messages: they stop reading their sockets,
//! as they do for a full writer queue, until enough of those connections
//! have drained to a sixteenth.
//!
//! A few slow readers never hold anyone: below eight backed-up recipients,
//! or under half of them, a slow reader is cut off alone when its own queue
//! is full (close 4009). A hold is re-asserted by each message that finds
//! its recipients still backed up, and lapses after `MAX_HOLD` without one,
//! so connections that stop reading without closing cannot hold senders
//! for longer than the send timeout that cuts them off.
//!
//! A hold acts on the next message, not on those already stored or being
//! stored: so that these cannot overflow the queues the hold protects, each
//! room has a bounded number of messages between admission and delivery
//! (`RoomsInFlight`, an eighth of a connection's queue).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::store::RoomId;

/// Fewest backed-up recipients of one message that start a hold.
pub const MIN_BACKED_UP: usize = 8;
/// The longest a hold lasts without a message that re-asserts it.
const MAX_HOLD: Duration = Duration::from_secs(10);
const NOT_HELD: usize = usize::MAX;

pub struct SendHold {
    /// Connections flagged backed up right now.
    backed_up: AtomicUsize,
    /// Senders are held while `backed_up` is at least this.
    hold_while_at_least: AtomicUsize,
    /// Milliseconds after `epoch` at which the current hold lapses.
    lapses_at_ms: AtomicU64,
    epoch: Instant,
    resumed: Notify,
}

impl SendHold {
    pub fn new() -> Self {
        Self {
            backed_up: AtomicUsize::new(0),
            hold_while_at_least: AtomicUsize::new(NOT_HELD),
            lapses_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            resumed: Notify::new(),
        }
    }

    /// Marks a connection backed up (once, however often it is called).
    ///
    /// The count goes up *before* the flag is set, so an `unflag` that sees
    /// the flag always finds the count to take it from; counting after
    /// setting the flag let a racing `unflag` take 1 from 0.
    pub fn flag(&self, conn: &AtomicBool) {
        if conn.load(SeqCst) {
            return;
        }
        self.backed_up.fetch_add(1, SeqCst);
        if conn.swap(true, SeqCst) {
            // Flagged by someone else meanwhile: theirs is the count.
            self.backed_up.fetch_sub(1, SeqCst);
        }
    }

    /// Clears a connection's flag: it drained, or it is gone.
    pub fn unflag(&self, conn: &AtomicBool) {
        if conn.swap(false, SeqCst) {
            let left = self.backed_up.fetch_sub(1, SeqCst) - 1;
            if left < self.hold_while_at_least.load(SeqCst) {
                self.release();
            }
        }
    }

    /// Called after a message was queued for `recipients` connections, of
    /// which `backed_up` are flagged: starts or renews a hold if enough of
    /// them are.
    pub fn assess(&self, recipients: usize, backed_up: usize) {
        if backed_up < MIN_BACKED_UP || backed_up * 2 < recipients {
            return;
        }
        let threshold = MIN_BACKED_UP.max(recipients.div_ceil(2));
        let lapses = self.now_ms() + MAX_HOLD.as_millis() as u64;
        self.lapses_at_ms.store(lapses, SeqCst);
        if self.hold_while_at_least.swap(threshold, SeqCst) == NOT_HELD {
            super::metrics::senders_held();
        }
        // A connection may have drained between the count and the store.
        if self.backed_up.load(SeqCst) < threshold {
            self.release();
        }
    }

    /// Whether a new message should wait.
    pub fn is_holding(&self) -> bool {
        let threshold = self.hold_while_at_least.load(SeqCst);
        threshold != NOT_HELD
            && self.backed_up.load(SeqCst) >= threshold
            && self.now_ms() < self.lapses_at_ms.load(SeqCst)
    }

    /// Resolves once senders are no longer held.
    pub async fn resumed(&self) {
        loop {
            let notified = self.resumed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_holding() {
                return;
            }
            let lapses = self.epoch + Duration::from_millis(self.lapses_at_ms.load(SeqCst));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(lapses.into()) => {}
            }
        }
    }

    fn release(&self) {
        if self.hold_while_at_least.swap(NOT_HELD, SeqCst) != NOT_HELD {
            self.resumed.notify_waiters();
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// Messages admitted per room and not yet handed to the hub.
pub struct RoomsInFlight {
    counts: Mutex<HashMap<RoomId, usize>>,
    per_room: usize,
    freed: Notify,
}

/// One admitted message of a room; dropped once its fate is known (the
/// writer answers only after the hub has the entry).
pub struct InFlight {
    rooms: Arc<RoomsInFlight>,
    room: RoomId,
}

impl RoomsInFlight {
    pub fn new(per_room: usize) -> Self {
        Self {
            counts: Mutex::default(),
            per_room: per_room.max(1),
            freed: Notify::new(),
        }
    }

    /// A place for one more message of `room`, if it has one.
    pub fn try_admit(self: &Arc<Self>, room: RoomId) -> Option<InFlight> {
        let mut counts = self.counts.lock().expect("in-flight lock poisoned");
        let count = counts.entry(room).or_default();
        if *count >= self.per_room {
            return None;
        }
        *count += 1;
        Some(InFlight {
            rooms: self.clone(),
            room,
        })
    }

    /// Waits for a place for one more message of `room`.
    pub async fn admit(self: Arc<Self>, room: RoomId) -> InFlight {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(admitted) = self.try_admit(room) {
                return admitted;
            }
            freed.await;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = self.rooms.counts.lock().expect("in-flight lock poisoned");
        let Some(count) = counts.get_mut(&self.room) else {
            return;
        };
        let was_full = *count >= self.rooms.per_room;
        *count -= 1;
        if *count == 0 {
            counts.remove(&self.room);
        }
        drop(counts);
        if was_full {
            self.rooms.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flagged(hold: &SendHold, n: usize) -> Vec<AtomicBool> {
        let conns: Vec<AtomicBool> = (0..n).map(|_| AtomicBool::new(false)).collect();
        for conn in &conns {
            hold.flag(conn);
        }
        conns
    }

    #[test]
    fn a_few_slow_readers_hold_nobody() {
        let hold = SendHold::new();
        let _conns = flagged(&hold, MIN_BACKED_UP - 1);
        hold.assess(MIN_BACKED_UP - 1, MIN_BACKED_UP - 1);
        assert!(!hold.is_holding(), "fewer than eight backed up");
        let _more = flagged(&hold, 10);
        hold.assess(40, 17);
        assert!(!hold.is_holding(), "fewer than half of 40 backed up");
    }

    #[test]
    fn half_the_recipients_backed_up_hold_until_they_drain() {
        let hold = SendHold::new();
        let conns = flagged(&hold, 50);
        hold.assess(100, 50);
        assert!(hold.is_holding());
        // Flagging twice counts once; one drain brings it under half.
        hold.flag(&conns[0]);
        assert_eq!(hold.backed_up.load(SeqCst), 50);
        hold.unflag(&conns[0]);
        hold.unflag(&conns[0]);
        assert_eq!(hold.backed_up.load(SeqCst), 49);
        assert!(!hold.is_holding(), "49 of 100 is under half");
    }

    #[tokio::test]
    async fn waiting_senders_resume_when_the_connections_drain() {
        let hold = std::sync::Arc::new(SendHold::new());
        let conns = std::sync::Arc::new(flagged(&hold, 8));
        hold.assess(8, 8);
        let waiter = tokio::spawn({
            let hold = hold.clone();
            async move { hold.resumed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "held while all eight are backed up");
        hold.unflag(&conns[3]);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("resumed on the drain, not on the lapse")
            .unwrap();
    }

    #[tokio::test]
    async fn a_room_admits_its_quota_then_waits_for_one_to_be_delivered() {
        let rooms = Arc::new(RoomsInFlight::new(2));
        let (a, b) = (RoomId(1), RoomId(2));
        let first = rooms.try_admit(a).expect("first of two");
        let _second = rooms.try_admit(a).expect("second of two");
        assert!(rooms.try_admit(a).is_none(), "the third waits");
        let _other = rooms.try_admit(b).expect("another room has its own quota");
        let waiter = tokio::spawn(rooms.clone().admit(a));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("admitted once one was delivered")
            .unwrap();
    }
}
