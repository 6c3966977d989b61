//! The client's store: one SQLite file per identity in the key store
//! (`keys/USER.store`, mode 0600), so that every command reads only what
//! is new on the server and answers from here.
//!
//! It holds, per server and room, the cursor (last seq read), the state a
//! `Conversation` needs to judge the next entries (`SavedState`: sender
//! keys, replay counters, own chains, retired keys), and what each entry
//! meant (decrypted messages and attachments, events, rejections). Values
//! that would help a thief are sealed with `LocalKeys` (purpose `store`,
//! a key derived from the identity key, so from the passphrase), each bound
//! to its row; ids, seqs, timestamps, kinds and sizes stay readable. The
//! server's log stays the truth: a missing or damaged store is rebuilt
//! from it (a file SQLite cannot read is moved aside first).
//!
//! The durable outbox and the saved session stay in their own sealed files
//! (`outbox.rs`, `session_file.rs`): they were already durable and locked
//! on their own, and moving them is not needed for anything here.
//!
//! Several `hush` processes of one identity may use the store at once
//! (`hush chat` running while `hush send` runs): WAL mode lets readers go
//! on during a write, every write transaction is `BEGIN IMMEDIATE` (so it
//! waits for the write lock instead of failing when another process wrote
//! first), and a busy timeout covers the wait. Rows are deterministic
//! functions of the log, so two processes writing the same entry write
//! the same thing; a room's state is only replaced by one further along.
//!
//! All of the client's SQL is in this module.

mod entries;
pub mod search;
pub mod sync;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::keystore::Identity;
use super::local_seal::LocalKeys;
use super::session_file::server_key;
use crate::crypto::private_file::create_private_dir;

pub use entries::Window;

/// The purpose the store's values are sealed under (`LocalKeys`).
const PURPOSE: &str = "store";
/// What the canary row holds once opened.
const CANARY: &[u8] = b"hush-client-store-v1";
/// How long a write waits for another process's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `user`'s store lives in the key store at `keys_dir`.
pub fn store_path(keys_dir: &Path, user: &str) -> PathBuf {
    keys_dir.join(format!("{user}.store"))
}

/// An open store, for one identity and one server. No `Debug`: it holds
/// the sealing keys.
pub struct ClientStore {
    pool: SqlitePool,
    seal: LocalKeys,
    /// The `servers` row of the server this command talks to.
    server: i64,
    path: PathBuf,
}

/// Why opening failed: the file is damaged (move it aside and rebuild),
/// or something else (say so and stop).
enum OpenError {
    Damaged(String),
    Other(anyhow::Error),
}

impl From<sqlx::Error> for OpenError {
    fn from(err: sqlx::Error) -> Self {
        if is_damage(&err) {
            Self::Damaged(err.to_string())
        } else {
            Self::Other(err.into())
        }
    }
}

impl ClientStore {
    /// Opens (creating if missing) `identity`'s store in `keys_dir`, for
    /// `server`. A file that is not a readable store of this identity is
    /// renamed `USER.store.damaged-<unix time>` (with its WAL) and a new
    /// one is made, to be filled again from the server; the user is told.
    pub async fn open(keys_dir: &Path, identity: &Identity, server: &str) -> anyhow::Result<Self> {
        create_private_dir(keys_dir).with_context(|| format!("creating {}", keys_dir.display()))?;
        let path = store_path(keys_dir, &identity.username);
        let seal = || LocalKeys::new(identity, PURPOSE);
        match Self::try_open(&path, seal()?, server).await {
            Ok(store) => Ok(store),
            Err(OpenError::Other(err)) => Err(err.context(format!("opening {}", path.display()))),
            Err(OpenError::Damaged(why)) => {
                let aside = move_aside(&path)?;
                eprintln!(
                    "hush: the local store {} could not be read ({why}); it was moved to {} and is being rebuilt from the server",
                    path.display(),
                    aside.display()
                );
                match Self::try_open(&path, seal()?, server).await {
                    Ok(store) => Ok(store),
                    Err(OpenError::Damaged(why)) => {
                        bail!("a new store at {} is unusable too: {why}", path.display())
                    }
                    Err(OpenError::Other(err)) => {
                        Err(err.context(format!("opening {}", path.display())))
                    }
                }
            }
        }
    }

