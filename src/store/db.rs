//! The one place that knows there are two databases.
//!
//! Store code writes each statement once, with SQLite's `?` / `?N`
//! placeholders, binds values of a few plain types (`Arg`) and decodes rows
//! into tuples or `FromRow` structs; `Query` runs it on SQLite as written
//! and on PostgreSQL with the placeholders rewritten to `$N`. Where the two
//! dialects differ, callers ask `backend()` and pick the statement.
//!
//! Why not sqlx's `Any` driver: it rewrites no placeholders, hides which
//! backend an error came from, and cannot LISTEN. Here each pool keeps its
//! concrete type, so errors stay the driver's own and `notify` can take a
//! `PgListener` from the PostgreSQL pool.

use std::borrow::Cow;
use std::ops::ControlFlow;

use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{AssertSqlSafe, Connection, FromRow, Postgres, Sqlite};

use super::{RoomId, UserId};

/// Which database a `Db` talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A pool of connections to one of the two databases. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Db {
    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// A transaction that may write. On SQLite it takes the write lock up
    /// front (`BEGIN IMMEDIATE`): a deferred transaction that read first
    /// would fail with SQLITE_BUSY_SNAPSHOT when another write committed
    /// between its read and its first write. PostgreSQL writers lock the
    /// rows they change instead.
    pub async fn begin_write(&self) -> sqlx::Result<Tx<'static>> {
        Ok(match self {
            Db::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

/// A single connection outside the pool (the log writer's own).
#[derive(Debug)]
pub enum Conn {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl Conn {
    /// As `Db::begin_write`, on this connection.
    pub async fn begin_write(&mut self) -> sqlx::Result<Tx<'_>> {
        Ok(match self {
            Conn::Sqlite(conn) => Tx::Sqlite(conn.begin_with("BEGIN IMMEDIATE").await?),
            Conn::Postgres(conn) => Tx::Postgres(conn.begin().await?),
        })
    }

    pub fn backend(&self) -> Backend {
        match self {
            Conn::Sqlite(_) => Backend::Sqlite,
            Conn::Postgres(_) => Backend::Postgres,
        }
    }
}

/// An open transaction; rolled back if dropped without `commit`.
#[derive(Debug)]
pub enum Tx<'c> {
    Sqlite(sqlx::Transaction<'c, Sqlite>),
    Postgres(sqlx::Transaction<'c, Postgres>),
}

impl Tx<'_> {
    pub async fn commit(self) -> sqlx::Result<()> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await,
            Tx::Postgres(tx) => tx.commit().await,
        }
    }

    pub async fn rollback(self) -> sqlx::Result<()> {
        match self {
            Tx::Sqlite(tx) => tx.rollback().await,
            Tx::Postgres(tx) => tx.rollback().await,
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Tx::Sqlite(_) => Backend::Sqlite,
            Tx::Postgres(_) => Backend::Postgres,
        }
    }
}

/// Where a query runs: a pool, a connection or a transaction.
pub enum Target<'e> {
    SqlitePool(&'e SqlitePool),
    Sqlite(&'e mut SqliteConnection),
    PostgresPool(&'e PgPool),
    Postgres(&'e mut PgConnection),
}

impl Target<'_> {
    pub fn backend(&self) -> Backend {
        match self {
            Target::SqlitePool(_) | Target::Sqlite(_) => Backend::Sqlite,
            Target::PostgresPool(_) | Target::Postgres(_) => Backend::Postgres,
        }
    }
}

/// Anything a `Query` can run on: `&Db`, `&mut Conn`, `&mut Tx`.
pub trait Exec<'e>: Send {
    fn target(self) -> Target<'e>;
}

impl<'e> Exec<'e> for &'e Db {
    fn target(self) -> Target<'e> {
        match self {
            Db::Sqlite(pool) => Target::SqlitePool(pool),
            Db::Postgres(pool) => Target::PostgresPool(pool),
        }
    }
}

