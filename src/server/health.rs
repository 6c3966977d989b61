//! What `GET /healthz` reports besides the database: the state of the
//! cross-node listener (PostgreSQL `LISTEN`), set by whoever runs it and
//! read by the route. One atomic byte, shared through `AppState`.

use std::sync::atomic::{AtomicU8, Ordering};

/// The cross-node listener's state as `/healthz` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerState {
    /// No listener: one node on SQLite has nobody to listen to.
    NotApplicable,
    /// Listening: announcements from other nodes arrive as they happen.
    Up,
    /// Not listening (reconnecting): entries from other nodes arrive only
    /// by the periodic catch-up read, so late but not lost.
    Down,
}

impl ListenerState {
    /// The value of `/healthz`'s `listener` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotApplicable => "n/a",
            Self::Up => "ok",
            Self::Down => "down",
        }
    }
}

/// The listener's state, shared by the listener (writes) and `/healthz`
/// (reads). Starts as `NotApplicable`.
#[derive(Debug, Default)]
pub struct ListenerHealth(AtomicU8);

impl ListenerHealth {
    pub fn set(&self, state: ListenerState) {
        let value = match state {
            ListenerState::NotApplicable => 0,
            ListenerState::Up => 1,
            ListenerState::Down => 2,
        };
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> ListenerState {
        match self.0.load(Ordering::Relaxed) {
            1 => ListenerState::Up,
            2 => ListenerState::Down,
            _ => ListenerState::NotApplicable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_reads_back_as_set() {
        let health = ListenerHealth::default();
        assert_eq!(health.get(), ListenerState::NotApplicable);
        for state in [
            ListenerState::Up,
            ListenerState::Down,
            ListenerState::NotApplicable,
        ] {
            health.set(state);
            assert_eq!(health.get(), state);
        }
        assert_eq!(ListenerState::Up.as_str(), "ok");
    }
}
