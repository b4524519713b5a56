//! A core's link to the Postgres backend: the shared handle plus a way to
//! wait for a read's rows on this core without blocking it.
//!
//! The hub never awaits (it lives in a `RefCell` and is never borrowed
//! across an await). A read's oneshot receiver is therefore handed to a
//! small task on the core, which wakes when the side thread answers (glommio
//! tasks can be woken from a foreign thread) and gives the rows back to the
//! hub under a fresh borrow. This file is one of the few that spawn glommio
//! tasks, next to `server.rs` and `connection.rs`.

use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Instant;

use super::{PgHandle, ReadFailed, ReadReceiver, ReadSpec};
use crate::runtime::server::CoreCtx;

/// Starts a task that awaits request `req`'s rows.
type Spawner = Box<dyn Fn(u64, ReadReceiver)>;

/// What a hub holds when DATABASE_URL is set.
pub struct Durable {
    /// The backend, shared by every core.
    pub handle: Arc<PgHandle>,
    /// Waits for a read's answer on this core (see the module doc).
    spawn: Spawner,
}

impl Durable {
    /// A link for `handle` whose reads are awaited by `spawn`.
    pub fn new(handle: Arc<PgHandle>, spawn: Spawner) -> Durable {
        Durable { handle, spawn }
    }

    /// Sends a read for the hub's request `req`; its rows come back through
    /// `Hub::on_pg_rows`. False when it could not be sent (Postgres down,
    /// read queue full): the caller answers from memory now.
    pub fn read(&self, req: u64, spec: ReadSpec) -> bool {
        match self.handle.read(spec) {
            Some(rx) => {
                (self.spawn)(req, rx);
                true
            }
            None => false,
        }
    }
}

/// Gives this core's hub its link, when the backend is configured.
pub fn attach(ctx: &Rc<CoreCtx>) {
    let Some(handle) = ctx.shared.pg.clone() else {
        return;
    };
    // Weak: the hub (inside the context) holds this closure.
    let weak: Weak<CoreCtx> = Rc::downgrade(ctx);
    let spawn: Spawner = Box::new(move |req, rx| {
        let weak = weak.clone();
        glommio::spawn_local(async move {
            // glommio runs a new task's first poll inside spawn_local, that
            // is, inside the hub borrow that sent the read: yield first, so
            // even an instant answer is taken under a borrow of its own.
            futures_lite::future::yield_now().await;
            // A dropped sender (side thread gone) reads as a failure.
            let rows = rx.await.unwrap_or(Err(ReadFailed));
            if let Some(ctx) = weak.upgrade() {
                ctx.hub.borrow_mut().on_pg_rows(req, rows, Instant::now());
            }
        })
        .detach();
    });
    ctx.hub
        .borrow_mut()
        .attach_durable(Durable::new(handle, spawn));
}
