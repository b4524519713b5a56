//! # chatd
//!
//! A thread-per-core WebSocket chat server: one glommio executor per core,
//! every piece of state owned by exactly one core, cross-core work as
//! messages on bounded queues. The per-core state machine (`hub/`) is plain
//! code: it reads no clock and knows no executor; `runtime/` is the only
//! place glommio appears, and the backends sit behind small traits.
//!
//! # Layout
//!
//! ```text
//!  runtime/ (the only glommio code)
//!    accept (SO_REUSEPORT, every core), HTTP head (http.rs)   runtime/server.rs
//!    plain routes answered on the accepting core             runtime/routes.rs
//!    /ws: verify JWT (auth.rs), roomId; 401/400 first
//!    home core = shard_for(initial roomId)                    shard.rs
//!      `-- not local: dup the socket, ShardMsg::Adopt --> home core
//!    connection driver: handshake, bytes <-> frames            runtime/connection.rs, ws.rs
//!      permessage-deflate: offer negotiation, inflate in,       deflate.rs
//!        one compressed copy per broadcast (at the room owner)
//!    every hub call through CoreCtx::with_hub, clocks read here,
//!      then the hub's outbox -> the mesh, in order             runtime/server.rs
//!    cross-core mesh, bounded staging behind a full channel    runtime/mesh.rs
//!    per-core batched io_uring sender                          runtime/sender.rs
//!    SIGTERM -> core 0 -> every core drains                    runtime/shutdown.rs
//!  hub/ (one core's state machine, time passed in)            hub/mod.rs
//!    a connection's frames: parse (protocol.rs), budgets
//!      (ratelimit.rs), length and room checks                  hub/session.rs
//!    message -> rate limit (ratelimit.rs) on the core holding
//!      the user's log: its owner, or the one core with all of
//!      the user's connections under a lease (lease.rs);
//!      presence counts at the user's owner                     hub/user_owner.rs
//!    -> room's owner core: dedupe (dedupe.rs),
//!      moderation on folded text                               hub/room_owner.rs,
//!      (moderation.rs, moderation/normalize.rs), id from the     moderation.rs
//!      broker, history, encode once, fan-out:
//!        local members + one copy per other core with members
//!    member core: local member lists, joins answered,
//!      frames into each connection's outbound queue            hub/member.rs
//!      (bounded; slow consumer: typing dropped, then 1013)      outbound.rs
//!      replay of a join with `since`, framed as the client reads  outbound.rs
//!    reads answered later (Postgres rows)                     hub/reads.rs
//!    operator API: publish, delete, bans (owner core + a copy  hub/operator.rs
//!      per core), disconnects; admin routes in runtime/routes.rs
//!    token expiry: deadlines per connection in 1 s buckets,
//!      due ones closed with 4001 by the sweep, `refresh` moves  expiry.rs
//!    tests: rules per topic, seeded simulation of N hubs       hub/tests.rs,
//!      over a test mesh (testkit.rs)                             hub/simulation.rs,
//!                                                                hub/operator_tests.rs,
//!                                                                hub/expiry_tests.rs
//!  connection state (rooms, queue, budgets)                   client.rs
//!  backends, each a trait with a memory implementation:
//!    Broker: ids, cluster counts, relays, presence mirror     broker.rs
//!      Redis (REDIS_URL): one core's side                     redis/link.rs
//!        the Redis thread, sequence.lua, subscriptions        redis/worker.rs
//!        envelopes, presence sets, key names, counters        redis/envelope.rs,
//!                                                             presence.rs, keys.rs, stats.rs
//!    History: owned rooms' messages                           history.rs
//!      Postgres (DATABASE_URL): memory cache + rows           pg/history.rs
//!    AuditSink: moderation and operator audit trail (a ban's   moderation.rs, pg/audit.rs
//!      record also writes chat_bans)
//!    PresenceStore: connection counts per user                presence.rs
//!    Postgres thread: batches (size or interval), UNNEST      pg/mod.rs, pg/worker.rs,
//!      insert with backoff, schema, merge with memory           pg/batch.rs, pg/migrate.rs,
//!                                                               pg/merge.rs, pg/stats.rs
//!  queues between the cores and the side threads:
//!    cores -> side thread: one bounded lock-free lane per core lanes.rs
//!    side thread -> core: one bounded backend event queue     events.rs
//!    retry timing (both backends), backend health             backoff.rs, health.rs
//!    TLS to both backends: sslmode, rediss://, BACKEND_CA_FILE  tls.rs
//!  metrics: per-core counters, merged on scrape, 1 s cache    metrics.rs
//!  API docs (OpenAPI + embedded Swagger UI), demo page + JS   openapi.rs, web.rs
//!  settings: environment variables and flags                  config.rs
//! ```
//!
//! Every queue is bounded; what happens when it is full is written next to
//! it: the outbound queue (`outbound.rs`), the mesh channel and its staging
//! (`runtime/mesh.rs`), the lanes to the side threads (`lanes.rs`, and the
//! callers in `redis/worker.rs`, `pg/mod.rs`), the backend event queue
//! (`events.rs`).

pub mod auth;
pub mod backoff;
pub mod broker;
pub mod client;
pub mod config;
pub mod dedupe;
pub mod deflate;
pub mod events;
pub mod expiry;
pub mod health;
pub mod history;
pub mod http;
pub mod hub;
pub mod lanes;
pub mod lease;
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
pub mod tls;
pub mod web;
pub mod ws;
