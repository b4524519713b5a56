//! The frames of the wire contract (`PROTOCOL.md`), with no I/O.
//!
//! Everything a connection exchanges with a client passes through here: client text frames are
//! parsed and validated into [`ClientFrame`], and server frames are encoded into JSON payloads
//! ready to be wrapped in a WebSocket text frame or used as an HTTP body. Keeping this module pure
//! means the whole contract (field names, error codes, refusals) can be unit tested without a
//! socket, and the hot path (parse one frame, encode one message, send the same bytes to every
//! room member) has no hidden allocation or copy beyond what the JSON itself needs.
//!
//! Parsing goes through one flat, borrowing struct (`RawFrame`) that accepts any JSON value
//! in every known field; the type checks and per-frame rules then live in one place
//! (`RawFrame::validate`) shared by the simd-json parser used in production and the serde_json
//! one kept for comparison. Doing the type checks ourselves instead of letting serde fail is
//! what lets a refusal name the offending field, and makes both parsers refuse with the same
//! words.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// The id of a stored message: a ULID, so it prints as 26 Crockford base32 characters and ids
/// compare (as strings too) in the order they were minted.
pub type MessageId = ulid::Ulid;

/// The room a connection joins when the upgrade request names none.
pub const DEFAULT_ROOM: &str = "lobby";

/// Longest accepted room id, in characters (all allowed characters are ASCII, so also bytes).
pub const MAX_ROOM_ID_LEN: usize = 128;

/// Number of messages a history request returns when it gives no `limit`.
pub const HISTORY_DEFAULT_LIMIT: usize = 50;

/// Largest history page; larger `limit`s are clamped to this rather than refused, so a client
/// asking for "everything" still gets a useful answer.
pub const HISTORY_MAX_LIMIT: usize = 200;

/// Longest accepted `clientMsgId`, in bytes. The id is kept per user for de-duplication, so it
/// must stay small.
pub const MAX_CLIENT_MSG_ID_LEN: usize = 128;

/// Deepest JSON nesting accepted in a client frame. Valid frames are flat (depth 1); the bound
/// exists because ignoring an unknown nested field recurses once per level, and a 64 KiB frame
/// of `[[[[...` would otherwise overflow the stack of the core's thread.
pub const MAX_FRAME_DEPTH: usize = 32;

/// Longest slice of a client-supplied value echoed back in a refusal, in bytes.
const MAX_ECHO_LEN: usize = 64;

/// Whether `s` is an acceptable room id: 1 to 128 characters of ASCII letters, digits, `_`, `-`,
/// `.` and `:`.
pub fn valid_room_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ROOM_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// Parses a message id as printed by the server (26 base32 characters, case-insensitive).
///
/// Ids whose first character is above `7` are refused: they encode more than 128 bits, and the
/// ulid crate would silently drop the high bits, so the parsed id would not print back as given.
pub fn parse_message_id(s: &str) -> Option<MessageId> {
    if s.as_bytes().first().is_some_and(|&b| b > b'7') {
        return None;
    }
    MessageId::from_string(s).ok()
}

/// The `code` of an `error` frame (contract section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be parsed or broke a rule of section 3.
    InvalidMessage,
    /// A `message` or `typing` for a room the connection has not joined.
    NotInRoom,
    /// Content longer than `MAX_MESSAGE_LENGTH` characters.
    MessageTooLong,
    /// Content refused outright by moderation.
    MessageBlocked,
    /// Over the per-user message rate; comes with `retryAfterMs`.
    RateLimited,
    /// Too many rooms joined on one connection.
    RoomLimit,
    /// A backend is down and its bounded buffer is full; the message was not accepted.
    Unavailable,
    /// A bug or an unexpected failure on the server's side.
    Internal,
    /// A `refresh` token that is bad, expired or names another user (contract section 8); the
    /// connection keeps its current expiry.
    InvalidToken,
    /// The user may not do this now (section 8: a `message` from a banned user).
    Forbidden,
}

impl ErrorCode {
    /// Every code, in the contract's order; for metrics that pre-register one series per code.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::InvalidMessage,
        ErrorCode::NotInRoom,
        ErrorCode::MessageTooLong,
        ErrorCode::MessageBlocked,
        ErrorCode::RateLimited,
        ErrorCode::RoomLimit,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::InvalidToken,
        ErrorCode::Forbidden,
    ];

    /// The code as it appears on the wire, e.g. `"rate_limited"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::MessageTooLong => "message_too_long",
            ErrorCode::MessageBlocked => "message_blocked",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::RoomLimit => "room_limit",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated client frame. Strings borrow from the frame's buffer whenever the JSON needed no
/// unescaping, so the common case copies nothing.
#[derive(Debug, PartialEq)]
pub enum ClientFrame<'a> {
    /// Post a chat message.
    Message {
        /// Target room; `None` means the connection's initial room.
        room_id: Option<Cow<'a, str>>,
        /// The text, non-blank; its length is checked by the caller against its configured limit.
        content: Cow<'a, str>,
        /// Client-chosen id for de-duplicating retries; 1 to 128 bytes when present.
        client_msg_id: Option<Cow<'a, str>>,
    },
    /// Join a room (a connection may be in many).
    JoinRoom {
        /// The room to join.
        room_id: Cow<'a, str>,
        /// Replay stored messages newer than this id before live ones.
        since: Option<MessageId>,
    },
    /// Leave a room.
    LeaveRoom {
        /// The room to leave.
        room_id: Cow<'a, str>,
    },
    /// Start or stop a typing indicator.
    Typing {
        /// Target room; `None` means the connection's initial room.
        room_id: Option<Cow<'a, str>>,
        /// Whether the user is typing now.
        is_typing: bool,
    },
    /// Ask for a page of stored messages.
    History {
        /// The room whose messages are wanted.
        room_id: Cow<'a, str>,
        /// Only messages older than this id (exclusive).
        before: Option<MessageId>,
        /// Only messages newer than this id (exclusive).
        after: Option<MessageId>,
        /// Page size: `HISTORY_DEFAULT_LIMIT` when absent, clamped to `HISTORY_MAX_LIMIT`.
        limit: usize,
    },
    /// Application-level ping, answered with `pong`.
    Ping,
    /// A newer token for the connection (contract section 8), answered with `refreshed`.
    Refresh {
        /// The JWT, at most [`MAX_TOKEN_LEN`] bytes; verified by the hub, not here.
        token: Cow<'a, str>,
    },
}

/// Longest `token` of a `refresh` frame, in bytes. Tokens are a few hundred bytes; the bound
/// keeps a frame from making the verifier decode tens of kilobytes of base64.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

impl ClientFrame<'_> {
    /// The same frame with owned strings, independent of the parse buffer.
    pub fn into_owned(self) -> ClientFrame<'static> {
        fn owned(c: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(c.into_owned())
        }
        match self {
            ClientFrame::Message {
                room_id,
                content,
                client_msg_id,
            } => ClientFrame::Message {
                room_id: room_id.map(owned),
                content: owned(content),
                client_msg_id: client_msg_id.map(owned),
            },
            ClientFrame::JoinRoom { room_id, since } => ClientFrame::JoinRoom {
                room_id: owned(room_id),
                since,
            },
            ClientFrame::LeaveRoom { room_id } => ClientFrame::LeaveRoom {
                room_id: owned(room_id),
            },
            ClientFrame::Typing { room_id, is_typing } => ClientFrame::Typing {
                room_id: room_id.map(owned),
                is_typing,
            },
            ClientFrame::History {
                room_id,
                before,
                after,
                limit,
            } => ClientFrame::History {
                room_id: owned(room_id),
                before,
                after,
                limit,
            },
            ClientFrame::Ping => ClientFrame::Ping,
            ClientFrame::Refresh { token } => ClientFrame::Refresh {
                token: owned(token),
            },
        }
    }
}

/// Why a client frame was refused; always answered with code `invalid_message` and this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FrameError(pub String);

impl FrameError {
    fn new(message: impl Into<String>) -> FrameError {
        FrameError(message.into())
    }
}

thread_local! {
    /// simd-json's scratch buffers, kept per thread so that parsing a frame does not allocate
    /// and free them every time; the server is thread-per-core, so there is no contention.
    static SIMD_BUFFERS: RefCell<simd_json::Buffers> = RefCell::new(simd_json::Buffers::default());
}

/// Parses one client text frame with the parser the benchmark found faster
/// for its size. `buf` is the frame's payload (simd-json parses in place).
pub fn parse_client_frame(buf: &mut [u8]) -> Result<ClientFrame<'_>, FrameError> {
    if buf.len() < SIMD_JSON_MIN_BYTES {
        return parse_client_frame_serde_json(buf);
    }
    parse_client_frame_simd(buf)
}

/// Frames shorter than this are parsed with serde_json, longer ones with
/// simd-json. `cargo bench --bench protocol -- parse` on 2026-11-24 (quiet
/// machine) measured serde_json faster only on `ping` (15 B: 151 vs 167 ns);
/// simd-json was faster on `typing` (52 B: 240 vs 262 ns), a 177-byte message
/// (373 vs 442 ns), escaped/non-ASCII content (466 vs 794 ns) and 1,000
/// characters (502 vs 538 ns with the memchr depth check). At 16 KiB
/// serde_json won (3.47 vs 4.34 µs), but chat frames are far shorter at the
/// default MAX_MESSAGE_LENGTH.
pub const SIMD_JSON_MIN_BYTES: usize = 32;

