//! This instance's presence in Redis: which users are online here and which
//! users are in which room here, mirrored on the Redis thread and written to
//! Redis in pipelined batches; and the cluster-wide reads over every live
//! instance's sets.
//!
//! The mirror is the truth for this instance (it follows the cores'
//! transitions, see `redis/worker.rs`); Redis holds a copy with an expiry. Changes
//! since the last flush are kept as a coalesced *dirty* map (entry → wanted
//! state), flushed when it reaches [`FLUSH_SIZE`] entries or [`FLUSH_INTERVAL`]
//! after its first entry, whichever comes first. The map holds at most
//! `REDIS_BUFFER` entries: past that (a long outage with much churn) it is
//! dropped and replaced by one *full rewrite* of this instance's sets from the
//! mirror, counted in `chat_redis_buffer_overflows_total`. A full rewrite is
//! also what follows every (re)connection, since Redis may have lost or
//! expired the keys meanwhile. Nothing is lost either way: the mirror is
//! bounded by the live connections, like the cores' own state.
//!
//! Expiry: every key of this instance expires `PRESENCE_TTL_SECS` after its
//! last refresh; the heartbeat (every third of it) refreshes them and the
//! instance's entry in the `instances` sorted set. Readers count only
//! instances whose entry has not expired, so an instance killed without a
//! goodbye stops counting after at most `PRESENCE_TTL_SECS`.
//!
//! Member counts: `memberCount` must not cost a union of the whole room per
//! join. Besides its per-instance sets, each room has one cluster-wide sorted
//! set `room:{R}:users` of its users scored by the time (Redis clock) their
//! membership expires. Every instance adds its users there when it adds them
//! to its own set, and refreshes their scores with its heartbeat; a user
//! leaving an instance is removed from it only when no other live instance's
//! set still has the user ([`REMOVE_SCRIPT`], atomic with the other sets as
//! they share the room's hash tag). A join's count is then [`COUNT_SCRIPT`]:
//! drop expired entries, ZCARD, O(log n) plus what expired. Users of a killed
//! instance stop counting once their score passes, at most
//! `PRESENCE_TTL_SECS` after its last heartbeat, like its sets.
//!
//! The mirror, the dirty map and the write plans are pure and tested without
//! Redis; [`execute`], [`heartbeat`] and the reads do the I/O.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use crate::redis::keys::Keys;

/// Dirty entries that trigger a flush without waiting for the interval.
pub const FLUSH_SIZE: usize = 512;
/// Longest time a presence change waits to be batched with others.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(5);
/// Keys refreshed per heartbeat pipeline (a large instance refreshes its room
/// keys in several round trips rather than one huge one).
pub const HEARTBEAT_CHUNK: usize = 1000;

/// Registers the instance as live until `now + ttl` (Redis clock) and prunes
/// entries dead for a day. `KEYS[1]` instances; ARGV instance, ttl ms.
pub const HEARTBEAT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 86400000)
return now
";

/// Live instances (entry not expired, Redis clock). `KEYS[1]` instances.
pub const LIVE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
";

/// Adds users to a room's cluster-wide set, or refreshes them, with the
/// expiry `now + ttl` (Redis clock). `KEYS[1]` room users; ARGV ttl ms, users.
pub const ADD_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires = now + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], expires, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return #ARGV - 1
";

/// Removes users that left this instance from a room's cluster-wide set,
/// unless another live instance still has them in the room. `KEYS[1]` room
/// users, `KEYS[2..]` the other live instances' member sets of the room;
/// ARGV users.
pub const REMOVE_SCRIPT: &str = r"
local removed = 0
for i = 1, #ARGV do
  local elsewhere = false
  for k = 2, #KEYS do
    if redis.call('SISMEMBER', KEYS[k], ARGV[i]) == 1 then
      elsewhere = true
      break
    end
  end
  if not elsewhere then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
";

/// Distinct users of a room cluster-wide: expired entries dropped, then the
/// size. `KEYS[1]` room users.
pub const COUNT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
return redis.call('ZCARD', KEYS[1])
";

/// One fact about this instance's presence.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    /// The user has a connection here.
    Online(Arc<str>),
    /// The user is in the room here: (room, user).
    Member(Arc<str>, Arc<str>),
}

