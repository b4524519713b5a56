//! `baseline`: the plain tokio + tokio-tungstenite chat server that chatd is measured
//! against (`loadgen/versus.sh`).
//!
//! It is written the way most tokio chat servers are: a multi-thread runtime, one task per
//! connection, one `tokio::sync::broadcast` channel per room, and one WebSocket write per
//! delivered frame. It answers exactly the part of docs/PROTOCOL.md that the loadgen
//! scenarios (`fanout`, `burst`, `connect`) use:
//!
//! - `GET /ws?token=<jwt>&roomId=<room>`: an HS256 JWT signed with `JWT_SECRET` (`sub` or
//!   `userId`, `username`, `exp` checked when present), `401` with a JSON body otherwise;
//!   a bad room id gets `400`, any other path `404`;
//! - `room_joined` with `memberCount` as the first frame;
//! - client `message` frames fanned out to the room, the sender included, with `messageId`
//!   (sorting in room order), `timestamp`, `userId`, `username`, `roomId`, `content`, and an
//!   `ack` when the frame carries a `clientMsgId`;
//! - `{"type":"ping"}` answered with `pong`; WebSocket pings answered by tungstenite.
//!
//! Left out on purpose, since no scenario needs them: `join_room` / `leave_room` (one room
//! per connection), presence, typing, history and persistence, `clientMsgId`
//! de-duplication, rate limits, moderation and content limits, Redis and Postgres, the HTTP
//! API, `/metrics`, `/healthz` and graceful draining. `memberCount` counts connections, not
//! distinct users (loadgen gives every connection its own user).
//!
//! Environment: `JWT_SECRET` (required), `HOST` (default `0.0.0.0`), `PORT` (default
//! 8000; `0` picks a free port).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::{coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Frames a room's channel holds for its slowest member. The channel allocates all of them
/// when the room is created (about 64 KiB); a member that falls further behind has lost
/// frames (`RecvError::Lagged`) and is disconnected with close code 1008.
const ROOM_CAPACITY: usize = 1024;

/// Next message id; taken under the room's lock so a room's ids sort in delivery order.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What every connection task shares.
struct Server {
    /// The HS256 key from `JWT_SECRET`, checked at every upgrade.
    key: DecodingKey,
    /// HS256 only, `exp`/`nbf` checked when present with 5 s of leeway, as chatd does.
    validation: Validation,
    /// Rooms by id. Locked only when a connection joins or leaves, never per message: a
    /// connection keeps its room's `Arc` for the message path.
    rooms: Mutex<HashMap<String, Arc<Room>>>,
}

/// One room: its members are the receivers of `tx`.
struct Room {
    /// Fan-out channel of serialized `message` frames (bounded: see `ROOM_CAPACITY`).
    tx: broadcast::Sender<Utf8Bytes>,
    /// Held while a message gets its id and enters the channel, so two senders in one room
    /// cannot deliver ids out of order.
    order: Mutex<()>,
}

/// Who a connection belongs to and where it is.
struct Member {
    /// `sub` (or `userId`) of the token.
    user_id: String,
    /// `username` of the token, else the user id.
    username: String,
    /// The room of `roomId`.
    room_id: String,
}

/// The claims of src/auth.rs that this server reads.
#[derive(Deserialize)]
struct Claims {
    /// The user id.
    sub: Option<String>,
    /// The user id of issuers that do not set `sub`.
    #[serde(rename = "userId")]
    user_id: Option<String>,
    /// Display name.
    username: Option<String>,
}

/// The fields of a client frame this server looks at.
#[derive(Deserialize)]
struct ClientFrame<'a> {
    /// `message`, `ping`; anything else is refused with `invalid_message`.
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    /// Must be the connection's room when given.
    #[serde(rename = "roomId", borrow, default)]
    room_id: Option<Cow<'a, str>>,
    /// The chat text of a `message`.
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    /// Echoed back in an `ack`.
    #[serde(rename = "clientMsgId", borrow, default)]
    client_msg_id: Option<Cow<'a, str>>,
}

