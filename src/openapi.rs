//! The API documentation, served from the binary: an OpenAPI 3.1 document at
//! `/api/chats/openapi.json` and a Swagger UI page at `/api/chats/docs`.
//!
//! The document is generated with utoipa from Rust types, so it follows the
//! code instead of being kept in step by hand:
//!
//! - The HTTP handlers are runtime code (src/runtime/) tied to no web framework, so each
//!   route answered by `runtime/routes.rs`, `runtime/server.rs` (`/ws`) or this module has a
//!   small documentation-only function in `paths` carrying its
//!   `#[utoipa::path]`; those functions are never called.
//! - Server frames come from the decoding types of `protocol.rs`
//!   ([`ServerFrame`], [`ServerMessage`], [`ErrorCode`], ...). Client frames
//!   are parsed there from one private flat struct that cannot describe the
//!   fields of each frame type, so they are described by [`ClientFrameDoc`]
//!   here; its unit tests feed its serialized examples to the real parser so
//!   the two cannot drift apart.
//! - utoipa renders a tagged enum as one schema with anonymous variants.
//!   `NameFrames` gives every variant its own component (`ServerAckFrame`,
//!   `ClientJoinRoomFrame`, ...), so that each frame of the contract can be
//!   referred to by name.
//!
//! Swagger UI must work without internet access: its files come from
//! `utoipa-swagger-ui` built with the `vendored` feature (taken from the
//! `utoipa-swagger-ui-vendored` crate and embedded at compile time, never
//! downloaded). The HTML page is our own rather than the stock `index.html`,
//! whose relative URLs would resolve outside `/api/chats/docs/` when the page
//! is opened as `/api/chats/docs`, a path the router cannot redirect.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use utoipa::openapi::schema::{ArrayItems, Discriminator, Schema};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_swagger_ui::Config;

use crate::protocol::{ErrorCode, HistoryPage, PresenceStatus, ServerFrame, ServerMessage};

/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/api/chats/openapi.json";
/// Where the Swagger UI page is served; its files live under this path too.
pub const DOCS_PATH: &str = "/api/chats/docs";

/// Name of the HTTP bearer (JWT) security scheme.
pub const BEARER_SCHEME: &str = "bearer";
/// Name of the `?token=` security scheme, accepted by `/ws` only.
pub const QUERY_TOKEN_SCHEME: &str = "queryToken";

const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// The static asset at `path`, if any: content type and bytes.
pub fn asset(path: &str) -> Option<(&'static str, Cow<'static, [u8]>)> {
    if path == OPENAPI_PATH {
        return Some((JSON, Cow::Borrowed(document())));
    }
    match path.strip_prefix(DOCS_PATH)? {
        "" | "/" | "/index.html" => Some((HTML, Cow::Borrowed(DOCS_PAGE.as_bytes()))),
        "/swagger-initializer.js" => Some((JAVASCRIPT, Cow::Borrowed(initializer()?))),
        tail => {
            let file = tail.strip_prefix('/').filter(|f| !f.is_empty())?;
            let found = utoipa_swagger_ui::serve(file, swagger_config().clone()).ok()??;
            Some((content_type(file), found.bytes))
        }
    }
}

/// The OpenAPI document as JSON, built on first use.
pub fn document() -> &'static [u8] {
    static DOCUMENT: OnceLock<Vec<u8>> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            // A tree of strings, maps and numbers always serializes.
            .expect("the OpenAPI document serializes")
            .into_bytes()
    })
}

/// The content type of a Swagger UI file, from its extension. Our own table
/// rather than the one `utoipa_swagger_ui::serve` guesses, because `asset`
/// needs a `&'static str` and the guess is an owned `String`.
fn content_type(file: &str) -> &'static str {
    match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => HTML,
        Some("js") => JAVASCRIPT,
        Some("css") => "text/css; charset=utf-8",
        Some("png") => "image/png",
        Some("json" | "map") => JSON,
        _ => "application/octet-stream",
    }
}

/// Swagger UI settings: which document to show; `validatorUrl: "none"`
/// keeps the page from sending the document to the public validator.
fn swagger_config() -> &'static Arc<Config<'static>> {
    static CONFIG: OnceLock<Arc<Config<'static>>> = OnceLock::new();
    CONFIG.get_or_init(|| Arc::new(Config::from(OPENAPI_PATH).validator_url("none")))
}

/// The script that starts Swagger UI with [`swagger_config`]. Generated once
/// because it is the only file `serve` builds per call; `None` if the
/// embedded files lack it, which the tests would catch.
fn initializer() -> Option<&'static [u8]> {
    static SCRIPT: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    SCRIPT
        .get_or_init(|| {
            utoipa_swagger_ui::serve("swagger-initializer.js", swagger_config().clone())
                .ok()
                .flatten()
                .map(|file| file.bytes.into_owned())
        })
        .as_deref()
}

/// The Swagger UI page. Every URL is absolute, so the page works both as
/// `/api/chats/docs` and `/api/chats/docs/`; nothing comes from elsewhere.
const DOCS_PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>chatd API</title>
    <link rel="stylesheet" type="text/css" href="/api/chats/docs/swagger-ui.css">
    <link rel="stylesheet" type="text/css" href="/api/chats/docs/index.css">
    <link rel="icon" type="image/png" href="/api/chats/docs/favicon-32x32.png" sizes="32x32">
    <link rel="icon" type="image/png" href="/api/chats/docs/favicon-16x16.png" sizes="16x16">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/api/chats/docs/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="/api/chats/docs/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script src="/api/chats/docs/swagger-initializer.js" charset="UTF-8"></script>
  </body>
