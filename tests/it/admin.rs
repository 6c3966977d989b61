//! `hush admin`, run as the real binary against the database of a running
//! server: accounts, sessions, invites, backup and stats.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hush::config::{Rate, RegistrationMode, ServerConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    TestApp, b64, error_code, on_postgres, password, sign, spawn_app_with, spki_der,
};

const HUSH: &str = env!("CARGO_BIN_EXE_hush");

/// A server that checks open sockets against the database often, so that
/// admin changes show quickly.
async fn app() -> Result<TestApp> {
    spawn_app_with(ServerConfig {
        session_check_interval: Duration::from_millis(100),
        ..ServerConfig::default()
    })
    .await
}

fn admin(db: &str, args: &[&str]) -> Result<Output> {
    Ok(Command::new(HUSH)
        .arg("admin")
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("HUSH_DB")
        .stdin(Stdio::null())
        .output()?)
}

fn admin_ok(db: &str, args: &[&str]) -> Result<String> {
    let out = admin(db, args)?;
    if !out.status.success() {
        bail!(
            "hush admin {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn users(db: &str) -> Result<Vec<Value>> {
    admin_ok(db, &["users", "list", "--json"])?
        .lines()
        .map(|l| serde_json::from_str(l).context("a JSON line"))
        .collect()
}

#[tokio::test]
async fn users_list_shows_each_account_with_its_state_sessions_and_rooms() -> Result<()> {
    let app = app().await?;
    let tokens = app.users(&["alice", "bob"]).await?;
    app.create_room(&tokens[0], "general").await?;
    let list = users(&app.db)?;
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["username"], "alice");
    assert_eq!(list[0]["sessions"], 1);
    assert_eq!(list[0]["rooms"], 1);
    assert_eq!(list[1]["rooms"], 0);
    assert!(list[0]["disabled_at"].is_null());
    assert_eq!(list[0]["fingerprint"].as_str().map(str::len), Some(64));
    let table = admin_ok(&app.db, &["users", "list"])?;
    assert!(
        table.contains("alice") && table.contains("active"),
        "{table}"
    );
    Ok(())
}

#[tokio::test]
async fn disabling_a_connected_user_closes_their_socket_and_refuses_logins_until_enabled()
-> Result<()> {
    let app = app().await?;
    let tokens = app.users(&["alice", "bob"]).await?;
    let mut alice = app.connect_ws(&tokens[0]).await?;
    let mut bob = app.connect_ws(&tokens[1]).await?;

    admin_ok(&app.db, &["users", "disable", "alice"])?;
    assert_eq!(
        alice.expect_close().await?,
        Some(4001),
        "alice's socket is closed"
    );
    bob.ping().await.context("bob is untouched")?;
    let (status, body) = app.get("/api/v1/rooms", Some(&tokens[0])).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = app.login_raw("alice", &password("alice")).await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "account_disabled")
    );
    let (status, body) = app.login_raw("alice", "a wrong password").await?;
    assert_eq!(
        error_code(&body),
        "invalid_credentials",
        "a wrong password does not learn the state: {status}"
    );
    assert!(users(&app.db)?[0]["disabled_at"].is_i64());

    admin_ok(&app.db, &["users", "enable", "alice"])?;
    let token = app.login("alice").await?;
    app.connect_ws(&token).await?.ping().await?;
    Ok(())
}

