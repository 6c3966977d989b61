//! The scripting commands: `hush keys …`, `register`, `room …`, `send`,
//! `read`, `logout`. Each reads its secrets from the environment or a
//! prompt, does one thing and exits; errors carry context for the person
//! running them. Those that talk to the server as the user resume the
//! user's saved session (`session`) and log in only when there is none
//! the server takes.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::json;

use super::account::{
    Account, find_room, new_passphrase, open_identity, passphrase, password, require_user,
};
use super::api::{Api, ApiError, Room};
use super::conversation::{Shown, UNSUPPORTED_TEXT, mark_verified_now};
use super::device::known_devices;
use super::directory::Directory;
use super::keystore::{Identity, KeyStore};
use super::link::Event;
use super::outbox::{self, Outbox};
use super::relations::{MessageState, Relation, Removal, duration_words, parse_duration};
use super::session::{self, LoggedOut};
use super::store::{ClientStore, Window, search as store_search, sync};
use super::transcript;
use crate::cli::{
    ClientOpts, EditArgs, KeysCommand, ReactArgs, ReadArgs, RoomCommand, SearchArgs, SendArgs,
    SeqArgs, Target, TimerArgs,
};
use crate::crypto::device::DeviceId;
use crate::crypto::envelope::{MAX_EMOJI_BYTES, Payload, is_valid_reaction, safe_file_name};
use crate::crypto::keys::IdentityPrivateKey;
use crate::crypto::room_timer::{self, TimerStatement};
use crate::crypto::safety::SafetyNumber;
use crate::crypto::statements;
use crate::store::RoomId;

pub async fn keys(opts: &ClientOpts, command: &KeysCommand) -> anyhow::Result<()> {
    let store = KeyStore::new(&opts.keys_dir);
    match command {
        KeysCommand::New { user, bits } => {
            if !crate::crypto::wire::is_valid_username(user) {
                bail!("{user:?} is not a valid username (3-32 of a-z 0-9 _ . -)");
            }
            if store.has(user) {
                bail!("{user} already has a key in {}", store.dir().display());
            }
            let passphrase = new_passphrase(user)?;
            let key = generate(*bits).await?;
            let path = store.create(user, &key, &passphrase)?;
            println!(
                "{user}: {} ({} bits)",
                key.public().fingerprint(),
                key.public().bits()
            );
            println!(
                "saved to {} (mode 0600, encrypted with your passphrase)",
                path.display()
            );
        }
        KeysCommand::List => {
            let users = store.users()?;
            if users.is_empty() {
                println!("no identities in {}", store.dir().display());
            }
            for user in users {
                let file = store.key_file(&user)?;
                println!(
                    "{user:<20} {} ({} bits)",
                    file.public_key().fingerprint(),
                    file.public_key().bits()
                );
            }
        }
        KeysCommand::Show { user } => {
            let file = store.key_file(user)?;
            println!("{user}");
            println!("fingerprint: {}", file.public_key().fingerprint());
            println!("size:        {} bits", file.public_key().bits());
        }
        KeysCommand::Export { user, file } => {
            store.export(user, file)?;
            println!(
                "exported {user}'s keys to {} (still encrypted with the passphrase)",
                file.display()
            );
        }
        KeysCommand::Import { file } => {
            let user = store.import(file)?;
            println!("imported {user} into {}", store.dir().display());
        }
        KeysCommand::Rotate { bits } => rotate(opts, &store, *bits).await?,
        KeysCommand::Verify {
            peer,
            mark_verified,
        } => verify(opts, peer, *mark_verified).await?,
        KeysCommand::Trust { peer } => trust(opts, &store, peer).await?,
        KeysCommand::Devices => devices(opts).await?,
    }
    Ok(())
}

/// `hush keys devices`: every device id that sent under this user's name in
/// the rooms this client can read, with its last message, and which of them
/// belong to this key store. One the user does not recognise means their
/// identity key is used somewhere else.
async fn devices(opts: &ClientOpts) -> anyhow::Result<()> {
    let mut account = Account::open(opts).await?;
    let me = account.username().to_owned();
    let local = known_devices(account.keys.dir(), &me)?;
    let mut last_sent: std::collections::BTreeMap<DeviceId, i64> = Default::default();
    let store = open_store(&account).await?;
    for room in account.api.rooms().await? {
        sync::sync_room(&mut account, &store, &room).await?;
        for item in store.shown(room.id, Window::default()).await? {
            let (sender, device, ts) = match item {
                Shown::Message {
                    sender, device, ts, ..
                }
                | Shown::Unsupported {
                    sender, device, ts, ..
                } => (sender, device, ts),
                _ => continue,
            };
            if let Some(device) = device.filter(|_| sender == me) {
                let last = last_sent.entry(device).or_insert(ts);
                *last = (*last).max(ts);
            }
        }
    }
    let mut ids: Vec<DeviceId> = last_sent
        .keys()
        .copied()
        .chain(local.iter().copied())
        .collect();
    ids.sort();
    ids.dedup();
    println!("devices that sent as {me}:");
    for id in ids {
        let when = last_sent.get(&id).map_or_else(
            || "never sent".to_owned(),
            |ts| format!("last sent {}", format_time(*ts)),
        );
        let whose = if id == account.device.id() {
            "  (this key store, this run)"
        } else if local.contains(&id) {
            "  (this key store)"
        } else {
            ""
        };
        println!("  {}  {when}{whose}", id.short());
    }
    account.finish()
}

