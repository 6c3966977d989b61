//! Reading and writing one conversation over a `Link`: load the room's log
//! from the start (so keys and sending state are recovered from it), turn
//! entries into what the user sees, and post sealed messages.

use std::time::Duration;

use anyhow::{Context, bail};

use super::account::Account;
use super::api::Room;
use super::conversation::{Conversation, Shown};
use super::link::{Event, Link};
use crate::crypto::envelope::Payload;
use crate::protocol::b64;

/// How long to wait for the server during a one-shot command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects, reads `room` from its first visible entry to now, and returns
/// the live link with everything read so far, keeping nothing: the
/// stateless full replay. The commands read through the store instead
/// (`store::sync`), which must give the same result; tests use this as
/// the reference.
pub async fn load(
    account: &mut Account,
    room: &Room,
) -> anyhow::Result<(Link, Conversation, Vec<Shown>)> {
    let token = account.api.token().context("not logged in")?.to_owned();
    let mut link = Link::start(account.api.server(), token);
    link.follow(room.id, 0).await;
    let mut conversation = Conversation::new(room.id, account.username(), account.device.id());
    let mut shown = Vec::new();
    loop {
        match next_event(&mut link).await? {
            Event::Entry(entry) if entry.room == room.id => {
                shown.push(
                    conversation
                        .process(&entry, &account.identity, &mut account.directory)
                        .await,
                );
            }
            Event::Synced { room: synced, .. } if synced == room.id => break,
            Event::Error { code, message } => bail!("the server refused: {message} ({code})"),
            Event::Unauthorized => bail!("the server refused our session"),
            _ => {}
        }
    }
    Ok((link, conversation, shown))
}

/// Waits for the link's next event, failing after `COMMAND_TIMEOUT`.
pub async fn next_event(link: &mut Link) -> anyhow::Result<Event> {
    match tokio::time::timeout(COMMAND_TIMEOUT, link.events.recv()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => bail!("the connection ended"),
        Err(_) => bail!("the server did not answer within {COMMAND_TIMEOUT:?}"),
    }
}

/// Seals `payload` for the room's current members and posts it as
/// `client_id` (after a new sender-key distribution, under a fresh id, when
/// needed). Returns the client ids posted, in order; the last one is
/// `client_id`.
pub async fn post(
    account: &mut Account,
    link: &Link,
    conversation: &mut Conversation,
    room: &Room,
    payload: &Payload,
    client_id: &str,
) -> anyhow::Result<Vec<String>> {
    let members = account
        .api
        .room(room.id)
        .await
        .context("reading the room's members")?
        .members;
    let outgoing = conversation
        .seal(
            payload,
            &members,
            room.is_dm(),
            &account.identity,
            &mut account.directory,
        )
        .await?;
    for user in &outgoing.left_out {
        eprintln!(
            "hush: not sending to {user}: their key changed without a valid rotation (see `hush keys trust {user}`)"
        );
    }
    let mut ids = Vec::new();
    let count = outgoing.bodies.len();
    for (i, body) in outgoing.bodies.into_iter().enumerate() {
        let is_message = i + 1 == count;
        let id = if is_message {
            client_id.to_owned()
        } else {
            new_client_id()
        };
        // A delete asks the server to erase its target with it (§21).
        let erase = match payload {
            Payload::Delete { of } if is_message => Some(*of),
            _ => None,
        };
        link.send_erasing(room.id, id.clone(), b64::encode(&body), erase)
            .await;
        ids.push(id);
    }
    Ok(ids)
}

/// Waits until every id in `pending` is acknowledged; returns the message's seq.
pub async fn await_acks(link: &mut Link, mut pending: Vec<String>) -> anyhow::Result<i64> {
    let mut last_seq = 0;
    while !pending.is_empty() {
        match next_event(link).await? {
            Event::Acked { client_id, seq, .. } if pending.contains(&client_id) => {
                last_seq = last_seq.max(seq);
                pending.retain(|id| *id != client_id);
            }
            Event::SendFailed { code, message, .. } => {
                bail!("the server refused the message: {message} ({code})")
            }
            Event::Unauthorized => bail!("the server refused our session"),
            _ => {}
        }
    }
    Ok(last_seq)
}

/// 16 random bytes in hex: unique per message, so a resend is recognised.
pub fn new_client_id() -> String {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).expect("the OS random source works");
    raw.iter().map(|b| format!("{b:02x}")).collect()
}
