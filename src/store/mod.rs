//! Everything persistent lives behind `Store`: users and keys, sessions,
//! rooms and memberships, and the per-room log. All SQL is in this module.
//!
//! The database is SQLite (a file) or PostgreSQL (a URL): statements go
//! through `db`, written once for both (see `db` for how they differ).
//!
//! Reads go through the pool. Writes that touch a room's log go through the
//! single writer task in `writer`, which orders them, batches them into
//! transactions and reports each committed entry in commit order.

pub mod admin;
pub mod commit_timing;
pub mod db;
mod fanout;
pub mod faults;
mod log;
mod rooms;
mod users;
mod wal_reserve;
pub mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use thiserror::Error;

pub use log::{Entry, EntryKind, Page};
pub use rooms::{Invitation, RoomInfo, RoomKind};
pub use users::{KeyRecord, UserRecord};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct UserId(pub i64);

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct RoomId(pub i64);

/// A user as commands name them: the id for SQL, the name for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRef {
    pub id: UserId,
    pub name: String,
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("username is taken")]
    UsernameTaken,
    /// Looks like an existing account's name (same `username::skeleton`).
    #[error("username looks like an existing one")]
    UsernameConfusable,
    /// Unknown, or not visible to the caller: the two are deliberately the same.
    #[error("not found")]
    NotFound,
    #[error("not allowed: {0}")]
    Forbidden(&'static str),
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The other party blocks the caller (§21, blocking).
    #[error("blocked")]
    Blocked,
    /// A request that breaks a rule the caller can see (a timer statement
    /// that no longer fits the room, blocking oneself).
    #[error("invalid: {0}")]
    Invalid(&'static str),
    #[error("the store is shutting down")]
    Closed,
    /// Nothing was stored because of the environment (locked, full,
    /// read-only database); retrying later can succeed.
    #[error("not stored: {0}")]
    Unavailable(faults::StorageFault),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// How hard a commit tries to survive a crash (SQLite's `synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: an acknowledged message survives power loss.
    #[default]
    Full,
    /// `synchronous=NORMAL`: survives a crash of the server, but the last
    /// commits before a power loss or OS crash may be lost.
    Normal,
}

/// Where the database is: a SQLite file, or a PostgreSQL server named by a
/// `postgres://` / `postgresql://` URL (`--db`, `HUSH_DB`).
#[derive(Clone, PartialEq, Eq)]
pub enum DbLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DbLocation {
    /// A `postgres://` or `postgresql://` URL names a PostgreSQL database;
    /// anything else is a SQLite file path.
    pub fn parse(text: &str) -> Self {
        let lower = text.get(..13).unwrap_or(text).to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Self::Postgres(text.to_owned())
        } else {
            Self::Sqlite(PathBuf::from(text))
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// The SQLite file, if this is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Self::Sqlite(path) => Some(path),
            Self::Postgres(_) => None,
        }
    }
}

impl std::str::FromStr for DbLocation {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Self::parse(text))
    }
}

/// For logs and error messages: a URL's password is never shown.
impl fmt::Display for DbLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl fmt::Debug for DbLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(url) => f.debug_tuple("Postgres").field(&redact_url(url)).finish(),
        }
    }
}

impl From<&Path> for DbLocation {
    fn from(path: &Path) -> Self {
        Self::Sqlite(path.to_path_buf())
    }
}

impl From<&PathBuf> for DbLocation {
    fn from(path: &PathBuf) -> Self {
        Self::Sqlite(path.clone())
    }
}

impl From<PathBuf> for DbLocation {
    fn from(path: PathBuf) -> Self {
        Self::Sqlite(path)
    }
}

impl From<&DbLocation> for DbLocation {
    fn from(location: &DbLocation) -> Self {
        location.clone()
    }
}

/// A PostgreSQL URL naming database `name` on the same server, as the
/// same user, with the same query; `None` if `url` has no `scheme://`.
pub fn with_database(url: &str, name: &str) -> Option<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://")? + 3;
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    Some(match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    })
}

/// `url` with the password of its user part, and any `password=` query
/// parameter, replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..scheme_end]);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[authority_end..];
    match tail.find('?') {
        Some(q) => {
            out.push_str(&tail[..=q]);
            let params: Vec<String> = tail[q + 1..]
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=***")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(tail),
    }
    out
}

/// Connections in the PostgreSQL pool of one server process (the log
/// writer's own connection is extra). Several nodes share one PostgreSQL,
/// whose default `max_connections` is 100.
const POSTGRES_POOL_SIZE: u32 = 16;

/// Handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// The database, SQLite or PostgreSQL.
    db: db::Db,
    /// Woken after ciphertext was erased, so that maintenance checkpoints
    /// the write-ahead log (and the erased bytes leave it) soon.
    erasures: Arc<tokio::sync::Notify>,
    /// How every SQLite connection is opened; the writer opens its own
    /// from these. `None` on PostgreSQL. Shared: every session holds a
    /// clone of the `Store`, and the options (a map of pragmas) would
    /// otherwise cost ~2 KiB per connection.
    options: Option<Arc<SqliteConnectOptions>>,
}

impl Store {
    /// Opens (creating if missing) the SQLite file at `path` in WAL mode with
    /// foreign keys on and `synchronous=FULL`, and applies the migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Durability::Full).await
    }

    /// Opens the database at `location` with the chosen durability and
    /// applies its backend's migrations: a SQLite file as `open` does, or a
    /// PostgreSQL database (which must exist; its schema is created).
    pub async fn open_with(
        location: impl Into<DbLocation>,
        durability: Durability,
    ) -> Result<Self> {
        match location.into() {
            DbLocation::Sqlite(path) => Self::open_sqlite(&path, durability).await,
            DbLocation::Postgres(url) => Self::open_postgres(&url, durability).await,
        }
    }

    async fn open_sqlite(path: &Path, durability: Durability) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            // Deleted and overwritten content is zeroed, not left in free
            // space: erased and expired ciphertext must leave the file.
            .pragma("secure_delete", "ON")
            // SQLite's default (1,000 pages) made the writer copy the WAL
            // into the database after almost every large batch; rarer
            // checkpoints write each repeatedly changed page once.
            .pragma(
                "wal_autocheckpoint",
                WAL_PAGES_BEFORE_CHECKPOINT.to_string(),
            )
            .row_buffer_size(ROWS_BUFFERED_PER_READ);
        let pool = faults::recovering_pool(SqlitePoolOptions::new().max_connections(8), path)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self {
            db: db::Db::Sqlite(pool),
            erasures: Arc::default(),
            options: Some(Arc::new(options)),
        })
    }

    /// `Durability::Normal` turns `synchronous_commit` off for this
    /// server's connections: a commit is acknowledged before its WAL record
    /// reaches the disk, so a crash of PostgreSQL's host can lose the last
    /// ones (never corrupt the database). `Full` keeps the server's setting.
    async fn open_postgres(url: &str, durability: Durability) -> Result<Self> {
        let mut options: PgConnectOptions = url.parse()?;
        if durability == Durability::Normal {
            options = options.options([("synchronous_commit", "off")]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(POSTGRES_POOL_SIZE)
            .connect_with(options)
            .await?;
        // Takes an advisory lock: nodes starting together migrate once.
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self {
            db: db::Db::Postgres(pool),
            erasures: Arc::default(),
            options: None,
        })
    }

    /// Which database this store talks to.
    pub fn backend(&self) -> db::Backend {
        self.db.backend()
    }

    /// The database handle, for code outside the store that needs the
    /// backend's own pool (PostgreSQL's LISTEN, the migration copy).
    pub fn db(&self) -> &db::Db {
        &self.db
    }

    pub async fn close(&self) {
        self.db.close().await;
    }

    /// Cheap liveness probe for `/healthz`.
    pub async fn ping(&self) -> Result<()> {
        db::query("SELECT 1").execute(&self.db).await?;
        Ok(())
    }
}

/// 10,000 pages of 4 KiB: the WAL grows to about 40 MiB between checkpoints.
const WAL_PAGES_BEFORE_CHECKPOINT: u32 = 10_000;
/// Rows a pool connection's thread reads ahead of the task consuming them.
/// sqlx's default (50) made the thread stop and be woken again every 50
/// rows of a 500-entry sync page; this holds a whole page.
const ROWS_BUFFERED_PER_READ: usize = 1024;
/// The writer's page cache (SQLite's default is 2 MiB). A batch of messages
/// to 500 rooms dirties ~9 MiB of pages; with the default cache SQLite
/// spilled them to the WAL mid-transaction and read them back.
const WRITER_CACHE_KIB: u32 = 32 * 1024;

impl Store {
    /// A connection of the writer's own, outside the pool, with a page
    /// cache large enough for a whole batch, and statement journals in
    /// memory: every multi-row statement inside the writer's transaction
    /// saves the pages it changes first (so that it alone could be undone),
    /// and in a temp file that was ~10,000 page writes in 3 s of `dm`,
    /// more than the WAL itself. They are bounded by one statement's pages.
    async fn open_writer_connection(&self) -> Result<sqlx::SqliteConnection> {
        use sqlx::ConnectOptions;
        let Some(options) = &self.options else {
            return Err(StoreError::Db(sqlx::Error::Configuration(
                "a SQLite writer connection was asked of a PostgreSQL store".into(),
            )));
        };
        let options = SqliteConnectOptions::clone(options)
            .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"))
            .pragma("temp_store", "MEMORY");
        Ok(options.connect().await?)
    }
}