</html>
"#;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatd",
        description = "Thread-per-core WebSocket chat server.\n\n\
            Chat happens on the `/ws` WebSocket: JSON text frames told apart by their `type` \
            field. Client frames are the `Client*Frame` schemas (any of them: `ClientFrame`), \
            server frames the `Server*Frame` schemas (any of them: `ServerFrame`). Frames may \
            carry extra fields, which clients must ignore.\n\n\
            The chat HTTP routes and `/ws` need a JWT (HS256 with the server's secret, or \
            RS256/ES256 when a public key is configured). The user id is the `sub` claim \
            (else `userId`); `exp` is checked when present."
    ),
    paths(
        paths::healthz,
        paths::metrics,
        paths::openapi_json,
        paths::docs,
        paths::room_messages,
        paths::operator_publish,
        paths::operator_delete,
        paths::operator_ban,
        paths::operator_unban,
        paths::operator_disconnect,
        paths::room_presence,
        paths::user_status,
        paths::websocket,
        paths::demo_page,
        paths::demo_script,
        paths::demo_style,
        paths::client_module,
    ),
    components(schemas(
        ClientFrameDoc,
        ServerFrame,
        ServerMessage,
        ErrorCode,
        PresenceStatus,
        HistoryPage,
        Health,
        HealthStatus,
        Backends,
        RoomPresence,
        UserStatus,
        ErrorBody,
        OperatorMessage,
        Ban,
    )),
    modifiers(&SecuritySchemes, &NameFrames),
    tags(
        (name = "chat", description = "Rooms, messages and presence over HTTP."),
        (name = "operator", description = "The operator API: tokens whose `role` claim is `admin` (or whose `roles` array contains it). Every action writes an audit record naming the admin."),
        (name = "websocket", description = "The real-time chat connection."),
        (name = "service", description = "Health and metrics."),
        (name = "docs", description = "This document and its viewer."),
        (name = "demo", description = "The demo chat page and the JavaScript client it loads."),
    )
)]
struct ApiDoc;

/// Documentation-only handlers: each carries the `#[utoipa::path]` of one
/// route. The real handlers are in `runtime/routes.rs` and `runtime/server.rs`.
#[allow(dead_code)]
mod paths {
    use utoipa::IntoParams;

    use super::{Ban, ErrorBody, Health, OperatorMessage, RoomPresence, UserStatus};
    use crate::protocol::{HistoryPage, ServerMessage, DEFAULT_ROOM, HISTORY_DEFAULT_LIMIT};