impl<'e> Exec<'e> for &'e mut Conn {
    fn target(self) -> Target<'e> {
        match self {
            Conn::Sqlite(conn) => Target::Sqlite(conn),
            Conn::Postgres(conn) => Target::Postgres(conn),
        }
    }
}

impl<'e, 'c> Exec<'e> for &'e mut Tx<'c> {
    fn target(self) -> Target<'e> {
        match self {
            Tx::Sqlite(tx) => Target::Sqlite(tx),
            Tx::Postgres(tx) => Target::Postgres(tx),
        }
    }
}

impl<'e> Exec<'e> for Target<'e> {
    fn target(self) -> Target<'e> {
        self
    }
}

/// A value bound to a placeholder. Integers are 64-bit on both sides
/// (PostgreSQL columns are `BIGINT`), bytes are `BLOB` / `BYTEA`.
#[derive(Debug, Clone)]
pub enum Arg<'q> {
    Int(Option<i64>),
    Bool(bool),
    Text(Option<Cow<'q, str>>),
    Bytes(Option<Cow<'q, [u8]>>),
    /// PostgreSQL only, like the two below: an array bound as one value
    /// (`= ANY(?)`, `UNNEST(?, …)`), so a statement over any number of rows
    /// has one text, parsed and planned once per connection instead of
    /// once per row count.
    Ints(Vec<Option<i64>>),
    Texts(Vec<&'q str>),
    Blobs(Vec<&'q [u8]>),
}

/// Conversion into a bound value (`Query::bind`).
pub trait IntoArg<'q> {
    fn into_arg(self) -> Arg<'q>;
}

/// A value already converted (a row copied between databases).
impl<'q> IntoArg<'q> for Arg<'q> {
    fn into_arg(self) -> Arg<'q> {
        self
    }
}

macro_rules! int_args {
    ($($t:ty),*) => {$(
        impl<'q> IntoArg<'q> for $t {
            fn into_arg(self) -> Arg<'q> {
                Arg::Int(Some(i64::from(self)))
            }
        }
        impl<'q> IntoArg<'q> for Option<$t> {
            fn into_arg(self) -> Arg<'q> {
                Arg::Int(self.map(i64::from))
            }
        }
    )*};
}
int_args!(i64, i32, u32, u16, u8);

impl<'q> IntoArg<'q> for UserId {
    fn into_arg(self) -> Arg<'q> {
        Arg::Int(Some(self.0))
    }
}

impl<'q> IntoArg<'q> for RoomId {
    fn into_arg(self) -> Arg<'q> {
        Arg::Int(Some(self.0))
    }
}

impl<'q> IntoArg<'q> for Option<UserId> {
    fn into_arg(self) -> Arg<'q> {
        Arg::Int(self.map(|id| id.0))
    }
}

impl<'q> IntoArg<'q> for bool {
    fn into_arg(self) -> Arg<'q> {
        Arg::Bool(self)
    }
}

impl<'q> IntoArg<'q> for &'q str {
    fn into_arg(self) -> Arg<'q> {
        Arg::Text(Some(Cow::Borrowed(self)))
    }
}

impl<'q> IntoArg<'q> for &'q String {
    fn into_arg(self) -> Arg<'q> {
        Arg::Text(Some(Cow::Borrowed(self)))
    }
}

impl<'q> IntoArg<'q> for String {
    fn into_arg(self) -> Arg<'q> {
        Arg::Text(Some(Cow::Owned(self)))
    }
}

impl<'q> IntoArg<'q> for Option<&'q str> {
    fn into_arg(self) -> Arg<'q> {
        Arg::Text(self.map(Cow::Borrowed))
    }
}

impl<'q> IntoArg<'q> for Option<String> {
    fn into_arg(self) -> Arg<'q> {
        Arg::Text(self.map(Cow::Owned))
    }
}

