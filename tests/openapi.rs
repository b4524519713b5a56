//! The API documentation against the real server: the OpenAPI document lists
//! exactly the routes the server answers, its schemas describe what the
//! server really sends, and the Swagger UI page loads everything it needs
//! from the server itself.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::{Client, Server};
use serde_json::{json, Value};

/// Every route the server answers, as documented (contract section 1).
const ROUTES: [&str; 12] = [
    "/healthz",
    "/metrics",
    "/api/chats/openapi.json",
    "/api/chats/docs",
    "/api/chats/rooms/{roomId}/messages",
    "/api/chats/rooms/{roomId}/presence",
    "/api/chats/users/{userId}/status",
    "/ws",
    "/",
    "/app.js",
    "/app.css",
    "/js/{file}",
];

/// The routes that need a token.
const AUTHENTICATED: [&str; 4] = [
    "/api/chats/rooms/{roomId}/messages",
    "/api/chats/rooms/{roomId}/presence",
    "/api/chats/users/{userId}/status",
    "/ws",
];

/// The operator API's routes (contract section 8), and their methods; the
/// first also answers GET (history).
const OPERATOR_ROUTES: [(&str, &[&str]); 4] = [
    ("/api/chats/rooms/{roomId}/messages", &["get", "post"]),
    (
        "/api/chats/rooms/{roomId}/messages/{messageId}",
        &["delete"],
    ),
    ("/api/chats/users/{userId}/ban", &["post", "delete"]),
    ("/api/chats/users/{userId}/disconnect", &["post"]),
];

/// The error codes of contract section 4.
const ERROR_CODES: [&str; 10] = [
    "invalid_message",
    "not_in_room",
    "message_too_long",
    "message_blocked",
    "rate_limited",
    "room_limit",
    "unavailable",
    "internal",
    "invalid_token",
    "forbidden",
];

/// Client frame types and the components that describe them.
const CLIENT_FRAMES: [(&str, &str); 7] = [
    ("message", "ClientMessageFrame"),
    ("join_room", "ClientJoinRoomFrame"),
    ("leave_room", "ClientLeaveRoomFrame"),
    ("typing", "ClientTypingFrame"),
    ("history", "ClientHistoryFrame"),
    ("ping", "ClientPingFrame"),
    ("refresh", "ClientRefreshFrame"),
];

/// Server frame types and the components that describe them.
const SERVER_FRAMES: [(&str, &str); 11] = [
    ("message", "ServerMessageFrame"),
    ("ack", "ServerAckFrame"),
    ("presence", "ServerPresenceFrame"),
    ("room_joined", "ServerRoomJoinedFrame"),
    ("room_left", "ServerRoomLeftFrame"),
    ("typing_indicator", "ServerTypingIndicatorFrame"),
    ("history", "ServerHistoryFrame"),
    ("pong", "ServerPongFrame"),
    ("refreshed", "ServerRefreshedFrame"),
    ("message_deleted", "ServerMessageDeletedFrame"),
    ("error", "ServerErrorFrame"),
];

/// The served document, checked to be OpenAPI 3.x JSON.
fn fetch_document(server: &Server) -> Value {
    let response = fetch(server.addr, "/api/chats/openapi.json", None);
    assert_eq!(response.status, 200);
    assert!(
        response.content_type.starts_with("application/json"),
        "{}",
        response.content_type
    );
    let doc: Value = serde_json::from_slice(&response.body).expect("the document is JSON");
    let version = doc["openapi"].as_str().expect("an openapi version");
    assert!(version.starts_with("3."), "openapi {version}");
    doc
}

/// A documented path with sample values for its parameters.
fn sample(path: &str) -> String {
    path.replace("{roomId}", "general")
        .replace("{userId}", "user-1")
        .replace("{file}", "client.js")
}

