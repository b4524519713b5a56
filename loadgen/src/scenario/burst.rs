//! `burst`: one room, one sender writing as fast as the server takes it.
//!
//! The sender keeps at most `--window` messages in flight (written but not yet echoed
//! back to it, or refused with an `error` frame), so the rate adapts to the server: this
//! finds the throughput of one room's fan-out path and its latency at that throughput.
//! Each message carries its actual send time.

use anyhow::Result;
use serde_json::json;

use super::{check_common, traffic_timeline, Plan};
use crate::cli::BurstArgs;
use crate::job::{Layout, SendMode, TrafficPlan};

/// The plan of a `burst` run.
pub fn plan(a: &BurstArgs) -> Result<Plan> {
    let target = check_common(&a.common)?;
    Ok(Plan {
        scenario: "burst",
        common: a.common.clone(),
        target,
        layout: Layout {
            connections: a.members,
            room_size: a.members,
            senders_per_room: 1,
            room_tag: "b".into(),
        },
        connect_rate: a.rate,
        traffic: Some(TrafficPlan {
            mode: SendMode::Window { window: a.window },
            size: a.traffic.size as usize,
            words: a.traffic.text_padding,
        }),
        churn: None,
        timeline: traffic_timeline(&a.traffic),
        settings: json!({
            "members": a.members,
            "window": a.window,
            "size": a.traffic.size,
            "duration_s": a.traffic.duration,
            "warmup_s": a.traffic.warmup,
            "grace_s": a.traffic.grace,
            "connect_rate": a.rate,
        }),
        extra_sockets: 0,
    })
}