    /// Query of the history route.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    struct HistoryQuery {
        /// Page size; larger values are clamped to 200.
        #[param(default = json!(HISTORY_DEFAULT_LIMIT), minimum = 1, nullable = false)]
        limit: Option<u32>,
        /// Only messages older than this message id.
        #[param(format = "ulid", nullable = false)]
        before: Option<String>,
        /// Only messages newer than this message id.
        #[param(format = "ulid", nullable = false)]
        after: Option<String>,
    }

    /// Query of the WebSocket upgrade.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    struct UpgradeQuery {
        /// The JWT, when not sent as an `Authorization: Bearer` header.
        #[param(nullable = false)]
        token: Option<String>,
        /// The initial room.
        #[param(rename = "roomId", default = json!(DEFAULT_ROOM), pattern = "^[A-Za-z0-9_.:-]{1,128}$", nullable = false)]
        room_id: Option<String>,
        /// Replay the initial room's stored messages newer than this message
        /// id (at most 1,000) before live ones.
        #[param(format = "ulid", nullable = false)]
        since: Option<String>,
    }

    /// Health check.
    ///
    /// `200` while the service takes connections and every configured
    /// backend answers; `503` while it drains on shutdown or while a
    /// configured backend (Redis, Postgres) is down, naming it in `down`.
    #[utoipa::path(
        get,
        path = "/healthz",
        tag = "service",
        responses(
            (status = 200, description = "Serving.", body = Health,
             example = json!({"status": "ok", "cores": 2, "backends": {"redis": "disabled", "postgres": "up"}, "down": []})),
            (status = 503, description = "Draining on shutdown, or a backend is down.", body = Health,
             example = json!({"status": "degraded", "cores": 2, "backends": {"redis": "up", "postgres": "down"}, "down": ["postgres"]})),
        )
    )]
    fn healthz() {}

    /// Prometheus metrics.
    ///
    /// Open connections, messages by outcome, presence updates, errors by
    /// code, delivery latency histogram, merged over every core.
    #[utoipa::path(
        get,
        path = "/metrics",
        tag = "service",
        responses(
            (status = 200, description = "Prometheus text exposition format 0.0.4.",
             body = String, content_type = "text/plain; version=0.0.4"),
            (status = 503, description = "A core did not answer in time.", body = ErrorBody),
        )
    )]
    fn metrics() {}

    /// This OpenAPI document.
    #[utoipa::path(
        get,
        path = "/api/chats/openapi.json",
        tag = "docs",
        responses((status = 200, description = "The OpenAPI document.", body = Object)),
    )]
    fn openapi_json() {}

    /// Swagger UI for this document.
    ///
    /// Its scripts and styles are served under `/api/chats/docs/` by this
    /// service; the page needs no internet access.
    #[utoipa::path(
        get,
        path = "/api/chats/docs",
        tag = "docs",
        responses((status = 200, description = "The Swagger UI page.", body = String, content_type = "text/html")),
    )]
    fn docs() {}

    /// Stored messages of a room.
    ///
    /// Oldest first, each in the shape of the `message` frame. `before` and
    /// `after` are exclusive bounds; with neither, the latest messages.
    #[utoipa::path(
        get,
        path = "/api/chats/rooms/{roomId}/messages",
        tag = "chat",
        params(
            ("roomId" = String, Path, description = "The room: 1 to 128 letters, digits, `_`, `-`, `.` or `:`.",
             pattern = "^[A-Za-z0-9_.:-]{1,128}$", example = "general"),
            HistoryQuery,
        ),
        responses(
            (status = 200, description = "A page of messages.", body = HistoryPage),
            (status = 400, description = "Invalid `roomId`, `limit`, `before` or `after`.", body = ErrorBody),
            (status = 401, description = "Missing or invalid bearer token.", body = ErrorBody),
            (status = 503, description = "The core owning the room did not answer in time, or the store could not answer the page in full (Postgres down, or its reads shed): never a partial page.", body = ErrorBody),
        ),
        security(("bearer" = []))
    )]
    fn room_messages() {}

    /// Publish into a room as an operator.
    ///
    /// The message goes through the room like a member's: moderation,
    /// the room's order, history and every member (on every instance). The
    /// answer is its `message` frame.
    #[utoipa::path(
        post,
        path = "/api/chats/rooms/{roomId}/messages",
        tag = "operator",
        params(
            ("roomId" = String, Path, description = "The room: 1 to 128 letters, digits, `_`, `-`, `.` or `:`.",
             pattern = "^[A-Za-z0-9_.:-]{1,128}$", example = "general"),
        ),
        request_body = OperatorMessage,
        responses(
            (status = 201, description = "Published; the `message` frame the members got.", body = ServerMessage),
            (status = 400, description = "Invalid `roomId` or body: not JSON, `content` missing, blank or longer than `MAX_MESSAGE_LENGTH`, invalid `userId`.", body = ErrorBody),
            (status = 401, description = "Missing or invalid bearer token.", body = ErrorBody),
            (status = 403, description = "The token does not carry the admin role.", body = ErrorBody),
            (status = 413, description = "Body larger than 64 KiB.", body = ErrorBody),
            (status = 422, description = "Refused by moderation (`code`: `message_blocked`).", body = ErrorBody),
            (status = 503, description = "Not accepted: a backend's buffer is full, or it was not confirmed in time.", body = ErrorBody),
        ),
        security(("bearer" = []))
    )]
    fn operator_publish() {}

    /// Delete a message.
    ///
    /// Removes it from the history (memory and Postgres); the room's
    /// members (on every instance) get
    /// `{"type":"message_deleted","roomId":..,"messageId":..}`.
    #[utoipa::path(
        delete,
        path = "/api/chats/rooms/{roomId}/messages/{messageId}",
        tag = "operator",
        params(
            ("roomId" = String, Path, description = "The room: 1 to 128 letters, digits, `_`, `-`, `.` or `:`.",
             pattern = "^[A-Za-z0-9_.:-]{1,128}$", example = "general"),
            ("messageId" = String, Path, description = "The message id.", format = "ulid",
             example = "01HQZX3Y7K8M9N0P1Q2R3S4T5V"),
        ),
        responses(
            (status = 204, description = "Deleted."),
            (status = 400, description = "Invalid `roomId` or `messageId`.", body = ErrorBody),
            (status = 401, description = "Missing or invalid bearer token.", body = ErrorBody),
            (status = 403, description = "The token does not carry the admin role.", body = ErrorBody),
            (status = 404, description = "The room holds no such message.", body = ErrorBody),
            (status = 503, description = "History is unavailable (Postgres down for a message older than memory); nothing was deleted.", body = ErrorBody),
        ),
        security(("bearer" = []))
    )]
    fn operator_delete() {}

    /// Ban a user.
    ///
    /// Closes every connection of the user, on every instance, with close
    /// code 4003; until the ban ends the user's upgrades get `403` and
    /// their `message` frames an `error` of code `forbidden`. A new ban
    /// replaces the user's earlier one. Kept in Postgres (and Redis) when
    /// configured, so it outlives a restart.
    #[utoipa::path(
        post,
        path = "/api/chats/users/{userId}/ban",
        tag = "operator",
        params(
            ("userId" = String, Path, description = "The user id (the `sub` claim of the user's tokens); 1 to 128 bytes.",
             example = "user-456"),
        ),
        request_body = Ban,
        responses(
            (status = 204, description = "Banned; every core of this instance has applied it."),
            (status = 400, description = "Invalid `userId` or body (`durationSecs` missing or out of range, `reason` too long).", body = ErrorBody),
            (status = 401, description = "Missing or invalid bearer token.", body = ErrorBody),
            (status = 403, description = "The token does not carry the admin role.", body = ErrorBody),
            (status = 503, description = "Too many bans in force, or a core did not answer.", body = ErrorBody),
        ),
        security(("bearer" = []))
    )]
    fn operator_ban() {}

    /// Lift a user's ban.
    #[utoipa::path(
        delete,
        path = "/api/chats/users/{userId}/ban",
        tag = "operator",
        params(
            ("userId" = String, Path, description = "The user id; 1 to 128 bytes.", example = "user-456"),
        ),
        responses(
            (status = 204, description = "Not banned (any more)."),
            (status = 400, description = "Invalid `userId`.", body = ErrorBody),
            (status = 401, description = "Missing or invalid bearer token.", body = ErrorBody),
            (status = 403, description = "The token does not carry the admin role.", body = ErrorBody),
            (status = 503, description = "A core did not answer.", body = ErrorBody),
        ),
        security(("bearer" = []))
    )]
    fn operator_unban() {}

    /// Disconnect a user.
    ///
    /// Closes every connection of the user, on every instance, with close
    /// code 4002. The user may reconnect.
    #[utoipa::path(
        post,
        path = "/api/chats/users/{userId}/disconnect",
        tag = "operator",
        params(
            ("userId" = String, Path, description = "The user id; 1 to 128 bytes.", example = "user-456"),
        ),
        responses(
            (status = 204, description = "The closes are under way."),
            (status = 400, description = "Invalid `userId`.", body = ErrorBody),
            (status = 401, description = "Missing or invalid bearer token.", body = ErrorBody),
            (status = 403, description = "The token does not carry the admin role.", body = ErrorBody),
        ),
        security(("bearer" = []))
    )]
    fn operator_disconnect() {}

    /// Users online in a room.
    #[utoipa::path(
        get,
        path = "/api/chats/rooms/{roomId}/presence",
        tag = "chat",
        params(
            ("roomId" = String, Path, description = "The room: 1 to 128 letters, digits, `_`, `-`, `.` or `:`.",
             pattern = "^[A-Za-z0-9_.:-]{1,128}$", example = "general"),
        ),
        responses(
            (status = 200, description = "The user ids online in the room.", body = RoomPresence),
            (status = 400, description = "Invalid `roomId`.", body = ErrorBody),
            (status = 401, description = "Missing or invalid bearer token.", body = ErrorBody),
            (status = 503, description = "The core owning the room did not answer in time.", body = ErrorBody),
        ),
        security(("bearer" = []))
    )]
    fn room_presence() {}

    /// Whether a user is online.
    #[utoipa::path(
        get,
        path = "/api/chats/users/{userId}/status",
        tag = "chat",
        params(
            ("userId" = String, Path, description = "The user id (the `sub` claim of the user's tokens); 1 to 128 bytes.",
             example = "user-456"),
        ),
        responses(
            (status = 200, description = "The user's status.", body = UserStatus),
            (status = 400, description = "Invalid `userId`.", body = ErrorBody),
            (status = 401, description = "Missing or invalid bearer token.", body = ErrorBody),
            (status = 503, description = "The core owning the user did not answer in time.", body = ErrorBody),
        ),
        security(("bearer" = []))
    )]
    fn user_status() {}

    /// The chat WebSocket.
    ///
    /// A WebSocket upgrade (version 13). The token comes from `?token=` or
    /// an `Authorization: Bearer` header and is checked before the upgrade:
    /// a refused request gets a JSON error and no WebSocket.
    ///
    /// After the upgrade every frame is a JSON text frame with a `type`:
    ///
    /// - The first frame the client receives is `room_joined` for the
    ///   initial room (`ServerRoomJoinedFrame`).
    /// - Client to server (`ClientFrame`): `message`, `join_room`,
    ///   `leave_room`, `typing`, `history`, `ping`, `refresh`; see the
    ///   `Client*Frame` schemas.
    /// - Server to client (`ServerFrame`): `message`, `ack`, `presence`,
    ///   `room_joined`, `room_left`, `typing_indicator`, `history`, `pong`,
    ///   `refreshed`, `error`; see the `Server*Frame` schemas.
    /// - A token with `exp` expires the connection: it is closed with close
    ///   code 4001 ("token expired") once `exp` plus
    ///   `TOKEN_EXPIRY_GRACE_MS` (25 s) has passed, unless a `refresh` frame
    ///   brought a valid newer token of the same user first.
    ///   `message_deleted`, `error`; see the `Server*Frame` schemas.
    /// - Close codes of the operator API: `4002` disconnected by an
    ///   operator, `4003` banned (clients must not reconnect on their own).
    /// - A `join_room` (or `/ws?since=`) with `since` is answered with
    ///   `room_joined` carrying `recovered`, then the replay (at most 1,000
    ///   `message` frames, paced by the client's reading), then live frames.
    ///   A `history` answer cut to fit the connection's outbound budget has
    ///   `more: true`; one the store cannot answer in full is an `error` of
    ///   code `unavailable`.
    /// - A binary frame, invalid JSON, an unknown `type` or a missing field
    ///   is answered with an `error` frame of code `invalid_message`; the
    ///   connection stays open. A frame over 64 KiB closes the connection
    ///   with close code 1009.
    #[utoipa::path(
        get,
        path = "/ws",
        tag = "websocket",
        params(
            UpgradeQuery,
            ("Upgrade" = String, Header, description = "`websocket`."),
            ("Connection" = String, Header, description = "Contains `Upgrade`."),
            ("Sec-WebSocket-Key" = String, Header, description = "The handshake key (RFC 6455)."),
            ("Sec-WebSocket-Version" = String, Header, description = "`13`."),
        ),
        responses(
            (status = 101, description = "Switching to the WebSocket protocol.",
             headers(("Sec-WebSocket-Accept" = String, description = "The handshake answer (RFC 6455)."))),
            (status = 400, description = "Not a WebSocket upgrade request, or an invalid `roomId` or `since`.", body = ErrorBody),
            (status = 401, description = "Missing, malformed, badly signed or expired token.", body = ErrorBody),
            (status = 403, description = "The user is banned (operator API) until the time the error names.", body = ErrorBody),
            (status = 426, description = "Unsupported WebSocket version.", body = ErrorBody,
             headers(("Sec-WebSocket-Version" = String, description = "`13`, the supported version."))),
            (status = 503, description = "The server is shutting down.", body = ErrorBody),
        ),
        security(("bearer" = []), ("queryToken" = []))
    )]
    fn websocket() {}

    /// The demo chat page.
    ///
    /// A small chat UI built on the JavaScript client (`/js/client.js`):
    /// rooms, history on scroll-up, typing indicator, online list and
    /// connection state. It takes the token from `?token=` (then removed
    /// from the address bar) or from a field to paste it into.
    #[utoipa::path(
        get,
        path = "/",
        tag = "demo",
        responses((status = 200, description = "The page; revalidated on every load (`Cache-Control: no-cache`).",
                   body = String, content_type = "text/html")),
    )]
    fn demo_page() {}

    /// The demo page's script (an ES module).
    #[utoipa::path(
        get,
        path = "/app.js",
        tag = "demo",
        responses((status = 200, description = "JavaScript.", body = String, content_type = "text/javascript")),
    )]
    fn demo_script() {}

    /// The demo page's style sheet.
    #[utoipa::path(
        get,
        path = "/app.css",
        tag = "demo",
        responses((status = 200, description = "CSS.", body = String, content_type = "text/css")),
    )]
    fn demo_style() {}

    /// A module of the JavaScript client.
    ///
    /// The ES modules of the `chatd-client` package (`clients/js/src`),
    /// served as they are: `import { ChatClient } from '/js/index.js'`.
    #[utoipa::path(
        get,
        path = "/js/{file}",
        tag = "demo",
        params(("file" = String, Path, description = "A module file name.", example = "client.js")),
        responses(
            (status = 200, description = "JavaScript.", body = String, content_type = "text/javascript"),
            (status = 404, description = "No such module.", body = ErrorBody),
        ),
    )]
    fn client_module() {}
}

