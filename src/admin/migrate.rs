//! `hush admin migrate-to-postgres`: copies a SQLite database into an
//! empty PostgreSQL database, every table, row for row, ids and seqs kept.
//!
//! The source is read in one read transaction (one snapshot), so a server
//! still writing to it cannot tear the copy; what it writes after the
//! snapshot is not copied, so stop it first. The target is written in one
//! transaction: if anything fails, or the copy does not check out, nothing
//! is left behind in PostgreSQL. After the rows, each identity sequence is
//! moved past the highest copied id (or the next INSERT would collide),
//! then both sides are counted table by table and room by room.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use futures_util::TryStreamExt;
use sqlx::{AssertSqlSafe, Row};

use crate::store::db::{self, Arg};
use crate::store::{DbLocation, Durability, Store};

#[derive(Clone, Copy)]
enum Col {
    Int,
    Text,
    Bytes,
}
use Col::{Bytes, Int, Text};

struct Table {
    name: &'static str,
    /// The primary key, to read in a stable order.
    key: &'static str,
    columns: &'static [(&'static str, Col)],
    /// Has an identity `id` to move past the copied rows.
    identity: bool,
}

/// Every table of the schema after migrations/sqlite/0001..0005, parents
/// before the tables whose foreign keys point at them.
const TABLES: &[Table] = &[
    Table {
        name: "users",
        key: "id",
        columns: &[
            ("id", Int),
            ("username", Text),
            ("password_hash", Text),
            ("created_at", Int),
            ("disabled_at", Int),
            ("deleted_at", Int),
            ("skeleton", Text),
        ],
        identity: true,
    },
    Table {
        name: "user_keys",
        key: "id",
        columns: &[
            ("id", Int),
            ("user_id", Int),
            ("public_key", Bytes),
            ("fingerprint", Text),
            ("created_at", Int),
            ("replaced_at", Int),
            ("rotation_signature", Bytes),
        ],
        identity: true,
    },
    Table {
        name: "sessions",
        key: "token_hash",
        columns: &[
            ("token_hash", Bytes),
            ("user_id", Int),
            ("created_at", Int),
            ("expires_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "challenges",
        key: "challenge",
        columns: &[("challenge", Bytes), ("expires_at", Int)],
        identity: false,
    },
    Table {
        name: "invite_codes",
        key: "lookup",
        columns: &[
            ("lookup", Bytes),
            ("code_hash", Bytes),
            ("created_at", Int),
            ("expires_at", Int),
            ("used_at", Int),
            ("used_by", Int),
        ],
        identity: false,
    },
    Table {
        name: "rooms",
        key: "id",
        columns: &[
            ("id", Int),
            ("kind", Text),
            ("name", Text),
            ("creator_id", Int),
            ("dm_pair", Text),
            ("last_seq", Int),
            ("created_at", Int),
            ("ttl", Int),
            ("timer_seq", Int),
        ],
        identity: true,
    },
    Table {
        name: "memberships",
        key: "room_id, user_id, start_seq",
        columns: &[
            ("room_id", Int),
            ("user_id", Int),
            ("start_seq", Int),
            ("end_seq", Int),
        ],
        identity: false,
    },
    Table {
        name: "invitations",
        key: "room_id, user_id",
        columns: &[
            ("room_id", Int),
            ("user_id", Int),
            ("invited_by", Int),
            ("created_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "entries",
        key: "room_id, seq",
        columns: &[
            ("room_id", Int),
            ("seq", Int),
            ("ts", Int),
            ("kind", Text),
            ("sender_id", Int),
            ("subject_id", Int),
            ("client_id", Text),
            ("body", Bytes),
            ("detail", Text),
            ("expires_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "blocks",
        key: "blocker_id, blocked_id",
        columns: &[
            ("blocker_id", Int),
            ("blocked_id", Int),
            ("created_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "dm_requests",
        key: "room_id, user_id",
        columns: &[
            ("room_id", Int),
            ("user_id", Int),
            ("state", Text),
            ("updated_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "room_admins",
        key: "room_id, user_id",
        columns: &[("room_id", Int), ("user_id", Int)],
        identity: false,
    },
];

/// Rows per INSERT: well under PostgreSQL's 65,535 bound parameters.
const ROWS_PER_BATCH: usize = 500;
/// Bytes of values per INSERT, so that batches of large messages stay small.
const BYTES_PER_BATCH: usize = 8 << 20;

/// What was copied, table by table, and what the check found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub tables: Vec<(&'static str, i64)>,
    pub rooms: usize,
    /// Rooms whose log has fewer entries than its last seq, on both sides
    /// alike: retention (`--retention`) deleted old messages there.
    pub pruned_rooms: usize,
}

/// Copies the SQLite database at `from` into the empty PostgreSQL
/// database at `to`, and checks the copy (see the module doc).
pub async fn migrate_to_postgres(from: &Path, to: &DbLocation) -> Result<Report> {
    ensure!(
        to.is_postgres(),
        "--to must be a postgres:// or postgresql:// URL"
    );
    if !from.is_file() {
        bail!("no SQLite database at {}", from.display());
    }
    // Opening applies any pending migrations on both sides, so both have
    // the current schema.
    let source = Store::open(from)
        .await
        .with_context(|| format!("opening {}", from.display()))?;
    let target = Store::open_with(to, Durability::Full)
        .await
        .with_context(|| format!("opening {to}"))?;
    let outcome = copy(&source, &target).await;
    source.close().await;
    target.close().await;
    outcome
}

async fn copy(source: &Store, target: &Store) -> Result<Report> {
    let db::Db::Sqlite(pool) = source.db() else {
        bail!("the source must be a SQLite database");
    };
    let mut out = target.db().begin_write().await?;
    let users: i64 = db::query("SELECT count(*) FROM users")
        .fetch_scalar(&mut out)
        .await?;
    if users > 0 {
        bail!("the PostgreSQL database already has {users} user(s); migrate into an empty one");
    }
    // Keeps others from writing while the copy runs.
    for table in TABLES {
        db::query_built(format!("LOCK TABLE {} IN EXCLUSIVE MODE", table.name))
            .execute(&mut out)
            .await?;
    }

    // A deferred transaction: its first read fixes the snapshot all the
    // others read.
    let mut snapshot = pool.begin().await?;
    let mut report = Report::default();
    for table in TABLES {
        let copied = copy_table(&mut snapshot, &mut out, table)
            .await
            .with_context(|| format!("copying {}", table.name))?;
        eprintln!("copied {copied:>9} row(s) of {}", table.name);
    }
    for table in TABLES.iter().filter(|t| t.identity) {
        db::query_built(format!(
            "SELECT setval(pg_get_serial_sequence('{0}', 'id'),
                           COALESCE((SELECT max(id) FROM {0}), 0) + 1, false)",
            table.name
        ))
        .execute(&mut out)
        .await?;
    }

    let mut source_tx = db::Tx::Sqlite(snapshot);
    for table in TABLES {
        let count = format!("SELECT count(*) FROM {}", table.name);
        let before: i64 = db::query_built(count.clone())
            .fetch_scalar(&mut source_tx)
            .await?;
        let after: i64 = db::query_built(count).fetch_scalar(&mut out).await?;
        ensure!(
            before == after,
            "{}: {before} row(s) in SQLite but {after} in PostgreSQL; nothing was committed",
            table.name
        );
        report.tables.push((table.name, after));
    }
    let rooms_before = room_logs(&mut source_tx).await?;
    let rooms_after = room_logs(&mut out).await?;
    ensure!(
        rooms_before == rooms_after,
        "the room logs differ between SQLite and PostgreSQL (count, max seq or last seq); nothing was committed"
    );
    for &(room, last_seq, count, max_seq) in &rooms_after {
        ensure!(
            max_seq <= last_seq && count <= last_seq,
            "room {room}: entries up to seq {max_seq} ({count} of them) but last_seq {last_seq}"
        );
        if count != last_seq || max_seq != last_seq {
            report.pruned_rooms += 1;
        }
    }
    report.rooms = rooms_after.len();
    source_tx.rollback().await?;
    out.commit().await?;
    Ok(report)
}

/// Per room: id, last_seq, the number of entries, the highest seq.
async fn room_logs(on: &mut db::Tx<'_>) -> Result<Vec<(i64, i64, i64, i64)>> {
    Ok(db::query(
        "SELECT r.id, r.last_seq, count(e.seq), COALESCE(max(e.seq), 0)
         FROM rooms r LEFT JOIN entries e ON e.room_id = r.id
         GROUP BY r.id, r.last_seq ORDER BY r.id",
    )
    .fetch_all(on)
    .await?)
}

async fn copy_table(
    source: &mut sqlx::SqliteConnection,
    out: &mut db::Tx<'_>,
    table: &Table,
) -> Result<u64> {
    let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    let names = names.join(", ");
    let select = format!("SELECT {names} FROM {} ORDER BY {}", table.name, table.key);
    let mut rows = sqlx::query(AssertSqlSafe(select)).fetch(&mut *source);
    let (mut batch, mut bytes, mut copied) = (Vec::new(), 0, 0u64);
    while let Some(row) = rows.try_next().await? {
        for (i, (_, col)) in table.columns.iter().enumerate() {
            let value = match col {
                Int => Arg::Int(row.try_get::<Option<i64>, _>(i)?),
                Text => {
                    let text: Option<String> = row.try_get(i)?;
                    bytes += text.as_ref().map_or(0, String::len);
                    Arg::Text(text.map(Into::into))
                }
                Bytes => {
                    let blob: Option<Vec<u8>> = row.try_get(i)?;
                    bytes += blob.as_ref().map_or(0, Vec::len);
                    Arg::Bytes(blob.map(Into::into))
                }
            };
            batch.push(value);
        }
        if batch.len() / table.columns.len() == ROWS_PER_BATCH || bytes >= BYTES_PER_BATCH {
            copied += insert(out, table, &names, std::mem::take(&mut batch)).await?;
            bytes = 0;
        }
    }
    if !batch.is_empty() {
        copied += insert(out, table, &names, batch).await?;
    }
    Ok(copied)
}

async fn insert(
    out: &mut db::Tx<'_>,
    table: &Table,
    names: &str,
    values: Vec<Arg<'static>>,
) -> Result<u64> {
    let width = table.columns.len();
    let row = format!("({})", vec!["?"; width].join(", "));
    let rows = vec![row; values.len() / width].join(", ");
    let mut query = db::query_built(format!(
        "INSERT INTO {} ({names}) VALUES {rows}",
        table.name
    ));
    for value in values {
        query = query.bind(value);
    }
    Ok(query.execute(out).await?)
}
