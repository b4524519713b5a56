//! What instances publish to each other on a room's Redis channel.
//!
//! Every payload starts with a kind byte and the 16-character id of the
//! instance that published it, so an instance can tell its own frames:
//!
//! - `m` + instance + message id (26 characters, written by the sequencing
//!   script) + token (16 hex digits, the origin's in-flight key) + JSON
//!   `{"u":userId,"n":username,"c":content}`: a chat message, already
//!   moderated. Each instance builds its `message` frame from these fields.
//! - `t` + instance + the `typing_indicator` frame's JSON.
//! - `p` + instance + the `presence` frame's JSON.
//! - `o` + instance + JSON [`Operator`]: an operator API action (on the
//!   operator channel, not a room's).
//!
//! The room is the channel's, not repeated here. Pure encoding and decoding:
//! no I/O.

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::shard::FrameKind;

/// Length of an instance id (see `keys::instance_id`).
pub const INSTANCE_LEN: usize = 16;
/// Length of the in-flight token.
const TOKEN_LEN: usize = 16;

/// Fields of a chat message that cross instances.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Body<'a> {
    /// Author's user id (short key: the body crosses every instance).
    #[serde(borrow)]
    u: std::borrow::Cow<'a, str>,
    /// Author's display name, sent so receivers need no lookup.
    #[serde(borrow)]
    n: std::borrow::Cow<'a, str>,
    /// Content after moderation.
    #[serde(borrow)]
    c: std::borrow::Cow<'a, str>,
}

/// The two parts of a message envelope around the id the script inserts:
/// `head` is `m` + instance, `tail` is token + JSON body.
pub fn message_parts(
    instance: &str,
    token: u64,
    user_id: &str,
    username: &str,
    content: &str,
) -> (Vec<u8>, Vec<u8>) {
    debug_assert_eq!(instance.len(), INSTANCE_LEN);
    let mut head = Vec::with_capacity(1 + INSTANCE_LEN);
    head.push(b'm');
    head.extend_from_slice(instance.as_bytes());
    let mut tail = Vec::with_capacity(TOKEN_LEN + 32 + user_id.len() + content.len());
    tail.extend_from_slice(format!("{token:016x}").as_bytes());
    let body = Body {
        u: user_id.into(),
        n: username.into(),
        c: content.into(),
    };
    // Writing strings into a Vec cannot fail.
    serde_json::to_writer(&mut tail, &body).expect("strings always serialize");
    (head, tail)
}

/// A typing or presence frame for other instances.
pub fn relay(instance: &str, kind: FrameKind, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + INSTANCE_LEN + json.len());
    out.push(match kind {
        FrameKind::Typing => b't',
        FrameKind::Presence | FrameKind::Message => b'p',
    });
    out.extend_from_slice(instance.as_bytes());
    out.extend_from_slice(json);
    out
}

/// An operator API action other instances carry out too.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Operator {
    /// Message `i` of room `r` was deleted.
    Delete {
        /// Room id.
        r: String,
        /// Message id (26 characters).
        i: String,
    },
    /// User `u` is banned until `t` (ms since the Unix epoch), or no longer
    /// banned (`t` absent).
    Ban {
        /// User id.
        u: String,
        /// The ban's end; None: lifted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        t: Option<u64>,
    },
    /// User `u` was disconnected.
    Disconnect {
        /// User id.
        u: String,
    },
}

/// An operator action for other instances.
pub fn operator(instance: &str, action: &Operator) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + INSTANCE_LEN + 64);
    out.push(b'o');
    out.extend_from_slice(instance.as_bytes());
    // Strings, numbers and a ULID (a string) always serialize.
    serde_json::to_writer(&mut out, action).expect("operator actions serialize");
    out
}

/// Decodes a payload of the operator channel: the publishing instance and
/// the action.
pub fn decode_operator(payload: &[u8]) -> Result<(&str, Operator), Malformed> {
    let (&kind, rest) = payload.split_first().ok_or(Malformed("empty"))?;
    if kind != b'o' {
        return Err(Malformed("kind"));
    }
    if rest.len() < INSTANCE_LEN {
        return Err(Malformed("short"));
    }
    let (instance, json) = rest.split_at(INSTANCE_LEN);
    let instance = std::str::from_utf8(instance).map_err(|_| Malformed("instance"))?;
    let action = serde_json::from_slice(json).map_err(|_| Malformed("operator action"))?;
    Ok((instance, action))
}

