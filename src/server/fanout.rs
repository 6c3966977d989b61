//! Handing committed log entries to the hub: directly on a single node, in
//! order per room across nodes.
//!
//! Single node (`notify::Local`, the SQLite default): the writer's announcer
//! calls `on_commit` for each entry in commit order, and it is delivered at
//! once, exactly as before there were nodes.
//!
//! Several nodes (PostgreSQL): entries of one room are committed by any
//! node's writer; each announces "room R: seqs a..b" on the channel after
//! its commit. A node keeps, for each room that has members connected to it
//! (`Track`), the seq it delivered up to. An own commit or a notice at
//! exactly the next seq is delivered at once (own commits carry their
//! entry); anything further ahead means something between is missing here,
//! so the node reads `delivered+1 ..= b` from the store first (entries and
//! their recipients, `Store::committed_between`) and delivers in order. It
//! never delivers past a gap: own commits that arrive meanwhile wait in
//! `pending`. Everything up to a notified or own seq is committed (seqs are
//! assigned under the room's row lock), so a read up to it is complete; a
//! seq missing from the read was deleted (retention) and is skipped.
//!
//! A lost notice only delays: every `catchup_interval`, and at once when the
//! listener reconnects, each tracked room's `last_seq` is compared with what
//! was delivered and any gap is read. Memory is bounded by the rooms of the
//! users connected here: a room is tracked from a member's connect (read
//! before `ready`, so the client's sync starts at or after the tracked
//! position), from an own commit with a local recipient, or from a notice
//! of a membership change (create, join, invite) naming a local user; it is
//! forgotten when none of its members is connected. Now and then the rooms
//! of every connected user are read again, in case a membership change's
//! notice was lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::task::TaskTracker;

use super::hub::Hub;
use super::signals::KeptReceipts;
use super::{metrics, session};
use crate::notify::{Channel, Notice, stats};
use crate::store::writer::Committed;
use crate::store::{EntryKind, RoomId, Store, UserId, now_ms};

/// Entries read per gap-filling query.
const FILL_CHUNK: u32 = 1000;
/// Rooms filled at once.
const FILL_CONCURRENCY: usize = 8;
/// Every this many catch-ups, the rooms of all connected users are read
/// again (a membership change whose notice was lost).
const RETRACK_EVERY: u32 = 5;

/// Cheap to clone.
#[derive(Clone)]
pub struct Fanout {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Hub,
    kept: Arc<KeptReceipts>,
    channel: Arc<dyn Channel>,
    /// `None` on a single node.
    ordered: Option<Ordered>,
}

struct Ordered {
    store: Store,
    rooms: Mutex<HashMap<RoomId, Track>>,
    fills: mpsc::UnboundedSender<RoomId>,
    fills_rx: Mutex<Option<mpsc::UnboundedReceiver<RoomId>>>,
}

/// Where one room stands on this node.
struct Track {
    /// Every entry up to here was handed to the hub (or skipped as older
    /// than what the connected members synced from).
    delivered: i64,
    /// The highest seq known to be committed.
    want: i64,
    /// Own commits ahead of `delivered`, waiting for the gap before them.
    pending: BTreeMap<i64, Committed>,
    /// A fill task owns the gap.
    filling: bool,
    /// Who gets the room's entries (as of the last one delivered): the room
    /// is forgotten once none of them is connected here.
    members: Arc<[UserId]>,
}

impl Track {
    fn at(seq: i64, members: Arc<[UserId]>) -> Self {
        Self {
            delivered: seq,
            want: seq,
            pending: BTreeMap::new(),
            filling: false,
            members,
        }
    }
}

impl Fanout {
    pub fn new(hub: Hub, kept: Arc<KeptReceipts>, channel: Arc<dyn Channel>, store: Store) -> Self {
        let ordered = channel.is_shared().then(|| {
            let (fills, fills_rx) = mpsc::unbounded_channel();
            Ordered {
                store,
                rooms: Mutex::default(),
                fills,
                fills_rx: Mutex::new(Some(fills_rx)),
            }
        });
        Self {
            inner: Arc::new(Inner {
                hub,
                kept,
                channel,
                ordered,
            }),
        }
    }

