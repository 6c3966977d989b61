//! Signals (receipts, typing) for one room: sealed under this device's
//! current sender key for the room, opened with the sender key of the
//! sending device's chain (PROTOCOL §21). A child of `conversation` because
//! it uses the same keys and sending state; signals never touch the log's
//! replay set or position.

use super::{Conversation, with_any_key};
use crate::client::directory::Directory;
use crate::client::keystore::Identity;
use crate::crypto::envelope::OpenContext;
use crate::crypto::signal::{self, Freshness, Signal};

/// What `Conversation::seal_signal` produced: a sender-key distribution to
/// post (as an ordinary `send`) before the signal when this device had no
/// usable key for the room, then the signal's body.
pub struct SealedSignal {
    pub distribution: Option<Vec<u8>>,
    pub body: Vec<u8>,
}

impl Conversation {
    /// Seals `signal` with counter `counter` (from a `SignalClock`) under
    /// this device's current sender key. Only when it has none is one made
    /// for `members` and returned as `distribution`: a membership change
    /// is the next message's business (signals go only to current members
    /// anyway), so signals never cause key churn.
    pub async fn seal_signal(
        &mut self,
        signal: &Signal,
        counter: u64,
        members: &[String],
        is_dm: bool,
        me: &Identity,
        directory: &mut Directory,
    ) -> anyhow::Result<SealedSignal> {
        let distribution = if self.has_sending_key() {
            None
        } else {
            let outgoing = self.prepare_key(members, is_dm, me, directory).await?;
            outgoing.bodies.into_iter().next()
        };
        let (room, device) = (self.room.0, self.device);
        let key = self
            .sending_state()
            .current_key()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no sender key for the room"))?;
        let body = signal::seal(room, &self.me, &device, &key, counter, signal, &me.current)?;
        Ok(SealedSignal { distribution, body })
    }

    /// Opens a signal `sender` sent in this room, at the reader's time
    /// `now_ms`. `None` for anything that does not open (no key for its
    /// chain, a bad signature, stale or repeated, an unknown type): signals
    /// are best effort and dropped silently.
    pub async fn open_signal(
        &mut self,
        body: &[u8],
        sender: &str,
        now_ms: u64,
        freshness: &mut Freshness,
        me: &Identity,
        directory: &mut Directory,
    ) -> Option<Signal> {
        let header = signal::peek(body).ok()?;
        let key = self
            .keys
            .get(&(sender.to_owned(), header.device, header.epoch))?
            .clone();
        let signers = self.signers(sender, me, directory).await.ok()?;
        let room = self.room.0;
        with_any_key(&signers.accepted, |identity| {
            let context = OpenContext {
                room_id: room,
                sender,
                sender_identity: identity,
            };
            signal::open(body, &context, &key, now_ms, freshness)
        })
        .ok()
        .map(|opened| opened.signal)
    }
}

impl Conversation {
    /// Whether this device holds a sender key for the room now (resuming
    /// its chain from the log the first time), so a signal needs no
    /// distribution first.
    pub fn has_sending_key(&mut self) -> bool {
        self.sending_state().current_key().is_some()
    }
}
