//! Names of every Redis key and channel the service uses, and the checks of
//! the settings that shape them.
//!
//! All names start with `REDIS_PREFIX` (default `chatd:`); instances with the
//! same prefix on the same Redis form one cluster. A room's keys and its
//! channel carry the room id as a hash tag (`{room}`), so on Redis Cluster
//! they live in one slot: the sequencing script may touch them together and
//! the room's sharded channel (SSUBSCRIBE/SPUBLISH) is served by the same
//! node. Room ids cannot contain braces (contract section 2), and the prefix
//! is refused if it does.
//!
//! | key | type | content | expiry |
//! | --- | --- | --- | --- |
//! | `P instances` | sorted set | instance id, scored by the time (ms, Redis clock) its presence expires | entries older than a day are pruned by heartbeats |
//! | `P online:I` | set | users with a connection on instance `I` | `PRESENCE_TTL_SECS`, refreshed by `I`'s heartbeat |
//! | `P room:{R}:members:I` | set | users in room `R` on instance `I` | same |
//! | `P room:{R}:users` | sorted set | users in room `R` on any instance, scored by when their membership expires (ms, Redis clock); `memberCount` is its size after pruning | each instance refreshes its users' scores and the key with its heartbeat |
//! | `P room:{R}:last` | string | the last message id of room `R` | one day after the room's last message |
//! | channel `P room:{R}` | pub/sub | the room's messages, typing and presence frames | |
//! | `P ban:U` | string | the end of user `U`'s ban (ms since the Unix epoch); read by instances that start later | the ban's end (PX) |
//! | channel `P operator` | pub/sub | the operator API's deletes, bans and disconnects, for every instance | |

use std::fmt::Write as _;

/// Key and channel names for one prefix and one instance.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    /// REDIS_PREFIX.
    prefix: String,
    /// This instance's id (see [`instance_id`]).
    instance: String,
}

impl Keys {
    /// Names under `prefix` for `instance`.
    pub fn new(prefix: &str, instance: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
            instance: instance.to_string(),
        }
    }

    /// This instance's id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The sorted set of live instances.
    pub fn instances(&self) -> String {
        format!("{}instances", self.prefix)
    }

    /// Users online on `instance`.
    pub fn online(&self, instance: &str) -> String {
        format!("{}online:{instance}", self.prefix)
    }

    /// Users of `room` on `instance`.
    pub fn members(&self, room: &str, instance: &str) -> String {
        format!("{}room:{{{room}}}:members:{instance}", self.prefix)
    }

    /// Users of `room` on every instance, scored by expiry (the O(1) member count).
    pub fn room_users(&self, room: &str) -> String {
        format!("{}room:{{{room}}}:users", self.prefix)
    }

    /// The last message id of `room`.
    pub fn last_id(&self, room: &str) -> String {
        format!("{}room:{{{room}}}:last", self.prefix)
    }

    /// The pub/sub channel of `room`.
    pub fn channel(&self, room: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + room.len() + 7);
        let _ = write!(s, "{}room:{{{room}}}", self.prefix);
        s
    }

    /// The key holding `user`'s ban (its end; it expires with the ban).
    pub fn ban(&self, user: &str) -> String {
        format!("{}ban:{user}", self.prefix)
    }

    /// The pattern every ban key matches (SCAN at start-up).
    pub fn ban_pattern(&self) -> String {
        format!("{}ban:*", self.prefix)
    }

    /// The channel every instance subscribes to for the operator API's
    /// actions.
    pub fn operator_channel(&self) -> String {
        format!("{}operator", self.prefix)
    }

    /// The room a channel name belongs to, or None for a foreign channel.
    pub fn room_of_channel<'c>(&self, channel: &'c str) -> Option<&'c str> {
        channel
            .strip_prefix(&self.prefix)?
            .strip_prefix("room:{")?
            .strip_suffix('}')
    }
}

/// A fresh instance id: 16 lowercase hex digits, random per process, so a
/// restarted instance never inherits the keys of its previous life (they
/// expire on their own).
pub fn instance_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Checks REDIS_URL without connecting.
pub fn check_url(url: &str) -> Result<(), String> {
    use redis::IntoConnectionInfo as _;
    url.into_connection_info().map(|_| ()).map_err(|e| {
        format!("not a usable Redis URL ({e}); expected e.g. redis://127.0.0.1:6379/0")
    })
}

/// Checks REDIS_PREFIX: printable, no braces (they would capture the hash tag
/// of every key), at most 64 bytes.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.len() > 64 {
        return Err("at most 64 bytes".into());
    }
    if prefix
        .chars()
        .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{prefix:?} contains a brace, a space or a control character"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_the_room_hash_tag() {
        let k = Keys::new("chatd:", "00ff");
        assert_eq!(k.channel("general"), "chatd:room:{general}");
        assert_eq!(k.last_id("general"), "chatd:room:{general}:last");
        assert_eq!(
            k.members("general", "00ff"),
            "chatd:room:{general}:members:00ff"
        );
        assert_eq!(k.online("00ff"), "chatd:online:00ff");
        assert_eq!(k.room_users("general"), "chatd:room:{general}:users");
        assert_eq!(k.instances(), "chatd:instances");
        assert_eq!(k.instance(), "00ff");
        assert_eq!(k.ban("eve"), "chatd:ban:eve");
        assert_eq!(k.ban_pattern(), "chatd:ban:*");
        assert_eq!(k.operator_channel(), "chatd:operator");
        assert_eq!(k.room_of_channel(&k.operator_channel()), None);
    }

    #[test]
    fn channel_names_map_back_to_rooms() {
        let k = Keys::new("t:1:", "a");
        assert_eq!(k.room_of_channel(&k.channel("a.b:c-d")), Some("a.b:c-d"));
        assert_eq!(k.room_of_channel("t:2:room:{x}"), None);
        assert_eq!(k.room_of_channel("t:1:room:x"), None);
        assert_eq!(k.room_of_channel("t:1:online:x"), None);
    }

    #[test]
    fn instance_ids_are_16_hex_digits() {
        let (a, b) = (instance_id(), instance_id());
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn settings_checks() {
        assert!(check_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_url("redis://localhost").is_ok());
        assert!(check_url("not a url").is_err());
        assert!(check_url("http://127.0.0.1:6379").is_err());
        assert!(check_prefix("chatd:").is_ok());
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("a{b").is_err());
        assert!(check_prefix("a b").is_err());
        assert!(check_prefix(&"x".repeat(65)).is_err());
    }
}