    /// The writer's `on_commit`: runs on its announcer thread, in commit
    /// order, and never blocks.
    pub fn on_commit(&self, committed: &Committed) {
        let inner = &*self.inner;
        metrics::entry_committed(&committed.entry);
        let Some(ordered) = &inner.ordered else {
            deliver(&inner.hub, &inner.kept, committed);
            return;
        };
        let entry = &committed.entry;
        inner.channel.announce(vec![Notice::Appended {
            room: entry.room,
            first: entry.seq,
            last: entry.seq,
            membership: changes_membership(entry.kind),
        }]);
        let mut rooms = ordered.rooms.lock().expect("fanout lock poisoned");
        let Some(track) = rooms.get_mut(&entry.room) else {
            // Not followed here: nobody connected here was a member. A new
            // membership (a create, a join) makes someone one.
            let local = committed
                .recipients
                .iter()
                .any(|user| inner.hub.is_online(*user));
            deliver(&inner.hub, &inner.kept, committed);
            if local {
                rooms.insert(
                    entry.room,
                    Track::at(entry.seq, committed.recipients.clone()),
                );
            }
            return;
        };
        if entry.seq <= track.delivered {
            return;
        }
        if entry.seq == track.delivered + 1 && !track.filling && track.pending.is_empty() {
            deliver(&inner.hub, &inner.kept, committed);
            track.delivered = entry.seq;
            track.want = track.want.max(entry.seq);
            track.members = committed.recipients.clone();
            return;
        }
        track.want = track.want.max(entry.seq);
        track.pending.insert(entry.seq, committed.clone());
        schedule(ordered, entry.room, track);
    }

    /// Another node committed `first..=last` of `room`.
    pub fn heard_appended(&self, room: RoomId, first: i64, last: i64, membership: bool) {
        let Some(ordered) = &self.inner.ordered else {
            return;
        };
        let mut rooms = ordered.rooms.lock().expect("fanout lock poisoned");
        match rooms.get_mut(&room) {
            Some(track) => {
                if last > track.want {
                    track.want = last;
                }
                if track.want > track.delivered {
                    schedule(ordered, room, track);
                }
            }
            None if membership => {
                // Maybe someone connected here became a member (or an
                // invitee): look, from the changed entries on. Forgotten
                // again after the fill if nobody here is concerned.
                let mut track = Track::at(first - 1, Arc::from([]));
                track.want = last;
                schedule(ordered, room, &mut track);
                rooms.insert(room, track);
            }
            None => {}
        }
    }

    /// Follows the rooms of a user who just connected here, from their
    /// current positions. Called before the session's `ready`, so that the
    /// client's sync reads the store after these positions were taken.
    pub async fn track_user(&self, user: UserId) {
        let Some(ordered) = &self.inner.ordered else {
            return;
        };
        match ordered.store.member_rooms(&[user]).await {
            Ok(rows) => track_rows(ordered, rows),
            Err(err) => {
                tracing::warn!(error = %err, "fanout: reading a user's rooms failed; the catch-up will");
            }
        }
    }

