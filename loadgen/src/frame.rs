//! The few protocol frames loadgen reads and writes (contract sections 3 and 4).
//!
//! Inbound frames are parsed into borrowed fields only: unknown fields and unknown frame
//! types are skipped without allocating, which keeps the receive path cheap at hundreds of
//! thousands of deliveries per second.

use std::borrow::Cow;

use serde::Deserialize;

/// The fields of a server frame that loadgen looks at.
#[derive(Debug, Deserialize)]
pub struct Inbound<'a> {
    /// Frame type: `room_joined`, `message`, `presence`, `error`, ...
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// Content of a `message` frame.
    #[serde(borrow, default)]
    pub content: Option<Cow<'a, str>>,
    /// Code of an `error` frame.
    #[serde(borrow, default)]
    pub code: Option<Cow<'a, str>>,
}

/// Parses a text frame; `None` if it is not a JSON object with a string `type`.
pub fn parse(text: &str) -> Option<Inbound<'_>> {
    serde_json::from_str(text).ok()
}

/// Builds outbound `message` frames for one room.
#[derive(Clone, Debug)]
pub struct MessageFrames {
    /// `{"type":"message","roomId":"<room>","content":"` with the room JSON-escaped.
    head: String,
}

impl MessageFrames {
    /// Frames addressed to `room`.
    pub fn new(room: &str) -> Self {
        let room = serde_json::to_string(room).expect("a string serializes");
        MessageFrames {
            head: format!(r#"{{"type":"message","roomId":{room},"content":""#),
        }
    }

    /// The frame text for `content`, which must need no JSON escaping (loadgen content is
    /// digits, letters, spaces and dots; see `content::encode`).
    pub fn build(&self, content: &str) -> String {
        debug_assert!(!content.contains(['"', '\\']) && content.is_ascii());
        let mut s = String::with_capacity(self.head.len() + content.len() + 2);
        s.push_str(&self.head);
        s.push_str(content);
        s.push_str("\"}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_fields_and_ignores_the_rest() {
        let f = parse(
            r#"{"type":"message","messageId":"01J","userId":"u-1","username":"u-1",
                "roomId":"lg-r0","content":"lg 00000001 0 5 99 ..","timestamp":"x","extra":[1,{"a":2}]}"#,
        )
        .unwrap();
        assert_eq!(f.kind, "message");
        assert_eq!(f.content.as_deref(), Some("lg 00000001 0 5 99 .."));
        assert!(f.code.is_none());

        let f =
            parse(r#"{"type":"error","code":"rate_limited","message":"slow","retryAfterMs":1200}"#)
                .unwrap();
        assert_eq!(f.kind, "error");
        assert_eq!(f.code.as_deref(), Some("rate_limited"));

        let f = parse(r#"{"type":"brand_new_thing","whatever":true}"#).unwrap();
        assert_eq!(f.kind, "brand_new_thing");

        assert!(parse("not json").is_none());
        assert!(parse(r#"{"no_type":1}"#).is_none());
        assert!(parse(r#"{"type":5}"#).is_none());
    }

    #[test]
    fn builds_message_frames() {
        let f = MessageFrames::new("lg-r3");
        let text = f.build("lg 00000001 0 1 2 ...");
        assert_eq!(
            text,
            r#"{"type":"message","roomId":"lg-r3","content":"lg 00000001 0 1 2 ..."}"#
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["content"], "lg 00000001 0 1 2 ...");
    }
}
