//! `hush admin`: the operator's commands. They open the database directly
//! (the SQLite file, or the PostgreSQL database of a `postgres://` URL),
//! so they work whether the server is running or not (SQLite's WAL lets
//! them read alongside it; a write waits for the server's, up to SQLite's
//! busy timeout). A running server notices disabled accounts and revoked
//! sessions at its next session sweep (`--session-check-interval`, 5 s by
//! default) and closes those sockets. On PostgreSQL the command also tells
//! every running node at once, with the notice a logout sends, so their
//! sockets close within a moment; the sweep remains the fallback.

pub mod invite;
pub mod migrate;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cli::{AdminArgs, AdminCommand, SessionsCommand, UsersCommand};
use crate::notify::{NodeId, Notice, postgres::CHANNEL, wire};
use crate::store::db::{self, Backend};
use crate::store::{DbLocation, Durability, Store, StoreError, UserId, now_ms};
use invite::InviteCode;

pub async fn run(args: &AdminArgs) -> anyhow::Result<()> {
    if let AdminCommand::MigrateToPostgres { from, to } = &args.command {
        return migrate_to_postgres(from, to).await;
    }
    let store = open(&args.db).await?;
    let outcome = dispatch(&store, &args.command).await;
    store.close().await;
    outcome
}

/// Opens an existing database (never creates one: a mistyped `--db` must
/// not look like an empty server).
/// A PostgreSQL database must exist already too; opening it creates the
/// schema if it has none yet, as the server does.
async fn open(location: &DbLocation) -> anyhow::Result<Store> {
    if let Some(path) = location.sqlite_path()
        && !path.is_file()
    {
        bail!(
            "no database at {} (give the server's --db, or set HUSH_DB)",
            path.display()
        );
    }
    Store::open_with(location, Durability::Full)
        .await
        .with_context(|| format!("opening database {location}"))
}

async fn dispatch(store: &Store, command: &AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Users { command } => users(store, command).await,
        AdminCommand::Sessions {
            command: SessionsCommand::Revoke { user },
        } => {
            let user = user.to_ascii_lowercase();
            let id = user_id(store, &user).await;
            let n = store
                .revoke_sessions(&user)
                .await
                .map_err(|e| named(e, &user))?;
            println!(
                "revoked {n} session(s) of {user}; {}",
                tell_the_nodes(store, id).await
            );
            Ok(())
        }
        AdminCommand::Invite { expires, count } => {
            let expires_at = now_ms() + expires.as_millis() as i64;
            for _ in 0..*count {
                let (text, code) = InviteCode::generate();
                store.insert_invite(code.proof(), expires_at).await?;
                println!("{text}");
            }
            eprintln!(
                "{count} single-use invite code(s), valid for {}; give one to each new user (`hush register --invite CODE`)",
                humantime::format_duration(*expires)
            );
            Ok(())
        }
        AdminCommand::Backup { file } => backup(store, file).await,
        // Opens its own two databases (see `run`).
        AdminCommand::MigrateToPostgres { from, to } => migrate_to_postgres(from, to).await,
        AdminCommand::Stats { json } => {
            let stats = store.stats().await?;
            if *json {
                println!("{}", serde_json::to_string(&stats)?);
            } else {
                println!(
                    "users:          {} ({} disabled, {} deleted)",
                    stats.users, stats.disabled_users, stats.deleted_users
                );
                println!(
                    "rooms:          {} groups, {} direct",
                    stats.group_rooms, stats.direct_rooms
                );
                println!(
                    "messages:       {} ({} bytes of ciphertext)",
                    stats.messages, stats.message_bytes
                );
                if let Some(oldest) = stats.oldest_message_ts {
                    let age =
                        Duration::from_millis((now_ms() - oldest).max(0) as u64 / 1000 * 1000);
                    println!("oldest message: {} ago", humantime::format_duration(age));
                }
                println!("live sessions:  {}", stats.live_sessions);
                println!("open invites:   {}", stats.open_invites);
                println!("database:       {} bytes", stats.database_bytes);
            }
            Ok(())
        }
    }
}

