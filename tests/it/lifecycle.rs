//! Health check, restart on the same database, graceful shutdown.

use anyhow::{Context, Result};
use reqwest::StatusCode;

use crate::support::*;

#[tokio::test]
async fn healthz_answers_200_json_naming_the_node_its_store_and_listener() -> Result<()> {
    let app = spawn_app_with(hush::config::ServerConfig {
        node_id: "node-a".into(),
        ..hush::config::ServerConfig::default()
    })
    .await?;
    // On PostgreSQL the node listens for the others: "down" (status
    // "degraded") until its listener has connected, then "ok". On SQLite
    // there is nothing to listen to: "n/a" from the start.
    let expected_listener = if postgres_admin_url().is_some() {
        "ok"
    } else {
        "n/a"
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let (status, body) = loop {
        let (status, body) = app.get("/healthz", None).await?;
        if body["listener"] == expected_listener || std::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["protocol"], 1);
    assert_eq!(body["node"], "node-a");
    assert_eq!(body["store"], "ok");
    assert_eq!(body["listener"], expected_listener, "{body}");
    Ok(())
}

/// With its database gone, a node says so with 503 (what takes it out of a
/// load balancer's rotation), naming the kind of fault and not its text.
#[tokio::test]
async fn healthz_answers_503_when_the_database_does_not() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = hush::store::Store::open(&dir.path().join("hush.db")).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/healthz", listener.local_addr()?);
    let config = hush::config::ServerConfig {
        node_id: "node-b".into(),
        ..hush::config::ServerConfig::default()
    };
    let server = tokio::spawn(hush::server::run(
        listener,
        store.clone(),
        config,
        std::future::pending::<()>(),
    ));
    let http = hush::client::tls::http_client();
    let up = http.get(&url).send().await?;
    assert_eq!(up.status(), StatusCode::OK);

    store.close().await;
    let down = http.get(&url).send().await?;
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = down.json().await?;
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["node"], "node-b");
    let store_state = body["store"].as_str().context("store is a string")?;
    assert!(store_state.starts_with("error: "), "{body}");
    assert!(!store_state.contains("hush.db"), "no file names: {body}");
    server.abort();
    Ok(())
}

#[tokio::test]
async fn unknown_endpoints_get_a_json_404() -> Result<()> {
    let app = spawn_app().await?;
    let (status, body) = app.get("/api/v1/nope", None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    Ok(())
}

#[tokio::test]
async fn a_restart_on_the_same_database_keeps_users_tokens_rooms_and_history() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let (_, dm) = app.open_dm(&t[0], "bob").await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            alice
                .send_ok(room, &format!("m{i}"), format!("before {i}").as_bytes())
                .await?,
        );
    }
    let dm_seq = alice.send_ok(dm, "d0", b"dm before").await?;
    let (old_addr, old_db) = (app.addr, app.db_path.clone());
    drop(alice);

    let app = app.restart().await?;
    assert_ne!(app.addr, old_addr);
    assert_eq!(app.db_path, old_db);

    // Tokens and rooms survived.
    let (status, rooms) = app.get("/api/v1/rooms", Some(&t[1])).await?;
    assert_eq!(status, StatusCode::OK, "{rooms}");
    let ids: Vec<i64> = rooms
        .as_array()
        .context("rooms")?
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![room, dm]);
    assert_eq!(rooms[0]["last_seq"], *sent.last().unwrap());
    // Users and passwords survived.
    app.login("alice").await?;
    let (status, body) = app
        .register_with("bob", &password("bob"), "bob", "bob")
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // History survived, and sequence numbers continue.
    let mut bob = app.connect_ws(&t[1]).await?;
    let history = bob.history(room, None, None).await?;
    let entries = history["entries"].as_array().context("entries")?;
    assert_eq!(message_seqs(entries), sent);
    assert_eq!(
        unb64(entries.last().unwrap()["body"].as_str().unwrap())?,
        b"before 4"
    );
    let (dm_entries, _) = bob.sync(dm, 0).await?;
    assert_eq!(message_seqs(&dm_entries), vec![dm_seq]);

    let mut alice = app.connect_ws(&t[0]).await?;
    let next = alice.send_ok(room, "after", b"after restart").await?;
    assert_eq!(next, sent.last().unwrap() + 1);
    assert_eq!(bob.next_entry(room).await?["seq"], next);
    // A resend from before the restart is still recognised.
    let again = alice.send_message(room, "m0", b"before 0").await?;
    assert_eq!(
        (again["seq"].as_i64(), again["duplicate"].as_bool()),
        (Some(sent[0]), Some(true))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_closes_websockets_with_1001_and_returns() -> Result<()> {
    let mut app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    alice.send_ok(room, "m", b"x").await?;

    app.shutdown().await?;
    assert_eq!(alice.expect_close().await?, Some(1001));
    assert_eq!(bob.expect_close().await?, Some(1001));
    // Nothing listens any more.
    let refused = app.http.get(app.url("/healthz")).send().await;
    assert!(refused.is_err(), "server still answering after shutdown");
    Ok(())
}
