//! `fanout`: K rooms of M members, S of which send at a fixed rate.
//!
//! Every message reaches the M members of its room (the sender too: its copy is its
//! acknowledgement), so the server delivers `K * S * rate * M` frames per second. Senders
//! are open-loop (see `SendMode::Rate`), so the latency includes any time the server made
//! them wait. Measured: deliveries per second, delivery latency, lost / reordered /
//! duplicate messages per (receiver, sender).

use anyhow::{ensure, Result};
use serde_json::json;

use super::{check_common, check_connections, traffic_timeline, Plan};
use crate::cli::{FanoutArgs, MAX_TOTAL_MSG_RATE};
use crate::job::{Layout, SendMode, TrafficPlan};

/// The plan of a `fanout` run.
pub fn plan(a: &FanoutArgs) -> Result<Plan> {
    let target = check_common(&a.common)?;
    ensure!(
        a.senders <= a.members,
        "--senders ({}) cannot exceed --members ({})",
        a.senders,
        a.members
    );
    let connections = check_connections(u64::from(a.rooms) * u64::from(a.members))?;
    let senders = f64::from(a.rooms) * f64::from(a.senders);
    let per_sender_hz = a.total_rate.map_or(a.msg_rate, |total| total / senders);
    let total = per_sender_hz * senders;
    ensure!(
        total <= MAX_TOTAL_MSG_RATE,
        "{total} messages/s in total; the limit is {MAX_TOTAL_MSG_RATE}"
    );
    Ok(Plan {
        scenario: "fanout",
        common: a.common.clone(),
        target,
        layout: Layout {
            connections,
            room_size: a.members,
            senders_per_room: a.senders,
            room_tag: "r".into(),
        },
        connect_rate: a.rate,
        traffic: Some(TrafficPlan {
            mode: SendMode::Rate { per_sender_hz },
            size: a.traffic.size as usize,
            words: a.traffic.text_padding,
        }),
        churn: None,
        timeline: traffic_timeline(&a.traffic),
        settings: json!({
            "rooms": a.rooms,
            "members": a.members,
            "senders": a.senders,
            "msg_rate_per_sender": per_sender_hz,
            "msg_rate_total": total,
            "expected_deliveries_per_s": total * f64::from(a.members),
            "size": a.traffic.size,
            "duration_s": a.traffic.duration,
            "warmup_s": a.traffic.warmup,
            "grace_s": a.traffic.grace,
            "connect_rate": a.rate,
        }),
        extra_sockets: 0,
    })
}
