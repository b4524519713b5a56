//! `connect`: open N connections at a fixed rate and hold them.
//!
//! Measures what it costs a server to accept connections: handshake latency (TCP connect
//! to `room_joined`), failures by kind, the connection rate achieved, and with
//! `--server-pid` the server's CPU per connection and RSS per held connection.

use anyhow::Result;
use serde_json::json;

use super::{check_common, ns, Plan};
use crate::cli::ConnectArgs;
use crate::job::{Layout, Timeline};

/// The plan of a `connect` run.
pub fn plan(a: &ConnectArgs) -> Result<Plan> {
    let target = check_common(&a.common)?;
    Ok(Plan {
        scenario: "connect",
        common: a.common.clone(),
        target,
        layout: Layout {
            connections: a.connections,
            room_size: a.room_size,
            senders_per_room: 0,
            room_tag: "c".into(),
        },
        connect_rate: a.rate,
        traffic: None,
        churn: None,
        // Holding is the "measured interval": no warm-up, nothing in flight at the end.
        timeline: Timeline {
            warmup_ns: 0,
            duration_ns: ns(a.hold),
            grace_ns: 0,
        },
        settings: json!({
            "connections": a.connections,
            "rate": a.rate,
            "hold_s": a.hold,
            "room_size": a.room_size,
        }),
        extra_sockets: 0,
    })
}
