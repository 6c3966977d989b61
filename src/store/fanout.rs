//! Reads for cross-node delivery (`server::fanout`): the entries another
//! node committed, with who may see each one live, computed from the store
//! as the writer computes them at commit time; and rooms' positions for the
//! periodic catch-up. Written once for both backends (`db::query`), though
//! only a PostgreSQL deployment with several nodes needs them.

use std::sync::Arc;

use super::db;
use super::writer::Committed;
use super::{Entry, EntryKind, Result, RoomId, Store, StoreError, UserId};

/// One entry row with the ids and names the recipients need.
#[derive(sqlx::FromRow)]
struct EntryRow {
    seq: i64,
    ts: i64,
    kind: String,
    sender: String,
    subject_id: Option<i64>,
    subject: Option<String>,
    client_id: Option<String>,
    body: Option<Vec<u8>>,
    detail: Option<String>,
    expires_at: Option<i64>,
}

/// One membership period of a room.
#[derive(sqlx::FromRow)]
struct Period {
    user_id: i64,
    start_seq: i64,
    end_seq: Option<i64>,
}

const KINDS: [EntryKind; 12] = [
    EntryKind::Message,
    EntryKind::Create,
    EntryKind::Invite,
    EntryKind::Join,
    EntryKind::Leave,
    EntryKind::Remove,
    EntryKind::Key,
    EntryKind::Erased,
    EntryKind::Timer,
    EntryKind::Promote,
    EntryKind::Demote,
    EntryKind::Decline,
];

fn kind_of(s: &str) -> Result<EntryKind> {
    KINDS
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| StoreError::Db(sqlx::Error::Protocol(format!("unknown entry kind {s:?}"))))
}

impl Store {
    /// The PostgreSQL pool, when the store runs on PostgreSQL: the
    /// notification channel LISTENs and NOTIFYs through it.
    pub fn postgres_pool(&self) -> Option<sqlx::PgPool> {
        match &self.db {
            db::Db::Postgres(pool) => Some(pool.clone()),
            db::Db::Sqlite(_) => None,
        }
    }

    /// A room's entries after `after`, up to `upto`, oldest first, at most
    /// `limit`, each with who gets it live: the members whose membership
    /// period holds it (so a leaver or a removed member gets their own
    /// `leave` / `remove`, and a later joiner nothing from before), minus a
    /// direct conversation's peer who declined it; `notify` is an invitee
    /// for an `invite`, and a direct conversation's peer for the `create`
    /// of a pending request — as the writer reports them at commit.
    pub async fn committed_between(
        &self,
        room: RoomId,
        after: i64,
        upto: i64,
        limit: u32,
    ) -> Result<Vec<Committed>> {
        let rows: Vec<EntryRow> = db::query(
            "SELECT e.seq, e.ts, e.kind, s.username AS sender,
                    e.subject_id, sub.username AS subject, e.client_id, e.body, e.detail,
                    e.expires_at
             FROM entries e
             JOIN users s ON s.id = e.sender_id
             LEFT JOIN users sub ON sub.id = e.subject_id
             WHERE e.room_id = ?1 AND e.seq > ?2 AND e.seq <= ?3
             ORDER BY e.seq LIMIT ?4",
        )
        .bind(room)
        .bind(after)
        .bind(upto)
        .bind(i64::from(limit))
        .fetch_all(&self.db)
        .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let first = rows[0].seq;
        let periods: Vec<Period> = db::query(
            "SELECT user_id, start_seq, end_seq FROM memberships
             WHERE room_id = ?1 AND (end_seq IS NULL OR end_seq >= ?2)",
        )
        .bind(room)
        .bind(first)
        .fetch_all(&self.db)
        .await?;
        let requests: Vec<(i64, String)> =
            db::query("SELECT user_id, state FROM dm_requests WHERE room_id = ?")
                .bind(room)
                .fetch_all(&self.db)
                .await?;
        let declined: Vec<i64> = requests
            .iter()
            .filter(|(_, state)| state == "declined")
            .map(|(user, _)| *user)
            .collect();
        let pending: Vec<i64> = requests
            .iter()
            .filter(|(_, state)| state == "pending")
            .map(|(user, _)| *user)
            .collect();
        let mut out = Vec::with_capacity(rows.len());
        // Consecutive entries usually have the same recipients: share them.
        let mut shared: Option<(Vec<i64>, Arc<[UserId]>)> = None;
        for row in rows {
            let kind = kind_of(&row.kind)?;
            let mut ids: Vec<i64> = periods
                .iter()
                .filter(|p| p.start_seq <= row.seq && p.end_seq.is_none_or(|end| row.seq <= end))
                .map(|p| p.user_id)
                .filter(|user| !declined.contains(user))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            let recipients = match &shared {
                Some((same, list)) if *same == ids => list.clone(),
                _ => {
                    let list: Arc<[UserId]> = ids.iter().map(|id| UserId(*id)).collect();
                    shared = Some((ids, list.clone()));
                    list
                }
            };
            let notify = match kind {
                EntryKind::Invite => row.subject_id.map(UserId),
                EntryKind::Create => row
                    .subject_id
                    .filter(|peer| pending.contains(peer))
                    .map(UserId),
                _ => None,
            };
            out.push(Committed {
                entry: Entry {
                    room,
                    seq: row.seq,
                    ts: row.ts,
                    kind,
                    sender: row.sender,
                    subject: row.subject,
                    client_id: row.client_id,
                    body: row.body,
                    detail: row.detail,
                    expires: row.expires_at,
                },
                recipients,
                notify,
            });
        }
        Ok(out)
    }

    /// The positions (`last_seq`) of the given rooms that exist.
    pub async fn room_positions(&self, rooms: &[RoomId]) -> Result<Vec<(RoomId, i64)>> {
        let mut out = Vec::with_capacity(rooms.len());
        for chunk in rooms.chunks(IDS_PER_QUERY) {
            let marks = vec!["?"; chunk.len()].join(",");
            let mut query = db::query_built(format!(
                "SELECT id, last_seq FROM rooms WHERE id IN ({marks})"
            ));
            for room in chunk {
                query = query.bind(*room);
            }
            let rows: Vec<(i64, i64)> = query.fetch_all(&self.db).await?;
            out.extend(rows.into_iter().map(|(room, seq)| (RoomId(room), seq)));
        }
        Ok(out)
    }

    /// The rooms each of `users` is currently a member of, with their
    /// positions: (room, user, last_seq).
    pub async fn member_rooms(&self, users: &[UserId]) -> Result<Vec<(RoomId, UserId, i64)>> {
        let mut out = Vec::new();
        for chunk in users.chunks(IDS_PER_QUERY) {
            let marks = vec!["?"; chunk.len()].join(",");
            let mut query = db::query_built(format!(
                "SELECT m.room_id, m.user_id, r.last_seq FROM memberships m
                 JOIN rooms r ON r.id = m.room_id
                 WHERE m.end_seq IS NULL AND m.user_id IN ({marks})"
            ));
            for user in chunk {
                query = query.bind(*user);
            }
            let rows: Vec<(i64, i64, i64)> = query.fetch_all(&self.db).await?;
            out.extend(
                rows.into_iter()
                    .map(|(room, user, seq)| (RoomId(room), UserId(user), seq)),
            );
        }
        Ok(out)
    }
}

/// Bound values per `IN (...)` list.
const IDS_PER_QUERY: usize = 500;
