//! Who is connected, and handing frames to their sessions.
//!
//! A plain std `Mutex` around a map of user to connections: it is held only
//! for map operations and `try_send`, never across an `.await`. Each
//! connection has a bounded queue; a connection whose queue is full is cut
//! off (its session then closes with "too slow" and the client resyncs),
//! so one slow reader never delays anyone else or grows the server's memory.
//! When most recipients are backed up at once, fan-out itself is the limit,
//! and the hub holds new messages back instead (`send_hold`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::send_hold::{InFlight, RoomsInFlight, SendHold};
use crate::protocol::close;
use crate::store::{RoomId, UserId};

/// A frame serialised once and shared by every recipient.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Set for log entries, so a session can drop what it already has.
    pub position: Option<(RoomId, i64)>,
    pub json: Utf8Bytes,
}

struct Conn {
    id: u64,
    token_hash: [u8; 32],
    tx: mpsc::Sender<Arc<Outbound>>,
    shared: Arc<ConnShared>,
}

/// What the hub and a session both see of one connection.
#[derive(Default)]
pub struct ConnShared {
    /// Close code to use if the hub cuts this connection off; 0 while it has not.
    pub cut_reason: AtomicU16,
    /// Its queue filled past an eighth and has not drained yet.
    backed_up: AtomicBool,
}

/// A session's end of its hub registration.
pub struct Registration {
    pub id: u64,
    pub rx: mpsc::Receiver<Arc<Outbound>>,
    /// Whether this is the user's only connection (they just came online).
    pub is_first: bool,
    pub shared: Arc<ConnShared>,
}

#[derive(Clone)]
pub struct Hub {
    conns: Arc<Mutex<HashMap<UserId, Vec<Conn>>>>,
    next_id: Arc<AtomicU64>,
    queue_len: usize,
    hold: Arc<SendHold>,
    in_flight: Arc<RoomsInFlight>,
}

impl Hub {
    pub fn new(queue_len: usize) -> Self {
        Self {
            conns: Arc::default(),
            next_id: Arc::default(),
            queue_len,
            hold: Arc::new(SendHold::new()),
            in_flight: Arc::new(RoomsInFlight::new(queue_len / 8)),
        }
    }

    pub fn register(&self, user: UserId, token_hash: [u8; 32]) -> Registration {
        let (tx, rx) = mpsc::channel(self.queue_len);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(ConnShared::default());
        let mut conns = self.conns.lock().expect("hub lock poisoned");
        let list = conns.entry(user).or_default();
        list.push(Conn {
            id,
            token_hash,
            tx,
            shared: shared.clone(),
        });
        Registration {
            id,
            rx,
            is_first: list.len() == 1,
            shared,
        }
    }

    /// Removes a connection; true if the user has no connection left.
    pub fn unregister(&self, user: UserId, id: u64) -> bool {
        let mut conns = self.conns.lock().expect("hub lock poisoned");
        // Already gone when the hub cut it off: the user is offline unless
        // another connection is still registered.
        let Some(list) = conns.get_mut(&user) else {
            return true;
        };
        list.retain(|c| {
            let keep = c.id != id;
            if !keep {
                self.hold.unflag(&c.shared.backed_up);
            }
            keep
        });
        let now_empty = list.is_empty();
        if now_empty {
            conns.remove(&user);
        }
        now_empty
    }

    /// Queues `frame` for every connection of every listed user.
    pub fn deliver(&self, users: &[UserId], frame: &Outbound) {
        // One allocation per frame; each queue slot holds a pointer.
        let frame = Arc::new(frame.clone());
        self.deliver_with(users, |_| Some(frame.clone()));
    }

    /// Queues, for every connection of every listed user, the frame
    /// `choose` picks for that connection's id (`None`: nothing for it).
    /// Presence uses it to give new connections a snapshot and the others
    /// the changes, in one pass.
    pub fn deliver_with(
        &self,
        users: &[UserId],
        mut choose: impl FnMut(u64) -> Option<Arc<Outbound>>,
    ) {
        let backed_up_at = self.backed_up_at();
        let (mut recipients, mut backed_up) = (0, 0);
        let mut conns = self.conns.lock().expect("hub lock poisoned");
        for user in users {
            if let Some(list) = conns.get_mut(user) {
                list.retain(|c| {
                    let Some(frame) = choose(c.id) else {
                        return true;
                    };
                    match c.tx.try_send(frame) {
                        Ok(()) => {
                            recipients += 1;
                            if self.queue_len - c.tx.capacity() >= backed_up_at {
                                self.hold.flag(&c.shared.backed_up);
                            }
                            if c.shared.backed_up.load(Ordering::Relaxed) {
                                backed_up += 1;
                            }
                            super::metrics::fanout_delivered()
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            super::metrics::error("slow_consumer");
                            c.shared
                                .cut_reason
                                .store(close::TOO_SLOW, Ordering::Relaxed);
                            self.hold.unflag(&c.shared.backed_up);
                            false
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            self.hold.unflag(&c.shared.backed_up);
                            false
                        }
                    }
                });
                if list.is_empty() {
                    conns.remove(user);
                }
            }
        }
        drop(conns);
        self.hold.assess(recipients, backed_up);
    }

    /// A session calls this after writing: clears its connection's
    /// backed-up flag once its queue (`queued` frames left) has drained.
    pub fn wrote(&self, shared: &ConnShared, queued: usize) {
        if queued <= self.queue_len / 32 && shared.backed_up.load(Ordering::Relaxed) {
            self.hold.unflag(&shared.backed_up);
        }
    }

    /// Whether new messages should wait because fan-out fell behind.
    pub fn holds_senders(&self) -> bool {
        self.hold.is_holding()
    }

    /// Resolves once new messages no longer wait for fan-out.
    pub fn senders_resumed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let hold = self.hold.clone();
        async move { hold.resumed().await }
    }

    /// A place for one more message of `room` between admission and
    /// delivery, if the room has one.
    pub fn try_admit(&self, room: RoomId) -> Option<InFlight> {
        self.in_flight.try_admit(room)
    }

    /// Waits for a place for one more message of `room`.
    pub fn admit(
        &self,
        room: RoomId,
    ) -> impl std::future::Future<Output = InFlight> + Send + 'static {
        self.in_flight.clone().admit(room)
    }

    /// Frames in a connection's queue that make it count as backed up.
    fn backed_up_at(&self) -> usize {
        (self.queue_len / 8).max(1)
    }

    /// Cuts off every connection opened with a revoked session token.
    pub fn revoke(&self, user: UserId, token_hash: &[u8; 32]) {
        let mut conns = self.conns.lock().expect("hub lock poisoned");
        if let Some(list) = conns.get_mut(&user) {
            list.retain(|c| {
                let revoked = &c.token_hash == token_hash;
                if revoked {
                    c.shared
                        .cut_reason
                        .store(close::UNAUTHORIZED, Ordering::Relaxed);
                    self.hold.unflag(&c.shared.backed_up);
                }
                !revoked
            });
            if list.is_empty() {
                conns.remove(&user);
            }
        }
    }

    /// Each open connection's user and session token hash.
    pub fn connected_tokens(&self) -> Vec<(UserId, [u8; 32])> {
        let conns = self.conns.lock().expect("hub lock poisoned");
        conns
            .iter()
            .flat_map(|(u, list)| list.iter().map(|c| (*u, c.token_hash)))
            .collect()
    }

    pub fn is_online(&self, user: UserId) -> bool {
        self.conns
            .lock()
            .expect("hub lock poisoned")
            .contains_key(&user)
    }
}
