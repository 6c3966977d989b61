//! `hush chat`: the interactive terminal client.
//!
//! Line-oriented so it works in any terminal and under `tmux`/scripts:
//! typing a line sends it to the current conversation; `/`-commands do the
//! rest. One `Link` carries every room; it reconnects by itself and resyncs
//! from the last entry seen.
//!
//! Nothing typed is lost. Each line is first written to the durable outbox
//! (`outbox.rs`, sealed at rest), then sealed for the room and handed to the
//! link once the room is online and caught up — at most `LINK_AHEAD` at a
//! time, so a long paste is sealed shortly before it goes rather than all
//! at once — and leaves the outbox when the server acknowledges it (the
//! server deduplicates resends by client id, so each is stored once). The
//! link keeps them in the order typed. While messages wait, `N waiting to
//! send` is printed, at most once a second, then `all messages sent`.
//! `/quit` or the end of input waits for everything to be sent; a second
//! `/quit` or Ctrl-C leaves at once, and what is left goes out first the
//! next time `hush chat` or `hush send` runs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::account::Account;
use super::api::Room;
use super::commands::{self, Printer, file_payload};
use super::conversation::{Conversation, Shown, mark_verified_now};
use super::link::{Event, Link};
use super::outbox::{self, Outbox};
use super::relations::{self, Relation};
use super::signals::{Signals, Typed, TypedInput};
use super::store::{ClientStore, Window, sync};
use super::transcript;
use crate::cli::ClientOpts;
use crate::crypto::envelope::{Payload, is_valid_reaction};
use crate::crypto::safety::SafetyNumber;
use crate::store::RoomId;

const HELP: &str = "\
commands:
  /rooms               list rooms and DMs with unread counts
  /go ROOM|@USER       switch to a room (name or id) or a DM
  /dm USER             open the DM with USER and switch to it
  /create NAME         create a room and switch to it
  /invite USER         invite USER to the current room
  /join ROOM           accept an invitation
  /leave               leave the current room
  /who                 who is online in the current room
  /history [N]         show the last N messages here (default 20)
  /verify USER         show the safety number with USER
  /file PATH           send a file
  /reply SEQ TEXT      reply to message #SEQ
  /edit SEQ TEXT       change the text of your message #SEQ
  /delete SEQ          delete your message #SEQ for everyone
  /react SEQ EMOJI     react to #SEQ (the same emoji again takes it back)
  /quit                leave hush chat once everything typed is sent
                       (/quit again or Ctrl-C: leave now, keep the rest
                       in the outbox for next time)
anything else is sent to the current conversation";

/// Messages handed to the link and not yet answered, at most: enough to
/// keep its window full, few enough that bodies are sealed shortly before
/// they are sent (for the members of that moment).
const LINK_AHEAD: usize = 128;
/// How often `N waiting to send` may be printed, and how long a message
/// waits before it is worth mentioning.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Entries of each room taken from the store at start (for `/history`).
const RECENT_FROM_STORE: usize = 500;
/// Entries read while catching up, saved to the store per transaction.
const SAVE_BATCH: usize = 2000;

struct RoomView {
    room: Room,
    conversation: Conversation,
    shown: Vec<Shown>,
    /// Read from the server and not saved in the store yet.
    unsaved: Vec<Shown>,
    /// How many of `shown` were printed from the store at start, before
    /// the room caught up (0: none).
    printed_from_store: usize,
    unread: usize,
    is_synced: bool,
    /// An entry could not be checked (the sender's keys could not be
    /// fetched): nothing more of this room is saved in this run.
    is_save_held: bool,
}

struct Chat {
    account: Account,
    /// The local store: each room starts from it and what is read is saved.
    store: ClientStore,
    link: Link,
    rooms: HashMap<RoomId, RoomView>,
    current: Option<RoomId>,
    is_online: bool,
    /// Every message typed and not acknowledged, kept on disk.
    outbox: Outbox,
    /// Messages of the outbox not handed to the link yet, in the order
    /// typed: their room is offline, catching up, or `LINK_AHEAD` is
    /// reached.
    to_post: VecDeque<(String, RoomId)>,
    /// Messages handed to the link and not answered yet.
    posted: HashSet<String>,
    /// Rooms where sealing or posting failed; tried again after the next
    /// (re)connection or sync, not on every ack.
    stalled: HashSet<RoomId>,
    /// `/quit` or end of input with messages waiting: leave once sent.
    is_leaving: bool,
    /// The count last printed as `N waiting to send` (0: none shown), and when.
    status_shown: usize,
    status_at: Option<Instant>,
    printer: Printer,
    /// Receipts and typing (`signals`).
    signals: Signals,
}