/// Generates a key on a worker thread, showing progress on stderr.
async fn generate(bits: usize) -> anyhow::Result<IdentityPrivateKey> {
    eprint!("generating a {bits}-bit RSA key ");
    let key = tokio::task::spawn_blocking(move || {
        IdentityPrivateKey::generate(bits, |_| {
            eprint!(".");
            let _ = std::io::stderr().flush();
        })
    })
    .await??;
    eprintln!(" done");
    Ok(key)
}

async fn rotate(opts: &ClientOpts, store: &KeyStore, bits: usize) -> anyhow::Result<()> {
    let user = require_user(opts)?;
    let passphrase = passphrase(&format!("Passphrase for {user}'s key: "))?;
    let identity = open_identity(store, &user, passphrase.clone()).await?;
    let api = logged_in(opts, store, &identity).await?;
    let new = generate(bits).await?;
    let old = &identity.current;
    let statement = statements::key_rotation(
        &user,
        &old.public().fingerprint().0,
        new.public().spki_der(),
    );
    let signature = old.sign(&statement)?;
    api.rotate_key(new.public().spki_der(), &signature)
        .await
        .context("publishing the new key")?;
    store.rotate(&identity, &new, &passphrase)?;
    println!("{user}: new key {}", new.public().fingerprint());
    println!(
        "the old key {} is kept to read earlier messages",
        old.public().fingerprint()
    );
    Ok(())
}

async fn verify(opts: &ClientOpts, peer: &str, mark_verified: bool) -> anyhow::Result<()> {
    let user = require_user(opts)?;
    let store = KeyStore::new(&opts.keys_dir);
    let mine = store.key_file(&user)?.public_key().clone();
    let api = session_api(opts, &store, &user).await?;
    let mut directory = Directory::new(api, store.load_trust(&user)?);
    let found = directory.peer(peer).await?;
    for notice in directory.take_notices() {
        eprintln!("hush: {notice}");
    }
    let Some(theirs) = found.usable else {
        store.save_trust(&user, directory.trust_store())?;
        bail!(
            "{peer}'s key changed without a valid rotation; compare the new key with them, then `hush keys trust {peer}`"
        );
    };
    println!("{user}: {}", mine.fingerprint());
    println!("{peer}: {}", theirs.fingerprint());
    println!("safety number (the same on both sides):");
    for line in SafetyNumber::for_keys((&user, &mine), (peer, &theirs)).to_lines() {
        println!("    {line}");
    }
    if mark_verified {
        directory
            .trust_store_mut()
            .mark_verified(peer, &theirs.fingerprint())?;
        println!("{peer} is now marked verified");
    } else if found.is_verified {
        println!("{peer} is marked verified");
    } else {
        println!("compare it with {peer}, then run `hush keys verify {peer} --mark-verified`");
    }
    store.save_trust(&user, directory.trust_store())?;
    Ok(())
}

async fn trust(opts: &ClientOpts, store: &KeyStore, peer: &str) -> anyhow::Result<()> {
    let user = require_user(opts)?;
    let api = session_api(opts, store, &user).await?;
    let mut directory = Directory::new(api, store.load_trust(&user)?);
    let found = directory.peer(peer).await?;
    let key = found
        .blocked_key
        .or(found.usable)
        .context("no key to trust")?;
    directory.trust_store_mut().trust(peer, &key);
    store.save_trust(&user, directory.trust_store())?;
    println!("now trusting {peer}'s key {}", key.fingerprint());
    Ok(())
}

/// Opens `user`'s identity (the passphrase from the environment or a
/// prompt) and returns a logged-in client for the server.
pub(crate) async fn session_api(
    opts: &ClientOpts,
    store: &KeyStore,
    user: &str,
) -> anyhow::Result<Api> {
    let passphrase = passphrase(&format!("Passphrase for {user}'s key: "))?;
    let identity = open_identity(store, user, passphrase).await?;
    logged_in(opts, store, &identity).await
}

/// The saved session of `identity` on the server, or a login with the
/// password from the environment or a prompt.
async fn logged_in(
    opts: &ClientOpts,
    store: &KeyStore,
    identity: &Identity,
) -> anyhow::Result<Api> {
    session::resume_or_login(&opts.server, store, identity, || {
        password(&identity.username)
    })
    .await
}