#[test]
fn document_paths_are_exactly_the_served_routes() {
    let server = Server::default_start();
    let doc = fetch_document(&server);
    let paths = doc["paths"].as_object().expect("paths");
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let mut served = BTreeSet::from(ROUTES);
    served.extend(OPERATOR_ROUTES.iter().map(|(path, _)| *path));
    assert_eq!(documented, served);

    let token = server.token("reader");
    for (path, methods) in OPERATOR_ROUTES {
        let item = &paths[path];
        let documented: BTreeSet<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|k| ["get", "post", "delete", "put", "patch"].contains(k))
            .collect();
        assert_eq!(documented, methods.iter().copied().collect(), "{path}");
        for method in methods.iter().filter(|m| **m != "get") {
            let op = &item[*method];
            assert!(op["security"][0]["bearer"].is_array(), "{method} {path}");
            for status in ["401", "403"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} {status}"
                );
            }
        }
    }
    for (path, item) in paths {
        if OPERATOR_ROUTES
            .iter()
            .any(|(p, m)| *p == path && !m.contains(&"get"))
        {
            continue;
        }
        assert!(item["get"].is_object(), "{path} documents no GET");
        let response = fetch(server.addr, &sample(path), Some(token.as_str()));
        assert_ne!(response.status, 404, "{path} is documented but not served");
        // A plain GET of /ws is not an upgrade; every other route answers.
        let expected = if path == "/ws" { 400 } else { 200 };
        assert_eq!(response.status, expected, "{path}");
    }
    // The control: a path nobody serves is a 404.
    assert_eq!(fetch(server.addr, "/api/chats/nothing", None).status, 404);
}

/// Reads the routes out of the router's source (the slice patterns of
/// `runtime/routes.rs` and the `/ws` check of `runtime/server.rs`), so that a route added
/// there without documentation fails here.
#[test]
fn documented_paths_are_the_routes_in_the_router_source() {
    let routes_rs = include_str!("../src/runtime/routes.rs");
    let server_rs = include_str!("../src/runtime/server.rs");
    let mut served = BTreeSet::new();
    let arm =
        regex::Regex::new(r#"\[((?:\s*(?:"[^"]*"|[a-z_]+)\s*(?:\|\s*"[^"]*"\s*)*,?)+)\]\s*=>"#)
            .unwrap();
    for found in arm.captures_iter(routes_rs) {
        let mut prefixes = vec![String::new()];
        for segment in found[1].split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let choices: Vec<String> = if segment.starts_with('"') {
                segment
                    .split('|')
                    .map(|s| s.trim().trim_matches('"').to_string())
                    .collect()
            } else {
                vec!["{}".to_string()] // a binding or `_`: a path parameter
            };
            prefixes = prefixes
                .iter()
                .flat_map(|p| choices.iter().map(move |c| format!("{p}/{c}")))
                .collect();
        }
        served.extend(prefixes);
    }
    let exact = regex::Regex::new(r#"request\.path == "(/[^"]*)""#).unwrap();
    served.extend(exact.captures_iter(server_rs).map(|c| c[1].to_string()));
    assert!(
        served.len() >= 6,
        "the source scan found too little: {served:?}"
    );

    // The routes of the docs themselves are served by `openapi::asset`.
    let own = [chatd::openapi::OPENAPI_PATH, chatd::openapi::DOCS_PATH];
    let doc: Value = serde_json::from_slice(chatd::openapi::document()).unwrap();
    let param = regex::Regex::new(r"\{[^}]+\}").unwrap();
    let documented: BTreeSet<String> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|p| !own.contains(&p.as_str()))
        .map(|p| param.replace_all(p, "{}").into_owned())
        .collect();
    assert_eq!(documented, served);
}

