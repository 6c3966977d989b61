//! Receipts and typing indicators in `hush chat` (PROTOCOL §21).
//!
//! Sending:
//! - a `receipt` per room when messages from others arrive in this run:
//!   `delivered` = the highest such seq stored, `read` = the highest such
//!   seq printed on screen (left out when the user turned read receipts
//!   off, `hush settings receipts off`). At most one receipt per room per
//!   second; what is held back goes with the next one. Rooms where nothing
//!   new arrived send none, so starting `hush chat` does not announce
//!   anything by itself.
//! - `typing: true` when the user has typed part of a line (input that
//!   has not reached Enter), repeated at most every 3 s, and `false` when
//!   the line is sent or cleared; none with `hush settings typing off`.
//!   A terminal in its normal (cooked) mode hands a line over only at
//!   Enter, so typing is seen from input that arrives in pieces (a pipe,
//!   a script, a terminal in raw mode).
//!
//! Receiving: signals are opened with the sending device's sender key and
//! checked for freshness (typing within 10 minutes; receipts have no
//! window, so each user's `read` is merged as a maximum and an old receipt
//! never lowers it); anything that does not open is dropped silently.
//! For the current room the chat prints `* bob is typing…` when bob
//! starts (it lasts 6 s unless repeated) and `* seen by alice, bob` when
//! the set of members whose `read` covers the newest message changes. A
//! user's own devices are never listed. Kept receipts the server sends
//! after a reconnect are taken the same way.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::account::Account;
use super::api::Room;
use super::conversation::{Conversation, Shown};
use super::link::Link;
use super::settings::Settings;
use super::transcript::new_client_id;
use crate::crypto::signal::{Freshness, Signal, SignalClock, now_ms};
use crate::protocol::{SignalKind, b64};
use crate::store::RoomId;

/// At most one receipt per room per this long.
const RECEIPT_EVERY: Duration = Duration::from_secs(1);
/// `typing: true` is repeated this often while the user types.
const TYPING_EVERY: Duration = Duration::from_secs(3);
/// How long a reader shows "is typing" after the last `typing: true`.
const TYPING_LASTS: Duration = Duration::from_secs(6);

#[derive(Default)]
struct RoomSignals {
    /// Highest seq of a message from someone else stored in this run.
    delivered: i64,
    /// Highest such seq printed on screen.
    read: i64,
    /// What the last receipt sent said, and when it went.
    sent: (i64, i64),
    sent_at: Option<Instant>,
    /// When `typing: true` last went; `None` when not typing.
    typing_since: Option<Instant>,
    /// Newest message (anyone's) of the room.
    newest: i64,
    /// Other users' `read`: the highest any receipt of theirs said.
    read_by: HashMap<String, i64>,
    /// Other users typing, until when.
    typing: HashMap<String, Instant>,
    /// The "seen by" line last printed.
    seen_line: String,
}

impl RoomSignals {
    /// `user` has read up to `read`. Merged as a maximum, never lowered:
    /// receipts have no freshness window (§21), so an old one (a kept
    /// receipt the server replays, or one arriving late) may come after a
    /// newer one, and it only ever claims less.
    fn read_up_to(&mut self, user: &str, read: u64) {
        let read = i64::try_from(read).unwrap_or(i64::MAX);
        let was = self.read_by.entry(user.to_owned()).or_insert(0);
        *was = (*was).max(read);
    }
}

pub struct Signals {
    me: String,
    settings: Settings,
    clock: SignalClock,
    freshness: Freshness,
    rooms: HashMap<RoomId, RoomSignals>,
    /// Signals sealed under a new sender key, held (in order) until its
    /// distribution is stored (acknowledged): sent before it, a signal
    /// would reach readers who cannot open it yet. Keyed by the
    /// distribution's client id.
    held: HashMap<String, (RoomId, Vec<(SignalKind, String)>)>,
}

impl Signals {
    pub fn new(me: &str, settings: Settings) -> Self {
        Self {
            me: me.to_owned(),
            settings,
            clock: SignalClock::new(),
            freshness: Freshness::new(),
            rooms: HashMap::new(),
            held: HashMap::new(),
        }
    }

    fn room(&mut self, room: RoomId) -> &mut RoomSignals {
        self.rooms.entry(room).or_default()
    }

