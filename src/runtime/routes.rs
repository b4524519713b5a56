//! Plain HTTP routes, answered on the accepting core: health, metrics,
//! history, presence, API docs, the demo page and the JS client. Answers that live on another core (a room's
//! history, a user's status) are fetched with a mesh query.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::Identity;
use crate::http;
use crate::hub::Asked;
use crate::metrics::CoreSnapshot;
use crate::protocol::{self, HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT};
use crate::redis::worker::Link;
use crate::runtime::server::{CoreCtx, HttpRequest, QUERY_TIMEOUT};
use crate::shard::{Answer, Query};

const JSON: &str = "application/json";
/// Longest wait for a cluster-wide presence read before answering locally.
const REDIS_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers one plain HTTP request with a complete response.
pub async fn handle(ctx: &Rc<CoreCtx>, req: &HttpRequest) -> Vec<u8> {
    let keep = req.keep_alive;
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let known = matches!(
        segments.as_slice(),
        ["healthz"]
            | ["metrics"]
            | ["api", "chats", "rooms", _, "messages" | "presence"]
            | ["api", "chats", "users", _, "status"]
            | ["" | "app.js" | "app.css"]
            | ["js", _]
    );
    if known && req.method != "GET" && req.method != "HEAD" {
        return http::response(
            405,
            JSON,
            br#"{"error":"method not allowed"}"#,
            keep,
            &[("Allow", "GET")],
        );
    }
    match segments.as_slice() {
        ["healthz"] => healthz(ctx, keep),
        ["metrics"] => metrics(ctx, keep).await,
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
