//! `hush search`: full-text search of the decrypted history, on this
//! machine only (the server never sees a query).
//!
//! The store keeps no full-text index on disk: an FTS5 index of the words
//! would be the plaintext again, in a form a thief can read without the
//! passphrase. Instead each search opens the stored messages and builds an
//! SQLite FTS5 index of them in memory (a private `:memory:` database,
//! temp store in memory, never written to disk), asks it, and drops it.
//! That costs time proportional to the history searched (docs/SECURITY.md
//! and docs/PERFORMANCE.md say how much); `--room` narrows it.

use std::str::FromStr;

use anyhow::Context;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::ClientStore;
use crate::client::conversation::Shown;
use crate::crypto::envelope::Payload;
use crate::store::RoomId;

/// Messages inserted per statement while building the index.
const INSERT_BATCH: usize = 200;

/// The stored messages matching every word of `query` (in `room`, or in
/// every room of this server), in room and seq order.
pub async fn search(
    store: &ClientStore,
    query: &str,
    room: Option<RoomId>,
) -> anyhow::Result<Vec<(RoomId, Shown)>> {
    let expression = match_expression(query);
    if expression.is_empty() {
        anyhow::bail!("say what to search for");
    }
    let messages = store.messages(room).await?;
    let mut index = SqliteConnectOptions::from_str("sqlite::memory:")?
        .pragma("temp_store", "MEMORY")
        .connect()
        .await
        .context("opening the in-memory search index")?;
    sqlx::query(
        "CREATE VIRTUAL TABLE words USING fts5(body, tokenize = 'unicode61 remove_diacritics 2')",
    )
    .execute(&mut index)
    .await
    .context("making the search index (SQLite FTS5)")?;
    let mut tx = index.begin().await?;
    for (chunk_at, chunk) in messages.chunks(INSERT_BATCH).enumerate() {
        let mut sql = String::from("INSERT INTO words (rowid, body) VALUES ");
        sql.push_str(&vec!["(?, ?)"; chunk.len()].join(", "));
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (i, (_, shown)) in chunk.iter().enumerate() {
            let rowid = (chunk_at * INSERT_BATCH + i) as i64;
            insert = insert.bind(rowid).bind(searchable_text(shown));
        }
        insert.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    let rowids: Vec<i64> =
        sqlx::query_scalar("SELECT rowid FROM words WHERE words MATCH ? ORDER BY rowid")
            .bind(&expression)
            .fetch_all(&mut index)
            .await
            .context("searching")?;
    index.close().await.ok();
    let mut messages: Vec<Option<(RoomId, Shown)>> = messages.into_iter().map(Some).collect();
    Ok(rowids
        .into_iter()
        .filter_map(|id| messages.get_mut(usize::try_from(id).ok()?)?.take())
        .collect())
}

/// What is searched in a message: its text, or an attachment's file name.
fn searchable_text(shown: &Shown) -> String {
    match shown {
        Shown::Message {
            payload: Payload::Text { text, .. },
            ..
        } => text.clone(),
        Shown::Message {
            payload: Payload::File { name, .. },
            ..
        } => name.clone(),
        _ => String::new(),
    }
}

/// An FTS5 query matching every word of `query`, each taken literally (as
/// a quoted string, so `AND`, `*`, `:` or quotes typed by the user are not
/// operators).
fn match_expression(query: &str) -> String {
    query
        .split_whitespace()
        .map(|word| format!("\"{}\"", word.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_operators_are_taken_literally() {
        assert_eq!(
            match_expression("  a OR \"b\"  "),
            "\"a\" \"OR\" \"\"\"b\"\"\""
        );
        assert_eq!(match_expression("   "), "");
    }
}