/// `hush logout`: ends the saved session on the server and deletes it from
/// the key store; if the server cannot be told, deletes it anyway and says so.
pub async fn logout(opts: &ClientOpts) -> anyhow::Result<()> {
    let user = require_user(opts)?;
    let store = KeyStore::new(&opts.keys_dir);
    let passphrase = passphrase(&format!("Passphrase for {user}'s key: "))?;
    let identity = open_identity(&store, &user, passphrase).await?;
    let server = &opts.server;
    match session::logout(server, &store, &identity).await? {
        LoggedOut::NoSession => println!("{user} has no saved session for {server}"),
        LoggedOut::UnreadableDeleted => println!(
            "deleted {user}'s session file, which did not open; a session it held ends when it expires"
        ),
        LoggedOut::Ended => println!("logged {user} out of {server}; the saved session is deleted"),
        LoggedOut::LocalOnly { reason, expires_at } => {
            match reason {
                ApiError::Unreachable(err) => eprintln!("hush: could not reach the server ({err})"),
                _ => eprintln!("hush: the server did not end the session ({reason})"),
            }
            println!(
                "deleted {user}'s saved session for {server}; on the server it stays valid until {} UTC",
                format_time(expires_at)
            );
        }
    }
    Ok(())
}

pub async fn register(opts: &ClientOpts, invite: Option<&str>) -> anyhow::Result<()> {
    let user = require_user(opts)?;
    let store = KeyStore::new(&opts.keys_dir);
    let identity = store.open(
        &user,
        &passphrase(&format!("Passphrase for {user}'s key: "))?,
    )?;
    let password = password(&user)?;
    let key = &identity.current;
    let mut signing_error = None;
    let reply = Api::new(&opts.server)
        .register(
            &user,
            &password,
            key.public().spki_der(),
            invite,
            |message| {
                key.sign(message).unwrap_or_else(|e| {
                    signing_error = Some(e);
                    Vec::new()
                })
            },
        )
        .await;
    if let Some(err) = signing_error {
        bail!("signing the registration proof failed: {err}");
    }
    let reply = reply.context("registering")?;
    println!(
        "registered {} with key {}",
        reply.username,
        key.public().fingerprint()
    );
    Ok(())
}

pub async fn room(opts: &ClientOpts, command: &RoomCommand) -> anyhow::Result<()> {
    let user = require_user(opts)?;
    let api = session_api(opts, &KeyStore::new(&opts.keys_dir), &user).await?;
    match command {
        RoomCommand::Create { name } => {
            let room = api.create_room(name).await?;
            println!("created #{name} (id {})", room.id.0);
        }
        RoomCommand::Invite { room, member } => {
            let found = find_room(&api, room).await?;
            api.invite(found.id, member).await?;
            println!("invited {member} to {}", found.label(&user));
        }
        RoomCommand::Join { room } => {
            let invitations = api.invitations().await?;
            let name = room.trim_start_matches('#');
            let id = invitations
                .iter()
                .find(|i| i.name.as_deref() == Some(name) || i.room.0.to_string() == name)
                .map(|i| i.room)
                .with_context(|| format!("no invitation to {room:?} (see `hush room list`)"))?;
            let joined = api.join(id).await?;
            println!("joined {} (id {})", joined.label(&user), joined.id.0);
        }
        RoomCommand::Leave { room } => {
            let found = find_room(&api, room).await?;
            api.leave(found.id).await?;
            println!("left {}", found.label(&user));
        }
        RoomCommand::Remove { room, member } => {
            let found = find_room(&api, room).await?;
            api.remove(found.id, member).await?;
            println!("removed {member} from {}", found.label(&user));
        }
        RoomCommand::Admins { .. } | RoomCommand::Promote { .. } | RoomCommand::Demote { .. } => {
            super::social::room_admins(&api, &user, command).await?
        }
        RoomCommand::List => {
            for room in api.rooms().await? {
                let kind = if room.is_dm() { "dm" } else { "room" };
                println!(
                    "{:>5}  {kind:<4}  {:<24} {}",
                    room.id.0,
                    room.label(&user),
                    room.members.join(", ")
                );
            }
            for invitation in api.invitations().await? {
                let name = invitation.name.as_deref().unwrap_or("?");
                println!(
                    "{:>5}  invited to #{name} by {}",
                    invitation.room.0, invitation.invited_by
                );
            }
        }
    }
    Ok(())
}

pub async fn send(opts: &ClientOpts, args: &SendArgs) -> anyhow::Result<()> {
    let payload = match (&args.file, args.text.as_deref()) {
        (Some(path), _) => file_payload(path)?,
        (None, Some("-")) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            Payload::text(text.trim_end_matches('\n'))
        }
        (None, Some(text)) => Payload::text(text),
        (None, None) => bail!("give the text to send, `-` for standard input, or --file PATH"),
    };
    let payload = match args.reply {
        Some(seq) if seq < 1 => bail!("--reply takes a message's #seq (1 or more)"),
        Some(seq) => payload.replying_to(seq),
        None => payload,
    };
    deliver(opts, &args.target, payload).await
}

