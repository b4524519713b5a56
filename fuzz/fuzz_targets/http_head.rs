//! The HTTP request head parser (`chatd::http::parse_request`) on arbitrary
//! bytes, as they arrive from an unauthenticated socket, plus the helpers the
//! server runs on the parsed head (`query_param`, `bearer_token`).
//!
//! Invariants checked beyond "no panic":
//! - a complete head lies inside the buffer, within `MAX_REQUEST_HEAD`, ends
//!   with a line feed, and every borrowed field lies inside it;
//! - parsing only the head's bytes gives the same request (what follows the
//!   head, a body or a pipelined request, cannot change it), and the head
//!   minus its last byte is still `Partial` (a client trickling the head byte
//!   by byte is answered only once it is complete);
//! - `Partial` is only returned below `MAX_REQUEST_HEAD`, so a slowloris
//!   head cannot make the server buffer more;
//! - an upgrade is only detected with version 13; errors map to 431 or 400;
//! - a bearer token is a non-empty, blank-free part of the header.
#![no_main]

use chatd::http::{bearer_token, parse_request, query_param, HttpError, Parsed, MAX_REQUEST_HEAD};
use libfuzzer_sys::fuzz_target;

/// Whether `part` is a sub-slice of `whole` (same memory, not equal bytes).
/// An empty `part` may be a literal `""` (no query), which is fine.
fn inside(part: &str, whole: &[u8]) -> bool {
    if part.is_empty() {
        return true;
    }
    let start = whole.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    p >= start && p + part.len() <= start + whole.len()
}

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(Parsed::Complete { request, head_len }) => {
            assert!(head_len <= data.len(), "head longer than the input");
            assert!(head_len <= MAX_REQUEST_HEAD, "head over the limit accepted");
            let head = &data[..head_len];
            assert_eq!(head.last(), Some(&b'\n'), "head does not end a line");
            for field in [request.method, request.path, request.query]
                .into_iter()
                .chain(request.authorization)
                .chain(request.user_agent)
                .chain(request.websocket_key)
            {
                assert!(inside(field, head), "field {field:?} outside the head");
            }
            assert!(!request.path.contains('?'), "query left in the path");
            if request.is_websocket_upgrade {
                assert!(request.websocket_version_ok, "upgrade without version 13");
            }
            // The bytes after the head do not change what the head says.
            match parse_request(head) {
                Ok(Parsed::Complete {
                    request: again,
                    head_len: again_len,
                }) => {
                    assert_eq!(again, request, "head alone parses differently");
                    assert_eq!(again_len, head_len);
                }
                other => panic!("head alone did not parse: {other:?}"),
            }
            // One byte short of the blank line, the head is not complete yet.
            assert_eq!(
                parse_request(&head[..head_len - 1]),
                Ok(Parsed::Partial),
                "head minus its last byte is not partial"
            );
            for name in ["roomId", "token", "limit"] {
                // Decoding never fails; the value borrows or is decoded.
                let _ = query_param(request.query, name);
            }
            if let Some(authorization) = request.authorization {
                if let Some(token) = bearer_token(authorization) {
                    assert!(!token.is_empty() && !token.contains([' ', '\t']));
                    assert!(inside(token, authorization.as_bytes()));
                }
            }
        }
        Ok(Parsed::Partial) => {
            assert!(data.len() < MAX_REQUEST_HEAD, "partial at the size limit");
        }
        Err(e @ HttpError::TooLarge) => assert_eq!(e.status(), 431),
        Err(e @ HttpError::Malformed(_)) => assert_eq!(e.status(), 400),
    }
});
