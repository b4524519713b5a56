//! Redis: cross-instance fan-out, sequencing and presence (REDIS_URL).
//!
//! - `worker.rs`: the Redis side thread (tokio): a bounded lane per core in
//!   (`crate::lanes`), a bounded event queue per core out.
//! - `link.rs`: each core's side of it: messages in flight, pending joins.
//! - `envelope.rs`: payloads between instances.
//! - `presence.rs`: this instance's presence sets, heartbeat and reads.
//! - `keys.rs`: key and channel names.
//! - `stats.rs`: counters rendered into `/metrics`.

pub mod envelope;
pub mod keys;
pub mod link;
pub mod presence;
pub mod stats;
pub mod worker;
