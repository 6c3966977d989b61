//! Login, uniform failures, throttling and logout.

use anyhow::Result;
use hush::config::ServerConfig;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn login_with_the_right_password_gives_a_working_token() -> Result<()> {
    let app = spawn_app().await?;
    app.register("alice").await?;
    let (status, body) = app.login_raw("alice", &password("alice")).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["username"], "alice");
    let token = body["token"].as_str().unwrap();
    let (status, rooms) = app.get("/api/v1/rooms", Some(token)).await?;
    assert_eq!(status, StatusCode::OK, "{rooms}");
    assert_eq!(rooms, json!([]));
    // And nothing works without it.
    let (status, body) = app.get("/api/v1/rooms", None).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "unauthorized");
    let (status, _) = app.get("/api/v1/rooms", Some("bogus")).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn login_with_wrong_password_and_unknown_user_are_rejected_identically() -> Result<()> {
    let app = spawn_app().await?;
    app.register("alice").await?;
    let wrong_password = app.login_raw("alice", "not-the-password").await?;
    let unknown_user = app.login_raw("nobody", "not-the-password").await?;
    assert_eq!(wrong_password.0, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&wrong_password.1), "invalid_credentials");
    assert_eq!(wrong_password, unknown_user);
    Ok(())
}

#[tokio::test]
async fn repeated_login_failures_are_rate_limited() -> Result<()> {
    let config = ServerConfig {
        login_failures_before_delay: 3,
        ..ServerConfig::default()
    };
    let app = spawn_app_with(config).await?;
    app.register("alice").await?;
    for _ in 0..3 {
        let (status, _) = app.login_raw("alice", "not-the-password").await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = app.login_raw("alice", "not-the-password").await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["error"]["retry_after_secs"]
            .as_u64()
            .is_some_and(|s| s >= 1),
        "{body}"
    );
    // Even the right password waits out the delay.
    let (status, _) = app.login_raw("alice", &password("alice")).await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Other accounts are unaffected.
    app.register("bob").await?;
    app.login("bob").await?;
    Ok(())
}

#[tokio::test]
async fn logout_revokes_the_token_and_closes_its_websockets() -> Result<()> {
    let app = spawn_app().await?;
    app.register("alice").await?;
    let token = app.login("alice").await?;
    let other = app.login("alice").await?;
    let mut ws = app.connect_ws(&token).await?;
    let mut other_ws = app.connect_ws(&other).await?;

    let (status, _) = app.post("/api/v1/logout", Some(&token), None).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(ws.expect_close().await?, Some(4001));

    let (status, body) = app.get("/api/v1/rooms", Some(&token)).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let mut again = app.connect_ws_raw().await?;
    again
        .send_json(&json!({ "v": 1, "type": "auth", "token": token }))
        .await?;
    assert_eq!(again.expect_close().await?, Some(4001));

    // The other session of the same user is untouched.
    other_ws.ping().await?;
    let (status, _) = app.get("/api/v1/rooms", Some(&other)).await?;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}
