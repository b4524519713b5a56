//! The runtime seam: everything that knows about glommio.
//!
//! Executors (one per core), accept and fd adoption, the connection driver,
//! the batched io_uring sender, the cross-core mesh and shutdown live here.
//! Rooms, protocol, policy and backends are plain code the runtime drives.

pub mod connection;
pub mod mesh;
pub mod routes;
pub mod sender;
pub mod server;
pub mod shutdown;