/// `hush edit SEQ TEXT`: the whole new text of one of the user's own text
/// messages.
pub async fn edit(opts: &ClientOpts, args: &EditArgs) -> anyhow::Result<()> {
    let text = if args.text == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        text.trim_end_matches('\n').to_owned()
    } else {
        args.text.clone()
    };
    if text.trim().is_empty() {
        bail!(
            "the new text is empty; to remove the message, use `hush delete {}`",
            args.seq
        );
    }
    let payload = Payload::Edit { of: args.seq, text };
    deliver(opts, &args.target, payload).await
}

/// `hush delete SEQ`: deletes one of the user's own messages for everyone
/// (the server erases it in the same `send`).
pub async fn delete(opts: &ClientOpts, args: &SeqArgs) -> anyhow::Result<()> {
    deliver(opts, &args.target, Payload::Delete { of: args.seq }).await
}

/// `hush react SEQ EMOJI`: sets the user's reaction, or takes it back if it
/// is already that emoji.
pub async fn react(opts: &ClientOpts, args: &ReactArgs) -> anyhow::Result<()> {
    if args.emoji.is_empty() || !is_valid_reaction(&args.emoji) {
        bail!("a reaction is 1 to {MAX_EMOJI_BYTES} bytes of text without control characters");
    }
    let payload = Payload::React {
        of: args.seq,
        emoji: args.emoji.clone(),
    };
    deliver(opts, &args.target, payload).await
}

/// Checks a relation against the room as this machine has read it (after
/// a sync): the target must be a message, the user's own for an edit
/// (a text) or a delete; a reaction the user already has is taken back.
/// The readers check all of it again: this only spares sending what they
/// would reject or ignore.
pub fn prepare_relation(
    me: &str,
    target: Option<&Shown>,
    payload: Payload,
) -> anyhow::Result<Payload> {
    let Some(of) = payload.relation_target() else {
        return Ok(payload);
    };
    let Some(Shown::Message {
        sender,
        payload: target_payload,
        state,
        ..
    }) = target
    else {
        bail!("#{of} is not a message you can see here (deleted, expired, or not a message)");
    };
    match payload {
        Payload::Edit { .. } if sender != me => {
            bail!("#{of} is {sender}'s message: you can only edit your own")
        }
        Payload::Edit { .. } if !matches!(target_payload, Payload::Text { .. }) => {
            bail!("#{of} is a file: only text can be edited")
        }
        Payload::Delete { .. } if sender != me => {
            bail!("#{of} is {sender}'s message: you can only delete your own")
        }
        Payload::React { of, emoji } if state.reactions.get(me) == Some(&emoji) => {
            Ok(Payload::React {
                of,
                emoji: String::new(),
            })
        }
        other => Ok(other),
    }
}

/// Sends `payload` to the conversation `target` names, through the outbox
/// (what an earlier run left there goes first), and says its #seq.
async fn deliver(opts: &ClientOpts, target: &Target, payload: Payload) -> anyhow::Result<()> {
    let mut account = Account::open(opts).await?;
    let room = account.resolve(target).await?;
    let payload = match payload.relation_target() {
        None => payload,
        Some(of) => {
            let store = open_store(&account).await?;
            let (link, _) = sync::sync_room(&mut account, &store, &room).await?;
            drop(link);
            let shown = store.entry(room.id, of).await?;
            let prepared = prepare_relation(account.username(), shown.as_ref(), payload);
            store.close().await;
            prepared?
        }
    };
    let user = account.username().to_owned();
    let mut outbox = outbox::open_for(&account)?;
    if !outbox.is_durable() {
        eprintln!(
            "hush: another hush of {user} holds the outbox ({}): this message is not kept if it cannot be sent now",
            outbox.path().display()
        );
    }
    if let Some((count, aside)) = outbox.unreadable() {
        eprintln!(
            "hush: {count} record(s) of the outbox could not be opened with this identity; a copy is kept in {}",
            aside.display()
        );
    }
    let left = outbox.len();
    let payload_kind = payload.clone();
    let client_id = outbox
        .add(room.id, payload)
        .context("keeping the message in the outbox")?;
    let result = match open_store(&account).await {
        Ok(store) => send_outbox(&mut account, &store, &mut outbox, &room).await,
        Err(err) => Err(err),
    };
    account.finish()?;
    let answers = match result {
        Ok(answers) => answers,
        Err(err) if outbox.is_durable() && !outbox.is_empty() => {
            let kept = outbox.len();
            return Err(err.context(format!(
                "{kept} message(s) kept in the outbox; they will be sent the next time you run hush chat or hush send as {user}"
            )));
        }
        Err(err) => return Err(err),
    };
    if left > 0 {
        eprintln!("hush: {left} message(s) left in the outbox by an earlier run went first");
    }
    for (id, answer) in &answers {
        if let (false, Err(reason)) = (*id == client_id, answer) {
            eprintln!("hush: the server refused a message left in the outbox: {reason}");
        }
    }
    match answers.get(&client_id) {
        Some(Ok(seq)) => {
            println!(
                "{} {} as #{seq}",
                what_was_sent(&payload_kind),
                room.label(&user)
            );
            Ok(())
        }
        Some(Err(reason)) => bail!("the server refused the message: {reason}"),
        None => bail!("the server did not acknowledge the message"),
    }
}