/// What a flush writes.
#[derive(Debug, Default)]
pub struct Plan {
    /// Keys whose whole content is replaced (DEL, then SADD when not empty),
    /// each in its own MULTI/EXEC so readers never see it half written.
    pub replace: Vec<(String, Vec<Arc<str>>)>,
    /// Members added per key.
    pub add: Vec<(String, Vec<Arc<str>>)>,
    /// Members removed per key.
    pub remove: Vec<(String, Vec<Arc<str>>)>,
    /// Users added to (or, on a full rewrite, refreshed in) each room's
    /// cluster-wide set.
    pub room_add: Vec<(Arc<str>, Vec<Arc<str>>)>,
    /// Users that left each room here: removed from its cluster-wide set
    /// unless another instance has them.
    pub room_remove: Vec<(Arc<str>, Vec<Arc<str>>)>,
    /// Entries in the plan (for the batch size metric).
    pub entries: usize,
    /// Key names (the room sets' names are made when the plan is written).
    pub keys: Keys,
}

/// This instance's presence as the Redis thread knows it.
#[derive(Debug)]
pub struct Mirror {
    /// Key names under this instance's prefix (its online set, room sets, heartbeat).
    keys: Keys,
    /// Users with a connection on this instance; a change marks the user's online entry dirty.
    online: HashSet<Arc<str>>,
    /// Users per room here; a room is present only while not empty.
    rooms: HashMap<Arc<str>, HashSet<Arc<str>>>,
    /// Changes not yet written: entry → wanted (true: present).
    dirty: HashMap<Entry, bool>,
    /// When the oldest dirty entry was recorded.
    dirty_since: Option<Instant>,
    /// Most dirty entries kept (REDIS_BUFFER) before falling back to a full rewrite.
    limit: usize,
    /// The next flush rewrites everything from the mirror.
    full_rewrite: bool,
    /// Times the dirty map overflowed into a full rewrite.
    overflows: u64,
}

impl Mirror {
    /// An empty mirror that starts with a full rewrite pending (the first
    /// connection registers the instance).
    pub fn new(keys: Keys, limit: usize) -> Mirror {
        Mirror {
            keys,
            online: HashSet::new(),
            rooms: HashMap::new(),
            dirty: HashMap::new(),
            dirty_since: None,
            limit: limit.max(1),
            full_rewrite: true,
            overflows: 0,
        }
    }