/// A decoded payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Envelope<'a> {
    /// A sequenced chat message.
    Message {
        /// Publishing instance: equal to ours means the copy of our own publish.
        instance: &'a str,
        /// Id assigned by the sequencing script.
        id: Ulid,
        /// The origin's in-flight key (meaningless elsewhere).
        token: u64,
        /// Author's user id.
        user_id: String,
        /// Author's display name.
        username: String,
        /// Content after moderation.
        content: String,
    },
    /// A typing or presence frame, ready to send.
    Relay {
        /// Publishing instance: equal to ours means it was already delivered locally (skipped).
        instance: &'a str,
        /// Typing or presence.
        kind: FrameKind,
        /// The frame's JSON.
        json: &'a [u8],
    },
}

/// Why a payload was not understood (another version, or not ours).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed envelope: {0}")]
pub struct Malformed(&'static str);

/// Decodes a payload received on a room channel.
pub fn decode(payload: &[u8]) -> Result<Envelope<'_>, Malformed> {
    let (&kind, rest) = payload.split_first().ok_or(Malformed("empty"))?;
    if rest.len() < INSTANCE_LEN {
        return Err(Malformed("short"));
    }
    let (instance, rest) = rest.split_at(INSTANCE_LEN);
    let instance = std::str::from_utf8(instance).map_err(|_| Malformed("instance"))?;
    match kind {
        b'm' => {
            if rest.len() < ulid::ULID_LEN + TOKEN_LEN {
                return Err(Malformed("short message"));
            }
            let (id, rest) = rest.split_at(ulid::ULID_LEN);
            let (token, json) = rest.split_at(TOKEN_LEN);
            let id = std::str::from_utf8(id)
                .ok()
                .and_then(|s| Ulid::from_string(s).ok())
                .ok_or(Malformed("id"))?;
            let token = std::str::from_utf8(token)
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or(Malformed("token"))?;
            let body: Body<'_> = serde_json::from_slice(json).map_err(|_| Malformed("body"))?;
            Ok(Envelope::Message {
                instance,
                id,
                token,
                user_id: body.u.into_owned(),
                username: body.n.into_owned(),
                content: body.c.into_owned(),
            })
        }
        b't' | b'p' => Ok(Envelope::Relay {
            instance,
            kind: if kind == b't' {
                FrameKind::Typing
            } else {
                FrameKind::Presence
            },
            json: rest,
        }),
        _ => Err(Malformed("kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INST: &str = "0123456789abcdef";

    #[test]
    fn message_round_trip_with_the_scripts_id() {
        let (head, tail) = message_parts(INST, 42, "u-1", "Ann \"A\"", "héllo\n{}");
        let id = Ulid::from_string("01JD0000000000000000000000").unwrap();
        // What the script publishes: head, id, tail.
        let mut payload = head.clone();
        payload.extend_from_slice(id.to_string().as_bytes());
        payload.extend_from_slice(&tail);
        assert_eq!(
            decode(&payload).unwrap(),
            Envelope::Message {
                instance: INST,
                id,
                token: 42,
                user_id: "u-1".into(),
                username: "Ann \"A\"".into(),
                content: "héllo\n{}".into(),
            }
        );
    }

    #[test]
    fn relays_keep_their_json() {
        let p = relay(INST, FrameKind::Typing, br#"{"type":"typing_indicator"}"#);
        assert_eq!(
            decode(&p).unwrap(),
            Envelope::Relay {
                instance: INST,
                kind: FrameKind::Typing,
                json: br#"{"type":"typing_indicator"}"#,
            }
        );
        let p = relay(INST, FrameKind::Presence, b"{}");
        assert!(matches!(
            decode(&p).unwrap(),
            Envelope::Relay {
                kind: FrameKind::Presence,
                ..
            }
        ));
    }

    #[test]
    fn operator_actions_round_trip() {
        let id = Ulid::from_string("01JD0000000000000000000000").unwrap();
        for action in [
            Operator::Delete {
                r: "general".into(),
                i: id.to_string(),
            },
            Operator::Ban {
                u: "eve".into(),
                t: Some(1_800_000_000_000),
            },
            Operator::Ban {
                u: "eve".into(),
                t: None,
            },
            Operator::Disconnect { u: "bob".into() },
        ] {
            let payload = operator(INST, &action);
            assert_eq!(decode_operator(&payload), Ok((INST, action)));
        }
        assert_eq!(
            decode_operator(b"p0123456789abcdef{}"),
            Err(Malformed("kind"))
        );
        assert_eq!(
            decode_operator(b"o0123456789abcdef{\"k\":\"nuke\"}"),
            Err(Malformed("operator action"))
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(decode(b""), Err(Malformed("empty")));
        assert_eq!(decode(b"m0123"), Err(Malformed("short")));
        assert_eq!(decode(b"x0123456789abcdef{}"), Err(Malformed("kind")));
        let mut p = b"m0123456789abcdef".to_vec();
        p.extend_from_slice(b"NOT-A-ULID-AT-ALL-26-CHARS0000000000000000{}");
        assert_eq!(decode(&p), Err(Malformed("id")));
    }
}
