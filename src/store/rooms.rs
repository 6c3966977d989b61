//! Reading rooms, memberships and invitations. Changes go through `writer`.

use serde::Serialize;
use sqlx::FromRow;

use super::{Result, RoomId, Store, StoreError, UserId, db};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    Group,
    Dm,
}

/// A room as one of its members sees it.
#[derive(Debug, Clone, Serialize)]
pub struct RoomInfo {
    pub id: RoomId,
    pub kind: RoomKind,
    pub name: Option<String>,
    pub creator: String,
    pub members: Vec<String>,
    pub last_seq: i64,
    /// First entry of the caller's current membership.
    pub joined_seq: i64,
    /// Admins other than the creator, sorted (empty for a DM).
    pub admins: Vec<String>,
    /// The disappearing-messages duration in seconds (0 = off).
    pub ttl: i64,
    /// A direct conversation the caller has not accepted yet (§21).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub request: bool,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Invitation {
    pub room: RoomId,
    pub name: Option<String>,
    pub invited_by: String,
    pub created_at: i64,
}

#[derive(FromRow)]
struct RoomRow {
    id: RoomId,
    kind: String,
    name: Option<String>,
    creator: String,
    last_seq: i64,
    start_seq: i64,
    ttl: i64,
    request_state: Option<String>,
}

/// A room as a current member sees it; callers add the conditions.
macro_rules! room_select {
    () => {
        "SELECT r.id, r.kind, r.name, c.username AS creator, r.last_seq, m.start_seq, r.ttl,
            (SELECT d.state FROM dm_requests d WHERE d.room_id = r.id AND d.user_id = m.user_id)
                AS request_state
     FROM rooms r
     JOIN memberships m ON m.room_id = r.id AND m.end_seq IS NULL
     JOIN users c ON c.id = r.creator_id"
    };
}

