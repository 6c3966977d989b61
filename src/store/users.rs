//! Users, identity keys, login sessions and registration challenges.

use sqlx::FromRow;

use super::{Result, Store, StoreError, UserId, UserRef, db, now_ms, unique_violation};

#[derive(Debug, Clone, FromRow)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
}

impl UserRecord {
    pub fn as_ref(&self) -> UserRef {
        UserRef {
            id: self.id,
            name: self.username.clone(),
        }
    }
}

/// One identity key in a user's history.
#[derive(Debug, Clone, FromRow)]
pub struct KeyRecord {
    pub public_key: Vec<u8>,
    pub fingerprint: String,
    pub created_at: i64,
    pub replaced_at: Option<i64>,
    pub rotation_signature: Option<Vec<u8>>,
}

/// The account row and its first key, inside the caller's transaction
/// (plain registration, or registration that also spends an invite). The
/// transaction must come from `begin_write`. On SQLite that holds the
/// write lock from the look-alike check to the insert; on PostgreSQL a
/// transaction-scoped advisory lock on the name's skeleton does the same
/// for look-alikes (the UNIQUE username catches the exact same name). So
/// two look-alike registrations cannot both pass the check.
pub(super) async fn insert_user_with_key(
    tx: &mut db::Tx<'_>,
    username: &str,
    password_hash: &str,
    public_key: &[u8],
    fingerprint: &str,
) -> Result<UserId> {
    let skeleton = crate::username::skeleton(username);
    if tx.backend() == db::Backend::Postgres {
        // The first key is an arbitrary constant ("hush" in ASCII) that
        // keeps these locks apart from any other advisory lock.
        db::query("SELECT pg_advisory_xact_lock(1752462184, hashtext(?))")
            .bind(skeleton.as_str())
            .execute(&mut *tx)
            .await?;
    }
    // NULL: no account looks like it; 1: this very name exists; 0: a look-alike.
    let same_name: Option<i64> = db::query(
        "SELECT CAST(max(CASE WHEN username = ? THEN 1 ELSE 0 END) AS BIGINT)
         FROM users WHERE skeleton = ?",
    )
    .bind(username)
    .bind(skeleton.as_str())
    .fetch_scalar(&mut *tx)
    .await?;
    match same_name {
        Some(0) => return Err(StoreError::UsernameConfusable),
        Some(_) => return Err(StoreError::UsernameTaken),
        None => {}
    }
    let now = now_ms();
    let id: i64 = db::query(
        "INSERT INTO users (username, skeleton, password_hash, created_at) VALUES (?, ?, ?, ?)
         RETURNING id",
    )
    .bind(username)
    .bind(skeleton.as_str())
    .bind(password_hash)
    .bind(now)
    .fetch_scalar(&mut *tx)
    .await
    .map_err(|e| unique_violation(e, StoreError::UsernameTaken))?;
    db::query(
        "INSERT INTO user_keys (user_id, public_key, fingerprint, created_at) VALUES (?, ?, ?, ?)",
    )
    .bind(id)
    .bind(public_key)
    .bind(fingerprint)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(UserId(id))
}

