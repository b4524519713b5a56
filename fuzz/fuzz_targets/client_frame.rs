//! The client-frame parser (`chatd::protocol::parse_client_frame`) on the
//! arbitrary payload of a text message.
//!
//! Input: the payload as the WebSocket decoder hands it over, so UTF-8.
//!
//! Invariants checked beyond "no panic":
//! - both JSON parsers (simd-json above `SIMD_JSON_MIN_BYTES`, serde_json
//!   below) accept and refuse the same frames, and agree on what an accepted
//!   frame says: which one runs depends only on the frame's length, so a
//!   disagreement would make the same frame mean different things when
//!   padded with spaces;
//! - an accepted frame obeys the contract's rules (room ids, non-blank
//!   content, `clientMsgId` length, history `limit` range);
//! - an accepted frame re-encodes to JSON that parses back to the same frame.
#![no_main]

use chatd::protocol::{
    parse_client_frame, parse_client_frame_serde_json, parse_client_frame_simd, valid_room_id,
    ClientFrame, HISTORY_MAX_LIMIT, MAX_CLIENT_MSG_ID_LEN,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

/// Checks the per-type rules of contract section 3 on an accepted frame.
fn check_rules(frame: &ClientFrame<'_>) {
    match frame {
        ClientFrame::Message {
            room_id,
            content,
            client_msg_id,
        } => {
            assert!(room_id.as_deref().is_none_or(valid_room_id));
            assert!(!content.chars().all(char::is_whitespace), "blank content");
            if let Some(id) = client_msg_id {
                assert!((1..=MAX_CLIENT_MSG_ID_LEN).contains(&id.len()));
            }
        }
        ClientFrame::JoinRoom { room_id, .. } | ClientFrame::LeaveRoom { room_id } => {
            assert!(valid_room_id(room_id));
        }
        ClientFrame::Typing { room_id, .. } => {
            assert!(room_id.as_deref().is_none_or(valid_room_id));
        }
        ClientFrame::History { room_id, limit, .. } => {
            assert!(valid_room_id(room_id));
            assert!((1..=HISTORY_MAX_LIMIT).contains(limit), "limit {limit}");
        }
        ClientFrame::Ping => {}
        // Frame types added later are held to "no panic" and the parsers'
        // agreement only, until their rules are written here.
        #[allow(unreachable_patterns)]
        _ => {}
    }
}

/// The frame as a client would write it; `None` for a type this target does
/// not know how to write.
fn encode(frame: &ClientFrame<'_>) -> Option<Vec<u8>> {
    let mut out = Map::new();
    let mut put = |key: &str, value: Value| {
        out.insert(key.to_owned(), value);
    };
    match frame {
        ClientFrame::Message {
            room_id,
            content,
            client_msg_id,
        } => {
            put("type", json!("message"));
            put("content", json!(content));
            if let Some(room) = room_id {
                put("roomId", json!(room));
            }
            if let Some(id) = client_msg_id {
                put("clientMsgId", json!(id));
            }
        }
        ClientFrame::JoinRoom { room_id, since } => {
            put("type", json!("join_room"));
            put("roomId", json!(room_id));
            if let Some(since) = since {
                put("since", json!(since.to_string()));
            }
        }
        ClientFrame::LeaveRoom { room_id } => {
            put("type", json!("leave_room"));
            put("roomId", json!(room_id));
        }
        ClientFrame::Typing { room_id, is_typing } => {
            put("type", json!("typing"));
            put("isTyping", json!(is_typing));
            if let Some(room) = room_id {
                put("roomId", json!(room));
            }
        }
        ClientFrame::History {
            room_id,
            before,
            after,
            limit,
        } => {
            put("type", json!("history"));
            put("roomId", json!(room_id));
            put("limit", json!(limit));
            if let Some(before) = before {
                put("before", json!(before.to_string()));
            }
            if let Some(after) = after {
                put("after", json!(after.to_string()));
            }
        }
        ClientFrame::Ping => put("type", json!("ping")),
        #[allow(unreachable_patterns)]
        _ => return None,
    }
    Some(serde_json::to_vec(&Value::Object(out)).expect("a JSON value serializes"))
}

fuzz_target!(|data: &[u8]| {
    // The WebSocket decoder refuses a text message that is not UTF-8 (close
    // 1007) before it reaches the parser, so only UTF-8 is worth parsing;
    // on other bytes serde_json, which does not check the strings it skips,
    // and simd-json, which checks the whole input, legitimately differ.
    if std::str::from_utf8(data).is_err() {
        return;
    }
    let mut buf = data.to_vec();
    let chosen = parse_client_frame(&mut buf).map(ClientFrame::into_owned);
    let serde = parse_client_frame_serde_json(data).map(ClientFrame::into_owned);
    let mut buf = data.to_vec();
    let simd = parse_client_frame_simd(&mut buf).map(ClientFrame::into_owned);

    match (&serde, &simd) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the parsers read the frame differently"),
        (Err(_), Err(_)) => {}
        _ => panic!("the parsers disagree: serde_json {serde:?}, simd-json {simd:?}"),
    }
    assert_eq!(chosen.is_ok(), serde.is_ok());

    let Ok(frame) = chosen else {
        return;
    };
    check_rules(&frame);
    if let Some(json) = encode(&frame) {
        let mut buf = json.clone();
        let again = parse_client_frame(&mut buf).map(ClientFrame::into_owned);
        assert_eq!(
            again.as_ref(),
            Ok(&frame),
            "re-encoded as {}",
            String::from_utf8_lossy(&json)
        );
    }
});