#[tokio::test]
async fn revoking_sessions_closes_every_socket_of_that_user_only() -> Result<()> {
    let app = app().await?;
    let tokens = app.users(&["alice", "bob"]).await?;
    let second = app.login("alice").await?;
    let mut first_ws = app.connect_ws(&tokens[0]).await?;
    let mut second_ws = app.connect_ws(&second).await?;
    let mut bob = app.connect_ws(&tokens[1]).await?;
    let out = admin_ok(&app.db, &["sessions", "revoke", "alice"])?;
    assert!(out.contains("revoked 2 session"), "{out}");
    assert_eq!(first_ws.expect_close().await?, Some(4001));
    assert_eq!(second_ws.expect_close().await?, Some(4001));
    bob.ping().await?;
    let (status, _) = app.get("/api/v1/rooms", Some(&second)).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.login("alice").await.context("alice can log in again")?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_connected_user_removes_keys_sessions_and_memberships_and_frees_the_name()
-> Result<()> {
    let app = app().await?;
    let tokens = app.users(&["alice", "bob", "carol"]).await?;
    let room = app
        .group(&tokens[0], &[("bob", &tokens[1]), ("carol", &tokens[2])])
        .await?;
    let mut bob = app.connect_ws(&tokens[1]).await?;
    bob.send_ok(room, "b1", b"ciphertext from bob").await?;
    app.invite(
        &tokens[1],
        app.create_room(&tokens[1], "bob's").await?,
        "carol",
    )
    .await?;

    let refused = admin(&app.db, &["users", "delete", "bob"])?;
    assert!(!refused.status.success(), "delete needs --yes");
    assert_eq!(users(&app.db)?.len(), 3, "nothing was deleted");

    let out = admin_ok(&app.db, &["users", "delete", "bob", "--yes"])?;
    assert!(
        out.contains("1 key(s)") && out.contains("2 membership(s)"),
        "{out}"
    );
    assert_eq!(bob.expect_close().await?, Some(4001), "bob's socket closes");
    let (status, _) = app.get("/api/v1/rooms", Some(&tokens[1])).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = app.login_raw("bob", &password("bob")).await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "invalid_credentials")
    );
    let (status, _) = app.get("/api/v1/users/bob/keys", Some(&tokens[0])).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "bob's keys are gone");
    let (_, info) = app
        .get(&format!("/api/v1/rooms/{room}"), Some(&tokens[0]))
        .await?;
    assert_eq!(info["members"], json!(["alice", "carol"]), "{info}");
    let (_, invitations) = app.get("/api/v1/invitations", Some(&tokens[2])).await?;
    assert_eq!(invitations, json!([]), "bob's invitations went with him");
    let names: Vec<Value> = users(&app.db)?
        .iter()
        .map(|u| u["username"].clone())
        .collect();
    assert_eq!(names, vec![json!("alice"), json!("carol")]);

    // His past message stays, under a tombstone name no one can register.
    let mut alice = app.connect_ws(&tokens[0]).await?;
    let (entries, _) = alice.sync(room, 0).await?;
    let his: Vec<&Value> = entries.iter().filter(|e| e["kind"] == "message").collect();
    assert_eq!(his.len(), 1);
    assert!(
        his[0]["sender"]
            .as_str()
            .is_some_and(|s| s.starts_with("~deleted-")),
        "{his:?}"
    );
    alice.send_ok(room, "a1", b"after bob left").await?;

    // The name is free again (a new account, a new key history).
    app.register("bob").await?;
    Ok(())
}