impl Store {
    /// Creates a user with their first identity key.
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        public_key: &[u8],
        fingerprint: &str,
    ) -> Result<UserId> {
        let mut tx = self.db.begin_write().await?;
        let id =
            insert_user_with_key(&mut tx, username, password_hash, public_key, fingerprint).await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn find_user(&self, username: &str) -> Result<UserRecord> {
        db::query("SELECT id, username FROM users WHERE username = ?")
            .bind(username)
            .fetch_optional(&self.db)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// The user and their argon2id PHC string, for login.
    pub async fn find_credentials(&self, username: &str) -> Result<Option<(UserRecord, String)>> {
        let row: Option<(i64, String, String)> =
            db::query("SELECT id, username, password_hash FROM users WHERE username = ?")
                .bind(username)
                .fetch_optional(&self.db)
                .await?;
        Ok(row.map(|(id, username, hash)| {
            (
                UserRecord {
                    id: UserId(id),
                    username,
                },
                hash,
            )
        }))
    }

    pub async fn current_key(&self, user: UserId) -> Result<KeyRecord> {
        db::query(
            "SELECT public_key, fingerprint, created_at, replaced_at, rotation_signature
             FROM user_keys WHERE user_id = ? AND replaced_at IS NULL",
        )
        .bind(user)
        .fetch_optional(&self.db)
        .await?
        .ok_or(StoreError::NotFound)
    }

    /// Every key the user has had, oldest first.
    pub async fn key_history(&self, user: UserId) -> Result<Vec<KeyRecord>> {
        Ok(db::query(
            "SELECT public_key, fingerprint, created_at, replaced_at, rotation_signature
             FROM user_keys WHERE user_id = ? ORDER BY id",
        )
        .bind(user)
        .fetch_all(&self.db)
        .await?)
    }

    pub async fn create_session(
        &self,
        user: UserId,
        token_hash: &[u8],
        expires_at: i64,
    ) -> Result<()> {
        db::query("INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)")
            .bind(token_hash)
            .bind(user)
            .bind(now_ms())
            .bind(expires_at)
            .execute(&self.db)
            .await
            .map_err(|e| self.write_error(e))?;
        Ok(())
    }

    /// The user a live (unexpired) session token hash belongs to.
    pub async fn session_user(&self, token_hash: &[u8]) -> Result<UserRecord> {
        Ok(self.live_session(token_hash).await?.0)
    }

    /// The user a live session token belongs to, and when the token stops
    /// being valid (Unix ms).
    pub async fn live_session(&self, token_hash: &[u8]) -> Result<(UserRecord, i64)> {
        let row: Option<(UserId, String, i64)> = db::query(
            "SELECT users.id, users.username, sessions.expires_at
             FROM sessions JOIN users ON users.id = sessions.user_id
             WHERE sessions.token_hash = ? AND sessions.expires_at > ? AND users.disabled_at IS NULL",
        )
        .bind(token_hash)
        .bind(now_ms())
        .fetch_optional(&self.db)
        .await?;
        let (id, username, expires_at) = row.ok_or(StoreError::NotFound)?;
        Ok((UserRecord { id, username }, expires_at))
    }

    pub async fn delete_session(&self, token_hash: &[u8]) -> Result<()> {
        db::query("DELETE FROM sessions WHERE token_hash = ?")
            .bind(token_hash)
            .execute(&self.db)
            .await
            .map_err(|e| self.write_error(e))?;
        Ok(())
    }

    /// Stores a challenge unless `max_pending` unexpired ones exist
    /// already; false if it was refused.
    pub async fn insert_challenge(
        &self,
        challenge: &[u8],
        expires_at: i64,
        max_pending: usize,
    ) -> Result<bool> {
        let now = now_ms();
        db::query("DELETE FROM challenges WHERE expires_at <= ?")
            .bind(now)
            .execute(&self.db)
            .await
            .map_err(|e| self.write_error(e))?;
        let max_pending = i64::try_from(max_pending).unwrap_or(i64::MAX);
        let stored = db::query(
            "INSERT INTO challenges (challenge, expires_at)
             SELECT ?, ? WHERE (SELECT count(*) FROM challenges) < ?",
        )
        .bind(challenge)
        .bind(expires_at)
        .bind(max_pending)
        .execute(&self.db)
        .await
        .map_err(|e| self.write_error(e))?;
        Ok(stored == 1)
    }

    /// Consumes a challenge: true if it existed and had not expired. A
    /// challenge can be used once, whatever the outcome.
    pub async fn take_challenge(&self, challenge: &[u8]) -> Result<bool> {
        let expires_at: Option<i64> =
            db::query("DELETE FROM challenges WHERE challenge = ? RETURNING expires_at")
                .bind(challenge)
                .fetch_optional_scalar(&self.db)
                .await
                .map_err(|e| self.write_error(e))?;
        Ok(expires_at.is_some_and(|t| t > now_ms()))
    }
}

#[cfg(test)]
mod tests {
    use crate::username::skeleton;

    /// The migration's SQL backfill computes the same skeletons as the Rust
    /// function registration uses, and leaves tombstones without one.
    #[tokio::test]
    async fn the_migration_backfills_the_same_skeletons_as_registration() {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("in-memory SQLite opens");
        sqlx::raw_sql(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT, deleted_at INTEGER)",
        )
        .execute(&pool)
        .await
        .expect("table");
        let names = [
            "alice",
            "a1ice",
            "bob0",
            "mallory",
            "william",
            "x_y-z.0",
            "iii111lll",
            "plain",
        ];
        for name in names {
            sqlx::query("INSERT INTO users (username) VALUES (?)")
                .bind(name)
                .execute(&pool)
                .await
                .expect("insert");
        }
        sqlx::query("INSERT INTO users (username, deleted_at) VALUES ('~deleted-9', 1)")
            .execute(&pool)
            .await
            .expect("insert tombstone");
        sqlx::raw_sql(include_str!(
            "../../migrations/sqlite/0004_username_skeletons.sql"
        ))
        .execute(&pool)
        .await
        .expect("the migration runs on existing rows, look-alike pairs included");
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT username, skeleton FROM users ORDER BY id")
                .fetch_all(&pool)
                .await
                .expect("select");
        for (name, stored) in rows {
            if name.starts_with('~') {
                assert_eq!(stored, None, "a tombstone blocks no name");
            } else {
                assert_eq!(stored, Some(skeleton(&name)), "{name}");
            }
        }
    }
}
