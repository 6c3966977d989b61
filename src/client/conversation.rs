//! One room as one local user experiences it: reads the room's log in
//! order, opens sender-key distributions addressed to this user, decrypts
//! and checks messages, and keeps the sending state (current sender key,
//! epoch, counter) so new messages continue the log correctly.
//!
//! Everything is derived from the log, so a client with only its identity
//! keys (a new machine, an imported key) recovers the whole readable
//! history and its own sending state just by reading the room from the start.

use std::collections::HashMap;

use anyhow::{Context, bail};

use super::directory::{Directory, Peer};
use super::keystore::Identity;
use crate::crypto::CryptoError;
use crate::crypto::envelope::{self, OpenContext, Payload, ReplayTracker};
use crate::crypto::identity::{Fingerprint, IdentityKey};
use crate::crypto::sender_keys::{self, Recipient, RotationReason, SenderKey, SenderKeyState};
use crate::crypto::wire::{BodyKind, body_kind};
use crate::protocol::{WireEntry, b64};
use crate::store::RoomId;

/// What a log entry means to the user.
#[derive(Clone)]
pub enum Shown {
    /// A message that opened and verified.
    Message {
        seq: i64,
        ts: i64,
        sender: String,
        payload: Payload,
        is_sender_verified: bool,
    },
    /// A membership or key event, as a sentence.
    Event { seq: i64, ts: i64, text: String },
    /// A message that must not be believed, and why.
    Rejected {
        seq: i64,
        ts: i64,
        sender: String,
        reason: String,
    },
    /// Bookkeeping the user need not see (a sender-key distribution).
    Quiet { seq: i64 },
}

impl Shown {
    pub fn seq(&self) -> i64 {
        match self {
            Self::Message { seq, .. }
            | Self::Event { seq, .. }
            | Self::Rejected { seq, .. }
            | Self::Quiet { seq } => *seq,
        }
    }
}

pub struct Conversation {
    room: RoomId,
    me: String,
    /// Sender keys received (including this user's own), by (sender, epoch).
    keys: HashMap<(String, u32), SenderKey>,
    replay: ReplayTracker,
    /// This user's latest distribution seen: epoch and recipients.
    my_latest: Option<(u32, Vec<(String, Fingerprint)>)>,
    /// Highest counter this user sent per epoch.
    my_counters: HashMap<u32, u64>,
    sending: Option<SenderKeyState>,
    last_seq: i64,
}

impl Conversation {
    pub fn new(room: RoomId, me: &str) -> Self {
        Self {
            room,
            me: me.to_owned(),
            keys: HashMap::new(),
            replay: ReplayTracker::new(),
            my_latest: None,
            my_counters: HashMap::new(),
            sending: None,
            last_seq: 0,
        }
    }

    pub fn room(&self) -> RoomId {
        self.room
    }

    /// Highest seq processed.
    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    /// Reads one entry (in seq order). Never fails: what cannot be believed
    /// comes back as `Rejected` with the reason.
    pub async fn process(
        &mut self,
        entry: &WireEntry,
        me: &Identity,
        directory: &mut Directory,
    ) -> Shown {
        let (seq, ts) = (entry.seq, entry.ts);
        if entry.seq <= self.last_seq {
            let reason = "repeats a position already read".to_owned();
            return Shown::Rejected {
                seq,
                ts,
                sender: entry.sender.clone(),
                reason,
            };
        }
        self.last_seq = entry.seq;
        let text = match entry.kind.as_str() {
            "message" => return self.process_body(entry, me, directory).await,
            "create" => match &entry.subject {
                Some(peer) => format!("{} started a conversation with {peer}", entry.sender),
                None => format!("{} created the room", entry.sender),
            },
            "invite" => format!(
                "{} invited {}",
                entry.sender,
                entry.subject.as_deref().unwrap_or("someone")
            ),
            "join" => format!("{} joined", entry.sender),
            "leave" => format!("{} left", entry.sender),
            "remove" => format!(
                "{} removed {}",
                entry.sender,
                entry.subject.as_deref().unwrap_or("someone")
            ),
            "key" => {
                directory.invalidate(&entry.sender);
                format!(
                    "{}'s key is now {}",
                    entry.sender,
                    entry.fingerprint.as_deref().unwrap_or("?")
                )
            }
            other => format!("({other} event)"),
        };
        Shown::Event { seq, ts, text }
    }