    /// A message entry was judged and stored (`from_other`: not this
    /// user's own).
    pub fn stored(&mut self, room: RoomId, seq: i64, from_other: bool) {
        let state = self.room(room);
        state.newest = state.newest.max(seq);
        if from_other {
            state.delivered = state.delivered.max(seq);
        }
    }

    /// Takes a judged entry in: a message (or one this version cannot
    /// display) counts as stored. Returns its seq if someone else sent it.
    pub fn message(&mut self, shown: &Shown, room: RoomId, me: &str) -> Option<i64> {
        let (Shown::Message { seq, sender, .. } | Shown::Unsupported { seq, sender, .. }) = shown
        else {
            return None;
        };
        let from_other = sender != me;
        self.stored(room, *seq, from_other);
        from_other.then_some(*seq)
    }

    /// Whether `room` has a receipt not sent yet, however recent the last.
    pub fn has_receipt_waiting(&self, room: RoomId) -> bool {
        self.rooms.get(&room).is_some_and(|s| {
            let read = if self.settings.read_receipts {
                s.read
            } else {
                0
            };
            s.delivered > 0 && (s.delivered, read) != s.sent
        })
    }

    /// Messages up to `seq` of `room` are on screen.
    pub fn seen(&mut self, room: RoomId, seq: i64) {
        let state = self.room(room);
        // Only what arrived in this run is reported (see the module docs).
        state.read = state.read.max(seq.min(state.delivered));
    }

    /// Rooms whose receipt should go now.
    pub fn due_receipts(&self) -> Vec<RoomId> {
        self.rooms
            .iter()
            .filter(|(_, s)| {
                let read = if self.settings.read_receipts {
                    s.read
                } else {
                    0
                };
                (s.delivered, read) != s.sent
                    && s.delivered > 0
                    && s.sent_at.is_none_or(|at| at.elapsed() >= RECEIPT_EVERY)
            })
            .map(|(room, _)| *room)
            .collect()
    }

    /// Sends `room`'s receipt (see `due_receipts`).
    pub async fn send_receipt(
        &mut self,
        account: &mut Account,
        link: &Link,
        conversation: &mut Conversation,
        room: &Room,
    ) -> anyhow::Result<()> {
        let is_read_on = self.settings.read_receipts;
        let state = self.room(room.id);
        let read = if is_read_on { state.read } else { 0 };
        let delivered = state.delivered;
        state.sent = (delivered, read);
        state.sent_at = Some(Instant::now());
        let signal = Signal::Receipt {
            delivered: delivered.max(0) as u64,
            read: (is_read_on && read > 0).then_some(read as u64),
        };
        self.send(&signal, account, link, conversation, room).await
    }

    /// The user has typed part of a line in `room`: `typing: true` unless
    /// sent less than 3 s ago (or typing is off).
    pub async fn typing(
        &mut self,
        account: &mut Account,
        link: &Link,
        conversation: &mut Conversation,
        room: &Room,
    ) -> anyhow::Result<()> {
        if !self.settings.typing {
            return Ok(());
        }
        let state = self.room(room.id);
        if state
            .typing_since
            .is_some_and(|at| at.elapsed() < TYPING_EVERY)
        {
            return Ok(());
        }
        state.typing_since = Some(Instant::now());
        let signal = Signal::Typing { typing: true };
        self.send(&signal, account, link, conversation, room).await
    }

    /// The line being typed was sent or cleared: `typing: false` if a
    /// `true` went before.
    pub async fn stopped_typing(
        &mut self,
        account: &mut Account,
        link: &Link,
        conversation: &mut Conversation,
        room: &Room,
    ) -> anyhow::Result<()> {
        if self.room(room.id).typing_since.take().is_none() {
            return Ok(());
        }
        let signal = Signal::Typing { typing: false };
        self.send(&signal, account, link, conversation, room).await
    }