pub async fn run(opts: &ClientOpts) -> anyhow::Result<()> {
    let account = Account::open(opts).await?;
    let outbox = outbox::open_for(&account)?;
    let store = super::commands::open_store(&account).await?;
    let token = account.api.token().context("not logged in")?.to_owned();
    let link = Link::start(account.api.server(), token);
    let printer = Printer {
        json: false,
        save_dir: "downloads".into(),
        room: 0,
    };
    let settings = super::settings::Settings::load(account.keys.dir(), account.username())?;
    let signals = Signals::new(account.username(), settings);
    let mut chat = Chat {
        account,
        store,
        link,
        rooms: HashMap::new(),
        current: None,
        is_online: false,
        outbox,
        to_post: VecDeque::new(),
        posted: HashSet::new(),
        stalled: HashSet::new(),
        is_leaving: false,
        status_shown: 0,
        status_at: None,
        printer,
        signals,
    };
    chat.account.blocked = super::social::load_blocked(&chat.account.api).await;
    for room in chat.account.api.rooms().await? {
        chat.add_room(room).await;
    }
    chat.current = chat.rooms.keys().min().copied();
    println!(
        "hush chat as {}. /help for commands.",
        chat.account.username()
    );
    chat.print_rooms();
    // The current room's recent history at once, from the store; what the
    // server has that is newer follows when the room has caught up.
    if let Some(room) = chat.current
        && chat.rooms[&room]
            .shown
            .iter()
            .any(|s| !matches!(s, Shown::Quiet { .. }))
    {
        chat.show_recent(room, 20);
        if let Some(view) = chat.rooms.get_mut(&room) {
            view.printed_from_store = view.shown.len();
        }
    }
    chat.adopt_outbox();

    let mut lines = TypedInput::new(tokio::io::stdin());
    let mut is_input_open = true;
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            line = lines.next(), if is_input_open => {
                let line = line.unwrap_or_else(|err| {
                    println!("! reading input: {err}");
                    None
                });
                match line {
                    Some(Typed::Partial) => chat.typing().await,
                    Some(Typed::Line(line)) => {
                        chat.stopped_typing().await;
                        if !chat.handle_line(line.trim()).await { break }
                    }
                    None => {
                        // End of input (a pipe, a script): wait for
                        // everything; only Ctrl-C leaves earlier.
                        is_input_open = false;
                        if !chat.is_leaving && matches!(chat.quit(), Quit::Now) { break }
                    }
                }
            },
            event = chat.link.events.recv() => match event {
                Some(event) => if !chat.handle_event(event).await { break },
                None => break,
            },
            _ = &mut interrupt => break,
            _ = status_tick.tick() => {
                chat.show_status();
                chat.flush_signals().await;
                chat.expire().await;
            }
        }
        if chat.is_leaving && chat.outbox.is_empty() {
            break;
        }
    }
    chat.say_what_is_left();
    chat.account.finish()
}

/// What `/quit` (or the end of input) does.
enum Quit {
    Now,
    /// Once every message waiting is acknowledged.
    WhenSent,
}