impl Store {
    /// The log writer's own connection (see `open_writer_connection`).
    async fn open_writer_conn(&self) -> Result<db::Conn> {
        match &self.db {
            db::Db::Sqlite(_) => Ok(db::Conn::Sqlite(self.open_writer_connection().await?)),
            db::Db::Postgres(pool) => {
                use sqlx::ConnectOptions;
                // A plan for each execution, from the table as it is then.
                // PostgreSQL otherwise keeps a prepared statement's generic
                // plan, made once: on a new database, while `entries` was
                // nearly empty, that is a sequential scan for the client-id
                // lookup, and it stays one (growing with the table) until
                // autovacuum's next ANALYZE. Planning costs far less than
                // the batch each statement carries.
                let options = pool
                    .connect_options()
                    .as_ref()
                    .clone()
                    .options([("plan_cache_mode", "force_custom_plan")]);
                Ok(db::Conn::Postgres(options.connect().await?))
            }
        }
    }
}

impl Store {
    /// Records that ciphertext was erased (see `erasures`).
    pub fn erased(&self) {
        self.erasures.notify_one();
    }

    /// Resolves after the next (or a pending) `erased`.
    pub async fn next_erasure(&self) {
        self.erasures.notified().await;
    }

    /// Copies the write-ahead log into the database file and truncates it,
    /// so that overwritten pages leave both files. Returns whether it
    /// completed (a long read can keep it from it; then try again later).
    ///
    /// On PostgreSQL there is nothing to do here and it returns true at
    /// once: the server cannot rewrite PostgreSQL's own write-ahead log or
    /// dead row versions; erased ciphertext leaves the table's pages when
    /// (auto)vacuum reclaims them and the WAL when PostgreSQL recycles its
    /// segments.
    pub async fn checkpoint_truncate(&self) -> Result<bool> {
        if self.db.backend() == db::Backend::Postgres {
            return Ok(true);
        }
        let (busy, _, _): (i64, i64, i64) = db::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.db)
            .await?;
        Ok(busy == 0)
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Maps a unique-constraint violation to `on_unique`, anything else to `Db`.
fn unique_violation(err: sqlx::Error, on_unique: StoreError) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => on_unique,
        _ => StoreError::Db(err),
    }
}

#[cfg(test)]
mod tests {
    use super::{DbLocation, redact_url, with_database};

    #[test]
    fn another_database_on_the_same_server_keeps_user_and_query() {
        assert_eq!(
            with_database("postgres://u:p@h:5/postgres?sslmode=disable", "hush_1").as_deref(),
            Some("postgres://u:p@h:5/hush_1?sslmode=disable")
        );
        assert_eq!(
            with_database("postgres://h", "x").as_deref(),
            Some("postgres://h/x")
        );
        assert_eq!(with_database("data/hush.db", "x"), None);
    }
    use std::path::PathBuf;

    #[test]
    fn a_postgres_url_is_a_url_and_anything_else_a_path() {
        for url in [
            "postgres://hush@db/hush",
            "postgresql://hush:pw@db:5432/hush",
            "POSTGRES://h@d/x",
        ] {
            assert!(DbLocation::parse(url).is_postgres(), "{url}");
        }
        for path in [
            "data/hush.db",
            "/var/lib/hush/hush.db",
            "postgres",
            "./postgres://x",
        ] {
            assert_eq!(
                DbLocation::parse(path),
                DbLocation::Sqlite(PathBuf::from(path)),
                "{path}"
            );
        }
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("postgres://hush:s3cret@db:5432/hush?sslmode=require"),
            "postgres://hush:***@db:5432/hush?sslmode=require"
        );
        assert_eq!(
            redact_url("postgresql://hush@db/hush?password=s3cret&host=/run/pg"),
            "postgresql://hush@db/hush?password=***&host=/run/pg"
        );
        assert_eq!(redact_url("postgres://db/hush"), "postgres://db/hush");
        assert_eq!(redact_url("postgres://a:b@c:d@h/x"), "postgres://a:***@h/x");
        let shown = DbLocation::parse("postgres://u:s3cret@h/d");
        assert!(!format!("{shown} {shown:?}").contains("s3cret"));
    }
}
