//! # chatd
//!
//! A thread-per-core WebSocket chat server. (Layout map is filled in as modules land.)

pub mod auth;
pub mod dedupe;
pub mod history;
pub mod http;
pub mod moderation;
pub mod protocol;
pub mod ratelimit;
pub mod ws;
