//! The operator API (contract section 8) over real sockets: every route,
//! who may call it (401 without a valid token, 403 without the admin
//! role), bad requests (400 naming the problem), and with Postgres a
//! delete and a ban that outlive a restart.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{rooms_on_cores, stop, Client, Server, FRAME_TIMEOUT, SECRET};
use serde_json::{json, Value};

/// A token for `user` carrying `claims` on top (e.g. `"role": "admin"`).
fn token_with(user: &str, claims: Value) -> String {
    let mut all = json!({"sub": user, "exp": 4_000_000_000u64});
    for (k, v) in claims.as_object().expect("object") {
        all[k] = v.clone();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &all,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn admin() -> String {
    token_with("root", json!({"role": "admin"}))
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(FRAME_TIMEOUT)).unwrap();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = body.unwrap_or("");
    let length = if body.is_empty() && method != "POST" {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}{length}Connection: close\r\n\r\n{body}"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    common::parse_response(&raw)
}

/// The body of a JSON answer.
fn json_body(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// Publishes `content` into `room` as the operator; returns the `message`.
fn publish(server: &Server, room: &str, content: &str) -> Value {
    let body = json!({"content": content, "userId": "system", "username": "System"});
    let (status, answer) = request(
        server.addr,
        "POST",
        &format!("/api/chats/rooms/{room}/messages"),
        Some(&admin()),
        Some(&body.to_string()),
    );
    assert_eq!(status, 201, "{answer}");
    json_body(&answer)
}

/// The contents of a room's history over HTTP.
fn history_contents(server: &Server, room: &str) -> Vec<String> {
    let (status, body) = server.get(
        &format!("/api/chats/rooms/{room}/messages?limit=200"),
        Some(&server.token("reader")),
    );
    assert_eq!(status, 200, "{body}");
    json_body(&body)["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["content"].as_str().expect("content").to_string())
        .collect()
}

/// Opens a WebSocket for `user`, expecting a refusal; returns its status and body.
fn refused(server: &Server, user: &str, room: &str) -> (u16, String) {
    let url = format!(
        "ws://{}/ws?token={}&roomId={room}",
        server.addr,
        server.token(user)
    );
    match Client::open(&url) {
        Ok(_) => panic!("upgrade of {user} accepted"),
        Err(refusal) => refusal,
    }
}

#[test]
fn every_route_needs_a_valid_token_with_the_admin_role() {
    let server = Server::default_start();
    let routes = [
        (
            "POST",
            "/api/chats/rooms/lobby/messages",
            Some(r#"{"content":"hi"}"#),
        ),
        (
            "DELETE",
            "/api/chats/rooms/lobby/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV",
            None,
        ),
        (
            "POST",
            "/api/chats/users/bob/ban",
            Some(r#"{"durationSecs":60}"#),
        ),
        ("DELETE", "/api/chats/users/bob/ban", None),
        ("POST", "/api/chats/users/bob/disconnect", None),
    ];
    let user = server.token("mallory");
    let other_role = token_with("mallory", json!({"role": "moderator", "roles": ["user"]}));
    for (method, path, body) in routes {
        for bearer in [None, Some("not-a-jwt")] {
            let (status, answer) = request(server.addr, method, path, bearer, body);
            assert_eq!(status, 401, "{method} {path}: {answer}");
            assert!(json_body(&answer)["error"].is_string(), "{answer}");
        }
        for bearer in [&user, &other_role] {
            let (status, answer) = request(server.addr, method, path, Some(bearer), body);
            assert_eq!(status, 403, "{method} {path}: {answer}");
            assert!(json_body(&answer)["error"].is_string(), "{answer}");
        }
    }
    // `roles` containing admin is enough; nothing was done by the refused calls.
    let listed = token_with("root", json!({"roles": ["reader", "admin"]}));
    let (status, answer) = request(
        server.addr,
        "POST",
        "/api/chats/users/bob/disconnect",
        Some(&listed),
        None,
    );
    assert_eq!((status, answer.as_str()), (204, ""));
    assert!(history_contents(&server, "lobby").is_empty());
}

#[test]
fn an_operator_message_reaches_the_members_and_the_history() {
    let server = Server::default_start();
    let (room_a, room_b) = rooms_on_cores("op-publish");
    let (mut ann, _) = server.connect("ann", &room_a);
    let (mut bob, _) = server.connect("bob", &room_b);
    bob.send(json!({"type": "join_room", "roomId": room_a}));
    bob.recv_type("room_joined");
    ann.send(json!({"type": "message", "roomId": room_a, "content": "before"}));
    let before = ann.recv_type("message");
    let published = publish(&server, &room_a, "maintenance at noon");
    assert_eq!(published["type"], "message");
    assert_eq!(published["userId"], "system");
    assert_eq!(published["username"], "System");
    assert_eq!(published["roomId"], room_a.as_str());
    assert!(published["messageId"].as_str().unwrap() > before["messageId"].as_str().unwrap());
    for member in [&mut ann, &mut bob] {
        let got = member.recv_type("message");
        let got = if got["content"] == "before" {
            member.recv_type("message")
        } else {
            got
        };
        assert_eq!(got, published);
    }
    assert_eq!(
        history_contents(&server, &room_a),
        ["before", "maintenance at noon"]
    );
    // Defaults: userId system, username System.
    let (status, answer) = request(
        server.addr,
        "POST",
        &format!("/api/chats/rooms/{room_a}/messages"),
        Some(&admin()),
        Some(r#"{"content":"second"}"#),
    );
    assert_eq!(status, 201, "{answer}");
    let second = json_body(&answer);
    assert_eq!(
        (&second["userId"], &second["username"]),
        (&json!("system"), &json!("System"))
    );
    assert_eq!(ann.recv_type("message")["content"], "second");
}

#[test]
fn a_deleted_message_leaves_the_history_and_members_are_told() {
    let server = Server::default_start();
    let (room_a, room_b) = rooms_on_cores("op-delete");
    let (mut ann, _) = server.connect("ann", &room_a);
    let (mut bob, _) = server.connect("bob", &room_b);
    bob.send(json!({"type": "join_room", "roomId": room_a}));
    bob.recv_type("room_joined");
    ann.send(json!({"type": "message", "roomId": room_a, "content": "keep"}));
    ann.send(json!({"type": "message", "roomId": room_a, "content": "oops"}));
    ann.recv_type("message");
    let oops = ann.recv_type("message");
    bob.recv_type("message");
    bob.recv_type("message");
    let id = oops["messageId"].as_str().unwrap();
    let path = format!("/api/chats/rooms/{room_a}/messages/{id}");
    let (status, answer) = request(server.addr, "DELETE", &path, Some(&admin()), None);
    assert_eq!((status, answer.as_str()), (204, ""));
    for member in [&mut ann, &mut bob] {
        assert_eq!(
            member.recv_type("message_deleted"),
            json!({"type": "message_deleted", "roomId": room_a, "messageId": id})
        );
    }
    assert_eq!(history_contents(&server, &room_a), ["keep"]);
    // Gone: 404; never there: 404; another room: 404.
    let never = format!("/api/chats/rooms/{room_a}/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV");
    let elsewhere = format!("/api/chats/rooms/{room_b}/messages/{id}");
    for path in [&path, &never, &elsewhere] {
        let (status, answer) = request(server.addr, "DELETE", path, Some(&admin()), None);
        assert_eq!(status, 404, "{path}: {answer}");
        assert!(json_body(&answer)["error"].is_string());
    }
    // Not a message id, not a room id: 400.
    for path in [
        format!("/api/chats/rooms/{room_a}/messages/not-an-id"),
        "/api/chats/rooms/bad%20room/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV".to_string(),
    ] {
        let (status, answer) = request(server.addr, "DELETE", &path, Some(&admin()), None);
        assert_eq!(status, 400, "{path}: {answer}");
        assert!(json_body(&answer)["error"].is_string());
    }
}

#[test]
fn a_ban_closes_with_4003_and_refuses_upgrades_until_lifted() {
    let server = Server::default_start();
    let (room_a, room_b) = rooms_on_cores("op-ban");
    let (mut eve1, _) = server.connect("eve", &room_a);
    let (mut eve2, _) = server.connect("eve", &room_b);
    let (mut bob, _) = server.connect("bob", &room_a);
    let (status, answer) = request(
        server.addr,
        "POST",
        "/api/chats/users/eve/ban",
        Some(&admin()),
        Some(r#"{"durationSecs":3600,"reason":"spam"}"#),
    );
    assert_eq!((status, answer.as_str()), (204, ""));
    assert_eq!(eve1.expect_close(), Some(4003));
    assert_eq!(eve2.expect_close(), Some(4003));
    // Refused on every core's accept path until lifted.
    for room in [&room_a, &room_b] {
        let (status, body) = refused(&server, "eve", room);
        assert_eq!(status, 403, "{body}");
        assert!(json_body(&body)["error"]
            .as_str()
            .unwrap()
            .contains("banned"));
    }
    // Others are untouched.
    bob.send(json!({"type": "ping"}));
    assert_eq!(bob.recv_type("pong")["type"], "pong");
    let (status, answer) = request(
        server.addr,
        "DELETE",
        "/api/chats/users/eve/ban",
        Some(&admin()),
        None,
    );
    assert_eq!((status, answer.as_str()), (204, ""));
    let (mut eve, _) = server.connect("eve", &room_b);
    eve.send(json!({"type": "message", "content": "I am back"}));
    assert_eq!(eve.recv_type("message")["content"], "I am back");
    // Lifting a ban that is not there is fine too.
    let (status, _) = request(
        server.addr,
        "DELETE",
        "/api/chats/users/nobody/ban",
        Some(&admin()),
        None,
    );
    assert_eq!(status, 204);
    assert_eq!(
        server.wait_metric("chat_connections_closed_total{reason=\"banned\"}", 2.0),
        Some(2.0)
    );
}

#[test]
fn a_disconnect_closes_every_connection_of_the_user_with_4002() {
    let server = Server::default_start();
    let (room_a, room_b) = rooms_on_cores("op-disconnect");
    let (mut a1, _) = server.connect("ann", &room_a);
    let (mut a2, _) = server.connect("ann", &room_b);
    let (mut bob, _) = server.connect("bob", &room_a);
    let (status, answer) = request(
        server.addr,
        "POST",
        "/api/chats/users/ann/disconnect",
        Some(&admin()),
        None,
    );
    assert_eq!((status, answer.as_str()), (204, ""));
    assert_eq!(a1.expect_close(), Some(4002));
    assert_eq!(a2.expect_close(), Some(4002));
    bob.send(json!({"type": "ping"}));
    assert_eq!(bob.recv_type("pong")["type"], "pong");
    // Not banned: she may reconnect at once.
    let (_again, joined) = server.connect("ann", &room_a);
    assert_eq!(joined["type"], "room_joined");
}

#[test]
fn bad_requests_get_400_with_a_clear_error() {
    let server = Server::start(&[("MAX_MESSAGE_LENGTH", "10")]);
    let publish = "/api/chats/rooms/lobby/messages";
    let ban = "/api/chats/users/eve/ban";
    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        (publish, "POST", None, "body"),
        (publish, "POST", Some("{not json"), "invalid body"),
        (publish, "POST", Some(r#"{"userId":"x"}"#), "content"),
        (publish, "POST", Some(r#"{"content":42}"#), "invalid body"),
        (publish, "POST", Some(r#"{"content":"  "}"#), "empty"),
        (
            publish,
            "POST",
            Some(r#"{"content":"eleven chars"}"#),
            "longer than 10",
        ),
        (
            publish,
            "POST",
            Some(r#"{"content":"hi","userId":""}"#),
            "userId",
        ),
        (
            "/api/chats/rooms/bad%20room/messages",
            "POST",
            Some(r#"{"content":"hi"}"#),
            "roomId",
        ),
        (ban, "POST", None, "body"),
        (ban, "POST", Some(r#"{"reason":"x"}"#), "durationSecs"),
        (ban, "POST", Some(r#"{"durationSecs":0}"#), "durationSecs"),
        (ban, "POST", Some(r#"{"durationSecs":-5}"#), "invalid body"),
        (
            ban,
            "POST",
            Some(r#"{"durationSecs":"60"}"#),
            "invalid body",
        ),
        (
            ban,
            "POST",
            Some(r#"{"durationSecs":999999999999}"#),
            "durationSecs",
        ),
    ];
    for (path, method, body, says) in cases {
        let (status, answer) = request(server.addr, method, path, Some(&admin()), *body);
        assert_eq!(status, 400, "{method} {path} {body:?}: {answer}");
        let error = json_body(&answer)["error"].as_str().unwrap().to_string();
        assert!(error.contains(says), "{method} {path} {body:?}: {error}");
    }
    // Nothing was published, nobody banned.
    assert!(history_contents(&server, "lobby").is_empty());
    let (_eve, joined) = server.connect("eve", "lobby");
    assert_eq!(joined["type"], "room_joined");
    // A method the route does not take: 405 naming the ones it does.
    let (status, _) = request(server.addr, "PUT", ban, Some(&admin()), Some("{}"));
    assert!(status == 405 || status == 413, "{status}");
    let (status, _) = request(
        server.addr,
        "GET",
        "/api/chats/users/eve/disconnect",
        Some(&admin()),
        None,
    );
    assert_eq!(status, 405);
}

// ---- with Postgres ------------------------------------------------------

use common::{sql, TestDb};

#[test]
fn a_deleted_message_stays_gone_after_a_restart() {
    let Some(db) = TestDb::create() else { return };
    let env = [("DATABASE_URL", db.url.as_str())];
    let mut server = Server::start(&env);
    let (mut ann, _) = server.connect("ann", "pg-delete");
    for text in ["one", "two", "three"] {
        ann.send(json!({"type": "message", "content": text}));
    }
    let sent: Vec<Value> = (0..3).map(|_| ann.recv_type("message")).collect();
    // Deleted at once, most likely before its batch is written.
    let two = sent[1]["messageId"].as_str().unwrap();
    let path = format!("/api/chats/rooms/pg-delete/messages/{two}");
    let (status, _) = request(server.addr, "DELETE", &path, Some(&admin()), None);
    assert_eq!(status, 204);
    assert_eq!(ann.recv_type("message_deleted")["messageId"], two);
    // Deleted once written, too.
    let published = publish(&server, "pg-delete", "from the operator");
    let one = sent[0]["messageId"].as_str().unwrap();
    common::poll(FRAME_TIMEOUT, || {
        let n = sql(&db.url, "SELECT count(*) FROM chat_messages");
        (n[0][0].as_deref() == Some("3")).then_some(())
    })
    .expect("three rows written");
    let path = format!("/api/chats/rooms/pg-delete/messages/{one}");
    assert_eq!(
        request(server.addr, "DELETE", &path, Some(&admin()), None).0,
        204
    );
    stop(&mut server);

    let server = Server::start(&env);
    assert_eq!(
        history_contents(&server, "pg-delete"),
        ["three", "from the operator"]
    );
    let rows = sql(
        &db.url,
        "SELECT message_id FROM chat_messages ORDER BY message_id",
    );
    let stored: Vec<&str> = rows.iter().map(|r| r[0].as_deref().unwrap()).collect();
    assert_eq!(
        stored,
        [
            sent[2]["messageId"].as_str().unwrap(),
            published["messageId"].as_str().unwrap()
        ]
    );
    // Still unknown after the restart (read from Postgres): 404.
    let (status, _) = request(server.addr, "DELETE", &path, Some(&admin()), None);
    assert_eq!(status, 404);
    // The audit trail names the admin.
    let audit = sql(
        &db.url,
        "SELECT action, message_id, actor FROM chat_audit ORDER BY action, message_id",
    );
    let audit: Vec<(String, String, String)> = audit
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap(),
                r[1].clone().unwrap(),
                r[2].clone().unwrap_or_default(),
            )
        })
        .collect();
    let mut want = vec![
        ("deleted".to_string(), one.to_string(), "root".to_string()),
        ("deleted".to_string(), two.to_string(), "root".to_string()),
        (
            "published".to_string(),
            published["messageId"].as_str().unwrap().to_string(),
            "root".to_string(),
        ),
    ];
    want.sort();
    assert_eq!(audit, want);
}

#[test]
fn a_ban_survives_a_restart() {
    let Some(db) = TestDb::create() else { return };
    let env = [("DATABASE_URL", db.url.as_str())];
    let mut server = Server::start(&env);
    for (user, secs) in [("eve", 3600), ("mal", 3600)] {
        let (status, _) = request(
            server.addr,
            "POST",
            &format!("/api/chats/users/{user}/ban"),
            Some(&admin()),
            Some(&json!({"durationSecs": secs, "reason": "spam"}).to_string()),
        );
        assert_eq!(status, 204);
    }
    let (status, _) = request(
        server.addr,
        "DELETE",
        "/api/chats/users/mal/ban",
        Some(&admin()),
        None,
    );
    assert_eq!(status, 204);
    stop(&mut server);

    let server = Server::start(&env);
    let (status, body) = refused(&server, "eve", "lobby");
    assert_eq!(status, 403, "{body}");
    let (_mal, joined) = server.connect("mal", "lobby");
    assert_eq!(joined["type"], "room_joined");
    let bans = sql(&db.url, "SELECT user_id, reason, actor FROM chat_bans");
    assert_eq!(
        bans,
        [vec![
            Some("eve".into()),
            Some("spam".into()),
            Some("root".into())
        ]]
    );
    let audit = sql(
        &db.url,
        "SELECT action, user_id, actor, until IS NOT NULL FROM chat_audit ORDER BY at, action",
    );
    assert_eq!(audit.len(), 3, "{audit:?}");
    assert!(
        audit.iter().all(|r| r[2].as_deref() == Some("root")),
        "{audit:?}"
    );
    assert_eq!(
        audit
            .iter()
            .filter(|r| r[0].as_deref() == Some("banned"))
            .count(),
        2
    );
    assert_eq!(audit[2][0].as_deref(), Some("unbanned"));
}

// ---- with Redis -----------------------------------------------------------

const SHARED_REDIS: &str = "redis://127.0.0.1:6379/0";

/// A random key prefix whose keys are deleted when it drops.
struct Prefix {
    /// The prefix.
    name: String,
}

impl Prefix {
    /// A prefix for `test`, or None (SKIP) when Redis is not reachable.
    fn new(test: &str) -> Option<Prefix> {
        let addr: SocketAddr = "127.0.0.1:6379".parse().unwrap();
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            common::skip("Redis is not reachable on 127.0.0.1:6379");
            return None;
        }
        Some(Prefix {
            name: format!("chatdtest:{test}:{:08x}:", rand::random::<u32>()),
        })
    }

    /// The settings of an instance under this prefix.
    fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("REDIS_URL", SHARED_REDIS),
            ("REDIS_PREFIX", self.name.as_str()),
        ]
    }

    fn connection(&self) -> redis::Connection {
        redis::Client::open(SHARED_REDIS)
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(1))
            .unwrap()
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            let mut con = self.connection();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.name))
                .query(&mut con)
                .unwrap();
            if !keys.is_empty() {
                let _: () = redis::cmd("DEL").arg(keys).query(&mut con).unwrap();
            }
        });
    }
}

#[test]
fn operator_actions_on_one_instance_reach_another() {
    let Some(prefix) = Prefix::new("operator") else {
        return;
    };
    let one = Server::start(&prefix.env());
    let two = Server::start(&prefix.env());
    let (mut eve, _) = two.connect("eve", "shared");
    let (mut bob, _) = two.connect("bob", "shared");
    let (mut ann, _) = one.connect("ann", "shared");
    // Ann's message reaches Bob on the other instance; deleted on the first,
    // it leaves the second's history and Bob is told.
    ann.send(json!({"type": "message", "content": "oops"}));
    let oops = ann.recv_type("message");
    assert_eq!(bob.recv_type("message")["messageId"], oops["messageId"]);
    let id = oops["messageId"].as_str().unwrap();
    let path = format!("/api/chats/rooms/shared/messages/{id}");
    assert_eq!(
        request(one.addr, "DELETE", &path, Some(&admin()), None).0,
        204
    );
    let deleted = json!({"type": "message_deleted", "roomId": "shared", "messageId": id});
    assert_eq!(ann.recv_type("message_deleted"), deleted);
    assert_eq!(bob.recv_type("message_deleted"), deleted);
    assert!(history_contents(&two, "shared").is_empty());
    // A ban on the first closes Eve's connection on the second with 4003,
    // and the second refuses her upgrades.
    let (status, _) = request(
        one.addr,
        "POST",
        "/api/chats/users/eve/ban",
        Some(&admin()),
        Some(r#"{"durationSecs":3600}"#),
    );
    assert_eq!(status, 204);
    assert_eq!(eve.expect_close(), Some(4003));
    // Every core of the second instance has it once its owner core's copy
    // reached them (a moment after the close above, on another core).
    let (status, body) = common::poll(FRAME_TIMEOUT, || {
        let url = format!(
            "ws://{}/ws?token={}&roomId=shared",
            two.addr,
            two.token("eve")
        );
        Client::open(&url).err()
    })
    .expect("eve refused by the second instance");
    assert_eq!(status, 403, "{body}");
    // The ban is kept in Redis, expiring with the ban, for instances that
    // start later: a third one refuses her too.
    let mut con = prefix.connection();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}ban:eve", prefix.name))
        .query(&mut con)
        .unwrap();
    assert!(ttl > 3_500_000 && ttl <= 3_600_000, "{ttl}");
    let three = Server::start(&prefix.env());
    assert_eq!(refused(&three, "eve", "shared").0, 403);
    // Lifted on the second: the key is gone and the first takes her again.
    let (status, _) = request(
        two.addr,
        "DELETE",
        "/api/chats/users/eve/ban",
        Some(&admin()),
        None,
    );
    assert_eq!(status, 204);
    // The key is deleted by the Redis thread, after the 204: bounded wait.
    let gone = common::poll(FRAME_TIMEOUT, || {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(format!("{}ban:eve", prefix.name))
            .query(&mut con)
            .unwrap();
        (exists == 0).then_some(())
    });
    assert_eq!(gone, Some(()), "the ban key outlived the unban");
    let back = common::poll(FRAME_TIMEOUT, || {
        let url = format!(
            "ws://{}/ws?token={}&roomId=shared",
            one.addr,
            one.token("eve")
        );
        Client::open(&url).ok()
    });
    assert!(back.is_some(), "eve still refused on the first instance");
    // A disconnect on the second closes Ann's connection on the first with 4002.
    let (status, _) = request(
        two.addr,
        "POST",
        "/api/chats/users/ann/disconnect",
        Some(&admin()),
        None,
    );
    assert_eq!(status, 204);
    assert_eq!(ann.expect_close(), Some(4002));
}
