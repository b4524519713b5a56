//! Presence: which users are online, from their live connections.
//!
//! Each user belongs to one owner core (`shard_for(user)`), which counts the
//! user's connections across all cores: the first one makes the user online,
//! the last one's close makes it offline, and only those transitions are
//! broadcast. The operations are the original service's PresenceService
//! (`setOnline`, `setOffline`, `getOnlineUsers`, `getUserStatus`); the
//! in-memory store counts this instance's connections.
//!
//! Online users of a room are known by the room's owner core (its member
//! counts), so `online_users(Some(room))` is answered there. With REDIS_URL
//! the counts stay here and the Redis thread mirrors their transitions into
//! Redis, where the cluster-wide answers come from (`redis/presence.rs`).
//! That mirroring is the hub's [`crate::broker::Broker`]'s (see its module
//! doc for why), so [`MemoryPresence`] is the one implementation of this
//! trait in both deployments.

use std::collections::HashMap;
use std::sync::Arc;

/// A user's presence status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// At least one live connection.
    Online,
    /// No live connection.
    Offline,
}

/// Presence operations of one user-owner core.
pub trait PresenceStore {
    /// A connection of `user` opened; true when the user just came online.
    fn set_online(&mut self, user: &Arc<str>) -> bool;
    /// A connection of `user` closed; true when the user just went offline.
    fn set_offline(&mut self, user: &Arc<str>) -> bool;
    /// Online users this store knows, sorted.
    fn online_users(&self) -> Vec<Arc<str>>;
    /// Whether `user` is online.
    fn user_status(&self, user: &str) -> Status;
    /// Live connections of `user` this store counts (the
    /// MAX_CONNECTIONS_PER_USER check reads it after `set_online`).
    fn connections(&self, user: &str) -> u32;
}

/// Connection counts per user, in memory. Bounded by the live connections:
/// a user with none is removed.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    /// Live connections per online user.
    connections: HashMap<Arc<str>, u32>,
}

impl PresenceStore for MemoryPresence {
    fn set_online(&mut self, user: &Arc<str>) -> bool {
        let count = self.connections.entry(user.clone()).or_insert(0);
        *count += 1;
        *count == 1
    }

    fn set_offline(&mut self, user: &Arc<str>) -> bool {
        let Some(count) = self.connections.get_mut(user) else {
            return false;
        };
        *count -= 1;
        if *count > 0 {
            return false;
        }
        self.connections.remove(user);
        true
    }

    fn online_users(&self) -> Vec<Arc<str>> {
        let mut users: Vec<_> = self.connections.keys().cloned().collect();
        users.sort();
        users
    }

    fn connections(&self, user: &str) -> u32 {
        self.connections.get(user).copied().unwrap_or(0)
    }

    fn user_status(&self, user: &str) -> Status {
        if self.connections.contains_key(user) {
            Status::Online
        } else {
            Status::Offline
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_last_connection_are_the_transitions() {
        let mut p = MemoryPresence::default();
        let ann: Arc<str> = Arc::from("ann");
        assert!(p.set_online(&ann));
        assert!(!p.set_online(&ann), "second connection is no transition");
        assert_eq!(p.connections("ann"), 2);
        assert_eq!(p.connections("bob"), 0);
        assert_eq!(p.user_status("ann"), Status::Online);
        assert!(!p.set_offline(&ann));
        assert_eq!(p.user_status("ann"), Status::Online);
        assert!(p.set_offline(&ann));
        assert_eq!(p.user_status("ann"), Status::Offline);
        assert_eq!(p.connections("ann"), 0);
        assert!(p.online_users().is_empty());
    }

    #[test]
    fn offline_for_an_unknown_user_is_no_transition() {
        let mut p = MemoryPresence::default();
        assert!(!p.set_offline(&Arc::from("ghost")));
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("b"), Arc::from("a"));
        p.set_online(&a);
        p.set_online(&b);
        assert_eq!(p.online_users(), vec![Arc::from("a"), Arc::from("b")]);
    }
}
