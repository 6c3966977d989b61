//! `GET /metrics`: Prometheus text, behind a bearer token, and counters
//! that move with real traffic. Counters are process-wide and tests run in
//! parallel, so each check compares before and after and asserts "at
//! least" what this test did.

use std::collections::HashMap;

use anyhow::{Context, Result};
use hush::config::{Secret, ServerConfig};
use reqwest::StatusCode;

use crate::support::{TestApp, spawn_app, spawn_app_with};

pub const TOKEN: &str = "metrics-token-for-tests";

const NODE: &str = "metrics-node";

async fn app() -> Result<TestApp> {
    spawn_app_with(ServerConfig {
        metrics_token: Some(Secret(TOKEN.into())),
        login_failures_before_delay: 1,
        node_id: NODE.into(),
        ..ServerConfig::default()
    })
    .await
}

/// Every sample line, `name{labels}` → value, with the `node` label every
/// series carries left out (`hush_sessions{node="x"}` is `hush_sessions`,
/// `hush_errors_total{node="x",kind="y"}` is `hush_errors_total{kind="y"}`).
pub async fn scrape(app: &TestApp) -> Result<HashMap<String, f64>> {
    Ok(scrape_by_node(app)
        .await?
        .into_iter()
        .map(|((_, name), value)| (name, value))
        .collect())
}

/// Every sample line, (node label, `name{other labels}`) → value. Fails
/// on a sample without a node label.
async fn scrape_by_node(app: &TestApp) -> Result<HashMap<(String, String), f64>> {
    let resp = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp.headers()["content-type"].to_str()?.to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = resp.text().await?;
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').context("sample line")?;
        let (name, labels) = series
            .strip_suffix('}')
            .and_then(|s| s.split_once("{node=\""))
            .with_context(|| format!("no node label: {line}"))?;
        let (node, rest) = labels
            .split_once('"')
            .with_context(|| format!("unterminated node label: {line}"))?;
        let name = match rest.strip_prefix(',') {
            Some(others) => format!("{name}{{{others}}}"),
            None => name.to_owned(),
        };
        samples.insert(
            (node.to_owned(), name),
            value.parse::<f64>().with_context(|| line.to_owned())?,
        );
    }
    Ok(samples)
}

pub fn get(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_are_off_without_a_token_and_refused_with_a_wrong_one() -> Result<()> {
    let plain = spawn_app().await?;
    let (status, _) = plain.get("/metrics", None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let app = app().await?;
    let (status, _) = app.get("/metrics", None).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app.get("/metrics", Some("metrics-token-for-testz")).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    scrape(&app).await?;
    Ok(())
}

#[tokio::test]
async fn counters_move_with_real_traffic() -> Result<()> {
    let app = app().await?;
    let tokens = app.users(&["alice", "bob", "carol"]).await?;
    let room = app
        .group(&tokens[0], &[("bob", &tokens[1]), ("carol", &tokens[2])])
        .await?;
    let mut alice = app.connect_ws(&tokens[0]).await?;
    let mut bob = app.connect_ws(&tokens[1]).await?;
    let mut carol = app.connect_ws(&tokens[2]).await?;
    for ws in [&mut alice, &mut bob, &mut carol] {
        ws.sync(room, 0).await?;
    }
    let before = scrape(&app).await?;
    assert!(get(&before, "hush_connections") >= 3.0, "{before:?}");
    assert!(get(&before, "hush_sessions") >= 3.0);

    for i in 0..4 {
        alice.send_ok(room, &format!("m{i}"), &[9u8; 250]).await?;
    }
    for ws in [&mut bob, &mut carol] {
        for _ in 0..4 {
            ws.next_entry(room).await?;
        }
    }
    let reply = alice.send_message(987_654, "x", b"nowhere").await?;
    assert_eq!(reply["code"], "not_found", "{reply}");
    for _ in 0..2 {
        let (status, _) = app.login_raw("alice", "wrong password!").await?;
        assert!(status.is_client_error());
    }
    let after = scrape(&app).await?;

    let moved = |name: &str| get(&after, name) - get(&before, name);
    assert!(moved("hush_messages_relayed_total") >= 4.0, "{after:?}");
    assert!(moved("hush_message_bytes_relayed_total") >= 1000.0);
    assert!(
        moved("hush_fanout_deliveries_total") >= 12.0,
        "4 messages to 3 members"
    );
    // Bob and Carol sit idle while Alice sends: the hub writes to their
    // sockets itself (`outlet`).
    assert!(moved("hush_fanout_direct_writes_total") >= 1.0, "{after:?}");
    assert!(moved("hush_db_commit_seconds_count") >= 1.0);
    assert!(after.contains_key("hush_db_direct_commits_total"));
    if !crate::support::on_postgres() {
        // The first message loads the room through sqlx; the writer's
        // view then holds it, and the next three go straight to SQLite.
        assert!(moved("hush_db_direct_commits_total") >= 3.0, "{after:?}");
    }
    assert!(
        get(&after, "hush_db_commit_seconds_bucket{le=\"+Inf\"}")
            == get(&after, "hush_db_commit_seconds_count")
    );
    assert!(moved("hush_errors_total{kind=\"not_found\"}") >= 1.0);
    assert!(moved("hush_errors_total{kind=\"invalid_credentials\"}") >= 1.0);
    assert!(moved("hush_rate_limited_total{kind=\"login\"}") >= 1.0);

    drop(carol);
    bob.close().await?;
    alice.ping().await?;
    Ok(())
}

#[tokio::test]
async fn every_series_names_the_node() -> Result<()> {
    let app = app().await?;
    let samples = scrape_by_node(&app).await?;
    assert!(samples.len() > 10, "{samples:?}");
    assert!(samples.keys().all(|(node, _)| node == NODE), "{samples:?}");
    assert!(samples.contains_key(&(NODE.to_owned(), "hush_sessions".to_owned())));
    assert!(samples.contains_key(&(
        NODE.to_owned(),
        "hush_db_commit_seconds_bucket{le=\"+Inf\"}".to_owned()
    )));
    Ok(())
}
