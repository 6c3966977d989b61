//! Who is online, told to room members in coalesced frames (PROTOCOL.md §12).
//!
//! Sessions only note what happened (`connect`, `disconnected`); one
//! task, the flusher, turns what was noted during a short window into at
//! most one `presence` frame per room, serialised once and shared by every
//! member, plus one `snapshot` frame per room for the connections that
//! became ready during the window. A join storm of N members of one room
//! therefore costs a few frames per connection instead of N.
//!
//! The window is 50 ms when presence is quiet: short enough that a person
//! watching the list sees no lag, long enough to merge a reconnecting
//! client's close and reopen, or a burst of connects. While changes keep
//! coming (each flush finds new ones waiting), the window doubles, up to
//! 1 s: during a restart's reconnect storm of T seconds every connection
//! then gets its snapshot plus about log2(T / 50 ms) frames, not one frame
//! per arriving member.
//!
//! What was announced (`announced`) is the one view of presence: the
//! frames, the snapshots and `who` all read it, so a client never hears
//! of an online state that the next frame would not also assume. Whether a
//! user is online is read from the hub when the window closes, not from the
//! order in which sessions reported, so a close racing a reopen cannot
//! leave a wrong state behind; a user who went and came back within one
//! window is not mentioned at all.
//!
//! With several nodes (`server::cluster`), "online" means connected to any
//! node: the flusher also tells the other nodes about changes here, and
//! their changes are noted like local ones (`changed_elsewhere`).
//!
//! A std `Mutex`, never held across an `.await`: the flusher reads the
//! store between taking the noted changes and publishing them. Lock order
//! is presence, then cluster, then hub (neither calls in here).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::cluster::Cluster;
use super::hub::{Hub, Outbound, Registration};
use crate::protocol::{Outgoing, ServerFrame};
use crate::store::{RoomId, Store, UserId};

/// The window while presence is quiet.
const QUIET_WINDOW: Duration = Duration::from_millis(50);
/// The longest window, reached after a few busy windows in a row.
const BUSY_WINDOW: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Presence {
    inner: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    /// The other nodes, when there are any (`server::cluster`): a user is
    /// online if connected here or to any of them.
    cluster: Option<Arc<Cluster>>,
}

#[derive(Default)]
struct State {
    /// Users whose first connection opened or last one closed since the
    /// last flush, with their usernames.
    noted: HashMap<UserId, String>,
    /// Connections that became ready since the last flush: they get a
    /// snapshot of each of their user's rooms.
    fresh: Vec<(UserId, u64)>,
    /// Users announced online (by a frame or a snapshot).
    announced: HashSet<UserId>,
}

