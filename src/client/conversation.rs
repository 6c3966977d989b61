//! One room as one local user experiences it: reads the room's log in
//! order, opens sender-key distributions addressed to this user, decrypts
//! and checks messages, and keeps the sending state (current sender key,
//! epoch, counter) so new messages continue the log correctly.
//!
//! Everything is derived from the log, so a client with only its identity
//! keys (a new machine, an imported key) recovers the whole readable
//! history and its own sending state just by reading the room from the start.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::directory::{Directory, Peer};
use super::keystore::Identity;
use super::relations::{MessageState, Relation, Removal};
use crate::crypto::CryptoError;
use crate::crypto::device::DeviceId;
use crate::crypto::envelope::{self, Content, OpenContext, Payload, ReplayTracker, SavedChain};
use crate::crypto::identity::{Fingerprint, IdentityKey};
use crate::crypto::room_timer;
use crate::crypto::sender_keys::{self, Recipient, RotationReason, SenderKey, SenderKeyState};
use crate::crypto::trust::TrustStore;
use crate::crypto::wire::{BodyKind, body_kind};
use crate::protocol::{WireEntry, b64};
use crate::store::RoomId;

mod signals;
pub use signals::SealedSignal;

/// What a log entry means to the user.
#[derive(Clone)]
pub enum Shown {
    /// A message that opened and verified.
    Message {
        seq: i64,
        ts: i64,
        sender: String,
        /// The sending device; `None` for version-1 history.
        device: Option<DeviceId>,
        /// A text's `text` is the latest valid edit's; `reply_to` is kept
        /// only if it names an earlier seq.
        payload: Payload,
        is_sender_verified: bool,
        /// Stored after a later message of its chain (an honest resend
        /// usually; see PROTOCOL §19, the replay rule).
        is_late: bool,
        /// Edited, reactions (§21).
        state: MessageState,
    },
    /// A valid edit, delete or reaction of a message the reader has
    /// (PROTOCOL §21); the target shows its effect.
    Relation {
        seq: i64,
        ts: i64,
        sender: String,
        device: Option<DeviceId>,
        relation: Relation,
        is_sender_verified: bool,
        is_late: bool,
    },
    /// A message that is no longer there: deleted by its sender, expired,
    /// or erased by the server. Only who sent it is left.
    Removed {
        seq: i64,
        ts: i64,
        sender: String,
        why: Removal,
    },
    /// A genuine message of a type or payload version this client does
    /// not know.
    Unsupported {
        seq: i64,
        ts: i64,
        sender: String,
        device: Option<DeviceId>,
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
            | Self::Relation { seq, .. }
            | Self::Removed { seq, .. }
            | Self::Unsupported { seq, .. }
            | Self::Event { seq, .. }
            | Self::Rejected { seq, .. }
            | Self::Quiet { seq } => *seq,
        }
    }
}

/// The sentence shown for `Shown::Unsupported`.
pub const UNSUPPORTED_TEXT: &str = "a message this version of hush cannot display — update hush";

/// One chain's key: (sender, device, epoch).
type ChainKey = (String, DeviceId, u32);

/// A key a `key` entry retired: refused for that sender from `seq` on.
struct RetiredKey {
    key: IdentityKey,
    seq: i64,
}

/// What a reader must know of an earlier message to judge a relation to
/// it: who signed it, what it is now, and when it expires.
#[derive(Clone, Serialize, Deserialize)]
struct Target {
    /// The envelope's signed sender (for a tombstone, the server's claim).
    sender: String,
    kind: TargetKind,
    /// Unix ms, if a disappearing-messages timer was on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<i64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TargetKind {
    Text,
    File,
    /// A valid delete of it was read.
    Deleted,
    /// The server replaced it with a tombstone (`erased`), no delete read.
    Erased,
}

/// A verified timer entry: from after `seq` on, messages expire `ttl`
/// seconds after their `ts` (0: never).
#[derive(Clone, Copy, Serialize, Deserialize)]
pub struct TimerChange {
    pub seq: i64,
    pub ttl: u32,
}

/// The keys accepted from one sender at one position of the log.
struct Signers {
    accepted: Vec<IdentityKey>,
    is_verified: bool,
}

