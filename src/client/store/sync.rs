//! Bringing one room of the store up to date over a `Link`: restore the
//! room's saved state, ask the server only for what follows its cursor,
//! judge each new entry as a full replay would, and save entries, state
//! and cursor together, a batch at a time (so a first read of a long room
//! that is interrupted keeps what it read).

use std::time::Duration;

use anyhow::{Context, bail};

use super::ClientStore;
use crate::client::account::Account;
use crate::client::api::Room;
use crate::client::conversation::{Conversation, Shown};
use crate::client::link::{Event, Link};
use crate::client::transcript::next_event;
use crate::protocol::WireEntry;
use crate::store::RoomId;

/// Entries saved per transaction while catching up.
const BATCH: usize = 2000;
/// Waits before trying again an entry whose sender's keys could not be
/// fetched.
const RETRY_AFTER: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// Judges one entry; one whose sender's keys could not be fetched (the
/// server busy, the network down) is tried again a few times, so a passing
/// failure is not kept as a rejection. If it still fails,
/// `conversation.was_unavailable()` says so and the result must not be
/// saved.
pub async fn judge(
    conversation: &mut Conversation,
    entry: &WireEntry,
    account: &mut Account,
) -> Shown {
    // Already judged (a link re-sent what was in flight when its follower
    // moved): the stored verdict stands, and nothing is shown or kept again.
    if entry.seq <= conversation.last_seq() {
        return Shown::Quiet { seq: entry.seq };
    }
    if crate::client::social::is_from_blocked(entry, &account.blocked) {
        return conversation.pass_over(entry);
    }
    let mut shown = conversation
        .process(entry, &account.identity, &mut account.directory)
        .await;
    for wait in RETRY_AFTER {
        if !conversation.was_unavailable() {
            break;
        }
        tokio::time::sleep(wait).await;
        shown = conversation
            .process(entry, &account.identity, &mut account.directory)
            .await;
    }
    shown
}

/// The room's conversation as the store left it (new if never read).
pub async fn restore(
    account: &Account,
    store: &ClientStore,
    room: RoomId,
) -> anyhow::Result<Conversation> {
    let (me, device) = (account.username(), account.device.id());
    match store.room_state(room).await? {
        Some(saved) => Conversation::restore(room, me, device, &saved),
        None => Ok(Conversation::new(room, me, device)),
    }
}

/// Connects and brings `room` up to date; returns the live link (still
/// following the room) and the conversation at the room's end.
pub async fn sync_room(
    account: &mut Account,
    store: &ClientStore,
    room: &Room,
) -> anyhow::Result<(Link, Conversation)> {
    let token = account.api.token().context("not logged in")?.to_owned();
    let mut link = Link::start(account.api.server(), token);
    let conversation = catch_up(&mut link, account, store, room).await?;
    Ok((link, conversation))
}

/// Follows `room` on `link` from the store's cursor and saves everything
/// up to the server's end of the room.
pub async fn catch_up(
    link: &mut Link,
    account: &mut Account,
    store: &ClientStore,
    room: &Room,
) -> anyhow::Result<Conversation> {
    let mut conversation = restore(account, store, room.id).await?;
    let is_new = conversation.last_seq() == 0;
    let label = room.label(account.username());
    link.follow(room.id, conversation.last_seq()).await;
    let mut batch: Vec<Shown> = Vec::new();
    let mut read = 0usize;
    loop {
        match next_event(link).await? {
            Event::Entry(entry) if entry.room == room.id => {
                let shown = judge(&mut conversation, &entry, account).await;
                if conversation.was_unavailable() {
                    // Keep what was judged; this entry and the rest are
                    // read again by the next command.
                    store
                        .save(room.id, &label, &conversation.save(), &batch)
                        .await?;
                    let reason = match shown {
                        Shown::Rejected { reason, .. } => reason,
                        _ => "the sender's keys could not be fetched".into(),
                    };
                    bail!(
                        "#{} could not be checked ({reason}); what came before it is saved, run the command again",
                        entry.seq
                    );
                }
                batch.push(shown);
                read += 1;
                if batch.len() >= BATCH {
                    store
                        .save(room.id, &label, &conversation.save(), &batch)
                        .await?;
                    batch.clear();
                }
            }
            Event::Synced { room: synced, .. } if synced == room.id => break,
            Event::Error { code, message } => bail!("the server refused: {message} ({code})"),
            Event::Unauthorized => bail!("the server refused our session"),
            _ => {}
        }
    }
    if read > 0 || is_new {
        store
            .save(room.id, &label, &conversation.save(), &batch)
            .await?;
    }
    Ok(conversation)
}
