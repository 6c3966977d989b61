//! Telling a storage fault (the database is locked, full, read-only or its
//! disk fails) from a bug. A fault is a condition outside the server that
//! usually clears by itself or by an operator's hand: callers report it as
//! "not stored, retry later" and keep running; nothing was acknowledged.

use std::fmt;

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
    fn io_errors_map_by_kind() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert_eq!(from_io(&full), StorageFault::Full);
        let ro = std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
        assert_eq!(from_io(&ro), StorageFault::ReadOnly);
    }
}