pub struct Conversation {
    room: RoomId,
    me: String,
    /// The device this client sends as.
    device: DeviceId,
    /// Sender keys received (including this user's own), per chain.
    keys: HashMap<ChainKey, SenderKey>,
    replay: ReplayTracker,
    /// Each of this user's devices' latest distribution seen: epoch and
    /// recipients. Kept for every own device, not only the one this run
    /// sends as, so a saved state serves whichever device resumes it.
    own_latest: HashMap<DeviceId, (u32, Vec<(String, Fingerprint)>)>,
    /// Highest counter each own device sent per epoch.
    own_counters: HashMap<(DeviceId, u32), u64>,
    sending: Option<SenderKeyState>,
    last_seq: i64,
    /// Keys that `key` entries of this room retired, per sender.
    retired: HashMap<String, Vec<RetiredKey>>,
    /// Senders whose keys were fetched again after a signature no known
    /// key verified: once each, until their next `key` entry.
    refetched: HashSet<String>,
    /// The last entry could not be judged for a reason that may pass (the
    /// sender's keys could not be fetched): it was not counted as read.
    is_unavailable: bool,
    /// Every text and file message read (and tombstones), by seq: what a
    /// later relation to it is judged against (§21).
    targets: BTreeMap<i64, Target>,
    /// Verified timer changes, in log order.
    timers: Vec<TimerChange>,
    /// When each of this user's devices last distributed a sender key
    /// here (the entry's `ts`, or the time this run made one): with
    /// disappearing messages, a distribution must not expire before the
    /// messages sealed under it (§21).
    own_distributed_at: HashMap<DeviceId, i64>,
}

impl Conversation {
    pub fn new(room: RoomId, me: &str, device: DeviceId) -> Self {
        Self {
            room,
            me: me.to_owned(),
            device,
            keys: HashMap::new(),
            replay: ReplayTracker::new(),
            own_latest: HashMap::new(),
            own_counters: HashMap::new(),
            sending: None,
            last_seq: 0,
            retired: HashMap::new(),
            refetched: HashSet::new(),
            is_unavailable: false,
            targets: BTreeMap::new(),
            timers: Vec::new(),
            own_distributed_at: HashMap::new(),
        }
    }

    /// When an entry at `seq` stored at `ts` expires (Unix ms), from the
    /// timer in force at its position; `None` if no timer was on.
    pub fn expires_at(&self, seq: i64, ts: i64) -> Option<i64> {
        expires_at(&self.timers, seq, ts)
    }

    /// The disappearing-messages duration in force now (seconds, 0 = off).
    pub fn ttl(&self) -> u32 {
        self.timers.last().map_or(0, |t| t.ttl)
    }

    /// Whether the last entry given to `process` could not be judged for a
    /// reason that may pass (the sender's keys could not be fetched). Such
    /// an entry is not counted as read (`last_seq` stays before it), so it
    /// can be given again; its `Rejected` must not be kept.
    pub fn was_unavailable(&self) -> bool {
        self.is_unavailable
    }

    pub fn room(&self) -> RoomId {
        self.room
    }

    /// Highest seq processed.
    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    /// Moves past an entry without reading it (a message from a user this
    /// account blocks: PROTOCOL §21 keeps it undecrypted).
    pub fn pass_over(&mut self, entry: &WireEntry) -> Shown {
        self.last_seq = self.last_seq.max(entry.seq);
        Shown::Quiet { seq: entry.seq }
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
        self.is_unavailable = false;
        if entry.seq <= self.last_seq {
            let reason = "repeats a position already read".to_owned();
            return Shown::Rejected {
                seq,
                ts,
                sender: entry.sender.clone(),
                reason,
            };
        }
        let before = self.last_seq;
        self.last_seq = entry.seq;
        let text = match entry.kind.as_str() {
            "message" => {
                let shown = self.process_body(entry, me, directory).await;
                if self.is_unavailable {
                    self.last_seq = before;
                }
                return shown;
            }
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
            "timer" => {
                let shown = self.process_timer(entry, me, directory).await;
                if self.is_unavailable {
                    self.last_seq = before;
                }
                return shown;
            }
            "erased" => return self.process_tombstone(entry),
            "key" => {
                self.retire_keys(entry, me, directory).await;
                format!(
                    "{}'s key is now {}",
                    entry.sender,
                    entry.fingerprint.as_deref().unwrap_or("?")
                )
            }
            "promote" | "demote" | "decline" => super::social::event_sentence(entry),
            other => format!("({other} event)"),
        };
        Shown::Event { seq, ts, text }
    }

