//! Plain HTTP routes, answered on the accepting core: health, metrics,
//! history, presence, the operator API, API docs, the demo page and the JS
//! client. Answers that live on another core (a room's history, a user's
//! status, a delete or a ban) are fetched with a mesh query.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use crate::auth::Identity;
use crate::http;
use crate::hub::Asked;
use crate::metrics::CoreSnapshot;
use crate::protocol::{self, HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT};
use crate::redis::worker::Link;
use crate::runtime::server::{CoreCtx, HttpRequest, QUERY_TIMEOUT};
use crate::shard::{Answer, BanChange, Query};

const JSON: &str = "application/json";
/// Longest wait for a cluster-wide presence read before answering locally.
const REDIS_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers one plain HTTP request with a complete response.
pub async fn handle(ctx: &Rc<CoreCtx>, req: &HttpRequest) -> Vec<u8> {
    let keep = req.keep_alive;
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let allow = match segments.as_slice() {
        ["api", "chats", "rooms", _, "messages"] => Some("GET, HEAD, POST"),
        ["api", "chats", "rooms", _, "messages", _] => Some("DELETE"),
        ["api", "chats", "users", _, "ban"] => Some("POST, DELETE"),
        ["api", "chats", "users", _, "disconnect"] => Some("POST"),
        ["healthz"]
        | ["metrics"]
        | ["api", "chats", "rooms", _, "presence"]
        | ["api", "chats", "users", _, "status"]
        | ["" | "app.js" | "app.css"]
        | ["js", _] => Some("GET, HEAD"),
        _ => None,
    };
    if let Some(allow) = allow {
        if !allow.split(", ").any(|m| m == req.method) {
            return http::response(
                405,
                JSON,
                br#"{"error":"method not allowed"}"#,
                keep,
                &[("Allow", allow)],
            );
        }
    }
    match segments.as_slice() {
        ["healthz"] => healthz(ctx, keep),
        ["metrics"] => metrics(ctx, keep).await,
        ["api", "chats", "rooms", room, "messages"] if req.method == "POST" => {
            match authorize_admin(ctx, req) {
                Ok(admin) => operator_publish(ctx, req, &decode(room), &admin).await,
                Err(resp) => resp,
            }
        }
        ["api", "chats", "rooms", room, "messages", id] => match authorize_admin(ctx, req) {
            Ok(admin) => operator_delete(ctx, &decode(room), &decode(id), &admin, keep).await,
            Err(resp) => resp,
        },
        ["api", "chats", "users", user, "ban"] => match authorize_admin(ctx, req) {
            Ok(admin) => operator_ban(ctx, req, &decode(user), &admin).await,
            Err(resp) => resp,
        },
        ["api", "chats", "users", user, "disconnect"] => match authorize_admin(ctx, req) {
            Ok(admin) => operator_disconnect(ctx, &decode(user), &admin, keep),
            Err(resp) => resp,
        },
        ["api", "chats", "rooms", room, "messages"] => match authorize(ctx, req) {
            Ok(_) => history(ctx, req, &decode(room), keep).await,
            Err(resp) => resp,
        },
        ["api", "chats", "rooms", room, "presence"] => match authorize(ctx, req) {
            Ok(_) => room_presence(ctx, &decode(room), keep).await,
            Err(resp) => resp,
        },
        ["api", "chats", "users", user, "status"] => match authorize(ctx, req) {
            Ok(_) => user_status(ctx, &decode(user), keep).await,
            Err(resp) => resp,
        },
        ["" | "app.js" | "app.css"] => web(req, keep),
        ["js", _] => web(req, keep),
        _ => match crate::openapi::asset(&req.path) {
            Some((content_type, body)) => http::response(200, content_type, &body, keep, &[]),
            None => http::json_error(404, "not found", keep),
        },
    }
}

/// A file of the demo page or the JS client (web.rs).
fn web(req: &HttpRequest, keep: bool) -> Vec<u8> {
    match crate::web::asset(&req.path) {
        Some(a) => http::response(200, a.content_type, a.body, keep, a.headers),
        None => http::json_error(404, "not found", keep),
    }
}

