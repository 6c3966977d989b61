//! The operator's SQL: accounts (list, disable, delete), sessions, invite
//! codes, online backup, statistics, message retention, and the check a
//! running server makes to close sockets whose session has gone.
//!
//! `hush admin` runs these against the database file while the server may
//! be running: SQLite's WAL lets readers and one writer work side by side,
//! and the busy timeout makes a short write wait instead of failing. Nothing
//! here appends to a room log (that stays with the server's single writer).
//! Write transactions begin IMMEDIATE, taking the write lock up front, so
//! a read-then-write cannot fail on a snapshot another writer moved on.
//!
//! On PostgreSQL the same statements run against the shared database
//! (`--db postgres://...`); only the SQLite file tools differ: `backup_to`
//! and `integrity_check` refuse (use `pg_dump`), and `stats` reports
//! `pg_database_size`.

use std::collections::HashSet;
use std::path::Path;

use sqlx::FromRow;
use subtle::ConstantTimeEq;

use super::{Result, Store, StoreError, UserId, db, now_ms, unique_violation};

/// One account as `hush admin users list` shows it.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct UserSummary {
    pub id: i64,
    pub username: String,
    pub created_at: i64,
    pub disabled_at: Option<i64>,
    pub fingerprint: Option<String>,
    /// Unexpired login sessions.
    pub sessions: i64,
    /// Rooms and DMs the user is currently a member of.
    pub rooms: i64,
}

/// What deleting an account removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Deleted {
    pub keys: u64,
    pub sessions: u64,
    pub memberships: u64,
    pub invitations: u64,
}

/// Totals for `hush admin stats`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub users: i64,
    pub disabled_users: i64,
    pub deleted_users: i64,
    pub group_rooms: i64,
    pub direct_rooms: i64,
    pub messages: i64,
    pub message_bytes: i64,
    pub oldest_message_ts: Option<i64>,
    pub live_sessions: i64,
    pub open_invites: i64,
    pub database_bytes: i64,
}

/// Invite codes the registration route presents: the lookup key and the
/// SHA-256 of the whole code (see `admin::invite`).
pub struct InviteProof<'a> {
    pub lookup: &'a [u8],
    pub code_hash: &'a [u8; 32],
}

const NO_BACKUP_ON_POSTGRES: &str =
    "hush admin backup copies a SQLite database; back up PostgreSQL with pg_dump";

/// Largest number of token hashes checked in one query.
const TOKENS_PER_QUERY: usize = 500;

impl Store {
    /// Every account that is not deleted, oldest first.
    pub async fn list_users(&self) -> Result<Vec<UserSummary>> {
        Ok(db::query(
            "SELECT u.id, u.username, u.created_at, u.disabled_at,
                (SELECT fingerprint FROM user_keys k WHERE k.user_id = u.id AND k.replaced_at IS NULL) AS fingerprint,
                (SELECT count(*) FROM sessions s WHERE s.user_id = u.id AND s.expires_at > ?1) AS sessions,
                (SELECT count(*) FROM memberships m WHERE m.user_id = u.id AND m.end_seq IS NULL) AS rooms
             FROM users u WHERE u.deleted_at IS NULL ORDER BY u.id",
        )
        .bind(now_ms())
        .fetch_all(&self.db)
        .await?)
    }