/// A `message` frame as delivered to the room.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Delivered<'a> {
    /// Always `message`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// Unique, sorts in the room's delivery order.
    message_id: &'a str,
    /// The sender.
    user_id: &'a str,
    /// The sender's display name.
    username: &'a str,
    /// The room.
    room_id: &'a str,
    /// The text, as sent.
    content: &'a str,
    /// Server time, ISO 8601 UTC with milliseconds.
    timestamp: &'a str,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some(secret) = std::env::var("JWT_SECRET").ok().filter(|s| !s.is_empty()) else {
        eprintln!("baseline: JWT_SECRET must be set");
        std::process::exit(2);
    };
    let host = std::env::var("HOST").unwrap_or_else(|_| "0.0.0.0".into());
    let port: u16 = match std::env::var("PORT").map(|p| p.parse()) {
        Err(_) => 8000,
        Ok(Ok(p)) => p,
        Ok(Err(_)) => {
            eprintln!("baseline: PORT must be a port number");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind((host.as_str(), port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("baseline: cannot listen on {host}:{port}: {e}");
            std::process::exit(1);
        }
    };
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 5;
    validation.required_spec_claims.clear();
    validation.validate_nbf = true;
    validation.validate_aud = false;
    let server = Arc::new(Server {
        key: DecodingKey::from_secret(secret.as_bytes()),
        validation,
        rooms: Mutex::new(HashMap::new()),
    });
    // The same line as chatd: the scripts (ab.sh, versus.sh, the tests) start servers with
    // PORT=0 and read the address they got from it, and wait for it before connecting.
    if let Ok(addr) = listener.local_addr() {
        println!("chatd listening on {addr}");
    }
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, server.clone()));
            }
            // Out of descriptors, most likely: let some connections close before retrying.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Checks the upgrade request: the member it admits, or the status and reason to refuse.
fn admit(server: &Server, req: &Request) -> Result<Member, (StatusCode, &'static str)> {
    if req.uri().path() != "/ws" {
        return Err((StatusCode::NOT_FOUND, "not found"));
    }
    let (mut token, mut room_id) = (None, "lobby".to_string());
    for pair in req.uri().query().unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("token", v)) => token = Some(v),
            Some(("roomId", v)) => room_id = v.to_string(),
            _ => {}
        }
    }
    let token = token.ok_or((StatusCode::UNAUTHORIZED, "missing token"))?;
    let claims = jsonwebtoken::decode::<Claims>(token, &server.key, &server.validation)
        .map_err(|_| (StatusCode::UNAUTHORIZED, "invalid token"))?
        .claims;
    let user_id = claims
        .sub
        .or(claims.user_id)
        .filter(|u| !u.is_empty())
        .ok_or((StatusCode::UNAUTHORIZED, "token has no subject"))?;
    let valid_room = (1..=128).contains(&room_id.len())
        && room_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if !valid_room {
        return Err((StatusCode::BAD_REQUEST, "invalid roomId"));
    }
    let username = claims
        .username
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| user_id.clone());
    Ok(Member {
        user_id,
        username,
        room_id,
    })
}