/// Adds the security schemes the paths refer to.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("`Authorization: Bearer <jwt>`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            QUERY_TOKEN_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The JWT as the `token` query parameter; `/ws` only.",
            ))),
        );
    }
}

/// Moves each variant of the `ClientFrame` and `ServerFrame` schemas into a
/// component of its own, named after its `type` (`join_room` in
/// `ClientFrame` becomes `ClientJoinRoomFrame`), and sets their
/// discriminator. Also makes the `messages` of the history answers refer to
/// the whole `message` frame: the stored messages are spliced in as sent,
/// `type` included, while `ServerMessage` (shared with the decoders) lacks it.
struct NameFrames;

impl NameFrames {
    /// Component name of the `ServerMessage` fields.
    const MESSAGE_FIELDS: &'static str = "ServerMessage";
    /// Component name of the whole `message` frame.
    const MESSAGE_FRAME: &'static str = "ServerMessageFrame";
}

impl Modify for NameFrames {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for (union, prefix) in [("ClientFrame", "Client"), ("ServerFrame", "Server")] {
            let Some(RefOr::T(Schema::OneOf(one_of))) = components.schemas.get_mut(union) else {
                continue;
            };
            let mut discriminator = Discriminator::new("type");
            let mut named = Vec::new();
            for item in &mut one_of.items {
                let RefOr::T(variant) = item else { continue };
                let Some(tag) = frame_type(variant) else {
                    continue;
                };
                let name = format!("{prefix}{}Frame", pascal_case(&tag));
                discriminator
                    .mapping
                    .insert(tag, format!("#/components/schemas/{name}"));
                let variant = std::mem::replace(item, RefOr::Ref(Ref::from_schema_name(&name)));
                named.push((name, variant));
            }
            one_of.discriminator = Some(discriminator);
            components.schemas.extend(named);
        }
        for name in ["HistoryPage", "ServerHistoryFrame"] {
            if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(name) {
                if let Some(RefOr::T(Schema::Array(array))) = object.properties.get_mut("messages")
                {
                    let fields = Ref::from_schema_name(Self::MESSAGE_FIELDS);
                    if let ArrayItems::RefOrSchema(items) = &mut array.items {
                        if matches!(&**items, RefOr::Ref(r) if *r == fields) {
                            **items = RefOr::Ref(Ref::from_schema_name(Self::MESSAGE_FRAME));
                        }
                    }
                }
            }
        }
    }
}