impl<'q> IntoArg<'q> for &'q [u8] {
    fn into_arg(self) -> Arg<'q> {
        Arg::Bytes(Some(Cow::Borrowed(self)))
    }
}

impl<'q> IntoArg<'q> for &'q Vec<u8> {
    fn into_arg(self) -> Arg<'q> {
        Arg::Bytes(Some(Cow::Borrowed(self)))
    }
}

impl<'q> IntoArg<'q> for Vec<u8> {
    fn into_arg(self) -> Arg<'q> {
        Arg::Bytes(Some(Cow::Owned(self)))
    }
}

impl<'q> IntoArg<'q> for Option<&'q [u8]> {
    fn into_arg(self) -> Arg<'q> {
        Arg::Bytes(self.map(Cow::Borrowed))
    }
}

impl<'q> IntoArg<'q> for Option<Vec<u8>> {
    fn into_arg(self) -> Arg<'q> {
        Arg::Bytes(self.map(Cow::Owned))
    }
}

/// An array parameter (PostgreSQL only; see `Arg::Ints`).
pub struct PgArray<T>(pub Vec<T>);

impl<'q> IntoArg<'q> for PgArray<i64> {
    fn into_arg(self) -> Arg<'q> {
        Arg::Ints(self.0.into_iter().map(Some).collect())
    }
}

impl<'q> IntoArg<'q> for PgArray<Option<i64>> {
    fn into_arg(self) -> Arg<'q> {
        Arg::Ints(self.0)
    }
}

impl<'q> IntoArg<'q> for PgArray<&'q str> {
    fn into_arg(self) -> Arg<'q> {
        Arg::Texts(self.0)
    }
}

impl<'q> IntoArg<'q> for PgArray<&'q [u8]> {
    fn into_arg(self) -> Arg<'q> {
        Arg::Blobs(self.0)
    }
}

/// A row type both drivers can decode: tuples, and structs deriving
/// `sqlx::FromRow` whose fields are `i64`, `String`, `Vec<u8>`, `bool`,
/// ids, or `Option`s of those.
pub trait Rows: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin {}

impl<T> Rows for T where
    T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}

/// One statement and its bound values.
#[must_use = "a query does nothing until it is run"]
pub struct Query<'q> {
    sql: Cow<'static, str>,
    args: Vec<Arg<'q>>,
}

/// A statement written in the source.
pub fn query<'q>(sql: &'static str) -> Query<'q> {
    Query {
        sql: Cow::Borrowed(sql),
        args: Vec::new(),
    }
}

/// A statement assembled at run time (a multi-row `VALUES` list). Only
/// placeholders may vary: never format a value into it.
pub fn query_built<'q>(sql: String) -> Query<'q> {
    Query {
        sql: Cow::Owned(sql),
        args: Vec::new(),
    }
}

/// Binds the query's values to a sqlx query (`Query`, `QueryAs` and
/// `QueryScalar` all have `bind`). `$backend` is `sqlite` or `postgres`:
/// only array values bind differently (`bind_array`).
macro_rules! bind_all {
    ($backend:ident, $query:expr, $args:expr) => {{
        let mut q = $query;
        for arg in $args {
            q = match arg {
                Arg::Int(v) => q.bind(v),
                Arg::Bool(v) => q.bind(v),
                Arg::Text(Some(Cow::Borrowed(v))) => q.bind(v),
                Arg::Text(Some(Cow::Owned(v))) => q.bind(v),
                Arg::Text(None) => q.bind(None::<String>),
                Arg::Bytes(Some(Cow::Borrowed(v))) => q.bind(v),
                Arg::Bytes(Some(Cow::Owned(v))) => q.bind(v),
                Arg::Bytes(None) => q.bind(None::<Vec<u8>>),
                Arg::Ints(v) => bind_array!($backend, q, v),
                Arg::Texts(v) => bind_array!($backend, q, v),
                Arg::Blobs(v) => bind_array!($backend, q, v),
            };
        }
        q
    }};
}

