//! A connection's frames, as the hub handles them: each text frame is
//! parsed, checked against the connection's budgets, rooms and limits, and
//! turned into hub work (local, or a message to the owner core) within one
//! call. The connection driver (`runtime/connection.rs`) only decodes
//! WebSocket frames and hands them here.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::Hub;
use crate::auth::AuthError;
use crate::client::Client;
use crate::metrics::Outcome;
use crate::protocol::{self, ClientFrame, ErrorCode};
use crate::ratelimit::FrameClass;
use crate::shard::Publish;
use crate::ws;

impl Hub {
    /// Handles one complete text frame from `client`, received at `now`
    /// (`wall`: the same moment on the wall clock, for a message's stamp).
    pub fn on_text(
        &mut self,
        client: &Rc<Client>,
        payload: &mut [u8],
        now: Instant,
        wall: SystemTime,
    ) {
        client.touch(now);
        let frame = match protocol::parse_client_frame(payload) {
            Ok(frame) => frame,
            Err(e) => return self.send_error(client, ErrorCode::InvalidMessage, &e.0, None, now),
        };
        match frame {
            ClientFrame::Message {
                room_id,
                content,
                client_msg_id,
            } => {
                let Some(room) = client.joined_room(room_id.as_deref()) else {
                    self.metrics.message(Outcome::Invalid);
                    let text = format!(
                        "not in room {}",
                        room_id.as_deref().unwrap_or(&client.home_room)
                    );
                    return self.send_error(client, ErrorCode::NotInRoom, &text, None, now);
                };
                if let Some(until) = self.banned_until(&client.identity.user_id, wall) {
                    // Its connections are being closed with 4003; a frame
                    // already on its way is refused.
                    self.metrics.message(Outcome::Invalid);
                    let text =
                        format!("you are banned until {}", protocol::format_timestamp(until));
                    return self.send_error(client, ErrorCode::Forbidden, &text, None, now);
                }
                let max = self.max_message_chars();
                if content.chars().count() > max {
                    self.metrics.message(Outcome::Invalid);
                    let text = format!("message longer than {max} characters");
                    return self.send_error(client, ErrorCode::MessageTooLong, &text, None, now);
                }
                if self.durable_full() {
                    // Postgres is down and its buffer full: refuse before the
                    // message is counted, stamped or broadcast.
                    self.metrics.message(Outcome::Unavailable);
                    let text = super::UNAVAILABLE_TEXT;
                    return self.send_error(client, ErrorCode::Unavailable, text, None, now);
                }
                self.publish(
                    Box::new(Publish {
                        room,
                        user: client.identity.clone(),
                        content: content.into_owned(),
                        client_msg_id: client_msg_id.map(|c| c.into()),
                        conn: client.id,
                        received_at: now,
                    }),
                    now,
                    wall,
                );
            }
            ClientFrame::JoinRoom { room_id, since } => {
                if let Err(wait) = client.charge(FrameClass::Rooms, now) {
                    return self.rate_limited(client, "join_room and leave_room", wait, now);
                }
                let room: Arc<str> = Arc::from(&*room_id);
                if client.membership(&room).is_none() && client.room_count() >= self.max_rooms() {
                    let text = format!("a connection may be in at most {} rooms", self.max_rooms());
                    return self.send_error(client, ErrorCode::RoomLimit, &text, None, now);
                }
                self.join(client, room, since, now);
            }
            ClientFrame::LeaveRoom { room_id } => {
                if let Err(wait) = client.charge(FrameClass::Rooms, now) {
                    return self.rate_limited(client, "join_room and leave_room", wait, now);
                }
                if client.membership(&room_id).is_none() {
                    let text = format!("not in room {room_id}");
                    return self.send_error(client, ErrorCode::NotInRoom, &text, None, now);
                }
                let room: Arc<str> = Arc::from(&*room_id);
                self.leave(client, &room);
                client.push_own(&protocol::encode_room_left(&room), now);
            }
            ClientFrame::Typing { room_id, is_typing } => {
                let Some(room) = client.joined_room(room_id.as_deref()) else {
                    let text = format!(
                        "not in room {}",
                        room_id.as_deref().unwrap_or(&client.home_room)
                    );
                    return self.send_error(client, ErrorCode::NotInRoom, &text, None, now);
                };
                // Over the budget the indicator is dropped silently: it is
                // advisory and the next one carries the same state.
                if client.charge(FrameClass::Typing, now).is_err() {
                    self.metrics.typing_throttled += 1;
                    return;
                }
                let id = &client.identity;
                let json = protocol::encode_typing(&id.user_id, &id.username, &room, is_typing);
                let frame = Bytes::from(ws::encode_text(&json));
                self.typing(room, id.user_id.clone(), frame, client.id, now);
            }
            ClientFrame::History {
                room_id,
                before,
                after,
                limit,
            } => {
                if let Err(wait) = client.charge(FrameClass::History, now) {
                    return self.rate_limited(client, "history", wait, now);
                }
                self.history_for_client(client, Arc::from(&*room_id), before, after, limit, now);
            }
            ClientFrame::Ping => client.push_own(&protocol::encode_pong(), now),
            ClientFrame::Refresh { token } => {
                if let Err(wait) = client.charge(FrameClass::Refresh, now) {
                    return self.rate_limited(client, "refresh", wait, now);
                }
                self.refresh(client, &token, now, wall);
            }
        }
    }

    /// A `refresh` frame (contract section 8): a valid token of the same
    /// user moves the connection's expiry to the new `exp` (none without
    /// one) and is answered `refreshed`; any other gets `invalid_token` and
    /// the connection keeps its current expiry. Only the expiry changes:
    /// the connection keeps the display name it opened with.
    fn refresh(&mut self, client: &Client, token: &str, now: Instant, wall: SystemTime) {
        let verified = match &self.verifier {
            Some(verifier) => verifier.verify_at(token, wall),
            None => Err(AuthError::Invalid("refresh is not available".into())),
        };
        let verified = match verified {
            Ok(v) if v.identity.user_id == client.identity.user_id => v,
            Ok(_) => {
                let text = "invalid token: it names another user than this connection's";
                return self.send_error(client, ErrorCode::InvalidToken, text, None, now);
            }
            Err(e) => {
                let text = format!("invalid token: {e}");
                return self.send_error(client, ErrorCode::InvalidToken, &text, None, now);
            }
        };
        self.set_token_expiry(client.id, verified.exp, now, wall);
        client.push_own(&protocol::encode_refreshed(verified.exp), now);
    }

    /// Answers a frame over its connection budget: `rate_limited` with the
    /// wait, connection kept, nothing else done for the frame.
    fn rate_limited(&mut self, client: &Client, what: &str, wait: Duration, now: Instant) {
        let ms = wait.as_millis() as u64;
        let text = format!("too many {what} frames on this connection; retry in {ms} ms");
        self.send_error(client, ErrorCode::RateLimited, &text, Some(ms), now);
    }

    /// Handles a binary frame: refused, connection kept.
    pub fn on_binary(&mut self, client: &Rc<Client>, now: Instant) {
        client.touch(now);
        self.send_error(
            client,
            ErrorCode::InvalidMessage,
            "binary frames are not supported; send JSON text frames",
            None,
            now,
        );
    }
}