/// Percent-decodes a path segment.
fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// Checks the Bearer token; the error is a ready 401 response.
fn authorize(ctx: &CoreCtx, req: &HttpRequest) -> Result<Identity, Vec<u8>> {
    let token = req.authorization.as_deref().and_then(http::bearer_token);
    let Some(token) = token else {
        return Err(http::json_error(
            401,
            "missing bearer token",
            req.keep_alive,
        ));
    };
    ctx.shared
        .verifier
        .verify(token)
        .map_err(|e| http::json_error(401, &format!("invalid token: {e}"), req.keep_alive))
}

/// Checks the Bearer token and that it grants the operator API: 401 as
/// [`authorize`], 403 for a valid token without the admin role.
fn authorize_admin(ctx: &CoreCtx, req: &HttpRequest) -> Result<Identity, Vec<u8>> {
    let identity = authorize(ctx, req)?;
    if !identity.admin {
        return Err(http::json_error(
            403,
            "forbidden: the operator API needs a token whose role is admin",
            req.keep_alive,
        ));
    }
    Ok(identity)
}

fn healthz(ctx: &CoreCtx, keep: bool) -> Vec<u8> {
    if ctx.shutdown.is_triggered() {
        return http::response(503, JSON, br#"{"status":"draining"}"#, keep, &[]);
    }
    let health = &ctx.shared.health;
    let down = health.down();
    let body = serde_json::json!({
        "status": if down.is_empty() { "ok" } else { "degraded" },
        "cores": ctx.router.cores(),
        "backends": {
            "redis": health.redis.get().as_str(),
            "postgres": health.postgres.get().as_str(),
        },
        "down": down,
    });
    let status = if down.is_empty() { 200 } else { 503 };
    http::response(status, JSON, body.to_string().as_bytes(), keep, &[])
}

/// Asks a core and waits (bounded) for the answer.
async fn ask(ctx: &Rc<CoreCtx>, target: usize, query: Query) -> Option<Answer> {
    let asked = ctx.with_hub(|hub| hub.ask(target, query, Instant::now()));
    match asked {
        Asked::Ready(answer) => Some(answer),
        Asked::Later(rx) => glommio::timer::timeout(QUERY_TIMEOUT, async { Ok(rx.await.ok()) })
            .await
            .ok()
            .flatten(),
    }
}

/// A cluster-wide read from Redis (bounded); None without Redis, while it
/// is down, or when it does not answer in time: the caller then answers from
/// this instance's own state.
async fn redis_read<T, F, Fut>(ctx: &CoreCtx, read: F) -> Option<T>
where
    F: FnOnce(&Link) -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    // On this core's lane, like the core's own commands.
    let redis = ctx
        .shared
        .redis
        .as_ref()
        .filter(|r| r.up())?
        .for_core(ctx.router.core());
    let fut = read(&redis);
    glommio::timer::timeout(REDIS_READ_TIMEOUT, async { Ok(fut.await) })
        .await
        .ok()
        .flatten()
}

async fn metrics(ctx: &Rc<CoreCtx>, keep: bool) -> Vec<u8> {
    let Some(total) = merged_snapshot(ctx).await else {
        return http::json_error(503, "a core did not answer", keep);
    };
    let mut extra = format!(
        "# HELP chat_cores Executor cores.\n# TYPE chat_cores gauge\nchat_cores {}\n",
        ctx.router.cores()
    );
    if let Some(pg) = &ctx.shared.pg {
        pg.render_metrics(&mut extra);
    }
    if let Some(redis) = &ctx.shared.redis {
        extra.push_str(&redis.metrics.render(redis.queued()));
    }
    let body = total.render(&extra);
    http::response(200, "text/plain; version=0.0.4", body.as_bytes(), keep, &[])
}

