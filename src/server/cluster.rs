//! What a node learns from the others over the channel (`notify`), beside
//! log positions: who is online where, and whose sessions changed.
//!
//! Presence across nodes: a user is online if any node has a connection of
//! theirs. Each node tells the others when a user's first connection to it
//! opens or their last one closes (`Notice::Presence`, from the presence
//! flusher, so a close racing a reopen within one window is never told),
//! and keeps, per other node, the set of users online there. A node sends
//! its whole set (`PresenceSnapshot`) when its listener (re)connects and
//! whenever another node asks (`PresenceQuery`: sent on (re)connect and on
//! hearing from a node not known yet), so a missed change is repaired then.
//!
//! A node that dies cannot say its users went offline. Every node sends a
//! heartbeat every `notify::postgres::HEARTBEAT` (2 s); a node not heard
//! from for `NODE_TIMEOUT` (10 s) is dropped with all its users, who go
//! offline unless online elsewhere. The price: after a crash, its users
//! look online for up to 10 s; a node whose own listener is away for that
//! long drops everyone else's users and gets them back from the snapshots
//! when it reconnects. Node ids are random per process (`NodeId::random`),
//! so a restarted node never inherits its predecessor's set.
//!
//! Sessions: logout (and anything else that ends sessions through this
//! server) announces the user; every node then checks that user's open
//! sockets against the store, as the periodic sweep does for all of them,
//! and closes the dead ones at once instead of at the next sweep.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::fanout::Fanout;
use super::hub::Hub;
use super::maintenance;
use super::presence::Presence;
use super::signals::{self, KeptReceipts};
use crate::notify::{Channel, Heard, NodeId, Notice};
use crate::protocol::SignalKind;
use crate::store::{RoomId, Store, UserId};

/// A node silent for this long is taken for dead.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// The other nodes as this one knows them. Cheap to share (`Arc`).
pub struct Cluster {
    channel: Arc<dyn Channel>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Users this node told the others are online here.
    told: HashSet<UserId>,
    nodes: HashMap<NodeId, NodeView>,
}

struct NodeView {
    online: HashSet<UserId>,
    heard: Instant,
}

impl Cluster {
    pub fn new(channel: Arc<dyn Channel>) -> Arc<Self> {
        Arc::new(Self {
            channel,
            state: Mutex::default(),
        })
    }

    /// Whether `user` is connected to some other live node.
    pub fn online_elsewhere(&self, user: UserId) -> bool {
        let state = self.state.lock().expect("cluster lock poisoned");
        state.nodes.values().any(|node| node.online.contains(&user))
    }

    /// The presence flusher's view of local changes: `here` is whether the
    /// user has a connection to this node now. Tells the others what
    /// changed since it last told them.
    pub fn local_presence(&self, users: impl IntoIterator<Item = (UserId, bool)>) {
        let (mut online, mut offline) = (Vec::new(), Vec::new());
        {
            let mut state = self.state.lock().expect("cluster lock poisoned");
            for (user, here) in users {
                if here && state.told.insert(user) {
                    online.push(user);
                } else if !here && state.told.remove(&user) {
                    offline.push(user);
                }
            }
        }
        if !online.is_empty() || !offline.is_empty() {
            self.channel
                .announce(vec![Notice::Presence { online, offline }]);
        }
    }

    /// `user`'s sessions changed (a logout): every node checks its sockets.
    pub fn sessions_changed(&self, user: UserId) {
        self.channel
            .announce(vec![Notice::Sessions { users: vec![user] }]);
    }

    /// A signal sent on this node, for the other nodes' connections.
    pub fn signal(&self, room: RoomId, sender: UserId, username: &str, receipt: bool, body: &str) {
        self.channel.announce(vec![Notice::Signal {
            room,
            sender,
            username: username.to_owned(),
            receipt,
            body: body.to_owned(),
        }]);
    }

    fn snapshot(&self) -> Notice {
        let state = self.state.lock().expect("cluster lock poisoned");
        Notice::PresenceSnapshot {
            online: state.told.iter().copied().collect(),
        }
    }

    /// Records that `from` is alive; true if it was not known.
    fn heard_from(state: &mut State, from: NodeId) -> bool {
        match state.nodes.get_mut(&from) {
            Some(node) => {
                node.heard = Instant::now();
                false
            }
            None => {
                state.nodes.insert(
                    from,
                    NodeView {
                        online: HashSet::new(),
                        heard: Instant::now(),
                    },
                );
                true
            }
        }
    }

