//! `hush chat`: the interactive terminal client.
//!
//! Line-oriented so it works in any terminal and under `tmux`/scripts:
//! typing a line sends it to the current conversation; `/`-commands do the
//! rest. One `Link` carries every room; it reconnects by itself and resyncs
//! from the last entry seen. Lines typed while disconnected are kept and
//! sealed once the connection is back, each posted exactly once (the server
//! deduplicates resends by client id).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::account::Account;
use super::api::Room;
use super::commands::{Printer, file_payload};
use super::conversation::{Conversation, Shown};
use super::link::{Event, Link};
use super::transcript;
use crate::cli::ClientOpts;
use crate::crypto::envelope::Payload;
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
  /quit                leave hush chat
anything else is sent to the current conversation";

struct RoomView {
    room: Room,
    conversation: Conversation,
    shown: Vec<Shown>,
    unread: usize,
    is_synced: bool,
}

struct Chat {
    account: Account,
    link: Link,
    rooms: HashMap<RoomId, RoomView>,
    current: Option<RoomId>,
    is_online: bool,
    /// Lines typed while offline, sealed and sent once back online.
    typed_offline: VecDeque<(RoomId, Payload)>,
    /// Client ids handed to the link and not acknowledged yet.
    unacked: HashSet<String>,
    /// The user asked to leave; we leave once nothing waits.
    is_leaving: bool,
    /// When "N waiting to send" was last printed, and what it said.
    last_status: Option<(Instant, usize)>,
    printer: Printer,
}

/// How often the "N waiting to send" line may be printed.
const STATUS_EVERY: Duration = Duration::from_secs(1);

pub async fn run(opts: &ClientOpts) -> anyhow::Result<()> {
    let account = Account::open(opts).await?;
    let token = account.api.token().context("not logged in")?.to_owned();
    let link = Link::start(account.api.server(), token);
    let printer = Printer {
        json: false,
        save_dir: "downloads".into(),
        room: 0,
    };
    let mut chat = Chat {
        account,
        link,
        rooms: HashMap::new(),
        current: None,
        is_online: false,
        typed_offline: VecDeque::new(),
        unacked: HashSet::new(),
        is_leaving: false,
        last_status: None,
        printer,
    };
    for room in chat.account.api.rooms().await? {
        chat.add_room(room).await;
    }
    chat.current = chat.rooms.keys().min().copied();
    println!(
        "hush chat as {}. /help for commands.",
        chat.account.username()
    );
    chat.print_rooms();

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut is_input_open = true;
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        tokio::select! {
            line = lines.next_line(), if is_input_open => match line? {
                Some(line) => if !chat.handle_line(line.trim()).await { break },
                None => {
                    is_input_open = false;
                    if !chat.leave() { break }
                }
            },
            event = chat.link.events.recv() => match event {
                Some(event) => if !chat.handle_event(event).await { break },
                None => break,
            },
            _ = &mut interrupt => {
                chat.leave_now();
                break;
            }
        }
        if chat.is_leaving && chat.waiting() == 0 {
            println!("* all messages sent");
            break;
        }
    }
    chat.account.finish()
}

impl Chat {
    async fn add_room(&mut self, room: Room) {
        if self.rooms.contains_key(&room.id) {
            return;
        }
        self.link.follow(room.id, 0).await;
        let conversation =
            Conversation::new(room.id, self.account.username(), self.account.device.id());
        self.rooms.insert(
            room.id,
            RoomView {
                room,
                conversation,
                shown: Vec::new(),
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
                let shown = view
                    .conversation
                    .process(&entry, &self.account.identity, &mut self.account.directory)
                    .await;
                let is_current = Some(entry.room) == self.current;
                if view.is_synced && !matches!(shown, Shown::Quiet { .. }) {
                    if is_current {
                        let _ = self.printer.print(&shown);
                    } else {
                        view.unread += 1;
                        println!(
                            "[{}: new message]",
                            view.room.label(self.account.username())
                        );
                    }
                }
                view.shown.push(shown);
                self.account.print_notices();
            }
            Event::Synced { room, .. } => {
                if let Some(view) = self.rooms.get_mut(&room)
                    && !view.is_synced
                {
                    view.is_synced = true;
                    if Some(room) == self.current {
                        self.show_recent(room, 20);
                    }
                    self.flush_offline().await;
                }
            }
            Event::Connected { resumed } => {
                self.is_online = true;
                if resumed {
                    println!("* reconnected");
                }
                self.flush_offline().await;
            }
            Event::Disconnected { reason } => {
                if self.is_online {
                    println!("* disconnected ({reason}); reconnecting…");
                }
                self.is_online = false;
            }
            Event::Acked { client_id, .. } => {
                if self.unacked.remove(&client_id) {
                    self.show_waiting();
                }
            }
            Event::SendFailed {
                client_id,
                code,
                message,
            } => {
                self.unacked.remove(&client_id);
                println!("! not sent: {message} ({code})");
            }
            Event::Presence { user, online } => {
                println!("* {user} is {}", if online { "online" } else { "offline" })
            }
            Event::Online { users, .. } => println!("* online: {}", users.join(", ")),
            Event::Invited { room, by } => {
                println!("* {by} invited you to room {} — /join {}", room.0, room.0)
            }
            Event::History { .. } => {}
            Event::Error { code, message } => println!("! {message} ({code})"),
            Event::Unauthorized => {
                println!("! the server refused our session; log in again");
                return false;
            }
        }
        true
    }