    /// The fill tasks and the periodic catch-up, until shutdown.
    pub async fn run(self, every: Duration, mut shutdown: watch::Receiver<bool>) {
        let Some(ordered) = &self.inner.ordered else {
            return;
        };
        let Some(mut fills) = ordered
            .fills_rx
            .lock()
            .expect("fanout lock poisoned")
            .take()
        else {
            return;
        };
        let mut link = self.inner.channel.link();
        let tasks = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(FILL_CONCURRENCY));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u32;
        let mut epoch = link.borrow().epoch;
        enum Wake {
            Stop,
            Fill(RoomId),
            Tick,
            Link,
        }
        loop {
            // No await inside the arms: `wait_for`'s guard is not `Send`.
            let wake = tokio::select! {
                _ = shutdown.wait_for(|stopping| *stopping) => Wake::Stop,
                room = fills.recv() => room.map_or(Wake::Stop, Wake::Fill),
                _ = tick.tick() => Wake::Tick,
                changed = link.changed() => if changed.is_err() { Wake::Stop } else { Wake::Link },
            };
            match wake {
                Wake::Stop => break,
                Wake::Fill(room) => {
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        break;
                    };
                    let this = self.clone();
                    tasks.spawn(async move {
                        this.fill(room).await;
                        drop(slot);
                    });
                }
                Wake::Tick => {
                    ticks = ticks.wrapping_add(1);
                    self.catch_up(ticks.is_multiple_of(RETRACK_EVERY)).await;
                }
                Wake::Link => {
                    let now = *link.borrow_and_update();
                    if now.up && now.epoch != epoch {
                        epoch = now.epoch;
                        // Whatever was announced while the listener was away
                        // is lost: read where every room stands.
                        self.catch_up(true).await;
                    }
                }
            }
        }
        tasks.close();
        tasks.wait().await;
    }

    /// Compares every followed room with the store and fills what is behind;
    /// with `retrack`, first follows every connected user's rooms again, and
    /// forgets rooms nobody here is a member of.
    async fn catch_up(&self, retrack: bool) {
        let Some(ordered) = &self.inner.ordered else {
            return;
        };
        let hub = &self.inner.hub;
        if retrack {
            let mut users: Vec<UserId> = hub
                .connected_tokens()
                .into_iter()
                .map(|(user, _)| user)
                .collect();
            users.sort_unstable();
            users.dedup();
            match ordered.store.member_rooms(&users).await {
                Ok(rows) => track_rows(ordered, rows),
                Err(err) => {
                    tracing::warn!(error = %err, "fanout: catch-up could not read rooms");
                    return;
                }
            }
        }
        let rooms: Vec<RoomId> = {
            let mut rooms = ordered.rooms.lock().expect("fanout lock poisoned");
            rooms.retain(|_, track| {
                track.filling
                    || !track.pending.is_empty()
                    || track.members.iter().any(|user| hub.is_online(*user))
            });
            rooms.keys().copied().collect()
        };
        if rooms.is_empty() {
            return;
        }
        let positions = match ordered.store.room_positions(&rooms).await {
            Ok(positions) => positions,
            Err(err) => {
                tracing::warn!(error = %err, "fanout: catch-up could not read positions");
                return;
            }
        };
        let mut tracked = ordered.rooms.lock().expect("fanout lock poisoned");
        for (room, last) in positions {
            let Some(track) = tracked.get_mut(&room) else {
                continue;
            };
            if last > track.want {
                track.want = last;
                if !track.filling {
                    stats::CATCHUP_BEHIND.add(1);
                }
            }
            if track.want > track.delivered {
                schedule(ordered, room, track);
            }
        }
    }

    /// Reads and delivers a room's missing entries, then what waited behind
    /// them, until the room is caught up.
    async fn fill(&self, room: RoomId) {
        let Some(ordered) = &self.inner.ordered else {
            return;
        };
        let (hub, kept) = (&self.inner.hub, &self.inner.kept);
        loop {
            let (after, upto) = {
                let mut rooms = ordered.rooms.lock().expect("fanout lock poisoned");
                let Some(track) = rooms.get_mut(&room) else {
                    return;
                };
                drain_pending(hub, kept, track);
                if track.want <= track.delivered {
                    track.filling = false;
                    let concerned = track.members.iter().any(|user| hub.is_online(*user));
                    if !concerned && track.pending.is_empty() {
                        rooms.remove(&room);
                    }
                    return;
                }
                (track.delivered, track.want)
            };
            stats::GAP_READS.add(1);
            let read = match ordered
                .store
                .committed_between(room, after, upto, FILL_CHUNK)
                .await
            {
                Ok(read) => read,
                Err(err) => {
                    tracing::warn!(error = %err, room = room.0, "fanout: reading a gap failed; the catch-up retries");
                    let mut rooms = ordered.rooms.lock().expect("fanout lock poisoned");
                    if let Some(track) = rooms.get_mut(&room) {
                        track.filling = false;
                    }
                    return;
                }
            };
            let complete = read.len() < FILL_CHUNK as usize;
            let now = now_ms();
            let mut rooms = ordered.rooms.lock().expect("fanout lock poisoned");
            let Some(track) = rooms.get_mut(&room) else {
                return;
            };
            for committed in &read {
                let seq = committed.entry.seq;
                if seq <= track.delivered {
                    continue;
                }
                if !track.pending.contains_key(&seq) {
                    stats::REMOTE_ENTRIES.add(1);
                    stats::observe_lag((now - committed.entry.ts) as f64 / 1000.0);
                }
                deliver(hub, kept, committed);
                track.delivered = seq;
                track.members = committed.recipients.clone();
                if let Some(notify) = committed.notify
                    && hub.is_online(notify)
                    && !track.members.contains(&notify)
                {
                    // An invitee connected here: keep the room until the
                    // next catch-up looks again.
                    let mut members = track.members.to_vec();
                    members.push(notify);
                    track.members = members.into();
                }
            }
            if complete {
                // Everything up to `upto` is committed: a seq the read did
                // not return was deleted since (retention).
                track.delivered = track.delivered.max(upto);
            }
        }
    }
}

