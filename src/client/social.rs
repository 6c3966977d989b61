//! The client side of PROTOCOL §21's social parts: blocking, message
//! requests, declining invitations, room admins, and the settings command.
//!
//! What the user sees:
//! - Messages of a user you block are **omitted** from `hush read` (text
//!   and `--json`) and `hush chat`: new ones are not even decrypted (the
//!   room's position moves past them; sender-key distributions are still
//!   read, so what they send after an unblock opens), and ones read before
//!   the block stay in the local store but are not printed while the block
//!   lasts. Their membership events are shown as usual.
//! - A DM request (a DM opened by someone you share no room with) is not
//!   read at all until you accept it: `hush read --room ID` and `hush chat`
//!   print only "USER wants to message you — hush accept ROOM / hush
//!   decline ROOM / hush block USER" (`--json`: one line of kind
//!   `request`). Naming the requester (`read --with USER`, `send --to
//!   USER`, `/dm USER`) opens the DM, which accepts the request.

use std::collections::HashSet;

use anyhow::{Context, bail};
use serde_json::json;

use super::account::{find_room, require_user};
use super::api::{Api, Room};
use super::conversation::Shown;
use super::keystore::KeyStore;
use super::settings::Settings;
use crate::cli::{OnOff, RoomCommand, Setting, SocialCommand};
use crate::crypto::wire::{BodyKind, body_kind};
use crate::protocol::{WireEntry, b64};
use crate::store::RoomId;