    /// Messages typed and not yet acknowledged by the server.
    fn waiting(&self) -> usize {
        self.unacked.len() + self.typed_offline.len()
    }

    /// `/quit` or end of input: false to leave now. With messages waiting,
    /// the first asks to wait for them; a second `/quit` leaves anyway.
    fn leave(&mut self) -> bool {
        let waiting = self.waiting();
        if waiting == 0 {
            return false;
        }
        if self.is_leaving {
            self.leave_now();
            return false;
        }
        self.is_leaving = true;
        println!(
            "* {waiting} waiting to send; leaving once they are sent (/quit again or Ctrl-C to leave now)"
        );
        true
    }

    /// Leaving with messages not yet acknowledged: say so plainly.
    fn leave_now(&self) {
        let waiting = self.waiting();
        if waiting > 0 {
            println!(
                "! leaving with {waiting} message(s) not confirmed by the server: they may not have been sent"
            );
        }
    }

    /// Prints "N waiting to send" at most once a second while anything
    /// waits beyond what is sent at once.
    fn show_waiting(&mut self) {
        let waiting = self.waiting();
        let is_due = self
            .last_status
            .is_none_or(|(at, shown)| at.elapsed() >= STATUS_EVERY && shown != waiting);
        if waiting > 1 && is_due {
            println!("* {waiting} waiting to send");
            self.last_status = Some((Instant::now(), waiting));
        } else if waiting == 0 && self.last_status.is_some_and(|(_, shown)| shown > 0) {
            self.last_status = Some((Instant::now(), 0));
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
            .collect();
        for shown in &visible[visible.len().saturating_sub(count)..] {
            let _ = self.printer.print(shown);
        }
    }

    /// Sends the queued lines, in order, for rooms that are online and
    /// caught up; lines for other rooms wait.
    async fn flush_offline(&mut self) {
        if !self.is_online {
            return;
        }
        let mut waiting = VecDeque::new();
        while let Some((room, payload)) = self.typed_offline.pop_front() {
            if !self.is_ready(room) || waiting.iter().any(|(r, _)| *r == room) {
                waiting.push_back((room, payload));
                continue;
            }
            if let Err(err) = self.post(room, &payload).await {
                println!("! could not send: {err:#}");
                waiting.push_back((room, payload));
            }
        }
        self.typed_offline = waiting;
    }

    /// Whether `room` has been read up to now, so its sending state (sender
    /// key, epoch, counter) is known; sealing before that could reuse an epoch.
    fn is_ready(&self, room: RoomId) -> bool {
        self.rooms.get(&room).is_some_and(|view| view.is_synced)
    }

    async fn post(&mut self, room: RoomId, payload: &Payload) -> anyhow::Result<()> {
        let view = self.rooms.get_mut(&room).context("not in that room")?;
        let ids = transcript::post(
            &mut self.account,
            &self.link,
            &mut view.conversation,
            &view.room,
            payload,
        )
        .await?;
        self.unacked.extend(ids);
        self.show_waiting();
        Ok(())
    }

    async fn send(&mut self, payload: Payload) {
        let Some(room) = self.current else {
            println!("! no conversation selected: /rooms, /go ROOM or /dm USER");
            return;
        };
        if !self.is_online {
            println!("* offline: will send when reconnected");
            self.typed_offline.push_back((room, payload));
            return;
        }
        if !self.is_ready(room) || self.typed_offline.iter().any(|(r, _)| *r == room) {
            println!("* still catching up: will send in a moment");
            self.typed_offline.push_back((room, payload));
            return;
        }
        if let Err(err) = self.post(room, &payload).await {
            println!("! {err:#}; will retry when reconnected");
            self.typed_offline.push_back((room, payload));
        }
        self.account.print_notices();
    }

    async fn switch_to(&mut self, room: Room) {
        let id = room.id;
        self.add_room(room).await;
        self.current = Some(id);
        if let Some(view) = self.rooms.get_mut(&id) {
            view.unread = 0;
        }
        self.show_recent(id, 20);
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
                    if !self.leave() {
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