    async fn process_body(
        &mut self,
        entry: &WireEntry,
        me: &Identity,
        directory: &mut Directory,
    ) -> Shown {
        let (seq, ts, sender) = (entry.seq, entry.ts, entry.sender.clone());
        let reject = |reason: String| Shown::Rejected {
            seq,
            ts,
            sender: sender.clone(),
            reason,
        };
        let Some(body) = entry.body.as_deref().and_then(|b| b64::decode(b).ok()) else {
            return reject("the message has no readable body".into());
        };
        let peer = match directory.peer(&entry.sender).await {
            Ok(peer) => peer,
            Err(err) => return reject(format!("cannot check the sender's key: {err:#}")),
        };
        match body_kind(&body) {
            Ok(BodyKind::SenderKeyDistribution) => {
                match self.take_distribution(&body, entry, me, &peer) {
                    Ok(()) => Shown::Quiet { seq },
                    Err(CryptoError::NotARecipient) => Shown::Quiet { seq },
                    Err(err) => reject(format!("a key distribution was rejected: {err}")),
                }
            }
            Ok(BodyKind::Message) => match self.open_message(&body, entry, &peer) {
                Ok(payload) => Shown::Message {
                    seq,
                    ts,
                    sender,
                    payload,
                    is_sender_verified: peer.is_verified,
                },
                Err(reason) => reject(reason),
            },
            Err(err) => reject(format!("not a hush message: {err}")),
        }
    }

    fn take_distribution(
        &mut self,
        body: &[u8],
        entry: &WireEntry,
        me: &Identity,
        peer: &Peer,
    ) -> Result<(), CryptoError> {
        let header = sender_keys::peek_distribution(body)?;
        let Some(my_key) = header
            .recipients
            .iter()
            .filter(|(name, _)| *name == me.username)
            .find_map(|(_, fp)| me.key_with(fp))
        else {
            return Err(CryptoError::NotARecipient);
        };
        let key = with_any_key(&peer.verifying, |identity| {
            let context = OpenContext {
                room_id: self.room.0,
                sender: &entry.sender,
                sender_identity: identity,
            };
            sender_keys::open_distribution(body, &context, &me.username, my_key)
        })?;
        if entry.sender == self.me {
            self.my_latest = Some((header.epoch, header.recipients.clone()));
        }
        self.keys.insert((entry.sender.clone(), header.epoch), key);
        Ok(())
    }

    fn open_message(
        &mut self,
        body: &[u8],
        entry: &WireEntry,
        peer: &Peer,
    ) -> Result<Payload, String> {
        let header = envelope::peek(body).map_err(|e| e.to_string())?;
        if header.room_id != self.room.0 {
            return Err(CryptoError::WrongRoom.to_string());
        }
        if header.sender != entry.sender {
            return Err(CryptoError::WrongSender.to_string());
        }
        if entry.sender == self.me {
            let highest = self
                .my_counters
                .entry(header.epoch)
                .or_insert(header.counter);
            *highest = (*highest).max(header.counter);
        }
        let Some(key) = self.keys.get(&(entry.sender.clone(), header.epoch)) else {
            return Err("no key for this message: it was sent before you joined, or its key was not shared with you".into());
        };
        let replay = &mut self.replay;
        let opened = with_any_key(&peer.verifying, |identity| {
            let context = OpenContext {
                room_id: self.room.0,
                sender: &entry.sender,
                sender_identity: identity,
            };
            envelope::open(body, &context, key, replay)
        })
        .map_err(|e| e.to_string())?;
        Ok(opened.payload)
    }