/// The `type` a variant of a tagged enum schema stands for: the single value
/// of its `type` property, found directly or in one part of an `allOf`.
fn frame_type(schema: &Schema) -> Option<String> {
    match schema {
        Schema::Object(object) => match object.properties.get("type")? {
            RefOr::T(Schema::Object(tag)) => match tag.enum_values.as_deref()? {
                [serde_json::Value::String(value)] => Some(value.clone()),
                _ => None,
            },
            _ => None,
        },
        Schema::AllOf(all_of) => all_of.items.iter().find_map(|part| match part {
            RefOr::T(schema) => frame_type(schema),
            RefOr::Ref(_) => None,
        }),
        _ => None,
    }
}

/// `join_room` -> `JoinRoom`.
fn pascal_case(snake: &str) -> String {
    snake
        .split('_')
        .flat_map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase())
                .into_iter()
                .chain(chars)
        })
        .collect()
}

/// Frames a client sends on `/ws` (contract section 3), told apart by `type`.
///
/// For the document only: the server parses these with
/// `protocol::parse_client_frame`, from a flat struct of every field. `null`
/// in an optional field counts as absent; unknown fields are ignored.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schema(
    as = ClientFrame,
    description = "Any frame a client sends on `/ws`, told apart by `type`."
)]
pub enum ClientFrameDoc {
    /// Post a chat message. The sender must be in the room (`not_in_room`
    /// otherwise). Every member, the sender included, receives it as a
    /// `message` frame.
    #[serde(rename_all = "camelCase")]
    Message {
        /// Target room; the connection's initial room when absent.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$", example = "general")]
        room_id: Option<String>,
        /// The text: not blank, at most `MAX_MESSAGE_LENGTH` characters
        /// (Unicode scalar values; 1000 by default).
        #[schema(example = "Hello everyone!")]
        content: String,
        /// The client's time; informational only, the server stamps its own.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(example = "2024-01-01T12:00:00Z")]
        timestamp: Option<String>,
        /// Id for retries, 1 to 128 bytes: a repeat of the same id by the same
        /// user within 5 minutes is not stored or sent again, and the sender
        /// gets the original `messageId` in an `ack`.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(min_length = 1, example = "c-1")]
        client_msg_id: Option<String>,
    },
    /// Join a room; answered with `room_joined` (or an `error`, e.g.
    /// `room_limit`). A connection may be in many rooms.
    #[serde(rename_all = "camelCase")]
    JoinRoom {
        /// The room to join.
        #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$", example = "development")]
        room_id: String,
        /// First send, as `message` frames, the room's stored messages newer
        /// than this message id (at most 1,000), then live ones, with no gap
        /// and no duplicate.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(format = "ulid")]
        since: Option<String>,
    },
    /// Leave a room; answered with `room_left`.
    #[serde(rename_all = "camelCase")]
    LeaveRoom {
        /// The room to leave.
        #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$", example = "general")]
        room_id: String,
    },
    /// Start or stop the typing indicator; relayed to the other members as
    /// `typing_indicator`, never stored.
    #[serde(rename_all = "camelCase")]
    Typing {
        /// Target room; the connection's initial room when absent.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$", example = "general")]
        room_id: Option<String>,
        /// Whether the user is typing now.
        is_typing: bool,
    },
    /// Ask for stored messages; answered with a `history` frame.
    #[serde(rename_all = "camelCase")]
    History {
        /// The room whose messages are wanted.
        #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$", example = "general")]
        room_id: String,
        /// Only messages older than this message id.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(format = "ulid")]
        before: Option<String>,
        /// Only messages newer than this message id.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(format = "ulid")]
        after: Option<String>,
        /// Page size, 50 when absent; larger values are clamped to 200.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 1, default = json!(crate::protocol::HISTORY_DEFAULT_LIMIT))]
        limit: Option<u32>,
    },
    /// Application-level ping; answered with `pong`.
    Ping,
    /// A newer token for this connection, sent before the current one's
    /// `exp` (plus `TOKEN_EXPIRY_GRACE_MS`) passes, when the connection
    /// would be closed with 4001. Answered with `refreshed` and the new
    /// expiry; a token that is bad, expired or names another user gets an
    /// `error` of code `invalid_token` and the connection keeps its current
    /// expiry. At most 3 at once, then one per 10 s (`rate_limited`).
    Refresh {
        /// The new JWT, at most 8192 bytes.
        #[schema(max_length = 8192)]
        token: String,
    },
}