impl Chat {
    async fn add_room(&mut self, room: Room) {
        if self.rooms.contains_key(&room.id) {
            return;
        }
        // A message request is not read until accepted (PROTOCOL §21).
        if room.request {
            let text = super::social::request_sentence(&room, self.account.username());
            println!("* {text}");
            return;
        }
        let from_store = async {
            let conversation = sync::restore(&self.account, &self.store, room.id).await?;
            let recent = Window {
                last: Some(RECENT_FROM_STORE),
                since_ms: None,
            };
            let mut shown = self.store.shown(room.id, recent).await?;
            let trust = self.account.directory.trust_store();
            mark_verified_now(&mut shown, self.account.username(), trust);
            anyhow::Ok((conversation, shown))
        };
        let (conversation, shown) = match from_store.await {
            Ok(stored) => stored,
            Err(err) => {
                println!("! {err:#}");
                let conversation =
                    Conversation::new(room.id, self.account.username(), self.account.device.id());
                (conversation, Vec::new())
            }
        };
        // The newest message known, so a kept receipt can say who saw it.
        if let Some(seq) = shown
            .iter()
            .rev()
            .find(|s| matches!(s, Shown::Message { .. } | Shown::Unsupported { .. }))
            .map(Shown::seq)
        {
            self.signals.stored(room.id, seq, false);
        }
        self.link.follow(room.id, conversation.last_seq()).await;
        self.rooms.insert(
            room.id,
            RoomView {
                room,
                conversation,
                shown,
                unsaved: Vec::new(),
                printed_from_store: 0,
                is_save_held: false,
                unread: 0,
                is_synced: false,
            },
        );
    }

    fn label(&self, room: RoomId) -> String {
        self.rooms.get(&room).map_or_else(
            || format!("room {}", room.0),
            |v| v.room.label(self.account.username()),
        )
    }

    fn print_rooms(&self) {
        let mut ids: Vec<_> = self.rooms.keys().copied().collect();
        ids.sort();
        for id in ids {
            let view = &self.rooms[&id];
            let marker = if Some(id) == self.current { ">" } else { " " };
            let unread = if view.unread > 0 {
                format!(" ({} unread)", view.unread)
            } else {
                String::new()
            };
            println!(
                "{marker} {:>4} {}{unread}",
                id.0,
                view.room.label(self.account.username())
            );
        }
    }

    async fn handle_event(&mut self, event: Event) -> bool {
        match event {
            Event::Entry(entry) => {
                let Some(view) = self.rooms.get_mut(&entry.room) else {
                    return true;
                };
                let shown = sync::judge(&mut view.conversation, &entry, &mut self.account).await;
                // An entry that could not be checked is shown, not kept:
                // saving stops for this room until the next run reads it again.
                view.is_save_held |= view.conversation.was_unavailable();
                let is_current = Some(entry.room) == self.current;
                let from_other = self
                    .signals
                    .message(&shown, entry.room, self.account.username());
                if view.is_synced && !matches!(shown, Shown::Quiet { .. }) {
                    if is_current {
                        let quote = quote_in(&view.shown, &shown);
                        let _ = self.printer.print_quoting(&shown, &|_| quote.clone());
                        if let Some(seq) = from_other {
                            self.signals.seen(entry.room, seq);
                        }
                    } else {
                        view.unread += 1;
                        println!(
                            "[{}: new message]",
                            view.room.label(self.account.username())
                        );
                    }
                }
                if is_current
                    && view.is_synced
                    && let Some(line) = self.signals.seen_line(entry.room)
                {
                    println!("* {line}");
                }
                if let Shown::Relation {
                    relation, sender, ..
                } = &shown
                {
                    let changed = apply_in_view(&mut view.shown, relation, sender);
                    if let (true, Some(target)) = (view.is_synced && is_current, changed) {
                        let _ = self.printer.print(&target);
                    }
                }
                view.unsaved.push(shown.clone());
                view.shown.push(shown);
                if view.is_synced || view.unsaved.len() >= SAVE_BATCH {
                    self.save_room(entry.room).await;
                }
                self.account.print_notices();
            }
            Event::Synced { room, .. } => {
                self.save_room(room).await;
                if let Some(view) = self.rooms.get_mut(&room)
                    && !view.is_synced
                {
                    view.is_synced = true;
                    let last_seq = view.conversation.last_seq();
                    if Some(room) == self.current {
                        self.show_caught_up(room);
                        self.signals.seen(room, last_seq);
                    }
                }
                self.stalled.remove(&room);
                self.flush_signals().await;
                self.pump().await;
            }
            Event::Connected { resumed } => {
                self.is_online = true;
                if resumed {
                    println!("* reconnected");
                }
                self.stalled.clear();
                self.pump().await;
            }
            Event::Disconnected { reason } => {
                if self.is_online {
                    println!("* disconnected ({reason}); reconnecting…");
                }
                self.is_online = false;
            }
            Event::Acked { client_id, .. } => {
                self.signals.answered(&client_id, true, &self.link).await;
                self.answered(&client_id);
                self.pump().await;
            }
            Event::SendFailed {
                client_id,
                code,
                message,
            } => {
                println!("! not sent: {message} ({code})");
                self.signals.answered(&client_id, false, &self.link).await;
                self.answered(&client_id);
                self.pump().await;
            }
            // The link resends these by itself, in order; the count shown
            // is the outbox's, which also holds lines not sealed yet.
            Event::Retrying { .. } => {}
            Event::Presence { user, online } => {
                println!("* {user} is {}", if online { "online" } else { "offline" })
            }
            Event::Online { users, .. } => println!("* online: {}", users.join(", ")),
            Event::Invited { room, by } => {
                println!("* {by} invited you to room {} — /join {}", room.0, room.0)
            }
            Event::History { .. } => {}
            Event::Signal {
                room, sender, body, ..
            } => self.take_signal(room, &sender, &body).await,
            Event::Request { room, by } => {
                println!(
                    "* {by} wants to message you — hush accept {0} / hush decline {0} / hush block {by}",
                    room.0
                )
            }
            Event::Error { code, message } => println!("! {message} ({code})"),
            Event::Unauthorized => {
                println!("! the server refused our session; log in again");
                return false;
            }
        }
        true
    }

