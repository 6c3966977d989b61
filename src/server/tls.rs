//! Keeps the server's certificate current: reloads it on SIGHUP and when
//! its files change, logging (and counting) each outcome.

use crate::certificate::{TlsError, TlsReloader};

/// Reloads on SIGHUP and when the files change, until `stop` flips.
pub async fn watch(tls: TlsReloader, mut stop: tokio::sync::watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::warn!(error = %err, "no SIGHUP handler; TLS reload on file change only");
            None
        }
    };
    let mut tick = tokio::time::interval(tls.check_every());
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => return,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                log_outcome("SIGHUP", tls.reload());
            }
            _ = tick.tick() => {
                if let Some(outcome) = tls.reload_if_changed() {
                    log_outcome("file change", outcome);
                }
            }
        }
    }
}

fn log_outcome(trigger: &str, outcome: Result<(), TlsError>) {
    match outcome {
        Ok(()) => tracing::info!(trigger, "TLS certificate reloaded"),
        Err(err) => {
            super::metrics::error("tls_reload");
            tracing::error!(trigger, error = %err, "TLS certificate reload failed; keeping the previous certificate");
        }
    }
}