    /// Seals `payload` for the room's current `members`. Returns the bodies
    /// to post in order: a new sender-key distribution first when one is
    /// needed (no key yet, or membership or a member's key changed), then
    /// the message. Members whose key changed without a valid rotation are
    /// left out (the caller shows the directory's warning); in a DM that
    /// refuses to send at all.
    pub async fn seal(
        &mut self,
        payload: &Payload,
        members: &[String],
        is_dm: bool,
        me: &Identity,
        directory: &mut Directory,
    ) -> anyhow::Result<Outgoing> {
        let mut recipients: Vec<(String, IdentityKey)> = Vec::new();
        let mut left_out = Vec::new();
        for member in members {
            if *member == self.me {
                recipients.push((member.clone(), me.current.public().clone()));
                continue;
            }
            match directory.peer(member).await?.usable {
                Some(key) => recipients.push((member.clone(), key)),
                None => left_out.push(member.clone()),
            }
        }
        if is_dm && !left_out.is_empty() {
            bail!(
                "{}'s key changed without a valid rotation; nothing was sent. Compare safety numbers, then run `hush keys trust {}`",
                left_out[0],
                left_out[0]
            );
        }
        if !recipients.iter().any(|(name, _)| *name == self.me) {
            recipients.push((self.me.clone(), me.current.public().clone()));
        }
        let recipient_refs: Vec<Recipient<'_>> = recipients
            .iter()
            .map(|(username, identity)| Recipient { username, identity })
            .collect();
        let sending = self.sending_state();
        let mut bodies = Vec::new();
        let rotation = sending.rotation_needed(&recipient_refs);
        if rotation.is_some() {
            bodies.push(
                sending
                    .rotate(&recipient_refs, &me.current)
                    .context("making a new sender key")?,
            );
        }
        bodies.push(
            sending
                .seal(payload, &me.current)
                .context("sealing the message")?,
        );
        Ok(Outgoing {
            bodies,
            rotation,
            left_out,
        })
    }

    /// The sending state, resumed from the log the first time it is needed.
    fn sending_state(&mut self) -> &mut SenderKeyState {
        let room = self.room.0;
        let resumed = || {
            let own_key = self.my_latest.as_ref().and_then(|(epoch, recipients)| {
                let key = self.keys.get(&(self.me.clone(), *epoch))?;
                let next = self.my_counters.get(epoch).map_or(0, |c| c + 1);
                Some(SenderKeyState::resume_with_key(
                    room,
                    &self.me,
                    key.clone(),
                    recipients,
                    next,
                ))
            });
            own_key.unwrap_or_else(|| {
                let last_epoch = self
                    .my_counters
                    .keys()
                    .copied()
                    .chain(self.my_latest.as_ref().map(|(e, _)| *e))
                    .max();
                SenderKeyState::resume_after(room, &self.me, last_epoch.unwrap_or(0))
            })
        };
        if self.sending.is_none() {
            self.sending = Some(resumed());
        }
        self.sending.as_mut().expect("just set")
    }
}

/// What `Conversation::seal` produced.
pub struct Outgoing {
    /// Bodies to post in this order.
    pub bodies: Vec<Vec<u8>>,
    /// Why a new sender key was made, if one was.
    pub rotation: Option<RotationReason>,
    /// Members not included because their key is blocked.
    pub left_out: Vec<String>,
}

/// Tries `op` with each of a peer's accepted keys until one verifies.
fn with_any_key<T>(
    keys: &[IdentityKey],
    mut op: impl FnMut(&IdentityKey) -> Result<T, CryptoError>,
) -> Result<T, CryptoError> {
    let mut last = CryptoError::BadSignature;
    for key in keys {
        match op(key) {
            Ok(value) => return Ok(value),
            Err(CryptoError::BadSignature) => last = CryptoError::BadSignature,
            Err(other) => return Err(other),
        }
    }
    Err(last)
}