async fn users(store: &Store, command: &UsersCommand) -> anyhow::Result<()> {
    match command {
        UsersCommand::List { json } => {
            let users = store.list_users().await?;
            if *json {
                for user in &users {
                    println!("{}", serde_json::to_string(user)?);
                }
                return Ok(());
            }
            println!(
                "{:<6} {:<32} {:<9} {:>8} {:>5}  fingerprint",
                "id", "username", "state", "sessions", "rooms"
            );
            for u in users {
                let state = if u.disabled_at.is_some() {
                    "disabled"
                } else {
                    "active"
                };
                let fp = u
                    .fingerprint
                    .as_deref()
                    .map_or("-", |f| &f[..f.len().min(16)]);
                println!(
                    "{:<6} {:<32} {:<9} {:>8} {:>5}  {fp}",
                    u.id, u.username, state, u.sessions, u.rooms
                );
            }
            Ok(())
        }
        UsersCommand::Disable { user } => {
            let user = user.to_ascii_lowercase();
            let id = user_id(store, &user).await;
            store
                .set_disabled(&user, true)
                .await
                .map_err(|e| named(e, &user))?;
            println!(
                "disabled {user}: logins refused, sessions ended; {}",
                tell_the_nodes(store, id).await
            );
            Ok(())
        }
        UsersCommand::Enable { user } => {
            let user = user.to_ascii_lowercase();
            store
                .set_disabled(&user, false)
                .await
                .map_err(|e| named(e, &user))?;
            println!("enabled {user}");
            Ok(())
        }
        UsersCommand::Delete { user, yes } => {
            let user = user.to_ascii_lowercase();
            if !yes {
                bail!(
                    "deleting {user} removes their keys, sessions and memberships and cannot be undone; repeat with --yes"
                );
            }
            let id = user_id(store, &user).await;
            let done = store
                .delete_user(&user)
                .await
                .map_err(|e| named(e, &user))?;
            println!(
                "deleted {user}: {} key(s), {} session(s), {} membership(s), {} invitation(s) removed; their past messages stay in the rooms until retention prunes them; {}",
                done.keys,
                done.sessions,
                done.memberships,
                done.invitations,
                tell_the_nodes(store, id).await
            );
            Ok(())
        }
    }
}

/// The account's id, looked up before a change that may remove it.
async fn user_id(store: &Store, username: &str) -> Option<UserId> {
    store.find_user(username).await.ok().map(|user| user.id)
}

/// On PostgreSQL, tells every running node that `user`'s sessions changed
/// (`Notice::Sessions`, as a logout does): each checks that user's open
/// sockets against the database now. Returns what the operator should
/// expect, for the command's output.
async fn tell_the_nodes(store: &Store, user: Option<UserId>) -> &'static str {
    const AT_THE_SWEEP: &str = "open sockets close at the server's next session check";
    let Some(user) = user.filter(|_| store.backend() == Backend::Postgres) else {
        return AT_THE_SWEEP;
    };
    let notice = [Notice::Sessions { users: vec![user] }];
    for payload in wire::encode(NodeId::random(), &notice) {
        let sent = db::query("SELECT pg_notify(?, ?)")
            .bind(CHANNEL)
            .bind(payload.as_str())
            .execute(store.db())
            .await;
        if let Err(err) = sent {
            eprintln!("warning: could not notify the running nodes ({err})");
            return AT_THE_SWEEP;
        }
    }
    "every running node was told and closes its open sockets now"
}

async fn backup(store: &Store, file: &Path) -> anyhow::Result<()> {
    if store.backend() == Backend::Postgres {
        bail!(
            "hush admin backup copies a SQLite database; back up a PostgreSQL database with pg_dump (e.g. pg_dump -Fc -f hush.dump DBNAME)"
        );
    }
    if file.exists() {
        bail!("{} exists; give a new file name", file.display());
    }
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    store
        .backup_to(file)
        .await
        .with_context(|| format!("writing the backup to {}", file.display()))?;
    // Prove the copy opens and is sound before calling it a backup.
    let copy = Store::open(file).await.context("opening the backup")?;
    let check = copy.integrity_check().await;
    copy.close().await;
    match check? {
        ok if ok == "ok" => {
            let bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
            println!(
                "backup written to {} ({bytes} bytes, integrity ok)",
                file.display()
            );
            Ok(())
        }
        problem => bail!(
            "the backup at {} failed its integrity check: {problem}",
            file.display()
        ),
    }
}

async fn migrate_to_postgres(from: &Path, to: &DbLocation) -> anyhow::Result<()> {
    let report = migrate::migrate_to_postgres(from, to).await?;
    println!("copied {} to {to}:", from.display());
    for (table, rows) in &report.tables {
        println!("  {table:<13} {rows:>9} row(s)");
    }
    println!(
        "checked: every table has as many rows on both sides; all {} room log(s) match (entry count, highest seq, last seq), gap-free{}",
        report.rooms,
        if report.pruned_rooms == 0 {
            String::new()
        } else {
            format!(
                " but {} whose old messages retention deleted (the same on both sides)",
                report.pruned_rooms
            )
        }
    );
    println!("serve it with: hush serve --db '<the same URL>'");
    Ok(())
}

fn named(err: StoreError, user: &str) -> anyhow::Error {
    match err {
        StoreError::NotFound => anyhow::anyhow!("no user named {user}"),
        other => other.into(),
    }
}