    /// A `timer` entry (§21): its statement must be signed by a key
    /// accepted from its sender at this position, for this room and this
    /// sender, with `after` below the entry's seq and not below the
    /// previous timer entry's. A valid one sets the duration for the
    /// messages after it; any other is shown as rejected and not applied.
    async fn process_timer(
        &mut self,
        entry: &WireEntry,
        me: &Identity,
        directory: &mut Directory,
    ) -> Shown {
        let (seq, ts) = (entry.seq, entry.ts);
        let rejected = |why: String| Shown::Rejected {
            seq,
            ts,
            sender: entry.sender.clone(),
            reason: format!("a timer change was rejected: {why}"),
        };
        let Some(body) = entry.body.as_deref().and_then(|b| b64::decode(b).ok()) else {
            return rejected("it has no readable statement".into());
        };
        let statement = match room_timer::parse(&body) {
            Ok(parsed) => parsed.statement,
            Err(err) => return rejected(err.to_string()),
        };
        if statement.room != self.room.0 {
            return rejected(CryptoError::WrongRoom.to_string());
        }
        if statement.sender != entry.sender {
            return rejected(CryptoError::WrongSender.to_string());
        }
        let mut verified = false;
        for attempt in 0..2 {
            let signers = match self.signers(&entry.sender, me, directory).await {
                Ok(signers) => signers,
                Err(reason) => {
                    self.is_unavailable = true;
                    return rejected(reason);
                }
            };
            verified = signers
                .accepted
                .iter()
                .any(|key| room_timer::verify(&body, key).is_ok());
            // Maybe a rotation we saw no `key` entry for: ask once more.
            if verified
                || attempt == 1
                || entry.sender == self.me
                || !self.refetched.insert(entry.sender.clone())
            {
                break;
            }
            directory.invalidate(&entry.sender);
        }
        if !verified {
            let reason = self
                .bad_signature_reason(&entry.sender, |key| room_timer::verify(&body, key).is_ok());
            return rejected(reason);
        }
        let previous = self.timers.last().map_or(0, |t| t.seq);
        let after = i64::try_from(statement.after).unwrap_or(i64::MAX);
        if after >= seq || after < previous {
            return rejected(format!(
                "it names #{after} as the newest message its sender had seen, which cannot be"
            ));
        }
        if statement.duration_secs > room_timer::MAX_DURATION_SECS {
            return rejected("a duration above 4 weeks".into());
        }
        self.timers.push(TimerChange {
            seq,
            ttl: statement.duration_secs,
        });
        Shown::Event {
            seq,
            ts,
            text: super::relations::timer_sentence(&entry.sender, statement.duration_secs),
        }
    }

    /// An `erased` entry: the server replaced a message with a tombstone.
    /// "message expired" for an expiry; otherwise "removed by the server"
    /// until a valid `delete` of it is read (§21).
    fn process_tombstone(&mut self, entry: &WireEntry) -> Shown {
        let is_expired = entry.reason.as_deref() == Some("expired");
        let known_deleted = self
            .targets
            .get(&entry.seq)
            .is_some_and(|t| t.kind == TargetKind::Deleted);
        let why = if is_expired {
            Removal::Expired
        } else if known_deleted {
            Removal::Deleted
        } else {
            Removal::Removed
        };
        if !is_expired {
            self.targets.insert(
                entry.seq,
                Target {
                    sender: entry.sender.clone(),
                    kind: if known_deleted {
                        TargetKind::Deleted
                    } else {
                        TargetKind::Erased
                    },
                    expires: None,
                },
            );
        }
        Shown::Removed {
            seq: entry.seq,
            ts: entry.ts,
            sender: entry.sender.clone(),
            why,
        }
    }

    /// A `key` entry: from here on, keys its sender had before the one it
    /// names are refused for that sender in this room (PROTOCOL §19, Key
    /// history). Keys are listed newest first, so everything after the
    /// named one is older.
    async fn retire_keys(&mut self, entry: &WireEntry, me: &Identity, directory: &mut Directory) {
        let user = &entry.sender;
        self.refetched.remove(user);
        let known: Vec<IdentityKey> = if *user == self.me {
            own_keys(me)
        } else {
            directory.invalidate(user);
            match directory.peer(user).await {
                Ok(peer) => peer.verifying,
                Err(_) => return,
            }
        };
        let Some(named) = entry.fingerprint.as_deref() else {
            return;
        };
        let Some(position) = known
            .iter()
            .position(|key| key.fingerprint().to_hex() == named)
        else {
            // A key not linked to what we trust: the directory blocks the
            // peer until the user decides; nothing to retire by position.
            return;
        };
        let retired = self.retired.entry(user.clone()).or_default();
        for key in &known[position + 1..] {
            if !retired
                .iter()
                .any(|r| r.key.fingerprint() == key.fingerprint())
            {
                retired.push(RetiredKey {
                    key: key.clone(),
                    seq: entry.seq,
                });
            }
        }
    }

    /// The keys accepted from `sender` now: this user's own from the local
    /// key store (never from the server), a peer's from the directory, less
    /// those a `key` entry retired.
    async fn signers(
        &self,
        sender: &str,
        me: &Identity,
        directory: &mut Directory,
    ) -> Result<Signers, String> {
        let (known, is_verified) = if sender == self.me {
            (own_keys(me), true)
        } else {
            let peer: Peer = directory
                .peer(sender)
                .await
                .map_err(|err| format!("cannot check the sender's key: {err:#}"))?;
            (peer.verifying, peer.is_verified)
        };
        let retired = self.retired.get(sender);
        let accepted = known
            .into_iter()
            .filter(|key| {
                !retired.is_some_and(|r| r.iter().any(|r| r.key.fingerprint() == key.fingerprint()))
            })
            .collect();
        Ok(Signers {
            accepted,
            is_verified,
        })
    }