/// `hush timer DURATION`: sets the conversation's disappearing-messages
/// timer with a statement signed by the user's key (PROTOCOL §21). The
/// server checks its own minimum and the 4-week maximum.
pub async fn timer(opts: &ClientOpts, args: &TimerArgs) -> anyhow::Result<()> {
    let ttl = parse_duration(&args.duration).with_context(|| {
        format!(
            "{:?} is not a duration: off, 5m, 1h, 8h, 1d, 1w, 4w or <N>s",
            args.duration
        )
    })?;
    if ttl > room_timer::MAX_DURATION_SECS {
        bail!("the longest timer is 4 weeks");
    }
    let mut account = Account::open(opts).await?;
    let room = account.resolve(&args.target).await?;
    let store = open_store(&account).await?;
    // The statement names the newest entry the user has seen.
    let (link, conversation) = sync::sync_room(&mut account, &store, &room).await?;
    drop(link);
    store.close().await;
    let statement = TimerStatement {
        room: room.id.0,
        sender: account.username().to_owned(),
        duration_secs: ttl,
        after: u64::try_from(conversation.last_seq()).unwrap_or(0),
    };
    let body = room_timer::sign(&statement, &account.identity.current)
        .context("signing the timer change")?;
    account
        .api
        .set_timer(room.id, &body)
        .await
        .context("setting the timer")?;
    let label = room.label(account.username());
    account.finish()?;
    if ttl == 0 {
        println!("turned off disappearing messages in {label}");
    } else {
        println!(
            "new messages in {label} disappear after {}",
            duration_words(ttl)
        );
    }
    Ok(())
}

/// How `hush send`, `edit`, `delete` and `react` say what they did.
fn what_was_sent(payload: &Payload) -> String {
    match payload {
        Payload::Edit { of, .. } => format!("edited #{of} in"),
        Payload::Delete { of } => format!("deleted #{of} in"),
        Payload::React { of, emoji } if emoji.is_empty() => {
            format!("took back your reaction to #{of} in")
        }
        Payload::React { of, emoji } => format!("reacted {emoji} to #{of} in"),
        Payload::Text { .. } | Payload::File { .. } => "sent to".to_owned(),
    }
}

/// Sends everything in the outbox, room by room (in the order each room
/// first appears), each room's messages in the order written, and waits
/// for every answer. `target` is the room the command names (already
/// looked up). Returns each message's seq, or the server's reason for
/// refusing it for good; either way it leaves the outbox.
async fn send_outbox(
    account: &mut Account,
    store: &ClientStore,
    outbox: &mut Outbox,
    target: &Room,
) -> anyhow::Result<HashMap<String, Result<i64, String>>> {
    let mut rooms: Vec<RoomId> = Vec::new();
    for queued in outbox.pending() {
        if !rooms.contains(&queued.room) {
            rooms.push(queued.room);
        }
    }
    let mine = if rooms.iter().any(|r| *r != target.id) {
        account.api.rooms().await?
    } else {
        Vec::new()
    };
    let mut answers = HashMap::new();
    for id in rooms {
        let found = if id == target.id {
            Some(target)
        } else {
            mine.iter().find(|r| r.id == id)
        };
        let queued: Vec<(String, Payload)> = outbox
            .pending()
            .filter(|q| q.room == id)
            .map(|q| (q.client_id.clone(), q.payload.clone()))
            .collect();
        let Some(room) = found else {
            eprintln!(
                "hush: {} message(s) queued for room {} dropped: you are not in it any more",
                queued.len(),
                id.0
            );
            for (client_id, _) in &queued {
                if let Err(err) = outbox.done(client_id) {
                    eprintln!("hush: {err:#}");
                }
            }
            continue;
        };
        let (mut link, mut conversation) = sync::sync_room(account, store, room).await?;
        let mut waiting = HashSet::new();
        for (client_id, payload) in &queued {
            let ids = transcript::post(account, &link, &mut conversation, room, payload, client_id)
                .await?;
            waiting.extend(ids);
        }
        // The counters just used are kept at once (PROTOCOL §21: the
        // messages may be erased before this device reads them back).
        let label = room.label(account.username());
        store
            .save(room.id, &label, &conversation.save(), &[])
            .await?;
        while !waiting.is_empty() {
            let (client_id, answer) = match transcript::next_event(&mut link).await? {
                Event::Acked { client_id, seq, .. } => (client_id, Ok(seq)),
                Event::SendFailed {
                    client_id,
                    code,
                    message,
                } => (client_id, Err(format!("{message} ({code})"))),
                Event::Unauthorized => bail!("the server refused our session"),
                _ => continue,
            };
            if !waiting.remove(&client_id) {
                continue;
            }
            match outbox.done(&client_id) {
                Ok(true) => {
                    answers.insert(client_id, answer);
                }
                Ok(false) => {
                    if let Err(reason) = answer {
                        eprintln!("hush: a sender-key distribution was refused: {reason}");
                    }
                }
                Err(err) => eprintln!("hush: {err:#}"),
            }
        }
    }
    Ok(answers)
}

