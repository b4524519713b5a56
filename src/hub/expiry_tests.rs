//! Token expiry and `refresh` (contract section 8) on two in-process hubs
//! over the test mesh, the clocks moved by hand: a connection whose token
//! has `exp` is closed with 4001 once `exp` plus TOKEN_EXPIRY_GRACE_MS has
//! passed and not before; a valid `refresh` of the same user moves that
//! moment (or removes it), any other refresh is `invalid_token` and leaves
//! it where it was.

use std::rc::Rc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::testkit::{frames, of_type, owned_by, World, TEST_SECRET, WALL_EPOCH_SECS};
use super::TOKEN_EXPIRED_CLOSE;
use crate::client::Client;
use crate::metrics::CloseReason;
use crate::ratelimit::REFRESH_BURST;

/// The default grace (TOKEN_EXPIRY_GRACE_MS 25000).
const GRACE: Duration = Duration::from_secs(25);

/// An HS256 token with `claims`, signed with the hubs' secret.
fn token(claims: Value) -> String {
    let key = EncodingKey::from_secret(TEST_SECRET);
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("signs")
}

/// A `refresh` frame carrying `token`.
fn refresh(token: &str) -> String {
    json!({"type": "refresh", "token": token}).to_string()
}

/// The world's wall clock `secs` after it was built, in Unix seconds.
fn at(secs: u64) -> u64 {
    WALL_EPOCH_SECS + secs
}

/// Two hubs, a room owned by core 1 and `ann` connected on core 0 with a
/// token expiring 10 s after the start (closed at 35 s by default).
fn world_with_ann() -> (World, Rc<Client>) {
    let mut w = World::new(2, &[]);
    let room = owned_by(1, 2, "room");
    let ann = w.open_exp(0, "ann", &room, Some(at(10)));
    w.pump();
    frames(&ann, w.now);
    (w, ann)
}

/// Sweeps every hub at the current moment with `clients` read up and
/// heard from just before, as live clients would be: only the token can
/// close them (not the idle timeout or the write stall).
fn sweep_live(w: &mut World, clients: &[&Rc<Client>]) {
    for client in clients {
        frames(client, w.now);
        client.touch(w.now);
    }
    w.sweep();
}

/// The `error` frames' codes among `got`.
fn error_codes(got: &[Value]) -> Vec<String> {
    of_type(got, "error")
        .into_iter()
        .map(|f| f["code"].as_str().expect("code").to_string())
        .collect()
}

#[test]
fn a_token_is_closed_4001_exactly_at_exp_plus_grace_and_not_before() {
    let (mut w, ann) = world_with_ann();
    let room = owned_by(1, 2, "room");
    let bob = w.open(1, "bob", &room, None);
    w.pump();
    let deadline = w.t0 + Duration::from_secs(10) + GRACE;
    assert_eq!(w.hubs[0].token_deadline(ann.id), Some(deadline));
    assert_eq!(
        w.hubs[1].token_deadline(bob.id),
        None,
        "no exp, no deadline"
    );
    w.now = deadline - Duration::from_millis(1);
    sweep_live(&mut w, &[&ann, &bob]);
    assert_eq!(ann.close_request(), None);
    assert_eq!(w.reap(), []);
    w.now = deadline;
    sweep_live(&mut w, &[&ann, &bob]);
    assert_eq!(
        ann.close_request(),
        Some((TOKEN_EXPIRED_CLOSE, CloseReason::TokenExpired))
    );
    assert_eq!(w.reap(), [(ann.id, 4001)]);
    assert_eq!(
        w.hubs[0]
            .metrics
            .connections_closed
            .get(&CloseReason::TokenExpired),
        Some(&1)
    );
    assert!(w.hubs[0].expiry.is_empty(), "gone from the wheel");
    // The user is offline for the others; bob, without exp, stays.
    w.pump();
    let offline: Vec<Value> = of_type(&frames(&bob, w.now), "presence")
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(offline.len(), 1);
    assert_eq!(offline[0]["userId"], "ann");
    assert_eq!(offline[0]["status"], "offline");
    w.advance(Duration::from_secs(3600));
    sweep_live(&mut w, &[&bob]);
    assert_eq!(bob.close_request(), None);
}

#[test]
fn the_grace_is_the_setting() {
    let mut w = World::new(2, &["--token-expiry-grace-ms", "0"]);
    let room = owned_by(0, 2, "room");
    let ann = w.open_exp(1, "ann", &room, Some(at(10)));
    w.now = w.t0 + Duration::from_millis(9_999);
    sweep_live(&mut w, &[&ann]);
    assert_eq!(w.reap(), []);
    w.now = w.t0 + Duration::from_secs(10);
    sweep_live(&mut w, &[&ann]);
    assert_eq!(w.reap(), [(ann.id, 4001)]);
}

#[test]
fn a_refresh_moves_the_deadline() {
    let (mut w, ann) = world_with_ann();
    w.advance(Duration::from_secs(5));
    w.text(
        &ann,
        &refresh(&token(json!({"sub": "ann", "exp": at(100)}))),
    );
    let got = frames(&ann, w.now);
    assert_eq!(got, [json!({"type": "refreshed", "exp": at(100)})]);
    let deadline = w.t0 + Duration::from_secs(100) + GRACE;
    assert_eq!(w.hubs[0].token_deadline(ann.id), Some(deadline));
    // Past the old deadline: still open.
    w.now = w.t0 + Duration::from_secs(36);
    sweep_live(&mut w, &[&ann]);
    assert_eq!(w.reap(), []);
    w.now = deadline - Duration::from_millis(1);
    sweep_live(&mut w, &[&ann]);
    assert_eq!(w.reap(), []);
    w.now = deadline;
    sweep_live(&mut w, &[&ann]);
    assert_eq!(w.reap(), [(ann.id, 4001)]);
}

