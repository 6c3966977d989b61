//! `hush admin migrate-to-postgres`, run as the real binary: a SQLite
//! database with users, keys, sessions, challenges, invite codes, rooms,
//! memberships, invitations, entries, blocks, message requests and room
//! admins is copied into a fresh PostgreSQL database, and the store then
//! reads the same things from both. Then `hush admin` on the copy.
//!
//! PostgreSQL only (the `postgres_` prefix): these run in the PostgreSQL
//! pass of the suite, with HUSH_TEST_POSTGRES_URL set to a throwaway
//! cluster's admin database, and fail when it is not set.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail, ensure};
use hush::config::ServerConfig;
use hush::store::{DbLocation, Durability, RoomId, Store, UserId, UserRef};

use crate::support::{PgDatabase, external_app, message_seqs};

const HUSH: &str = env!("CARGO_BIN_EXE_hush");

fn hush(args: &[&str]) -> Result<Output> {
    Ok(Command::new(HUSH)
        .args(args)
        .env_remove("HUSH_DB")
        .stdin(Stdio::null())
        .output()?)
}

fn hush_ok(args: &[&str]) -> Result<String> {
    let out = hush(args)?;
    if !out.status.success() {
        bail!(
            "hush {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn user(id: UserId, name: &str) -> UserRef {
    UserRef {
        id,
        name: name.into(),
    }
}

/// Fills a SQLite database with a row in every table; returns the users
/// (alice, bob, carol, dave) and the two rooms (a group and a DM).
async fn populate(path: &Path) -> Result<(Vec<UserRef>, RoomId, RoomId)> {
    let store = Store::open(path).await?;
    let mut users = Vec::new();
    for (i, name) in ["alice", "bob", "carol", "dave"].iter().enumerate() {
        let key = vec![i as u8; 40];
        let id = store
            .create_user(name, "$argon2id$not-a-real-hash", &key, &format!("{i:064}"))
            .await?;
        store
            .create_session(id, &[i as u8; 32], hush::store::now_ms() + 3_600_000)
            .await?;
        users.push(user(id, name));
    }
    let (alice, bob, carol, dave) = (&users[0], &users[1], &users[2], &users[3]);
    ensure!(store.insert_challenge(b"a-challenge", i64::MAX, 10).await?);
    let code = hush::admin::invite::InviteCode::generate().1;
    store
        .insert_invite(code.proof(), hush::store::now_ms() + 60_000)
        .await?;

    let (writer, task) = store.spawn_writer(Box::new(|_| {}));
    let group = writer
        .create_group(alice.clone(), "general".into())
        .await?
        .room;
    writer.invite(group, alice.clone(), bob.clone()).await?;
    writer.join(group, bob.clone()).await?;
    writer.invite(group, alice.clone(), carol.clone()).await?;
    writer.join(group, carol.clone()).await?;
    writer.promote(group, alice.clone(), bob.clone()).await?;
    for n in 0..30 {
        let from = if n % 2 == 0 { alice } else { bob };
        writer
            .send_message(group, from.clone(), format!("m{n}"), vec![n as u8; 100 + n])
            .await?;
    }
    writer.leave(group, carol.clone()).await?;
    // A pending invitation, and a message request from a stranger.
    writer.invite(group, alice.clone(), dave.clone()).await?;
    let dm = writer.open_dm(dave.clone(), carol.clone()).await?.room;
    writer
        .send_message(dm, dave.clone(), "hi".into(), b"ciphertext".to_vec())
        .await?;
    writer.block(bob.clone(), dave.clone()).await?;
    writer.stop().await;
    task.await?;
    store.close().await;
    Ok((users, group, dm))
}

/// What the store reads back for every user, rendered for comparison.
async fn reads(store: &Store, users: &[UserRef], rooms: &[RoomId]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for u in users {
        out.push(format!("{:?}", store.find_user(&u.name).await?.as_ref()));
        out.push(format!("{:?}", store.key_history(u.id).await?));
        out.push(format!("{:?}", store.rooms_of(u.id).await?));
        out.push(format!("{:?}", store.invitations_for(u.id).await?));
        out.push(format!("{:?}", store.blocked_names(u.id).await?));
        out.push(format!("{:?}", store.co_members(u.id).await.map(sorted)?));
        out.push(format!(
            "{:?}",
            store.live_session(&[u.id.0 as u8 - 1; 32]).await.ok()
        ));
        for room in rooms {
            out.push(format!(
                "{:?}",
                store.entries_before(*room, u.id, i64::MAX, 1000).await.ok()
            ));
            let mut synced = Vec::new();
            let more = store
                .visit_entries_after(*room, u.id, 3, 10, |entry| {
                    synced.push(entry);
                    std::ops::ControlFlow::Continue(())
                })
                .await
                .ok();
            out.push(format!("{more:?} {synced:?}"));
        }
    }
    let ids: Vec<UserId> = users.iter().map(|u| u.id).collect();
    out.push(format!("{:?}", store.rooms_with_members(&ids).await?));
    for room in rooms {
        out.push(format!("{:?}", store.last_seq(*room).await?));
        out.push(format!("{:?}", store.members_with_names(*room).await?));
        out.push(format!(
            "{:?}",
            store.signal_audience(*room, users[3].id).await.ok()
        ));
    }
    let mut listed = store.list_users().await?;
    for u in &mut listed {
        u.sessions = 0; // sessions count as live relative to now; compared above
    }
    out.push(format!("{listed:?}"));
    let mut stats = store.stats().await?;
    stats.database_bytes = 0;
    out.push(format!("{stats:?}"));
    Ok(out)
}

fn sorted(mut v: Vec<(UserId, String)>) -> Vec<(UserId, String)> {
    v.sort();
    v
}

#[tokio::test]
async fn postgres_migrate_to_postgres_copies_every_table_and_the_copy_reads_the_same() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let sqlite = dir.path().join("hush.db");
    let (users, group, dm) = populate(&sqlite).await?;
    let db = PgDatabase::create().await?;
    check_migration(&sqlite, &db.url, &users, &[group, dm]).await
}

async fn check_migration(
    sqlite: &Path,
    url: &str,
    users: &[UserRef],
    rooms: &[RoomId],
) -> Result<()> {
    let from = sqlite.to_str().context("a UTF-8 path")?;
    let out = hush_ok(&["admin", "migrate-to-postgres", "--from", from, "--to", url])?;
    for (table, rows) in [
        ("users", 4),
        ("user_keys", 4),
        ("sessions", 4),
        ("challenges", 1),
        ("invite_codes", 1),
        ("rooms", 2),
        ("memberships", 5),
        ("invitations", 1),
        ("blocks", 1),
        ("dm_requests", 1),
        ("room_admins", 1),
    ] {
        ensure!(
            copied(&out, table) == Some(rows),
            "{table}: {rows} expected in:\n{out}"
        );
    }
    ensure!(copied(&out, "entries") > Some(30), "{out}");
    ensure!(out.contains("all 2 room log(s) match"), "{out}");
    let password = url_password(url)?;
    ensure!(
        password.is_empty() || !out.contains(&password),
        "the output shows the password"
    );

    let source = Store::open(sqlite).await?;
    let target = Store::open_with(DbLocation::parse(url), Durability::Full).await?;
    let before = reads(&source, users, rooms).await?;
    let after = reads(&target, users, rooms).await?;
    ensure!(before.len() == after.len());
    for (b, a) in before.iter().zip(&after) {
        ensure!(b == a, "SQLite read:\n{b}\nPostgreSQL read:\n{a}");
    }

    // Identities moved past the copied ids: a new account gets the next id.
    let erin = target
        .create_user("erin", "$argon2id$x", b"key", "e")
        .await?;
    ensure!(erin.0 == users[3].id.0 + 1, "new id {erin:?}");
    // Look-alike rules hold on PostgreSQL too.
    ensure!(matches!(
        target
            .create_user("a1ice", "$argon2id$x", b"key", "f")
            .await,
        Err(hush::store::StoreError::UsernameConfusable)
    ));
    source.close().await;
    target.close().await;

    // A second copy into a database with users is refused.
    let again = hush(&["admin", "migrate-to-postgres", "--from", from, "--to", url])?;
    let err = String::from_utf8_lossy(&again.stderr);
    ensure!(
        !again.status.success() && err.contains("already has"),
        "{err}"
    );

    // hush admin on the copy.
    let list = hush_ok(&["admin", "--db", url, "users", "list", "--json"])?;
    ensure!(
        list.lines().count() == 5 && list.contains("\"carol\""),
        "{list}"
    );
    hush_ok(&["admin", "--db", url, "users", "disable", "dave"])?;
    let stats = hush_ok(&["admin", "--db", url, "stats"])?;
    ensure!(stats.contains("5 (1 disabled, 0 deleted)"), "{stats}");
    hush_ok(&["admin", "--db", url, "users", "delete", "carol", "--yes"])?;
    let backup = hush(&["admin", "--db", url, "backup", "/tmp/never-written.db"])?;
    let err = String::from_utf8_lossy(&backup.stderr);
    ensure!(!backup.status.success() && err.contains("pg_dump"), "{err}");

    serve_the_copy(url).await
}

/// A server on the copy registers, logs in, writes and syncs.
async fn serve_the_copy(url: &str) -> Result<()> {
    let store = Store::open_with(DbLocation::parse(url), Durability::Full).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(hush::server::run(
        listener,
        store,
        ServerConfig::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    // Typed by `external_app`: a path on some branches, the --db text on others.
    let app = external_app(addr, url)?;
    let token = app.user("mallory").await?;
    let room = app.create_room(&token, "after the move").await?;
    ensure!(
        room == 3,
        "the new room's id {room} follows the copied ones"
    );
    let (_, dm) = app.open_dm(&token, "alice").await?;
    let mut ws = app.connect_ws(&token).await?;
    let mut seqs = Vec::new();
    for n in 0..5 {
        seqs.push(
            ws.send_ok(room, &format!("c{n}"), format!("body {n}").as_bytes())
                .await?,
        );
    }
    ensure!(seqs == [2, 3, 4, 5, 6], "{seqs:?}");
    ws.send_ok(dm, "hello", b"to alice").await?;
    let (entries, synced) = ws.sync(room, 0).await?;
    ensure!(
        synced == 6 && message_seqs(&entries) == [2, 3, 4, 5, 6],
        "{entries:?}"
    );
    let (rooms_status, rooms) = app.get("/api/v1/rooms", Some(&token)).await?;
    ensure!(rooms_status.is_success(), "{rooms}");
    ws.close().await?;
    let _ = stop.send(());
    server.await?;
    Ok(())
}

/// The password of `url`'s user part (which no output may show).
fn url_password(url: &str) -> Result<String> {
    let rest = &url[url.find("://").context("a URL")? + 3..];
    let Some((userinfo, _)) = rest.split_once('@') else {
        return Ok(String::new());
    };
    Ok(userinfo.split_once(':').map_or("", |(_, p)| p).to_owned())
}

/// The row count the migration reported for `table`.
fn copied(out: &str, table: &str) -> Option<i64> {
    out.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(table)).then(|| words.next()?.parse().ok())?
    })
}
