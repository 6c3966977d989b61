//! Telling a storage fault (the database is locked, full, read-only or its
//! disk fails) from a bug. A fault is a condition outside the server that
//! usually clears by itself or by an operator's hand: callers report it as
//! "not stored, retry later" and keep running; nothing was acknowledged.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::sqlite::SqlitePoolOptions;

/// Why the database refused a write for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// Another process holds the write lock (SQLITE_BUSY / SQLITE_LOCKED).
    Locked,
    /// The disk or the database's size limit is full (SQLITE_FULL), or a
    /// file-size limit was hit.
    Full,
    /// The database cannot be written (SQLITE_READONLY, EROFS, EACCES).
    ReadOnly,
    /// Any other I/O failure (SQLITE_IOERR, SQLITE_CANTOPEN, a lost pool).
    Io,
}

impl StorageFault {
    /// A stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Locked => "locked",
            Self::Full => "full",
            Self::ReadOnly => "read_only",
            Self::Io => "io",
        }
    }

    /// What to tell a client.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Locked => "the database is locked by another process",
            Self::Full => "the database's disk is full",
            Self::ReadOnly => "the database is read-only",
            Self::Io => "the database could not be written",
        }
    }
}

impl fmt::Display for StorageFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_READONLY: i32 = 8;
const SQLITE_IOERR: i32 = 10;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;
/// Extended code: a write failed (EFBIG from a file-size limit lands here).
const SQLITE_IOERR_WRITE: i32 = SQLITE_IOERR | (3 << 8);

/// The fault behind `err`, or `None` if it is not a storage condition (a
/// constraint violation, a malformed query: a bug, not the environment).
pub fn classify(err: &sqlx::Error) -> Option<StorageFault> {
    match err {
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                return from_sqlstate(pg.code());
            }
            let code: i32 = db.code()?.parse().ok()?;
            from_sqlite_code(code)
        }
        sqlx::Error::Io(io) => Some(from_io(io)),
        sqlx::Error::PoolTimedOut => Some(StorageFault::Locked),
        sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => Some(StorageFault::Io),
        _ => None,
    }
}

/// The fault to report for a failed write transaction: its storage cause,
/// or `Io` when the cause is not one (the write is not stored either way).
pub fn of_store_error(err: &super::StoreError) -> StorageFault {
    match err {
        super::StoreError::Db(db) => classify(db).unwrap_or(StorageFault::Io),
        super::StoreError::Unavailable(fault) => *fault,
        _ => StorageFault::Io,
    }
}

impl super::Store {
    /// The fault behind a failed write, with SQLite's answer checked
    /// against the database files when that answer cannot tell.
    ///
    /// A write refused through a descriptor SQLite already holds open (the
    /// file made immutable, the filesystem turned read-only after errors)
    /// comes back as a plain I/O error, `SQLITE_IOERR_WRITE` for a refused
    /// `pwrite`: the same code as a file-size limit, which `classify` reports
    /// as full. SQLite keeps the `errno` to itself, so the files are asked
    /// instead (`is_unwritable`).
    pub(crate) fn fault_of(&self, err: &super::StoreError) -> StorageFault {
        let fault = of_store_error(err);
        if is_sqlite_io_error(err) && self.is_unwritable() {
            StorageFault::ReadOnly
        } else {
            fault
        }
    }

    /// A pool write's error as the caller should see it: a storage fault
    /// becomes `Unavailable` with its cause (see `fault_of`), anything else
    /// stays `Db`.
    pub(crate) fn write_error(&self, err: sqlx::Error) -> super::StoreError {
        if classify(&err).is_none() {
            return super::StoreError::Db(err);
        }
        let err = super::StoreError::Db(err);
        let fault = self.fault_of(&err);
        tracing::warn!(error = %err, fault = fault.as_str(), "database unavailable");
        super::StoreError::Unavailable(fault)
    }

    /// Whether the kernel refuses writes to the database or its WAL now
    /// (SQLite; a PostgreSQL server's files are not ours to look at).
    fn is_unwritable(&self) -> bool {
        self.options
            .as_ref()
            .is_some_and(|options| files_refuse_writes(options.get_filename()))
    }
}