    /// Key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn mark(&mut self, entry: Entry, present: bool, now: Instant) {
        if self.full_rewrite {
            return; // the rewrite writes the mirror as it will be then
        }
        if self.dirty.len() >= self.limit && !self.dirty.contains_key(&entry) {
            self.dirty.clear();
            self.dirty_since = None;
            self.full_rewrite = true;
            self.overflows += 1;
            return;
        }
        self.dirty.insert(entry, present);
        self.dirty_since.get_or_insert(now);
    }

    /// The user has a connection here.
    pub fn online(&mut self, user: Arc<str>, now: Instant) {
        if self.online.insert(user.clone()) {
            self.mark(Entry::Online(user), true, now);
        }
    }

    /// The user's last connection here closed.
    pub fn offline(&mut self, user: Arc<str>, now: Instant) {
        if self.online.remove(&user) {
            self.mark(Entry::Online(user), false, now);
        }
    }

    /// The user is in the room here; true when the room just got its first
    /// member (subscribe to its channel).
    pub fn room_add(&mut self, room: Arc<str>, user: Arc<str>, now: Instant) -> bool {
        let users = self.rooms.entry(room.clone()).or_default();
        let first = users.is_empty();
        if users.insert(user.clone()) {
            self.mark(Entry::Member(room, user), true, now);
        }
        first
    }

    /// The user left the room here; true when the room has no member left
    /// (unsubscribe).
    pub fn room_remove(&mut self, room: &Arc<str>, user: &Arc<str>, now: Instant) -> bool {
        let Some(users) = self.rooms.get_mut(room) else {
            return false;
        };
        if !users.remove(user) {
            return false;
        }
        let last = users.is_empty();
        if last {
            self.rooms.remove(room);
        }
        self.mark(Entry::Member(room.clone(), user.clone()), false, now);
        last
    }

    /// Replaces the part of the mirror that one core owns (after a resync):
    /// `owns` tells whether a user or room id belongs to that core. Returns
    /// the rooms that appeared and disappeared (subscribe / unsubscribe).
    pub fn replace_core(
        &mut self,
        owns: impl Fn(&str) -> bool,
        online: Vec<Arc<str>>,
        rooms: Vec<(Arc<str>, Vec<Arc<str>>)>,
    ) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        self.online.retain(|u| !owns(u));
        self.online.extend(online);
        let before: HashSet<Arc<str>> = self.rooms.keys().filter(|r| owns(r)).cloned().collect();
        self.rooms.retain(|r, _| !owns(r));
        for (room, users) in rooms {
            if !users.is_empty() {
                self.rooms.insert(room, users.into_iter().collect());
            }
        }
        let after: HashSet<Arc<str>> = self.rooms.keys().filter(|r| owns(r)).cloned().collect();
        self.full_rewrite = true;
        self.dirty.clear();
        self.dirty_since = None;
        (
            after.difference(&before).cloned().collect(),
            before.difference(&after).cloned().collect(),
        )
    }

    /// Asks for a full rewrite at the next flush (after a reconnection, or
    /// when a heartbeat found a key missing).
    pub fn rewrite_all(&mut self) {
        self.full_rewrite = true;
        self.dirty.clear();
        self.dirty_since = None;
    }

    /// Whether a flush is due at `now`.
    pub fn flush_due(&self, now: Instant) -> bool {
        self.full_rewrite
            || self.dirty.len() >= FLUSH_SIZE
            || self
                .dirty_since
                .is_some_and(|t| now.saturating_duration_since(t) >= FLUSH_INTERVAL)
    }

    /// When the pending changes must be flushed at the latest.
    pub fn flush_deadline(&self) -> Option<Instant> {
        self.dirty_since.map(|t| t + FLUSH_INTERVAL)
    }

    /// Whether anything waits to be written.
    pub fn pending(&self) -> bool {
        self.full_rewrite || !self.dirty.is_empty()
    }

    /// Entries waiting to be written (the `chat_redis_buffered` gauge).
    pub fn buffered(&self) -> usize {
        self.dirty.len()
    }

    /// Times the dirty map overflowed.
    pub fn overflows(&self) -> u64 {
        self.overflows
    }

    /// Rooms with members here (subscribed channels, refreshed keys).
    pub fn rooms(&self) -> impl Iterator<Item = &Arc<str>> {
        self.rooms.keys()
    }

    /// Users online here, and per room (for snapshots in tests).
    pub fn is_online(&self, user: &str) -> bool {
        self.online.contains(user)
    }

    /// Takes what the next flush writes, leaving nothing pending. If the
    /// flush fails, call [`Mirror::rewrite_all`].
    pub fn take_plan(&mut self) -> Plan {
        let me = self.keys.instance().to_string();
        let mut plan = Plan {
            keys: self.keys.clone(),
            ..Plan::default()
        };
        if std::mem::take(&mut self.full_rewrite) {
            self.dirty.clear();
            self.dirty_since = None;
            let mut online: Vec<Arc<str>> = self.online.iter().cloned().collect();
            online.sort();
            plan.entries += online.len();
            plan.replace.push((self.keys.online(&me), online));
            let mut rooms: Vec<_> = self.rooms.iter().collect();
            rooms.sort_by(|a, b| a.0.cmp(b.0));
            for (room, users) in rooms {
                let mut users: Vec<Arc<str>> = users.iter().cloned().collect();
                users.sort();
                plan.entries += users.len();
                plan.replace
                    .push((self.keys.members(room, &me), users.clone()));
                plan.room_add.push((room.clone(), users));
            }
            return plan;
        }
        self.dirty_since = None;
        // Sorted so plans are deterministic (and tests can compare them).
        let mut entries: Vec<(Entry, bool)> = self.dirty.drain().collect();
        entries.sort();
        plan.entries = entries.len();
        let mut add: Vec<(String, Vec<Arc<str>>)> = Vec::new();
        let mut remove: Vec<(String, Vec<Arc<str>>)> = Vec::new();
        let mut room_add: Vec<(Arc<str>, Vec<Arc<str>>)> = Vec::new();
        let mut room_remove: Vec<(Arc<str>, Vec<Arc<str>>)> = Vec::new();
        for (entry, present) in entries {
            let (key, user) = match entry {
                Entry::Online(user) => (self.keys.online(&me), user),
                Entry::Member(room, user) => {
                    let list = if present {
                        &mut room_add
                    } else {
                        &mut room_remove
                    };
                    match list.last_mut() {
                        Some((r, users)) if *r == room => users.push(user.clone()),
                        _ => list.push((room.clone(), vec![user.clone()])),
                    }
                    (self.keys.members(&room, &me), user)
                }
            };
            let list = if present { &mut add } else { &mut remove };
            match list.last_mut() {
                Some((k, users)) if *k == key => users.push(user),
                _ => list.push((key, vec![user])),
            }
        }
        plan.add = add;
        plan.remove = remove;
        plan.room_add = room_add;
        plan.room_remove = room_remove;
        plan
    }

    /// Every room with members here and its users (the heartbeat refreshes
    /// their scores in the rooms' cluster-wide sets).
    pub fn room_members(&self) -> Vec<(Arc<str>, Vec<Arc<str>>)> {
        self.rooms
            .iter()
            .map(|(room, users)| (room.clone(), users.iter().cloned().collect()))
            .collect()
    }

    /// Every key this instance keeps alive (the heartbeat refreshes them).
    pub fn live_keys(&self) -> Vec<String> {
        let me = self.keys.instance();
        let mut keys = Vec::with_capacity(1 + self.rooms.len());
        if !self.online.is_empty() {
            keys.push(self.keys.online(me));
        }
        for room in self.rooms.keys() {
            keys.push(self.keys.members(room, me));
        }
        keys
    }
}