#[test]
fn bearer_scheme_guards_exactly_the_authenticated_routes() {
    let server = Server::default_start();
    let doc = fetch_document(&server);
    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http");
    assert_eq!(bearer["scheme"], "bearer");
    assert_eq!(bearer["bearerFormat"], "JWT");
    assert!(
        doc.get("security").is_none(),
        "no document-wide requirement"
    );

    let token = server.token("guard");
    for path in ROUTES {
        let security = &doc["paths"][path]["get"]["security"];
        let uses_bearer = security
            .as_array()
            .is_some_and(|alternatives| alternatives.iter().any(|a| a.get("bearer").is_some()));
        assert_eq!(
            uses_bearer,
            AUTHENTICATED.contains(&path),
            "{path}: {security}"
        );
        if path == "/ws" {
            continue;
        }
        // The documentation agrees with the server: 401 without a token
        // exactly where a token is documented.
        let status = fetch(server.addr, &sample(path), None).status;
        assert_eq!(status == 401, uses_bearer, "{path} answered {status}");
        if uses_bearer {
            assert_eq!(fetch(server.addr, &sample(path), Some("x.y.z")).status, 401);
            assert_eq!(
                fetch(server.addr, &sample(path), Some(token.as_str())).status,
                200
            );
        }
    }
    // /ws: a refused upgrade without a token, accepted with one in either place.
    let addr = server.addr;
    let refused = Client::open(&format!("ws://{addr}/ws?roomId=general")).err();
    assert_eq!(refused.map(|(status, _)| status), Some(401));
    assert!(Client::open(&format!("ws://{addr}/ws?token={token}")).is_ok());
    let query = &doc["components"]["securitySchemes"]["queryToken"];
    assert_eq!(query["type"], "apiKey");
    assert_eq!(query["in"], "query");
    assert_eq!(query["name"], "token");
}

#[test]
fn every_frame_has_a_component_schema() {
    let doc: Value = serde_json::from_slice(chatd::openapi::document()).unwrap();
    let checker = Checker::new(&doc);
    for (union, frames) in [
        ("ClientFrame", &CLIENT_FRAMES[..]),
        ("ServerFrame", &SERVER_FRAMES),
    ] {
        let members: BTreeSet<&str> = checker.schemas[union]["oneOf"]
            .as_array()
            .unwrap_or_else(|| panic!("{union} is a oneOf"))
            .iter()
            .map(|m| m["$ref"].as_str().expect("a reference"))
            .collect();
        let expected: BTreeSet<String> = frames
            .iter()
            .map(|(_, name)| format!("#/components/schemas/{name}"))
            .collect();
        assert_eq!(
            members,
            expected.iter().map(String::as_str).collect(),
            "{union}"
        );
        for (tag, name) in frames {
            let schema = &checker.schemas[*name];
            assert!(schema.is_object(), "no schema {name}");
            // The `type` field is required and admits exactly this frame's tag.
            let (properties, required) = checker.object_parts(schema);
            assert_eq!(properties["type"]["enum"], json!([tag]), "{name}");
            assert!(required.contains("type"), "{name}");
            assert_eq!(union_tag(&checker, union, tag), *name);
        }
    }
    // The exact field names of a few frames.
    for (name, fields) in [
        (
            "ServerMessageFrame",
            &[
                "type",
                "messageId",
                "userId",
                "username",
                "roomId",
                "content",
                "timestamp",
            ][..],
        ),
        (
            "ServerAckFrame",
            &["type", "clientMsgId", "messageId", "roomId"],
        ),
        (
            "ServerPresenceFrame",
            &["type", "userId", "status", "roomId"],
        ),
        (
            "ServerRoomJoinedFrame",
            &["type", "roomId", "memberCount", "recovered"],
        ),
        (
            "ServerErrorFrame",
            &["type", "code", "message", "retryAfterMs"],
        ),
        (
            "ClientMessageFrame",
            &["type", "roomId", "content", "timestamp", "clientMsgId"],
        ),
        ("ClientJoinRoomFrame", &["type", "roomId", "since"]),
        ("ClientTypingFrame", &["type", "roomId", "isTyping"]),
        (
            "ClientHistoryFrame",
            &["type", "roomId", "before", "after", "limit"],
        ),
    ] {
        let (properties, _) = checker.object_parts(&checker.schemas[name]);
        let names: BTreeSet<&str> = properties.keys().map(String::as_str).collect();
        assert_eq!(names, fields.iter().copied().collect(), "{name}");
    }

    // The error code enum is exactly the contract's.
    let (properties, _) = checker.object_parts(&checker.schemas["ServerErrorFrame"]);
    let code = checker.resolve(properties["code"]);
    let codes: Vec<&str> = code["enum"]
        .as_array()
        .expect("code is an enum")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(codes.len(), ERROR_CODES.len(), "{codes:?}");
    assert_eq!(
        codes.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from(ERROR_CODES)
    );
    let presence = checker.resolve(
        checker
            .object_parts(&checker.schemas["ServerPresenceFrame"])
            .0["status"],
    );
    assert_eq!(presence["enum"], json!(["online", "offline"]));
}