/// [`parse_client_frame`] with simd-json whatever the size (parses in place).
pub fn parse_client_frame_simd(buf: &mut [u8]) -> Result<ClientFrame<'_>, FrameError> {
    // simd-json decodes an unpaired surrogate escape (`"\ud83dx"`) as U+0000 where serde_json
    // refuses it; such frames (and, harmlessly, paired ones) go to serde_json so that both
    // parsers, picked by length, read a frame the same way.
    // simd-json also refuses an integer too long for 64 bits (valid JSON, which serde_json reads
    // as a float): an unknown field holding one must not make the frame invalid (found by
    // `fuzz/fuzz_targets/client_frame.rs`).
    if has_surrogate_escape(buf) || has_long_digit_run(buf) {
        return parse_client_frame_serde_json(buf);
    }
    precheck(buf)?;
    let raw: RawFrame<'_> = SIMD_BUFFERS
        .with(|buffers| match buffers.try_borrow_mut() {
            Ok(mut buffers) => simd_json::serde::from_slice_with_buffers(buf, &mut buffers),
            // Only reachable if parsing re-entered itself on this thread, which it does not;
            // fall back to fresh buffers rather than panic.
            Err(_) => simd_json::serde::from_slice(buf),
        })
        .map_err(|e| match e.error() {
            simd_json::ErrorType::Serde(msg) => invalid_json(msg),
            _ => invalid_json(&e),
        })?;
    raw.validate()
}

/// Same as [`parse_client_frame`], with serde_json; kept so a benchmark can compare the two
/// parsers on identical inputs and rules.
pub fn parse_client_frame_serde_json(buf: &[u8]) -> Result<ClientFrame<'_>, FrameError> {
    precheck(buf)?;
    let raw: RawFrame<'_> = serde_json::from_slice(buf).map_err(|e| invalid_json(&e))?;
    raw.validate()
}

/// Whether `buf` may hold a `\uD800`-`\uDFFF` escape (a `\\u...` false positive only costs
/// the slower parser).
fn has_surrogate_escape(buf: &[u8]) -> bool {
    memchr::memmem::find_iter(buf, b"\\u").any(|at| {
        matches!(buf.get(at + 2), Some(b'd' | b'D'))
            && matches!(
                buf.get(at + 3),
                Some(b'8' | b'9' | b'a'..=b'f' | b'A'..=b'F')
            )
    })
}

/// Digits in a row from which a JSON integer may not fit 64 bits (u64::MAX has 20 digits, and
/// every 19-digit integer fits).
const LONG_DIGIT_RUN: usize = 20;

/// Whether `buf` holds [`LONG_DIGIT_RUN`] ASCII digits in a row (inside strings too, where it is
/// harmless: such a frame is just parsed by serde_json).
fn has_long_digit_run(buf: &[u8]) -> bool {
    let mut run = 0;
    for &b in buf {
        run = if b.is_ascii_digit() { run + 1 } else { 0 };
        if run >= LONG_DIGIT_RUN {
            return true;
        }
    }
    false
}

fn invalid_json(detail: &dyn fmt::Display) -> FrameError {
    FrameError(format!("invalid JSON: {detail}"))
}

/// Checks done before either parser runs: the frame is an object, and is not nested deeper than
/// [`MAX_FRAME_DEPTH`]. Done here so that both parsers refuse these with the same words (serde
/// would otherwise accept a JSON array as a struct, positionally).
fn precheck(buf: &[u8]) -> Result<(), FrameError> {
    match buf
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        None => return Err(FrameError::new("invalid JSON: empty frame")),
        Some(b'{') => {}
        Some(_) => return Err(FrameError::new("frame must be a JSON object")),
    }
    // A control byte other than JSON's whitespace is invalid anywhere in JSON text (inside
    // strings too), but simd-json reads one after a number as a separator (`[1\0]`, found by
    // `fuzz/fuzz_targets/client_frame.rs`). One pass over the bytes keeps both parsers agreeing.
    if buf
        .iter()
        .any(|&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r'))
    {
        return Err(FrameError::new(
            "invalid JSON: control character outside the JSON whitespace",
        ));
    }
    // Fast path: with few brackets anywhere (even inside strings) the depth cannot be too large.
    // memchr's vectorised search: a byte-by-byte count was most of the parse time of long frames.
    let brackets = memchr::memchr2_iter(b'[', b'{', buf).count();
    if brackets > MAX_FRAME_DEPTH && nesting_depth(buf) > MAX_FRAME_DEPTH {
        return Err(FrameError(format!(
            "frame nested deeper than {MAX_FRAME_DEPTH} levels"
        )));
    }
    Ok(())
}

/// Greatest nesting of arrays and objects in `buf`, ignoring brackets inside strings. Malformed
/// input gives some number; the parser refuses it afterwards anyway.
fn nesting_depth(buf: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in buf {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// One JSON value of a known client field, as read before type checking.
#[derive(Debug)]
enum Field<'a> {
    /// A string, borrowed from the frame when it had no escapes.
    Str(Cow<'a, str>),
    /// `true` or `false`.
    Bool(bool),
    /// A number without fraction or exponent; i128 holds both u64 and i64 values.
    Int(i128),
    /// Any other number.
    Float,
    /// `null`; only seen inside `Option` handling, which maps it to "absent".
    Null,
    /// An array (its contents are skipped).
    Array,
    /// An object (its contents are skipped).
    Object,
}

impl Field<'_> {
    /// The JSON type, for refusals such as "field `limit` must be a number, got a string".
    fn kind(&self) -> &'static str {
        match self {
            Field::Str(_) => "a string",
            Field::Bool(_) => "a boolean",
            Field::Int(_) | Field::Float => "a number",
            Field::Null => "null",
            Field::Array => "an array",
            Field::Object => "an object",
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldVisitor(PhantomData))
    }
}

/// Accepts every JSON value, so that type errors are reported by validation, naming the field.
struct FieldVisitor<'a>(PhantomData<Field<'a>>);

impl<'de: 'a, 'a> Visitor<'de> for FieldVisitor<'a> {
    type Value = Field<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Field<'a>, E> {
        Ok(Field::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Field<'a>, E> {
        Ok(Field::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Field<'a>, E> {
        Ok(Field::Str(Cow::Owned(v)))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Field<'a>, E> {
        Ok(Field::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Field<'a>, E> {
        Ok(Field::Int(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Field<'a>, E> {
        Ok(Field::Int(v.into()))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Field<'a>, E> {
        Ok(Field::Float)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Field<'a>, E> {
        Ok(Field::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Field<'a>, E> {
        Ok(Field::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<'a>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'a>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Object)
    }
}

/// Every field any client frame may carry, before validation. One flat struct rather than a
/// tagged enum because serde's tagged enums buffer the whole frame, losing the zero-copy borrow.
/// Unknown fields are ignored (the contract allows extra fields); `null` counts as absent.
#[derive(Deserialize)]
struct RawFrame<'a> {
    /// The frame type, e.g. `"message"`.
    #[serde(rename = "type", borrow, default)]
    kind: Option<Field<'a>>,
    /// Target room.
    #[serde(rename = "roomId", borrow, default)]
    room_id: Option<Field<'a>>,
    /// Message text.
    #[serde(borrow, default)]
    content: Option<Field<'a>>,
    /// De-duplication id of a message.
    #[serde(rename = "clientMsgId", borrow, default)]
    client_msg_id: Option<Field<'a>>,
    /// Replay point of a `join_room`.
    #[serde(borrow, default)]
    since: Option<Field<'a>>,
    /// Upper bound of a `history` page.
    #[serde(borrow, default)]
    before: Option<Field<'a>>,
    /// Lower bound of a `history` page.
    #[serde(borrow, default)]
    after: Option<Field<'a>>,
    /// Typing state of a `typing` frame.
    #[serde(rename = "isTyping", borrow, default)]
    is_typing: Option<Field<'a>>,
    /// Page size of a `history` frame.
    #[serde(borrow, default)]
    limit: Option<Field<'a>>,
    /// The new JWT of a `refresh` frame.
    #[serde(borrow, default)]
    token: Option<Field<'a>>,
}

impl<'a> RawFrame<'a> {
    /// Applies the per-type rules of contract section 3. Fields that a frame type does not use
    /// are ignored, whatever they hold.
    fn validate(self) -> Result<ClientFrame<'a>, FrameError> {
        let kind = string_field(self.kind, "type")?.ok_or_else(|| missing("type"))?;
        match &*kind {
            "message" => {
                let content =
                    string_field(self.content, "content")?.ok_or_else(|| missing("content"))?;
                // Invisible characters (zero-width space, joiners, BOM, ...) show nothing either,
                // so content of only those and whitespace is as empty as "" is.
                if crate::moderation::normalize::is_blank(&content) {
                    return Err(FrameError::new(
                        "field `content` must not be empty or whitespace-only",
                    ));
                }
                let client_msg_id = string_field(self.client_msg_id, "clientMsgId")?;
                if let Some(id) = &client_msg_id {
                    if id.is_empty() || id.len() > MAX_CLIENT_MSG_ID_LEN {
                        return Err(FrameError(format!(
                            "field `clientMsgId` must be 1 to {MAX_CLIENT_MSG_ID_LEN} bytes"
                        )));
                    }
                }
                Ok(ClientFrame::Message {
                    room_id: room_field(self.room_id)?,
                    content,
                    client_msg_id,
                })
            }
            "join_room" => Ok(ClientFrame::JoinRoom {
                room_id: required_room(self.room_id)?,
                since: id_field(self.since, "since")?,
            }),
            "leave_room" => Ok(ClientFrame::LeaveRoom {
                room_id: required_room(self.room_id)?,
            }),
            "typing" => {
                let is_typing = match self.is_typing {
                    None => return Err(missing("isTyping")),
                    Some(Field::Bool(b)) => b,
                    Some(other) => return Err(wrong_type("isTyping", "a boolean", &other)),
                };
                Ok(ClientFrame::Typing {
                    room_id: room_field(self.room_id)?,
                    is_typing,
                })
            }
            "history" => {
                let limit = match self.limit {
                    None => HISTORY_DEFAULT_LIMIT,
                    Some(Field::Int(n)) if n > 0 => {
                        usize::try_from(n).map_or(HISTORY_MAX_LIMIT, |n| n.min(HISTORY_MAX_LIMIT))
                    }
                    Some(_) => {
                        return Err(FrameError::new("field `limit` must be a positive integer"))
                    }
                };
                Ok(ClientFrame::History {
                    room_id: required_room(self.room_id)?,
                    before: id_field(self.before, "before")?,
                    after: id_field(self.after, "after")?,
                    limit,
                })
            }
            "ping" => Ok(ClientFrame::Ping),
            "refresh" => {
                let token = string_field(self.token, "token")?.ok_or_else(|| missing("token"))?;
                if token.len() > MAX_TOKEN_LEN {
                    return Err(FrameError(format!(
                        "field `token` must be at most {MAX_TOKEN_LEN} bytes"
                    )));
                }
                Ok(ClientFrame::Refresh { token })
            }
            other => Err(FrameError(format!(
                "unknown frame type {:?}",
                truncate(other, MAX_ECHO_LEN)
            ))),
        }
    }
}

fn missing(name: &str) -> FrameError {
    FrameError(format!("missing field `{name}`"))
}

fn wrong_type(name: &str, expected: &str, got: &Field<'_>) -> FrameError {
    FrameError(format!(
        "field `{name}` must be {expected}, got {}",
        got.kind()
    ))
}

fn string_field<'a>(
    value: Option<Field<'a>>,
    name: &str,
) -> Result<Option<Cow<'a, str>>, FrameError> {
    match value {
        None | Some(Field::Null) => Ok(None),
        Some(Field::Str(s)) => Ok(Some(s)),
        Some(other) => Err(wrong_type(name, "a string", &other)),
    }
}