    /// Saves what was read in `room` since the last save, with the room's
    /// state and cursor. A failure is shown, not fatal: the server still
    /// has everything, and the next save or run writes it.
    async fn save_room(&mut self, room: RoomId) {
        let Some(view) = self.rooms.get_mut(&room) else {
            return;
        };
        if view.is_save_held {
            view.unsaved.clear();
            return;
        }
        let label = view.room.label(&self.account.identity.username);
        let saved = self
            .store
            .save(room, &label, &view.conversation.save(), &view.unsaved)
            .await;
        match saved {
            Ok(()) => view.unsaved.clear(),
            Err(err) => println!("! saving to the local store: {err:#}"),
        }
    }

    /// When a room has caught up: its recent history, or, if that was
    /// already printed from the store, what came from the server since.
    fn show_caught_up(&self, room: RoomId) {
        let Some(view) = self.rooms.get(&room) else {
            return;
        };
        if view.printed_from_store == 0 {
            return self.show_recent(room, 20);
        }
        let new: Vec<&Shown> = view.shown[view.printed_from_store.min(view.shown.len())..]
            .iter()
            .filter(|s| !matches!(s, Shown::Quiet { .. }))
            .filter(|s| !super::social::hides(s, &self.account.blocked))
            .collect();
        for shown in &new[new.len().saturating_sub(20)..] {
            let quote = quote_in(&view.shown, shown);
            let _ = self.printer.print_quoting(shown, &|_| quote.clone());
        }
    }

    fn show_recent(&self, room: RoomId, count: usize) {
        let Some(view) = self.rooms.get(&room) else {
            return;
        };
        println!("--- {} ---", view.room.label(self.account.username()));
        let visible: Vec<&Shown> = view
            .shown
            .iter()
            .filter(|s| !matches!(s, Shown::Quiet { .. }))
            .filter(|s| !super::social::hides(s, &self.account.blocked))
            .collect();
        for shown in &visible[visible.len().saturating_sub(count)..] {
            let quote = quote_in(&view.shown, shown);
            let _ = self.printer.print_quoting(shown, &|_| quote.clone());
        }
    }

    /// Takes in what an earlier run left in the outbox: it goes first, in
    /// order. Messages for rooms this user is no longer in are dropped.
    fn adopt_outbox(&mut self) {
        if !self.outbox.is_durable() {
            println!(
                "* another hush of {} holds the outbox ({}): messages typed here are kept in memory only until sent",
                self.account.username(),
                self.outbox.path().display()
            );
        }
        if let Some((count, aside)) = self.outbox.unreadable() {
            println!(
                "! {count} record(s) of the outbox could not be opened with this identity; a copy is kept in {}",
                aside.display()
            );
        }
        let left: Vec<(String, RoomId)> = self
            .outbox
            .pending()
            .map(|q| (q.client_id.clone(), q.room))
            .collect();
        if left.is_empty() {
            return;
        }
        println!(
            "* {} message(s) left from an earlier run will be sent first",
            left.len()
        );
        for (client_id, room) in left {
            if self.rooms.contains_key(&room) {
                self.to_post.push_back((client_id, room));
            } else {
                self.drop_queued(&client_id, room);
            }
        }
    }