/// Every core's counters merged: the process's cached copy when it is under
/// [`crate::metrics::SNAPSHOT_MAX_AGE`] old, else a fresh round of queries
/// (then cached). None when a core did not answer.
async fn merged_snapshot(ctx: &Rc<CoreCtx>) -> Option<CoreSnapshot> {
    let cached = ctx
        .shared
        .metrics_cache
        .lock()
        .ok()
        .and_then(|c| c.fresh(Instant::now()).cloned());
    if cached.is_some() {
        return cached;
    }
    let taken = Instant::now();
    let mut total = CoreSnapshot::default();
    for core in 0..ctx.router.cores() {
        match ask(ctx, core, Query::Metrics).await {
            Some(Answer::Metrics(snapshot)) => total.merge(&snapshot),
            _ => return None,
        }
    }
    if let Ok(mut cache) = ctx.shared.metrics_cache.lock() {
        cache.store(taken, total.clone());
    }
    Some(total)
}

/// Parses an optional message id parameter; Err is a ready 400.
fn id_param(req: &HttpRequest, name: &str) -> Result<Option<protocol::MessageId>, Vec<u8>> {
    match http::query_param(&req.query, name) {
        None => Ok(None),
        Some(v) => protocol::parse_message_id(&v).map(Some).ok_or_else(|| {
            http::json_error(
                400,
                &format!("invalid {name}: not a message id"),
                req.keep_alive,
            )
        }),
    }
}

async fn history(ctx: &Rc<CoreCtx>, req: &HttpRequest, room: &str, keep: bool) -> Vec<u8> {
    if !protocol::valid_room_id(room) {
        return http::json_error(400, "invalid roomId", keep);
    }
    let limit = match http::query_param(&req.query, "limit")
        .as_deref()
        .map(str::parse::<usize>)
    {
        None => HISTORY_DEFAULT_LIMIT,
        Some(Ok(n)) if n > 0 => n.min(HISTORY_MAX_LIMIT),
        Some(_) => {
            return http::json_error(400, "invalid limit: a whole number from 1 to 200", keep)
        }
    };
    let (before, after) = match (id_param(req, "before"), id_param(req, "after")) {
        (Ok(b), Ok(a)) => (b, a),
        (Err(resp), _) | (_, Err(resp)) => return resp,
    };
    let room: Arc<str> = Arc::from(room);
    let owner = ctx.hub.borrow().owner_of(&room);
    let query = Query::History {
        room: room.clone(),
        before,
        after,
        limit,
    };
    match ask(ctx, owner, query).await {
        Some(Answer::Messages(messages)) => {
            let body = protocol::encode_history(&room, messages.iter().map(|m| &m[..]), false);
            http::response(200, JSON, &body, keep, &[])
        }
        _ => http::json_error(503, "history is unavailable", keep),
    }
}

async fn room_presence(ctx: &Rc<CoreCtx>, room: &str, keep: bool) -> Vec<u8> {
    if !protocol::valid_room_id(room) {
        return http::json_error(400, "invalid roomId", keep);
    }
    if let Some(users) = redis_read(ctx, |r| r.room_users(Arc::from(room))).await {
        let body = serde_json::json!({ "roomId": room, "online": users });
        return http::response(200, JSON, body.to_string().as_bytes(), keep, &[]);
    }
    let owner = ctx.hub.borrow().owner_of(room);
    match ask(ctx, owner, Query::RoomOnline(Arc::from(room))).await {
        Some(Answer::Users(users)) => {
            let online: Vec<&str> = users.iter().map(|u| &**u).collect();
            let body = serde_json::json!({ "roomId": room, "online": online });
            http::response(200, JSON, body.to_string().as_bytes(), keep, &[])
        }
        _ => http::json_error(503, "presence is unavailable", keep),
    }
}

async fn user_status(ctx: &Rc<CoreCtx>, user: &str, keep: bool) -> Vec<u8> {
    if user.is_empty() || user.len() > 128 {
        return http::json_error(400, "invalid userId", keep);
    }
    if let Some(online) = redis_read(ctx, |r| r.user_status(Arc::from(user))).await {
        let status = if online { "online" } else { "offline" };
        let body = serde_json::json!({ "userId": user, "status": status });
        return http::response(200, JSON, body.to_string().as_bytes(), keep, &[]);
    }
    let owner = ctx.hub.borrow().owner_of(user);
    match ask(ctx, owner, Query::UserOnline(Arc::from(user))).await {
        Some(Answer::Users(users)) => {
            let status: Cow<str> = if users.is_empty() {
                "offline".into()
            } else {
                "online".into()
            };
            let body = serde_json::json!({ "userId": user, "status": status });
            http::response(200, JSON, body.to_string().as_bytes(), keep, &[])
        }
        _ => http::json_error(503, "presence is unavailable", keep),
    }
}