/// Serves one connection from the upgrade to the close.
// The handshake callback's `Result<Response, ErrorResponse>` is tungstenite's signature.
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, server: Arc<Server>) {
    // Chat frames are small and latency matters: no Nagle delay.
    let _ = stream.set_nodelay(true);
    let mut admitted = None;
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        match admit(&server, req) {
            Ok(member) => {
                admitted = Some(member);
                Ok(resp)
            }
            Err((status, why)) => {
                let mut refusal = ErrorResponse::new(Some(format!(r#"{{"error":"{why}"}}"#)));
                *refusal.status_mut() = status;
                Err(refusal)
            }
        }
    };
    // A 4 KiB read buffer instead of tungstenite's 128 KiB: client frames are small, and
    // idle connections should not each hold a large buffer. Frames over 64 KiB are refused.
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024));
    let accepted =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config)).await;
    let (Ok(mut ws), Some(member)) = (accepted, admitted) else {
        return;
    };
    let (room, mut rx) = join(&server, &member.room_id);
    let joined = serde_json::json!({
        "type": "room_joined",
        "roomId": member.room_id,
        "memberCount": room.tx.receiver_count(),
    });
    if ws.send(Message::text(joined.to_string())).await.is_ok() {
        loop {
            tokio::select! {
                incoming = ws.next() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        let reply = on_frame(&member, &room, &text, now_ms());
                        if let Some(reply) = reply {
                            if ws.send(Message::text(reply)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let reply = error_frame("invalid_message", "binary frames are not accepted");
                        if ws.send(Message::text(reply)).await.is_err() {
                            break;
                        }
                    }
                    // Pings are answered by tungstenite itself; pongs need nothing.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                },
                frame = rx.recv() => match frame {
                    Ok(frame) => {
                        if ws.send(Message::Text(frame)).await.is_err() {
                            break;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let close = CloseFrame {
                            code: CloseCode::Policy,
                            reason: "too far behind the room".into(),
                        };
                        let _ = ws.send(Message::Close(Some(close))).await;
                        break;
                    }
                    // The room outlives its members' receivers: not reached.
                    Err(RecvError::Closed) => break,
                },
            }
        }
    }
    drop(rx);
    leave(&server, &member.room_id);
}

/// Joins `room_id`, creating the room if it has no members yet.
fn join(server: &Server, room_id: &str) -> (Arc<Room>, broadcast::Receiver<Utf8Bytes>) {
    let mut rooms = server.rooms.lock().unwrap_or_else(|e| e.into_inner());
    let room = rooms
        .entry(room_id.to_string())
        .or_insert_with(|| {
            Arc::new(Room {
                tx: broadcast::channel(ROOM_CAPACITY).0,
                order: Mutex::new(()),
            })
        })
        .clone();
    // Subscribing under the registry lock: `leave` never removes a room someone just joined.
    let rx = room.tx.subscribe();
    (room, rx)
}

/// Forgets `room_id` once its last member (whose receiver is already dropped) has left.
fn leave(server: &Server, room_id: &str) {
    let mut rooms = server.rooms.lock().unwrap_or_else(|e| e.into_inner());
    if rooms
        .get(room_id)
        .is_some_and(|r| r.tx.receiver_count() == 0)
    {
        rooms.remove(room_id);
    }
}

/// Handles one client text frame received at `now_ms` (Unix milliseconds): fans a message
/// out to the room; returns the frame to send back to this connection, if any.
fn on_frame(member: &Member, room: &Room, text: &str, now_ms: u64) -> Option<String> {
    let Ok(frame) = serde_json::from_str::<ClientFrame>(text) else {
        return Some(error_frame(
            "invalid_message",
            "not a JSON frame with a type",
        ));
    };
    match frame.kind.as_ref() {
        "ping" => Some(r#"{"type":"pong"}"#.to_string()),
        "message" => {
            let Some(content) = frame.content else {
                return Some(error_frame("invalid_message", "message without content"));
            };
            if frame.room_id.is_some_and(|r| r != member.room_id) {
                return Some(error_frame("not_in_room", "not a member of that room"));
            }
            let timestamp = iso8601(now_ms);
            let message_id = {
                let _order = room.order.lock().unwrap_or_else(|e| e.into_inner());
                let message_id = format!("{:020}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
                let delivered = Delivered {
                    kind: "message",
                    message_id: &message_id,
                    user_id: &member.user_id,
                    username: &member.username,
                    room_id: &member.room_id,
                    content: &content,
                    timestamp: &timestamp,
                };
                let json = serde_json::to_string(&delivered).expect("strings serialize");
                // Fails only with no receivers; the sender itself is one.
                let _ = room.tx.send(Utf8Bytes::from(json));
                message_id
            };
            frame.client_msg_id.map(|id| {
                serde_json::json!({
                    "type": "ack",
                    "clientMsgId": id,
                    "messageId": message_id,
                    "roomId": member.room_id,
                })
                .to_string()
            })
        }
        _ => Some(error_frame("invalid_message", "unknown frame type")),
    }
}

/// An `error` frame.
fn error_frame(code: &str, message: &str) -> String {
    serde_json::json!({ "type": "error", "code": code, "message": message }).to_string()
}

/// The wall clock in Unix milliseconds.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `ms` (Unix milliseconds) as ISO 8601 UTC, e.g. `2024-01-01T12:00:00.123Z`; the date
/// is Howard Hinnant's `civil_from_days`.
fn iso8601(ms: u64) -> String {
    let (days, ms_of_day) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1_000 % 60,
        ms_of_day % 1_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_iso8601_utc_with_milliseconds() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_704_110_400_123), "2024-01-01T12:00:00.123Z");
        assert_eq!(iso8601(951_825_599_999), "2000-02-29T11:59:59.999Z");
    }

    #[test]
    fn messages_fan_out_in_id_order_and_are_acked() {
        let room = Room {
            tx: broadcast::channel(ROOM_CAPACITY).0,
            order: Mutex::new(()),
        };
        let mut rx = room.tx.subscribe();
        let member = Member {
            user_id: "u-1".into(),
            username: "ann".into(),
            room_id: "r".into(),
        };
        let text = r#"{"type":"message","roomId":"r","content":"hi","clientMsgId":"c-1"}"#;
        let ack: serde_json::Value =
            serde_json::from_str(&on_frame(&member, &room, text, 0).unwrap()).unwrap();
        let msg = r#"{"type":"message","content":"again"}"#;
        assert_eq!(on_frame(&member, &room, msg, 1), None);
        let first: serde_json::Value = serde_json::from_str(&rx.try_recv().unwrap()).unwrap();
        let second: serde_json::Value = serde_json::from_str(&rx.try_recv().unwrap()).unwrap();
        assert_eq!(first["type"], "message");
        assert_eq!(first["userId"], "u-1");
        assert_eq!(first["username"], "ann");
        assert_eq!(first["roomId"], "r");
        assert_eq!(first["content"], "hi");
        assert_eq!(first["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(ack["type"], "ack");
        assert_eq!(ack["clientMsgId"], "c-1");
        assert_eq!(ack["messageId"], first["messageId"]);
        assert!(first["messageId"].as_str() < second["messageId"].as_str());
        let other = r#"{"type":"message","roomId":"other","content":"x"}"#;
        let refused: serde_json::Value =
            serde_json::from_str(&on_frame(&member, &room, other, 2).unwrap()).unwrap();
        assert_eq!(refused["code"], "not_in_room");
        assert!(rx.try_recv().is_err());
    }
}