    /// Applies one notice about presence; returns the users whose online
    /// state elsewhere may have changed.
    fn apply(&self, heard: &Heard) -> Vec<UserId> {
        let mut state = self.state.lock().expect("cluster lock poisoned");
        let unknown = Self::heard_from(&mut state, heard.from);
        let node = state.nodes.get_mut(&heard.from).expect("just recorded");
        let changed = match &heard.notice {
            Notice::Presence { online, offline } => {
                for user in online {
                    node.online.insert(*user);
                }
                for user in offline {
                    node.online.remove(user);
                }
                online.iter().chain(offline).copied().collect()
            }
            Notice::PresenceSnapshot { online } => {
                let fresh: HashSet<UserId> = online.iter().copied().collect();
                let changed = node.online.symmetric_difference(&fresh).copied().collect();
                node.online = fresh;
                changed
            }
            _ => Vec::new(),
        };
        drop(state);
        if unknown && !matches!(heard.notice, Notice::PresenceSnapshot { .. }) {
            self.channel.announce(vec![Notice::PresenceQuery]);
        }
        changed
    }

    /// Drops nodes not heard from for `NODE_TIMEOUT`; returns their users.
    fn expire(&self) -> Vec<UserId> {
        let mut state = self.state.lock().expect("cluster lock poisoned");
        let mut gone = Vec::new();
        state.nodes.retain(|id, node| {
            let alive = node.heard.elapsed() < NODE_TIMEOUT;
            if !alive {
                tracing::warn!(node = %id, users = node.online.len(), "node silent; its users count as offline");
                gone.extend(node.online.iter().copied());
            }
            alive
        });
        gone
    }

    /// Receives what other nodes announce and routes it, until shutdown.
    pub async fn run(
        self: Arc<Self>,
        fanout: Fanout,
        presence: Presence,
        store: Store,
        hub: Hub,
        receipts: Arc<KeptReceipts>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some(mut heard) = self.channel.subscribe() else {
            return;
        };
        let mut link = self.channel.link();
        // The listener may be up already: announce this node at once.
        link.mark_changed();
        let mut epoch = 0u64;
        let mut tick = tokio::time::interval(crate::notify::postgres::HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stopping| *stopping) => return,
                one = heard.recv() => {
                    let Some(one) = one else { return };
                    match &one.notice {
                        Notice::Appended { room, first, last, membership } => {
                            let mut state = self.state.lock().expect("cluster lock poisoned");
                            let unknown = Self::heard_from(&mut state, one.from);
                            drop(state);
                            if unknown {
                                self.channel.announce(vec![Notice::PresenceQuery]);
                            }
                            fanout.heard_appended(*room, *first, *last, *membership);
                        }
                        Notice::PresenceQuery => {
                            let mut state = self.state.lock().expect("cluster lock poisoned");
                            Self::heard_from(&mut state, one.from);
                            drop(state);
                            self.channel.announce(vec![self.snapshot()]);
                        }
                        Notice::Sessions { users } => {
                            let users: HashSet<UserId> = users.iter().copied().collect();
                            let connected: Vec<_> = hub
                                .connected_tokens()
                                .into_iter()
                                .filter(|(user, _)| users.contains(user))
                                .collect();
                            if !connected.is_empty() {
                                let (store, hub) = (store.clone(), hub.clone());
                                tokio::spawn(async move {
                                    maintenance::close_dead_sessions(&store, &hub, connected).await;
                                });
                            }
                        }
                        Notice::Signal { room, sender, username, receipt, body } => {
                            let relay = signals::Relayed {
                                room: *room,
                                sender: *sender,
                                username: username.clone(),
                                kind: if *receipt { SignalKind::Receipt } else { SignalKind::Typing },
                                body: body.clone(),
                            };
                            let (store, hub, receipts) = (store.clone(), hub.clone(), receipts.clone());
                            tokio::spawn(async move {
                                signals::relay_from_another_node(&store, &hub, &receipts, relay).await;
                            });
                        }
                        Notice::Presence { .. } | Notice::PresenceSnapshot { .. } | Notice::Heartbeat => {
                            let changed = self.apply(&one);
                            presence.changed_elsewhere(changed);
                        }
                    }
                }
                _ = tick.tick() => {
                    let gone = self.expire();
                    presence.changed_elsewhere(gone);
                }
                changed = link.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = *link.borrow_and_update();
                    if now.up && now.epoch != epoch {
                        epoch = now.epoch;
                        // Tell everyone where this node stands, and ask
                        // where they do: changes sent while the listener
                        // was away were missed.
                        self.channel.announce(vec![self.snapshot(), Notice::PresenceQuery]);
                    }
                }
            }
        }
    }
}