/// Writes a plan in one pipeline; every written key gets the expiry.
pub async fn execute(
    con: &mut MultiplexedConnection,
    plan: &Plan,
    ttl: Duration,
) -> redis::RedisResult<()> {
    let ttl_ms = ttl.as_millis() as u64;
    let mut pipe = redis::pipe();
    for (key, users) in &plan.replace {
        // One transaction per key: readers see the old set or the new one.
        pipe.cmd("MULTI").ignore();
        pipe.del(key).ignore();
        if !users.is_empty() {
            pipe.sadd(key, users.iter().map(|u| &**u).collect::<Vec<_>>())
                .ignore();
            pipe.pexpire(key, ttl_ms as i64).ignore();
        }
        pipe.cmd("EXEC").ignore();
    }
    for (key, users) in &plan.add {
        pipe.sadd(key, users.iter().map(|u| &**u).collect::<Vec<_>>())
            .ignore();
        pipe.pexpire(key, ttl_ms as i64).ignore();
    }
    for (key, users) in &plan.remove {
        pipe.srem(key, users.iter().map(|u| &**u).collect::<Vec<_>>())
            .ignore();
    }
    let keys = &plan.keys;
    for (room, users) in &plan.room_add {
        add_room_users(&mut pipe, keys, room, users, ttl_ms);
    }
    if !plan.room_remove.is_empty() {
        // After this instance's own SREMs above, in the same pipeline.
        let live = live_instances(con, keys).await?;
        for (room, users) in &plan.room_remove {
            remove_room_users(&mut pipe, keys, &live, room, users);
        }
    }
    pipe.query_async::<()>(con).await
}

/// Queues [`ADD_SCRIPT`] for `users` of `room`.
fn add_room_users(
    pipe: &mut redis::Pipeline,
    keys: &Keys,
    room: &str,
    users: &[Arc<str>],
    ttl_ms: u64,
) {
    if users.is_empty() {
        return;
    }
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(ADD_SCRIPT)
        .arg(1)
        .arg(keys.room_users(room))
        .arg(ttl_ms);
    for user in users {
        cmd.arg(&**user);
    }
    pipe.add_command(cmd).ignore();
}

/// Queues [`REMOVE_SCRIPT`] for `users` that left `room` here; `live`: the
/// live instances (this one is skipped: its set no longer has them).
fn remove_room_users(
    pipe: &mut redis::Pipeline,
    keys: &Keys,
    live: &[String],
    room: &str,
    users: &[Arc<str>],
) {
    if users.is_empty() {
        return;
    }
    let others: Vec<String> = live
        .iter()
        .filter(|i| i.as_str() != keys.instance())
        .map(|i| keys.members(room, i))
        .collect();
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(REMOVE_SCRIPT)
        .arg(1 + others.len())
        .arg(keys.room_users(room));
    for key in &others {
        cmd.arg(key);
    }
    for user in users {
        cmd.arg(&**user);
    }
    pipe.add_command(cmd).ignore();
}

