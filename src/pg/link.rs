//! A core's link to the Postgres backend: the shared handle, as the hub
//! holds it.
//!
//! The hub never awaits. A read's reply receiver goes into the hub's
//! outbox (`Hub::outbox_mut`), and the runtime awaits it on the core and
//! hands the rows back with `Hub::on_pg_rows` under a borrow of its own. A
//! reply whose sender is dropped (side thread gone) is handed back as a
//! failure, so every read is answered.

use std::sync::Arc;

use super::{PgHandle, ReadReceiver, ReadSpec};

/// What a hub holds when DATABASE_URL is set.
pub struct Durable {
    /// The backend, shared by every core.
    pub handle: Arc<PgHandle>,
}

impl Durable {
    /// A link for `handle`.
    pub fn new(handle: Arc<PgHandle>) -> Durable {
        Durable { handle }
    }

    /// Sends a read; its reply is to be awaited by the runtime. None when it
    /// could not be sent (Postgres down, read queue full): the caller
    /// answers from memory now.
    pub fn read(&self, spec: ReadSpec) -> Option<ReadReceiver> {
        self.handle.read(spec)
    }
}