/// The component a discriminated union maps `tag` to.
fn union_tag<'a>(checker: &Checker<'a>, union: &str, tag: &str) -> &'a str {
    checker.schemas[union]["discriminator"]["mapping"][tag]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .unwrap_or_else(|| panic!("{union} maps no {tag}"))
}

#[test]
fn route_details_are_documented() {
    let doc: Value = serde_json::from_slice(chatd::openapi::document()).unwrap();
    let op = |path: &str| doc["paths"][path]["get"].clone();
    let statuses = |path: &str| -> BTreeSet<String> {
        op(path)["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let param = |path: &str, name: &str| -> Value {
        op(path)["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{path} has no parameter {name}"))
    };

    let messages = "/api/chats/rooms/{roomId}/messages";
    assert_eq!(param(messages, "roomId")["in"], "path");
    let limit = param(messages, "limit");
    assert_eq!(limit["in"], "query");
    assert_eq!(limit["schema"]["default"], 50);
    assert_eq!(limit["schema"]["minimum"], 1);
    assert!(limit["description"].as_str().unwrap().contains("200"));
    for bound in ["before", "after"] {
        assert_eq!(param(messages, bound)["in"], "query");
        assert_eq!(param(messages, bound)["required"], false);
    }
    assert!(statuses(messages).is_superset(&set(&["200", "400", "401"])));
    let page = &op(messages)["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(page["$ref"], "#/components/schemas/HistoryPage");

    for path in [
        "/api/chats/rooms/{roomId}/presence",
        "/api/chats/users/{userId}/status",
    ] {
        assert!(statuses(path).is_superset(&set(&["200", "401"])), "{path}");
    }
    assert!(statuses("/healthz").is_superset(&set(&["200", "503"])));
    assert!(op("/metrics")["responses"]["200"]["content"]
        .as_object()
        .unwrap()
        .keys()
        .all(|k| k.starts_with("text/plain")));

    for name in ["token", "roomId", "since"] {
        assert_eq!(param("/ws", name)["in"], "query", "{name}");
    }
    assert_eq!(param("/ws", "roomId")["schema"]["default"], "lobby");
    assert!(statuses("/ws").is_superset(&set(&["101", "400", "401", "426"])));
    let description = op("/ws")["description"].as_str().unwrap().to_string();
    for (tag, _) in CLIENT_FRAMES.iter().chain(&SERVER_FRAMES) {
        assert!(
            description.contains(&format!("`{tag}`")),
            "/ws description misses {tag}"
        );
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn docs_page_and_everything_it_loads_are_served() {
    let server = Server::default_start();
    let reference = regex::Regex::new(r#"(?:src|href)\s*=\s*["']([^"']+)["']"#).unwrap();
    for page_path in ["/api/chats/docs", "/api/chats/docs/"] {
        let page = fetch(server.addr, page_path, None);
        assert_eq!(page.status, 200, "{page_path}");
        assert!(
            page.content_type.starts_with("text/html"),
            "{page_path}: {}",
            page.content_type
        );
        let html = String::from_utf8(page.body).expect("the page is UTF-8");
        let references: Vec<&str> = reference
            .captures_iter(&html)
            .map(|c| c.get(1).unwrap().as_str())
            .collect();
        assert!(
            references.iter().any(|r| r.ends_with(".js")),
            "{references:?}"
        );
        assert!(
            references.iter().any(|r| r.ends_with(".css")),
            "{references:?}"
        );
        let mut loads_document = html.contains("/api/chats/openapi.json");
        for reference in references {
            // Served by this server: a path, not a URL to some other host.
            assert!(
                reference.starts_with('/') && !reference.starts_with("//"),
                "{reference} is not on this server"
            );
            let asset = fetch(server.addr, reference, None);
            assert_eq!(asset.status, 200, "{reference}");
            assert!(!asset.body.is_empty(), "{reference} is empty");
            let expected = match reference.rsplit_once('.').map(|(_, ext)| ext) {
                Some("js") => "javascript",
                Some("css") => "text/css",
                Some("png") => "image/png",
                other => panic!("{reference}: unexpected kind of asset {other:?}"),
            };
            assert!(
                asset.content_type.contains(expected),
                "{reference} served as {}",
                asset.content_type
            );
            if reference.ends_with("swagger-initializer.js") {
                let script = String::from_utf8_lossy(&asset.body);
                loads_document |= script.contains("\"/api/chats/openapi.json\"");
                assert!(!script.contains("://"), "{script}");
            }
        }
        assert!(loads_document, "{page_path} never loads the document");
    }
}

#[test]
fn http_answers_match_their_documented_schemas() {
    let server = Server::default_start();
    let doc = fetch_document(&server);
    let checker = Checker::new(&doc);
    let token = server.token("writer");
    let (mut client, _) = server.connect("writer", "general");
    client.send(json!({"type": "message", "content": "hello", "clientMsgId": "m-1"}));
    client.recv_type("ack");

    let answer_schema = |path: &str, status: &str| -> Value {
        doc["paths"][path]["get"]["responses"][status]["content"]["application/json"]["schema"]
            .clone()
    };
    let cases = [
        ("/healthz", "/healthz", None, "200"),
        (
            "/api/chats/rooms/{roomId}/messages",
            "/api/chats/rooms/general/messages",
            Some(token.as_str()),
            "200",
        ),
        (
            "/api/chats/rooms/{roomId}/presence",
            "/api/chats/rooms/general/presence",
            Some(token.as_str()),
            "200",
        ),
        (
            "/api/chats/users/{userId}/status",
            "/api/chats/users/writer/status",
            Some(token.as_str()),
            "200",
        ),
        (
            "/api/chats/rooms/{roomId}/messages",
            "/api/chats/rooms/general/messages",
            None,
            "401",
        ),
        (
            "/api/chats/rooms/{roomId}/messages",
            "/api/chats/rooms/general/messages?limit=0",
            Some(token.as_str()),
            "400",
        ),
        (
            "/api/chats/rooms/{roomId}/messages",
            "/api/chats/rooms/general/messages?before=nope",
            Some(token.as_str()),
            "400",
        ),
    ];
    for (documented, path, bearer, status) in cases {
        let response = fetch(server.addr, path, bearer);
        assert_eq!(response.status.to_string(), status, "{path}");
        let body: Value = serde_json::from_slice(&response.body).expect("a JSON answer");
        let schema = answer_schema(documented, status);
        assert!(
            schema.is_object(),
            "{documented} documents no {status} JSON"
        );
        if let Err(e) = checker.check(&schema, &body) {
            panic!("{path} ({status}): {e}\n{body}");
        }
    }
    // The history really has the stored message, as a whole `message` frame.
    let (_, body) = server.get("/api/chats/rooms/general/messages", Some(token.as_str()));
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["messages"][0]["type"], "message", "{page}");
}

#[test]
fn websocket_frames_match_their_documented_schemas() {
    let server = Server::default_start();
    let doc = fetch_document(&server);
    let checker = Checker::new(&doc);
    let mut seen = BTreeMap::new();
    let (mut ann, joined) = server.connect("ann", "general");
    record(&checker, &mut seen, joined);
    let (mut ben, joined) = server.connect("ben", "general");
    record(&checker, &mut seen, joined);
    record(&checker, &mut seen, recv(&checker, &mut ann, "presence"));

    let send = |client: &mut Client, frame: Value| {
        // What clients send is described by the client schemas.
        if let Err(e) = checker.check_frame("ClientFrame", &frame) {
            panic!("{frame}: {e}");
        }
        client.send(frame);
    };
    send(
        &mut ann,
        json!({"type": "message", "roomId": "general", "content": "hi", "timestamp": "2024-01-01T12:00:00Z", "clientMsgId": "c-1"}),
    );
    let hi = recv(&checker, &mut ann, "message");
    let hi_id = hi["messageId"].as_str().unwrap().to_string();
    record(&checker, &mut seen, hi);
    record(&checker, &mut seen, recv(&checker, &mut ann, "ack"));
    record(&checker, &mut seen, recv(&checker, &mut ben, "message"));
    send(
        &mut ben,
        json!({"type": "typing", "roomId": "general", "isTyping": true}),
    );
    record(
        &checker,
        &mut seen,
        recv(&checker, &mut ann, "typing_indicator"),
    );
    send(
        &mut ann,
        json!({"type": "history", "roomId": "general", "limit": 10}),
    );
    record(&checker, &mut seen, recv(&checker, &mut ann, "history"));
    send(&mut ann, json!({"type": "join_room", "roomId": "dev"}));
    record(&checker, &mut seen, recv(&checker, &mut ann, "room_joined"));
    send(&mut ann, json!({"type": "leave_room", "roomId": "dev"}));
    record(&checker, &mut seen, recv(&checker, &mut ann, "room_left"));
    send(&mut ann, json!({"type": "ping"}));
    record(&checker, &mut seen, recv(&checker, &mut ann, "pong"));
    send(
        &mut ann,
        json!({"type": "refresh", "token": server.token("ann")}),
    );
    record(&checker, &mut seen, recv(&checker, &mut ann, "refreshed"));
    send(
        &mut ann,
        json!({"type": "refresh", "token": chatd::auth::mint_hs256(common::SECRET.as_bytes(), "ann", None, None)}),
    );
    let unbounded = recv(&checker, &mut ann, "refreshed");
    assert_eq!(unbounded["exp"], Value::Null, "{unbounded}");
    record(&checker, &mut seen, unbounded);
    send(&mut ann, json!({"type": "message", "content": " "}));
    record(&checker, &mut seen, recv(&checker, &mut ann, "error"));
    // An operator's delete (contract section 8).
    let admin = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "root", "role": "admin"}),
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes()),
    )
    .unwrap();
    let mut s = TcpStream::connect(server.addr).unwrap();
    write!(
        s,
        "DELETE /api/chats/rooms/general/messages/{hi_id} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    assert_eq!(common::parse_response(&raw).0, 204);
    record(
        &checker,
        &mut seen,
        recv(&checker, &mut ann, "message_deleted"),
    );
    ben.close();
    record(&checker, &mut seen, recv(&checker, &mut ann, "presence"));

    let expected: BTreeSet<&str> = SERVER_FRAMES.iter().map(|(tag, _)| *tag).collect();
    assert_eq!(
        seen.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        expected
    );
}