/// The body of the operator API's publish.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperatorMessage {
    /// The text: not blank, at most `MAX_MESSAGE_LENGTH` characters.
    #[schema(example = "Maintenance at noon.")]
    pub content: String,
    /// Who the message is from; `system` when absent (1 to 128 bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "system")]
    pub user_id: Option<String>,
    /// The name shown; `System` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "System")]
    pub username: Option<String>,
}

/// The body of a ban.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ban {
    /// How long the ban lasts, in seconds: 1 to 315360000 (ten years).
    #[schema(minimum = 1, maximum = 315_360_000, example = 3600)]
    pub duration_secs: u64,
    /// Why, for the audit trail (at most 500 characters).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "spam")]
    pub reason: Option<String>,
}

/// The body of `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` while serving, `degraded` while a backend is down, `draining`
    /// during shutdown.
    pub status: HealthStatus,
    /// Executor cores; with `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub cores: Option<usize>,
    /// State of each backend; with `ok` and `degraded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub backends: Option<Backends>,
    /// Names of the configured backends that are down (`redis`,
    /// `postgres`); with `ok` and `degraded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub down: Option<Vec<String>>,
}

/// The `status` of `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Taking connections.
    Ok,
    /// Taking connections, live chat works, but a backend is down: writes
    /// are buffered (bounded) and retried.
    Degraded,
    /// Shutting down.
    Draining,
}

/// The state of each backend: `disabled` (not configured: kept in memory
/// on this instance), `up` or `down`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Backends {
    /// Redis: presence and cross-instance fan-out.
    #[schema(example = "disabled")]
    pub redis: String,
    /// Postgres: history and the audit trail.
    #[schema(example = "up")]
    pub postgres: String,
}