/// Array values exist on PostgreSQL only: on SQLite they end the calling
/// method with an error.
macro_rules! bind_array {
    (sqlite, $query:expr, $values:expr) => {{
        let _ = $values;
        return Err(sqlx::Error::Protocol(
            "array parameters are for PostgreSQL only".into(),
        ));
    }};
    (postgres, $query:expr, $values:expr) => {
        $query.bind($values)
    };
}

impl<'q> Query<'q> {
    pub fn bind(mut self, value: impl IntoArg<'q>) -> Self {
        self.args.push(value.into_arg());
        self
    }

    fn sqlite_sql(&self) -> AssertSqlSafe<Cow<'static, str>> {
        AssertSqlSafe(self.sql.clone())
    }

    fn postgres_sql(&self) -> AssertSqlSafe<String> {
        AssertSqlSafe(postgres_placeholders(&self.sql))
    }

    /// Runs the statement; returns the number of rows it changed.
    pub async fn execute<'e>(self, on: impl Exec<'e>) -> sqlx::Result<u64> {
        Ok(match on.target() {
            Target::SqlitePool(pool) => {
                bind_all!(sqlite, sqlx::query(self.sqlite_sql()), self.args)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
            Target::Sqlite(conn) => bind_all!(sqlite, sqlx::query(self.sqlite_sql()), self.args)
                .execute(conn)
                .await?
                .rows_affected(),
            Target::PostgresPool(pool) => {
                bind_all!(postgres, sqlx::query(self.postgres_sql()), self.args)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
            Target::Postgres(conn) => {
                bind_all!(postgres, sqlx::query(self.postgres_sql()), self.args)
                    .execute(conn)
                    .await?
                    .rows_affected()
            }
        })
    }

    pub async fn fetch_all<'e, T: Rows>(self, on: impl Exec<'e>) -> sqlx::Result<Vec<T>> {
        match on.target() {
            Target::SqlitePool(pool) => {
                bind_all!(
                    sqlite,
                    sqlx::query_as::<Sqlite, T>(self.sqlite_sql()),
                    self.args
                )
                .fetch_all(pool)
                .await
            }
            Target::Sqlite(conn) => {
                bind_all!(
                    sqlite,
                    sqlx::query_as::<Sqlite, T>(self.sqlite_sql()),
                    self.args
                )
                .fetch_all(conn)
                .await
            }
            Target::PostgresPool(pool) => {
                bind_all!(
                    postgres,
                    sqlx::query_as::<Postgres, T>(self.postgres_sql()),
                    self.args
                )
                .fetch_all(pool)
                .await
            }
            Target::Postgres(conn) => {
                bind_all!(
                    postgres,
                    sqlx::query_as::<Postgres, T>(self.postgres_sql()),
                    self.args
                )
                .fetch_all(conn)
                .await
            }
        }
    }

    pub async fn fetch_optional<'e, T: Rows>(self, on: impl Exec<'e>) -> sqlx::Result<Option<T>> {
        match on.target() {
            Target::SqlitePool(pool) => {
                bind_all!(
                    sqlite,
                    sqlx::query_as::<Sqlite, T>(self.sqlite_sql()),
                    self.args
                )
                .fetch_optional(pool)
                .await
            }
            Target::Sqlite(conn) => {
                bind_all!(
                    sqlite,
                    sqlx::query_as::<Sqlite, T>(self.sqlite_sql()),
                    self.args
                )
                .fetch_optional(conn)
                .await
            }
            Target::PostgresPool(pool) => {
                bind_all!(
                    postgres,
                    sqlx::query_as::<Postgres, T>(self.postgres_sql()),
                    self.args
                )
                .fetch_optional(pool)
                .await
            }
            Target::Postgres(conn) => {
                bind_all!(
                    postgres,
                    sqlx::query_as::<Postgres, T>(self.postgres_sql()),
                    self.args
                )
                .fetch_optional(conn)
                .await
            }
        }
    }

    pub async fn fetch_one<'e, T: Rows>(self, on: impl Exec<'e>) -> sqlx::Result<T> {
        self.fetch_optional(on)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// The first column of the only row.
    pub async fn fetch_scalar<'e, T>(self, on: impl Exec<'e>) -> sqlx::Result<T>
    where
        (T,): Rows,
    {
        Ok(self.fetch_one::<(T,)>(on).await?.0)
    }

    /// The first column of the first row, if there is one.
    pub async fn fetch_optional_scalar<'e, T>(self, on: impl Exec<'e>) -> sqlx::Result<Option<T>>
    where
        (T,): Rows,
    {
        Ok(self.fetch_optional::<(T,)>(on).await?.map(|(v,)| v))
    }

    /// The first column of every row.
    pub async fn fetch_all_scalars<'e, T>(self, on: impl Exec<'e>) -> sqlx::Result<Vec<T>>
    where
        (T,): Rows,
    {
        Ok(self
            .fetch_all::<(T,)>(on)
            .await?
            .into_iter()
            .map(|(v,)| v)
            .collect())
    }

    /// Hands `visit` each row as soon as it is read, until it breaks;
    /// returns whether it broke.
    pub async fn visit<'e, T: Rows>(
        self,
        on: impl Exec<'e>,
        mut visit: impl FnMut(T) -> sqlx::Result<ControlFlow<()>> + Send,
    ) -> sqlx::Result<bool> {
        macro_rules! each_row {
            ($rows:expr) => {{
                let mut rows = $rows;
                while let Some(row) = rows.try_next().await? {
                    if visit(row)?.is_break() {
                        return Ok(true);
                    }
                }
                Ok(false)
            }};
        }
        match on.target() {
            Target::SqlitePool(pool) => each_row!(
                bind_all!(
                    sqlite,
                    sqlx::query_as::<Sqlite, T>(self.sqlite_sql()),
                    self.args
                )
                .fetch(pool)
            ),
            Target::Sqlite(conn) => each_row!(
                bind_all!(
                    sqlite,
                    sqlx::query_as::<Sqlite, T>(self.sqlite_sql()),
                    self.args
                )
                .fetch(conn)
            ),
            Target::PostgresPool(pool) => each_row!(
                bind_all!(
                    postgres,
                    sqlx::query_as::<Postgres, T>(self.postgres_sql()),
                    self.args
                )
                .fetch(pool)
            ),
            Target::Postgres(conn) => each_row!(
                bind_all!(
                    postgres,
                    sqlx::query_as::<Postgres, T>(self.postgres_sql()),
                    self.args
                )
                .fetch(conn)
            ),
        }
    }
}

/// Rewrites SQLite placeholders for PostgreSQL: `?N` becomes `$N`, and each
/// bare `?` the next number after the highest used so far, as SQLite
/// numbers them. Quoted text and identifiers are left alone.
pub fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut highest = 0u32;
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                out.push(c);
            }
            '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                let n = if digits.is_empty() {
                    highest + 1
                } else {
                    digits.parse().unwrap_or(highest + 1)
                };
                highest = highest.max(n);
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::postgres_placeholders;

    #[test]
    fn bare_placeholders_are_numbered_in_order() {
        assert_eq!(
            postgres_placeholders("INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
    }

    #[test]
    fn numbered_placeholders_keep_their_numbers_and_bare_ones_follow() {
        assert_eq!(
            postgres_placeholders("WHERE a = ?2 AND b = ?1 AND c > ?"),
            "WHERE a = $2 AND b = $1 AND c > $3"
        );
    }

    #[test]
    fn quoted_question_marks_are_text() {
        assert_eq!(
            postgres_placeholders("SELECT '?', \"a?\" FROM t WHERE x = ?"),
            "SELECT '?', \"a?\" FROM t WHERE x = $1"
        );
    }
}