    async fn send(
        &mut self,
        signal: &Signal,
        account: &mut Account,
        link: &Link,
        conversation: &mut Conversation,
        room: &Room,
    ) -> anyhow::Result<()> {
        // The members are only needed to make a first sender key.
        let members = if conversation.has_sending_key() {
            Vec::new()
        } else {
            account.api.room(room.id).await?.members
        };
        let counter = self.clock.next(now_ms());
        let sealed = conversation
            .seal_signal(
                signal,
                counter,
                &members,
                room.is_dm(),
                &account.identity,
                &mut account.directory,
            )
            .await?;
        let kind = match signal {
            Signal::Receipt { .. } => SignalKind::Receipt,
            Signal::Typing { .. } => SignalKind::Typing,
        };
        let body = b64::encode(&sealed.body);
        if let Some(distribution) = sealed.distribution {
            let client_id = new_client_id();
            link.send(room.id, client_id.clone(), b64::encode(&distribution))
                .await;
            self.held.insert(client_id, (room.id, vec![(kind, body)]));
        } else if let Some((_, waiting)) = self.held.values_mut().find(|(r, _)| *r == room.id) {
            // Behind a signal still waiting for its key.
            waiting.push((kind, body));
        } else {
            link.signal(room.id, kind, body).await;
        }
        Ok(())
    }

    /// A send was acknowledged (or refused for good: `is_stored` false):
    /// a signal held for it goes now, or is dropped with it.
    pub async fn answered(&mut self, client_id: &str, is_stored: bool, link: &Link) {
        if let Some((room, waiting)) = self.held.remove(client_id)
            && is_stored
        {
            for (kind, body) in waiting {
                link.signal(room, kind, body).await;
            }
        }
    }

    /// A signal from `sender` in `room`: opened and taken in. Returns the
    /// status lines to print if `room` is on screen.
    pub async fn receive(
        &mut self,
        sender: &str,
        body: &str,
        account: &mut Account,
        conversation: &mut Conversation,
    ) -> Vec<String> {
        let Ok(body) = b64::decode(body) else {
            return Vec::new();
        };
        let room = conversation.room();
        let opened = conversation
            .open_signal(
                &body,
                sender,
                now_ms(),
                &mut self.freshness,
                &account.identity,
                &mut account.directory,
            )
            .await;
        // A user's own devices are never listed.
        let (Some(signal), false) = (opened, sender == self.me) else {
            return Vec::new();
        };
        let state = self.room(room);
        let mut lines = Vec::new();
        match signal {
            Signal::Receipt {
                read: Some(read), ..
            } => state.read_up_to(sender, read),
            Signal::Receipt { read: None, .. } => {}
            Signal::Typing { typing: true } => {
                let until = Instant::now() + TYPING_LASTS;
                if state.typing.insert(sender.to_owned(), until).is_none() {
                    lines.push(format!("{sender} is typing…"));
                }
            }
            Signal::Typing { typing: false } => {
                state.typing.remove(sender);
            }
        }
        lines.extend(self.seen_line(room));
        lines
    }

    /// `seen by …` for `room` if it changed since it was last printed.
    pub fn seen_line(&mut self, room: RoomId) -> Option<String> {
        let state = self.room(room);
        if state.newest == 0 {
            return None;
        }
        let readers: BTreeSet<&str> = state
            .read_by
            .iter()
            .filter(|(_, read)| **read >= state.newest)
            .map(|(user, _)| user.as_str())
            .collect();
        let line = if readers.is_empty() {
            String::new()
        } else {
            format!(
                "seen by {}",
                readers.into_iter().collect::<Vec<_>>().join(", ")
            )
        };
        if line == state.seen_line {
            return None;
        }
        state.seen_line = line.clone();
        (!line.is_empty()).then_some(line)
    }

    /// Forgets typing indicators that were not repeated in time.
    pub fn expire_typing(&mut self) {
        let now = Instant::now();
        for state in self.rooms.values_mut() {
            state.typing.retain(|_, until| *until > now);
        }
    }
}

/// What the user's input brings: a whole line, or part of one (they are
/// typing).
pub enum Typed {
    Line(String),
    Partial,
}

/// Standard input read in pieces, so input that arrives before Enter can
/// count as typing.
pub struct TypedInput<R> {
    input: R,
    buffer: Vec<u8>,
    lines: std::collections::VecDeque<String>,
    is_closed: bool,
}

impl<R: AsyncRead + Unpin> TypedInput<R> {
    pub fn new(input: R) -> Self {
        Self {
            input,
            buffer: Vec::new(),
            lines: Default::default(),
            is_closed: false,
        }
    }

