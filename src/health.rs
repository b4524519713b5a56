//! Health of the external backends, written by their side threads and read
//! by `/healthz` on any core.
//!
//! A backend that is not configured is `Disabled`; a configured one is `Up`
//! while its last operation succeeded and `Down` from the first failure
//! until a retry succeeds. Only `/healthz` and `/metrics` read this, never
//! the message path, so plain atomics shared through the `Arc<Shared>` are
//! enough.

use std::sync::atomic::{AtomicU8, Ordering};

/// State of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not configured: the in-memory store is used.
    Disabled,
    /// Configured and answering.
    Up,
    /// Configured and failing; writes are buffered and retried.
    Down,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Up,
            2 => State::Down,
            _ => State::Disabled,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            State::Disabled => 0,
            State::Up => 1,
            State::Down => 2,
        }
    }

    /// The word `/healthz` reports.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Disabled => "disabled",
            State::Up => "up",
            State::Down => "down",
        }
    }
}

/// One backend's state, shared between its side thread (writer) and
/// `/healthz` (reader) without a lock.
#[derive(Debug, Default)]
pub struct AtomicState(AtomicU8);

impl AtomicState {
    /// The current state.
    pub fn get(&self) -> State {
        State::from_u8(self.0.load(Ordering::Relaxed))
    }

    /// Sets the state.
    pub fn set(&self, state: State) {
        self.0.store(state.as_u8(), Ordering::Relaxed);
    }
}

/// The states of both backends.
#[derive(Debug, Default)]
pub struct BackendHealth {
    /// Redis (presence, cross-instance fan-out).
    pub redis: AtomicState,
    /// Postgres (history, audit trail).
    pub postgres: AtomicState,
}

impl BackendHealth {
    /// Names of the configured backends that are down, for `/healthz`.
    pub fn down(&self) -> Vec<&'static str> {
        let mut down = Vec::new();
        if self.redis.get() == State::Down {
            down.push("redis");
        }
        if self.postgres.get() == State::Down {
            down.push("postgres");
        }
        down
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_disabled_and_reports_only_down_backends() {
        let h = BackendHealth::default();
        assert_eq!(h.redis.get(), State::Disabled);
        assert!(h.down().is_empty());
        h.redis.set(State::Up);
        h.postgres.set(State::Down);
        assert_eq!(h.down(), vec!["postgres"]);
        h.redis.set(State::Down);
        assert_eq!(h.down(), vec!["redis", "postgres"]);
        h.postgres.set(State::Up);
        assert_eq!(h.down(), vec!["redis"]);
        assert_eq!(h.postgres.get().as_str(), "up");
    }
}