    async fn try_open(path: &Path, seal: LocalKeys, server: &str) -> Result<Self, OpenError> {
        // Two processes making the same new store at once would both run
        // the migrations (one fails: "table already exists"): opening is
        // done by one process at a time, under a lock file beside it.
        let _opening = lock_while_opening(path)
            .await
            .map_err(|e| OpenError::Other(e.context("locking the store to open it")))?;
        create_private_file(path).map_err(|e| OpenError::Other(e.into()))?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // The store can be rebuilt from the server: a commit lost to a
            // power cut costs a re-read, not a message.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            // Deleted and expired messages (§21): freed pages are zeroed,
            // not left holding their sealed rows.
            .pragma("secure_delete", "on")
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await?;
        let store = Self {
            pool,
            seal,
            server: 0,
            path: path.to_owned(),
        };
        match sqlx::migrate!("./migrations/client").run(&store.pool).await {
            Ok(()) => {}
            Err(sqlx::migrate::MigrateError::Execute(err)) => return Err(err.into()),
            Err(err) if err.to_string().contains("not a database") => {
                return Err(OpenError::Damaged(err.to_string()));
            }
            Err(err) => {
                return Err(OpenError::Other(
                    anyhow::Error::new(err).context("preparing the store's tables"),
                ));
            }
        }
        store.check_canary().await?;
        let server = store.server_id(server).await?;
        Ok(Self { server, ..store })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks (or, in a new store, writes) the canary: a store another
    /// identity wrote, or one whose values were tampered with, is damaged.
    async fn check_canary(&self) -> Result<(), OpenError> {
        let row = sqlx::query("SELECT sealed FROM canary WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => {
                let sealed: Vec<u8> = row.try_get("sealed")?;
                match self.seal.open(&sealed) {
                    Some(opened) if opened[..] == *CANARY => Ok(()),
                    _ => Err(OpenError::Damaged(
                        "it does not open with this identity".into(),
                    )),
                }
            }
            None => {
                let sealed = self.seal.seal(CANARY).map_err(OpenError::Other)?;
                sqlx::query("INSERT OR IGNORE INTO canary (id, sealed) VALUES (1, ?)")
                    .bind(sealed)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    }

    /// The `servers` row for `server`, added if new.
    async fn server_id(&self, server: &str) -> Result<i64, OpenError> {
        let key = server_key(server);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query("SELECT id, sealed FROM servers ORDER BY id")
            .fetch_all(&mut *tx)
            .await?;
        for row in rows {
            let sealed: Vec<u8> = row.try_get("sealed")?;
            let id: i64 = row.try_get("id")?;
            match self.seal.open_bound(&sealed, &id.to_be_bytes()) {
                Some(url) if url[..] == *key.as_bytes() => return Ok(id),
                Some(_) => {}
                None => {
                    return Err(OpenError::Damaged(
                        "a server record does not open with this identity".into(),
                    ));
                }
            }
        }
        let id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM servers")
            .fetch_one(&mut *tx)
            .await?;
        let sealed = self
            .seal
            .seal_bound(key.as_bytes(), &id.to_be_bytes())
            .map_err(OpenError::Other)?;
        sqlx::query("INSERT INTO servers (id, sealed) VALUES (?, ?)")
            .bind(id)
            .bind(sealed)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Creates `path` empty with mode 0600 if it does not exist, so SQLite
/// (which gives its WAL and shared-memory files the database's mode)
/// never makes a readable store.
/// Holds `USER.store.lock` (0600) exclusively, waiting for another
/// process that is opening the store; released when dropped.
async fn lock_while_opening(store: &Path) -> anyhow::Result<std::fs::File> {
    let mut name = store.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    tokio::task::spawn_blocking(move || -> anyhow::Result<std::fs::File> {
        create_private_file(&lock_path)?;
        let file = std::fs::OpenOptions::new().write(true).open(&lock_path)?;
        file.lock()?;
        Ok(file)
    })
    .await?
}

fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

/// Renames a damaged store (and its WAL and shared memory) out of the way;
/// returns the new name of the main file.
fn move_aside(path: &Path) -> anyhow::Result<PathBuf> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = PathBuf::from(format!("{}.damaged-{now}", path.display()));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        let to = PathBuf::from(format!("{}{suffix}", aside.display()));
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| format!("moving {} aside", from.display()));
            }
        }
    }
    Ok(aside)
}

/// Whether SQLite says the file is not a (healthy) database: `SQLITE_NOTADB`
/// (26) or `SQLITE_CORRUPT` (11), with extended codes.
fn is_damage(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 11 | 26)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_bundled_sqlite_has_fts5() {
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query("CREATE VIRTUAL TABLE t USING fts5(text)")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t (text) VALUES ('hello encrypted world')")
            .execute(&mut conn)
            .await
            .unwrap();
        let found: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE t MATCH 'encrypted'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(found, 1);
    }
}
