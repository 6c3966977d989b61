//! The notification channel between nodes sharing one store (issue 16).
//!
//! The store is the truth; the channel only says where to look: "room R
//! has new entries a..b", plus a few events that change what a node holds
//! in memory (who is online on which node, whose sessions changed). A lost
//! notice delays delivery until the next catch-up read; it never loses an
//! entry (`server::fanout`).
//!
//! `Channel` is the interface the server sees, so that Redis or NATS could
//! replace PostgreSQL later. Two implementations:
//! - `Local`: one node, nothing to tell anyone (SQLite, or PostgreSQL with
//!   a single node that wants no cross-node traffic). The server then
//!   delivers its own commits directly, exactly as before issue 16.
//! - `postgres::PgChannel`: LISTEN/NOTIFY on the store's PostgreSQL pool.
//!
//! Notices travel as short text lines (`wire`), several per payload, each
//! payload headed by the sending node's id. Every notice carries its node
//! implicitly, and a node ignores its own.

pub mod postgres;
pub mod stats;
pub mod wire;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::store::{RoomId, UserId};

/// A node's identity on the channel: random per process, so a restarted
/// node is a new node and its predecessor's presence simply expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl NodeId {
    pub fn random() -> Self {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the system's random source works");
        // Never 0, so an unset id is recognisable.
        Self(u64::from_le_bytes(bytes).max(1))
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What one node tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Entries `first..=last` of `room` were committed. `membership`: one
    /// of them made someone a member or an invitee (create, join, invite),
    /// so nodes that do not follow the room should look whether that
    /// someone is connected to them.
    Appended {
        room: RoomId,
        first: i64,
        last: i64,
        membership: bool,
    },
    /// Users whose first connection to the sending node opened (`online`)
    /// or whose last one closed (`offline`).
    Presence {
        online: Vec<UserId>,
        offline: Vec<UserId>,
    },
    /// Everyone connected to the sending node: replaces what a receiver
    /// knew of that node (sent on start, on reconnect, and when asked).
    PresenceSnapshot { online: Vec<UserId> },
    /// "Send me your snapshot": a node that (re)joined the channel.
    PresenceQuery,
    /// The sending node is alive (see `server::cluster`).
    Heartbeat,
    /// These users' sessions changed (logout, revocation): each node checks
    /// its connections of theirs against the store and closes dead ones.
    Sessions { users: Vec<UserId> },
    /// A receipt (`receipt`) or typing signal sent to a node: every other
    /// node relays it to its own connections of the room's members. `body`
    /// is the client's base64 ciphertext, as relayed; never stored.
    Signal {
        room: RoomId,
        sender: UserId,
        username: String,
        receipt: bool,
        body: String,
    },
}

/// A notice and the node it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    pub from: NodeId,
    pub notice: Notice,
}

/// Whether the channel is receiving, and how many times it (re)connected:
/// every increase of `epoch` means notices may have been missed before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Link {
    pub up: bool,
    pub epoch: u64,
}

/// The interface every implementation offers.
pub trait Channel: Send + Sync + 'static {
    /// This node's id, as receivers see it.
    fn node(&self) -> NodeId;
    /// Queues notices for every other node. Never blocks (it is called on
    /// the log writer's announcer thread); delivery is best effort.
    fn announce(&self, notices: Vec<Notice>);
    /// The notices other nodes announce, in the order the channel delivered
    /// them. Only the first call gets the stream.
    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<Heard>>;
    /// The link's state.
    fn link(&self) -> watch::Receiver<Link>;
    /// Whether other nodes may exist (false: `Local`).
    fn is_shared(&self) -> bool;
}

/// A single node: nothing goes anywhere.
pub struct Local {
    node: NodeId,
    link: watch::Sender<Link>,
}

impl Local {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            node: NodeId::random(),
            link: watch::channel(Link { up: true, epoch: 1 }).0,
        })
    }
}

impl Channel for Local {
    fn node(&self) -> NodeId {
        self.node
    }

    fn announce(&self, _notices: Vec<Notice>) {}

    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<Heard>> {
        None
    }

    fn link(&self) -> watch::Receiver<Link> {
        self.link.subscribe()
    }

    fn is_shared(&self) -> bool {
        false
    }
}