#[tokio::test]
async fn admin_commands_name_an_unknown_user_and_never_create_a_database() -> Result<()> {
    let app = app().await?;
    app.users(&["alice"]).await?;
    let out = admin(&app.db, &["users", "disable", "nobody"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user named nobody"));
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("missing.db");
    let out = admin(missing.to_str().context("a UTF-8 path")?, &["stats"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database at"));
    assert!(
        !missing.exists(),
        "a typo must not create an empty database"
    );
    Ok(())
}

#[tokio::test]
async fn invite_codes_from_the_command_line_let_one_person_each_register() -> Result<()> {
    let app = spawn_app_with(ServerConfig {
        registration: RegistrationMode::Invite,
        ..ServerConfig::default()
    })
    .await?;
    let out = admin_ok(&app.db, &["invite", "--expires", "1h", "--count", "2"])?;
    let codes: Vec<&str> = out.lines().collect();
    assert_eq!(codes.len(), 2, "{out}");
    assert_ne!(codes[0], codes[1]);
    if !on_postgres() {
        let raw = std::fs::read(&app.db_path)?;
        assert!(
            !raw.windows(codes[0].len())
                .any(|w| w == codes[0].as_bytes()),
            "the code itself is not stored"
        );
    }
    for (name, code) in [("alice", codes[0]), ("bob", codes[1])] {
        let challenge = app.challenge().await?;
        let signature = sign(
            name,
            &hush::crypto::statements::registration_proof(name, &challenge),
        )?;
        let (status, body) = app
            .register_raw(json!({
                "username": name, "password": password(name), "public_key": b64(&spki_der(name)?),
                "challenge": b64(&challenge), "signature": b64(&signature), "invite": code,
            }))
            .await?;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let stats: Value = serde_json::from_str(&admin_ok(&app.db, &["stats", "--json"])?)?;
    assert_eq!(stats["open_invites"], 0);
    assert_eq!(stats["users"], 2);
    Ok(())
}

#[tokio::test]
async fn stats_count_users_rooms_messages_and_sessions() -> Result<()> {
    let app = app().await?;
    let tokens = app.users(&["alice", "bob"]).await?;
    let room = app.group(&tokens[0], &[("bob", &tokens[1])]).await?;
    app.open_dm(&tokens[0], "bob").await?;
    let mut alice = app.connect_ws(&tokens[0]).await?;
    for i in 0..5 {
        alice.send_ok(room, &format!("m{i}"), &[7u8; 100]).await?;
    }
    admin_ok(&app.db, &["users", "disable", "bob"])?;
    let stats: Value = serde_json::from_str(&admin_ok(&app.db, &["stats", "--json"])?)?;
    assert_eq!(stats["users"], 2, "{stats}");
    assert_eq!(stats["disabled_users"], 1);
    assert_eq!(stats["group_rooms"], 1);
    assert_eq!(stats["direct_rooms"], 1);
    assert_eq!(stats["messages"], 5);
    assert_eq!(stats["message_bytes"], 500);
    assert_eq!(
        stats["live_sessions"], 1,
        "bob's session ended with the disable"
    );
    assert!(stats["database_bytes"].as_i64().is_some_and(|b| b > 0));
    let text = admin_ok(&app.db, &["stats"])?;
    assert!(text.contains("messages:       5"), "{text}");
    Ok(())
}

#[tokio::test]
async fn backup_of_a_database_the_server_is_writing_is_a_consistent_copy() -> Result<()> {
    // 300 sends back to back: lift the per-connection message rate (its
    // burst of 100 is not what this test is about).
    let mut config = ServerConfig::default();
    config.limits.messages_per_connection = Rate {
        per_sec: 1e6,
        burst: 1_000,
    };
    config.limits.messages_per_user = config.limits.messages_per_connection;
    let app = spawn_app_with(config).await?;
    let tokens = app.users(&["alice", "bob"]).await?;
    let room = app.group(&tokens[0], &[("bob", &tokens[1])]).await?;
    let mut alice = app.connect_ws(&tokens[0]).await?;
    alice.send_ok(room, "before", b"before the backup").await?;

    // Keep writing while the backup runs.
    let writer = tokio::spawn(async move {
        let mut sent = 0u32;
        for i in 0..300 {
            if alice
                .send_ok(room, &format!("w{i}"), &[1u8; 64])
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        sent
    });
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("nested/backup.db");
    let db = app.db.clone();
    let out = tokio::task::spawn_blocking(move || {
        admin_ok(&db, &["backup", file.to_str().unwrap_or_default()])
    })
    .await??;
    assert!(out.contains("integrity ok"), "{out}");
    let sent = writer.await?;
    ensure!(
        sent == 300,
        "the server kept taking messages during the backup: {sent}"
    );

    let file = dir.path().join("nested/backup.db");
    let copy = sqlx::SqlitePool::connect(&format!("sqlite:{}?mode=ro", file.display())).await?;
    let (last_seq, count, max_seq): (i64, i64, i64) = sqlx::query_as(
        "SELECT r.last_seq, (SELECT count(*) FROM entries e WHERE e.room_id = r.id),
                (SELECT coalesce(max(seq), 0) FROM entries e WHERE e.room_id = r.id)
         FROM rooms r WHERE r.id = ?",
    )
    .bind(room)
    .fetch_one(&copy)
    .await?;
    assert_eq!(
        (count, max_seq),
        (last_seq, last_seq),
        "the copy holds whole transactions: seqs 1..=last_seq, no gap"
    );
    assert!(last_seq >= 4, "the copy has the writes before the backup");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&copy)
        .await?;
    assert_eq!(users, 2);
    copy.close().await;

    let again = admin(
        &app.db,
        &[
            "backup",
            dir.path()
                .join("nested/backup.db")
                .to_str()
                .unwrap_or_default(),
        ],
    )?;
    assert!(
        !again.status.success(),
        "an existing file is never overwritten"
    );
    Ok(())
}

#[tokio::test]
async fn deleting_an_account_frees_its_look_alikes_too() -> Result<()> {
    let app = app().await?;
    app.register("alice").await?;
    let (status, body) = app
        .register_with("a1ice", &password("a1ice"), "bob", "bob")
        .await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "username_confusable")
    );
    admin_ok(&app.db, &["users", "delete", "alice", "--yes"])?;
    let (status, body) = app
        .register_with("a1ice", &password("a1ice"), "bob", "bob")
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.login("a1ice").await?;
    Ok(())
}
