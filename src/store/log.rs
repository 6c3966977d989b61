//! Reading the per-room log: sync pages forward from a cursor and history
//! pages backward. A reader only ever sees entries inside its own membership
//! periods, and only while it is a member.

use std::ops::ControlFlow;

use serde::Serialize;

use super::{Result, RoomId, Store, UserId, db};

/// What an entry records. Everything but `Message` is written by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Message,
    Create,
    Invite,
    Join,
    Leave,
    Remove,
    Key,
    /// A message whose ciphertext is gone for good (`detail`: the reason).
    Erased,
    /// A signed disappearing-messages statement (`detail`: the duration).
    Timer,
    Promote,
    Demote,
    /// An invitee turned the invitation down.
    Decline,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Create => "create",
            Self::Invite => "invite",
            Self::Join => "join",
            Self::Leave => "leave",
            Self::Remove => "remove",
            Self::Key => "key",
            Self::Erased => "erased",
            Self::Timer => "timer",
            Self::Promote => "promote",
            Self::Demote => "demote",
            Self::Decline => "decline",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "message" => Self::Message,
            "create" => Self::Create,
            "invite" => Self::Invite,
            "join" => Self::Join,
            "leave" => Self::Leave,
            "remove" => Self::Remove,
            "key" => Self::Key,
            "erased" => Self::Erased,
            "timer" => Self::Timer,
            "promote" => Self::Promote,
            "demote" => Self::Demote,
            "decline" => Self::Decline,
            _ => return None,
        })
    }
}

/// One entry of a room's log, as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub room: RoomId,
    pub seq: i64,
    pub ts: i64,
    pub kind: EntryKind,
    pub sender: String,
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub body: Option<Vec<u8>>,
    pub detail: Option<String>,
    /// For a message under a disappearing-messages timer: when it expires
    /// (unix ms).
    pub expires: Option<i64>,
}

/// A bounded slice of a room's log, in ascending order.
#[derive(Debug, Clone)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub has_more: bool,
}

/// A row of `visible_entries!`, decoded by column position (a tuple): by
/// name, sqlx hashes and compares a column name for every value of every row.
type EntryRow = (
    i64,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
    Option<i64>,
);

fn entry_from_row(room: RoomId, row: EntryRow) -> sqlx::Result<Entry> {
    let (seq, ts, kind, sender, subject, client_id, body, detail, expires) = row;
    let kind = EntryKind::parse(&kind)
        .ok_or_else(|| sqlx::Error::Protocol(format!("unknown entry kind {kind:?}")))?;
    Ok(Entry {
        room,
        seq,
        ts,
        kind,
        sender,
        subject,
        client_id,
        body,
        detail,
        expires,
    })
}

/// A room's entries (?1) that fall inside one of the reader's (?2)
/// membership periods, with names resolved. Callers add the range and order.
macro_rules! visible_entries {
    () => {
        "SELECT e.seq, e.ts, e.kind, s.username AS sender,
        sub.username AS subject, e.client_id, e.body, e.detail, e.expires_at
     FROM entries e
     JOIN memberships m ON m.room_id = e.room_id AND m.user_id = ?2
          AND e.seq >= m.start_seq AND (m.end_seq IS NULL OR e.seq <= m.end_seq)
     JOIN users s ON s.id = e.sender_id
     LEFT JOIN users sub ON sub.id = e.subject_id
     WHERE e.room_id = ?1"
    };
}

impl Store {
    /// Hands `visit` the entries after `after`, oldest first, at most
    /// `limit`, restricted to the reader's membership periods, each as soon
    /// as its row is read, until `visit` breaks; returns whether more may
    /// follow (always after a break). `NotFound` unless `user` is a member.
    pub async fn visit_entries_after(
        &self,
        room: RoomId,
        user: UserId,
        after: i64,
        limit: u32,
        mut visit: impl FnMut(Entry) -> ControlFlow<()> + Send,
    ) -> Result<bool> {
        self.require_member(room, user).await?;
        let (mut visited, mut has_more) = (0, false);
        let broke = db::query(concat!(
            visible_entries!(),
            " AND e.seq > ?3 ORDER BY e.seq LIMIT ?4"
        ))
        .bind(room)
        .bind(user)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .visit(&self.db, |row: EntryRow| {
            if visited == limit {
                has_more = true;
                return Ok(ControlFlow::Continue(()));
            }
            let flow = visit(entry_from_row(room, row)?);
            visited += 1;
            Ok(flow)
        })
        .await?;
        Ok(broke || has_more)
    }

    /// Entries before `before`, returned oldest first, at most `limit`: the
    /// newest `limit` of them.
    pub async fn entries_before(
        &self,
        room: RoomId,
        user: UserId,
        before: i64,
        limit: u32,
    ) -> Result<Page> {
        self.require_member(room, user).await?;
        let mut rows: Vec<EntryRow> = db::query(concat!(
            visible_entries!(),
            " AND e.seq < ?3 ORDER BY e.seq DESC LIMIT ?4"
        ))
        .bind(room)
        .bind(user)
        .bind(before)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.db)
        .await?;
        let has_more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        rows.reverse();
        let entries = rows
            .into_iter()
            .map(|row| entry_from_row(room, row))
            .collect::<sqlx::Result<_>>()?;
        Ok(Page { entries, has_more })
    }
}