/// Pool settings that keep a storage fault from outliving its cause, so
/// that writes work again once the condition clears, without a restart:
///
/// - A connection whose transaction failed to commit can come back with
///   sqlx still counting it as inside a transaction (SQLite rolled the
///   transaction back itself, so the rollback sqlx sends on drop fails);
///   every later `BEGIN` on it would be refused. It is closed on release.
/// - A connection opened while the database or its WAL could not be
///   written has that file open read-only for good (SQLite falls back to
///   `O_RDONLY`; writes then fail with `SQLITE_READONLY`). Such connections
///   keep serving reads while the condition lasts; once the files are
///   writable again, every connection opened up to the last such open is
///   closed when next acquired (at most the pool's size of reconnects).
pub(crate) fn recovering_pool(options: SqlitePoolOptions, db: &Path) -> SqlitePoolOptions {
    let epoch = Instant::now();
    // Time since `epoch` (ms, +1 so that 0 means never) of the last
    // connection opened while the files refused writes.
    let last_unwritable_open = Arc::new(AtomicU64::new(0));
    let on_connect = (last_unwritable_open.clone(), Arc::new(db.to_path_buf()));
    let on_acquire = (last_unwritable_open, on_connect.1.clone());
    options
        .after_connect(move |_, _| {
            let (last, db) = on_connect.clone();
            Box::pin(async move {
                if files_refuse_writes(&db) {
                    tracing::warn!(
                        "a database connection was opened while the database is read-only"
                    );
                    last.fetch_max(ms_since(epoch, Duration::ZERO) + 1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .before_acquire(move |_, meta| {
            let (last, db) = on_acquire.clone();
            Box::pin(async move {
                let last = last.load(Ordering::Relaxed);
                if last == 0 || ms_since(epoch, meta.age) + 1 > last {
                    return Ok(true);
                }
                // Keep it for reads while the files are still unwritable.
                Ok(files_refuse_writes(&db))
            })
        })
        .after_release(|conn, _| {
            Box::pin(async move {
                if conn.is_in_transaction() {
                    // Let the rollback a dropped transaction queued run first.
                    conn.ping().await?;
                }
                Ok(!conn.is_in_transaction())
            })
        })
}

/// Milliseconds from `epoch` to `ago` before now.
fn ms_since(epoch: Instant, ago: Duration) -> u64 {
    epoch
        .elapsed()
        .saturating_sub(ago)
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Whether the kernel refuses writes to the database at `db` or its WAL.
fn files_refuse_writes(db: &Path) -> bool {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    access_refuses_writes(db).is_some() || open_refuses_writes(Path::new(&wal)).is_some()
}

/// Whether SQLite answered with an I/O error (`SQLITE_IOERR` or one of its
/// extended codes).
fn is_sqlite_io_error(err: &super::StoreError) -> bool {
    let super::StoreError::Db(sqlx::Error::Database(db)) = err else {
        return false;
    };
    db.code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_IOERR)
}

/// The errors that mean "this file cannot be written": a read-only
/// filesystem or mount (EROFS), an immutable file (EPERM), no write
/// permission (EACCES).
fn is_write_refusal(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EROFS | libc::EPERM | libc::EACCES)
    )
}

/// Why the kernel would refuse to write `path`, asked with `access(2)`,
/// which opens nothing: the database file itself must not be opened here,
/// because closing any descriptor of it would drop the POSIX locks SQLite
/// holds on it in this process.
fn access_refuses_writes(path: &Path) -> Option<std::io::Error> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    if unsafe { libc::access(path.as_ptr(), libc::W_OK) } == 0 {
        return None;
    }
    Some(std::io::Error::last_os_error()).filter(is_write_refusal)
}

/// Why the kernel refuses to open `path` for writing (it is neither created
/// nor truncated, and nothing is written). Unlike `access(2)` this also
/// sees a filesystem in ext4's `emergency_ro` state (after errors with
/// `errors=remount-ro`). Only for the WAL: SQLite keeps no locks on it.
fn open_refuses_writes(path: &Path) -> Option<std::io::Error> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .err()
        .filter(is_write_refusal)
}

fn from_sqlite_code(code: i32) -> Option<StorageFault> {
    if code == SQLITE_IOERR_WRITE {
        // Most often a disk or file-size limit: report it as full.
        return Some(StorageFault::Full);
    }
    match code & 0xff {
        SQLITE_BUSY | SQLITE_LOCKED => Some(StorageFault::Locked),
        SQLITE_FULL => Some(StorageFault::Full),
        SQLITE_READONLY => Some(StorageFault::ReadOnly),
        SQLITE_IOERR | SQLITE_CANTOPEN => Some(StorageFault::Io),
        _ => None,
    }
}

/// PostgreSQL's SQLSTATE codes for conditions of the server rather than
/// of the statement (see PostgreSQL's "Error Codes" appendix).
fn from_sqlstate(code: &str) -> Option<StorageFault> {
    match code {
        // disk_full
        "53100" => Some(StorageFault::Full),
        // read_only_sql_transaction: a standby, or default_transaction_read_only
        "25006" => Some(StorageFault::ReadOnly),
        // serialization_failure, deadlock_detected, lock_not_available,
        // too_many_connections, query_canceled (a statement or lock timeout)
        "40001" | "40P01" | "55P03" | "53300" | "57014" => Some(StorageFault::Locked),
        _ => match &code[..code.len().min(2)] {
            // connection_exception, insufficient_resources, operator
            // intervention (shutdown, recovery), system_error, internal_error
            "08" | "53" | "57" | "58" | "XX" => Some(StorageFault::Io),
            _ => None,
        },
    }
}

fn from_io(io: &std::io::Error) -> StorageFault {
    use std::io::ErrorKind;
    match io.kind() {
        ErrorKind::StorageFull | ErrorKind::FileTooLarge | ErrorKind::QuotaExceeded => {
            StorageFault::Full
        }
        ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => StorageFault::ReadOnly,
        _ => StorageFault::Io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_codes_map_to_faults_and_others_to_none() {
        assert_eq!(from_sqlite_code(5), Some(StorageFault::Locked));
        assert_eq!(from_sqlite_code(5 | (2 << 8)), Some(StorageFault::Locked)); // BUSY_SNAPSHOT
        assert_eq!(from_sqlite_code(6), Some(StorageFault::Locked));
        assert_eq!(from_sqlite_code(13), Some(StorageFault::Full));
        assert_eq!(from_sqlite_code(8), Some(StorageFault::ReadOnly));
        assert_eq!(
            from_sqlite_code(SQLITE_IOERR_WRITE),
            Some(StorageFault::Full)
        );
        assert_eq!(from_sqlite_code(10 | (4 << 8)), Some(StorageFault::Io)); // IOERR_FSYNC
        assert_eq!(from_sqlite_code(2067), None); // CONSTRAINT_UNIQUE
        assert_eq!(from_sqlite_code(1), None); // a plain SQL error
    }

    #[test]
    fn postgres_sqlstates_map_to_faults_and_others_to_none() {
        assert_eq!(from_sqlstate("53100"), Some(StorageFault::Full));
        assert_eq!(from_sqlstate("25006"), Some(StorageFault::ReadOnly));
        assert_eq!(from_sqlstate("40001"), Some(StorageFault::Locked));
        assert_eq!(from_sqlstate("57P01"), Some(StorageFault::Io)); // admin_shutdown
        assert_eq!(from_sqlstate("08006"), Some(StorageFault::Io));
        assert_eq!(from_sqlstate("23505"), None); // unique_violation
        assert_eq!(from_sqlstate("42601"), None); // syntax_error
    }

    #[test]
    fn io_errors_map_by_kind() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert_eq!(from_io(&full), StorageFault::Full);
        let ro = std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
        assert_eq!(from_io(&ro), StorageFault::ReadOnly);
    }

    #[test]
    fn writable_and_missing_files_are_not_reported_as_refusing_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("hush.db");
        std::fs::write(&file, b"").expect("write");
        assert!(access_refuses_writes(&file).is_none());
        assert!(open_refuses_writes(&file).is_none());
        let missing = dir.path().join("missing-wal");
        assert!(access_refuses_writes(&missing).is_none());
        assert!(open_refuses_writes(&missing).is_none());
        assert!(!missing.exists(), "the probe creates nothing");
    }
}