// ---- the operator API (contract section 8; hub/operator.rs) -------------

/// Longest ban, in seconds (ten years): a longer one is a mistake.
pub const MAX_BAN_SECS: u64 = 10 * 365 * 24 * 3600;
/// Longest ban reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// The body of an operator's publish.
#[derive(Deserialize)]
struct PublishBody {
    /// The message text, checked like a member's.
    content: String,
    /// Who the message is from (default `system`).
    #[serde(rename = "userId", default)]
    user_id: Option<String>,
    /// The name shown (default `System`).
    #[serde(default)]
    username: Option<String>,
}

/// The body of a ban.
#[derive(Deserialize)]
struct BanBody {
    /// How long the ban lasts, in seconds (1 to [`MAX_BAN_SECS`]).
    #[serde(rename = "durationSecs")]
    duration_secs: u64,
    /// Why, for the audit trail.
    #[serde(default)]
    reason: Option<String>,
}

/// Parses a JSON body; Err is a ready 400 naming what is wrong.
fn json_body<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, Vec<u8>> {
    if req.body.is_empty() {
        return Err(http::json_error(400, "missing JSON body", req.keep_alive));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| http::json_error(400, &format!("invalid body: {e}"), req.keep_alive))
}

/// Checks a user id from a path or a body (the token's rules); Err is a
/// ready 400.
fn user_id_param(user: &str, keep: bool) -> Result<(), Vec<u8>> {
    if user.is_empty()
        || user.len() > crate::auth::MAX_USER_ID_LEN
        || user.contains(char::is_control)
    {
        return Err(http::json_error(
            400,
            "invalid userId: 1 to 128 bytes without control characters",
            keep,
        ));
    }
    Ok(())
}

/// `POST /api/chats/rooms/{roomId}/messages`: publishes as an operator;
/// `201` with the `message` frame.
async fn operator_publish(
    ctx: &Rc<CoreCtx>,
    req: &HttpRequest,
    room: &str,
    admin: &Identity,
) -> Vec<u8> {
    let keep = req.keep_alive;
    if !protocol::valid_room_id(room) {
        return http::json_error(400, "invalid roomId", keep);
    }
    let body: PublishBody = match json_body(req) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    if body.content.trim().is_empty() {
        return http::json_error(400, "invalid content: empty or whitespace only", keep);
    }
    let max = ctx.hub.borrow().max_message_chars();
    if body.content.chars().count() > max {
        return http::json_error(
            400,
            &format!("invalid content: longer than {max} characters"),
            keep,
        );
    }
    let user_id = body.user_id.unwrap_or_else(|| "system".to_string());
    if let Err(resp) = user_id_param(&user_id, keep) {
        return resp;
    }
    let username = crate::auth::display_name(body.username.as_deref().unwrap_or("System"));
    let user_id: Arc<str> = Arc::from(user_id);
    let identity = Identity {
        username: if username.is_empty() {
            user_id.clone()
        } else {
            Arc::from(username)
        },
        user_id: user_id.clone(),
        admin: false,
    };
    let room: Arc<str> = Arc::from(room);
    let (now, wall) = (Instant::now(), SystemTime::now());
    let asked = ctx
        .with_hub(|hub| hub.publish_as_operator(room.clone(), identity, body.content, now, wall));
    let answer = match asked {
        Asked::Ready(answer) => Some(answer),
        Asked::Later(rx) => glommio::timer::timeout(QUERY_TIMEOUT, async { Ok(rx.await.ok()) })
            .await
            .ok()
            .flatten(),
    };
    let Some(Answer::Frame(frame)) = answer else {
        return http::json_error(503, "the message was not confirmed in time", keep);
    };
    let parsed: serde_json::Value = serde_json::from_slice(&frame).unwrap_or_default();
    if parsed["type"] == "message" {
        let id = parsed["messageId"]
            .as_str()
            .and_then(protocol::parse_message_id);
        let at = crate::hub::wall_ms(wall);
        let actor = admin.user_id.clone();
        ctx.with_hub(|hub| {
            hub.record_operator(
                crate::moderation::AuditAction::Published,
                id,
                user_id,
                room,
                actor,
                None,
                None,
                at,
            )
        });
        return http::response(201, JSON, &frame, keep, &[]);
    }
    let code = parsed["code"].as_str().unwrap_or("internal");
    let status = match code {
        "message_blocked" => 422,
        "unavailable" => 503,
        "rate_limited" => 429,
        _ => 500,
    };
    let text = parsed["message"]
        .as_str()
        .unwrap_or("the message was refused");
    let body = serde_json::json!({ "error": text, "code": code });
    http::response(status, JSON, body.to_string().as_bytes(), keep, &[])
}

