//! Who is connected, and handing frames to their sessions.
//!
//! A plain std `Mutex` around a map of user to connections: it is held only
//! for map operations and `try_send`, never across an `.await`. Each
//! connection has a bounded queue; a connection whose queue is full is cut
//! off (its session then closes with "too slow" and the client resyncs),
//! so one slow reader never delays anyone else or grows the server's memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

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
    cut_reason: Arc<AtomicU16>,
}

/// A session's end of its hub registration.
pub struct Registration {
    pub id: u64,
    pub rx: mpsc::Receiver<Arc<Outbound>>,
    /// Whether this is the user's only connection (they just came online).
    pub is_first: bool,
    /// Close code to use if the hub cuts this connection off; 0 while it has not.
    pub cut_reason: Arc<AtomicU16>,
}

#[derive(Clone)]
pub struct Hub {
    conns: Arc<Mutex<HashMap<UserId, Vec<Conn>>>>,
    next_id: Arc<AtomicU64>,
    queue_len: usize,
}

impl Hub {
    pub fn new(queue_len: usize) -> Self {
        Self {
            conns: Arc::default(),
            next_id: Arc::default(),
            queue_len,
        }
    }

    pub fn register(&self, user: UserId, token_hash: [u8; 32]) -> Registration {
        let (tx, rx) = mpsc::channel(self.queue_len);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cut_reason = Arc::new(AtomicU16::new(0));
        let mut conns = self.conns.lock().expect("hub lock poisoned");
        let list = conns.entry(user).or_default();
        list.push(Conn {
            id,
            token_hash,
            tx,
            cut_reason: cut_reason.clone(),
        });
        Registration {
            id,
            rx,
            is_first: list.len() == 1,
            cut_reason,
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
        list.retain(|c| c.id != id);
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
        let mut conns = self.conns.lock().expect("hub lock poisoned");
        for user in users {
            if let Some(list) = conns.get_mut(user) {
                list.retain(|c| match c.tx.try_send(frame.clone()) {
                    Ok(()) => super::metrics::fanout_delivered(),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        super::metrics::error("slow_consumer");
                        c.cut_reason.store(close::TOO_SLOW, Ordering::Relaxed);
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                });
                if list.is_empty() {
                    conns.remove(user);
                }
            }
        }
    }

    /// Cuts off every connection opened with a revoked session token.
    pub fn revoke(&self, user: UserId, token_hash: &[u8; 32]) {
        let mut conns = self.conns.lock().expect("hub lock poisoned");
        if let Some(list) = conns.get_mut(&user) {
            list.retain(|c| {
                let revoked = &c.token_hash == token_hash;
                if revoked {
                    c.cut_reason.store(close::UNAUTHORIZED, Ordering::Relaxed);
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