/// The body of `/api/chats/rooms/{roomId}/presence`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoomPresence {
    /// The room asked about.
    #[schema(example = "general")]
    pub room_id: String,
    /// Ids of the users with a connection in the room.
    #[schema(example = json!(["user-456", "user-789"]))]
    pub online: Vec<String>,
}

/// The body of `/api/chats/users/{userId}/status`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserStatus {
    /// The user asked about.
    #[schema(example = "user-456")]
    pub user_id: String,
    /// `online` while the user has at least one connection.
    pub status: PresenceStatus,
}

/// The body of every HTTP error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    #[schema(example = "missing bearer token")]
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{parse_client_frame, parse_message_id, ClientFrame};
    use serde_json::Value;

    const ID: &str = "01HQZX3Y7K8M9N0P1Q2R3S4T5V";

    fn doc() -> Value {
        serde_json::from_slice(document()).expect("the document is JSON")
    }

    /// Serializes a documented client frame and parses it with the server's parser.
    fn round_trip(frame: &ClientFrameDoc) -> ClientFrame<'static> {
        let mut json = serde_json::to_vec(frame).expect("serializes");
        let parsed = parse_client_frame(&mut json).unwrap_or_else(|e| panic!("{frame:?}: {e}"));
        parsed.into_owned()
    }

    /// Every documented field of every client frame, filled in, is read by
    /// the real parser under the documented name: the parser ignores
    /// unknown fields, so a misnamed one would come back empty.
    #[test]
    fn documented_client_frames_are_what_the_parser_reads() {
        let id = parse_message_id(ID);
        let cases = [
            (
                ClientFrameDoc::Message {
                    room_id: Some("general".into()),
                    content: "Hello".into(),
                    timestamp: Some("2024-01-01T12:00:00Z".into()),
                    client_msg_id: Some("c-1".into()),
                },
                ClientFrame::Message {
                    room_id: Some("general".into()),
                    content: "Hello".into(),
                    client_msg_id: Some("c-1".into()),
                },
            ),
            (
                ClientFrameDoc::JoinRoom {
                    room_id: "dev".into(),
                    since: Some(ID.into()),
                },
                ClientFrame::JoinRoom {
                    room_id: "dev".into(),
                    since: id,
                },
            ),
            (
                ClientFrameDoc::LeaveRoom {
                    room_id: "dev".into(),
                },
                ClientFrame::LeaveRoom {
                    room_id: "dev".into(),
                },
            ),
            (
                ClientFrameDoc::Typing {
                    room_id: Some("dev".into()),
                    is_typing: true,
                },
                ClientFrame::Typing {
                    room_id: Some("dev".into()),
                    is_typing: true,
                },
            ),
            (
                ClientFrameDoc::History {
                    room_id: "dev".into(),
                    before: Some(ID.into()),
                    after: Some(ID.into()),
                    limit: Some(7),
                },
                ClientFrame::History {
                    room_id: "dev".into(),
                    before: id,
                    after: id,
                    limit: 7,
                },
            ),
            (ClientFrameDoc::Ping, ClientFrame::Ping),
            (
                ClientFrameDoc::Refresh {
                    token: "a.b.c".into(),
                },
                ClientFrame::Refresh {
                    token: "a.b.c".into(),
                },
            ),
        ];
        for (documented, expected) in &cases {
            assert_eq!(&round_trip(documented), expected, "{documented:?}");
        }
    }

    /// The schema of each client frame lists as required exactly the fields
    /// without which the parser refuses the frame.
    #[test]
    fn required_client_fields_match_the_parser() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        for (name, minimal) in [
            ("ClientMessageFrame", r#"{"type":"message","content":"x"}"#),
            (
                "ClientJoinRoomFrame",
                r#"{"type":"join_room","roomId":"r"}"#,
            ),
            (
                "ClientLeaveRoomFrame",
                r#"{"type":"leave_room","roomId":"r"}"#,
            ),
            ("ClientTypingFrame", r#"{"type":"typing","isTyping":false}"#),
            ("ClientHistoryFrame", r#"{"type":"history","roomId":"r"}"#),
            ("ClientPingFrame", r#"{"type":"ping"}"#),
            ("ClientRefreshFrame", r#"{"type":"refresh","token":"t"}"#),
        ] {
            let frame: serde_json::Map<String, Value> = serde_json::from_str(minimal).unwrap();
            let mut required: Vec<&str> = schemas[name]["required"]
                .as_array()
                .unwrap_or_else(|| panic!("{name} has required fields"))
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            required.sort_unstable();
            let mut present: Vec<&str> = frame.keys().map(String::as_str).collect();
            present.sort_unstable();
            assert_eq!(required, present, "{name}");
            assert!(
                parse_client_frame(&mut minimal.as_bytes().to_vec()).is_ok(),
                "{minimal}"
            );
            for field in frame.keys().filter(|k| *k != "type") {
                let mut without = frame.clone();
                without.remove(field);
                let mut bytes = serde_json::to_vec(&without).unwrap();
                assert!(
                    parse_client_frame(&mut bytes).is_err(),
                    "{name} without {field} is accepted, yet documented as required"
                );
            }
        }
    }

    #[test]
    fn every_frame_variant_gets_a_named_component() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        for (union, names) in [
            (
                "ClientFrame",
                &[
                    "message",
                    "join_room",
                    "leave_room",
                    "typing",
                    "history",
                    "ping",
                    "refresh",
                ][..],
            ),
            (
                "ServerFrame",
                &[
                    "message",
                    "ack",
                    "presence",
                    "room_joined",
                    "room_left",
                    "typing_indicator",
                    "history",
                    "pong",
                    "refreshed",
                    "message_deleted",
                    "error",
                ][..],
            ),
        ] {
            let prefix = union.trim_end_matches("Frame");
            let one_of = schemas[union]["oneOf"].as_array().expect("oneOf");
            assert_eq!(one_of.len(), names.len(), "{union}");
            for (item, tag) in one_of.iter().zip(names) {
                let name = format!("{prefix}{}Frame", pascal_case(tag));
                let reference = format!("#/components/schemas/{name}");
                assert_eq!(item["$ref"], reference.as_str());
                assert_eq!(
                    schemas[union]["discriminator"]["mapping"][*tag],
                    reference.as_str()
                );
                assert!(schemas[&name].is_object(), "{name} is missing");
            }
        }
        assert_eq!(
            schemas["HistoryPage"]["properties"]["messages"]["items"]["$ref"],
            "#/components/schemas/ServerMessageFrame"
        );
        assert_eq!(
            schemas["ServerHistoryFrame"]["properties"]["messages"]["items"]["$ref"],
            "#/components/schemas/ServerMessageFrame"
        );
    }

    /// Every `pattern` in the document is the room id rule, and accepts
    /// exactly what `protocol::valid_room_id` accepts.
    #[test]
    fn room_id_patterns_match_the_server_rule() {
        fn collect<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(p)) = map.get("pattern") {
                        out.push(p);
                    }
                    map.values().for_each(|v| collect(v, out));
                }
                Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
                _ => {}
            }
        }
        let doc = doc();
        let mut patterns = Vec::new();
        collect(&doc, &mut patterns);
        // Path and query parameters of five routes (history, presence, /ws, the
        // operator's publish and delete), and five client frames.
        assert_eq!(patterns.len(), 10, "{patterns:?}");
        let samples = [
            "general".to_string(),
            "a".into(),
            "x:y.z-_1".into(),
            "r".repeat(128),
            "r".repeat(129),
            String::new(),
            "bad room".into(),
            "caf\u{e9}".into(),
            "a/b".into(),
        ];
        for pattern in patterns {
            let re = regex::Regex::new(pattern).expect("a valid pattern");
            for sample in &samples {
                assert_eq!(
                    re.is_match(sample),
                    crate::protocol::valid_room_id(sample),
                    "{pattern} on {sample:?}"
                );
            }
        }
    }

    #[test]
    fn pascal_case_joins_words() {
        assert_eq!(pascal_case("join_room"), "JoinRoom");
        assert_eq!(pascal_case("typing_indicator"), "TypingIndicator");
        assert_eq!(pascal_case("ping"), "Ping");
    }

    #[test]
    fn document_is_served_as_json() {
        let (content_type, body) = asset(OPENAPI_PATH).expect("served");
        assert_eq!(content_type, "application/json");
        assert_eq!(&*body, document());
        assert!(doc()["openapi"].as_str().unwrap().starts_with("3."));
    }

    /// Every file the page refers to is served, with a content type that fits it.
    #[test]
    fn page_references_are_served() {
        for path in [DOCS_PATH, "/api/chats/docs/", "/api/chats/docs/index.html"] {
            let (content_type, body) = asset(path).expect("page");
            assert_eq!(content_type, HTML);
            assert_eq!(&*body, DOCS_PAGE.as_bytes());
        }
        let references: Vec<&str> = DOCS_PAGE
            .split(['"', '\''])
            .filter(|s| s.starts_with('/'))
            .collect();
        assert_eq!(references.len(), 7, "{references:?}");
        for reference in references {
            let (content_type, body) =
                asset(reference).unwrap_or_else(|| panic!("{reference} is not served"));
            assert!(!body.is_empty(), "{reference} is empty");
            let expected = match reference.rsplit_once('.').unwrap().1 {
                "css" => "text/css; charset=utf-8",
                "js" => JAVASCRIPT,
                "png" => "image/png",
                other => panic!("unexpected asset type {other}"),
            };
            assert_eq!(content_type, expected, "{reference}");
        }
    }

    #[test]
    fn initializer_loads_our_document_and_no_validator() {
        let (_, script) = asset("/api/chats/docs/swagger-initializer.js").expect("served");
        let script = std::str::from_utf8(&script).expect("text");
        assert!(
            script.contains(r#""url": "/api/chats/openapi.json""#),
            "{script}"
        );
        assert!(script.contains(r#""validatorUrl": "none""#), "{script}");
        assert!(!script.contains("http"), "{script}");
    }

    #[test]
    fn other_paths_are_not_assets() {
        for path in [
            "/",
            "/api/chats",
            "/api/chats/docsx",
            "/api/chats/openapi.json/",
            "/api/chats/docs/missing.js",
            "/api/chats/docs/../openapi.json",
        ] {
            assert!(asset(path).is_none(), "{path}");
        }
    }

    #[test]
    fn content_types_follow_extensions() {
        assert_eq!(content_type("a.js"), JAVASCRIPT);
        assert_eq!(content_type("a.js.map"), JSON);
        assert_eq!(content_type("a.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("oauth2-redirect.html"), HTML);
        assert_eq!(content_type("favicon-16x16.png"), "image/png");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
    }
}