/// `DELETE /api/chats/rooms/{roomId}/messages/{messageId}`: `204`, or
/// `404` when the room holds no such message.
async fn operator_delete(
    ctx: &Rc<CoreCtx>,
    room: &str,
    id: &str,
    admin: &Identity,
    keep: bool,
) -> Vec<u8> {
    if !protocol::valid_room_id(room) {
        return http::json_error(400, "invalid roomId", keep);
    }
    let Some(message_id) = protocol::parse_message_id(id) else {
        return http::json_error(400, "invalid messageId: not a message id", keep);
    };
    let room: Arc<str> = Arc::from(room);
    let owner = ctx.hub.borrow().owner_of(&room);
    let query = Query::Delete {
        room: room.clone(),
        id: message_id,
        actor: admin.user_id.clone(),
        at_ms: crate::hub::wall_ms(SystemTime::now()),
    };
    match ask(ctx, owner, query).await {
        Some(Answer::Done) => http::no_content(keep),
        Some(Answer::NotFound) => {
            http::json_error(404, &format!("no message {id} in room {room}"), keep)
        }
        _ => http::json_error(
            503,
            "history is unavailable; the message was not deleted",
            keep,
        ),
    }
}

/// `POST` (ban) and `DELETE` (unban) `/api/chats/users/{userId}/ban`:
/// `204` once every core applied it.
async fn operator_ban(
    ctx: &Rc<CoreCtx>,
    req: &HttpRequest,
    user: &str,
    admin: &Identity,
) -> Vec<u8> {
    let keep = req.keep_alive;
    if let Err(resp) = user_id_param(user, keep) {
        return resp;
    }
    let at_ms = crate::hub::wall_ms(SystemTime::now());
    let (until_ms, reason) = if req.method == "POST" {
        let body: BanBody = match json_body(req) {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        if !(1..=MAX_BAN_SECS).contains(&body.duration_secs) {
            return http::json_error(
                400,
                &format!("invalid durationSecs: a whole number from 1 to {MAX_BAN_SECS}"),
                keep,
            );
        }
        if body
            .reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
        {
            return http::json_error(
                400,
                &format!("invalid reason: longer than {MAX_REASON_CHARS} characters"),
                keep,
            );
        }
        (Some(at_ms + body.duration_secs * 1000), body.reason)
    } else {
        (None, None)
    };
    let user: Arc<str> = Arc::from(user);
    let owner = ctx.hub.borrow().owner_of(&user);
    let change = BanChange {
        user,
        until_ms,
        reason,
        actor: admin.user_id.clone(),
        at_ms,
    };
    match ask(ctx, owner, Query::Ban(Box::new(change))).await {
        Some(Answer::Done) => http::no_content(keep),
        Some(Answer::Refused(text)) => http::json_error(503, &text, keep),
        _ => http::json_error(503, "a core did not answer; retry", keep),
    }
}

/// `POST /api/chats/users/{userId}/disconnect`: every connection of the
/// user closes with 4002; `204`.
fn operator_disconnect(ctx: &Rc<CoreCtx>, user: &str, admin: &Identity, keep: bool) -> Vec<u8> {
    if let Err(resp) = user_id_param(user, keep) {
        return resp;
    }
    let (user, actor) = (Arc::from(user), admin.user_id.clone());
    ctx.with_hub(|hub| hub.disconnect_user(user, actor, SystemTime::now()));
    http::no_content(keep)
}
