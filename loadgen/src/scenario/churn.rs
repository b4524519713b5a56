//! `churn`: fanout traffic while short-lived connections come and go in other rooms.
//!
//! Connection setup and teardown (token check, presence updates, room bookkeeping) compete
//! with message delivery; this shows how much one disturbs the other. The short-lived
//! connections start at `--churn-rate` per second (all processes together) from the start
//! of traffic to the end of the measurement, each stays `--churn-hold` seconds after
//! `room_joined`, then closes. Reported: their handshake latency (those started in the
//! measured interval) and failures, beside the usual delivery statistics.

use anyhow::{ensure, Result};

use super::{fanout, ns, Plan};
use crate::cli::ChurnArgs;
use crate::job::ChurnPlan;

/// The plan of a `churn` run.
pub fn plan(a: &ChurnArgs) -> Result<Plan> {
    let mut plan = fanout::plan(&a.fanout)?;
    let t = &a.fanout.traffic;
    let total = a.churn_rate * (t.warmup + t.duration);
    ensure!(
        total <= 10_000_000.0,
        "{total:.0} churn connections in one run; the limit is 10,000,000"
    );
    plan.scenario = "churn";
    plan.churn = Some(ChurnPlan {
        rate: a.churn_rate,
        hold_ns: ns(a.churn_hold),
        rooms: a.churn_rooms,
        first_id: plan.layout.connections,
    });
    // Open at once: those in their hold time plus those still connecting.
    plan.extra_sockets = (a.churn_rate
        * (a.churn_hold + a.fanout.common.connect_timeout.min(5.0) + 1.0))
        .ceil() as u32;
    if let serde_json::Value::Object(m) = &mut plan.settings {
        m.insert("churn_rate".into(), a.churn_rate.into());
        m.insert("churn_hold_s".into(), a.churn_hold.into());
        m.insert("churn_rooms".into(), a.churn_rooms.into());
    }
    Ok(plan)
}