    /// A queued message for a room this user is not in any more.
    fn drop_queued(&mut self, client_id: &str, room: RoomId) {
        println!(
            "! a message queued for room {} was dropped: you are not in it any more",
            room.0
        );
        if let Err(err) = self.outbox.done(client_id) {
            println!("! {err:#}");
        }
    }

    /// Seals and hands to the link the messages waiting, in order, for
    /// rooms that are online and caught up, up to `LINK_AHEAD` in the link
    /// at once; the others wait, behind their room's earlier lines.
    async fn pump(&mut self) {
        if !self.is_online {
            return;
        }
        let mut held = self.stalled.clone();
        let mut kept = VecDeque::new();
        while let Some((client_id, room)) = self.to_post.pop_front() {
            if self.posted.len() >= LINK_AHEAD {
                kept.push_back((client_id, room));
                kept.append(&mut self.to_post);
                break;
            }
            let Some(payload) = self.outbox.get(&client_id).map(|q| q.payload.clone()) else {
                continue;
            };
            if !self.rooms.contains_key(&room) {
                self.drop_queued(&client_id, room);
                continue;
            }
            if held.contains(&room) || !self.is_ready(room) {
                held.insert(room);
                kept.push_back((client_id, room));
                continue;
            }
            match self.post(room, &payload, &client_id).await {
                Ok(()) => {
                    self.posted.insert(client_id);
                }
                Err(err) => {
                    println!("! could not send yet: {err:#}; will retry when reconnected");
                    self.stalled.insert(room);
                    held.insert(room);
                    kept.push_back((client_id, room));
                }
            }
        }
        self.to_post = kept;
        self.account.print_notices();
    }

    /// A message the server acknowledged or refused for good: it leaves
    /// the outbox.
    fn answered(&mut self, client_id: &str) {
        if !self.posted.remove(client_id) {
            return; // a sender-key distribution, or not ours
        }
        if let Err(err) = self.outbox.done(client_id) {
            println!("! {err:#}");
        }
        if self.outbox.is_empty() {
            self.show_status();
        }
    }

    /// Whether `room` has been read up to now, so its sending state (sender
    /// key, epoch, counter) is known; sealing before that could reuse an epoch.
    fn is_ready(&self, room: RoomId) -> bool {
        self.rooms.get(&room).is_some_and(|view| view.is_synced)
    }

    async fn post(
        &mut self,
        room: RoomId,
        payload: &Payload,
        client_id: &str,
    ) -> anyhow::Result<()> {
        let view = self.rooms.get_mut(&room).context("not in that room")?;
        transcript::post(
            &mut self.account,
            &self.link,
            &mut view.conversation,
            &view.room,
            payload,
            client_id,
        )
        .await?;
        Ok(())
    }

    /// Writes a typed message to the outbox, then sends what may go.
    async fn send(&mut self, payload: Payload) {
        let Some(room) = self.current else {
            println!("! no conversation selected: /rooms, /go ROOM or /dm USER");
            return;
        };
        let client_id = match self.outbox.add(room, payload) {
            Ok(client_id) => client_id,
            Err(err) => {
                println!("! not sent: it could not be kept in the outbox ({err:#})");
                return;
            }
        };
        let is_first_waiting = !self.to_post.iter().any(|(_, r)| *r == room);
        self.to_post.push_back((client_id, room));
        if is_first_waiting {
            if !self.is_online {
                println!("* offline: will send when reconnected");
            } else if !self.is_ready(room) {
                println!("* still catching up: will send in a moment");
            }
        }
        self.pump().await;
    }

