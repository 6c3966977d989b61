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
use std::sync::{Arc, Mutex, OnceLock};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::frame_queue::{FrameQueue, Refused};
use super::outlet::{Offered, Outlet};
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
    shared: Arc<ConnShared>,
}

/// A connection the hub lets go of gets no more frames: its session takes
/// what is queued, then ends (with `cut_reason`'s code, if set).
impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.queue.close();
    }
}

/// What the hub and a session both see of one connection.
#[derive(Default)]
pub struct ConnShared {
    /// Close code to use if the hub cuts this connection off; 0 while it has not.
    pub cut_reason: AtomicU16,
    /// Its queue filled past an eighth and has not drained yet.
    backed_up: AtomicBool,
    /// Frames on their way to the client.
    pub queue: FrameQueue,
    /// Where an idle session's frames are written straight to its socket;
    /// set by the session once it is registered.
    pub outlet: OnceLock<Arc<Outlet>>,
}

#[derive(Default)]
struct Conns {
    by_user: HashMap<UserId, Vec<Conn>>,
    /// The server is shutting down: nothing more is registered.
    closing: bool,
}

/// A session's end of its hub registration.
pub struct Registration {
    pub id: u64,
    /// Whether this is the user's only connection (they just came online).
    pub is_first: bool,
    pub shared: Arc<ConnShared>,
}