    /// Why a body no accepted key verifies must be refused: signed with a
    /// retired key, or by no key we know.
    fn bad_signature_reason(
        &self,
        sender: &str,
        verifies: impl Fn(&IdentityKey) -> bool,
    ) -> String {
        let retired = self
            .retired
            .get(sender)
            .and_then(|keys| keys.iter().find(|r| verifies(&r.key)));
        match retired {
            Some(r) => format!(
                "signed with a key that {sender} retired (at #{}); whoever sent it is not using {sender}'s current key",
                r.seq
            ),
            None => CryptoError::BadSignature.to_string(),
        }
    }

    async fn process_body(
        &mut self,
        entry: &WireEntry,
        me: &Identity,
        directory: &mut Directory,
    ) -> Shown {
        let shown = self.process_body_once(entry, me, directory).await;
        let is_bad_signature = matches!(&shown, Err(Failure::BadSignature));
        if is_bad_signature
            && entry.sender != self.me
            && self.refetched.insert(entry.sender.clone())
        {
            // Maybe a rotation we saw no `key` entry for: ask once more.
            directory.invalidate(&entry.sender);
            let again = self.process_body_once(entry, me, directory).await;
            if matches!(&again, Err(Failure::Unavailable(_))) {
                self.refetched.remove(&entry.sender);
            }
            self.is_unavailable = matches!(&again, Err(Failure::Unavailable(_)));
            return self.finish(entry, again);
        }
        self.is_unavailable = matches!(&shown, Err(Failure::Unavailable(_)));
        self.finish(entry, shown)
    }

    fn finish(&self, entry: &WireEntry, result: Result<Shown, Failure>) -> Shown {
        let reason = match result {
            Ok(shown) => return shown,
            Err(Failure::Reason(reason)) | Err(Failure::Unavailable(reason)) => reason,
            Err(Failure::BadSignature) => {
                let body = entry.body.as_deref().and_then(|b| b64::decode(b).ok());
                let signed_by = |key: &IdentityKey| {
                    body.as_deref().is_some_and(|body| verifies_body(body, key))
                };
                self.bad_signature_reason(&entry.sender, signed_by)
            }
        };
        Shown::Rejected {
            seq: entry.seq,
            ts: entry.ts,
            sender: entry.sender.clone(),
            reason,
        }
    }

    async fn process_body_once(
        &mut self,
        entry: &WireEntry,
        me: &Identity,
        directory: &mut Directory,
    ) -> Result<Shown, Failure> {
        let (seq, ts, sender) = (entry.seq, entry.ts, entry.sender.clone());
        let Some(body) = entry.body.as_deref().and_then(|b| b64::decode(b).ok()) else {
            return Err(Failure::Reason("the message has no readable body".into()));
        };
        let signers = self
            .signers(&entry.sender, me, directory)
            .await
            .map_err(Failure::Unavailable)?;
        match body_kind(&body) {
            Ok(BodyKind::SenderKeyDistribution) => {
                match self.take_distribution(&body, entry, me, &signers.accepted) {
                    Ok(()) | Err(CryptoError::NotARecipient) => Ok(Shown::Quiet { seq }),
                    Err(CryptoError::BadSignature) => Err(Failure::BadSignature),
                    Err(err) => Err(Failure::Reason(format!(
                        "a key distribution was rejected: {err}"
                    ))),
                }
            }
            Ok(BodyKind::Message) => {
                let opened = self.open_message(&body, entry, &signers.accepted)?;
                let device = (!opened.header.device.is_legacy()).then_some(opened.header.device);
                let is_sender_verified = signers.is_verified && entry.sender != self.me;
                Ok(match opened.content {
                    Content::Payload(payload) => self.judge_payload(
                        entry,
                        device,
                        payload,
                        is_sender_verified,
                        opened.is_late,
                    ),
                    Content::Unsupported => Shown::Unsupported {
                        seq,
                        ts,
                        sender,
                        device,
                    },
                })
            }
            Ok(BodyKind::Signal) => Err(Failure::Reason(
                "a signal (receipt or typing) stored in the log, where signals never belong".into(),
            )),
            Err(CryptoError::UnknownVersion { .. }) => Ok(Shown::Unsupported {
                seq,
                ts,
                sender,
                device: None,
            }),
            // A timer statement belongs in a `timer` entry, never a message.
            Ok(BodyKind::Timer) => Err(Failure::Reason(
                "a timer statement sent as a message".to_owned(),
            )),
            Err(err) => Err(Failure::Reason(err.to_string())),
        }
    }