    /// Disables an account (and ends its sessions), or enables it again.
    /// `NotFound` for an unknown or deleted username.
    pub async fn set_disabled(&self, username: &str, disabled: bool) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        let id = live_user_id(&mut tx, username).await?;
        let at = disabled.then(now_ms);
        db::query("UPDATE users SET disabled_at = ? WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(&mut tx)
            .await?;
        if disabled {
            db::query("DELETE FROM sessions WHERE user_id = ?")
                .bind(id)
                .execute(&mut tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn is_disabled(&self, user: UserId) -> Result<bool> {
        let at: Option<Option<i64>> = db::query("SELECT disabled_at FROM users WHERE id = ?")
            .bind(user)
            .fetch_optional_scalar(&self.db)
            .await?;
        Ok(at.ok_or(StoreError::NotFound)?.is_some())
    }

    /// Ends every login session of `username`; returns how many there were.
    pub async fn revoke_sessions(&self, username: &str) -> Result<u64> {
        let mut tx = self.db.begin_write().await?;
        let id = live_user_id(&mut tx, username).await?;
        let gone = db::query("DELETE FROM sessions WHERE user_id = ?")
            .bind(id)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(gone)
    }

    /// Deletes an account: its keys, sessions and invitations go, its open
    /// memberships end at each room's current position, and the row stays
    /// as a tombstone named `~deleted-<id>` (a name no one can register) so
    /// the room logs it wrote to keep a valid sender. The username (and
    /// its look-alikes) become free again.
    pub async fn delete_user(&self, username: &str) -> Result<Deleted> {
        let mut tx = self.db.begin_write().await?;
        let id = live_user_id(&mut tx, username).await?;
        let keys = db::query("DELETE FROM user_keys WHERE user_id = ?")
            .bind(id)
            .execute(&mut tx)
            .await?;
        let sessions = db::query("DELETE FROM sessions WHERE user_id = ?")
            .bind(id)
            .execute(&mut tx)
            .await?;
        let invitations =
            db::query("DELETE FROM invitations WHERE user_id = ?1 OR invited_by = ?1")
                .bind(id)
                .execute(&mut tx)
                .await?;
        let memberships = db::query(
            "UPDATE memberships SET end_seq = (SELECT last_seq FROM rooms WHERE rooms.id = memberships.room_id)
             WHERE user_id = ? AND end_seq IS NULL",
        )
        .bind(id)
        .execute(&mut tx)
        .await?;
        let now = now_ms();
        db::query(
            "UPDATE users SET username = '~deleted-' || id, skeleton = NULL, password_hash = '',
                disabled_at = coalesce(disabled_at, ?1), deleted_at = ?1 WHERE id = ?2",
        )
        .bind(now)
        .bind(id)
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(Deleted {
            keys,
            sessions,
            memberships,
            invitations,
        })
    }

    /// Stores a new invite code (only its lookup key and hash).
    pub async fn insert_invite(&self, proof: InviteProof<'_>, expires_at: i64) -> Result<()> {
        db::query(
            "INSERT INTO invite_codes (lookup, code_hash, created_at, expires_at) VALUES (?, ?, ?, ?)",
        )
        .bind(proof.lookup)
        .bind(&proof.code_hash[..])
        .bind(now_ms())
        .bind(expires_at)
        .execute(&self.db)
        .await
        .map_err(|e| unique_violation(e, StoreError::Conflict("invite code collision; retry")))?;
        Ok(())
    }

    /// Whether an invite code is known, unused and unexpired right now.
    pub async fn invite_is_usable(&self, proof: InviteProof<'_>) -> Result<bool> {
        usable_invite(&self.db, &proof).await
    }

    /// Creates a user and uses up an invite code in one transaction: the
    /// code is spent only if the account is created, and only once.
    /// `Forbidden` if the code is not usable.
    pub async fn create_user_with_invite(
        &self,
        username: &str,
        password_hash: &str,
        public_key: &[u8],
        fingerprint: &str,
        invite: InviteProof<'_>,
    ) -> Result<UserId> {
        let mut tx = self.db.begin_write().await?;
        if !usable_invite(&mut tx, &invite).await? {
            return Err(StoreError::Forbidden(
                "invalid, used or expired invite code",
            ));
        }
        let id = super::users::insert_user_with_key(
            &mut tx,
            username,
            password_hash,
            public_key,
            fingerprint,
        )
        .await?;
        let used = db::query(
            "UPDATE invite_codes SET used_at = ?, used_by = ? WHERE lookup = ? AND used_at IS NULL",
        )
        .bind(now_ms())
        .bind(id.0)
        .bind(invite.lookup)
        .execute(&mut tx)
        .await?;
        if used != 1 {
            return Err(StoreError::Forbidden(
                "invalid, used or expired invite code",
            ));
        }
        tx.commit().await?;
        Ok(id)
    }

    /// A consistent copy of the whole database at `path` (which must not
    /// exist), taken online with `VACUUM INTO`: it reads one snapshot, so
    /// writes made meanwhile are either wholly in the copy or not at all.
    /// SQLite only: a PostgreSQL database is backed up with `pg_dump`
    /// (`Invalid` here).
    pub async fn backup_to(&self, path: &Path) -> Result<()> {
        if self.db.backend() == db::Backend::Postgres {
            return Err(StoreError::Invalid(NO_BACKUP_ON_POSTGRES));
        }
        let target = path
            .to_str()
            .ok_or(StoreError::Conflict("the backup path must be valid UTF-8"))?;
        db::query("VACUUM INTO ?")
            .bind(target)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// `PRAGMA integrity_check`: `ok`, or what is wrong. SQLite only
    /// (`Invalid` on PostgreSQL, which has no such check of its own).
    pub async fn integrity_check(&self) -> Result<String> {
        if self.db.backend() == db::Backend::Postgres {
            return Err(StoreError::Invalid(
                "no integrity check on PostgreSQL: verify a pg_dump by restoring it",
            ));
        }
        let rows: Vec<String> = db::query("PRAGMA integrity_check")
            .fetch_all_scalars(&self.db)
            .await?;
        Ok(rows.join("; "))
    }

    pub async fn stats(&self) -> Result<Stats> {
        let now = now_ms();
        let (users, disabled_users, deleted_users): (i64, i64, i64) = db::query(
            "SELECT count(*) FILTER (WHERE deleted_at IS NULL),
                    count(*) FILTER (WHERE deleted_at IS NULL AND disabled_at IS NOT NULL),
                    count(*) FILTER (WHERE deleted_at IS NOT NULL)
             FROM users",
        )
        .fetch_one(&self.db)
        .await?;
        let (group_rooms, direct_rooms): (i64, i64) = db::query(
            "SELECT count(*) FILTER (WHERE kind = 'group'), count(*) FILTER (WHERE kind = 'dm') FROM rooms",
        )
        .fetch_one(&self.db)
        .await?;
        let (messages, message_bytes, oldest_message_ts): (i64, i64, Option<i64>) = db::query(
            "SELECT count(*), CAST(coalesce(sum(length(body)), 0) AS BIGINT), min(ts)
                 FROM entries WHERE kind = 'message'",
        )
        .fetch_one(&self.db)
        .await?;
        let live_sessions: i64 = db::query("SELECT count(*) FROM sessions WHERE expires_at > ?")
            .bind(now)
            .fetch_scalar(&self.db)
            .await?;
        let open_invites: i64 =
            db::query("SELECT count(*) FROM invite_codes WHERE used_at IS NULL AND expires_at > ?")
                .bind(now)
                .fetch_scalar(&self.db)
                .await?;
        let database_bytes: i64 = db::query(match self.db.backend() {
            db::Backend::Sqlite => {
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
            }
            db::Backend::Postgres => "SELECT pg_database_size(current_database())",
        })
        .fetch_scalar(&self.db)
        .await?;
        Ok(Stats {
            users,
            disabled_users,
            deleted_users,
            group_rooms,
            direct_rooms,
            messages,
            message_bytes,
            oldest_message_ts,
            live_sessions,
            open_invites,
            database_bytes,
        })
    }

    /// Deletes up to `limit` messages older than `cutoff` (unix ms); returns
    /// how many went. Membership and key events stay: they are small, and
    /// clients need them to follow who could read what.
    pub async fn prune_messages_before(&self, cutoff: i64, limit: u32) -> Result<u64> {
        Ok(db::query(
            "DELETE FROM entries WHERE (room_id, seq) IN
                (SELECT room_id, seq FROM entries WHERE kind = 'message' AND ts < ?1 LIMIT ?2)",
        )
        .bind(cutoff)
        .bind(i64::from(limit))
        .execute(&self.db)
        .await?)
    }

    /// Turns up to `limit` messages whose disappearing time is at or before
    /// `now` (unix ms) into `expired` tombstones; returns how many.
    pub async fn expire_messages(&self, now: i64, limit: u32) -> Result<u64> {
        Ok(db::query(
            "UPDATE entries SET kind = 'erased', body = NULL, detail = 'expired', expires_at = NULL
             WHERE (room_id, seq) IN
                (SELECT room_id, seq FROM entries
                 WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)",
        )
        .bind(now)
        .bind(i64::from(limit))
        .execute(&self.db)
        .await?)
    }

    /// Of the given session token hashes, those that still belong to an
    /// unexpired session of an enabled account.
    pub async fn live_tokens(&self, hashes: &[[u8; 32]]) -> Result<HashSet<[u8; 32]>> {
        let mut live = HashSet::with_capacity(hashes.len());
        let now = now_ms();
        for chunk in hashes.chunks(TOKENS_PER_QUERY) {
            let marks = vec!["?"; chunk.len()].join(",");
            let sql = format!(
                "SELECT s.token_hash FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.expires_at > ? AND u.disabled_at IS NULL AND s.token_hash IN ({marks})"
            );
            let mut query = db::query_built(sql).bind(now);
            for hash in chunk {
                query = query.bind(&hash[..]);
            }
            for found in query.fetch_all_scalars::<Vec<u8>>(&self.db).await? {
                if let Ok(hash) = <[u8; 32]>::try_from(found.as_slice()) {
                    live.insert(hash);
                }
            }
        }
        Ok(live)
    }
}

async fn live_user_id(tx: &mut db::Tx<'_>, username: &str) -> Result<i64> {
    db::query("SELECT id FROM users WHERE username = ? AND deleted_at IS NULL")
        .bind(username)
        .fetch_optional_scalar(tx)
        .await?
        .ok_or(StoreError::NotFound)
}

async fn usable_invite<'e>(on: impl db::Exec<'e>, proof: &InviteProof<'_>) -> Result<bool> {
    let row: Option<(Vec<u8>, i64, Option<i64>)> =
        db::query("SELECT code_hash, expires_at, used_at FROM invite_codes WHERE lookup = ?")
            .bind(proof.lookup)
            .fetch_optional(on)
            .await?;
    let Some((stored, expires_at, used_at)) = row else {
        return Ok(false);
    };
    let matches: bool = stored.as_slice().ct_eq(&proof.code_hash[..]).into();
    Ok(matches && used_at.is_none() && expires_at > now_ms())
}