    /// `/quit` or the end of input. With messages waiting, the first asks
    /// to leave once they are sent; a second leaves at once.
    fn quit(&mut self) -> Quit {
        let waiting = self.outbox.len();
        if waiting == 0 || self.is_leaving {
            return Quit::Now;
        }
        self.is_leaving = true;
        println!(
            "* {waiting} waiting to send… (leaving once they are sent; /quit again or Ctrl-C leaves now and keeps them for next time)"
        );
        self.status_shown = waiting;
        self.status_at = Some(Instant::now());
        Quit::WhenSent
    }

    /// Prints `N waiting to send` when the count changed, at most once per
    /// `STATUS_EVERY`, and only once a message has waited that long (or
    /// the user is leaving): a line that goes out at once is not news.
    /// `all messages sent` when the count shown reaches 0.
    fn show_status(&mut self) {
        let waiting = self.outbox.len();
        if waiting == 0 {
            if self.status_shown > 0 {
                println!("* all messages sent");
                self.status_shown = 0;
            }
            return;
        }
        let is_worth_it = self.is_leaving
            || self
                .outbox
                .oldest()
                .is_some_and(|at| at.elapsed() >= STATUS_EVERY);
        let is_due = self.status_at.is_none_or(|at| at.elapsed() >= STATUS_EVERY);
        if is_worth_it && is_due && waiting != self.status_shown {
            println!("* {waiting} waiting to send");
            self.status_shown = waiting;
            self.status_at = Some(Instant::now());
        }
    }

    /// Disappearing messages: replaces what expired in every room with
    /// "message expired" (saying so for the room on screen) and removes
    /// it from the store too.
    async fn expire(&mut self) {
        let now = relations::now_ms();
        let mut any = false;
        for (id, view) in &mut self.rooms {
            let conversation = &view.conversation;
            let expired = relations::expire(
                &mut view.shown,
                |seq, ts| conversation.expires_at(seq, ts),
                now,
            );
            any |= !expired.is_empty();
            if Some(*id) == self.current && view.is_synced {
                for seq in expired {
                    println!("* #{seq} expired");
                }
            }
        }
        if any && let Err(err) = self.store.expire(None).await {
            println!("! {err:#}");
        }
    }

    /// `/edit`, `/delete`, `/react`: checked against what this room shows
    /// (or the store, for older messages), then sent like any message.
    async fn send_relation(&mut self, payload: Payload) -> anyhow::Result<()> {
        let room = self.current.context("no conversation selected")?;
        let of = payload.relation_target().expect("a relation");
        let in_view = self
            .rooms
            .get(&room)
            .and_then(|view| view.shown.iter().rev().find(|s| s.seq() == of).cloned());
        let target = match in_view {
            Some(target) => Some(target),
            None => self.store.entry(room, of).await?,
        };
        let payload =
            commands::prepare_relation(self.account.username(), target.as_ref(), payload)?;
        self.send(payload).await;
        Ok(())
    }

    /// Leaving: says plainly what was not sent and where it is.
    fn say_what_is_left(&mut self) {
        let left = self.outbox.len();
        if left == 0 {
            self.show_status();
            return;
        }
        let user = self.account.username();
        let (count, verb) = if left == 1 {
            ("1 message is".to_owned(), "it")
        } else {
            (format!("{left} messages are"), "they")
        };
        if self.outbox.is_durable() {
            println!(
                "* {count} kept in the outbox and will be sent the next time you run hush chat or hush send as {user}"
            );
        } else {
            println!(
                "! {count} not sent, and {verb} cannot be kept: another hush of {user} holds the outbox"
            );
        }
    }

    async fn switch_to(&mut self, room: Room) {
        let id = room.id;
        self.add_room(room).await;
        self.current = Some(id);
        if let Some(view) = self.rooms.get_mut(&id) {
            view.unread = 0;
        }
        self.show_recent(id, 20);
        if let Some(view) = self.rooms.get(&id) {
            self.signals.seen(id, view.conversation.last_seq());
        }
    }