impl Store {
    /// The rooms and DMs `user` is currently a member of, but for direct
    /// conversations they declined.
    pub async fn rooms_of(&self, user: UserId) -> Result<Vec<RoomInfo>> {
        let rows: Vec<RoomRow> = db::query(concat!(
            room_select!(),
            " WHERE m.user_id = ? AND NOT EXISTS (
                 SELECT 1 FROM dm_requests d
                 WHERE d.room_id = r.id AND d.user_id = m.user_id AND d.state = 'declined')
             ORDER BY r.id"
        ))
        .bind(user)
        .fetch_all(&self.db)
        .await?;
        let mut rooms = Vec::with_capacity(rows.len());
        for row in rows {
            rooms.push(self.room_info_from(row).await?);
        }
        Ok(rooms)
    }

    /// One room, if `user` is a member of it; `NotFound` otherwise.
    pub async fn room_for_member(&self, room: RoomId, user: UserId) -> Result<RoomInfo> {
        let row: RoomRow = db::query(concat!(room_select!(), " WHERE m.user_id = ? AND r.id = ?"))
            .bind(user)
            .bind(room)
            .fetch_optional(&self.db)
            .await?
            .ok_or(StoreError::NotFound)?;
        self.room_info_from(row).await
    }

    async fn room_info_from(&self, row: RoomRow) -> Result<RoomInfo> {
        let members = self.member_names(row.id).await?;
        let admins = self.admin_names(row.id).await?;
        Ok(RoomInfo {
            id: row.id,
            kind: if row.kind == "dm" {
                RoomKind::Dm
            } else {
                RoomKind::Group
            },
            name: row.name,
            creator: row.creator,
            members,
            last_seq: row.last_seq,
            joined_seq: row.start_seq,
            admins,
            ttl: row.ttl,
            request: row.request_state.is_some_and(|state| state != "accepted"),
        })
    }

    async fn admin_names(&self, room: RoomId) -> Result<Vec<String>> {
        Ok(db::query(
            "SELECT u.username FROM room_admins a JOIN users u ON u.id = a.user_id
             WHERE a.room_id = ? ORDER BY u.username",
        )
        .bind(room)
        .fetch_all_scalars(&self.db)
        .await?)
    }

    /// Where a room stands for a timer statement: its newest seq and the
    /// seq of its latest timer entry. `NotFound` unless `user` is a member.
    pub async fn timer_position(&self, room: RoomId, user: UserId) -> Result<(i64, i64)> {
        self.require_member(room, user).await?;
        Ok(
            db::query("SELECT last_seq, timer_seq FROM rooms WHERE id = ?")
                .bind(room)
                .fetch_one(&self.db)
                .await?,
        )
    }

    /// Usernames `user` blocks, sorted.
    pub async fn blocked_names(&self, user: UserId) -> Result<Vec<String>> {
        Ok(db::query(
            "SELECT u.username FROM blocks b JOIN users u ON u.id = b.blocked_id
             WHERE b.blocker_id = ? ORDER BY u.username",
        )
        .bind(user)
        .fetch_all_scalars(&self.db)
        .await?)
    }

    /// Who a signal of `sender` in `room` goes to: every current member
    /// but those who block the sender or declined the conversation.
    /// `NotFound` unless the sender is a current member.
    pub async fn signal_audience(&self, room: RoomId, sender: UserId) -> Result<Vec<UserId>> {
        let rows: Vec<(UserId, bool)> = db::query(
            "SELECT m.user_id,
                    EXISTS (SELECT 1 FROM blocks b WHERE b.blocker_id = m.user_id AND b.blocked_id = ?2)
                    OR EXISTS (SELECT 1 FROM dm_requests d WHERE d.room_id = ?1
                               AND d.user_id = m.user_id AND d.state = 'declined')
             FROM memberships m WHERE m.room_id = ?1 AND m.end_seq IS NULL",
        )
        .bind(room)
        .bind(sender)
        .fetch_all(&self.db)
        .await?;
        if !rows.iter().any(|(user, _)| *user == sender) {
            return Err(StoreError::NotFound);
        }
        Ok(rows
            .into_iter()
            .filter(|(_, excluded)| !excluded)
            .map(|(user, _)| user)
            .collect())
    }

    async fn member_names(&self, room: RoomId) -> Result<Vec<String>> {
        Ok(db::query(
            "SELECT u.username FROM memberships m JOIN users u ON u.id = m.user_id
             WHERE m.room_id = ? AND m.end_seq IS NULL ORDER BY u.username",
        )
        .bind(room)
        .fetch_all_scalars(&self.db)
        .await?)
    }

    /// The position of a room's newest entry (0 for an unknown room).
    pub async fn last_seq(&self, room: RoomId) -> Result<i64> {
        let seq: Option<i64> = db::query("SELECT last_seq FROM rooms WHERE id = ?")
            .bind(room)
            .fetch_optional_scalar(&self.db)
            .await?;
        Ok(seq.unwrap_or(0))
    }

    /// Current members of a room, as ids.
    pub async fn member_ids(&self, room: RoomId) -> Result<Vec<UserId>> {
        Ok(
            db::query("SELECT user_id FROM memberships WHERE room_id = ? AND end_seq IS NULL")
                .bind(room)
                .fetch_all_scalars(&self.db)
                .await?,
        )
    }

    /// `Ok` if `user` is currently a member of `room`, `NotFound` otherwise
    /// (whether or not the room exists).
    pub async fn require_member(&self, room: RoomId, user: UserId) -> Result<()> {
        let found: Option<i64> = db::query(
            "SELECT start_seq FROM memberships WHERE room_id = ? AND user_id = ? AND end_seq IS NULL",
        )
        .bind(room)
        .bind(user)
        .fetch_optional_scalar(&self.db)
        .await?;
        found.map(|_| ()).ok_or(StoreError::NotFound)
    }

    /// Everyone who currently shares at least one room with `user`, and
    /// their usernames (the user themself excluded).
    pub async fn co_members(&self, user: UserId) -> Result<Vec<(UserId, String)>> {
        let rows: Vec<(i64, String)> = db::query(
            "SELECT DISTINCT o.user_id, u.username
             FROM memberships mine
             JOIN memberships o ON o.room_id = mine.room_id AND o.end_seq IS NULL AND o.user_id != mine.user_id
             JOIN users u ON u.id = o.user_id
             WHERE mine.user_id = ? AND mine.end_seq IS NULL",
        )
        .bind(user)
        .fetch_all(&self.db)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name)| (UserId(id), name))
            .collect())
    }

    /// Every current member, with username, of every room that any of
    /// `users` is currently in: one read for a whole presence window
    /// (`server::presence`), however many users it covers.
    pub async fn rooms_with_members(
        &self,
        users: &[UserId],
    ) -> Result<Vec<(RoomId, UserId, String)>> {
        let ids = serde_json::to_string(&users.iter().map(|u| u.0).collect::<Vec<_>>())
            .expect("a list of integers serialises");
        let rows: Vec<(i64, i64, String)> = db::query(match self.db.backend() {
            db::Backend::Sqlite => {
                "SELECT m.room_id, m.user_id, u.username
                 FROM memberships m JOIN users u ON u.id = m.user_id
                 WHERE m.end_seq IS NULL AND m.room_id IN (
                     SELECT DISTINCT room_id FROM memberships
                     WHERE end_seq IS NULL AND user_id IN (SELECT value FROM json_each(?)))
                 ORDER BY m.room_id, u.username"
            }
            db::Backend::Postgres => {
                "SELECT m.room_id, m.user_id, u.username
                 FROM memberships m JOIN users u ON u.id = m.user_id
                 WHERE m.end_seq IS NULL AND m.room_id IN (
                     SELECT DISTINCT room_id FROM memberships
                     WHERE end_seq IS NULL AND user_id IN (
                         SELECT CAST(value AS BIGINT)
                         FROM json_array_elements_text(CAST(? AS JSON))))
                 ORDER BY m.room_id, u.username"
            }
        })
        .bind(ids)
        .fetch_all(&self.db)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(room, id, name)| (RoomId(room), UserId(id), name))
            .collect())
    }

    /// Usernames of the given room's current members, with their ids.
    pub async fn members_with_names(&self, room: RoomId) -> Result<Vec<(UserId, String)>> {
        let rows: Vec<(i64, String)> = db::query(
            "SELECT u.id, u.username FROM memberships m JOIN users u ON u.id = m.user_id
             WHERE m.room_id = ? AND m.end_seq IS NULL ORDER BY u.username",
        )
        .bind(room)
        .fetch_all(&self.db)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name)| (UserId(id), name))
            .collect())
    }

    /// Pending invitations addressed to `user`.
    pub async fn invitations_for(&self, user: UserId) -> Result<Vec<Invitation>> {
        Ok(db::query(
            "SELECT i.room_id AS room, r.name, u.username AS invited_by, i.created_at
             FROM invitations i JOIN rooms r ON r.id = i.room_id JOIN users u ON u.id = i.invited_by
             WHERE i.user_id = ? ORDER BY i.created_at",
        )
        .bind(user)
        .fetch_all(&self.db)
        .await?)
    }
}