pub async fn run(command: &SocialCommand) -> anyhow::Result<()> {
    let opts = command.opts();
    let user = require_user(opts)?;
    let keys = KeyStore::new(&opts.keys_dir);
    if let SocialCommand::Settings { setting, value, .. } = command {
        return settings_command(&keys, &user, *setting, *value);
    }
    let api = super::commands::session_api(opts, &keys, &user).await?;
    match command {
        SocialCommand::Block { peer, .. } => {
            api.block(peer)
                .await
                .with_context(|| format!("blocking {peer}"))?;
            println!(
                "blocked {peer}: they cannot open a DM with you, invite you or message you in your DM; their messages in shared rooms are hidden"
            );
        }
        SocialCommand::Unblock { peer, .. } => {
            api.unblock(peer)
                .await
                .with_context(|| format!("unblocking {peer}"))?;
            println!("unblocked {peer}");
        }
        SocialCommand::Blocked { .. } => {
            let blocked = api.blocks().await?;
            if blocked.is_empty() {
                println!("you block no one");
            }
            for peer in blocked {
                println!("{peer}");
            }
        }
        SocialCommand::Requests { .. } => {
            let requests: Vec<Room> = api
                .rooms()
                .await?
                .into_iter()
                .filter(|r| r.request)
                .collect();
            let invitations = api.invitations().await?;
            if requests.is_empty() && invitations.is_empty() {
                println!("no message requests or invitations");
            }
            for room in &requests {
                println!("{:>5}  {}", room.id.0, request_sentence(room, &user));
            }
            for invitation in invitations {
                let id = invitation.room.0;
                println!(
                    "{id:>5}  {} invited you to #{} — hush accept {id} / hush decline {id}",
                    invitation.invited_by,
                    invitation.name.as_deref().unwrap_or("?"),
                );
            }
        }
        SocialCommand::Accept { room, .. } => match pending(&api, &user, room).await? {
            Pending::Request(found) => {
                let accepted = api.accept(found.id).await?;
                println!(
                    "accepted {}: `hush read --room {}` shows what they sent",
                    accepted.label(&user),
                    accepted.id.0
                );
            }
            Pending::Invitation(id, _) => {
                let joined = api.join(id).await?;
                println!("joined {} (id {})", joined.label(&user), joined.id.0);
            }
        },
        SocialCommand::Decline { room, .. } => match pending(&api, &user, room).await? {
            Pending::Request(found) => {
                api.decline(found.id).await?;
                println!(
                    "declined the request from {}: they are not told; you get nothing more from it unless you accept",
                    peer_of(&found, &user)
                );
            }
            Pending::Invitation(id, name) => {
                api.decline(id).await?;
                println!("declined the invitation to #{name}");
            }
        },
        SocialCommand::Settings { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// `hush settings [receipts|typing] [on|off]`.
fn settings_command(
    keys: &KeyStore,
    user: &str,
    setting: Option<Setting>,
    value: Option<OnOff>,
) -> anyhow::Result<()> {
    let mut current = Settings::load(keys.dir(), user)?;
    let on_off = |on: bool| if on { "on" } else { "off" };
    match (setting, value) {
        (None, _) => {
            println!("receipts {}", on_off(current.read_receipts));
            println!("typing {}", on_off(current.typing));
        }
        (Some(setting), None) => {
            let on = match setting {
                Setting::Receipts => current.read_receipts,
                Setting::Typing => current.typing,
            };
            println!("{} {}", setting_name(setting), on_off(on));
        }
        (Some(setting), Some(value)) => {
            let on = value == OnOff::On;
            match setting {
                Setting::Receipts => current.read_receipts = on,
                Setting::Typing => current.typing = on,
            }
            let path = current.save(keys.dir(), user)?;
            println!(
                "{} {} (saved in {})",
                setting_name(setting),
                on_off(on),
                path.display()
            );
        }
    }
    Ok(())
}

fn setting_name(setting: Setting) -> &'static str {
    match setting {
        Setting::Receipts => "receipts",
        Setting::Typing => "typing",
    }
}

enum Pending {
    Request(Room),
    Invitation(RoomId, String),
}

/// The request or invitation `name` designates: a room id, a room name
/// (invitations), or `@USER` (a request from USER).
async fn pending(api: &Api, me: &str, name: &str) -> anyhow::Result<Pending> {
    let rooms = api.rooms().await?;
    let wanted = name.trim_start_matches('#');
    let request = rooms.into_iter().filter(|r| r.request).find(|r| {
        r.id.0.to_string() == wanted || name.strip_prefix('@') == Some(peer_of(r, me).as_str())
    });
    if let Some(room) = request {
        return Ok(Pending::Request(room));
    }
    let invitation = api.invitations().await?.into_iter().find(|i| {
        i.room.0.to_string() == wanted
            || (i.name.as_deref() == Some(wanted) && !name.starts_with('@'))
    });
    match invitation {
        Some(i) => Ok(Pending::Invitation(
            i.room,
            i.name.unwrap_or_else(|| "?".into()),
        )),
        None => bail!("no message request or invitation {name:?} (see `hush requests`)"),
    }
}

/// The other member of a DM.
fn peer_of(room: &Room, me: &str) -> String {
    room.members
        .iter()
        .find(|m| *m != me)
        .cloned()
        .unwrap_or_else(|| room.creator.clone())
}

/// What a DM request shows instead of its content.
pub fn request_sentence(room: &Room, me: &str) -> String {
    let peer = peer_of(room, me);
    let id = room.id.0;
    format!(
        "{peer} wants to message you — hush accept {id} / hush decline {id} / hush block {peer}"
    )
}

/// `hush read` of a request: the sentence (or one JSON line), nothing else.
pub fn print_request(room: &Room, me: &str, is_json: bool) {
    let text = request_sentence(room, me);
    if is_json {
        println!(
            "{}",
            json!({"room": room.id.0, "kind": "request", "by": peer_of(room, me), "text": text})
        );
    } else {
        println!("* {text}");
    }
}

/// The users this account blocks, for hiding their messages. A server
/// that does not know blocks (older than §21) blocks no one.
pub async fn load_blocked(api: &Api) -> HashSet<String> {
    match api.blocks().await {
        Ok(list) => list.into_iter().collect(),
        Err(err) if err.status() == Some(404) => HashSet::new(),
        Err(err) => {
            eprintln!("hush: could not read your block list ({err}); nothing is hidden");
            HashSet::new()
        }
    }
}

/// Whether an entry is a message (not a key distribution) from a user
/// this account blocks: it is passed over without being decrypted.
pub fn is_from_blocked(entry: &WireEntry, blocked: &HashSet<String>) -> bool {
    entry.kind == "message"
        && blocked.contains(&entry.sender)
        && entry
            .body
            .as_deref()
            .and_then(|b| b64::decode(b).ok())
            .is_some_and(|body| !matches!(body_kind(&body), Ok(BodyKind::SenderKeyDistribution)))
}

/// Whether an item read earlier is hidden now: a message (or a rejected
/// or unsupported one) from a user this account blocks.
pub fn hides(item: &Shown, blocked: &HashSet<String>) -> bool {
    match item {
        Shown::Message { sender, .. }
        | Shown::Unsupported { sender, .. }
        | Shown::Rejected { sender, .. }
        | Shown::Relation { sender, .. } => blocked.contains(sender),
        Shown::Event { .. } | Shown::Quiet { .. } | Shown::Removed { .. } => false,
    }
}

/// The sentence for a `promote`, `demote` or `decline` entry.
pub fn event_sentence(entry: &WireEntry) -> String {
    let subject = entry.subject.as_deref().unwrap_or("someone");
    match entry.kind.as_str() {
        "promote" => format!("{} made {subject} an admin", entry.sender),
        "demote" => format!("{} removed {subject} as an admin", entry.sender),
        "decline" => format!("{} declined the invitation", entry.sender),
        other => format!("({other} event)"),
    }
}

/// `hush room admins|promote|demote`.
pub async fn room_admins(api: &Api, me: &str, command: &RoomCommand) -> anyhow::Result<()> {
    match command {
        RoomCommand::Admins { room } => {
            let found = find_room(api, room).await?;
            println!("creator: {}", found.creator);
            if found.admins.is_empty() {
                println!("admins: none");
            } else {
                println!("admins: {}", found.admins.join(", "));
            }
        }
        RoomCommand::Promote { room, member } => {
            let found = find_room(api, room).await?;
            api.promote(found.id, member).await?;
            println!("{member} is now an admin of {}", found.label(me));
        }
        RoomCommand::Demote { room, member } => {
            let found = find_room(api, room).await?;
            api.demote(found.id, member).await?;
            println!("{member} is no longer an admin of {}", found.label(me));
        }
        _ => unreachable!("only admin commands come here"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str, sender: &str, subject: Option<&str>) -> WireEntry {
        WireEntry {
            room: RoomId(1),
            seq: 5,
            ts: 0,
            kind: kind.into(),
            sender: sender.into(),
            subject: subject.map(str::to_owned),
            client_id: None,
            body: None,
            fingerprint: None,
            expires: None,
            ttl: None,
            reason: None,
        }
    }

    #[test]
    fn admin_and_decline_entries_read_as_sentences() {
        assert_eq!(
            event_sentence(&entry("promote", "alice", Some("bob"))),
            "alice made bob an admin"
        );
        assert_eq!(
            event_sentence(&entry("demote", "alice", Some("bob"))),
            "alice removed bob as an admin"
        );
        assert_eq!(
            event_sentence(&entry("decline", "carol", None)),
            "carol declined the invitation"
        );
    }

    #[test]
    fn only_messages_of_blocked_users_are_passed_over() {
        let blocked: HashSet<String> = ["mallory".to_owned()].into();
        let mut message = entry("message", "mallory", None);
        message.body = Some(b64::encode(b"HUSH\x02\x01rest"));
        assert!(is_from_blocked(&message, &blocked));
        let mut distribution = message.clone();
        distribution.body = Some(b64::encode(b"HUSH\x02\x02rest"));
        assert!(!is_from_blocked(&distribution, &blocked));
        assert!(!is_from_blocked(&entry("join", "mallory", None), &blocked));
        let mut from_bob = message.clone();
        from_bob.sender = "bob".into();
        assert!(!is_from_blocked(&from_bob, &blocked));
    }
}
