//! Long-lived sessions over real sockets (contract section 8): a connection
//! whose token's `exp` plus the grace passes is closed with 4001, and one
//! that sent a valid `refresh` first stays open past the old deadline.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Client, Server, SECRET};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tungstenite::Message;

/// The wall clock in Unix seconds.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// An HS256 token with exactly `claims`, signed with the servers' secret.
fn token(claims: Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

/// Connects with `token` to `room`; returns the client after `room_joined`.
fn connect(server: &Server, token: &str, room: &str) -> Client {
    let url = format!("ws://{}/ws?token={token}&roomId={room}", server.addr);
    let mut client = Client::open(&url).expect("upgrade accepted");
    assert_eq!(client.recv()["type"], "room_joined");
    client
}

/// Reads until the server's close frame, for at most `limit`; returns its
/// code and reason. Data frames before it are skipped.
fn close_within(client: &mut Client, limit: Duration) -> (u16, String) {
    let stream = client.ws.get_ref();
    stream.set_read_timeout(Some(limit)).unwrap();
    loop {
        match client.ws.read() {
            Ok(Message::Close(Some(frame))) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Ok(Message::Close(None)) => panic!("closed without a code"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame within {limit:?}: {e}"),
        }
    }
}

#[test]
fn an_expired_token_is_closed_4001_and_a_refreshed_one_stays_open() {
    // TOKEN_EXPIRY_GRACE_MS=1000 rather than the default 25 s: the grace is
    // waited out in full before the close this test asserts, and 1 s runs
    // the same code path 24 s sooner.
    let server = Server::start(&[("TOKEN_EXPIRY_GRACE_MS", "1000")]);
    let exp = unix_now() as u64 + 2;
    let deadline = exp as f64 + 1.0;
    let mut ann = connect(&server, &token(json!({"sub": "ann", "exp": exp})), "s1");
    let mut bob = connect(&server, &token(json!({"sub": "bob", "exp": exp})), "s1");
    // Bob refreshes with a token of his own: answered `refreshed`.
    let later = exp + 3600;
    bob.send(json!({"type": "refresh", "token": token(json!({"sub": "bob", "exp": later}))}));
    assert_eq!(
        bob.recv_type("refreshed"),
        json!({"type": "refreshed", "exp": later})
    );
    // Ann tries a token of another user: refused, her deadline stands.
    let bobs = token(json!({"sub": "bob", "exp": later}));
    ann.send(json!({"type": "refresh", "token": bobs}));
    let refused = ann.recv_type("error");
    assert_eq!(refused["code"], "invalid_token", "{refused}");
    // Ann's close arrives, after exp + grace (the server's clock is ours)
    // and within a bounded wait (the sweep looks every second).
    let started = Instant::now();
    let left = Duration::from_secs_f64((deadline - unix_now()).max(0.0));
    let (code, reason) = close_within(&mut ann, left + Duration::from_secs(5));
    assert_eq!((code, reason.as_str()), (4001, "token expired"));
    assert!(
        unix_now() >= deadline,
        "closed {:.3} s before exp + grace",
        deadline - unix_now()
    );
    assert!(started.elapsed() < left + Duration::from_secs(5));
    // Bob, past the same old deadline, is still served.
    bob.send(json!({"type": "ping"}));
    assert_eq!(bob.recv_type("pong"), json!({"type": "pong"}));
    assert_eq!(
        server.wait_metric(
            "chat_connections_closed_total{reason=\"token_expired\"}",
            1.0
        ),
        Some(1.0)
    );
    assert_eq!(
        server.wait_metric("chat_errors_total{code=\"invalid_token\"}", 1.0),
        Some(1.0)
    );
    bob.close();
}

#[test]
fn a_refresh_without_exp_lifts_the_expiry_and_bad_ones_are_invalid_token() {
    // Defaults: nothing here waits for a deadline.
    let server = Server::default_start();
    let exp = unix_now() as u64 + 60;
    let mut cat = connect(&server, &token(json!({"sub": "cat", "exp": exp})), "s2");
    for bad in [
        "not-a-token".to_string(),
        token(json!({"sub": "cat", "exp": exp - 3600})),
    ] {
        cat.send(json!({"type": "refresh", "token": bad}));
        let e = cat.recv_type("error");
        assert_eq!(e["code"], "invalid_token", "{e}");
    }
    cat.send(json!({"type": "refresh", "token": token(json!({"sub": "cat"}))}));
    assert_eq!(
        cat.recv_type("refreshed"),
        json!({"type": "refreshed", "exp": null})
    );
    // A fourth refresh at once is over the budget (3, then one per 10 s).
    cat.send(json!({"type": "refresh", "token": token(json!({"sub": "cat"}))}));
    let limited = cat.recv_type("error");
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    assert!(limited["retryAfterMs"].as_u64().unwrap() > 0);
    // A refresh frame without a token is a malformed frame.
    cat.send(json!({"type": "refresh"}));
    assert_eq!(cat.recv_type("error")["code"], "invalid_message");
    cat.close();
}