/// Receives until a frame of type `kind`, checking every frame on the way
/// against the server frame schemas.
fn recv(checker: &Checker<'_>, client: &mut Client, kind: &str) -> Value {
    loop {
        let frame = client.recv();
        if let Err(e) = checker.check_frame("ServerFrame", &frame) {
            panic!("{frame}: {e}");
        }
        if frame["type"] == kind {
            return frame;
        }
    }
}

/// Checks a server frame against the component named for its type.
fn record(checker: &Checker<'_>, seen: &mut BTreeMap<String, Value>, frame: Value) {
    let tag = frame["type"].as_str().expect("a type").to_string();
    let name = union_tag(checker, "ServerFrame", &tag);
    if let Err(e) = checker.check(&checker.schemas[name], &frame) {
        panic!("{frame} against {name}: {e}");
    }
    seen.insert(tag, frame);
}

/// A small JSON Schema checker for the subset the document uses: `$ref`,
/// `allOf`, `oneOf`, `type`, `enum`, `required`, `properties`, `items`,
/// `pattern` and `minimum`. Objects are checked strictly: a property that
/// the schema does not list is an error, so an undocumented field fails.
struct Checker<'a> {
    schemas: &'a Value,
}

impl<'a> Checker<'a> {
    fn new(doc: &'a Value) -> Checker<'a> {
        Checker {
            schemas: &doc["components"]["schemas"],
        }
    }

    /// Follows `$ref`s to the schema they name.
    fn resolve(&self, mut schema: &'a Value) -> &'a Value {
        while let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected reference {reference}"));
            schema = &self.schemas[name];
            assert!(schema.is_object(), "dangling reference {reference}");
        }
        schema
    }

    /// Properties and required names of an object schema, over its `allOf` parts.
    fn object_parts(&self, schema: &'a Value) -> (BTreeMap<String, &'a Value>, BTreeSet<String>) {
        let schema = self.resolve(schema);
        let mut properties = BTreeMap::new();
        let mut required = BTreeSet::new();
        if let Some(parts) = schema["allOf"].as_array() {
            for part in parts {
                let (p, r) = self.object_parts(part);
                properties.extend(p);
                required.extend(r);
            }
        }
        if let Some(own) = schema["properties"].as_object() {
            properties.extend(own.iter().map(|(k, v)| (k.clone(), v)));
        }
        if let Some(own) = schema["required"].as_array() {
            required.extend(own.iter().map(|r| r.as_str().unwrap().to_string()));
        }
        (properties, required)
    }

    fn check_frame(&self, union: &str, frame: &Value) -> Result<(), String> {
        self.check(&self.schemas[union], frame)
    }

    fn check(&self, schema: &Value, value: &Value) -> Result<(), String> {
        self.check_at(schema, value, "$")
    }

    fn check_at(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema);
        if let Some(options) = schema["oneOf"].as_array() {
            let matching = options
                .iter()
                .filter(|o| self.check_at(o, value, at).is_ok())
                .count();
            if matching != 1 {
                return Err(format!("{at}: matches {matching} of the oneOf schemas"));
            }
        }
        if let Some(types) = schema.get("type") {
            let types: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                other => return Err(format!("{at}: odd type {other}")),
            };
            let fits = |t: &str| match t {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "boolean" => value.is_boolean(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "null" => value.is_null(),
                _ => false,
            };
            if !types.iter().any(|t| fits(t)) {
                return Err(format!("{at}: {value} is not of type {types:?}"));
            }
        }
        if let Some(allowed) = schema["enum"].as_array() {
            if !allowed.contains(value) {
                return Err(format!("{at}: {value} is not one of {allowed:?}"));
            }
        }
        if let (Some(pattern), Some(text)) = (schema["pattern"].as_str(), value.as_str()) {
            if !regex::Regex::new(pattern).unwrap().is_match(text) {
                return Err(format!("{at}: {text:?} does not match {pattern}"));
            }
        }
        if let (Some(minimum), Some(number)) = (schema["minimum"].as_f64(), value.as_f64()) {
            if number < minimum {
                return Err(format!("{at}: {number} is below {minimum}"));
            }
        }
        if let Some(items) = schema.get("items") {
            if let Some(elements) = value.as_array() {
                for (i, element) in elements.iter().enumerate() {
                    self.check_at(items, element, &format!("{at}[{i}]"))?;
                }
            }
        }
        let is_object = schema.get("properties").is_some() || schema.get("allOf").is_some();
        if let (true, Some(fields)) = (is_object, value.as_object()) {
            let (properties, required) = self.object_parts(schema);
            for name in &required {
                if !fields.contains_key(name) {
                    return Err(format!("{at}: missing required {name}"));
                }
            }
            for (name, field) in fields {
                let Some(property) = properties.get(name) else {
                    return Err(format!("{at}: undocumented field {name}"));
                };
                self.check_at(property, field, &format!("{at}.{name}"))?;
            }
        }
        Ok(())
    }
}

/// One HTTP answer with its content type.
struct Response {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// A one-shot GET that keeps the headers and a binary body (the harness's
/// `get` returns neither).
fn fetch(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(common::FRAME_TIMEOUT))
        .unwrap();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in the answer to {path}"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    };
    let content_type = header("content-type").unwrap_or_default();
    if let Some(length) = header("content-length") {
        assert_eq!(length.parse::<usize>().ok(), Some(body.len()), "{path}");
    }
    Response {
        status,
        content_type,
        body,
    }
}