/// Refreshes the instance's entry and every key it keeps alive. Returns
/// false when a key that should exist was gone (Redis lost or expired it):
/// the caller then asks for a full rewrite.
pub async fn heartbeat(
    con: &mut MultiplexedConnection,
    keys: &Keys,
    live_keys: &[String],
    rooms: &[(Arc<str>, Vec<Arc<str>>)],
    ttl: Duration,
) -> redis::RedisResult<bool> {
    let ttl_ms = ttl.as_millis() as u64;
    redis::Script::new(HEARTBEAT_SCRIPT)
        .key(keys.instances())
        .arg(keys.instance())
        .arg(ttl_ms)
        .invoke_async::<i64>(con)
        .await?;
    let mut intact = true;
    for chunk in live_keys.chunks(HEARTBEAT_CHUNK) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.pexpire(key, ttl_ms as i64);
        }
        let refreshed: Vec<bool> = pipe.query_async(con).await?;
        intact &= refreshed.iter().all(|r| *r);
    }
    // This instance's users keep counting in their rooms' cluster-wide sets.
    for chunk in rooms.chunks(HEARTBEAT_CHUNK) {
        let mut pipe = redis::pipe();
        for (room, users) in chunk {
            add_room_users(&mut pipe, keys, room, users, ttl_ms);
        }
        pipe.query_async::<()>(con).await?;
    }
    Ok(intact)
}

/// Removes this instance from Redis (clean shutdown).
pub async fn goodbye(con: &mut MultiplexedConnection, mirror: &Mirror) -> redis::RedisResult<()> {
    let keys = mirror.keys();
    let me = keys.instance();
    let mut pipe = redis::pipe();
    pipe.zrem(keys.instances(), me).ignore();
    pipe.del(keys.online(me)).ignore();
    for room in mirror.rooms() {
        pipe.del(keys.members(room, me)).ignore();
    }
    let live = live_instances(con, keys).await?;
    for (room, users) in mirror.room_members() {
        remove_room_users(&mut pipe, keys, &live, &room, &users);
    }
    pipe.query_async::<()>(con).await
}

/// Instances whose presence has not expired.
pub async fn live_instances(
    con: &mut MultiplexedConnection,
    keys: &Keys,
) -> redis::RedisResult<Vec<String>> {
    redis::Script::new(LIVE_SCRIPT)
        .key(keys.instances())
        .invoke_async(con)
        .await
}

/// Users in `room` on any live instance, sorted.
pub async fn room_users(
    con: &mut MultiplexedConnection,
    keys: &Keys,
    room: &str,
) -> redis::RedisResult<Vec<String>> {
    let live = live_instances(con, keys).await?;
    if live.is_empty() {
        return Ok(Vec::new());
    }
    // The keys share the room's hash tag: one SUNION, also on Redis Cluster.
    let sets: Vec<String> = live.iter().map(|i| keys.members(room, i)).collect();
    let users: BTreeSet<String> = redis::cmd("SUNION")
        .arg(&sets)
        .query_async::<Vec<String>>(con)
        .await?
        .into_iter()
        .collect();
    Ok(users.into_iter().collect())
}

/// Distinct users of `room` cluster-wide, from its sorted set: O(log n)
/// plus the entries that expired, whatever the room's size.
pub async fn room_count(
    con: &mut MultiplexedConnection,
    keys: &Keys,
    room: &str,
) -> redis::RedisResult<usize> {
    redis::Script::new(COUNT_SCRIPT)
        .key(keys.room_users(room))
        .invoke_async::<usize>(con)
        .await
}