    /// Handles one typed line; false to quit.
    async fn handle_line(&mut self, line: &str) -> bool {
        if line.is_empty() {
            return true;
        }
        let Some(command) = line.strip_prefix('/') else {
            self.send(Payload::text(line)).await;
            return true;
        };
        let (name, arg) = command
            .split_once(' ')
            .map_or((command, ""), |(n, a)| (n, a.trim()));
        let result: anyhow::Result<()> = async {
            match name {
                "quit" | "exit" => {
                    if let Quit::Now = self.quit() {
                        return Err(anyhow::anyhow!("quit"));
                    }
                }
                "help" => println!("{HELP}"),
                "rooms" => self.print_rooms(),
                "go" | "switch" => {
                    if let Some(peer) = arg.strip_prefix('@') {
                        let room = self.account.api.open_dm(peer).await?;
                        self.switch_to(room).await;
                    } else {
                        let room = super::account::find_room(&self.account.api, arg).await?;
                        self.switch_to(room).await;
                    }
                }
                "dm" => {
                    let room = self.account.api.open_dm(arg).await?;
                    self.switch_to(room).await;
                }
                "create" => {
                    let room = self.account.api.create_room(arg).await?;
                    self.switch_to(room).await;
                }
                "invite" => {
                    let room = self.current.context("no conversation selected")?;
                    self.account.api.invite(room, arg).await?;
                    println!("* invited {arg}");
                }
                "join" => {
                    let id = arg.trim_start_matches('#');
                    let invitations = self.account.api.invitations().await?;
                    let room = invitations
                        .iter()
                        .find(|i| i.name.as_deref() == Some(id) || i.room.0.to_string() == id)
                        .map(|i| i.room)
                        .context("no such invitation")?;
                    let room = self.account.api.join(room).await?;
                    self.switch_to(room).await;
                }
                "leave" => {
                    let room = self.current.context("no conversation selected")?;
                    self.account.api.leave(room).await?;
                    println!("* left {}", self.label(room));
                    self.rooms.remove(&room);
                    self.current = self.rooms.keys().min().copied();
                }
                "who" => self.link.who(self.current).await,
                "history" => {
                    let count = arg.parse().unwrap_or(20);
                    if let Some(room) = self.current {
                        self.show_recent(room, count);
                    }
                }
                "verify" => {
                    let peer = self.account.directory.peer(arg).await?;
                    let theirs = peer.usable.context(
                        "their key changed without a valid rotation; see `hush keys trust`",
                    )?;
                    let mine = self.account.identity.current.public().clone();
                    println!("safety number with {arg}:");
                    for line in
                        SafetyNumber::for_keys((self.account.username(), &mine), (arg, &theirs))
                            .to_lines()
                    {
                        println!("    {line}");
                    }
                    println!(
                        "compare it with {arg}; then `hush keys verify {arg} --mark-verified`"
                    );
                }
                "file" => {
                    let payload = file_payload(std::path::Path::new(arg))?;
                    self.send(payload).await;
                }
                "reply" => {
                    let (seq, text) = seq_and_rest(arg)?;
                    if text.is_empty() {
                        anyhow::bail!("/reply SEQ TEXT");
                    }
                    self.send(Payload::text(text).replying_to(seq)).await;
                }
                "edit" => {
                    let (of, text) = seq_and_rest(arg)?;
                    if text.is_empty() {
                        anyhow::bail!("/edit SEQ TEXT (to remove a message: /delete SEQ)");
                    }
                    let text = text.to_owned();
                    self.send_relation(Payload::Edit { of, text }).await?;
                }
                "delete" => {
                    let (of, _) = seq_and_rest(arg)?;
                    self.send_relation(Payload::Delete { of }).await?;
                }
                "react" => {
                    let (of, emoji) = seq_and_rest(arg)?;
                    if emoji.is_empty() || !is_valid_reaction(emoji) {
                        anyhow::bail!("/react SEQ EMOJI (1 to 64 bytes, no control characters)");
                    }
                    let emoji = emoji.to_owned();
                    self.send_relation(Payload::React { of, emoji }).await?;
                }
                other => println!("! unknown command /{other}; /help lists them"),
            }
            Ok(())
        }
        .await;
        match result {
            Err(err) if err.to_string() == "quit" => false,
            Err(err) => {
                println!("! {err:#}");
                true
            }
            Ok(()) => true,
        }
    }
}

