//! Ephemeral signals (§21): receipts and typing indicators relayed at once
//! to the other connections of a room's members and never written to the
//! database, and the latest receipt per (room, sender) kept in memory for
//! connections that sync later.
//!
//! Why memory only: a receipt on disk would be a durable record of when
//! each person read each conversation, which hush otherwise does not keep.
//! What is kept is bounded: one receipt per member of a room (dropped when
//! they leave or are removed), at most `MAX_KEPT` in all, each at most
//! `MAX_SIGNAL_BYTES` of ciphertext.
//!
//! With several nodes, a signal sent to one node is announced on the
//! notification channel (`Notice::Signal`) and every other node relays it
//! to its own connections of the room's members and keeps the receipt the
//! same way (`relay_from_another_node`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::hub::{Hub, Outbound};
use crate::protocol::{Outgoing, ServerFrame, SignalKind};
use crate::store::{RoomId, Store, UserId};

/// Largest signal body, decoded.
pub const MAX_SIGNAL_BYTES: usize = 4096;
/// Receipts kept at most, server-wide (~20,000 × ≤ 5.6 KiB of JSON).
const MAX_KEPT: usize = 20_000;

/// The connection id of a receipt relayed from another node: no local
/// connection sent it, so every local one may get it.
const FROM_ANOTHER_NODE: u64 = u64::MAX;

/// The `signal` frame every recipient gets.
pub fn signal_frame(room: RoomId, username: &str, kind: SignalKind, body: String) -> Arc<Outbound> {
    let frame = ServerFrame::Signal {
        room,
        sender: username.to_owned(),
        kind,
        body,
    };
    Arc::new(Outbound {
        position: None,
        json: Outgoing::new(None, frame).to_json().into(),
    })
}

/// A signal another node announced.
pub struct Relayed {
    pub room: RoomId,
    pub sender: UserId,
    pub username: String,
    pub kind: SignalKind,
    pub body: String,
}

/// Relays a signal sent to another node to this node's connections of the
/// room's members (but those who block the sender: the audience is read
/// here, from the store, as the sending node read it) and keeps a receipt.
pub async fn relay_from_another_node(
    store: &Store,
    hub: &Hub,
    receipts: &KeptReceipts,
    signal: Relayed,
) {
    let audience = match store.signal_audience(signal.room, signal.sender).await {
        Ok(audience) => audience,
        Err(err) => {
            tracing::debug!(room = signal.room.0, error = %err, "signal from another node not relayed");
            return;
        }
    };
    let out = signal_frame(signal.room, &signal.username, signal.kind, signal.body);
    hub.deliver_with(&audience, |_| Some(out.clone()));
    if signal.kind == SignalKind::Receipt {
        receipts.keep(signal.room, &signal.username, FROM_ANOTHER_NODE, out);
    }
}

struct Kept {
    /// The connection that sent it: it is not handed back to that one.
    conn: u64,
    frame: Arc<Outbound>,
}

/// The latest `receipt` signal per (room, sender username).
#[derive(Default)]
pub struct KeptReceipts {
    rooms: Mutex<Rooms>,
}

#[derive(Default)]
struct Rooms {
    by_room: HashMap<RoomId, HashMap<String, Kept>>,
    count: usize,
}

impl KeptReceipts {
    /// Keeps `frame` as `sender`'s latest receipt in `room`. When the table
    /// is full, a receipt of some other room is dropped first: a receipt is
    /// a hint, and the next one its sender sends brings it back.
    pub fn keep(&self, room: RoomId, sender: &str, conn: u64, frame: Arc<Outbound>) {
        let mut rooms = self.rooms.lock().expect("receipts lock poisoned");
        let is_new = !rooms
            .by_room
            .get(&room)
            .is_some_and(|senders| senders.contains_key(sender));
        if is_new && rooms.count >= MAX_KEPT {
            let victim = rooms.by_room.keys().find(|r| **r != room).copied();
            if let Some(victim) = victim
                && let Some(dropped) = rooms.by_room.remove(&victim)
            {
                rooms.count -= dropped.len();
            } else {
                return;
            }
        }
        if is_new {
            rooms.count += 1;
        }
        rooms
            .by_room
            .entry(room)
            .or_default()
            .insert(sender.to_owned(), Kept { conn, frame });
    }

    /// The kept receipts of `room`, except the ones `conn` sent itself.
    pub fn of_room(&self, room: RoomId, conn: u64) -> Vec<(String, Arc<Outbound>)> {
        let rooms = self.rooms.lock().expect("receipts lock poisoned");
        rooms
            .by_room
            .get(&room)
            .map(|senders| {
                senders
                    .iter()
                    .filter(|(_, kept)| kept.conn != conn)
                    .map(|(sender, kept)| (sender.clone(), kept.frame.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drops `user`'s receipt of `room` (they left or were removed).
    pub fn forget(&self, room: RoomId, user: &str) {
        let mut rooms = self.rooms.lock().expect("receipts lock poisoned");
        let Some(senders) = rooms.by_room.get_mut(&room) else {
            return;
        };
        if senders.remove(user).is_some() {
            let now_empty = senders.is_empty();
            if now_empty {
                rooms.by_room.remove(&room);
            }
            rooms.count -= 1;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.rooms.lock().expect("receipts lock poisoned").count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Arc<Outbound> {
        Arc::new(Outbound {
            position: None,
            json: text.to_owned().into(),
        })
    }

    #[test]
    fn the_latest_receipt_per_sender_is_kept_and_forgotten_on_leave() {
        let kept = KeptReceipts::default();
        kept.keep(RoomId(1), "bob", 7, frame("old"));
        kept.keep(RoomId(1), "bob", 8, frame("new"));
        kept.keep(RoomId(1), "carol", 9, frame("carol"));
        assert_eq!(kept.len(), 2);
        let mut seen = kept.of_room(RoomId(1), 9);
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(seen.len(), 1, "carol's own connection does not get hers");
        assert_eq!(seen[0].0, "bob");
        assert_eq!(seen[0].1.json.as_str(), "new");
        kept.forget(RoomId(1), "bob");
        kept.forget(RoomId(1), "carol");
        assert_eq!(kept.len(), 0);
        assert!(kept.of_room(RoomId(1), 0).is_empty());
    }

    #[test]
    fn the_table_stays_bounded() {
        let kept = KeptReceipts::default();
        for room in 0..(MAX_KEPT as i64 + 10) {
            kept.keep(RoomId(room), "bob", 1, frame("r"));
        }
        assert!(kept.len() <= MAX_KEPT);
    }
}