#[test]
fn a_refresh_without_exp_removes_the_deadline() {
    let (mut w, ann) = world_with_ann();
    w.text(&ann, &refresh(&token(json!({"sub": "ann"}))));
    assert_eq!(
        frames(&ann, w.now),
        [json!({"type": "refreshed", "exp": null})]
    );
    assert_eq!(w.hubs[0].token_deadline(ann.id), None);
    w.advance(Duration::from_secs(24 * 3600));
    sweep_live(&mut w, &[&ann]);
    assert_eq!(ann.close_request(), None);
    // A later token with exp brings a deadline back.
    w.text(
        &ann,
        &refresh(&token(json!({"sub": "ann", "exp": at(90_000)}))),
    );
    let deadline = w.t0 + Duration::from_secs(90_000) + GRACE;
    assert_eq!(w.hubs[0].token_deadline(ann.id), Some(deadline));
}

#[test]
fn a_bad_expired_or_other_users_refresh_is_invalid_token_and_keeps_the_old_deadline() {
    let (mut w, ann) = world_with_ann();
    let deadline = w.t0 + Duration::from_secs(10) + GRACE;
    let other_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "ann", "exp": at(1_000)}),
        &EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    let refusals = [
        ("garbage".to_string(), "malformed token"),
        (String::new(), "missing token"),
        (other_secret, "invalid token signature"),
        // Expired beyond the 5 s leeway, at the hubs' wall clock.
        (
            token(json!({"sub": "ann", "exp": at(0) - 6})),
            "token expired",
        ),
        (
            token(json!({"sub": "mallory", "exp": at(1_000)})),
            "another user",
        ),
        (
            token(json!({"userId": "mallory", "exp": at(1_000)})),
            "another user",
        ),
    ];
    for (i, (bad, why)) in refusals.iter().enumerate() {
        // The burst, then one per interval: none is rate limited.
        if i >= REFRESH_BURST as usize {
            w.advance(Duration::from_secs(10));
        }
        w.text(&ann, &refresh(bad));
        let got = frames(&ann, w.now);
        assert_eq!(error_codes(&got), ["invalid_token"], "{why}");
        let message = got[0]["message"].as_str().unwrap();
        assert!(message.contains(why), "{message:?} for {why}");
        assert_eq!(w.hubs[0].token_deadline(ann.id), Some(deadline), "{why}");
    }
    assert_eq!(
        w.hubs[0]
            .metrics
            .errors
            .get(&crate::protocol::ErrorCode::InvalidToken),
        Some(&6)
    );
    // The old deadline still applies.
    assert!(w.now < deadline);
    w.now = deadline - Duration::from_millis(1);
    sweep_live(&mut w, &[&ann]);
    assert_eq!(w.reap(), []);
    w.now = deadline;
    sweep_live(&mut w, &[&ann]);
    assert_eq!(w.reap(), [(ann.id, 4001)]);
}

#[test]
fn refresh_frames_have_a_budget() {
    let (mut w, ann) = world_with_ann();
    let good = refresh(&token(json!({"sub": "ann", "exp": at(500)})));
    for _ in 0..REFRESH_BURST {
        w.text(&ann, &good);
    }
    assert_eq!(of_type(&frames(&ann, w.now), "refreshed").len(), 3);
    let later = refresh(&token(json!({"sub": "ann", "exp": at(900)})));
    w.text(&ann, &later);
    let got = frames(&ann, w.now);
    assert_eq!(error_codes(&got), ["rate_limited"]);
    assert_eq!(got[0]["retryAfterMs"], 10_000);
    // Refused before verification: the deadline is the last accepted one.
    let deadline = w.t0 + Duration::from_secs(500) + GRACE;
    assert_eq!(w.hubs[0].token_deadline(ann.id), Some(deadline));
    w.advance(Duration::from_secs(10));
    w.text(&ann, &later);
    assert_eq!(of_type(&frames(&ann, w.now), "refreshed").len(), 1);
}

#[test]
fn a_token_already_past_its_deadline_at_open_is_closed_at_the_next_sweep() {
    let mut w = World::new(2, &[]);
    let room = owned_by(1, 2, "room");
    // exp 30 s ago: within no leeway, but the grace (25 s) has passed too.
    w.advance(Duration::from_secs(60));
    let ann = w.open_exp(0, "ann", &room, Some(at(30)));
    w.pump();
    assert_eq!(w.hubs[0].token_deadline(ann.id), Some(w.now));
    sweep_live(&mut w, &[&ann]);
    assert_eq!(w.reap(), [(ann.id, 4001)]);
}

#[test]
fn a_closed_connection_leaves_the_wheel() {
    let (mut w, ann) = world_with_ann();
    assert_eq!(w.hubs[0].expiry.len(), 1);
    w.close(&ann, CloseReason::Client);
    assert!(w.hubs[0].expiry.is_empty());
    w.advance(Duration::from_secs(60));
    sweep_live(&mut w, &[&ann]);
    assert_eq!(w.reap(), []);
}