/// Receipts and typing (`signals.rs`): the glue between the chat's rooms
/// and `Signals`. Failures are shown, never fatal: signals are best effort.
impl Chat {
    /// Sends the receipts that are due, at most one per room per second.
    async fn flush_signals(&mut self) {
        self.signals.expire_typing();
        if !self.is_online {
            return;
        }
        for room in self.signals.due_receipts() {
            let Some(view) = self.rooms.get_mut(&room).filter(|v| v.is_synced) else {
                continue;
            };
            let sent = self
                .signals
                .send_receipt(
                    &mut self.account,
                    &self.link,
                    &mut view.conversation,
                    &view.room,
                )
                .await;
            if let Err(err) = sent {
                println!("! could not send a receipt: {err:#}");
            }
        }
    }

    /// The user typed part of a line in the current room.
    async fn typing(&mut self) {
        let Some(view) = self.current.and_then(|room| self.rooms.get_mut(&room)) else {
            return;
        };
        if !self.is_online || !view.is_synced {
            return;
        }
        // A receipt held back goes first, so signals keep their order.
        if self.signals.has_receipt_waiting(view.room.id) {
            let sent = self
                .signals
                .send_receipt(
                    &mut self.account,
                    &self.link,
                    &mut view.conversation,
                    &view.room,
                )
                .await;
            if let Err(err) = sent {
                println!("! could not send a receipt: {err:#}");
            }
        }
        let sent = self
            .signals
            .typing(
                &mut self.account,
                &self.link,
                &mut view.conversation,
                &view.room,
            )
            .await;
        if let Err(err) = sent {
            println!("! could not send a typing indicator: {err:#}");
        }
    }

    /// A whole line came: whatever it is, the user stopped typing.
    async fn stopped_typing(&mut self) {
        let Some(view) = self.current.and_then(|room| self.rooms.get_mut(&room)) else {
            return;
        };
        if !self.is_online || !view.is_synced {
            return;
        }
        let sent = self
            .signals
            .stopped_typing(
                &mut self.account,
                &self.link,
                &mut view.conversation,
                &view.room,
            )
            .await;
        if let Err(err) = sent {
            println!("! could not send a typing indicator: {err:#}");
        }
    }

    /// A member's signal: shown in the status lines if its room is on screen.
    async fn take_signal(&mut self, room: RoomId, sender: &str, body: &str) {
        if self.account.blocked.contains(sender) {
            return;
        }
        let Some(view) = self.rooms.get_mut(&room) else {
            return;
        };
        let lines = self
            .signals
            .receive(sender, body, &mut self.account, &mut view.conversation)
            .await;
        if Some(room) == self.current {
            for line in lines {
                println!("* {line}");
            }
        }
    }
}

/// `SEQ rest…` of a `/`-command (`#41` or `41`).
fn seq_and_rest(arg: &str) -> anyhow::Result<(i64, &str)> {
    let (seq, rest) = arg.split_once(' ').unwrap_or((arg, ""));
    let seq: i64 = seq
        .trim_start_matches('#')
        .parse()
        .ok()
        .filter(|seq| *seq > 0)
        .with_context(|| format!("{seq:?} is not a message number (as #SEQ shows it)"))?;
    Ok((seq, rest.trim()))
}

/// Applies a relation read live to its target among `shown` (what this
/// room shows), as the store does to its row: returns the target's new
/// state to show, if it changed. A delete also drops the edits and
/// reactions of the target.
fn apply_in_view(shown: &mut Vec<Shown>, relation: &Relation, by: &str) -> Option<Shown> {
    let of = relation.of();
    let target = shown.iter_mut().rev().find(|s| s.seq() == of)?;
    if let relations::Applied::Nothing = relations::apply(target, relation, by) {
        return None;
    }
    let changed = target.clone();
    if let Relation::Delete { .. } = relation {
        shown.retain(|s| {
            !matches!(s, Shown::Relation { relation: Relation::Edit { of: o, .. } | Relation::React { of: o, .. }, .. } if *o == of)
        });
    }
    Some(changed)
}

/// The quote of the message `item` replies to, from what its room shows.
fn quote_in(shown: &[Shown], item: &Shown) -> Option<String> {
    let Shown::Message { payload, .. } = item else {
        return None;
    };
    let of = payload.reply_to()?;
    relations::quote(shown.iter().rev().find(|s| s.seq() == of)?)
}