/// Whether `user` is online on any live instance other than `except`.
pub async fn user_online(
    con: &mut MultiplexedConnection,
    keys: &Keys,
    user: &str,
    except: Option<&str>,
) -> redis::RedisResult<bool> {
    let live = live_instances(con, keys).await?;
    let others: Vec<&String> = live.iter().filter(|i| Some(i.as_str()) != except).collect();
    if others.is_empty() {
        return Ok(false);
    }
    let mut pipe = redis::pipe();
    for instance in others {
        pipe.sismember(keys.online(instance), user);
    }
    let found: Vec<bool> = pipe.query_async(con).await?;
    Ok(found.into_iter().any(|f| f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(limit: usize) -> Mirror {
        let mut m = Mirror::new(Keys::new("p:", "i1"), limit);
        // Start from a clean state: the initial full rewrite is done.
        let _ = m.take_plan();
        m
    }

    fn a(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn starts_with_a_full_rewrite() {
        let mut m = Mirror::new(Keys::new("p:", "i1"), 10);
        assert!(m.flush_due(Instant::now()));
        let plan = m.take_plan();
        assert_eq!(plan.replace, vec![("p:online:i1".to_string(), vec![])]);
        assert!(!m.pending());
    }

    #[test]
    fn changes_coalesce_and_flush_on_interval_or_size() {
        let t0 = Instant::now();
        let mut m = mirror(10_000);
        m.online(a("ann"), t0);
        assert!(m.room_add(a("r1"), a("ann"), t0), "first member of r1");
        assert!(!m.room_add(a("r1"), a("bob"), t0));
        m.online(a("bob"), t0);
        m.offline(a("bob"), t0); // flap: coalesced into one removal
        assert!(!m.flush_due(t0 + FLUSH_INTERVAL / 2));
        assert!(m.flush_due(t0 + FLUSH_INTERVAL));
        assert_eq!(m.flush_deadline(), Some(t0 + FLUSH_INTERVAL));
        let plan = m.take_plan();
        assert_eq!(plan.entries, 4);
        assert_eq!(
            plan.add,
            vec![
                ("p:online:i1".to_string(), vec![a("ann")]),
                (
                    "p:room:{r1}:members:i1".to_string(),
                    vec![a("ann"), a("bob")]
                ),
            ]
        );
        assert_eq!(
            plan.remove,
            vec![("p:online:i1".to_string(), vec![a("bob")])]
        );
        assert!(plan.replace.is_empty());
        // The room's cluster-wide set gets the same members.
        assert_eq!(plan.room_add, vec![(a("r1"), vec![a("ann"), a("bob")])]);
        assert!(plan.room_remove.is_empty());
        assert!(!m.pending());
        // Size trigger, without waiting.
        for i in 0..FLUSH_SIZE {
            m.online(Arc::from(format!("u{i}")), t0);
        }
        assert!(m.flush_due(t0));
    }

    #[test]
    fn last_member_leaving_empties_the_room() {
        let t0 = Instant::now();
        let mut m = mirror(100);
        m.room_add(a("r"), a("ann"), t0);
        m.room_add(a("r"), a("bob"), t0);
        assert!(!m.room_remove(&a("r"), &a("ann"), t0));
        assert!(!m.room_remove(&a("r"), &a("ann"), t0), "already gone");
        assert!(m.room_remove(&a("r"), &a("bob"), t0));
        assert_eq!(m.rooms().count(), 0);
        // Added and removed again within one flush: removed, also from the
        // room's cluster-wide set.
        let plan = m.take_plan();
        assert!(plan.room_add.is_empty());
        assert_eq!(plan.room_remove, vec![(a("r"), vec![a("ann"), a("bob")])]);
        assert!(!m.room_remove(&a("r"), &a("bob"), t0));
    }

    #[test]
    fn overflow_turns_into_one_full_rewrite() {
        let t0 = Instant::now();
        let mut m = mirror(3);
        m.online(a("u1"), t0);
        m.online(a("u2"), t0);
        m.online(a("u3"), t0);
        assert_eq!(m.buffered(), 3);
        m.room_add(a("r"), a("u1"), t0); // a fourth entry does not fit
        assert_eq!(m.overflows(), 1);
        assert_eq!(m.buffered(), 0);
        m.offline(a("u3"), t0);
        let plan = m.take_plan();
        assert_eq!(
            plan.replace,
            vec![
                ("p:online:i1".to_string(), vec![a("u1"), a("u2")]),
                ("p:room:{r}:members:i1".to_string(), vec![a("u1")]),
            ]
        );
        assert_eq!(plan.entries, 3);
        assert!(plan.add.is_empty() && plan.remove.is_empty());
        // A full rewrite refreshes every room's members in the shared set.
        assert_eq!(plan.room_add, vec![(a("r"), vec![a("u1")])]);
    }

    #[test]
    fn replacing_a_cores_part_reports_room_changes() {
        let t0 = Instant::now();
        let mut m = mirror(100);
        m.online(a("c0-ann"), t0);
        m.online(a("c1-bob"), t0);
        m.room_add(a("c0-old"), a("c0-ann"), t0);
        m.room_add(a("c1-room"), a("c1-bob"), t0);
        let owns = |id: &str| id.starts_with("c0-");
        let (added, removed) = m.replace_core(
            owns,
            vec![a("c0-cat")],
            vec![(a("c0-new"), vec![a("c0-cat")]), (a("c0-empty"), vec![])],
        );
        assert_eq!(added, vec![a("c0-new")]);
        assert_eq!(removed, vec![a("c0-old")]);
        assert!(m.is_online("c0-cat") && m.is_online("c1-bob") && !m.is_online("c0-ann"));
        let mut keys = m.live_keys();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "p:online:i1".to_string(),
                "p:room:{c0-new}:members:i1".to_string(),
                "p:room:{c1-room}:members:i1".to_string(),
            ]
        );
        assert!(m.flush_due(t0), "a replaced part is rewritten");
    }
}