    /// A message that opened (its sender is the envelope's signed one):
    /// a text or a file becomes a possible target of later relations; a
    /// relation is judged by §21's rules against its target.
    fn judge_payload(
        &mut self,
        entry: &WireEntry,
        device: Option<DeviceId>,
        mut payload: Payload,
        is_sender_verified: bool,
        is_late: bool,
    ) -> Shown {
        let (seq, ts, sender) = (entry.seq, entry.ts, entry.sender.clone());
        let Some(relation) = Relation::from_payload(&payload) else {
            let kind = match &mut payload {
                Payload::Text { reply_to, .. } | Payload::File { reply_to, .. } => {
                    // A reply names an earlier message, or nothing (§21).
                    if reply_to.is_some_and(|of| of >= seq) {
                        *reply_to = None;
                    }
                    if matches!(payload, Payload::Text { .. }) {
                        TargetKind::Text
                    } else {
                        TargetKind::File
                    }
                }
                _ => unreachable!("not a relation, so a text or a file"),
            };
            let expires = self.expires_at(seq, ts);
            self.targets.insert(
                seq,
                Target {
                    sender: sender.clone(),
                    kind,
                    expires,
                },
            );
            return Shown::Message {
                seq,
                ts,
                sender,
                device,
                payload,
                is_sender_verified,
                is_late,
                state: MessageState::default(),
            };
        };
        let rejected = |reason: &str| Shown::Rejected {
            seq,
            ts,
            sender: sender.clone(),
            reason: reason.to_owned(),
        };
        let of = relation.of();
        if of >= seq {
            return rejected(&format!("refers to #{of}, which is not an earlier message"));
        }
        let now = super::relations::now_ms();
        // A target the reader does not have (before its membership, not a
        // message, expired): the relation applies to nothing.
        let Some(target) = self
            .targets
            .get_mut(&of)
            .filter(|t| t.expires.is_none_or(|at| at > now))
        else {
            return Shown::Quiet { seq };
        };
        let is_own = target.sender == sender;
        match &relation {
            Relation::Edit { .. } if !is_own => {
                return rejected("an edit of someone else's message");
            }
            Relation::Delete { .. } if !is_own => {
                return rejected("a delete of someone else's message");
            }
            Relation::Edit { .. } if target.kind != TargetKind::Text => {
                return Shown::Quiet { seq };
            }
            Relation::React { .. }
                if !matches!(target.kind, TargetKind::Text | TargetKind::File) =>
            {
                return Shown::Quiet { seq };
            }
            Relation::Delete { .. } => target.kind = TargetKind::Deleted,
            _ => {}
        }
        Shown::Relation {
            seq,
            ts,
            sender,
            device,
            relation,
            is_sender_verified,
            is_late,
        }
    }

    fn take_distribution(
        &mut self,
        body: &[u8],
        entry: &WireEntry,
        me: &Identity,
        accepted: &[IdentityKey],
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
        let key = with_any_key(accepted, |identity| {
            let context = OpenContext {
                room_id: self.room.0,
                sender: &entry.sender,
                sender_identity: identity,
            };
            sender_keys::open_distribution(body, &context, &me.username, my_key)
        })?;
        if entry.sender == self.me {
            self.own_latest
                .insert(header.device, (header.epoch, header.recipients.clone()));
            self.own_distributed_at.insert(header.device, entry.ts);
        }
        self.keys
            .insert((entry.sender.clone(), header.device, header.epoch), key);
        Ok(())
    }

    fn open_message(
        &mut self,
        body: &[u8],
        entry: &WireEntry,
        accepted: &[IdentityKey],
    ) -> Result<envelope::OpenedMessage, Failure> {
        let reason = |e: CryptoError| Failure::Reason(e.to_string());
        let header = envelope::peek(body).map_err(reason)?;
        if header.room_id != self.room.0 {
            return Err(reason(CryptoError::WrongRoom));
        }
        if header.sender != entry.sender {
            return Err(reason(CryptoError::WrongSender));
        }
        if entry.sender == self.me {
            let highest = self
                .own_counters
                .entry((header.device, header.epoch))
                .or_insert(header.counter);
            *highest = (*highest).max(header.counter);
        }
        let chain = (entry.sender.clone(), header.device, header.epoch);
        let Some(key) = self.keys.get(&chain) else {
            // Say who did not sign it before saying we cannot read it.
            if !accepted
                .iter()
                .any(|identity| verifies_body(body, identity))
            {
                return Err(Failure::BadSignature);
            }
            return Err(Failure::Reason("no key for this message: it was sent before you joined, or its key was not shared with you".into()));
        };
        let replay = &mut self.replay;
        with_any_key(accepted, |identity| {
            let context = OpenContext {
                room_id: self.room.0,
                sender: &entry.sender,
                sender_identity: identity,
            };
            envelope::open(body, &context, key, replay)
        })
        .map_err(|err| match err {
            CryptoError::BadSignature => Failure::BadSignature,
            other => reason(other),
        })
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
        let mut outgoing = self.prepare_key(members, is_dm, me, directory).await?;
        let message = self
            .sending_state()
            .seal(payload, &me.current)
            .context("sealing the message")?;
        // Counted as used now, not only once read back from the log: a
        // deleted or expired message comes back as a tombstone without its
        // envelope, and a device that restarts must not seal that counter
        // (or, if its distribution is gone too, that epoch) again.
        if let Ok(header) = envelope::peek(&message) {
            let highest = self
                .own_counters
                .entry((header.device, header.epoch))
                .or_insert(header.counter);
            *highest = (*highest).max(header.counter);
        }
        outgoing.bodies.push(message);
        Ok(outgoing)
    }