impl Presence {
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            wake: Arc::new(Notify::new()),
            cluster: None,
        }
    }

    /// Presence across the nodes of `cluster`.
    pub fn with_cluster(cluster: Arc<Cluster>) -> Self {
        Self {
            cluster: Some(cluster),
            ..Self::new()
        }
    }

    /// Users whose connections to other nodes may have changed: their
    /// state is looked at again in the next window.
    pub fn changed_elsewhere(&self, users: Vec<UserId>) {
        if users.is_empty() {
            return;
        }
        let mut state = self.inner.lock().expect("presence lock poisoned");
        for user in users {
            state.noted.entry(user).or_default();
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Registers a connection in the hub and notes it (and its user, if
    /// they just came online). Both under the presence lock, so no flush
    /// falls between: a connection's first presence frame is its snapshot.
    pub fn connect(
        &self,
        hub: &Hub,
        user: UserId,
        username: &str,
        token_hash: [u8; 32],
    ) -> Registration {
        let mut state = self.inner.lock().expect("presence lock poisoned");
        let registration = hub.register(user, token_hash);
        if registration.is_first {
            state.noted.insert(user, username.to_owned());
        }
        state.fresh.push((user, registration.id));
        drop(state);
        self.wake.notify_one();
        registration
    }

    /// A user's last connection closed.
    pub fn disconnected(&self, user: UserId, username: &str) {
        let mut state = self.inner.lock().expect("presence lock poisoned");
        state.noted.insert(user, username.to_owned());
        drop(state);
        self.wake.notify_one();
    }

    /// The users among `people` announced online, plus `caller` (who is
    /// asking, so online whether or not announced yet): `who`'s answer.
    pub fn online_among(&self, people: Vec<(UserId, String)>, caller: UserId) -> Vec<String> {
        let state = self.inner.lock().expect("presence lock poisoned");
        let mut users: Vec<String> = people
            .into_iter()
            .filter(|(id, _)| *id == caller || state.announced.contains(id))
            .map(|(_, name)| name)
            .collect();
        drop(state);
        users.sort();
        users.dedup();
        users
    }

    /// Flushes what was noted, one window at a time, until shutdown.
    pub async fn run(self, store: Store, hub: Hub, mut shutdown: watch::Receiver<bool>) {
        let mut window = QUIET_WINDOW;
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = shutdown.wait_for(|stopping| *stopping) => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(window) => {}
                _ = shutdown.wait_for(|stopping| *stopping) => return,
            }
            self.flush(&store, &hub).await;
            let is_busy = {
                let state = self.inner.lock().expect("presence lock poisoned");
                !state.noted.is_empty() || !state.fresh.is_empty()
            };
            window = if is_busy {
                (window * 2).min(BUSY_WINDOW)
            } else {
                if window > QUIET_WINDOW {
                    // A burst of connects or closes just ended.
                    super::memory::release_after_burst();
                }
                QUIET_WINDOW
            };
        }
    }

    /// Publishes one window: per room, the changes to members who had a
    /// snapshot already, and a snapshot to connections that had none.
    async fn flush(&self, store: &Store, hub: &Hub) {
        let (noted, fresh, newer) = {
            let mut state = self.inner.lock().expect("presence lock poisoned");
            (
                std::mem::take(&mut state.noted),
                std::mem::take(&mut state.fresh),
                // Connections register under this lock: those from here on
                // are the next window's fresh ones.
                hub.next_connection_id(),
            )
        };
        if noted.is_empty() && fresh.is_empty() {
            return;
        }
        let mut users: Vec<UserId> = noted.keys().copied().collect();
        users.extend(fresh.iter().map(|(user, _)| *user));
        users.sort_unstable();
        users.dedup();
        // On a read failure the changes still count as announced below, so
        // `who` and later snapshots stay right; only this window's frames
        // are lost.
        let rows = match store.rooms_with_members(&users).await {
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(error = %err, "presence: reading room members failed");
                Vec::new()
            }
        };
        let fresh_conns: HashSet<u64> = fresh.iter().map(|(_, conn)| *conn).collect();
        let fresh_users: HashSet<UserId> = fresh.iter().map(|(user, _)| *user).collect();

        let mut state = self.inner.lock().expect("presence lock poisoned");
        // Now, not in report order: the hub knows whether they are online.
        let mut changed: HashMap<UserId, bool> = HashMap::new();
        if let Some(cluster) = &self.cluster {
            cluster.local_presence(noted.keys().map(|user| (*user, hub.is_online(*user))));
        }
        for user in noted.keys() {
            let is_online = hub.is_online(*user)
                || self
                    .cluster
                    .as_ref()
                    .is_some_and(|cluster| cluster.online_elsewhere(*user));
            let was_online = state.announced.contains(user);
            if is_online != was_online {
                if is_online {
                    state.announced.insert(*user);
                } else {
                    state.announced.remove(user);
                }
                changed.insert(*user, is_online);
            }
        }
        for room_rows in rows.chunk_by(|a, b| a.0 == b.0) {
            let room = room_rows[0].0;
            let members: Vec<UserId> = room_rows.iter().map(|(_, id, _)| *id).collect();
            let (mut online, mut offline) = (Vec::new(), Vec::new());
            for (_, id, name) in room_rows {
                match changed.get(id) {
                    Some(true) => online.push(name.clone()),
                    Some(false) => offline.push(name.clone()),
                    None => {}
                }
            }
            let delta = (!online.is_empty() || !offline.is_empty())
                .then(|| frame(room, online, offline, false));
            let snapshot = members.iter().any(|id| fresh_users.contains(id)).then(|| {
                let everyone = room_rows
                    .iter()
                    .filter(|(_, id, _)| state.announced.contains(id))
                    .map(|(_, _, name)| name.clone())
                    .collect();
                frame(room, everyone, Vec::new(), true)
            });
            if delta.is_none() && snapshot.is_none() {
                continue;
            }
            hub.deliver_with(&members, |conn| {
                if fresh_conns.contains(&conn) {
                    snapshot.clone()
                } else if conn >= newer {
                    // Opened during the store read: its first presence
                    // frame must be its snapshot, due next window (and
                    // built from what this window announces).
                    None
                } else {
                    delta.clone()
                }
            });
        }
    }
}

/// One room's `presence` frame, serialised once for all its members.
fn frame(room: RoomId, online: Vec<String>, offline: Vec<String>, snapshot: bool) -> Arc<Outbound> {
    let frame = ServerFrame::Presence {
        room,
        online,
        offline,
        snapshot,
    };
    Arc::new(Outbound {
        position: None,
        json: Outgoing::new(None, frame).to_json().into(),
    })
}