/// A file attachment: its bytes, its name and a MIME type guessed from the name.
pub fn file_payload(path: &Path) -> anyhow::Result<Payload> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    Ok(Payload::file(name.clone(), guess_mime(&name), data))
}

/// A MIME type from the file name, for the receiving side to display it.
pub fn guess_mime(name: &str) -> &'static str {
    let ext = name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" => "audio/ogg",
        "wav" => "audio/wav",
        "m4a" => "audio/mp4",
        "webm" => "audio/webm",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        _ => "application/octet-stream",
    }
}

pub async fn read(opts: &ClientOpts, args: &ReadArgs) -> anyhow::Result<()> {
    let mut account = Account::open(opts).await?;
    // `--with USER` opens the DM with USER, which accepts a request of
    // theirs (PROTOCOL §21); `--room ID` of a request shows only the request.
    let room = account.resolve(&args.target).await?;
    if room.request {
        super::social::print_request(&room, account.username(), args.json);
        return account.finish();
    }
    account.blocked = super::social::load_blocked(&account.api).await;
    let store = open_store(&account).await?;
    let (mut link, mut conversation) = sync::sync_room(&mut account, &store, &room).await?;
    account.print_notices();
    let window = Window {
        last: args.last,
        since_ms: args.since.map(unix_ms),
    };
    let mut shown = store.shown(room.id, window).await?;
    shown.retain(|item| !super::social::hides(item, &account.blocked));
    mark_verified_now(
        &mut shown,
        account.username(),
        account.directory.trust_store(),
    );
    let printer = Printer {
        json: args.json,
        save_dir: args.save_dir.clone(),
        room: room.id.0,
    };
    let quotes = quotes_for(&store, room.id, &shown).await?;
    for item in &shown {
        printer.print_quoting(item, &|seq| quotes.get(&seq).cloned())?;
    }
    account.finish()?;
    if !args.follow {
        return Ok(());
    }
    let mut is_saving = true;
    loop {
        let Some(event) = link.events.recv().await else {
            return Ok(());
        };
        match event {
            Event::Entry(entry) if entry.room == room.id => {
                let item = sync::judge(&mut conversation, &entry, &mut account).await;
                account.print_notices();
                // An entry that could not be checked is shown, not kept:
                // the store stops here for this run and the next command
                // reads it again.
                is_saving &= !conversation.was_unavailable();
                if is_saving {
                    let label = room.label(account.username());
                    store
                        .save(
                            room.id,
                            &label,
                            &conversation.save(),
                            std::slice::from_ref(&item),
                        )
                        .await?;
                }
                let quotes = quotes_for(&store, room.id, std::slice::from_ref(&item)).await?;
                printer.print_quoting(&item, &|seq| quotes.get(&seq).cloned())?;
            }
            Event::Disconnected { reason } => {
                eprintln!("hush: disconnected ({reason}); reconnecting")
            }
            Event::Connected { resumed: true } => eprintln!("hush: reconnected"),
            Event::Unauthorized => bail!("the server refused our session"),
            _ => {}
        }
    }
}

/// The quotes of the messages `items` reply to: from `items` when the
/// target is among them, else from the store.
async fn quotes_for(
    store: &ClientStore,
    room: RoomId,
    items: &[Shown],
) -> anyhow::Result<HashMap<i64, String>> {
    let mut quotes = HashMap::new();
    for item in items {
        let Shown::Message { payload, .. } = item else {
            continue;
        };
        let Some(of) = payload.reply_to() else {
            continue;
        };
        if quotes.contains_key(&of) {
            continue;
        }
        let target = match items.iter().find(|s| s.seq() == of) {
            Some(target) => Some(target.clone()),
            None => store.entry(room, of).await?,
        };
        if let Some(quote) = target.as_ref().and_then(super::relations::quote) {
            quotes.insert(of, quote);
        }
    }
    Ok(quotes)
}

/// Opens the account's store for the server it talks to.
pub async fn open_store(account: &Account) -> anyhow::Result<ClientStore> {
    ClientStore::open(account.keys.dir(), &account.identity, account.api.server()).await
}