    /// Makes sure this device holds a sender key for the room's current
    /// `members` and their keys: returns the distribution to post first
    /// when a new key was needed (in `bodies`), or nothing.
    async fn prepare_key(
        &mut self,
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
        let now = super::relations::now_ms();
        let ttl_ms = i64::from(self.ttl()) * 1000;
        let is_aging = ttl_ms > 0
            && self
                .own_distributed_at
                .get(&self.device)
                .is_none_or(|at| now - at > ttl_ms / 2);
        let rotation = self
            .sending_state()
            .rotation_needed(&recipient_refs)
            .or(is_aging.then_some(RotationReason::DistributionAging));
        if rotation.is_some() {
            self.own_distributed_at.insert(self.device, now);
        }
        let sending = self.sending_state();
        let mut bodies = Vec::new();
        if rotation.is_some() {
            bodies.push(
                sending
                    .rotate(&recipient_refs, &me.current)
                    .context("making a new sender key")?,
            );
        }
        Ok(Outgoing {
            bodies,
            rotation,
            left_out,
        })
    }

    /// The sending state, resumed from the log the first time it is needed:
    /// this device's own chain, continued where the log shows it stopped.
    fn sending_state(&mut self) -> &mut SenderKeyState {
        let (room, device) = (self.room.0, self.device);
        let resumed = || {
            let latest = self.own_latest.get(&device);
            let own_key = latest.and_then(|(epoch, recipients)| {
                let key = self.keys.get(&(self.me.clone(), device, *epoch))?;
                let next = self
                    .own_counters
                    .get(&(device, *epoch))
                    .map_or(0, |c| c + 1);
                Some(SenderKeyState::resume_with_key(
                    room,
                    &self.me,
                    device,
                    key.clone(),
                    recipients,
                    next,
                ))
            });
            own_key.unwrap_or_else(|| {
                let last_epoch = self
                    .own_counters
                    .keys()
                    .filter(|(d, _)| *d == device)
                    .map(|(_, epoch)| *epoch)
                    .chain(latest.map(|(e, _)| *e))
                    .max();
                SenderKeyState::resume_after(room, &self.me, device, last_epoch.unwrap_or(0))
            })
        };
        if self.sending.is_none() {
            self.sending = Some(resumed());
        }
        self.sending.as_mut().expect("just set")
    }
}

/// Everything a `Conversation` learnt from its room's log up to
/// `last_seq`, for the client's store (sealed there): restoring it and
/// reading the entries after `last_seq` judges them exactly as reading the
/// whole log again would (the replay rule's seen counters, key history,
/// the sender keys, this user's own chains). No `Debug`: it holds keys.
#[derive(Serialize, Deserialize)]
pub struct SavedState {
    last_seq: i64,
    keys: Vec<SavedKey>,
    replay: Vec<SavedChain>,
    /// Own device (hex), epoch, recipients (username, fingerprint).
    own_latest: Vec<(String, u32, Vec<SavedRecipient>)>,
    /// Own device (hex), epoch, highest counter.
    own_counters: Vec<(String, u32, u64)>,
    /// User, retired key (SPKI DER), seq of the `key` entry.
    retired: Vec<(String, Vec<u8>, i64)>,
    refetched: Vec<String>,
    /// Senders of `targets`, each once.
    #[serde(default)]
    target_senders: Vec<String>,
    /// Seq, index in `target_senders`, kind, expiry of every possible
    /// target of a relation (§21). A few bytes per message: a store
    /// written before relations existed has none, and relations to its
    /// older messages apply to nothing.
    #[serde(default)]
    targets: Vec<(i64, u32, TargetKind, Option<i64>)>,
    #[serde(default)]
    timers: Vec<TimerChange>,
    /// Own device (hex), when it last distributed a key here (Unix ms).
    #[serde(default)]
    own_distributed_at: Vec<(String, i64)>,
}