    /// The next line or partial input; `None` at the end of input.
    /// Cancel-safe: a `read` that did not finish lost nothing.
    pub async fn next(&mut self) -> std::io::Result<Option<Typed>> {
        loop {
            if let Some(line) = self.lines.pop_front() {
                return Ok(Some(Typed::Line(line)));
            }
            if self.is_closed {
                return Ok(None);
            }
            let mut chunk = [0u8; 4096];
            let read = self.input.read(&mut chunk).await?;
            if read == 0 {
                self.is_closed = true;
                if !self.buffer.is_empty() {
                    let rest = std::mem::take(&mut self.buffer);
                    self.lines
                        .push_back(String::from_utf8_lossy(&rest).into_owned());
                }
                continue;
            }
            self.buffer.extend_from_slice(&chunk[..read]);
            while let Some(at) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=at).collect();
                let line = String::from_utf8_lossy(&line[..at]);
                self.lines.push_back(line.trim_end_matches('\r').to_owned());
            }
            if self.lines.is_empty() {
                return Ok(Some(Typed::Partial));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn input_comes_as_lines_and_partial_typing() -> anyhow::Result<()> {
        let (mut writer, reader) = tokio::io::duplex(64);
        let mut input = TypedInput::new(reader);
        use tokio::io::AsyncWriteExt;
        writer.write_all(b"hel").await?;
        assert!(matches!(input.next().await?, Some(Typed::Partial)));
        writer.write_all(b"lo\nsecond\r\nthi").await?;
        assert!(matches!(input.next().await?, Some(Typed::Line(l)) if l == "hello"));
        assert!(matches!(input.next().await?, Some(Typed::Line(l)) if l == "second"));
        drop(writer);
        assert!(matches!(input.next().await?, Some(Typed::Line(l)) if l == "thi"));
        assert!(input.next().await?.is_none());
        Ok(())
    }

    #[test]
    fn receipts_report_only_what_arrived_and_respect_the_setting() {
        let room = RoomId(1);
        let mut on = Signals::new("bob", Settings::default());
        assert!(on.due_receipts().is_empty());
        on.stored(room, 4, false);
        assert!(on.due_receipts().is_empty(), "own messages are no news");
        on.stored(room, 5, true);
        on.seen(room, 7);
        assert_eq!(on.due_receipts(), vec![room]);
        assert_eq!(on.rooms[&room].read, 5, "read never exceeds delivered");
        let off = Settings {
            read_receipts: false,
            typing: true,
        };
        let mut off = Signals::new("bob", off);
        off.stored(room, 5, true);
        off.seen(room, 5);
        off.room(room).sent = (5, 0);
        assert!(off.due_receipts().is_empty(), "nothing but read changed");
    }

    #[test]
    fn seen_by_lists_readers_of_the_newest_message_once() {
        let room = RoomId(1);
        let mut signals = Signals::new("bob", Settings::default());
        signals.stored(room, 9, false);
        let state = signals.room(room);
        state.read_by.insert("carol".into(), 9);
        state.read_by.insert("alice".into(), 9);
        state.read_by.insert("dave".into(), 8);
        assert_eq!(
            signals.seen_line(room).as_deref(),
            Some("seen by alice, carol")
        );
        assert_eq!(signals.seen_line(room), None, "printed once");
        signals.stored(room, 10, true);
        assert_eq!(signals.seen_line(room), None, "no one read the new one");
    }

    #[test]
    fn an_older_receipt_never_lowers_what_a_user_read() {
        let room = RoomId(1);
        let mut signals = Signals::new("bob", Settings::default());
        signals.stored(room, 9, false);
        let state = signals.room(room);
        state.read_up_to("alice", 9);
        // A kept receipt from an hour ago, replayed after the newer one.
        state.read_up_to("alice", 4);
        assert_eq!(state.read_by["alice"], 9);
        assert_eq!(signals.seen_line(room).as_deref(), Some("seen by alice"));
        let state = signals.room(room);
        state.read_up_to("alice", 12);
        assert_eq!(state.read_by["alice"], 12);
        state.read_up_to("alice", u64::MAX);
        assert_eq!(state.read_by["alice"], i64::MAX);
    }
}
