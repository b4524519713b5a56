//! The HTTP/1.1 side of a connection: parsing a request head and building
//! responses.
//!
//! Every connection starts as HTTP: plain API requests (`/healthz`,
//! `/metrics`, `/api/chats/...`) are answered here, and `/ws` is upgraded to a
//! WebSocket. The parser is [`httparse`], which works on borrowed bytes, so a
//! request is parsed straight out of the caller's read buffer without copying
//! and the returned [`Request`] borrows from it. Only the handful of headers
//! the server acts on are extracted; the rest are ignored.
//!
//! Like the WebSocket codec, this module does no I/O: the connection task owns
//! the socket, feeds the bytes read so far to [`parse_request`] until it gets
//! a complete head, and writes the bytes returned by [`response`].

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// Largest request head accepted; bigger is answered 431 (also the slowloris bound on memory).
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Most headers parsed in one request head; more is answered 431 as well.
/// Real clients send far fewer, and the array lives on the stack.
const MAX_HEADERS: usize = 32;

/// The parts of a request head the server acts on, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// Request method, e.g. `GET`; routing matches it exactly.
    pub method: &'a str,
    /// Path without the query, used for routing.
    pub path: &'a str,
    /// Raw query after '?' ("" if none); decode parameters with [`query_param`].
    pub query: &'a str,
    /// `Authorization` header value, for Bearer JWT authentication.
    pub authorization: Option<&'a str>,
    /// `User-Agent` header value, kept for logging only.
    pub user_agent: Option<&'a str>,
    /// `Sec-WebSocket-Key`, from which the handshake's accept key is derived.
    pub websocket_key: Option<&'a str>,
    /// `Sec-WebSocket-Extensions`: the client's extension offers (several
    /// headers joined with ", ", as one list), for permessage-deflate.
    pub websocket_extensions: Option<Cow<'a, str>>,
    /// `Upgrade: websocket` (case-insensitive) and `Connection` contains the
    /// token "upgrade" and `Sec-WebSocket-Version: 13`: a request we can upgrade.
    pub is_websocket_upgrade: bool,
    /// `Sec-WebSocket-Version` is 13, the only version RFC 6455 defines; when
    /// false on `/ws` the client gets 426 with the version we speak.
    pub websocket_version_ok: bool,
    /// Whether the connection stays open after the response: HTTP/1.1
    /// default true unless `Connection: close`; HTTP/1.0 default false unless
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Content-Length` (0 when absent), so the caller can skip a body and
    /// find the next request on the connection.
    pub content_length: usize,
}

/// Why a request head was refused; answered with [`HttpError::status`] and
/// the connection closed, since the byte stream can no longer be trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    /// The head exceeds [`MAX_REQUEST_HEAD`] bytes or has too many headers.
    #[error("request head too large")]
    TooLarge,
    /// The bytes are not an HTTP/1.x request head we accept; says why.
    #[error("malformed request: {0}")]
    Malformed(String),
}

impl HttpError {
    /// The response status for this error: 431 or 400.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::TooLarge => 431,
            HttpError::Malformed(_) => 400,
        }
    }
}

/// Outcome of [`parse_request`] on the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole head was found.
    Complete {
        /// The parsed request, borrowing from the buffer.
        request: Request<'a>,
        /// Bytes taken by the head (through the blank line); a body or the
        /// next pipelined request starts there.
        head_len: usize,
    },
    /// The head is not complete yet: read more and parse again from the start.
    Partial,
}

/// Parses the request head at the start of `buf`.
///
/// Returns `Partial` until the blank line ending the head has arrived, and
/// `TooLarge` once `buf` holds [`MAX_REQUEST_HEAD`] bytes without one, so a
/// client trickling a never-ending head cannot make the server buffer more.
pub fn parse_request(buf: &[u8]) -> Result<Parsed<'_>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_HEAD => {
            return Err(HttpError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    // The caller's buffer may be larger than our limit; the limit still holds.
    if head_len > MAX_REQUEST_HEAD {
        return Err(HttpError::TooLarge);
    }
    // httparse sets all three once the head is complete.
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed("incomplete request line".into()));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));

    let mut request = Request {
        method,
        path,
        query,
        authorization: None,
        user_agent: None,
        websocket_key: None,
        websocket_extensions: None,
        is_websocket_upgrade: false,
        websocket_version_ok: false,
        keep_alive: false,
        content_length: 0,
    };
    // Connection tokens may be spread over several Connection headers.
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut connection_upgrade = false;
    let mut upgrade_websocket = false;
    let mut content_length: Option<usize> = None;

    for header in req.headers.iter() {
        let name = header.name;
        let value = std::str::from_utf8(header.value)
            .map_err(|_| HttpError::Malformed(format!("{name} header is not UTF-8")))?;
        if name.eq_ignore_ascii_case("authorization") {
            request.authorization.get_or_insert(value);
        } else if name.eq_ignore_ascii_case("user-agent") {
            request.user_agent.get_or_insert(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            request.websocket_key.get_or_insert(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            // Repeated headers form one list (RFC 7230 section 3.2.2).
            request.websocket_extensions = Some(match request.websocket_extensions.take() {
                None => Cow::Borrowed(value),
                Some(before) => Cow::Owned(format!("{before}, {value}")),
            });
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            request.websocket_version_ok = value.trim() == "13";
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_websocket |= has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection_close |= has_token(value, "close");
            connection_keep_alive |= has_token(value, "keep-alive");
            connection_upgrade |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("content-length") {
            let len = parse_content_length(value)?;
            // Disagreeing lengths are the classic request smuggling vector.
            if content_length.is_some_and(|previous| previous != len) {
                return Err(HttpError::Malformed("conflicting Content-Length".into()));
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // No route takes a chunked body; ignoring one would make us read
            // the body as the next request.
            return Err(HttpError::Malformed(
                "Transfer-Encoding is not supported".into(),
            ));
        }
    }

    request.content_length = content_length.unwrap_or(0);
    request.is_websocket_upgrade =
        upgrade_websocket && connection_upgrade && request.websocket_version_ok;
    request.keep_alive = match version {
        1 => !connection_close,
        _ => connection_keep_alive && !connection_close,
    };
    Ok(Parsed::Complete { request, head_len })
}

/// Whether the comma-separated header `value` lists `token` (case-insensitive).
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// A Content-Length value: decimal digits only (no sign, no spaces inside).
fn parse_content_length(value: &str) -> Result<usize, HttpError> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::Malformed("invalid Content-Length".into()));
    }
    value
        .parse()
        .map_err(|_| HttpError::Malformed("invalid Content-Length".into()))
}

/// Decodes a query component: '+' is a space, `%XX` is a byte, an invalid
/// percent sequence stays as is, and invalid UTF-8 becomes U+FFFD. Borrows
/// when there is nothing to decode, which is the common case.
fn decode_component(raw: &str) -> Cow<'_, str> {
    if raw.contains('+') {
        let spaced = raw.replace('+', " ");
        Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
    } else {
        percent_decode_str(raw).decode_utf8_lossy()
    }
}

/// Query parameter, percent-decoded ('+' is a space); first occurrence; None when absent.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| decode_component(key) == name)
        .map(|(_, value)| decode_component(value))
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
///
/// Extra spaces around the token are tolerated; a missing token, another
/// scheme, or a "token" containing spaces gives `None`.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, rest) = authorization.trim().split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    if token.is_empty() || token.contains([' ', '\t']) {
        return None;
    }
    Some(token)
}

/// A complete response with Content-Length, Content-Type, `Connection: keep-alive|close`, and extra headers.
///
/// Extra headers are written as given, so they must come from the server,
/// never from client input (a CR or LF in them would split the response).
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra_headers: &[(&str, &str)],
) -> Vec<u8> {
    debug_assert!(extra_headers
        .iter()
        .all(|(n, v)| !n.contains(['\r', '\n']) && !v.contains(['\r', '\n'])));
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\n\
         Content-Length: {}\r\n\
         Content-Type: {content_type}\r\n\
         Connection: {connection}\r\n",
        reason_phrase(status),
        body.len(),
    );
    for (name, value) in extra_headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// `{"error": message}` JSON response (message JSON-escaped via serde_json).
pub fn json_error(status: u16, message: &str, keep_alive: bool) -> Vec<u8> {
    let body = serde_json::json!({ "error": message }).to_string();
    response(status, "application/json", body.as_bytes(), keep_alive, &[])
}

/// A `204 No Content` response: no body and, as RFC 9110 requires, no
/// Content-Length.
pub fn no_content(keep_alive: bool) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    format!("HTTP/1.1 204 No Content\r\nConnection: {connection}\r\n\r\n").into_bytes()
}

/// The standard reason phrase of the statuses this server uses
/// ("Unknown" for others, which clients ignore anyway).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The complete request of a successful parse, failing the test otherwise.
    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse_request(buf) {
            Ok(Parsed::Complete { request, head_len }) => (request, head_len),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    const UPGRADE: &[u8] = b"GET /ws?roomId=general&token=abc HTTP/1.1\r\n\
        Host: localhost:8000\r\n\
        User-Agent: test-client/1.0\r\n\
        Upgrade: WebSocket\r\n\
        Connection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\
        \r\n";

    #[test]
    fn get_with_query_and_headers() {
        let buf = b"GET /api/chats/rooms/general/messages?limit=10&before=01J HTTP/1.1\r\n\
            Host: localhost\r\n\
            authorization: Bearer eyJ.abc.def\r\n\
            User-Agent: curl/8.0\r\n\
            \r\nleftover";
        let (req, head_len) = complete(buf);
        assert_eq!(head_len, buf.len() - "leftover".len());
        assert_eq!(
            req,
            Request {
                method: "GET",
                path: "/api/chats/rooms/general/messages",
                query: "limit=10&before=01J",
                authorization: Some("Bearer eyJ.abc.def"),
                user_agent: Some("curl/8.0"),
                websocket_key: None,
                websocket_extensions: None,
                is_websocket_upgrade: false,
                websocket_version_ok: false,
                keep_alive: true,
                content_length: 0,
            }
        );
    }

    #[test]
    fn websocket_extensions_are_one_list_across_headers() {
        let (req, _) = complete(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(req.websocket_extensions, None);
        let (req, _) = complete(
            b"GET /ws HTTP/1.1\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
        );
        assert_eq!(
            req.websocket_extensions.as_deref(),
            Some("permessage-deflate; client_max_window_bits")
        );
        assert!(matches!(req.websocket_extensions, Some(Cow::Borrowed(_))));
        let (req, _) = complete(
            b"GET /ws HTTP/1.1\r\nsec-websocket-extensions: x-foo\r\n\
              Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        );
        assert_eq!(
            req.websocket_extensions.as_deref(),
            Some("x-foo, permessage-deflate")
        );
    }

    #[test]
    fn path_without_query() {
        let (req, _) = complete(b"GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!(req.path, "/healthz");
        assert_eq!(req.query, "");
        let (req, _) = complete(b"GET /healthz? HTTP/1.1\r\n\r\n");
        assert_eq!(req.path, "/healthz");
        assert_eq!(req.query, "");
    }

    #[test]
    fn partial_head_is_partial() {
        assert_eq!(parse_request(b""), Ok(Parsed::Partial));
        assert_eq!(
            parse_request(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"),
            Ok(Parsed::Partial)
        );
    }

    #[test]
    fn head_split_anywhere_parses_once_complete() {
        for split in 0..UPGRADE.len() {
            assert_eq!(
                parse_request(&UPGRADE[..split]),
                Ok(Parsed::Partial),
                "prefix of {split} bytes"
            );
        }
        let (req, head_len) = complete(UPGRADE);
        assert_eq!(head_len, UPGRADE.len());
        assert_eq!(req.path, "/ws");
    }

    #[test]
    fn too_large_head_is_431() {
        let mut buf = b"GET / HTTP/1.1\r\nX-Filler: ".to_vec();
        buf.resize(MAX_REQUEST_HEAD - 1, b'a');
        // One byte short of the limit it is still worth waiting for more.
        assert_eq!(parse_request(&buf), Ok(Parsed::Partial));
        buf.push(b'a');
        let err = parse_request(&buf).unwrap_err();
        assert_eq!(err, HttpError::TooLarge);
        assert_eq!(err.status(), 431);
        // A complete head over the limit is refused too.
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_request(&buf), Err(HttpError::TooLarge));
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            buf.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&buf), Err(HttpError::TooLarge));
    }

    #[test]
    fn garbage_is_malformed_400() {
        let err = parse_request(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").unwrap_err();
        assert!(matches!(err, HttpError::Malformed(_)), "{err:?}");
        assert_eq!(err.status(), 400);
        let err = parse_request(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n").unwrap_err();
        assert!(matches!(err, HttpError::Malformed(_)), "{err:?}");
    }

    #[test]
    fn upgrade_detection_with_token_list_and_mixed_case() {
        let (req, _) = complete(UPGRADE);
        assert!(req.is_websocket_upgrade);
        assert!(req.websocket_version_ok);
        assert_eq!(req.websocket_key, Some("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(req.query, "roomId=general&token=abc");
        assert_eq!(req.user_agent, Some("test-client/1.0"));

        let lower = b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\nconnection: UPGRADE\r\n\
            sec-websocket-version: 13\r\n\r\n";
        assert!(complete(lower).0.is_websocket_upgrade);
    }

    #[test]
    fn upgrade_needs_all_three_headers() {
        let no_connection = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\
            Sec-WebSocket-Version: 13\r\n\r\n";
        assert!(!complete(no_connection).0.is_websocket_upgrade);
        let no_upgrade = b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Version: 13\r\n\r\n";
        assert!(!complete(no_upgrade).0.is_websocket_upgrade);
        // "upgrade" must be a whole token, not a substring of one.
        let substring = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgraded\r\n\
            Sec-WebSocket-Version: 13\r\n\r\n";
        assert!(!complete(substring).0.is_websocket_upgrade);
        let no_version = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let (req, _) = complete(no_version);
        assert!(!req.is_websocket_upgrade);
        assert!(!req.websocket_version_ok);
    }

    #[test]
    fn version_12_is_not_ok() {
        let buf = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\nSec-WebSocket-Version: 12\r\n\r\n";
        let (req, _) = complete(buf);
        assert!(!req.websocket_version_ok);
        assert!(!req.is_websocket_upgrade);
    }

    #[test]
    fn keep_alive_rules() {
        let cases: [(&[u8], bool); 6] = [
            (b"GET / HTTP/1.1\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
            (b"GET / HTTP/1.1\r\nConnection: Keep-Alive\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n", false),
        ];
        for (buf, expected) in cases {
            assert_eq!(
                complete(buf).0.keep_alive,
                expected,
                "{}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn content_length() {
        let (req, _) = complete(b"POST /x HTTP/1.1\r\nContent-Length: 42\r\n\r\n");
        assert_eq!(req.content_length, 42);
        assert_eq!(req.method, "POST");
        for bad in [
            &b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n"[..],
            b"POST /x HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n",
            b"POST /x HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let err = parse_request(bad).unwrap_err();
            assert!(
                matches!(err, HttpError::Malformed(_)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn query_param_decoding() {
        let q = "a=hello%20world&b=x+y&c=a%2Fb&empty=&flag&bad=100%&bad2=%zz%4&a=second";
        assert_eq!(query_param(q, "a").as_deref(), Some("hello world"));
        assert_eq!(query_param(q, "b").as_deref(), Some("x y"));
        assert_eq!(query_param(q, "c").as_deref(), Some("a/b"));
        assert_eq!(query_param(q, "empty").as_deref(), Some(""));
        assert_eq!(query_param(q, "flag").as_deref(), Some(""));
        assert_eq!(query_param(q, "bad").as_deref(), Some("100%"));
        assert_eq!(query_param(q, "bad2").as_deref(), Some("%zz%4"));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param("", "a"), None);
        // Encoded names match their decoded form.
        assert_eq!(query_param("room%49d=x", "roomId").as_deref(), Some("x"));
        // Nothing to decode: the value is borrowed, not copied.
        assert!(matches!(
            query_param("roomId=general", "roomId"),
            Some(Cow::Borrowed("general"))
        ));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token("bearer x"), Some("x"));
        assert_eq!(bearer_token("Bearer  x"), Some("x"));
        assert_eq!(bearer_token("BEARER eyJ.a.b "), Some("eyJ.a.b"));
        assert_eq!(bearer_token("Basic x"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerx"), None);
        assert_eq!(bearer_token("Bearer a b"), None);
    }

    #[test]
    fn response_bytes_exact() {
        let bytes = response(
            200,
            "text/plain",
            b"ok",
            true,
            &[("Cache-Control", "no-store")],
        );
        assert_eq!(
            bytes,
            b"HTTP/1.1 200 OK\r\n\
              Content-Length: 2\r\n\
              Content-Type: text/plain\r\n\
              Connection: keep-alive\r\n\
              Cache-Control: no-store\r\n\
              \r\n\
              ok"
        );
    }

    #[test]
    fn json_error_escapes_the_message() {
        let bytes = json_error(401, "bad \"token\"\n", false);
        let body = "{\"error\":\"bad \\\"token\\\"\\n\"}";
        let expected = format!(
            "HTTP/1.1 401 Unauthorized\r\n\
             Content-Length: {}\r\n\
             Content-Type: application/json\r\n\
             Connection: close\r\n\
             \r\n{body}",
            body.len()
        );
        assert_eq!(String::from_utf8(bytes).unwrap(), expected);
    }

    #[test]
    fn reason_phrases() {
        assert_eq!(reason_phrase(404), "Not Found");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(426), "Upgrade Required");
        assert_eq!(reason_phrase(999), "Unknown");
    }
}
