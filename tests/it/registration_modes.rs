//! `--registration open|invite|closed`: who may create an account.

use anyhow::Result;
use hush::admin::invite::InviteCode;
use hush::config::{RegistrationMode, ServerConfig};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{
    TestApp, b64, error_code, open_store, password, sign, spawn_app_with, spki_der,
};

async fn app_in(mode: RegistrationMode) -> Result<TestApp> {
    spawn_app_with(ServerConfig {
        registration: mode,
        ..ServerConfig::default()
    })
    .await
}

/// Registers `name` (with the fixture key of the same name) presenting `invite`.
async fn register_with_invite(
    app: &TestApp,
    name: &str,
    invite: Option<&str>,
) -> Result<(StatusCode, serde_json::Value)> {
    let challenge = app.challenge().await?;
    let signature = sign(
        name,
        &hush::crypto::statements::registration_proof(name, &challenge),
    )?;
    let mut body = json!({
        "username": name,
        "password": password(name),
        "public_key": b64(&spki_der(name)?),
        "challenge": b64(&challenge),
        "signature": b64(&signature),
    });
    if let Some(code) = invite {
        body["invite"] = json!(code);
    }
    app.register_raw(body).await
}

/// A fresh invite code stored in the app's database, valid for `valid_ms`.
async fn invite(app: &TestApp, valid_ms: i64) -> Result<String> {
    let store = open_store(&app.db).await?;
    let (text, code) = InviteCode::generate();
    store
        .insert_invite(code.proof(), hush::store::now_ms() + valid_ms)
        .await?;
    store.close().await;
    Ok(text)
}

#[tokio::test]
async fn open_mode_registers_anyone_and_ignores_an_invite_field() -> Result<()> {
    let app = app_in(RegistrationMode::Open).await?;
    let (status, body) = register_with_invite(&app, "alice", None).await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = register_with_invite(&app, "bob", Some("whatever")).await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    Ok(())
}

#[tokio::test]
async fn closed_mode_refuses_every_registration_but_logins_still_work() -> Result<()> {
    let open = app_in(RegistrationMode::Open).await?;
    open.register("alice").await?;
    let mut app = open;
    app.config.registration = RegistrationMode::Closed;
    let app = app.restart().await?;
    let (status, body) = register_with_invite(&app, "bob", None).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_code(&body), "registration_closed");
    let code = invite(&app, 60_000).await?;
    let (status, body) = register_with_invite(&app, "bob", Some(&code)).await?;
    assert_eq!(error_code(&body), "registration_closed", "{status}");
    app.login("alice").await?;
    Ok(())
}

#[tokio::test]
async fn invite_mode_needs_a_valid_code_and_each_code_works_once() -> Result<()> {
    let app = app_in(RegistrationMode::Invite).await?;
    let (status, body) = register_with_invite(&app, "alice", None).await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "invite_required")
    );
    for bad in ["", "not-a-code", &InviteCode::generate().0] {
        let (status, body) = register_with_invite(&app, "alice", Some(bad)).await?;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::FORBIDDEN, "invalid_invite"),
            "code {bad:?}"
        );
    }
    let code = invite(&app, 60_000).await?;
    let (status, body) = register_with_invite(&app, "alice", Some(&code)).await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.login("alice").await?;
    let (status, body) = register_with_invite(&app, "bob", Some(&code)).await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "invalid_invite"),
        "a code is single-use"
    );
    Ok(())
}

#[tokio::test]
async fn an_expired_invite_is_refused() -> Result<()> {
    let app = app_in(RegistrationMode::Invite).await?;
    let code = invite(&app, -1).await?;
    let (status, body) = register_with_invite(&app, "alice", Some(&code)).await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "invalid_invite")
    );
    Ok(())
}

#[tokio::test]
async fn a_failed_registration_does_not_spend_the_invite() -> Result<()> {
    let app = app_in(RegistrationMode::Invite).await?;
    let first = invite(&app, 60_000).await?;
    let second = invite(&app, 60_000).await?;
    let (status, _) = register_with_invite(&app, "alice", Some(&first)).await?;
    assert_eq!(status, StatusCode::CREATED);
    // alice again: the name is taken, so `second` must stay usable.
    let (status, body) = register_with_invite(&app, "alice", Some(&second)).await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "username_taken")
    );
    let (status, body) = register_with_invite(&app, "bob", Some(&second)).await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    Ok(())
}

#[tokio::test]
async fn two_registrations_racing_for_one_code_create_one_account() -> Result<()> {
    let app = app_in(RegistrationMode::Invite).await?;
    let code = invite(&app, 60_000).await?;
    let (a, b) = tokio::join!(
        register_with_invite(&app, "alice", Some(&code)),
        register_with_invite(&app, "bob", Some(&code)),
    );
    let statuses = [a?.0, b?.0];
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses.contains(&StatusCode::FORBIDDEN), "{statuses:?}");
    Ok(())
}

#[tokio::test]
async fn an_invite_does_not_let_a_look_alike_register_and_stays_unspent() -> Result<()> {
    let app = app_in(RegistrationMode::Invite).await?;
    let first = invite(&app, 60_000).await?;
    let second = invite(&app, 60_000).await?;
    let (status, _) = register_with_invite(&app, "carol", Some(&first)).await?;
    assert_eq!(status, StatusCode::CREATED);
    // "caro1" looks like "carol"; fixture keys are per name, so sign as carol.
    let challenge = app.challenge().await?;
    let proof = hush::crypto::statements::registration_proof("caro1", &challenge);
    let (status, body) = app
        .register_raw(json!({
            "username": "caro1",
            "password": password("caro1"),
            "public_key": b64(&spki_der("carol")?),
            "challenge": b64(&challenge),
            "signature": b64(&sign("carol", &proof)?),
            "invite": second,
        }))
        .await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "username_confusable"),
        "{body}"
    );
    let (status, body) = register_with_invite(&app, "dave", Some(&second)).await?;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the code was not spent: {body}"
    );
    Ok(())
}
