//! One login session per (server, user) for the client commands: resume the
//! session saved in the key store (`session_file`) while the server still
//! takes it, otherwise log in with the password and save the new one; and
//! `hush logout`, which ends it on the server and deletes it here.
//!
//! The password is asked for (through the closure the caller passes) only
//! when a login is actually needed, so a script with a saved session needs
//! only the key passphrase.

use anyhow::Context;

use super::api::{Api, ApiError};
use super::keystore::{Identity, KeyStore};
use super::session_file::{SavedSession, SessionFile};

/// An API client for `identity` on `server`, logged in: with the saved
/// session if the server accepts it, else with `password()`.
pub async fn resume_or_login(
    server: &str,
    keys: &KeyStore,
    identity: &Identity,
    password: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<Api> {
    let file = SessionFile::new(keys, identity)?;
    if let Some(api) = resume(server, &file).await? {
        return Ok(api);
    }
    let password = password()?;
    let (api, reply) = Api::new(server)
        .login(&identity.username, &password)
        .await
        .context("logging in")?;
    let saved = SavedSession {
        token: reply.token.clone(),
        expires_at: reply.expires_at,
    };
    // A session that cannot be saved still serves this command.
    if let Err(err) = file.save(server, &saved) {
        eprintln!("hush: could not save the session: {err:#}");
    }
    Ok(api)
}

/// The saved session for `server`, checked with one authenticated request;
/// `None` if there is none or the server no longer takes it.
async fn resume(server: &str, file: &SessionFile) -> anyhow::Result<Option<Api>> {
    let saved = match file.load(server) {
        Ok(Some(saved)) => saved,
        Ok(None) => return Ok(None),
        Err(err) => {
            eprintln!("hush: ignoring the saved session ({err:#}); logging in");
            return Ok(None);
        }
    };
    if saved.expires_at <= now_ms() {
        return Ok(None);
    }
    let api = Api::new(server).with_token(saved.token.clone());
    // The cheapest authenticated request: it tells a live token from one
    // that was logged out, revoked or expired (401) before the command
    // relies on it, here and on its WebSocket.
    match api.invitations().await {
        Ok(_) => Ok(Some(api)),
        Err(err) if err.is_unauthorized() => Ok(None),
        Err(err) => Err(err).context("checking the saved session"),
    }
}

/// What `logout` managed to do.
pub enum LoggedOut {
    /// There was no saved session for this server.
    NoSession,
    /// The session file did not open with this identity; it is deleted.
    UnreadableDeleted,
    /// The server ended the session (or had already); the local copy is gone.
    Ended,
    /// The local copy is gone, but the server could not be told: the token
    /// stays valid there until `expires_at` (Unix ms).
    LocalOnly { reason: ApiError, expires_at: i64 },
}

/// Ends the saved session of `identity` on `server`, and deletes it locally
/// whatever the server says: once the user asked to log out, the token is
/// not used again.
pub async fn logout(
    server: &str,
    keys: &KeyStore,
    identity: &Identity,
) -> anyhow::Result<LoggedOut> {
    let file = SessionFile::new(keys, identity)?;
    let saved = match file.load(server) {
        Ok(Some(saved)) => saved,
        Ok(None) => return Ok(LoggedOut::NoSession),
        Err(err) => {
            // No token to send to the server; the file is no use to anyone.
            eprintln!("hush: {err:#}");
            file.delete()?;
            return Ok(LoggedOut::UnreadableDeleted);
        }
    };
    let told = Api::new(server)
        .with_token(saved.token.clone())
        .logout()
        .await;
    file.forget(server)?;
    Ok(match told {
        Ok(()) => LoggedOut::Ended,
        Err(err) if err.is_unauthorized() => LoggedOut::Ended,
        Err(reason) => LoggedOut::LocalOnly {
            reason,
            expires_at: saved.expires_at,
        },
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