/// A recipient of a distribution: username and key fingerprint.
type SavedRecipient = (String, [u8; 32]);

/// One unwrapped sender key: its chain and the raw key.
#[derive(Serialize, Deserialize)]
struct SavedKey {
    sender: String,
    device: String,
    epoch: u32,
    key: [u8; 32],
}

impl Drop for SavedKey {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl SavedState {
    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    /// When an entry at `seq` stored at `ts` expires (Unix ms), by the
    /// timers read up to `last_seq`.
    pub fn expires_at(&self, seq: i64, ts: i64) -> Option<i64> {
        expires_at(&self.timers, seq, ts)
    }
}

/// When an entry at `seq` stored at `ts` expires under `timers` (in log
/// order): the latest change before `seq` decides.
fn expires_at(timers: &[TimerChange], seq: i64, ts: i64) -> Option<i64> {
    let ttl = timers.iter().rev().find(|t| t.seq < seq)?.ttl;
    (ttl > 0).then(|| ts.saturating_add(i64::from(ttl) * 1000))
}

impl Conversation {
    /// What to keep so that `restore` continues where this stands.
    pub fn save(&self) -> SavedState {
        let mut keys: Vec<SavedKey> = self
            .keys
            .iter()
            .map(|((sender, device, epoch), key)| SavedKey {
                sender: sender.clone(),
                device: device.to_hex(),
                epoch: *epoch,
                key: *key.key_bytes(),
            })
            .collect();
        keys.sort_by(|a, b| (&a.sender, &a.device, a.epoch).cmp(&(&b.sender, &b.device, b.epoch)));
        let mut own_latest: Vec<_> = self
            .own_latest
            .iter()
            .map(|(device, (epoch, recipients))| {
                let recipients = recipients
                    .iter()
                    .map(|(name, fp)| (name.clone(), fp.0))
                    .collect();
                (device.to_hex(), *epoch, recipients)
            })
            .collect();
        own_latest.sort_by(|a, b| a.0.cmp(&b.0));
        let mut own_counters: Vec<_> = self
            .own_counters
            .iter()
            .map(|((device, epoch), counter)| (device.to_hex(), *epoch, *counter))
            .collect();
        own_counters.sort();
        let mut retired: Vec<_> = self
            .retired
            .iter()
            .flat_map(|(user, keys)| {
                keys.iter()
                    .map(|r| (user.clone(), r.key.spki_der().to_vec(), r.seq))
            })
            .collect();
        retired.sort();
        let mut refetched: Vec<String> = self.refetched.iter().cloned().collect();
        refetched.sort();
        let mut target_senders: Vec<String> = Vec::new();
        let mut sender_index: HashMap<&str, u32> = HashMap::new();
        let targets = self
            .targets
            .iter()
            .map(|(seq, target)| {
                let index = *sender_index.entry(&target.sender).or_insert_with(|| {
                    target_senders.push(target.sender.clone());
                    (target_senders.len() - 1) as u32
                });
                (*seq, index, target.kind, target.expires)
            })
            .collect();
        SavedState {
            target_senders,
            targets,
            timers: self.timers.clone(),
            own_distributed_at: {
                let mut at: Vec<_> = self
                    .own_distributed_at
                    .iter()
                    .map(|(device, ts)| (device.to_hex(), *ts))
                    .collect();
                at.sort();
                at
            },
            last_seq: self.last_seq,
            keys,
            replay: self.replay.chains(),
            own_latest,
            own_counters,
            retired,
            refetched,
        }
    }