#[derive(Clone)]
pub struct Hub {
    conns: Arc<Mutex<Conns>>,
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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(ConnShared::default());
        let mut conns = self.conns.lock().expect("hub lock poisoned");
        if conns.closing {
            shared
                .cut_reason
                .store(close::GOING_AWAY, Ordering::Relaxed);
            shared.queue.close();
            return Registration {
                id,
                is_first: false,
                shared,
            };
        }
        let list = conns.by_user.entry(user).or_default();
        list.push(Conn {
            id,
            token_hash,
            shared: shared.clone(),
        });
        Registration {
            id,
            is_first: list.len() == 1,
            shared,
        }
    }

    /// The id the next connection to register will get (ids only grow).
    pub fn next_connection_id(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// Removes a connection; true if the user has no connection left.
    pub fn unregister(&self, user: UserId, id: u64) -> bool {
        let mut conns = self.conns.lock().expect("hub lock poisoned");
        // Already gone when the hub cut it off: the user is offline unless
        // another connection is still registered.
        let Some(list) = conns.by_user.get_mut(&user) else {
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
            conns.by_user.remove(&user);
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
            if let Some(list) = conns.by_user.get_mut(user) {
                list.retain(|c| {
                    let Some(frame) = choose(c.id) else {
                        return true;
                    };
                    let offered = c
                        .shared
                        .outlet
                        .get()
                        .map(|o| o.offer(&frame, &c.shared.queue));
                    if matches!(offered, Some(Offered::Written | Offered::Unwanted)) {
                        recipients += 1;
                        if offered == Some(Offered::Written) {
                            super::metrics::fanout_written_directly();
                        }
                        super::metrics::fanout_delivered();
                        return true;
                    }
                    match c.shared.queue.push(frame, self.queue_len) {
                        Ok(waiting) => {
                            recipients += 1;
                            if waiting >= backed_up_at {
                                self.hold.flag(&c.shared.backed_up);
                            }
                            if c.shared.backed_up.load(Ordering::Relaxed) {
                                backed_up += 1;
                            }
                            super::metrics::fanout_delivered()
                        }
                        Err(Refused::Full) => {
                            super::metrics::error("slow_consumer");
                            self.cut_off(c, close::TOO_SLOW);
                            false
                        }
                        Err(Refused::Gone) => {
                            self.hold.unflag(&c.shared.backed_up);
                            false
                        }
                    }
                });
                if list.is_empty() {
                    conns.by_user.remove(user);
                }
            }
        }
        drop(conns);
        self.hold.assess(recipients, backed_up);
    }

    /// A session calls this after writing: clears its connection's
    /// backed-up flag once its queue has drained.
    pub fn wrote(&self, shared: &ConnShared) {
        if shared.backed_up.load(Ordering::Relaxed) && shared.queue.len() <= self.queue_len / 32 {
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
        if let Some(list) = conns.by_user.get_mut(&user) {
            list.retain(|c| {
                let revoked = &c.token_hash == token_hash;
                if revoked {
                    self.cut_off(c, close::UNAUTHORIZED);
                }
                !revoked
            });
            if list.is_empty() {
                conns.by_user.remove(&user);
            }
        }
    }

    /// Lets go of every connection for a server shutdown, and of any that
    /// registers later: each session writes what was queued for it, then
    /// its owed acknowledgements, and closes with 1001. (Through the queue
    /// rather than a shutdown signal every session also waits on: that
    /// would be one more future, and one more lock, per session wake-up.)
    pub fn shut_down(&self) {
        let mut conns = self.conns.lock().expect("hub lock poisoned");
        conns.closing = true;
        for c in conns.by_user.values().flatten() {
            self.cut_off(c, close::GOING_AWAY);
        }
        conns.by_user.clear();
    }

    /// Tells a connection's session why it is being let go of (its queue
    /// closes when the hub drops it) and stops counting it as backed up.
    fn cut_off(&self, c: &Conn, code: u16) {
        c.shared.cut_reason.store(code, Ordering::Relaxed);
        self.hold.unflag(&c.shared.backed_up);
    }

    /// Each open connection's user and session token hash.
    pub fn connected_tokens(&self) -> Vec<(UserId, [u8; 32])> {
        let conns = self.conns.lock().expect("hub lock poisoned");
        conns
            .by_user
            .iter()
            .flat_map(|(u, list)| list.iter().map(|c| (*u, c.token_hash)))
            .collect()
    }

    pub fn is_online(&self, user: UserId) -> bool {
        self.conns
            .lock()
            .expect("hub lock poisoned")
            .by_user
            .contains_key(&user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::frame_queue::Popped;

    fn frame(text: &str) -> Outbound {
        Outbound {
            position: None,
            json: text.into(),
        }
    }

    /// A shutdown lets each session take what was queued for it, then end
    /// with 1001; a connection registering afterwards ends at once.
    #[tokio::test]
    async fn a_shutdown_ends_every_queue_after_its_frames() {
        let hub = Hub::new(16);
        let alice = UserId(1);
        let open = hub.register(alice, [0; 32]);
        hub.deliver(&[alice], &frame("before"));
        hub.shut_down();
        let queue = &open.shared.queue;
        let Popped::Frame(first) = queue.pop().await else {
            panic!("the queued frame comes first");
        };
        assert_eq!(first.json.as_str(), "before");
        assert!(matches!(queue.pop().await, Popped::Closed), "then the end");
        assert_eq!(
            open.shared.cut_reason.load(Ordering::Relaxed),
            close::GOING_AWAY
        );
        hub.deliver(&[alice], &frame("after"));
        assert!(!hub.is_online(alice));

        let late = hub.register(alice, [0; 32]);
        assert!(matches!(late.shared.queue.pop().await, Popped::Closed));
        assert_eq!(
            late.shared.cut_reason.load(Ordering::Relaxed),
            close::GOING_AWAY
        );
    }

    /// A connection whose queue is full is cut off as too slow; the others
    /// keep getting frames.
    #[tokio::test]
    async fn a_full_queue_cuts_only_its_connection() {
        let hub = Hub::new(2);
        let (slow, fast) = (UserId(1), UserId(2));
        let slow_conn = hub.register(slow, [1; 32]);
        let fast_conn = hub.register(fast, [2; 32]);
        for n in 0..3 {
            hub.deliver(&[slow, fast], &frame(&n.to_string()));
            while let Ok(Some(_)) = fast_conn.shared.queue.try_pop() {}
        }
        assert_eq!(
            slow_conn.shared.cut_reason.load(Ordering::Relaxed),
            close::TOO_SLOW
        );
        assert!(!hub.is_online(slow));
        assert!(hub.is_online(fast));
        // The slow session still gets what was queued, then the end.
        assert!(matches!(
            slow_conn.shared.queue.pop().await,
            Popped::Frame(_)
        ));
        assert!(matches!(
            slow_conn.shared.queue.pop().await,
            Popped::Frame(_)
        ));
        assert!(matches!(slow_conn.shared.queue.pop().await, Popped::Closed));
    }
}