/// Unix milliseconds of `time` (0 before the epoch).
fn unix_ms(time: std::time::SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `hush search TEXT [--room R]`: searches the store only, so it works
/// offline and the server never sees the words. It does not sync first:
/// it finds what this machine has read (`hush read` or `hush chat` bring a
/// room up to date).
pub async fn search(opts: &ClientOpts, args: &SearchArgs) -> anyhow::Result<()> {
    let user = require_user(opts)?;
    let keys = KeyStore::new(&opts.keys_dir);
    let passphrase = passphrase(&format!("Passphrase for {user}'s key: "))?;
    let identity = open_identity(&keys, &user, passphrase).await?;
    let store = ClientStore::open(keys.dir(), &identity, &opts.server).await?;
    let labels: HashMap<RoomId, String> = store.rooms().await?.into_iter().collect();
    let room = match &args.room {
        None => None,
        Some(wanted) => Some(stored_room(&labels, wanted)?),
    };
    let hits = store_search::search(&store, &args.text, room).await?;
    store.close().await;
    if hits.is_empty() {
        eprintln!(
            "hush: no message this machine has read matches {:?}",
            args.text
        );
    }
    for (room, shown) in hits {
        let Shown::Message {
            seq,
            ts,
            sender,
            payload,
            ..
        } = shown
        else {
            continue;
        };
        let content = match payload {
            Payload::Text { text, .. } => text,
            Payload::File {
                name, mime, data, ..
            } => {
                format!("[file {name}, {mime}, {} bytes]", data.len())
            }
            _ => continue,
        };
        let label = labels.get(&room).map_or("?", String::as_str);
        println!("{label} #{seq} {} {sender}: {content}", format_time(ts));
    }
    Ok(())
}

/// A room of the store by id, name (`general` or `#general`) or DM (`@bob`).
fn stored_room(labels: &HashMap<RoomId, String>, wanted: &str) -> anyhow::Result<RoomId> {
    if let Ok(id) = wanted.parse::<i64>()
        && labels.contains_key(&RoomId(id))
    {
        return Ok(RoomId(id));
    }
    let label = if wanted.starts_with('#') || wanted.starts_with('@') {
        wanted.to_owned()
    } else {
        format!("#{wanted}")
    };
    let found: Vec<RoomId> = labels
        .iter()
        .filter(|(_, l)| **l == label)
        .map(|(id, _)| *id)
        .collect();
    match found.as_slice() {
        [id] => Ok(*id),
        [] => bail!("no room {wanted:?} in the local store (read it once with `hush read` first)"),
        _ => bail!("several rooms are called {wanted:?}; use its id"),
    }
}

/// Prints what `read` shows, as text or JSON lines, saving attachments.
pub struct Printer {
    pub json: bool,
    pub save_dir: PathBuf,
    pub room: i64,
}

/// How a reply's target is shown: a short quote, or `None` when it cannot
/// be ("message not available").
pub type Quotes<'a> = &'a dyn Fn(i64) -> Option<String>;

impl Printer {
    pub fn print(&self, item: &Shown) -> anyhow::Result<()> {
        self.print_quoting(item, &|_| None)
    }

    /// Prints `item`; `quotes` gives the quote of a reply's target.
    pub fn print_quoting(&self, item: &Shown, quotes: Quotes<'_>) -> anyhow::Result<()> {
        let line = match item {
            Shown::Quiet { .. } => return Ok(()),
            Shown::Unsupported {
                seq,
                ts,
                sender,
                device,
            } => {
                if self.json {
                    let mut obj = json!({
                        "room": self.room, "seq": seq, "ts": ts, "sender": sender,
                        "kind": "unsupported", "text": UNSUPPORTED_TEXT,
                    });
                    if let Some(device) = device {
                        obj["device"] = json!(device.short());
                    }
                    obj.to_string()
                } else {
                    format!("#{seq} {} {sender}: ({UNSUPPORTED_TEXT})", format_time(*ts))
                }
            }
            Shown::Message {
                seq,
                ts,
                sender,
                device,
                payload,
                is_sender_verified,
                is_late,
                state,
            } => {
                let (text, file) = match payload {
                    Payload::Text { text, .. } => (Some(text.clone()), None),
                    Payload::File {
                        name, mime, data, ..
                    } => {
                        let path = self.save(*seq, name, data)?;
                        (None, Some((name.clone(), mime.clone(), data.len(), path)))
                    }
                    _ => (None, None),
                };
                if self.json {
                    let mut obj = json!({
                        "room": self.room, "seq": seq, "ts": ts, "sender": sender, "kind": "message",
                        "verified": is_sender_verified, "late": is_late,
                        "edited": state.is_edited, "deleted": false,
                    });
                    if let Some(device) = device {
                        obj["device"] = json!(device.short());
                    }
                    if let Some(text) = text {
                        obj["text"] = json!(text);
                    }
                    if let Some((name, mime, size, path)) = file {
                        obj["file"] =
                            json!({ "name": name, "mime": mime, "size": size, "saved_to": path });
                    }
                    if let Some(target) = payload.reply_to() {
                        obj["reply_to"] = json!(target);
                    }
                    if !state.reactions.is_empty() {
                        obj["reactions"] = json!(state.grouped());
                    }
                    obj.to_string()
                } else {
                    let mark = if *is_sender_verified { " ✓" } else { "" };
                    let content = match (text, file) {
                        (Some(text), _) => text,
                        (None, Some((name, mime, size, path))) => {
                            format!(
                                "[file {name}, {mime}, {size} bytes, saved to {}]",
                                path.display()
                            )
                        }
                        (None, None) => String::new(),
                    };
                    let late = if *is_late { " (delivered late)" } else { "" };
                    let edited = if state.is_edited { " (edited)" } else { "" };
                    let mut line = String::new();
                    if let Some(target) = payload.reply_to() {
                        let quote =
                            quotes(target).unwrap_or_else(|| "message not available".to_owned());
                        line.push_str(&format!("    ↪ {quote}\n"));
                    }
                    line.push_str(&format!(
                        "#{seq} {} {sender}{mark}: {content}{edited}{late}",
                        format_time(*ts)
                    ));
                    let reactions = reactions_line(state);
                    if !reactions.is_empty() {
                        line.push_str(&format!("\n    {reactions}"));
                    }
                    line
                }
            }
            Shown::Relation {
                seq,
                ts,
                sender,
                device,
                relation,
                is_sender_verified,
                is_late,
            } => {
                if self.json {
                    let mut obj = json!({
                        "room": self.room, "seq": seq, "ts": ts, "sender": sender,
                        "kind": relation.kind(), "of": relation.of(),
                        "verified": is_sender_verified, "late": is_late,
                    });
                    if let Some(device) = device {
                        obj["device"] = json!(device.short());
                    }
                    match relation {
                        Relation::Edit { text, .. } => obj["text"] = json!(text),
                        Relation::React { emoji, .. } => obj["emoji"] = json!(emoji),
                        Relation::Delete { .. } => {}
                    }
                    obj.to_string()
                } else {
                    let what = match relation {
                        Relation::Edit { of, .. } => format!("edited #{of}"),
                        Relation::Delete { of } => format!("deleted #{of}"),
                        Relation::React { of, emoji } if emoji.is_empty() => {
                            format!("took back their reaction to #{of}")
                        }
                        Relation::React { of, emoji } => format!("reacted {emoji} to #{of}"),
                    };
                    format!("#{seq} {} * {sender} {what}", format_time(*ts))
                }
            }
            Shown::Removed {
                seq,
                ts,
                sender,
                why,
            } => {
                if self.json {
                    match why {
                        Removal::Deleted => json!({
                            "room": self.room, "seq": seq, "ts": ts, "sender": sender,
                            "kind": "message", "deleted": true, "edited": false,
                        }),
                        Removal::Expired | Removal::Removed => json!({
                            "room": self.room, "seq": seq, "ts": ts, "sender": sender,
                            "kind": "erased",
                            "reason": if *why == Removal::Expired { "expired" } else { "removed" },
                            "text": why.sentence(),
                        }),
                    }
                    .to_string()
                } else {
                    format!("#{seq} {} {sender}: ({})", format_time(*ts), why.sentence())
                }
            }
            Shown::Event { seq, ts, text } => {
                if self.json {
                    json!({ "room": self.room, "seq": seq, "ts": ts, "kind": "event", "text": text }).to_string()
                } else {
                    format!("#{seq} {} * {text}", format_time(*ts))
                }
            }
            Shown::Rejected {
                seq,
                ts,
                sender,
                reason,
            } => {
                if self.json {
                    json!({ "room": self.room, "seq": seq, "ts": ts, "sender": sender, "kind": "rejected", "warning": reason })
                        .to_string()
                } else {
                    format!(
                        "#{seq} {} !! message from {sender} REJECTED: {reason}",
                        format_time(*ts)
                    )
                }
            }
        };
        println!("{line}");
        Ok(())
    }

    fn save(&self, seq: i64, name: &str, data: &[u8]) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(&self.save_dir)
            .with_context(|| format!("creating {}", self.save_dir.display()))?;
        // Only the last path component, so a sender cannot choose where it
        // lands, and never a hidden file.
        let base = safe_file_name(name);
        let base = if base.starts_with('.') {
            format!("file{base}")
        } else {
            base
        };
        let path = self.save_dir.join(format!("{}-{seq}-{base}", self.room));
        std::fs::write(&path, data).with_context(|| format!("saving {}", path.display()))?;
        Ok(path)
    }
}

/// `👍 2 (alice, bob)  ❤️ 1 (carol)`: reactions grouped with counts and who.
pub fn reactions_line(state: &MessageState) -> String {
    state
        .grouped()
        .iter()
        .map(|(emoji, users)| format!("{emoji} {} ({})", users.len(), users.join(", ")))
        .collect::<Vec<_>>()
        .join("  ")
}

/// `2026-11-26 09:15:02` in UTC.
pub fn format_time(ts_ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ts_ms.max(0) as u64);
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_owned()
}