    /// A conversation that continues from `saved`, sending as `device`.
    pub fn restore(
        room: RoomId,
        me: &str,
        device: DeviceId,
        saved: &SavedState,
    ) -> anyhow::Result<Self> {
        let bad = || anyhow::anyhow!("a saved room state is malformed");
        let device_of = |hex: &str| DeviceId::from_hex(hex).ok_or_else(bad);
        let mut conversation = Self::new(room, me, device);
        conversation.last_seq = saved.last_seq;
        for key in &saved.keys {
            conversation.keys.insert(
                (key.sender.clone(), device_of(&key.device)?, key.epoch),
                SenderKey::from_bytes(key.epoch, key.key),
            );
        }
        conversation.replay = ReplayTracker::restore(&saved.replay).ok_or_else(bad)?;
        for (own, epoch, recipients) in &saved.own_latest {
            let recipients = recipients
                .iter()
                .map(|(name, fp)| (name.clone(), Fingerprint(*fp)))
                .collect();
            conversation
                .own_latest
                .insert(device_of(own)?, (*epoch, recipients));
        }
        for (own, epoch, counter) in &saved.own_counters {
            conversation
                .own_counters
                .insert((device_of(own)?, *epoch), *counter);
        }
        for (user, spki, seq) in &saved.retired {
            let key = IdentityKey::from_spki_der(spki).map_err(|_| bad())?;
            conversation
                .retired
                .entry(user.clone())
                .or_default()
                .push(RetiredKey { key, seq: *seq });
        }
        conversation.refetched = saved.refetched.iter().cloned().collect();
        for (seq, index, kind, expires) in &saved.targets {
            let sender = saved.target_senders.get(*index as usize).ok_or_else(bad)?;
            conversation.targets.insert(
                *seq,
                Target {
                    sender: sender.clone(),
                    kind: *kind,
                    expires: *expires,
                },
            );
        }
        conversation.timers = saved.timers.clone();
        for (own, ts) in &saved.own_distributed_at {
            conversation.own_distributed_at.insert(device_of(own)?, *ts);
        }
        Ok(conversation)
    }
}

/// Sets each message's verified mark from the trust pins as they are now
/// (a peer whose key the user has marked verified), as reading the whole
/// log now would: the store keeps the mark of the time a message was
/// first read, and the user may have verified the peer since.
pub fn mark_verified_now(items: &mut [Shown], me: &str, trust: &TrustStore) {
    for item in items {
        if let Shown::Message {
            sender,
            is_sender_verified,
            ..
        }
        | Shown::Relation {
            sender,
            is_sender_verified,
            ..
        } = item
        {
            *is_sender_verified =
                sender != me && trust.peer(sender).is_some_and(|peer| peer.is_verified);
        }
    }
}

/// Why a body did not open: a signature no accepted key verifies (which
/// may call for fetching the sender's keys again), or anything else.
enum Failure {
    BadSignature,
    Reason(String),
    /// The sender's keys could not be fetched: may pass if tried again.
    Unavailable(String),
}

/// This user's own keys, newest first, from the local key store.
fn own_keys(me: &Identity) -> Vec<IdentityKey> {
    std::iter::once(&me.current)
        .chain(&me.previous)
        .map(|key| key.public().clone())
        .collect()
}

/// Whether `key` signed `body` (a message or a distribution), whatever else
/// is wrong with it: to tell a retired key's signature from a stranger's.
fn verifies_body(body: &[u8], key: &IdentityKey) -> bool {
    match body_kind(body) {
        Ok(BodyKind::Message) => envelope::is_signed_by(body, key),
        Ok(BodyKind::SenderKeyDistribution) => sender_keys::is_signed_by(body, key),
        Ok(BodyKind::Signal | BodyKind::Timer) | Err(_) => false,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_before_an_entry_decides_its_expiry() {
        let timers = [
            TimerChange { seq: 10, ttl: 60 },
            TimerChange { seq: 20, ttl: 0 },
            TimerChange { seq: 30, ttl: 2 },
        ];
        assert_eq!(expires_at(&timers, 5, 1_000), None, "before any timer");
        assert_eq!(
            expires_at(&timers, 10, 1_000),
            None,
            "the timer entry itself"
        );
        assert_eq!(expires_at(&timers, 11, 1_000), Some(61_000));
        assert_eq!(expires_at(&timers, 25, 1_000), None, "turned off");
        assert_eq!(expires_at(&timers, 31, 1_000), Some(3_000));
    }

    #[test]
    fn relation_targets_and_timers_survive_save_and_restore() -> anyhow::Result<()> {
        let device = DeviceId::generate()?;
        let mut conversation = Conversation::new(RoomId(7), "alice", device);
        for (seq, sender, kind) in [
            (3, "alice", TargetKind::Text),
            (4, "bob", TargetKind::File),
            (5, "alice", TargetKind::Deleted),
            (6, "bob", TargetKind::Erased),
        ] {
            conversation.targets.insert(
                seq,
                Target {
                    sender: sender.into(),
                    kind,
                    expires: (seq == 4).then_some(99),
                },
            );
        }
        conversation.timers.push(TimerChange { seq: 2, ttl: 300 });
        conversation.own_distributed_at.insert(device, 1234);
        let json = serde_json::to_vec(&conversation.save())?;
        let restored =
            Conversation::restore(RoomId(7), "alice", device, &serde_json::from_slice(&json)?)?;
        let summary = |c: &Conversation| -> Vec<(i64, String, TargetKind, Option<i64>)> {
            c.targets
                .iter()
                .map(|(seq, t)| (*seq, t.sender.clone(), t.kind, t.expires))
                .collect()
        };
        assert!(summary(&restored) == summary(&conversation));
        assert_eq!(restored.ttl(), 300);
        assert_eq!(restored.expires_at(9, 0), Some(300_000));
        assert_eq!(restored.own_distributed_at.get(&device), Some(&1234));
        Ok(())
    }
}