fn room_field(value: Option<Field<'_>>) -> Result<Option<Cow<'_, str>>, FrameError> {
    let room = string_field(value, "roomId")?;
    match room {
        Some(r) if !valid_room_id(&r) => Err(FrameError(format!(
            "invalid roomId {:?}: must be 1 to {MAX_ROOM_ID_LEN} characters of letters, digits, '_', '-', '.' and ':'",
            truncate(&r, MAX_ECHO_LEN)
        ))),
        room => Ok(room),
    }
}

fn required_room(value: Option<Field<'_>>) -> Result<Cow<'_, str>, FrameError> {
    room_field(value)?.ok_or_else(|| missing("roomId"))
}

fn id_field(value: Option<Field<'_>>, name: &str) -> Result<Option<MessageId>, FrameError> {
    match string_field(value, name)? {
        None => Ok(None),
        Some(s) => parse_message_id(&s).map(Some).ok_or_else(|| {
            FrameError(format!(
                "field `{name}` is not a message id: {:?}",
                truncate(&s, MAX_ECHO_LEN)
            ))
        }),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One accepted chat message; what the server stores and broadcasts.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// Server-minted id; its order is the room's order.
    pub id: MessageId,
    /// Room the message was posted to; shared with the room's state, hence `Arc`.
    pub room_id: Arc<str>,
    /// Author's user id, from the token; shared with the connection's identity.
    pub user_id: Arc<str>,
    /// Author's display name at the time of posting.
    pub username: Arc<str>,
    /// The text after moderation (masked words replaced).
    pub content: String,
    /// When the server accepted it, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// Presence state of a user, as carried by `presence` frames and the user status endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    /// At least one connection of the user is open.
    Online,
    /// The user's last connection closed or timed out.
    Offline,
}

impl PresenceStatus {
    /// The status as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceStatus::Online => "online",
            PresenceStatus::Offline => "offline",
        }
    }
}

/// Server frames as serialized; fields borrow from the caller so nothing is copied before
/// serde_json writes (and escapes) them.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutFrame<'a> {
    #[serde(rename_all = "camelCase")]
    Message {
        message_id: &'a str,
        user_id: &'a str,
        username: &'a str,
        room_id: &'a str,
        content: &'a str,
        timestamp: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    Ack {
        client_msg_id: &'a str,
        message_id: &'a str,
        room_id: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    Presence {
        user_id: &'a str,
        status: PresenceStatus,
        room_id: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    RoomJoined {
        room_id: &'a str,
        member_count: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    #[serde(rename_all = "camelCase")]
    RoomLeft {
        room_id: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    TypingIndicator {
        user_id: &'a str,
        username: &'a str,
        room_id: &'a str,
        is_typing: bool,
    },
    Pong,
    Refreshed {
        exp: Option<u64>,
    },
    #[serde(rename_all = "camelCase")]
    MessageDeleted {
        room_id: &'a str,
        message_id: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// Serializes `frame` into a buffer of `capacity` bytes, sized by the caller to avoid regrowth.
fn to_json(frame: &OutFrame<'_>, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    // Writing into a Vec cannot fail, and every field is a string, number or bool.
    serde_json::to_writer(&mut out, frame).expect("server frames always serialize");
    out
}

/// Fixed bytes of the JSON around variable fields, for sizing output buffers.
const FRAME_OVERHEAD: usize = 128;

/// Encodes the `message` frame, e.g.
/// `{"type":"message","messageId":..,"userId":..,"username":..,"roomId":..,"content":..,"timestamp":"2024-01-01T12:00:00.123Z"}`.
pub fn encode_message(m: &ChatMessage) -> Vec<u8> {
    let mut id = [0u8; ulid::ULID_LEN];
    let ts = timestamp_bytes(m.timestamp_ms);
    let frame = OutFrame::Message {
        message_id: m.id.array_to_str(&mut id),
        user_id: &m.user_id,
        username: &m.username,
        room_id: &m.room_id,
        content: &m.content,
        timestamp: ascii_str(&ts),
    };
    let capacity = FRAME_OVERHEAD
        + m.user_id.len()
        + m.username.len()
        + m.room_id.len()
        + m.content.len()
        + m.content.len() / 8;
    to_json(&frame, capacity)
}

/// Encodes the `ack` frame sent to a sender that gave a `clientMsgId`.
pub fn encode_ack(client_msg_id: &str, message_id: MessageId, room_id: &str) -> Vec<u8> {
    let mut id = [0u8; ulid::ULID_LEN];
    let frame = OutFrame::Ack {
        client_msg_id,
        message_id: message_id.array_to_str(&mut id),
        room_id,
    };
    to_json(&frame, FRAME_OVERHEAD + client_msg_id.len() + room_id.len())
}

/// Encodes the `presence` frame: status `"online"` when `online`, else `"offline"`.
pub fn encode_presence(user_id: &str, online: bool, room_id: &str) -> Vec<u8> {
    let status = if online {
        PresenceStatus::Online
    } else {
        PresenceStatus::Offline
    };
    let frame = OutFrame::Presence {
        user_id,
        status,
        room_id,
    };
    to_json(&frame, FRAME_OVERHEAD + user_id.len() + room_id.len())
}

/// Encodes the `room_joined` frame; `member_count` is the distinct users right after the join.
/// `recovered` is given for a join with `since` only (contract section 3): whether the replay
/// that follows holds every message after `since`.
pub fn encode_room_joined(room_id: &str, member_count: usize, recovered: Option<bool>) -> Vec<u8> {
    let frame = OutFrame::RoomJoined {
        room_id,
        member_count,
        recovered,
    };
    to_json(&frame, FRAME_OVERHEAD + room_id.len())
}

/// Encodes the `room_left` frame.
pub fn encode_room_left(room_id: &str) -> Vec<u8> {
    to_json(
        &OutFrame::RoomLeft { room_id },
        FRAME_OVERHEAD + room_id.len(),
    )
}

/// Encodes the `typing_indicator` frame. `username` is an extra field beyond the contract's
/// example, so clients can show a name without looking the user up.
pub fn encode_typing(user_id: &str, username: &str, room_id: &str, is_typing: bool) -> Vec<u8> {
    let frame = OutFrame::TypingIndicator {
        user_id,
        username,
        room_id,
        is_typing,
    };
    to_json(
        &frame,
        FRAME_OVERHEAD + user_id.len() + username.len() + room_id.len(),
    )
}

/// Encodes the `message_deleted` frame an operator's delete sends to the room's members
/// (contract section 8): `{"type":"message_deleted","roomId":..,"messageId":..}`.
pub fn encode_message_deleted(room_id: &str, message_id: MessageId) -> Vec<u8> {
    let mut id = [0u8; ulid::ULID_LEN];
    let frame = OutFrame::MessageDeleted {
        room_id,
        message_id: message_id.array_to_str(&mut id),
    };
    to_json(&frame, FRAME_OVERHEAD + room_id.len())
}

/// Encodes the `pong` frame answering a `ping`.
pub fn encode_pong() -> Vec<u8> {
    to_json(&OutFrame::Pong, 16)
}

/// Encodes the `refreshed` frame answering a `refresh`: `{"type":"refreshed","exp":..}`, the
/// new token's `exp` in Unix seconds, or `null` when it has none (the connection no longer
/// expires).
pub fn encode_refreshed(exp: Option<u64>) -> Vec<u8> {
    to_json(&OutFrame::Refreshed { exp }, 48)
}

/// Encodes the `error` frame; `retryAfterMs` appears only when `retry_after_ms` is `Some`.
pub fn encode_error(code: ErrorCode, message: &str, retry_after_ms: Option<u64>) -> Vec<u8> {
    let frame = OutFrame::Error {
        code,
        message,
        retry_after_ms,
    };
    to_json(&frame, FRAME_OVERHEAD + message.len())
}

/// Bytes a WebSocket frame header adds at most (a 64-bit length).
const MAX_WS_HEADER: usize = 10;

/// The `history` WebSocket frame's payload, cut to fit a frame of `max_frame` bytes:
/// `{"type":"history","roomId":..,"messages":[..],"more":..}`. When `messages` (oldest first)
/// do not all fit, the ones kept are the newest (`keep_newest`, a page without `after`, which
/// pages backwards) or the oldest (a page with `after`), never fewer than one, and `more` is
/// true. Returns the payload and how many messages it holds.
pub fn encode_history_frame(
    room_id: &str,
    messages: &[bytes::Bytes],
    keep_newest: bool,
    max_frame: usize,
) -> (Vec<u8>, usize) {
    let empty = encode_history(room_id, std::iter::empty(), true).len();
    let mut size = MAX_WS_HEADER + empty + r#","more":false"#.len();
    let mut kept = 0;
    let sizes: Box<dyn Iterator<Item = usize>> = if keep_newest {
        Box::new(messages.iter().rev().map(|m| m.len()))
    } else {
        Box::new(messages.iter().map(|m| m.len()))
    };
    for len in sizes {
        // +1: the comma before every message but the first (counted for all: a byte early).
        if kept > 0 && size + len + 1 > max_frame {
            break;
        }
        size += len + 1;
        kept += 1;
    }
    let slice = if keep_newest {
        &messages[messages.len() - kept..]
    } else {
        &messages[..kept]
    };
    let more = kept < messages.len();
    let mut out = encode_history(room_id, slice.iter().map(|m| &m[..]), true);
    out.pop(); // the closing brace
    out.extend_from_slice(if more {
        br#","more":true}"#
    } else {
        br#","more":false}"#
    });
    (out, kept)
}

/// The history answer; `messages` are payloads previously produced by `encode_message`, spliced in verbatim (no re-encoding).
/// with_type=true gives the WebSocket frame {"type":"history","roomId":..,"messages":[..]}, false the HTTP body {"roomId":..,"messages":[..]}.
pub fn encode_history<'m>(
    room_id: &str,
    messages: impl IntoIterator<Item = &'m [u8]>,
    with_type: bool,
) -> Vec<u8> {
    let messages = messages.into_iter();
    // A message payload is a few hundred bytes at most in practice; guess from the lower bound.
    let mut out = Vec::with_capacity(FRAME_OVERHEAD + room_id.len() + 256 * messages.size_hint().0);
    out.extend_from_slice(if with_type {
        br#"{"type":"history","roomId":"#
    } else {
        br#"{"roomId":"#
    });
    // Writing a string into a Vec cannot fail.
    serde_json::to_writer(&mut out, room_id).expect("a string always serializes");
    out.extend_from_slice(br#","messages":["#);
    for (i, m) in messages.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m);
    }
    out.extend_from_slice(b"]}");
    out
}

/// Milliseconds of the last instant with a four-digit year, 9999-12-31T23:59:59.999Z; later
/// times are printed as this one so the output keeps its fixed shape.
const MAX_TIMESTAMP_MS: u64 = 253_402_300_799_999;

/// ISO 8601 UTC with milliseconds, e.g. 2024-01-01T12:00:00.123Z (hand-rolled civil-from-days; no chrono/time dependency).
pub fn format_timestamp(ms_since_epoch: u64) -> String {
    ascii_str(&timestamp_bytes(ms_since_epoch)).to_owned()
}

/// The timestamp as fixed-size ASCII, so encoding a message needs no allocation for it.
fn timestamp_bytes(ms: u64) -> [u8; 24] {
    let ms = ms.min(MAX_TIMESTAMP_MS);
    let millis = ms % 1000;
    let secs = ms / 1000;
    let (days, secs_of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    let mut out = *b"0000-00-00T00:00:00.000Z";
    put_digits(&mut out[0..4], year);
    put_digits(&mut out[5..7], month);
    put_digits(&mut out[8..10], day);
    put_digits(&mut out[11..13], secs_of_day / 3600);
    put_digits(&mut out[14..16], secs_of_day / 60 % 60);
    put_digits(&mut out[17..19], secs_of_day % 60);
    put_digits(&mut out[20..23], millis);
    out
}

/// Writes `value` as zero-padded decimal filling `out` exactly.
fn put_digits(out: &mut [u8], mut value: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// (year, month, day) of the day `days` after 1970-01-01, in the proleptic Gregorian calendar.
/// Howard Hinnant's `civil_from_days`, restricted to non-negative days: eras are 400-year
/// cycles starting on March 1st, which puts the leap day at the end of each year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z - era * 146_097; // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st, [0, 365]
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Views bytes known to be ASCII (timestamps, ULIDs) as a `str`.
fn ascii_str(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("formatted bytes are ASCII")
}

fn deserialize_message_id<'de, D: Deserializer<'de>>(d: D) -> Result<MessageId, D::Error> {
    let s = Cow::<'de, str>::deserialize(d)?;
    parse_message_id(&s).ok_or_else(|| de::Error::custom(format!("invalid message id {s:?}")))
}

/// A `message` frame as decoded by tests and tools (the server never decodes its own frames).
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(
    description = "The fields of a chat message as the server sends it; on the wire the `message` frame adds `\"type\": \"message\"`."
)]
pub struct ServerMessage {
    /// `messageId`.
    #[serde(deserialize_with = "deserialize_message_id")]
    #[schema(value_type = String, format = "ulid", example = "01HQZX3Y7K8M9N0P1Q2R3S4T5V")]
    pub message_id: MessageId,
    /// `userId` of the author.
    pub user_id: String,
    /// Display name of the author.
    pub username: String,
    /// `roomId` the message belongs to.
    pub room_id: String,
    /// The text, after moderation.
    pub content: String,
    /// Server time, ISO 8601 with milliseconds.
    #[schema(format = DateTime, example = "2024-01-01T12:00:00.123Z")]
    pub timestamp: String,
}

/// Any server frame of contract section 4, decoded, for tests and tools:
/// `serde_json::from_slice::<ServerFrame>(payload)`.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schema(description = "Any frame the server sends on `/ws`, told apart by `type`.")]
pub enum ServerFrame {
    /// A chat message.
    Message(ServerMessage),
    /// Acknowledgement of a message sent with a `clientMsgId`.
    #[serde(rename_all = "camelCase")]
    Ack {
        /// The sender's id for the message.
        client_msg_id: String,
        /// The id the server gave it (the original one for a repeat).
        #[serde(deserialize_with = "deserialize_message_id")]
        #[schema(value_type = String, format = "ulid", example = "01HQZX3Y7K8M9N0P1Q2R3S4T5V")]
        message_id: MessageId,
        /// Room the message went to.
        room_id: String,
    },
    /// A user came online or went offline.
    #[serde(rename_all = "camelCase")]
    Presence {
        /// The user whose state changed.
        user_id: String,
        /// The new state.
        status: PresenceStatus,
        /// The room this notice is for.
        room_id: String,
    },
    /// Answer to a join (and the first frame of every connection).
    #[serde(rename_all = "camelCase")]
    RoomJoined {
        /// The room joined.
        room_id: String,
        /// Distinct users in the room right after the join.
        member_count: usize,
        /// Only on a join with `since`: `true` when the replay that follows holds every message
        /// after `since`; `false` when more were missed than the replay holds (1,000) or the
        /// stored history no longer reaches back to `since` (page the rest with `history`).
        #[serde(default)]
        #[schema(nullable = false)]
        recovered: Option<bool>,
    },
    /// Answer to a `leave_room`.
    #[serde(rename_all = "camelCase")]
    RoomLeft {
        /// The room left.
        room_id: String,
    },
    /// Another member started or stopped typing.
    #[serde(rename_all = "camelCase")]
    TypingIndicator {
        /// Who is typing.
        user_id: String,
        /// Their display name; an extra field, so optional for other servers' frames.
        #[serde(default)]
        #[schema(nullable = false)]
        username: Option<String>,
        /// Where.
        room_id: String,
        /// Started (`true`) or stopped.
        is_typing: bool,
    },
    /// Answer to a `history` frame.
    #[serde(rename_all = "camelCase")]
    History {
        /// The room asked about.
        room_id: String,
        /// Stored messages, oldest first.
        messages: Vec<ServerMessage>,
        /// `true` when the answer was cut short of its `limit` to fit the connection's outbound
        /// budget: the messages given are the ones nearest the page's anchor (the newest without
        /// `after`, the oldest with it), and the rest can be asked for with the next page.
        #[serde(default)]
        more: bool,
    },
    /// Answer to a `ping`.
    Pong,
    /// Answer to a `refresh`: the connection now expires with the new token.
    Refreshed {
        /// The new token's `exp` in Unix seconds; `null` when it has none (the connection no
        /// longer expires).
        #[schema(required = true, nullable = true)]
        exp: Option<u64>,
    },
    /// An operator deleted a message of the room from its history: clients drop it from view.
    #[serde(rename_all = "camelCase")]
    MessageDeleted {
        /// The room of the message.
        room_id: String,
        /// The deleted message.
        #[serde(deserialize_with = "deserialize_message_id")]
        #[schema(value_type = String, format = "ulid", example = "01HQZX3Y7K8M9N0P1Q2R3S4T5V")]
        message_id: MessageId,
    },
    /// A refusal or failure.
    #[serde(rename_all = "camelCase")]
    Error {
        /// What went wrong, as a contract code.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
        /// When to try again; with `rate_limited`.
        #[serde(default)]
        #[schema(nullable = false)]
        retry_after_ms: Option<u64>,
    },
}

/// The HTTP history body, `{"roomId":..,"messages":[..]}`, decoded for tests and tools.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(description = "A page of a room's stored messages, oldest first.")]
pub struct HistoryPage {
    /// The room asked about.
    pub room_id: String,
    /// Stored messages, oldest first.
    pub messages: Vec<ServerMessage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID_A: &str = "01HQZX3Y7K8M9N0P1Q2R3S4T5V";
    const ID_B: &str = "01HQZX3Y7K8M9N0P1Q2R3S4T5W";

    fn id(s: &str) -> MessageId {
        parse_message_id(s).expect("test id is valid")
    }

    /// Parses with simd-json, returning a frame with owned strings so the buffer can go.
    fn parse(json: &str) -> Result<ClientFrame<'static>, FrameError> {
        let mut buf = json.as_bytes().to_vec();
        parse_client_frame(&mut buf).map(into_owned)
    }

    fn into_owned(f: ClientFrame<'_>) -> ClientFrame<'static> {
        f.into_owned()
    }

    fn c(s: &str) -> Cow<'static, str> {
        Cow::Owned(s.to_owned())
    }

    /// Asserts that `json` is refused and the message contains `fragment`.
    fn refused(json: &str, fragment: &str) {
        match parse(json) {
            Err(FrameError(msg)) => assert!(
                msg.contains(fragment),
                "refusal of {json} is {msg:?}, expected it to contain {fragment:?}"
            ),
            Ok(frame) => panic!("{json} was accepted as {frame:?}"),
        }
    }

    /// Found by the `client_frame` fuzz target (exact bytes): an unpaired surrogate escape,
    /// which serde_json refuses and simd-json read as U+0000, so the frame was refused when
    /// short and accepted, altered, when 32 bytes or longer.
    #[test]
    fn an_integer_longer_than_64_bits_in_an_unknown_field_is_accepted_by_both_parsers() {
        // Found by the client_frame fuzz target: simd-json refused it, serde_json did not.
        let frame =
            b"{\"type\":\"history\",\"roomId\":\"gener0000A\",\"limst\":5333333333333333333330}";
        let want = ClientFrame::History {
            room_id: "gener0000A".into(),
            before: None,
            after: None,
            limit: 50,
        };
        let mut buf = frame.to_vec();
        assert_eq!(parse_client_frame_simd(&mut buf).unwrap(), want);
        assert_eq!(parse_client_frame_serde_json(frame).unwrap(), want);
        let mut buf = frame.to_vec();
        assert_eq!(parse_client_frame(&mut buf).unwrap(), want);
        assert!(!has_long_digit_run(b"{\"n\":9223372036854775807}"));
    }

    #[test]
    fn a_control_byte_after_a_number_is_refused_by_both_parsers() {
        // Found by the client_frame fuzz target: simd-json accepted it as a ping.
        let frame = b"{\"type\":\"ping\",\"x\":[[[\n-3\0,5e10]]]}";
        assert!(frame.len() >= SIMD_JSON_MIN_BYTES);
        let mut buf = frame.to_vec();
        let err = parse_client_frame_simd(&mut buf).unwrap_err();
        assert!(err.0.starts_with("invalid JSON"), "{err:?}");
        assert!(parse_client_frame_serde_json(frame).is_err());
        let mut buf = b"{\"type\":\"ping\",\"xxxxxxxxxxxxxxxx\":[1\0]}".to_vec();
        assert!(parse_client_frame(&mut buf).is_err());
        // JSON's own whitespace is still fine.
        let mut buf = b"{\"type\":\t\"ping\",\r\n \"xxxxxxxxxxxxx\": [1]}".to_vec();
        assert_eq!(parse_client_frame(&mut buf).unwrap(), ClientFrame::Ping);
    }

    #[test]
    fn unpaired_surrogate_escape_is_refused_by_both_parsers() {
        let frame: &[u8] = r#"{"type":"message","content":"caf\u00e9 \"quoted\" \ud83daaf\u00e9 \"quude0/ ünïcoaf\u00e9 \"quoteb.c-d_e"}"#.as_bytes();
        let serde = parse_client_frame_serde_json(frame);
        assert!(serde.is_err(), "{serde:?}");
        assert_eq!(parse_client_frame_simd(&mut frame.to_vec()), serde);
        assert_eq!(parse_client_frame(&mut frame.to_vec()), serde);
        for lone in [
            r#"{"type":"message","content":"x\udc00 low surrogate alone"}"#,
            r#"{"type":"message","content":"high \uD83D at the end"}"#,
        ] {
            assert!(
                parse_client_frame(&mut lone.as_bytes().to_vec()).is_err(),
                "{lone}"
            );
        }
        // A paired escape still parses, to the character it encodes.
        let mut pair = br#"{"type":"message","content":"smile \ud83d\ude00 please"}"#.to_vec();
        assert_eq!(
            parse_client_frame(&mut pair).map(ClientFrame::into_owned),
            Ok(ClientFrame::Message {
                room_id: None,
                content: "smile \u{1F600} please".into(),
                client_msg_id: None,
            })
        );
    }

    #[test]
    fn parses_message_with_all_fields() {
        let frame = parse(
            r#"{"type":"message","roomId":"general","content":"Hello everyone!","timestamp":"2024-01-01T12:00:00Z","clientMsgId":"c-1"}"#,
        );
        assert_eq!(
            frame,
            Ok(ClientFrame::Message {
                room_id: Some(c("general")),
                content: c("Hello everyone!"),
                client_msg_id: Some(c("c-1")),
            })
        );
    }

    #[test]
    fn parses_message_with_only_content() {
        assert_eq!(
            parse(r#"{"type":"message","content":"hi"}"#),
            Ok(ClientFrame::Message {
                room_id: None,
                content: c("hi"),
                client_msg_id: None,
            })
        );
    }

    #[test]
    fn null_optional_fields_count_as_absent() {
        assert_eq!(
            parse(r#"{"type":"message","content":"hi","roomId":null,"clientMsgId":null}"#),
            Ok(ClientFrame::Message {
                room_id: None,
                content: c("hi"),
                client_msg_id: None,
            })
        );
    }

    #[test]
    fn unescapes_strings() {
        assert_eq!(
            parse(r#"{"type":"message","content":"say \"hi\"\n\u00e9\ud83d\ude00 \\ \/"}"#),
            Ok(ClientFrame::Message {
                room_id: None,
                content: c("say \"hi\"\n\u{e9}\u{1F600} \\ /"),
                client_msg_id: None,
            })
        );
    }

    #[test]
    fn unescaped_strings_borrow_from_the_buffer() {
        let mut buf = br#"{"type":"message","content":"plain"}"#.to_vec();
        let frame = parse_client_frame(&mut buf).unwrap();
        match frame {
            ClientFrame::Message { content, .. } => {
                assert!(matches!(content, Cow::Borrowed("plain")), "{content:?}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ignores_unknown_fields_and_irrelevant_ones() {
        assert_eq!(
            parse(r#"{"extra":{"a":[1,2,{"b":null}]},"type":"ping","content":5,"limit":"x"}"#),
            Ok(ClientFrame::Ping)
        );
    }

    #[test]
    fn parses_join_room() {
        assert_eq!(
            parse(r#"{"type":"join_room","roomId":"development"}"#),
            Ok(ClientFrame::JoinRoom {
                room_id: c("development"),
                since: None,
            })
        );
        assert_eq!(
            parse(&format!(
                r#"{{"type":"join_room","roomId":"dev","since":"{ID_A}"}}"#
            )),
            Ok(ClientFrame::JoinRoom {
                room_id: c("dev"),
                since: Some(id(ID_A)),
            })
        );
    }

    #[test]
    fn parses_leave_room() {
        assert_eq!(
            parse(r#"{"type":"leave_room","roomId":"general"}"#),
            Ok(ClientFrame::LeaveRoom {
                room_id: c("general")
            })
        );
    }

    #[test]
    fn parses_typing() {
        assert_eq!(
            parse(r#"{"type":"typing","roomId":"general","isTyping":true}"#),
            Ok(ClientFrame::Typing {
                room_id: Some(c("general")),
                is_typing: true,
            })
        );
        assert_eq!(
            parse(r#"{"type":"typing","isTyping":false}"#),
            Ok(ClientFrame::Typing {
                room_id: None,
                is_typing: false,
            })
        );
    }

    #[test]
    fn parses_history_with_defaults_and_bounds() {
        assert_eq!(
            parse(r#"{"type":"history","roomId":"general"}"#),
            Ok(ClientFrame::History {
                room_id: c("general"),
                before: None,
                after: None,
                limit: HISTORY_DEFAULT_LIMIT,
            })
        );
        assert_eq!(
            parse(&format!(
                r#"{{"type":"history","roomId":"general","before":"{ID_B}","after":"{ID_A}","limit":7}}"#
            )),
            Ok(ClientFrame::History {
                room_id: c("general"),
                before: Some(id(ID_B)),
                after: Some(id(ID_A)),
                limit: 7,
            })
        );
    }

    #[test]
    fn history_limit_is_clamped() {
        for (limit, expected) in [
            ("1", 1),
            ("200", 200),
            ("201", 200),
            ("18446744073709551615", 200),
        ] {
            let json = format!(r#"{{"type":"history","roomId":"r","limit":{limit}}}"#);
            match parse(&json) {
                Ok(ClientFrame::History { limit, .. }) => assert_eq!(limit, expected, "{json}"),
                other => panic!("{json} gave {other:?}"),
            }
        }
    }

    #[test]
    fn parses_ping() {
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping));
        assert_eq!(
            parse(" \n\t{\"type\" : \"ping\"} \r\n"),
            Ok(ClientFrame::Ping)
        );
    }

    #[test]
    fn parses_refresh() {
        assert_eq!(
            parse(r#"{"type":"refresh","token":"a.b.c"}"#),
            Ok(ClientFrame::Refresh {
                token: "a.b.c".into()
            })
        );
        // An empty token is the verifier's to refuse (`invalid_token`).
        assert_eq!(
            parse(r#"{"type":"refresh","token":""}"#),
            Ok(ClientFrame::Refresh { token: "".into() })
        );
        refused(r#"{"type":"refresh"}"#, "missing field `token`");
        refused(
            r#"{"type":"refresh","token":null}"#,
            "missing field `token`",
        );
        refused(
            r#"{"type":"refresh","token":5}"#,
            "field `token` must be a string, got a number",
        );
        let long = format!(
            r#"{{"type":"refresh","token":"{}"}}"#,
            "a".repeat(MAX_TOKEN_LEN + 1)
        );
        refused(&long, "field `token` must be at most 8192 bytes");
        let longest = format!(
            r#"{{"type":"refresh","token":"{}"}}"#,
            "a".repeat(MAX_TOKEN_LEN)
        );
        assert!(parse(&longest).is_ok());
    }

    #[test]
    fn refuses_invalid_json() {
        refused(r#"{"type":"ping""#, "invalid JSON");
        refused(r#"{"type":ping}"#, "invalid JSON");
        refused(r#"{"type":"ping"} x"#, "invalid JSON");
        refused("", "invalid JSON: empty frame");
        refused("   ", "invalid JSON: empty frame");
    }

    #[test]
    fn refuses_invalid_utf8() {
        let mut buf = b"{\"type\":\"message\",\"content\":\"\xff\xfe\"}".to_vec();
        let err = parse_client_frame(&mut buf).unwrap_err();
        assert!(err.0.starts_with("invalid JSON"), "{err}");
        let err = parse_client_frame_serde_json(b"{\"type\":\"message\",\"content\":\"\xff\"}")
            .unwrap_err();
        assert!(err.0.starts_with("invalid JSON"), "{err}");
    }

    #[test]
    fn refuses_non_objects() {
        for json in [r#"["ping"]"#, r#""ping""#, "42", "null", "true"] {
            refused(json, "frame must be a JSON object");
        }
    }

    #[test]
    fn refuses_duplicate_fields() {
        refused(r#"{"type":"ping","type":"ping"}"#, "duplicate field `type`");
    }

    #[test]
    fn refuses_missing_or_unknown_type() {
        refused(r#"{"roomId":"general"}"#, "missing field `type`");
        refused(r#"{"type":null}"#, "missing field `type`");
        refused(r#"{"type":"shout"}"#, r#"unknown frame type "shout""#);
        refused(r#"{"type":"PING"}"#, r#"unknown frame type "PING""#);
        refused(
            r#"{"type":7}"#,
            "field `type` must be a string, got a number",
        );
    }

    #[test]
    fn unknown_type_echo_is_truncated() {
        let long = "é".repeat(100);
        let err = parse(&format!(r#"{{"type":"{long}"}}"#)).unwrap_err();
        assert_eq!(err.0, format!("unknown frame type {:?}", "é".repeat(32)));
    }

    #[test]
    fn refuses_missing_required_fields() {
        refused(r#"{"type":"message"}"#, "missing field `content`");
        refused(r#"{"type":"join_room"}"#, "missing field `roomId`");
        refused(
            r#"{"type":"leave_room","roomId":null}"#,
            "missing field `roomId`",
        );
        refused(r#"{"type":"history"}"#, "missing field `roomId`");
        refused(
            r#"{"type":"typing","roomId":"r"}"#,
            "missing field `isTyping`",
        );
    }

    #[test]
    fn refuses_fields_of_the_wrong_type() {
        refused(
            r#"{"type":"message","content":42}"#,
            "field `content` must be a string, got a number",
        );
        refused(
            r#"{"type":"message","content":"x","roomId":["a"]}"#,
            "field `roomId` must be a string, got an array",
        );
        refused(
            r#"{"type":"message","content":"x","clientMsgId":{}}"#,
            "field `clientMsgId` must be a string, got an object",
        );
        refused(
            r#"{"type":"typing","isTyping":"yes"}"#,
            "field `isTyping` must be a boolean, got a string",
        );
        refused(
            r#"{"type":"typing","isTyping":1}"#,
            "field `isTyping` must be a boolean, got a number",
        );
        refused(
            r#"{"type":"join_room","roomId":true}"#,
            "field `roomId` must be a string, got a boolean",
        );
        refused(
            r#"{"type":"join_room","roomId":"r","since":12}"#,
            "field `since` must be a string, got a number",
        );
    }

    #[test]
    fn refuses_invalid_room_ids() {
        refused(
            r#"{"type":"join_room","roomId":"bad room"}"#,
            r#"invalid roomId "bad room""#,
        );
        refused(
            r#"{"type":"leave_room","roomId":""}"#,
            r#"invalid roomId """#,
        );
        refused(
            r#"{"type":"history","roomId":"a/b"}"#,
            r#"invalid roomId "a/b""#,
        );
        refused(
            r#"{"type":"message","roomId":"café","content":"x"}"#,
            r#"invalid roomId "café""#,
        );
        refused(
            r#"{"type":"typing","roomId":"a b","isTyping":true}"#,
            "invalid roomId",
        );
        let long = "a".repeat(129);
        refused(
            &format!(r#"{{"type":"join_room","roomId":"{long}"}}"#),
            "must be 1 to 128 characters",
        );
    }

    #[test]
    fn refuses_invalid_message_ids() {
        refused(
            r#"{"type":"join_room","roomId":"r","since":"nope"}"#,
            r#"field `since` is not a message id: "nope""#,
        );
        refused(
            &format!(r#"{{"type":"history","roomId":"r","before":"{ID_A}X"}}"#),
            "field `before` is not a message id",
        );
        refused(
            r#"{"type":"history","roomId":"r","after":"01HQZX3Y7K8M9N0P1Q2R3S4TUU"}"#,
            "field `after` is not a message id",
        );
    }

    #[test]
    fn refuses_bad_limits() {
        for limit in ["0", "-1", "1.5", "2.0", "1e2", r#""10""#, "true"] {
            refused(
                &format!(r#"{{"type":"history","roomId":"r","limit":{limit}}}"#),
                "field `limit` must be a positive integer",
            );
        }
    }

    #[test]
    fn refuses_blank_content() {
        // The last three show nothing: zero-width space and non-joiner; BOM, word joiner and a
        // space; soft hyphen, variation selector and Hangul filler.
        let invisible = [
            "\u{200b}\u{200c}",
            "\u{feff} \u{2060}",
            "\u{ad}\u{fe0f}\u{3164}",
        ];
        for content in ["", " ", "\\n\\t ", "\u{3000}\u{a0}"]
            .into_iter()
            .chain(invisible)
        {
            refused(
                &format!(r#"{{"type":"message","content":"{content}"}}"#),
                "field `content` must not be empty or whitespace-only",
            );
        }
    }

    #[test]
    fn does_not_check_content_length() {
        let content = "x".repeat(5000);
        match parse(&format!(r#"{{"type":"message","content":"{content}"}}"#)) {
            Ok(ClientFrame::Message { content: got, .. }) => assert_eq!(got.len(), 5000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_bad_client_msg_ids() {
        refused(
            r#"{"type":"message","content":"x","clientMsgId":""}"#,
            "field `clientMsgId` must be 1 to 128 bytes",
        );
        let long = "é".repeat(65); // 65 characters, 130 bytes
        refused(
            &format!(r#"{{"type":"message","content":"x","clientMsgId":"{long}"}}"#),
            "field `clientMsgId` must be 1 to 128 bytes",
        );
        let max = "k".repeat(128);
        match parse(&format!(
            r#"{{"type":"message","content":"x","clientMsgId":"{max}"}}"#
        )) {
            Ok(ClientFrame::Message { client_msg_id, .. }) => {
                assert_eq!(client_msg_id.as_deref(), Some(max.as_str()))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_deep_nesting_without_overflowing_the_stack() {
        // 30,000 levels fit in a 64 KiB frame; parse on a small stack to prove no recursion.
        let json = format!(
            r#"{{"type":"ping","x":{}{}}}"#,
            "[".repeat(30_000),
            "]".repeat(30_000)
        );
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut buf = json.clone().into_bytes();
                let simd = parse_client_frame_simd(&mut buf).map(into_owned);
                let serde = parse_client_frame_serde_json(json.as_bytes()).map(into_owned);
                (simd, serde)
            })
            .unwrap();
        let (simd, serde) = handle.join().expect("parser thread must not crash");
        let expected = Err(FrameError::new("frame nested deeper than 32 levels"));
        assert_eq!(simd, expected);
        assert_eq!(serde, expected);
    }

    #[test]
    fn brackets_inside_strings_do_not_count_as_nesting() {
        let content = "[{".repeat(100);
        assert_eq!(
            parse(&format!(
                r#"{{"type":"message","content":"{content} \" [[[ \\"}}"#
            )),
            Ok(ClientFrame::Message {
                room_id: None,
                content: Cow::Owned(format!("{content} \" [[[ \\")),
                client_msg_id: None,
            })
        );
        assert_eq!(nesting_depth(br#"{"a":"[[[\"[[[","b":[[1]]}"#), 3);
        assert_eq!(
            parse(&format!(
                r#"{{"type":"ping","x":{}{}}}"#,
                "[".repeat(31),
                "]".repeat(31)
            )),
            Ok(ClientFrame::Ping)
        );
    }

    #[test]
    fn simd_json_and_serde_json_agree() {
        let long_room = format!(r#"{{"type":"join_room","roomId":"{}"}}"#, "r".repeat(128));
        let inputs = [
            r#"{"type":"message","roomId":"general","content":"Hello everyone!","clientMsgId":"c-1"}"#,
            r#"{"type":"message","content":"tab\tquote\" \u00e9 \ud83d\ude00"}"#,
            r#"{"type":"message","content":"   "}"#,
            r#"{"type":"message","content":1}"#,
            r#"{"type":"message"}"#,
            r#"{"type":"join_room","roomId":"dev","since":"01HQZX3Y7K8M9N0P1Q2R3S4T5V"}"#,
            r#"{"type":"join_room","roomId":"dev","since":"zz"}"#,
            r#"{"type":"leave_room","roomId":"a:b.c-d_e"}"#,
            r#"{"type":"leave_room","roomId":"a b"}"#,
            r#"{"type":"typing","isTyping":true,"roomId":null}"#,
            r#"{"type":"typing","isTyping":null}"#,
            r#"{"type":"history","roomId":"r","limit":500}"#,
            r#"{"type":"history","roomId":"r","limit":0}"#,
            r#"{"type":"history","roomId":"r","limit":-3}"#,
            r#"{"type":"history","roomId":"r","limit":2.5}"#,
            r#"{"type":"ping","nested":{"a":[{"b":[]}]}}"#,
            r#"{"type":"nope"}"#,
            r#"{}"#,
            r#"[]"#,
            r#"{"type":"ping""#,
            r#"{"type":"ping"}}"#,
            r#"{"type":"ping","type":"ping"}"#,
            "",
            long_room.as_str(),
        ];
        for input in inputs {
            let mut buf = input.as_bytes().to_vec();
            let simd = parse_client_frame_simd(&mut buf).map(into_owned);
            let serde = parse_client_frame_serde_json(input.as_bytes()).map(into_owned);
            let mut buf = input.as_bytes().to_vec();
            let chosen = parse_client_frame(&mut buf).map(into_owned);
            match (&chosen, &serde) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "size dispatch: {input}"),
                (Err(_), Err(_)) => {}
                _ => panic!("size dispatch disagrees on {input}: {chosen:?} vs {serde:?}"),
            }
            match (&simd, &serde) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{input}"),
                // Parser errors word their detail differently; compare the category.
                (Err(a), Err(b)) if a.0.starts_with("invalid JSON") => {
                    assert!(b.0.starts_with("invalid JSON"), "{input}: {a} vs {b}")
                }
                (Err(a), Err(b)) => assert_eq!(a, b, "{input}"),
                _ => panic!("{input}: simd-json {simd:?}, serde_json {serde:?}"),
            }
        }
    }

    #[test]
    fn room_id_validation() {
        assert!(valid_room_id("lobby"));
        assert!(valid_room_id("a"));
        assert!(valid_room_id("A-z_0.9:x"));
        for p in ["_", "-", ".", ":"] {
            assert!(valid_room_id(&format!("room{p}1")), "{p}");
            assert!(valid_room_id(p), "{p}");
        }
        assert!(valid_room_id(&"x".repeat(128)));
        assert!(!valid_room_id(&"x".repeat(129)));
        assert!(!valid_room_id(""));
        assert!(!valid_room_id("a b"));
        assert!(!valid_room_id("a/b"));
        assert!(!valid_room_id("café"));
        assert!(!valid_room_id("ñ"));
        assert!(!valid_room_id("комната"));
        assert!(!valid_room_id("a\0"));
        assert!(!valid_room_id("a\n"));
        assert!(!valid_room_id("#general"));
        assert!(valid_room_id(DEFAULT_ROOM));
    }

    #[test]
    fn message_id_parsing() {
        let parsed = parse_message_id(ID_A).unwrap();
        assert_eq!(parsed.to_string(), ID_A);
        assert_eq!(
            parse_message_id(&ID_A.to_ascii_lowercase()),
            Some(parsed),
            "lowercase is the same id"
        );
        assert_eq!(parse_message_id(""), None);
        assert_eq!(parse_message_id(&ID_A[..25]), None);
        assert_eq!(parse_message_id("01HQZX3Y7K8M9N0P1Q2R3S4T5U"), None); // U is not base32
        assert_eq!(parse_message_id("81HQZX3Y7K8M9N0P1Q2R3S4T5V"), None); // over 128 bits
        assert_eq!(
            parse_message_id("7ZZZZZZZZZZZZZZZZZZZZZZZZZ").map(|u| u.0),
            Some(u128::MAX)
        );
        assert!(parse_message_id(ID_A) < parse_message_id(ID_B));
    }

    #[test]
    fn error_codes() {
        let names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "invalid_message",
                "not_in_room",
                "message_too_long",
                "message_blocked",
                "rate_limited",
                "room_limit",
                "unavailable",
                "internal",
                "invalid_token",
                "forbidden"
            ]
        );
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
            assert_eq!(code.to_string(), code.as_str());
        }
    }

    #[test]
    fn message_deleted_frame() {
        let json = encode_message_deleted("general", id(ID_A));
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "message_deleted", "roomId": "general", "messageId": ID_A})
        );
    }

    fn sample_message() -> ChatMessage {
        ChatMessage {
            id: id(ID_A),
            room_id: "general".into(),
            user_id: "user-456".into(),
            username: "john_doe".into(),
            content: "Hello everyone!".to_owned(),
            timestamp_ms: 1_704_110_400_123,
        }
    }

    fn decode(payload: &[u8]) -> ServerFrame {
        serde_json::from_slice(payload)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(payload)))
    }

    #[test]
    fn encodes_message() {
        let payload = encode_message(&sample_message());
        assert_eq!(
            std::str::from_utf8(&payload).unwrap(),
            format!(
                r#"{{"type":"message","messageId":"{ID_A}","userId":"user-456","username":"john_doe","roomId":"general","content":"Hello everyone!","timestamp":"2024-01-01T12:00:00.123Z"}}"#
            )
        );
        assert_eq!(
            decode(&payload),
            ServerFrame::Message(ServerMessage {
                message_id: id(ID_A),
                user_id: "user-456".to_owned(),
                username: "john_doe".to_owned(),
                room_id: "general".to_owned(),
                content: "Hello everyone!".to_owned(),
                timestamp: "2024-01-01T12:00:00.123Z".to_owned(),
            })
        );
    }

    #[test]
    fn escapes_content() {
        let mut m = sample_message();
        m.content = "a \"quote\"\nnew line\t\\ é 😀 \u{1}</script>".to_owned();
        m.username = "Zoë \"Z\"".into();
        let payload = encode_message(&m);
        let text = std::str::from_utf8(&payload).unwrap();
        assert!(
            text.contains(r#""content":"a \"quote\"\nnew line\t\\ é 😀 \u0001</script>""#),
            "{text}"
        );
        assert!(text.contains(r#""username":"Zoë \"Z\"""#), "{text}");
        match decode(&payload) {
            ServerFrame::Message(sm) => {
                assert_eq!(sm.content, m.content);
                assert_eq!(sm.username, "Zoë \"Z\"");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn encodes_ack() {
        let payload = encode_ack("c-1", id(ID_B), "general");
        assert_eq!(
            std::str::from_utf8(&payload).unwrap(),
            format!(
                r#"{{"type":"ack","clientMsgId":"c-1","messageId":"{ID_B}","roomId":"general"}}"#
            )
        );
        assert_eq!(
            decode(&payload),
            ServerFrame::Ack {
                client_msg_id: "c-1".to_owned(),
                message_id: id(ID_B),
                room_id: "general".to_owned(),
            }
        );
    }

    #[test]
    fn encodes_presence() {
        let payload = encode_presence("user-456", true, "general");
        assert_eq!(
            payload,
            br#"{"type":"presence","userId":"user-456","status":"online","roomId":"general"}"#
        );
        assert_eq!(
            decode(&encode_presence("u", false, "r")),
            ServerFrame::Presence {
                user_id: "u".to_owned(),
                status: PresenceStatus::Offline,
                room_id: "r".to_owned(),
            }
        );
        assert_eq!(PresenceStatus::Offline.as_str(), "offline");
    }

    #[test]
    fn encodes_room_joined_and_left() {
        let joined = encode_room_joined("development", 5, None);
        assert_eq!(
            joined,
            br#"{"type":"room_joined","roomId":"development","memberCount":5}"#
        );
        assert_eq!(
            decode(&joined),
            ServerFrame::RoomJoined {
                room_id: "development".to_owned(),
                member_count: 5,
                recovered: None,
            }
        );
        let recovered = encode_room_joined("development", 5, Some(false));
        assert_eq!(
            recovered,
            br#"{"type":"room_joined","roomId":"development","memberCount":5,"recovered":false}"#
        );
        assert_eq!(
            decode(&recovered),
            ServerFrame::RoomJoined {
                room_id: "development".to_owned(),
                member_count: 5,
                recovered: Some(false),
            }
        );
        let left = encode_room_left("development");
        assert_eq!(left, br#"{"type":"room_left","roomId":"development"}"#);
        assert_eq!(
            decode(&left),
            ServerFrame::RoomLeft {
                room_id: "development".to_owned()
            }
        );
    }

    #[test]
    fn encodes_typing_indicator() {
        let payload = encode_typing("user-789", "jane", "general", true);
        assert_eq!(
            payload,
            br#"{"type":"typing_indicator","userId":"user-789","username":"jane","roomId":"general","isTyping":true}"#
        );
        assert_eq!(
            decode(&encode_typing("u", "n", "r", false)),
            ServerFrame::TypingIndicator {
                user_id: "u".to_owned(),
                username: Some("n".to_owned()),
                room_id: "r".to_owned(),
                is_typing: false,
            }
        );
        // Frames from servers without the extra field decode too.
        assert_eq!(
            decode(br#"{"type":"typing_indicator","userId":"u","roomId":"r","isTyping":true}"#),
            ServerFrame::TypingIndicator {
                user_id: "u".to_owned(),
                username: None,
                room_id: "r".to_owned(),
                is_typing: true,
            }
        );
    }

    #[test]
    fn encodes_pong() {
        assert_eq!(encode_pong(), br#"{"type":"pong"}"#);
        assert_eq!(decode(&encode_pong()), ServerFrame::Pong);
    }

    #[test]
    fn encodes_refreshed() {
        assert_eq!(
            encode_refreshed(Some(1_800_000_000)),
            br#"{"type":"refreshed","exp":1800000000}"#
        );
        assert_eq!(
            encode_refreshed(None),
            br#"{"type":"refreshed","exp":null}"#
        );
        assert_eq!(
            decode(&encode_refreshed(Some(7))),
            ServerFrame::Refreshed { exp: Some(7) }
        );
        assert_eq!(
            decode(&encode_refreshed(None)),
            ServerFrame::Refreshed { exp: None }
        );
    }

    #[test]
    fn encodes_errors() {
        let limited = encode_error(ErrorCode::RateLimited, "slow down", Some(1200));
        assert_eq!(
            limited,
            br#"{"type":"error","code":"rate_limited","message":"slow down","retryAfterMs":1200}"#
        );
        assert_eq!(
            decode(&limited),
            ServerFrame::Error {
                code: ErrorCode::RateLimited,
                message: "slow down".to_owned(),
                retry_after_ms: Some(1200),
            }
        );
        let invalid = encode_error(ErrorCode::InvalidMessage, "missing field `type`", None);
        assert_eq!(
            invalid,
            br#"{"type":"error","code":"invalid_message","message":"missing field `type`"}"#
        );
        for code in ErrorCode::ALL {
            match decode(&encode_error(code, "m", None)) {
                ServerFrame::Error {
                    code: got,
                    retry_after_ms: None,
                    ..
                } => assert_eq!(got, code),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn history_frame_is_cut_to_fit_and_says_so() {
        let payloads: Vec<bytes::Bytes> = (0..10u64)
            .map(|n| {
                let mut m = sample_message();
                m.id = ulid::Ulid::from_parts(1_700_000_000_000 + n, 0);
                m.content = "x".repeat(1000);
                bytes::Bytes::from(encode_message(&m))
            })
            .collect();
        let each = payloads[0].len();
        let ids = |payload: &[u8]| -> (Vec<MessageId>, bool) {
            match decode(payload) {
                ServerFrame::History { messages, more, .. } => {
                    (messages.iter().map(|m| m.message_id).collect(), more)
                }
                other => panic!("not a history frame: {other:?}"),
            }
        };
        let all: Vec<MessageId> = (0..10u64)
            .map(|n| ulid::Ulid::from_parts(1_700_000_000_000 + n, 0))
            .collect();
        // Everything fits: all ten, more false.
        let (whole, kept) = encode_history_frame("general", &payloads, true, 1 << 20);
        assert_eq!(kept, 10);
        assert_eq!(ids(&whole), (all.clone(), false));
        // Room for three and a half: the newest three without `after`...
        let (cut, kept) = encode_history_frame("general", &payloads, true, 100 + each * 7 / 2);
        assert_eq!(kept, 3);
        assert_eq!(ids(&cut), (all[7..].to_vec(), true));
        assert!(cut.len() + MAX_WS_HEADER <= 100 + each * 7 / 2);
        // ...the oldest three with it.
        let (cut, kept) = encode_history_frame("general", &payloads, false, 100 + each * 7 / 2);
        assert_eq!(kept, 3);
        assert_eq!(ids(&cut), (all[..3].to_vec(), true));
        // Never fewer than one, even when one does not fit.
        let (one, kept) = encode_history_frame("general", &payloads, true, 10);
        assert_eq!(kept, 1);
        assert_eq!(ids(&one), (all[9..].to_vec(), true));
        // An empty page.
        let (empty, kept) = encode_history_frame("general", &[], true, 10);
        assert_eq!(kept, 0);
        assert_eq!(
            empty,
            br#"{"type":"history","roomId":"general","messages":[],"more":false}"#
        );
    }

    #[test]
    fn history_splices_messages_verbatim() {
        let mut second = sample_message();
        second.id = id(ID_B);
        second.content = "second \"one\"".to_owned();
        let payloads = [encode_message(&sample_message()), encode_message(&second)];

        let empty = encode_history("general", std::iter::empty(), true);
        assert_eq!(
            empty,
            br#"{"type":"history","roomId":"general","messages":[]}"#
        );
        assert_eq!(
            decode(&empty),
            ServerFrame::History {
                room_id: "general".to_owned(),
                messages: vec![],
                more: false,
            }
        );

        let one = encode_history("general", [payloads[0].as_slice()], false);
        let expected = format!(
            r#"{{"roomId":"general","messages":[{}]}}"#,
            std::str::from_utf8(&payloads[0]).unwrap()
        );
        assert_eq!(std::str::from_utf8(&one).unwrap(), expected);

        let three = encode_history(
            "general",
            [&payloads[0], &payloads[1], &payloads[0]].map(|p| p.as_slice()),
            true,
        );
        let frame = decode(&three);
        let ServerFrame::History {
            room_id, messages, ..
        } = frame
        else {
            panic!("not a history frame: {frame:?}");
        };
        assert_eq!(room_id, "general");
        let ids: Vec<MessageId> = messages.iter().map(|m| m.message_id).collect();
        assert_eq!(ids, [id(ID_A), id(ID_B), id(ID_A)]);
        assert_eq!(messages[1].content, "second \"one\"");

        let page: HistoryPage =
            serde_json::from_slice(&encode_history("r\"x", [payloads[1].as_slice()], false))
                .unwrap();
        assert_eq!(page.room_id, "r\"x");
        assert_eq!(page.messages.len(), 1);
        assert_eq!(page.messages[0].message_id, id(ID_B));
    }

    #[test]
    fn timestamps() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_timestamp(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(
            format_timestamp(1_704_110_400_123),
            "2024-01-01T12:00:00.123Z"
        );
        assert_eq!(
            format_timestamp(1_709_251_199_999),
            "2024-02-29T23:59:59.999Z"
        );
        assert_eq!(
            format_timestamp(1_709_251_200_000),
            "2024-03-01T00:00:00.000Z"
        );
        assert_eq!(
            format_timestamp(951_868_799_000),
            "2000-02-29T23:59:59.000Z"
        );
        assert_eq!(
            format_timestamp(4_102_444_800_000),
            "2100-01-01T00:00:00.000Z"
        );
        // 2100 is not a leap year: February 28th is followed by March 1st.
        assert_eq!(
            format_timestamp(4_107_542_399_999),
            "2100-02-28T23:59:59.999Z"
        );
        assert_eq!(
            format_timestamp(4_107_542_400_000),
            "2100-03-01T00:00:00.000Z"
        );
        assert_eq!(
            format_timestamp(MAX_TIMESTAMP_MS),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(format_timestamp(u64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
