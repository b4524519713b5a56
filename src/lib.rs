//! # chatd
//!
//! A thread-per-core WebSocket chat server: one glommio executor per core,
//! every piece of state owned by exactly one core, cross-core work as
//! messages on bounded lock-free channels.
//!
//! # Layout
//!
//! ```text
//!  accept (SO_REUSEPORT, every core)                      server.rs
//!    read HTTP head (http.rs), plain routes answered here routes.rs
//!    /ws: verify JWT (auth.rs), roomId, 401/400 first
//!    home core = shard_for(initial roomId)                shard.rs
//!      `-- not local: dup the socket, ShardMsg::Adopt --> home core
//!  home core: handshake + connection driver               connection.rs, ws.rs
//!    bytes -> frames -> session (hub/session.rs) -> protocol.rs (JSON parse)
//!    hub calls through CoreCtx::with_hub: outbox -> mesh, in order   server.rs
//!    frame budgets per connection: join/leave, history, typing  ratelimit.rs
//!    message: length/room checks on the connection's core
//!      -> user's owner core: dedupe (dedupe.rs), rate limit (ratelimit.rs)
//!      -> room's owner core: moderation on folded text    moderation.rs,
//!         (NFKC, invisibles, marks, confusables)         moderation/normalize.rs
//!         id + timestamp,
//!         encode once, history (history.rs), fan-out (hub.rs):
//!           local members' outbound queues (outbound.rs)
//!         join with `since`: replay kept per connection, framed into
//!           the queue as the client reads it                  outbound.rs
//!           + one copy per other core with members (ShardMsg::Deliver)
//!         + with DATABASE_URL: row to the Postgres writer  hub/durable.rs
//!  delivering core: a queue that became non-empty -> the core's writer:
//!    one io_uring submission sends a pass's whole fan-out    writer.rs
//!    what it cannot finish -> driver: gathered sendmsg       connection.rs
//!  Postgres (pg/): side thread, tokio current-thread runtime  pg/worker.rs
//!    cores -> bounded channel -> batches (size or interval)   pg/batch.rs
//!    -> UNNEST insert, retried with backoff; schema      pg/migrate.rs
//!    reads: oneshot reply in the hub's outbox -> awaited  pg/link.rs,
//!      by the runtime, rows back to the hub             server.rs
//!      -> merged with the owner's memory cache          pg/merge.rs
//!    counters rendered into /metrics                    pg/stats.rs
//!  presence: user's owner core counts connections (presence.rs);
//!    first/last one -> presence frame via each room's owner  hub.rs
//!  REDIS_URL set (scale-out; without it none of this runs):
//!    per-core side: in-flight messages, pending joins     scaleout.rs
//!    Redis thread (tokio, bounded queues both ways)       broker.rs
//!      room owner -> sequence.lua: next id + PUBLISH, atomically
//!      subscription -> room owner core -> accept_sequenced (hub.rs)
//!      payloads between instances                         envelope.rs
//!      this instance's presence sets, heartbeat, reads    presence_redis.rs
//!      key and channel names                              redis_keys.rs
//!      reconnection timing                                backoff.rs
//!      counters for /metrics                              redis_metrics.rs
//!  metrics: per-core counters, merged on scrape, 1 s cache metrics.rs
//!  API docs: OpenAPI document + embedded Swagger UI      openapi.rs
//!  demo page + JS client modules (clients/js/src)        web.rs
//!  settings: environment variables and flags             config.rs
//!  shutdown: SIGTERM -> core 0 -> every core drains       shutdown.rs
//!    then the Postgres writer's final flush             pg/mod.rs
//! ```

pub mod auth;
pub mod backoff;
pub mod broker;
pub mod client;
pub mod config;
pub mod dedupe;
pub mod events;
pub mod health;
pub mod history;
pub mod http;
pub mod hub;
pub mod lanes;
pub mod metrics;
pub mod moderation;
pub mod openapi;
pub mod outbound;
pub mod pg;
pub mod presence;
pub mod protocol;
pub mod ratelimit;
pub mod redis;
pub mod runtime;
pub mod shard;
pub mod web;
pub mod ws;