/// Starts following rooms (room, member, last_seq) not followed yet, at
/// their current positions; adds the member to those that are.
fn track_rows(ordered: &Ordered, rows: Vec<(RoomId, UserId, i64)>) {
    let mut rooms = ordered.rooms.lock().expect("fanout lock poisoned");
    for (room, user, last_seq) in rows {
        match rooms.get_mut(&room) {
            Some(track) => {
                if !track.members.contains(&user) {
                    let mut members = track.members.to_vec();
                    members.push(user);
                    track.members = members.into();
                }
            }
            None => {
                rooms.insert(room, Track::at(last_seq, Arc::from([user])));
            }
        }
    }
}

/// Hands the fill of `room` to a fill task, unless one has it already.
fn schedule(ordered: &Ordered, room: RoomId, track: &mut Track) {
    if !track.filling {
        track.filling = true;
        let _ = ordered.fills.send(room);
    }
}

/// Delivers own commits that were waiting, as far as they are contiguous.
fn drain_pending(hub: &Hub, kept: &KeptReceipts, track: &mut Track) {
    while let Some((&seq, _)) = track.pending.first_key_value() {
        if seq <= track.delivered {
            track.pending.remove(&seq);
        } else if seq == track.delivered + 1 {
            let committed = track.pending.remove(&seq).expect("just seen");
            deliver(hub, kept, &committed);
            track.delivered = seq;
            track.members = committed.recipients.clone();
        } else {
            break;
        }
    }
    if let Some((&seq, _)) = track.pending.last_key_value() {
        track.want = track.want.max(seq);
    }
}

/// Entries after which nodes not following the room should look whether
/// someone connected to them is concerned.
fn changes_membership(kind: EntryKind) -> bool {
    matches!(
        kind,
        EntryKind::Create | EntryKind::Join | EntryKind::Invite
    )
}

/// Queues an entry for its recipients, and its side notifications.
fn deliver(hub: &Hub, kept: &KeptReceipts, committed: &Committed) {
    let entry = &committed.entry;
    hub.deliver(&committed.recipients, &session::entry_outbound(entry));
    match (entry.kind, committed.notify) {
        (EntryKind::Invite, Some(invitee)) => hub.deliver(
            &[invitee],
            &session::invited_outbound(entry.room, &entry.sender),
        ),
        (EntryKind::Create, Some(peer)) => hub.deliver(
            &[peer],
            &session::request_outbound(entry.room, &entry.sender),
        ),
        (EntryKind::Leave, _) => kept.forget(entry.room, &entry.sender),
        (EntryKind::Remove, _) => {
            if let Some(subject) = &entry.subject {
                kept.forget(entry.room, subject);
            }
        }
        _ => {}
    }
}
